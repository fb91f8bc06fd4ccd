"""`occ eval` / :mod:`occ.evaluation` end to end on the tiny random CLIP and generated images.

Two sources are enrolled from two synthetic families (smooth blue gradients, rough red noise, see
:mod:`tiny_clip`) against a third family of negatives (grey checkerboards); the evaluation root holds
fresh images of both sources plus an ``unknown`` folder of a fourth family (green stripes). Known-answer
tests of the metrics themselves live in test_metrics.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from occ import evaluation, metrics
from occ.errors import OccError, UsageError
from occ.perturb import parse_perturb_spec
from occ.testing import tiny_clip

N_EVAL = 6  # images per evaluation folder: few on purpose (fast, and the small-sample warnings fire)


def stripes_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A fourth family: vertical green stripes of random period."""
    rng = np.random.default_rng(20_000 + seed)
    w, h = size
    period = int(rng.integers(3, 8))
    base = np.array([60, 190, 80]) + rng.uniform(-30, 30, 3)
    xs = np.arange(w)[None, :, None]
    img = np.broadcast_to(base + 60 * ((xs // period) % 2), (h, w, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def checker_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """Non-target images for enrollment: grey checkerboards."""
    rng = np.random.default_rng(30_000 + seed)
    w, h = size
    cell = int(rng.integers(4, 10))
    ys, xs = np.mgrid[0:h, 0:w]
    grey = 90 + 80 * (((xs // cell) + (ys // cell)) % 2) + rng.uniform(-20, 20)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2).clip(0, 255).astype(np.uint8))


FAMILIES = {"smooth": tiny_clip.gradient_image, "rough": tiny_clip.noise_image, "unknown": stripes_image}


def save_family(folder: Path, family, seeds, size=(48, 40)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        family(seed, size=size).save(folder / f"{seed:03d}.png")
    return folder


def make_root(root: Path, mapping: dict[str, str], seeds=range(100, 100 + N_EVAL), size=(48, 40)) -> Path:
    """``root/<folder>`` filled with images of family ``mapping[folder]``."""
    for folder, family in mapping.items():
        save_family(root / folder, FAMILIES[family], seeds, size)
    return root


@pytest.fixture(scope="module")
def ev(tmp_path_factory, tiny_vision_backbone, tiny_vision_dir):
    """A registry with sources 'smooth' and 'rough' and an evaluation root (smooth/, rough/, unknown/)."""
    from occ.config import VerifierConfig
    from occ.enrollment import enroll
    from occ.registry import Registry
    from occ.training import TrainSettings
    from occ.verifier import Verifier

    base = tmp_path_factory.mktemp("eval")
    negatives = save_family(base / "train" / "negatives", checker_image, range(8))
    registry = Registry(base / "registry")
    for name, family in (("smooth", tiny_clip.gradient_image), ("rough", tiny_clip.noise_image)):
        shots = save_family(base / "train" / name, family, range(8))
        enroll(registry, name, [shots], backbone=tiny_vision_backbone,
               verifier=Verifier(VerifierConfig(kind="visual", settings=TrainSettings(steps=5, batch_size=8))),
               negatives=[negatives], use_bank=False, backbone_spec=str(tiny_vision_dir))
    root = make_root(base / "root", {"smooth": "smooth", "rough": "rough", "unknown": "unknown"})
    return SimpleNamespace(base=base, registry=registry, backbone=tiny_vision_backbone,
                           backbone_dir=tiny_vision_dir, root=root)


@pytest.fixture(scope="module")
def clean_report(ev):
    return evaluation.evaluate(ev.registry, ev.backbone, ev.root, keep_scores=True)


def by_rel(report: dict, condition: int, root: Path) -> dict[str, dict[str, float]]:
    return {Path(im["path"]).relative_to(root).as_posix(): im["scores"]
            for im in report["conditions"][condition]["images"]}


# -- the library -------------------------------------------------------------------------------------


def test_report_structure_and_counts(ev, clean_report):
    r = clean_report
    assert r["format"] == evaluation.REPORT_FORMAT and r["version"] == 1
    assert [s["name"] for s in r["sources"]] == ["rough", "smooth"]
    assert all(s["has_folder"] and 0.0 <= s["threshold"] <= 1.0 for s in r["sources"])
    assert {i["name"]: (i["kind"], i["n_images"]) for i in r["labels"]} == {
        "rough": ("source", N_EVAL), "smooth": ("source", N_EVAL), "unknown": ("unknown", N_EVAL)}
    assert r["n_images"] == r["n_files"] == 3 * N_EVAL and r["n_failed"] == 0 and r["failures"] == []
    assert r["unknown_label"] == "unknown" and r["skipped_sources"] == []
    assert r["settings"]["bootstrap"]["n"] == 500
    assert [c["name"] for c in r["conditions"]] == ["clean"]
    # strict JSON: no NaN anywhere, per-image records only in the library's dict
    text = json.dumps(evaluation.public(r), allow_nan=False)
    assert '"images"' not in text

    (c,) = r["conditions"]
    assert c["perturbation"] is None and c["n_images"] == 3 * N_EVAL
    for name, m in c["sources"].items():
        assert (m["n_pos"], m["n_neg"]) == (N_EVAL, 2 * N_EVAL)
        assert 0.0 <= m["auc"] <= 1.0
        lo, hi = m["auc_ci"]
        assert 0.0 <= lo <= m["auc"] <= hi <= 1.0
        assert m["tpr"] == m["n_pos_accepted"] / m["n_pos"] and m["far"] == m["n_neg_accepted"] / m["n_neg"]
        by_label = m["accept_rate_by_label"]
        assert by_label[name]["n_accepted"] == m["n_pos_accepted"]
        assert sum(v["n_accepted"] for k, v in by_label.items() if k != name) == m["n_neg_accepted"]
        # the curve runs from (0, 0) to (1, 1) and its area is the AUC
        fpr, tpr = np.array(m["roc"]["fpr"]), np.array(m["roc"]["tpr"])
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        assert np.trapezoid(tpr, fpr) == pytest.approx(m["auc"], abs=1e-5)
        # these families are easy: the verifiers separate them
        assert m["auc"] > 0.5

    o = c["open_set"]
    assert (o["n_known"], o["n_unknown"]) == (2 * N_EVAL, N_EVAL)
    for key in ("closed_set_accuracy", "known_accuracy", "known_rejection_rate", "unknown_rejection_rate",
                "auroc", "oscr"):
        assert 0.0 <= o[key] <= 1.0, key
    assert o["auroc_ci"][0] <= o["auroc"] <= o["auroc_ci"][1]
    assert o["known_accuracy"] == o["n_known_correct"] / o["n_known"]
    assert o["unknown_rejection_rate"] == o["n_unknown_rejected"] / o["n_unknown"]

    conf = c["confusion"]
    assert conf["rows"] == conf["columns"] == ["rough", "smooth", "unknown"]
    matrix = np.array(conf["matrix"])
    assert matrix.sum() == r["n_images"]
    assert matrix.sum(axis=1).tolist() == [N_EVAL, N_EVAL, N_EVAL]
    assert matrix[0, 0] + matrix[1, 1] == o["n_known_correct"] and matrix[2, 2] == o["n_unknown_rejected"]
    folder = c["confusion_by_folder"]
    assert folder["rows"] == ["rough", "smooth", "unknown"] and np.array(folder["matrix"]).sum() == r["n_images"]


def test_figures_match_an_independent_computation(ev, clean_report):
    """Scores from `occ attribute`'s path, fed to occ.metrics by hand, give the report's figures."""
    from occ.attribution import Attributor

    attributor = Attributor.from_registry(ev.registry, ev.backbone)
    decisions = {label: list(attributor.run([ev.root / label])) for label in ("rough", "smooth", "unknown")}
    c = clean_report["conditions"][0]
    for name in ("rough", "smooth"):
        pos = [d.scores[name] for d in decisions[name]]
        neg = [d.scores[name] for label, ds in decisions.items() if label != name for d in ds]
        assert c["sources"][name]["auc"] == metrics.roc_auc(pos, neg)
        assert c["sources"][name]["tpr"] == np.mean([name in d.accepted for d in decisions[name]])
    labels = [label for label, ds in decisions.items() for _ in ds]
    flat = [d for ds in decisions.values() for d in ds]
    summary = metrics.open_set_summary(labels, [d.source or "unknown" for d in flat],
                                       [max(d.scores.values()) for d in flat], ["rough", "smooth"])
    assert c["open_set"]["auroc"] == summary["auroc"] and c["open_set"]["oscr"] == summary["oscr"]


def test_small_labels_are_flagged(clean_report):
    warnings = "\n".join(clean_report["warnings"])
    for name in ("rough", "smooth"):
        assert f"source '{name}': only {N_EVAL} positive images (< 20)" in warnings
        assert f"source '{name}': only {2 * N_EVAL} negative images (< 50)" in warnings
    assert f"only {N_EVAL} unknown images (< 50)" in warnings
    assert f"only {2 * N_EVAL} images of known sources (< 20)" in warnings


def test_auc_below_half_is_not_flipped(ev, tmp_path):
    """Swap the folders: each source's positives are now the other family. With two folders the AUC
    must become exactly 1 - AUC (reported below 0.5), never flipped back."""
    normal = make_root(tmp_path / "normal", {"smooth": "smooth", "rough": "rough"})
    swapped = make_root(tmp_path / "swapped", {"smooth": "rough", "rough": "smooth"})
    a = evaluation.evaluate(ev.registry, ev.backbone, normal, bootstrap_n=50)["conditions"][0]["sources"]
    b = evaluation.evaluate(ev.registry, ev.backbone, swapped, bootstrap_n=50)
    for name in ("rough", "smooth"):
        assert a[name]["auc"] > 0.5
        got = b["conditions"][0]["sources"][name]["auc"]
        assert got < 0.5 and got == pytest.approx(1.0 - a[name]["auc"], abs=1e-12)
    assert any("no out-of-registry folder" in w for w in b["warnings"])
    assert b["conditions"][0]["open_set"]["auroc"] is None  # undefined, not NaN


@pytest.mark.parametrize("spec", ["crop:0.5", "jpeg:40"])
def test_perturbation_is_applied_as_specified(ev, tmp_path, spec):
    """`--perturb X` scores every image as if the user had applied X to it first."""
    size = (96, 80)  # a 0.5 crop stays above the 32 px decoding minimum
    root = make_root(tmp_path / "root", {"smooth": "smooth", "unknown": "unknown"}, seeds=range(3), size=size)
    (perturbation,) = parse_perturb_spec(spec)
    done = tmp_path / "done"
    for path in root.rglob("*.png"):
        target = done / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        perturbation.apply(Image.open(path).convert("RGB")).save(target)  # PNG: lossless

    report = evaluation.evaluate(ev.registry, ev.backbone, root, spec, keep_scores=True, bootstrap_n=20)
    assert [c["name"] for c in report["conditions"]] == ["clean", perturbation.label]
    assert report["settings"]["perturbations"] == [perturbation.label]
    clean, perturbed = by_rel(report, 0, root), by_rel(report, 1, root)
    by_hand = by_rel(evaluation.evaluate(ev.registry, ev.backbone, done, keep_scores=True, bootstrap_n=20), 0, done)
    assert set(perturbed) == set(by_hand) == set(clean) and len(clean) == 6
    diffs = []
    for rel in clean:
        for name in ("rough", "smooth"):
            assert perturbed[rel][name] == pytest.approx(by_hand[rel][name], abs=1e-5)
            diffs.append(abs(perturbed[rel][name] - clean[rel][name]))
    assert max(diffs) > 1e-3  # the perturbation changed what the verifiers saw


def test_bad_files_are_reported_once_and_the_rest_evaluated(ev, tmp_path):
    root = make_root(tmp_path / "root", {"smooth": "smooth", "real": "unknown"}, seeds=range(3))
    (root / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "stray.png").write_bytes(b"ignored: not in a label folder")
    seen = []
    report = evaluation.evaluate(ev.registry, ev.backbone, root, "blur:1.5,resize:0.5", on_error=seen.append,
                                 bootstrap_n=20)
    assert len(seen) == 1 and seen[0].path.endswith("broken.png")  # once, not once per condition
    assert report["n_failed"] == 1 and report["failures"][0]["path"].endswith("broken.png")
    assert report["n_files"] == 7 and report["n_images"] == 6
    assert [c["n_images"] for c in report["conditions"]] == [6, 6, 6]
    assert {i["name"]: i["kind"] for i in report["labels"]} == {"real": "unknown", "smooth": "source"}
    warnings = "\n".join(report["warnings"])
    assert "1 file(s) could not be read" in warnings and "1 file(s) directly under ROOT" in warnings
    assert "source 'rough': no folder named 'rough'" in warnings
    rough = report["conditions"][0]["sources"]["rough"]
    assert rough["n_pos"] == 0 and rough["auc"] is None and rough["tpr"] is None and rough["n_neg"] == 6


def test_damaged_source_is_left_out_with_its_folder(ev, tmp_path):
    registry_dir = tmp_path / "registry"
    shutil.copytree(ev.registry.root, registry_dir)
    (weights,) = (registry_dir / "sources" / "rough").glob("*/verifier.safetensors")
    weights.write_bytes(weights.read_bytes() + b"xx")
    skipped = []
    report = evaluation.evaluate(registry_dir, ev.backbone, ev.root, on_skip=lambda n, e: skipped.append(n),
                                 bootstrap_n=20)
    assert skipped == ["rough"] and [s["name"] for s in report["sources"]] == ["smooth"]
    assert report["skipped_sources"][0]["name"] == "rough"
    assert {i["name"]: i["kind"] for i in report["labels"]}["rough"] == "excluded"
    assert report["n_images"] == 2 * N_EVAL  # the rough folder is neither positive nor unknown
    c = report["conditions"][0]
    assert c["confusion"]["columns"] == ["smooth", "unknown"] and c["sources"]["smooth"]["n_neg"] == N_EVAL
    assert any("source 'rough' could not be loaded" in w for w in report["warnings"])
    with pytest.raises(OccError, match="rough"):
        evaluation.evaluate(registry_dir, ev.backbone, ev.root)  # no on_skip: raise


def test_usage_errors(ev, tmp_path):
    from occ.registry import Registry

    flat = tmp_path / "flat"
    flat.mkdir()
    tiny_clip.gradient_image(0).save(flat / "a.png")
    with pytest.raises(UsageError, match="has no subfolders"):
        evaluation.evaluate(ev.registry, ev.backbone, flat)
    with pytest.raises(UsageError, match="not a folder"):
        evaluation.evaluate(ev.registry, ev.backbone, tmp_path / "missing")
    (tmp_path / "hollow" / "real").mkdir(parents=True)
    with pytest.raises(UsageError, match="no image files"):
        evaluation.evaluate(ev.registry, ev.backbone, tmp_path / "hollow")
    with pytest.raises(UsageError, match="is empty"):
        evaluation.evaluate(Registry(tmp_path / "empty-registry"), ev.backbone, ev.root)
    with pytest.raises(UsageError, match="--perturb"):
        evaluation.evaluate(ev.registry, ev.backbone, ev.root, "jpeg:200")


ODD = "odd $x_1$ *[y]|z"  # a folder name that is markdown, rich markup and matplotlib mathtext at once


def test_write_report(ev, tmp_path):
    pytest.importorskip("matplotlib")
    root = tmp_path / "root"
    shutil.copytree(ev.root, root)
    (root / "unknown").rename(root / ODD)
    report = evaluation.evaluate(ev.registry, ev.backbone, root, "crop:0.9", keep_scores=True, bootstrap_n=50)
    out = tmp_path / "out" / "nested"
    written = evaluation.write_report(report, out)
    names = {p.name for p in written}
    pngs = {"roc-rough.png", "roc-smooth.png", "open-set-roc.png", "confusion-clean.png", "confusion-crop-0.9.png"}
    assert names == {"report.json", "report.md", "scores.csv"} | pngs
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(evaluation.public(report)))
    md = (out / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in md
    assert "| odd \\$x\\_1\\$ \\*\\[y\\]\\|z | out of registry" in md
    assert "## Warnings" in md and "(< 20)" in md.replace("\\", "") and "fewer than 20 positives" in md
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "condition,path,label,decision,score:rough,score:smooth"
    assert len(rows) == 1 + 2 * report["n_images"]


def test_write_report_without_matplotlib(clean_report, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match="needs matplotlib"):
        evaluation.write_report(clean_report, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# -- the command line --------------------------------------------------------------------------------


def run_cli(*args):
    from typer.testing import CliRunner

    from occ.cli import app

    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_cli_json_is_pure_and_complete(ev):
    result = run_cli(ev.root, "--registry", ev.registry.root, "--backbone", ev.backbone_dir, "--json",
                     "--perturb", "resize:0.5")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["conditions"]] == ["clean", "resize:0.5"]
    assert report["n_images"] == 3 * N_EVAL and report["warnings"]
    assert "warning:" in result.stderr  # the warnings also reach a human watching stderr


def test_cli_bad_file_exit_1(ev, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ev.root, root)
    (root / "unknown" / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run_cli(root, "--registry", ev.registry.root, "--backbone", ev.backbone_dir, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["n_failed"] == 1 and report["n_images"] == 3 * N_EVAL
    errors = [line for line in result.stderr.splitlines() if "zz-broken.jpg" in line]
    assert len(errors) == 1 and errors[0].startswith("skipped")


def test_cli_tables_and_report(ev, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    root = tmp_path / "root"
    shutil.copytree(ev.root, root)
    (root / "unknown").rename(root / ODD)
    result = run_cli(root, "--registry", ev.registry.root, "--backbone", ev.backbone_dir, "--report", out)
    assert result.exit_code == 0, result.stderr
    for text in ("verification", "open set", "confusion (clean)", "warning:", "(< 20)", "report written to", ODD):
        assert text in result.stdout
    assert {"report.json", "report.md", "roc-smooth.png", "roc-rough.png", "confusion-clean.png"} <= {
        p.name for p in out.iterdir()}


@pytest.mark.parametrize("case", ["no-subfolders", "missing-root", "empty-registry", "bad-perturb", "no-matplotlib"])
def test_cli_usage_errors_exit_2(ev, tmp_path, monkeypatch, case):
    root, registry, extra = ev.root, ev.registry.root, []
    if case == "no-subfolders":
        root = tmp_path / "flat"
        root.mkdir()
        tiny_clip.gradient_image(0).save(root / "a.png")
    elif case == "missing-root":
        root = tmp_path / "nowhere"
    elif case == "empty-registry":
        registry = tmp_path / "empty-registry"
    elif case == "bad-perturb":
        extra = ["--perturb", "jpeg:75,sharpen:2"]
    else:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        extra = ["--report", tmp_path / "report"]
    result = run_cli(root, "--registry", registry, "--backbone", ev.backbone_dir, "--json", *extra)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
    assert not (tmp_path / "report").exists()
