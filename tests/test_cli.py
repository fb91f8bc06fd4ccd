"""The ``occ`` command line (issue 4): JSON shapes, exit codes and messages, registry selection, the
``sources`` commands, export/import, backbone checks, open-set behaviour, and an end-to-end run on the
embedded backbone.

Everything runs on the tiny random CLIP of conftest (``--backbone <folder>``) through typer's CliRunner,
except where a real process is the point (imports at ``--help``, concurrent enrolls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import clikit
import pytest
from clikit import check_attribute_row, check_error_row, check_verify_row, invoke


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


@pytest.fixture
def reg(w, tmp_path) -> Path:
    """A private copy of the registry holding source 'a'."""
    return clikit.copy_registry(w.reg_a, tmp_path / "reg")


def one_error_line(run: clikit.Run, *needles: str) -> str:
    """stderr is exactly one line, 'error: ...', containing every needle."""
    assert len(run.err_lines) == 1, run
    line = run.err_lines[0]
    assert line.startswith("error: "), run
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# -------------------------------------------------------------------------------------------------- JSON


def test_verify_json_shape_and_nothing_else_on_stdout(w) -> None:
    missing = w.root / "missing.png"
    run = invoke("verify", w.good(0), missing, w.b_test, "--source", "a", "--registry", w.reg_a, "--json")
    assert run.code == 1, run  # one input failed, the rest were processed
    rows = run.json()
    # One object per input. Decisions come in input order; an unreadable file is reported when it is
    # met, which may be before the decisions of the batch it was read with.
    errors = [r for r in rows if "error" in r]
    decisions = [r for r in rows if "error" not in r]
    assert len(errors) == 1 and errors[0] == {"path": str(missing), "error": "no such file or folder"}
    check_error_row(errors[0])
    assert [r["path"] for r in decisions] == [str(w.good(0))] + [str(p) for p in sorted(w.b_test.iterdir())]
    for row in decisions:
        check_verify_row(row, "a")
    assert run.err_lines == []  # --json: errors go to stdout as objects, nothing else is printed
    assert run.summary == "verify: 8 images, 7 scored, 1 failed in " + run.summary.split(" in ")[1]


def test_attribute_json_shape(w) -> None:
    run = invoke("attribute", w.a_test, w.b_test, w.root / "nope.png", "--registry", w.reg_ab, "--json")
    assert run.code == 1, run
    rows = run.json()
    assert len(rows) == 13
    errors = [r for r in rows if "error" in r]
    assert len(errors) == 1 and errors[0]["path"] == str(w.root / "nope.png")
    check_error_row(errors[0])
    for row in rows:
        if "error" not in row:
            check_attribute_row(row, ["a", "b"])
    assert run.err_lines == []


def test_all_good_exits_0_and_tables_without_json(w) -> None:
    run = invoke("verify", w.a_test, "--source", "a", "--registry", w.reg_a)
    assert run.code == 0, run
    assert "verify against 'a'" in run.stdout
    assert str(w.a_test / "noise100.png") in first_column(run.stdout)  # long paths fold, never get cut
    run = invoke("attribute", w.a_test, w.b_test, "--registry", w.reg_ab)
    assert run.code == 0, run
    assert "attribution over 2 source(s)" in run.stdout
    assert str(w.b_test / "grad105.png") in first_column(run.stdout)


def first_column(table: str) -> str:
    """The text of a rich table's first column, its lines joined (a folded cell becomes whole again)."""
    return "".join(line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│"))


# -------------------------------------------------------------------------------------------------- open set


def test_open_set_unknown_family_is_not_accepted(w) -> None:
    """Only 'a' (noise) is enrolled: gradients come out unknown, held-out noise mostly comes out 'a'."""
    rows = invoke("attribute", w.a_test, w.b_test, "--registry", w.reg_a, "--json").json()
    noise = [r for r in rows if "noise" in r["path"]]
    grads = [r for r in rows if "grad" in r["path"]]
    assert len(noise) == len(grads) == 6
    assert all(r["source"] is None and r["accepted"] == [] for r in grads), grads
    assert sum(r["source"] == "a" for r in noise) >= 3, noise
    assert min(r["scores"]["a"] for r in noise) > max(r["scores"]["a"] for r in grads)


def test_two_sources_each_family_goes_to_its_source(w) -> None:
    rows = invoke("attribute", w.a_test, w.b_test, "--registry", w.reg_ab, "--json").json()
    for row in rows:
        other = "b" if "noise" in row["path"] else "a"
        assert row["source"] != other, row


# -------------------------------------------------------------------------------------------------- exit codes


def test_usage_errors_exit_2_with_one_line(w, reg, tmp_path) -> None:
    empty = tmp_path / "empty-registry"
    bb = w.backbone
    cases = [
        (["verify", w.good(), "--source", "nope", "--registry", reg], ["no source named 'nope'", "enrolled: a"]),
        (["verify", w.good(), "--source", "a", "--registry", empty], ["no source named 'a'", "none"]),
        (["attribute", w.good(), "--registry", empty], ["is empty", "occ enroll"]),
        (clikit.enroll_args("x", w.a_train, reg, bb, "--far", "2"), ["false-accept rate", "got 2.0"]),
        (clikit.enroll_args("x", w.a_train, reg, bb, "--tpr", "0"), ["true-accept rate"]),
        (clikit.enroll_args("../x", w.a_train, reg, bb), ["invalid source name '../x'"]),
        (clikit.enroll_args("a", w.a_train, reg, bb), ["'a' already exists", "--replace"]),
        (["sources", "set-threshold", "a", "--far", "2", "--registry", reg], ["false-accept rate"]),
        (["sources", "set-threshold", "a", "--registry", reg], ["give --far and/or --tpr"]),
        (["sources", "show", "nope", "--registry", reg], ["no source named 'nope'"]),
        (["sources", "remove", "nope", "--yes", "--registry", reg], ["no source named 'nope'"]),
        (["sources", "remove", "a", "--registry", reg], ["without --yes"]),
        (["export", "nope", tmp_path / "x.zip", "--registry", reg], ["no source named 'nope'"]),
    ]
    before = clikit.tree(reg)
    for args, needles in cases:
        run = invoke(*args)
        assert run.code == 2, run
        one_error_line(run, *needles)
        assert run.stdout == "", run
    assert clikit.tree(reg) == before
    assert not empty.exists()  # reading an empty registry creates nothing


def test_empty_registry_is_reported_before_any_backbone_is_loaded(tmp_path) -> None:
    """An unusable default backbone (here a missing folder) must not hide the real problem."""
    env = {"OCC_BACKBONE": str(tmp_path / "no-such-backbone")}
    run = invoke("attribute", tmp_path, "--registry", tmp_path / "reg", env=env)
    assert run.code == 2, run
    one_error_line(run, "is empty")


def test_click_usage_errors_exit_2(w) -> None:
    assert invoke("verify", w.good(), "--registry", w.reg_a).code == 2  # --source missing
    assert invoke("enroll", "x", w.a_train, "--far", "lots").code == 2
    assert invoke("no-such-command").code == 2


def test_registry_option_and_environment(w, tmp_path) -> None:
    by_option = invoke("verify", w.a_test, "--source", "a", "--registry", w.reg_a, "--json")
    by_env = invoke("verify", w.a_test, "--source", "a", "--json", env={"OCC_REGISTRY": str(w.reg_a)})
    assert by_option.code == by_env.code == 0
    assert by_option.stdout == by_env.stdout
    # The option wins over the environment.
    run = invoke("verify", w.good(), "--source", "a", "--registry", tmp_path / "other", "--json",
                 env={"OCC_REGISTRY": str(w.reg_a)})
    assert run.code == 2 and "no source named 'a'" in run.stderr
    listing = invoke("sources", env={"OCC_REGISTRY": str(w.reg_ab)})
    assert listing.code == 0 and "sources in" in listing.stdout and "│ b " in listing.stdout


# -------------------------------------------------------------------------------------------------- backbones


@pytest.fixture
def other_dir(other_clip_dir) -> Path:
    return other_clip_dir


def test_other_backbone_refused_naming_both_fingerprints(w, other_dir, other_backbone, tiny_backbone) -> None:
    theirs, ours = tiny_backbone.fingerprint, other_backbone.fingerprint
    run = invoke("verify", w.good(), "--source", "a", "--registry", w.reg_a, "--backbone", other_dir, "--json")
    assert run.code == 1, run
    one_error_line(run, "'a'", theirs, ours)
    assert run.stdout == ""
    run = invoke("attribute", w.good(), "--registry", w.reg_ab, "--backbone", other_dir, "--json")
    assert run.code == 1, run
    left_out = [line for line in run.err_lines if "left out" in line]
    assert len(left_out) == 2 and all(theirs in line and ours in line for line in left_out), run
    one_error_line(clikit.Run(run.code, "", "\n".join(set(run.err_lines) - set(left_out)), run.args),
                   "none of the enrolled sources", "can be used")
    assert run.stdout == ""


def test_mixed_backbones_verify_picks_the_sources_own(w, reg, other_dir, other_backbone, tiny_backbone) -> None:
    run = invoke(*clikit.enroll_args("c", w.b_train, reg, other_dir))
    assert run.code == 0, run
    a = invoke("verify", w.good(), "--source", "a", "--registry", reg, "--json")
    c = invoke("verify", w.good(), "--source", "c", "--registry", reg, "--json")
    assert a.code == c.code == 0, (a, c)
    run = invoke("attribute", w.good(), "--registry", reg, "--json")
    assert run.code == 2, run
    one_error_line(run, "different backbones", "--backbone")
    run = invoke("attribute", w.good(), w.b_test, "--registry", reg, "--json", "--backbone", w.backbone)
    assert run.code == 1, run  # 'c' left out, every image still attributed over 'a'
    assert len(run.err_lines) == 1 and "source 'c' left out" in run.err_lines[0]
    assert tiny_backbone.fingerprint in run.err_lines[0] and other_backbone.fingerprint in run.err_lines[0]
    rows = run.json()
    assert len(rows) == 7
    for row in rows:
        check_attribute_row(row, ["a"])


def test_enroll_records_the_backbone_actually_used(w, tmp_path, monkeypatch) -> None:
    """A relative --backbone folder and OCC_BACKBONE are recorded as absolute folders, so verify (which
    defaults to the sources' backbone) works from anywhere."""
    import shutil

    shutil.copytree(w.backbone, tmp_path / "bb")
    monkeypatch.chdir(tmp_path)
    run = invoke("enroll", "rel", w.a_train, "--registry", tmp_path / "r1", "--backbone", "bb")
    assert run.code == 0, run
    run = invoke("enroll", "env", w.a_train, "--registry", tmp_path / "r2", env={"OCC_BACKBONE": str(w.backbone)})
    assert run.code == 0, run
    monkeypatch.chdir(w.root)
    for registry, name, spec in ((tmp_path / "r1", "rel", tmp_path / "bb"), (tmp_path / "r2", "env", w.backbone)):
        shown = json.loads(invoke("sources", "show", name, "--registry", registry).stdout)
        assert shown["backbone"]["spec"] == str(Path(spec).resolve())
        run = invoke("verify", w.good(), "--source", name, "--registry", registry, "--json")
        assert run.code == 0, run


# -------------------------------------------------------------------------------------------------- sources


def test_sources_list_show_set_threshold_remove(w, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_ab, tmp_path / "reg")
    listing = invoke("sources", "--registry", reg)
    assert listing.code == 0 and "│ a " in listing.stdout and "│ b " in listing.stdout, listing

    shown = invoke("sources", "show", "a", "--registry", reg)
    assert shown.code == 0, shown
    info = json.loads(shown.stdout)
    assert info["name"] == "a" and info["kind"] == "lda"
    assert info["decision"]["far"] == 0.05 and info["decision"]["decided_by"] == "joint"
    assert len(info["training_images_sha256"]) == 8

    before = invoke("verify", w.a_test, "--source", "a", "--registry", reg, "--json").json()
    run = invoke("sources", "set-threshold", "a", "--far", "0.5", "--tpr", "1.0", "--registry", reg)
    assert run.code == 0 and len(run.err_lines) == 1 and "FAR <= 0.5" in run.stderr, run
    info = json.loads(invoke("sources", "show", "a", "--registry", reg).stdout)
    assert info["decision"]["far"] == 0.5 and info["decision"]["target_tpr"] == 1.0
    after = invoke("verify", w.a_test, "--source", "a", "--registry", reg, "--json").json()
    assert [r["score"] for r in after] == [r["score"] for r in before]  # no retraining
    assert {r["threshold"] for r in after} == {info["decision"]["threshold"]}
    assert after[0]["threshold"] <= before[0]["threshold"]

    run = invoke("sources", "remove", "a", "--yes", "--registry", reg)
    assert run.code == 0 and len(run.err_lines) == 2 and run.err_lines[1] == "removed 'a'", run
    assert run.err_lines[0].startswith("joint model refitted over 1 source(s) (b)"), run  # the others, without a
    listing = invoke("sources", "--registry", reg)
    assert listing.code == 0 and "│ a " not in listing.stdout and "│ b " in listing.stdout
    invoke("sources", "remove", "b", "--yes", "--registry", reg)
    empty = invoke("sources", "--registry", reg)
    assert empty.code == 0 and empty.stdout == "" and "no sources enrolled" in empty.stderr


# -------------------------------------------------------------------------------------------------- export/import


def test_export_import_round_trip_gives_identical_scores(w, tmp_path) -> None:
    archive = tmp_path / "a.occ.zip"
    run = invoke("export", "a", archive, "--registry", w.reg_a)
    assert run.code == 0 and archive.is_file(), run
    again = invoke("export", "a", archive, "--registry", w.reg_a)
    assert again.code == 2, again
    one_error_line(again, "already exists", "--replace")
    assert invoke("export", "a", archive, "--replace", "--registry", w.reg_a).code == 0

    dest, renamed = tmp_path / "elsewhere", tmp_path / "renamed"
    assert invoke("import", archive, "--registry", dest).code == 0
    run = invoke("import", archive, "--as", "a-copy", "--registry", renamed)
    assert run.code == 0 and len(run.err_lines) == 2 and run.err_lines[1] == "imported 'a-copy'", run
    assert run.err_lines[0].startswith("joint model refitted over 1 source(s) (a-copy)"), run
    assert invoke("import", archive, "--registry", dest).code == 2  # exists, no --replace
    assert invoke("import", archive, "--as", "../x", "--registry", dest).code == 2

    # (each alone in its registry: an lda source's scores come from the joint model of its registry)
    inputs = [w.a_test, w.b_test]
    original = invoke("verify", *inputs, "--source", "a", "--registry", w.reg_a, "--json")
    imported = invoke("verify", *inputs, "--source", "a", "--registry", dest, "--json")
    copy = invoke("verify", *inputs, "--source", "a-copy", "--registry", renamed, "--json")
    assert original.code == imported.code == copy.code == 0
    assert imported.stdout == original.stdout
    assert [r["score"] for r in copy.json()] == [r["score"] for r in original.json()]
    assert [r["threshold"] for r in copy.json()] == [r["threshold"] for r in original.json()]


# -------------------------------------------------------------------------------------------------- processes


def test_help_and_sources_do_not_import_torch(w) -> None:
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from occ.cli import app\n"
        "codes = [CliRunner().invoke(app, args).exit_code for args in\n"
        "         (['--help'], ['verify', '--help'], ['enroll', '--help'], ['sources', '--registry', sys.argv[1]],\n"
        "          ['sources', 'show', 'a', '--registry', sys.argv[1]])]\n"
        "print(json.dumps([codes, sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'PIL')\n"
        "                                 if m in sys.modules)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(w.reg_a)], capture_output=True, text=True,
                            env=clikit.subprocess_env(), timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    codes, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes == [0, 0, 0, 0, 0]
    assert heavy == [], f"occ --help / occ sources imported {heavy}"


def test_python_dash_m_help_is_fast() -> None:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "occ.cli", "--help"], capture_output=True,
                            text=True, env=clikit.subprocess_env(), timeout=120, check=False)
    assert result.returncode == 0 and "enroll" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "transformers" not in imported
    assert time.perf_counter() - start < 60


