"""Every `occ enroll` option is applied: each test changes one option and reads back, from the stored
source (`occ sources show`), that the verifier was made that way; the enroll summary says what was
stored; unknown values and options that do not apply are usage errors that write nothing.

Runs on the tiny random CLIP with a text tower (conftest's ``tiny_clip_dir``), in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import clikit
import pytest
from clikit import invoke

from occ.testing import imagegen


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


def enroll(w, reg: Path, *extra, name: str = "s") -> clikit.Run:
    return invoke(*clikit.enroll_args(name, w.a_train, reg, w.backbone, *extra))


def stored(reg: Path, name: str = "s") -> dict:
    run = invoke("sources", "show", name, "--registry", reg)
    assert run.code == 0, run
    return json.loads(run.stdout)


def summary_line(run: clikit.Run, field: str) -> str:
    """The enroll table's row for ``field`` (the table is as wide as its content on a pipe)."""
    rows = [line for line in run.stdout.splitlines() if f" {field} " in line]
    assert len(rows) == 1, run
    return rows[0]


@pytest.fixture(scope="module")
def default(w, tmp_path_factory) -> tuple[clikit.Run, dict]:
    """A source enrolled with no verifier option at all: the baseline each option is compared with."""
    reg = tmp_path_factory.mktemp("default") / "reg"
    run = enroll(w, reg)
    assert run.code == 0, run
    return run, stored(reg)


def test_defaults_on_a_tower_with_text(default) -> None:
    run, meta = default
    assert meta["kind"] == "lda" and meta["template"] is None and meta["views"] == 2
    assert meta["settings"]["seed"] == 0
    assert (meta["decision"]["far"], meta["decision"]["target_tpr"]) == (0.05, 0.9)
    assert "default bank" in meta["negatives"]
    line = summary_line(run, "verifier")
    assert "shared-covariance discriminant" in line and "steps" not in line
    assert "2 laundered copies each" in summary_line(run, "training views")


def test_prompt_defaults_on_a_tower_with_text(w, tmp_path) -> None:
    run = enroll(w, tmp_path / "reg", *clikit.PROMPT)
    assert run.code == 0, run
    meta = stored(tmp_path / "reg")
    assert meta["kind"] == "text" and meta["template"]["name"] == "occ-clip" and meta["views"] == 0
    s = meta["settings"]
    assert (s["loss"], s["sam"], s["adversarial"], s["steps"], s["seed"]) == ("ce", False, "none", 5, 0)
    line = summary_line(run, "verifier")
    assert "text prompts" in line and "loss ce," in line and "SAM" not in line and "5 steps" in line


@pytest.mark.parametrize(("option", "check", "summary"), [
    (["--method", "probe"], lambda m: m["kind"] == "probe" and m["template"] is None,
     "logistic probe on the CLS token of block"),
    ([*clikit.PROMPT], lambda m: m["kind"] == "text", "text prompts"),
    ([*clikit.PROMPT, "--loss", "cvar-auc"], lambda m: m["settings"]["loss"] == "cvar-auc", "loss cvar-auc"),
    ([*clikit.PROMPT, "--sam"], lambda m: m["settings"]["sam"] is True, "+ SAM"),
    ([*clikit.PROMPT, "--kind", "visual"],
     lambda m: m["kind"] == "visual" and (m["template"] or {}).get("name") == "visual-mid-attn", "visual prompts"),
    ([*clikit.PROMPT, "--template", "occ-clip-words"], lambda m: (m["template"] or {}).get("name") == "occ-clip-words",
     "occ-clip-words"),
    ([*clikit.PROMPT, "--template", "visual-mid"],
     lambda m: m["kind"] == "visual" and (m["template"] or {}).get("name") == "visual-mid", "template visual-mid,"),
    ([*clikit.PROMPT, "--adversarial", "feature"], lambda m: m["settings"]["adversarial"] == "feature",
     "adversarial feature"),
    (["--method", "prompt", "--steps", "7"], lambda m: m["settings"]["steps"] == 7, "7 steps"),
    (["--views", "1"], lambda m: m["views"] == 1, "1 laundered copy each"),
    (["--seed", "3"], lambda m: m["settings"]["seed"] == 3, "seed 3"),
    (["--far", "0.2"], lambda m: m["decision"]["far"] == 0.2, "FAR <= 0.2,"),
    (["--tpr", "0.5"], lambda m: m["decision"]["target_tpr"] == 0.5, "TPR <= 0.5"),
])
def test_each_option_changes_what_is_stored(w, tmp_path, default, option, check, summary) -> None:
    _, baseline = default
    assert not check(baseline), "the option must make a difference from the default"
    run = enroll(w, tmp_path / "reg", *option)
    assert run.code == 0, run
    assert check(stored(tmp_path / "reg")), stored(tmp_path / "reg")
    assert summary in run.stdout, run  # the summary is read back from the stored verifier


