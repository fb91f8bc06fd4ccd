"""CLI conventions: -h and --version, help texts (no type column for flags, both threshold rules, --json
said per command), tables that keep names whole on a pipe, one way of showing paths."""

from __future__ import annotations

import shutil

import clikit
import pytest
from clikit import invoke

from occ.paths import display_path

COMMANDS = [["enroll"], ["verify"], ["attribute"], ["eval"], ["sources"], ["sources", "show"], ["sources", "remove"],
            ["sources", "set-threshold"], ["export"], ["import"], ["backbone"]]


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=lambda c: " ".join(c) or "occ")
def test_dash_h_is_help_and_flags_have_no_type(command) -> None:
    short, long = invoke(*command, "-h"), invoke(*command, "--help")
    assert short.code == long.code == 0 and short.stdout == long.stdout and "Usage:" in short.stdout
    assert "<bool>" not in short.stdout and "BOOLEAN" not in short.stdout


def test_version() -> None:
    from occ import __version__

    run = invoke("--version")
    assert run.code == 0 and run.stdout.strip() == f"occ {__version__}"


def test_help_describes_both_threshold_rules_and_what_json_prints() -> None:
    for command in ([], ["enroll"], ["verify"]):
        text = " ".join(invoke(*command, "--help").stdout.split())
        assert "--far" in text and "--tpr" in text, command
    said = {c: " ".join(invoke(c, "--help").stdout.split()) for c in ("verify", "attribute", "eval", "backbone")}
    assert "one JSON object per image" in said["verify"] and "one JSON object per image" in said["attribute"]
    assert "the report as one JSON object" in said["eval"]
    assert "the description as one JSON object" in said["backbone"]


def test_piped_tables_keep_long_source_names_whole(w, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    long = "a-source-with-a-rather-long-name-that-would-not-fit-" + "x" * 12
    exported = tmp_path / "b.occ.zip"
    assert invoke("export", "b", exported, "--registry", w.reg_ab).code == 0
    assert invoke("import", exported, "--as", long, "--registry", reg).code == 0
    for run in (invoke("sources", "--registry", reg), invoke("attribute", w.b_test, "--registry", reg)):
        assert run.code == 0, run
        assert any(long in line for line in run.stdout.splitlines()), run.stdout  # whole, on one line
        assert "…" not in run.stdout


def test_paths_are_shown_one_way(w, tmp_path) -> None:
    odd = tmp_path / "bell\x07and\ttab.png"
    shutil.copy(w.good(0), odd)
    missing = tmp_path / "gone\x07.png"
    run = invoke("verify", odd, missing, "--source", "a", "--registry", w.reg_a)
    assert run.code == 1, run
    assert display_path(odd) in run.stdout and "\x07" not in run.stdout  # the table
    assert run.err_lines == [f"skipped {display_path(missing)}: no such file or folder"]  # the message