# -------------------------------------------------------------------------------------------------- embedded


@pytest.mark.embedded
@pytest.mark.slow
def test_end_to_end_on_the_embedded_backbone(embedded_cache_dir, tmp_path, monkeypatch) -> None:
    """enroll -> sources -> verify -> attribute -> export/import on the real backbone and the example images."""
    monkeypatch.setenv("OCC_CACHE_DIR", str(embedded_cache_dir))
    examples = clikit.REPO / "examples" / "images"
    reg = tmp_path / "reg"
    # 3 steps per model keep this near a minute on a 2-core CPU (training dominates) and already
    # separate the example images.
    run = invoke("enroll", "toy", examples / "toy", "--registry", reg)
    assert run.code == 0, run
    assert "enrolled 'toy'" in run.stdout
    assert invoke("sources", "--registry", reg).code == 0
    verify = invoke("verify", examples / "check", "--source", "toy", "--registry", reg, "--json")
    assert verify.code == 0, verify
    rows = verify.json()
    assert len(rows) == 7
    for row in rows:
        check_verify_row(row, "toy")
    attribute = invoke("attribute", examples / "check", "--registry", reg, "--json")
    assert attribute.code == 0, attribute
    decisions = attribute.json()
    for row in decisions:
        check_attribute_row(row, ["toy"])
    by_name = {Path(r["path"]).name: r for r in decisions}
    toy = [r["scores"]["toy"] for n, r in by_name.items() if n.startswith("toy-")]
    photos = [r["scores"]["toy"] for n, r in by_name.items() if n.startswith("photo-")]
    assert len(toy) == 4 and len(photos) == 3
    assert sum(toy) / len(toy) > sum(photos) / len(photos), by_name
    assert all(r["source"] is None for n, r in by_name.items() if n.startswith("photo-")), by_name  # open set
    # Start-up (issue 14): the features are cached now, and scoring them does not import transformers.
    probe = ("import atexit, sys; atexit.register(lambda: sys.stderr.write("
             "f'\\nIMPORTED transformers={\"transformers\" in sys.modules}\\n')); "
             "from occ.cli import main; sys.argv = ['occ', *sys.argv[1:]]; main()")
    child = subprocess.run([sys.executable, "-c", probe, "attribute", examples / "check", "--registry", reg, "--json"],
                           capture_output=True, text=True, env=clikit.subprocess_env(), timeout=300)
    assert child.returncode == 0 and clikit.json_lines(child.stdout) == decisions, child.stderr
    assert "IMPORTED transformers=False" in child.stderr, child.stderr
    archive = tmp_path / "toy.occ.zip"
    assert invoke("export", "toy", archive, "--registry", reg).code == 0
    assert invoke("import", archive, "--registry", tmp_path / "reg2").code == 0
    again = invoke("verify", examples / "check", "--source", "toy", "--registry", tmp_path / "reg2", "--json")
    assert again.stdout == verify.stdout
    assert os.environ["OCC_CACHE_DIR"] == str(embedded_cache_dir)
