"""How verify and attribute report: results on stdout (JSON lines, CSV rows or a table), and on stderr a
progress bar (on a terminal only) and a one-line summary at the end, counted from what was done."""

from __future__ import annotations

import csv
import sys
import time
from collections import Counter

from occ.cli.common import err
from occ.errors import UsageError

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def output_format(as_json: bool, as_csv: bool) -> str:
    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")
    return "json" if as_json else "csv" if as_csv else "table"


def count_images(paths) -> int | None:
    """How many images (and unreadable inputs) ``paths`` expand to, for the bar; None off a terminal."""
    if not err.is_terminal:
        return None
    from occ.images import iter_paths

    return sum(1 for _ in iter_paths(paths))


class ImageProgress:
    """A progress bar of images done / total (when known) with the rate; shown on a terminal only."""

    def __init__(self, description: str, total: int | None, console=None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn() if total else TextColumn("{task.completed}"),
                                  TaskProgressColumn(text_format="{task.fields[rate]}"), TimeElapsedColumn(),
                                  console=console or err, transient=True,
                                  disable=not (console or err).is_terminal)
        self._task = self._progress.add_task(description, total=total, rate="")
        self._start = time.perf_counter()
        self.done = 0

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.perf_counter() - self._start
        rate = f"{self.done / elapsed:.1f} img/s" if elapsed > 0 else ""
        self._progress.update(self._task, completed=self.done, rate=rate)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start


def summary(command: str, scored: int, failed: int, seconds: float, outcome: Counter) -> None:
    """One line on stderr: images scored and failed, time, rate and the outcome counts."""
    total = scored + failed
    rate = f", {scored / seconds:.1f} images/s" if seconds > 0 and scored else ""
    parts = ", ".join(f"{k} {v}" for k, v in sorted(outcome.items(), key=lambda kv: (-kv[1], kv[0])))
    err.print(f"{command}: {total} images, {scored} scored, {failed} failed in {seconds:.1f} s{rate}"
              + (f"; {parts}" if parts else ""), markup=False, highlight=False)


def _cell(value) -> str:
    """A CSV cell that a spreadsheet shows as text: a leading = + - @ would start a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class CsvRows:
    """CSV on stdout, one row per image: ``columns`` then ``error`` (the reason a file failed)."""

    def __init__(self, columns: list[str]):
        self.columns = [*columns, "error"]
        self._writer = csv.writer(sys.stdout, lineterminator="\n")
        self._writer.writerow(self.columns)

    def row(self, values: dict) -> None:
        self._writer.writerow([_cell(values.get(c)) for c in self.columns])
        sys.stdout.flush()