def test_negatives_options_change_the_negatives(w, tmp_path) -> None:
    run = enroll(w, tmp_path / "reg", "--negatives", w.b_train, "--no-default-negatives")
    assert run.code == 0, run
    assert stored(tmp_path / "reg")["negatives"] == {"--negatives": 8}


def test_template_from_a_json_file_is_stored_whole_and_reloads(w, tmp_path) -> None:
    custom = json.loads((clikit.REPO / "prompts" / "visual-mid.json").read_text())
    custom.update(name="my-prompts", n_tokens=3)
    path = tmp_path / "elsewhere" / "my-prompts.json"
    path.parent.mkdir()
    path.write_text(json.dumps(custom))
    reg = tmp_path / "reg"
    assert enroll(w, reg, *clikit.PROMPT, "--template", path).code == 0
    path.unlink()  # the source must not need the file any more
    meta = stored(reg)
    assert meta["kind"] == "visual" and meta["template"]["n_tokens"] == 3
    run = invoke("verify", w.a_test, "--source", "s", "--registry", reg, "--json")
    assert run.code == 0, run
    assert len(run.json()) == 6


@pytest.mark.parametrize("option", [
    ["--method", "foo"], [*clikit.PROMPT, "--loss", "foo"], [*clikit.PROMPT, "--kind", "foo"],
    [*clikit.PROMPT, "--kind", "probe"], [*clikit.PROMPT, "--adversarial", "foo"],
    [*clikit.PROMPT, "--template", "no-such-template"], [*clikit.PROMPT, "--kind", "visual", "--template", "occ-clip"],
    # lda is fitted in closed form and is the only kind with laundered views
    ["--steps", "5"], ["--loss", "cvar-auc"], ["--method", "probe", "--views", "1"], ["--views", "-1"],
    # the probe with the default --steps: only the option under test is wrong
    ["--method", "probe", "--steps", "60", "--loss", "cvar-auc"], ["--method", "probe", "--steps", "60", "--sam"],
    ["--method", "probe", "--steps", "60", "--kind", "text"], ["--method", "probe", "--steps", "60", "--adversarial",
                                                              "feature"],
    ["--far", "0"], ["--tpr", "1.5"],
])
def test_unknown_or_inapplicable_values_are_usage_errors(w, tmp_path, option) -> None:
    run = enroll(w, tmp_path / "reg", *option)
    assert run.code == 2, run
    assert len(run.err_lines) == 1 and run.err_lines[0].startswith("error: "), run
    assert not (tmp_path / "reg" / "sources").exists()


