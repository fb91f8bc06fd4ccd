"""Results in input order (issue 25): ``occ verify`` and ``occ attribute`` answer each input where it
occurred, failed files included (a ``{"path", "error"}`` line in JSON, a row with the ``error`` column in
CSV, a row that says the error in the table), over more than one batch of images, a folder among the
inputs, and the same file named twice. stdout holds only results; the summary line and exit code 1 are
unchanged.

Runs on the tiny random CLIP (conftest's ``tiny_clip_dir``), in-process.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import clikit
import pytest
from clikit import check_attribute_row, check_error_row, invoke

from occ.features import DEFAULT_BATCH
from occ.paths import display_path


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


class Inputs:
    """Command-line inputs mixing good images and bad files, and what each expands to, in order."""

    def __init__(self, w, root: Path):
        self.text = root / "text.png"
        self.text.write_text("this is a text file, not an image\n")
        self.missing = root / "missing.png"
        self.empty = root / "empty.png"
        self.empty.write_bytes(b"")
        # never seen by the feature cache: these go through the trunk in batches of DEFAULT_BATCH
        fresh = clikit.noise_family(root / "fresh", range(300, 300 + DEFAULT_BATCH + 4))
        folder = root / "folder"  # a folder is walked in name order, its bad file in its place
        folder.mkdir()
        (folder / "1-good.png").write_bytes(w.good(2).read_bytes())
        (folder / "2-bad.png").write_bytes(b"GIF89a but no more")
        (folder / "3-good.png").write_bytes(w.good(3).read_bytes())
        self.args = [self.missing, w.good(0), self.text, w.good(1), *fresh[:12], folder, *fresh[12:], self.empty,
                     w.good(0), self.text]
        self.paths = [self.missing, w.good(0), self.text, w.good(1), *fresh[:12], folder / "1-good.png",
                      folder / "2-bad.png", folder / "3-good.png", *fresh[12:], self.empty, w.good(0), self.text]
        self.bad = {self.missing, self.text, self.empty, folder / "2-bad.png"}
        assert len([p for p in self.paths if p not in self.bad]) > DEFAULT_BATCH  # more than one batch

    @property
    def failed(self) -> list[int]:
        return [i for i, p in enumerate(self.paths) if p in self.bad]

    @property
    def goods(self) -> list[Path]:
        return [p for p in self.paths if p not in self.bad]


@pytest.fixture(scope="module")
def inputs(w, tmp_path_factory) -> Inputs:
    return Inputs(w, tmp_path_factory.mktemp("order"))


def check_summary(run: clikit.Run, command: str, inputs: Inputs) -> None:
    assert run.code == 1, run  # some inputs failed, the rest were processed
    n, failed = len(inputs.paths), len(inputs.failed)
    assert run.summary is not None and run.summary.startswith(
        f"{command}: {n} images, {n - failed} scored, {failed} failed in "), run


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a results table (cells stripped); on a pipe a row is one line."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.startswith("│")]


def table_header(stdout: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.split("┃")[1:-1]]


def check_table(run: clikit.Run, inputs: Inputs, verdict_column: int, reasons: dict[str, str]) -> None:
    """The table has one row per input in input order; a failed file's row says 'error' in the verdict
    column and its reason in the last column ('error'); stderr says each failure once, in order."""
    rows = table_rows(run.stdout)
    assert [r[0] for r in rows] == [display_path(p) for p in inputs.paths], run.stdout
    header = table_header(run.stdout)
    assert header[-1] == "error", header
    for i, row in enumerate(rows):
        assert len(row) == len(header), row
        if i in inputs.failed:
            assert row[verdict_column] == "error" and row[-1] == reasons[row[0]], row
        else:
            assert row[verdict_column] != "error" and row[-1] == "", row
    skipped = [line for line in run.err_lines if line.startswith("skipped ")]
    assert skipped == [f"skipped {display_path(inputs.paths[i])}: {reasons[display_path(inputs.paths[i])]}"
                       for i in inputs.failed], run.stderr


def check_json(run: clikit.Run, inputs: Inputs, check_row, alone: list[dict]) -> dict[str, str]:
    """One object per input in input order; errors where the files were; each decision the one the good
    files get on their own (so a row holds its own file's answer, not a neighbour's). Returns the reasons."""
    rows = run.json()
    assert [r["path"] for r in rows] == [str(p) for p in inputs.paths]
    assert [i for i, r in enumerate(rows) if "error" in r] == inputs.failed
    for i in inputs.failed:
        check_error_row(rows[i])
    decisions = [r for r in rows if "error" not in r]
    for row in decisions:
        assert check_row(row) is not False, row
    assert decisions == alone
    assert run.err_lines == []
    reasons = {display_path(r["path"]): r["error"] for r in rows if "error" in r}
    assert reasons[display_path(inputs.missing)] == "no such file or folder"
    assert reasons[display_path(inputs.empty)] == "empty file"
    assert reasons[display_path(inputs.text)] == "not an image (unrecognised content)"
    return reasons


def check_csv(run: clikit.Run, inputs: Inputs, columns: list[str], as_json: list[dict], to_csv) -> None:
    rows = list(csv.reader(io.StringIO(run.stdout)))
    assert rows[0] == [*columns, "error"]
    assert [r[0] for r in rows[1:]] == [str(p) for p in inputs.paths]
    for i, (row, obj) in enumerate(zip(rows[1:], as_json)):
        if i in inputs.failed:
            assert row == [str(inputs.paths[i]), *[""] * (len(columns) - 1), obj["error"]], row
        else:
            assert row == [*to_csv(obj), ""], (row, obj)
    assert run.err_lines == []


def test_verify_answers_in_input_order(w, inputs) -> None:
    args = ("--source", "a", "--registry", w.reg_ab)
    alone = invoke("verify", *inputs.goods, *args, "--json")
    assert alone.code == 0, alone

    as_json = invoke("verify", *inputs.args, *args, "--json")
    check_summary(as_json, "verify", inputs)
    # (the keys only: an image beyond the spread of a's own images is refused whatever its score)
    reasons = check_json(as_json, inputs, lambda r: set(r) == clikit.VERIFY_KEYS and r["source"] == "a",
                         alone.json())

    as_csv = invoke("verify", *inputs.args, *args, "--csv")
    check_summary(as_csv, "verify", inputs)
    check_csv(as_csv, inputs, ["path", "source", "score", "threshold", "accepted", "reason"], as_json.json(),
              lambda o: [o["path"], o["source"], str(o["score"]), str(o["threshold"]), str(o["accepted"]).lower(),
                         o["reason"] or ""])

    table = invoke("verify", *inputs.args, *args)
    check_summary(table, "verify", inputs)
    check_table(table, inputs, table_header(table.stdout).index("accepted"), reasons)
    accepted = [r[3] for r in table_rows(table.stdout)]
    assert [a for i, a in enumerate(accepted) if i not in inputs.failed] == [
        "yes" if o["accepted"] else f"no ({o['reason']})" if o["reason"] else "no" for o in alone.json()]


def test_attribute_answers_in_input_order(w, inputs) -> None:
    args = ("--registry", w.reg_ab)
    alone = invoke("attribute", *inputs.goods, *args, "--json")
    assert alone.code == 0, alone

    as_json = invoke("attribute", *inputs.args, *args, "--json")
    check_summary(as_json, "attribute", inputs)
    reasons = check_json(as_json, inputs, lambda r: check_attribute_row(r, ["a", "b"]), alone.json())

    as_csv = invoke("attribute", *inputs.args, *args, "--csv")
    check_summary(as_csv, "attribute", inputs)
    check_csv(as_csv, inputs, ["path", "source", "accepted", "reason", "score:a", "score:b"], as_json.json(),
              lambda o: [o["path"], o["source"] or "unknown", ";".join(o["accepted"]), o["reason"] or "",
                         str(o["scores"]["a"]), str(o["scores"]["b"])])

    table = invoke("attribute", *inputs.args, *args)
    check_summary(table, "attribute", inputs)
    check_table(table, inputs, table_header(table.stdout).index("source"), reasons)
    named = [r[1] for r in table_rows(table.stdout)]
    assert [s for i, s in enumerate(named) if i not in inputs.failed] == [
        o["source"] or "unknown" for o in alone.json()]


def test_a_table_without_failures_has_no_error_column(w) -> None:
    run = invoke("verify", w.good(0), w.good(1), "--source", "a", "--registry", w.reg_a)
    assert run.code == 0, run
    assert table_header(run.stdout) == ["image", "score", "threshold", "accepted"]
    assert [r[0] for r in table_rows(run.stdout)] == [display_path(w.good(0)), display_path(w.good(1))]


def test_only_failed_files_still_get_their_rows(w, inputs) -> None:
    run = invoke("attribute", inputs.text, inputs.missing, "--registry", w.reg_ab)
    assert run.code == 1, run
    rows = table_rows(run.stdout)
    assert [(r[0], r[1]) for r in rows] == [(display_path(inputs.text), "error"),
                                            (display_path(inputs.missing), "error")]
    assert rows[1][-1] == "no such file or folder"


def test_attributor_run_reports_each_failure_in_its_place(w, inputs, tiny_backbone) -> None:
    """The library: :meth:`Attributor.run` calls ``on_error`` between the decisions, where the file was."""
    from occ.attribution import Attributor
    from occ.registry import Registry

    attributor = Attributor.from_registry(Registry(w.reg_ab), tiny_backbone)
    events = []
    for decision in attributor.run(inputs.args, on_error=lambda exc: events.append(("error", exc.path))):
        events.append(("decision", decision.path))
    assert events == [("error" if p in inputs.bad else "decision", str(p)) for p in inputs.paths]
