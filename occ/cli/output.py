"""How verify and attribute report: results on stdout (JSON lines, CSV rows or a table), and on stderr a
progress bar (on a terminal only) and a one-line summary at the end, counted from what was done."""

from __future__ import annotations

import csv
import sys
import time
from collections import Counter

from rich.markup import escape

from occ.cli.common import err, fmt, markup_line, markup_path, print_table
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
    # deferred: loads PIL, which occ --help and occ sources never import
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


def print_attribution_table(rows: list[dict], n_sources: int, provenance_cells: list | None = None) -> None:
    """``attribute --json`` objects (``{"path", "error"}`` for a failed file) as a table on stdout, in their
    order (nothing when there are none)."""
    if not rows:
        return
    cells = []
    for i, row in enumerate(rows):
        provenance = [provenance_cells[i]] if provenance_cells else []
        if "error" in row:
            cells.append((markup_path(row["path"]), "[red]error[/red]", "-", "-", *provenance, row["error"]))
            continue
        best = max(row["scores"].items(), key=lambda kv: kv[1])
        accepted = ", ".join(row["accepted"]) or "-"
        if row.get("reason"):
            accepted += f" [yellow](not {escape(row['reason'])})[/yellow]"
        cells.append((markup_path(row["path"]), row["source"] or "[dim]unknown[/dim]", f"{best[0]} {fmt(best[1])}",
                      accepted, *provenance, None))
    columns = ("image", "source", "best score", "accepted by", *(["provenance"] if provenance_cells else []))
    print_table(f"attribution over {n_sources} source(s)", with_error_column(columns, cells), error_cells(cells))


def with_error_column(columns: tuple, rows: list[tuple]) -> tuple:
    """A results table's columns, with an ``error`` column when some row failed (each row ends with the
    reason its file failed, None where it did not)."""
    return (*columns, "error") if any(r[-1] is not None for r in rows) else columns


def error_cells(rows: list[tuple]) -> list[tuple]:
    """Rows laid out for :func:`with_error_column`'s columns: the reason (one line, escaped) last, or
    nothing when no row failed."""
    if all(r[-1] is None for r in rows):
        return [r[:-1] for r in rows]
    return [(*r[:-1], "" if r[-1] is None else markup_line(r[-1])) for r in rows]


def attribute_csv_columns(sources) -> list[str]:
    return ["path", "source", "accepted", "reason", *(f"score:{name}" for name in sources)]


def attribute_csv_row(row: dict) -> dict:
    """An ``attribute --json`` object as a CSV row (accepted sources joined by ';', best first)."""
    return {"path": row["path"], "source": row["source"] or "unknown", "accepted": ";".join(row["accepted"]),
            "reason": row["reason"], **{f"score:{k}": v for k, v in row["scores"].items()}}