def test_set_threshold_changes_only_the_threshold(w, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    before = stored(reg, "a")
    run = invoke("sources", "set-threshold", "a", "--far", "0.3", "--registry", reg)
    assert run.code == 0, run
    after = stored(reg, "a")
    assert after["decision"]["far"] == 0.3 and before["decision"]["far"] == 0.05
    assert after["decision"]["heldout_far"] >= before["decision"]["heldout_far"]
    assert {k: v for k, v in after.items() if k != "decision"} == {k: v for k, v in before.items()
                                                                    if k != "decision"}
    assert invoke("verify", w.a_test, "--source", "a", "--registry", reg, "--json").code == 0


# -------------------------------------------------------------------------------------------------- quality gate


def copies(folder: Path, images) -> Path:
    """A new folder holding copies of ``images`` (same bytes, so the same sha256)."""
    folder.mkdir(parents=True)
    for i, path in enumerate(images):
        (folder / f"{i}-{path.name}").write_bytes(path.read_bytes())
    return folder


def test_force_enrolls_fewer_than_five_images(w, tmp_path) -> None:
    shots = sorted(w.a_train.iterdir())
    four = copies(tmp_path / "four", shots[:4])
    (four / "x-text.png").write_text("a text file, not an image\n")  # 5 files, 4 of them readable
    (four / "y-again.png").write_bytes(shots[0].read_bytes())  # 6 files, still 4 distinct images
    reg = tmp_path / "reg"
    run = invoke(*clikit.enroll_args("s", four, reg, w.backbone))
    assert run.code == 2, run
    assert run.err_lines[-1] == ("error: cannot enroll 's' from 4 distinct readable target images: the minimum is 5 "
                                 "(below it a verifier is unreliable); add images, or pass --force to enroll it "
                                 "anyway"), run
    assert len(run.err_lines) == 2 and run.err_lines[0].startswith("skipped ") and "x-text.png" in run.err_lines[0]
    assert run.stdout == "" and not (reg / "sources").exists()  # nothing fitted, nothing written

    run = invoke(*clikit.enroll_args("s", four, reg, w.backbone, "--force"))
    assert run.code == 1, run  # stored; 1 because one input was unreadable
    assert stored(reg)["n_target"] == 4
    assert "only 4 target images: below 5" in run.stderr  # still warned about

    five = copies(tmp_path / "five", shots[:5])
    run = invoke(*clikit.enroll_args("five", five, tmp_path / "reg5", w.backbone))
    assert run.code == 0 and "only" not in run.stderr, run  # 5 is enough without --force


def test_force_never_goes_below_two_images(w, tmp_path) -> None:
    one = copies(tmp_path / "one", sorted(w.a_train.iterdir())[:1])
    for extra in ([], ["--force"]):
        run = invoke(*clikit.enroll_args("s", one, tmp_path / "reg", w.backbone, *extra))
        assert run.code == 2, run
        assert run.err_lines == ["error: cannot enroll 's' from 1 distinct readable target image(s): the minimum is 5 "
                                 "(2 with --force)"], run
    assert not (tmp_path / "reg" / "sources").exists()


def test_allow_overlap_enrolls_images_another_source_was_trained_on(w, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_ab, tmp_path / "reg")
    before = clikit.tree(reg)
    mixed = copies(tmp_path / "mixed", [*sorted(w.a_train.iterdir())[:3], *sorted(w.b_test.iterdir())])
    run = invoke(*clikit.enroll_args("s", mixed, reg, w.backbone))
    assert run.code == 2, run
    assert run.err_lines == ["error: cannot enroll 's': 3 of its training images are already training images of "
                             "source 'a' (same file contents), and would be a target of one source and a non-target "
                             "of the other; leave them out, or pass --allow-overlap"], run
    assert clikit.tree(reg) == before  # nothing written, the joint model untouched
    both = copies(tmp_path / "both", [*sorted(w.a_train.iterdir())[:2], *sorted(w.b_train.iterdir())[:5]])
    run = invoke(*clikit.enroll_args("s", both, reg, w.backbone))
    assert run.code == 2 and "2 of its training images are already training images of source 'a', 5 of source 'b' " \
        "(same file contents)" in run.stderr, run

    run = invoke(*clikit.enroll_args("s", mixed, reg, w.backbone, "--allow-overlap"))
    assert run.code == 0, run
    assert stored(reg)["n_target"] == 9
    assert "3 of these training images are also training images of source 'a'" in run.stderr  # still warned about


def test_the_same_folder_under_a_second_name_is_refused_but_replacing_a_source_is_not(w, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    run = invoke(*clikit.enroll_args("again", w.a_train, reg, w.backbone))
    assert run.code == 2 and "8 of its training images are already training images of source 'a'" in run.stderr, run
    assert invoke("sources", "show", "again", "--registry", reg).code != 0
    run = invoke(*clikit.enroll_args("a", w.a_train, reg, w.backbone, "--replace", "--seed", "1"))
    assert run.code == 0, run  # its own earlier version is not another source


def sources_json(reg: Path) -> dict[str, dict]:
    run = invoke("sources", "--registry", reg, "--json")
    assert run.code == 0 and run.stderr == "", run
    return {row.pop("name"): row for row in run.json()}


def quality_column(reg: Path) -> dict[str, str]:
    run = invoke("sources", "--registry", reg)
    assert run.code == 0, run
    header = next(line for line in run.stdout.splitlines() if line.startswith("┃"))
    column = [c.strip() for c in header.split("┃")[1:-1]].index("quality")
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in run.stdout.splitlines() if line.startswith("│")]
    return {row[0]: row[column] for row in rows}


def test_a_weak_source_is_stored_warned_about_and_flagged(w, tmp_path, default) -> None:
    run, _ = default
    assert "weak" not in run.stderr  # a healthy source (held-out TPR about 0.9): no warning
    reg = clikit.copy_registry(w.reg_ab, tmp_path / "reg")
    assert quality_column(reg) == {"a": "ok", "b": "ok"}
    # a source (of another family: colour patterns) that accepts a third of its own held-out images (--tpr
    # asks for no more)
    weak = tmp_path / "weak"
    weak.mkdir()
    for seed in range(8):
        imagegen.pattern_image(seed=seed).save(weak / f"pattern{seed}.png")
    run = invoke(*clikit.enroll_args("w", weak, reg, w.backbone, "--tpr", "0.3"))
    assert run.code == 0, run
    listed = sources_json(reg)
    tpr = listed["w"]["heldout_tpr"]
    assert tpr < 0.5 and stored(reg, "w")["decision"]["weak"] is True
    warned = [line for line in run.err_lines if "is weak" in line]
    assert warned == [f"warning: source 'w' is weak: it accepts {tpr:.3f} of its own held-out images at its "
                      "threshold, below 0.5; stored, and marked weak in `occ sources` (enroll more, or more typical, "
                      "images)"], run
    assert set(listed) == {"a", "b", "w"} and listed["w"]["weak"] is True and listed["w"]["images"] == 8
    for row in listed.values():  # (a and b were refitted beside w: each is flagged by its own held-out TPR)
        assert set(row) == {"kind", "images", "threshold", "heldout_tpr", "heldout_far", "weak", "backbone", "created",
                            "decided_by", "joint_version", "threshold_raw", "far", "target_tpr", "radius"}
        assert row["weak"] is (row["heldout_tpr"] < 0.5), row
    assert quality_column(reg) == {n: "weak" if r["weak"] else "ok" for n, r in listed.items()}


def test_weak_follows_the_threshold_that_decides_the_source(w, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    assert sources_json(reg)["a"]["weak"] is False
    run = invoke("sources", "set-threshold", "a", "--tpr", "0.3", "--registry", reg)
    assert run.code == 0, run
    assert sources_json(reg)["a"]["weak"] is True and quality_column(reg) == {"a": "weak"}
    assert "warning: source 'a' is weak" in run.stderr, run
    run = invoke("sources", "set-threshold", "a", "--tpr", "0.9", "--registry", reg)
    assert run.code == 0 and "weak" not in run.stderr, run
    assert sources_json(reg)["a"]["weak"] is False
