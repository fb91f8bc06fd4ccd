"""The registry as one model (issue 13): order-free decisions, refits that survive faults, overlaps,
thresholds, removal, and the enroll options that shape what the joint model is fitted on."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clikit import invoke, occ_argv, subprocess_env, tree
from PIL import Image

from occ.attribution import Attributor
from occ.config import VerifierConfig
from occ.enrollment import enroll
from occ.openset import joint_for, refit
from occ.registry import Registry
from occ.sources import set_threshold
from occ.testing.imagegen import family_folders
from occ.testing.tiny_clip import gradient_image, noise_image
from occ.training import TrainSettings
from occ.verifier import Verifier


def _stripes(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.arange(size[0])[None, :, None]
    period = rng.uniform(3, 6)
    a = (np.sin(x / period + rng.uniform(0, 6)) > 0).astype(np.float32)
    arr = np.broadcast_to(a, (size[1], size[0], 3)) * np.array([200, 60, 220]) + rng.normal(0, 8, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


FAMILIES = {"noise": noise_image, "grad": gradient_image, "stripes": _stripes}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return family_folders(tmp_path_factory.mktemp("families"), FAMILIES, 8, 4)


def _enroll_all(root: Path, order, images, backbone, views=1):
    reg = Registry(root)
    for name in order:
        enroll(reg, name, [images[name][0]], backbone=backbone, backbone_spec=backbone.location,
               verifier=Verifier(VerifierConfig(kind="lda", views=views, settings=TrainSettings(seed=0))))
    return reg


def _decisions(reg, backbone, images):
    att = Attributor.from_registry(reg, backbone)
    tests = [images[n][1] for n in sorted(images)]
    return att, {d.path.rsplit("/", 3)[-3] + "/" + Path(d.path).name: d for d in att.run(tests)}


def test_same_sources_in_two_orders_give_the_same_decisions(tmp_path, images, tiny_vision_backbone):
    a = _enroll_all(tmp_path / "a", ["noise", "grad", "stripes"], images, tiny_vision_backbone)
    b = _enroll_all(tmp_path / "b", ["stripes", "noise", "grad"], images, tiny_vision_backbone)
    _, da = _decisions(a, tiny_vision_backbone, images)
    _, db = _decisions(b, tiny_vision_backbone, images)
    assert da.keys() == db.keys() and len(da) == 12
    for key in da:
        assert da[key].source == db[key].source and da[key].accepted == db[key].accepted
        for name in FAMILIES:
            assert da[key].scores[name] == pytest.approx(db[key].scores[name], abs=1e-6)
    # and the joint model is not a formality: the test images of each family are told apart
    assert np.mean([d.source == key.split("/")[0] for key, d in da.items()]) >= 0.5


def test_a_large_registry_after_changes_in_any_order_is_its_full_refit(tmp_path, images, tiny_vision_backbone,
                                                                       monkeypatch):
    """Past occ.joint.LARGE_SOURCES sources (lowered here to 1), each change refits with the scalable fit;
    enroll / replace / remove in two orders leave the same stored model as a full refit of the end state."""
    import occ.joint as joint
    from occ.openset import sync

    monkeypatch.setattr(joint, "LARGE_SOURCES", 1)
    bb = tiny_vision_backbone

    def enroll_one(reg, name, train, replace=False):
        enroll(reg, name, [train], backbone=bb, backbone_spec=bb.location, replace=replace,
               verifier=Verifier(VerifierConfig(kind="lda", views=1, settings=TrainSettings(seed=0))))

    a = _enroll_all(tmp_path / "a", ["noise", "grad", "stripes"], images, bb)
    a.remove("noise")
    enroll_one(a, "grad", images["noise"][0], replace=True)  # grad now learns the noise images
    b = _enroll_all(tmp_path / "b", ["stripes"], images, bb)
    enroll_one(b, "grad", images["noise"][0])
    models = [joint_for(r, bb) for r in (a, b)]
    assert all(not stale and model.scaled_ and model.names_ == ["grad", "stripes"] for model, stale in models)
    stored = [r.joint_path(bb.fingerprint).read_bytes() for r in (a, b)]
    sync(a, force=True)  # occ refit
    assert a.joint_path(bb.fingerprint).read_bytes() == stored[0]
    (ma, _), (mb, _) = models
    x = np.random.default_rng(0).normal(0, 1, (20, ma.geometry_.mean.size)).astype(np.float32)
    np.testing.assert_allclose(ma.margins(x), mb.margins(x), rtol=1e-5, atol=1e-5)
    for name in ma.names_:
        assert ma.calibrations_[name].threshold == pytest.approx(mb.calibrations_[name].threshold, abs=1e-5)


def test_every_source_sees_the_others_whatever_the_order(tmp_path, images, tiny_vision_backbone):
    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert not stale and model.names_ == ["grad", "noise"]
    # the first-enrolled source's held-out non-targets include the second source's training rows
    n_grad_rows = model.n_rows_["grad"]
    cal = model.calibrations_["noise"]
    assert len(cal.neg_scores) == n_grad_rows + model.n_rows_["non-target"]


def test_interrupted_refit_leaves_every_source_usable(tmp_path, images, tiny_vision_backbone, monkeypatch):
    import occ.openset as openset

    reg = _enroll_all(tmp_path / "r", ["noise"], images, tiny_vision_backbone)
    before = reg.joint_path(tiny_vision_backbone.fingerprint).read_bytes()

    def crash(step):
        raise KeyboardInterrupt(f"killed at {step}")

    monkeypatch.setattr(openset, "_fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        enroll(reg, "grad", [images["grad"][0]], backbone=tiny_vision_backbone,
               backbone_spec=tiny_vision_backbone.location,
               verifier=Verifier(VerifierConfig(kind="lda", settings=TrainSettings(seed=0))))
    monkeypatch.undo()
    assert reg.joint_path(tiny_vision_backbone.fingerprint).read_bytes() == before  # the old model, whole
    assert reg.names() == ["grad", "noise"]  # the source was stored before the refit began
    att, stale_run = _decisions(reg, tiny_vision_backbone, images)
    assert att.joint_stale and set(att.joint.names_) == {"grad", "noise"}  # never the half-updated model
    refit(reg, tiny_vision_backbone)
    att2, fresh = _decisions(reg, tiny_vision_backbone, images)
    assert not att2.joint_stale
    assert {k: d.source for k, d in stale_run.items()} == {k: d.source for k, d in fresh.items()}


KILL_CHILD = r"""
import sys, time
import occ.openset as openset

def hook(step):
    sys.stderr.write(f"at {step}\n"); sys.stderr.flush(); time.sleep(3600)

openset._fault_point = hook
sys.argv = ["occ", *sys.argv[1:]]
from occ.cli import main
main()
"""


def test_kill_9_during_refit(tmp_path, images, tiny_vision_dir, tiny_vision_backbone):
    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    before = reg.joint_path(tiny_vision_backbone.fingerprint).read_bytes()
    set_threshold(reg, "grad", far=0.2)  # the stored model still matches (thresholds re-chosen in place)
    assert reg.joint_path(tiny_vision_backbone.fingerprint).read_bytes() != before
    assert not joint_for(reg, tiny_vision_backbone)[1]
    argv = occ_argv("refit", "--registry", reg.root, "--backbone", tiny_vision_dir)[1:]
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, *argv[2:]], env=subprocess_env(),
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while "at joint-write" not in line and time.monotonic() < deadline:
            line = child.stderr.readline() or line
            if child.poll() is not None:
                break
        assert "at joint-write" in line, child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
    after = reg.joint_path(tiny_vision_backbone.fingerprint).read_bytes()
    assert after != before  # the threshold change is still there
    run = invoke("attribute", images["noise"][1], "--registry", reg.root, "--backbone", tiny_vision_dir, "--json")
    assert run.code == 0, run
    assert "stored joint model does not match" not in run.stderr


# Stops the refit with its joint model written to the temporary file and not yet moved into place.
KILL_IN_REPLACE_CHILD = r"""
import os, sys, time
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(src)).startswith(".joint-"):
        sys.stderr.write("at joint-replace\n"); sys.stderr.flush(); time.sleep(3600)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
sys.argv = ["occ", *sys.argv[1:]]
from occ.cli import main
main()
"""


def _kill_at(script: str, marker: str, argv: list) -> None:
    """Run ``occ ARGV`` in a child running ``script``; kill -9 it once it says ``marker`` on stderr."""
    child = subprocess.Popen([sys.executable, "-c", script, *argv], env=subprocess_env(), stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while marker not in line and time.monotonic() < deadline:
            line = child.stderr.readline() or line
            if child.poll() is not None:
                break
        assert marker in line, child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)


def test_kill_9_while_the_joint_model_is_moved_into_place(tmp_path, images, tiny_vision_dir, tiny_vision_backbone):
    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    path = reg.joint_path(tiny_vision_backbone.fingerprint)
    before = path.read_bytes()
    layout = sorted(os.listdir(reg.root))
    assert not [n for n in layout if n.endswith(".tmp")]
    _kill_at(KILL_IN_REPLACE_CHILD, "at joint-replace",
             [str(a) for a in occ_argv("refit", "--registry", reg.root, "--backbone", tiny_vision_dir)[3:]])
    strays = [n for n in os.listdir(reg.root) if n.startswith(".joint-") and n.endswith(".tmp")]
    assert len(strays) == 1  # killed with the new model whole in its temporary file, under the lock
    assert path.read_bytes() == before  # the stored model is the previous one, whole
    # the registry is usable as it is: every source attributes, with the stored (matching) model
    run = invoke("attribute", images["noise"][1], "--registry", reg.root, "--backbone", tiny_vision_dir, "--json")
    assert run.code == 0 and "stored joint model does not match" not in run.stderr, run
    # and the next write sweeps what the killed one left: the registry folder is as it was
    run = invoke("refit", "--registry", reg.root, "--backbone", tiny_vision_dir)
    assert run.code == 0, run
    assert sorted(os.listdir(reg.root)) == layout
    assert not joint_for(reg, tiny_vision_backbone)[1]


def test_overlapping_training_sets_are_reported(tmp_path, images, tiny_vision_dir):
    reg = tmp_path / "r"
    assert invoke("enroll", "noise", images["noise"][0], "--registry", reg, "--backbone", tiny_vision_dir).code == 0
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted(images["noise"][0].iterdir())[:3] + sorted(images["grad"][0].iterdir()):
        (mixed / f"{p.parent.parent.name}-{p.name}").write_bytes(p.read_bytes())
    run = invoke("enroll", "grad", mixed, "--registry", reg, "--backbone", tiny_vision_dir)
    assert run.code == 2 and "3 of its training images are already training images of source 'noise'" in run.stderr
    run = invoke("enroll", "grad", mixed, "--registry", reg, "--backbone", tiny_vision_dir, "--allow-overlap")
    assert run.code == 0, run
    assert "3 of these training images are also training images of source 'noise'" in run.stderr


def test_few_shots_are_warned_about(tmp_path, images, tiny_vision_dir):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(images["noise"][0].iterdir())[:3]:
        (few / p.name).write_bytes(p.read_bytes())
    run = invoke("enroll", "noise", few, "--registry", tmp_path / "r", "--backbone", tiny_vision_dir, "--force")
    assert run.code == 0, run  # (without --force, fewer than 5 images are refused: tests/test_enroll_options.py)
    assert "only 3 target images" in run.stderr and "held-out figures rest on 3 target images" in run.stderr
    run = invoke("enroll", "grad", images["grad"][0], "--registry", tmp_path / "r", "--backbone", tiny_vision_dir)
    assert "only" not in run.stderr  # 8 images: no warning about the count


@pytest.mark.parametrize("views", [0, 1])
def test_views_option_sets_the_stored_training_rows(tmp_path, images, tiny_vision_dir, views):
    reg = tmp_path / "r"
    run = invoke("enroll", "noise", images["noise"][0], "--registry", reg, "--backbone", tiny_vision_dir,
                 "--views", str(views))
    assert run.code == 0, run
    tensors, meta = Registry(reg).load("noise")
    assert meta["views"] == views
    assert len(tensors["evidence.ids"]) == 8 * (1 + views)
    assert sorted(set(tensors["evidence.ids"].tolist())) == list(range(8))


def test_views_and_training_options_are_refused_where_they_do_not_apply(tmp_path, images, tiny_vision_dir):
    base = ("enroll", "noise", images["noise"][0], "--registry", tmp_path / "r", "--backbone", tiny_vision_dir)
    assert invoke(*base, "--steps", "5").code == 2  # lda is fitted in closed form
    assert invoke(*base, "--method", "probe", "--views", "1").code == 2
    assert invoke(*base, "--views", "-1").code == 2
    assert not (tmp_path / "r" / "sources").exists()


def test_remove_refits_without_the_source(tmp_path, images, tiny_vision_dir, tiny_vision_backbone):
    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    run = invoke("sources", "remove", "grad", "--yes", "--registry", reg.root)
    assert run.code == 0, run
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert model.names_ == ["noise"] and not stale
    assert invoke("sources", "remove", "noise", "--yes", "--registry", reg.root).code == 0
    assert not reg.joint_path(tiny_vision_backbone.fingerprint).exists()


def test_refit_command_stores_a_matching_model(tmp_path, images, tiny_vision_dir, tiny_vision_backbone,
                                              other_clip_dir):
    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    reg.joint_path(tiny_vision_backbone.fingerprint).unlink()
    assert joint_for(reg, tiny_vision_backbone)[1] is False  # nothing stored: fitted in memory, not "stale"
    run = invoke("refit", "--registry", reg.root, "--backbone", tiny_vision_dir)
    assert run.code == 0, run
    assert "refitted over 2 source(s) (grad, noise)" in run.stderr
    assert reg.joint_path(tiny_vision_backbone.fingerprint).exists()
    # --backbone picks the backbone whose sources are refitted: none were enrolled on another one
    run = invoke("refit", "--registry", reg.root, "--backbone", other_clip_dir)
    assert run.code == 0 and "nothing to refit" in run.stderr, run


def test_stored_model_keeps_every_held_out_score_and_an_unreadable_one_is_stale(tmp_path, images,
                                                                               tiny_vision_backbone):
    import json

    from safetensors import safe_open

    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    path = reg.joint_path(tiny_vision_backbone.fingerprint)
    stored, stale = joint_for(reg, tiny_vision_backbone)
    assert not stale
    path.rename(path.with_suffix(".away"))
    fitted, _ = joint_for(reg, tiny_vision_backbone)  # the same fit, in memory
    path.with_suffix(".away").rename(path)
    for name in ("grad", "noise"):
        assert stored.calibrations_[name] == fitted.calibrations_[name]  # scores, thresholds, Platt: exact
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["occ"])
        assert f.get_tensor("neg:noise").dtype == np.float64
    assert "neg_scores" not in meta["calibrations"]["noise"]  # not in the JSON, whose size grew as N^2
    # written by the previous format (v3: every held-out score, no bin counts): refitted, and said so
    from safetensors.numpy import load_file, save_file

    good = path.read_bytes()
    old = {k: v for k, v in load_file(str(path)).items() if not k.startswith("neg_counts:")}
    meta["manifest"]["format"] = "occ-joint-v3"
    save_file(old, str(path), metadata={"occ": json.dumps(meta)})
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert stale and model.names_ == ["grad", "noise"]
    path.write_bytes(good)
    assert joint_for(reg, tiny_vision_backbone)[1] is False
    path.write_bytes(path.read_bytes()[:100])  # damaged (or written by an older occ): refit, and say so
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert stale and model.names_ == ["grad", "noise"]


def test_verify_and_attribute_agree(tmp_path, images, tiny_vision_dir, tiny_vision_backbone):
    import json

    reg = _enroll_all(tmp_path / "r", ["noise", "grad", "stripes"], images, tiny_vision_backbone)
    tests = [images[n][1] for n in FAMILIES]
    run = invoke("attribute", *tests, "--registry", reg.root, "--json")
    att = [json.loads(line) for line in run.stdout.splitlines()]
    for name in FAMILIES:
        ver = [json.loads(line) for line in invoke("verify", *tests, "--source", name, "--registry", reg.root,
                                                   "--json").stdout.splitlines()]
        assert [v["accepted"] for v in ver] == [a["source"] == name for a in att]


def test_importing_a_copy_under_another_name_is_refused_unless_allowed(tmp_path, images, tiny_vision_dir):
    reg = tmp_path / "r"
    assert invoke("enroll", "noise", images["noise"][0], "--registry", reg, "--backbone", tiny_vision_dir).code == 0
    archive = tmp_path / "noise.occ.zip"
    assert invoke("export", "noise", archive, "--registry", reg).code == 0
    before = tree(reg)
    run = invoke("import", archive, "--as", "again", "--registry", reg)
    assert run.code == 2, run
    assert run.err_lines == ["error: cannot import 'again': 8 of its training images are already training images of "
                             "source 'noise' (same file contents), and would be a target of one source and a "
                             "non-target of the other; pass --allow-overlap to import it anyway"], run
    assert tree(reg) == before  # nothing written, the joint model untouched
    assert invoke("import", archive, "--replace", "--registry", reg).code == 0  # itself: no overlap
    run = invoke("import", archive, "--as", "again", "--allow-overlap", "--registry", reg)
    assert run.code == 0, run
    assert "8 of its training images are also training images of source 'noise'" in run.stderr
    assert "refitted over 2 source(s) (again, noise)" in run.stderr


# -------------------------------------------------------------------------------------------------- the registry
# owns its joint model (issue 25): the library refits after every change, under the registry's lock


def _stored_names(reg, backbone):
    """The sources of the stored joint model when it matches the registry (None when it does not)."""
    from occ.openset import fresh_stored

    model = fresh_stored(reg, backbone.fingerprint)
    return None if model is None else model.names_


def test_api_remove_and_import_leave_a_fresh_joint_model(tmp_path, images, tiny_vision_backbone):
    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    archive = reg.export("grad", tmp_path / "grad.occ.zip")
    reg.remove("grad")  # the Python API, no command line
    assert reg.joint_path(tiny_vision_backbone.fingerprint).exists()
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert not stale and model.names_ == ["noise"] and _stored_names(reg, tiny_vision_backbone) == ["noise"]
    reg.import_file(archive, as_name="grad2")
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert not stale and model.names_ == ["grad2", "noise"]
    assert _stored_names(reg, tiny_vision_backbone) == ["grad2", "noise"]
    reg.remove("grad2")
    reg.remove("noise")
    assert not reg.joint_path(tiny_vision_backbone.fingerprint).exists()  # no lda source left: no model


def test_stray_joint_temporary_files_are_swept_by_the_next_write(tmp_path, images, tiny_vision_backbone):
    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    fp_key = reg.joint_path(tiny_vision_backbone.fingerprint).name
    strays = [reg.root / ".joint-x.tmp", reg.root / f".{fp_key}.0123456789abcdef.tmp"]
    for stray in strays:
        stray.write_bytes(b"left by a killed process")
    keep = reg.root / ".joint-notes.txt"  # not a temporary file of the registry's
    keep.write_text("mine")
    set_threshold(reg, "grad", far=0.2)  # re-chooses the threshold in the stored model: a joint write
    assert [s.exists() for s in strays] == [False, False] and keep.exists()
    strays[0].write_bytes(b"again")
    reg.remove("grad")  # a source write sweeps them too
    assert not strays[0].exists() and keep.exists()


def test_the_joint_model_is_written_under_the_registry_lock(tmp_path, images, tiny_vision_backbone, monkeypatch):
    from occ.errors import RegistryError
    from occ.registry import schema

    reg = _enroll_all(tmp_path / "r", ["noise"], images, tiny_vision_backbone)
    before = reg.joint_path(tiny_vision_backbone.fingerprint).read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", "import filelock, sys, time\n"
                               "lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True)\n"
                               "time.sleep(120)", str(reg.root / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(schema, "LOCK_TIMEOUT", 0.5)
        with pytest.raises(RegistryError, match="locked by another process"):
            refit(reg, tiny_vision_backbone)
    finally:
        holder.kill()
        holder.wait(30)
    assert reg.joint_path(tiny_vision_backbone.fingerprint).read_bytes() == before


def test_a_model_fitted_while_a_source_changed_is_not_stored(tmp_path, images, tiny_vision_backbone, monkeypatch):
    import occ.openset as openset

    reg = _enroll_all(tmp_path / "r", ["noise", "grad"], images, tiny_vision_backbone)
    path = reg.joint_path(tiny_vision_backbone.fingerprint)
    before = path.read_bytes()

    def change_grad(step):  # another process stores a new version of grad while this one fits
        monkeypatch.setattr(openset, "_fault_point", lambda _step: None)
        reg.save("grad", *reg.load("grad"), replace=True, refit=False)

    monkeypatch.setattr(openset, "_fault_point", change_grad)
    assert refit(reg, tiny_vision_backbone) is not None
    assert path.read_bytes() == before  # fitted on grad's old version: not stored over the registry's model
    assert joint_for(reg, tiny_vision_backbone)[1]  # (the change's own refit was skipped here: stale)
    openset.sync(reg)
    assert not joint_for(reg, tiny_vision_backbone)[1] and _stored_names(reg, tiny_vision_backbone) == ["grad", "noise"]


def test_enrollment_progress_counts_the_images_it_reads(tmp_path, images, tiny_vision_backbone):
    train = tmp_path / "train"
    shutil.copytree(images[sorted(images)[0]][0], train)
    (train / "broken.png").write_bytes(b"not an image")
    seen: dict[str, list[tuple[int, int]]] = {}
    enroll(Registry(tmp_path / "reg"), "s", [train, tmp_path / "missing.png"], backbone=tiny_vision_backbone,
           verifier=Verifier(VerifierConfig(kind="lda", views=2, settings=TrainSettings(seed=0))),
           on_error=lambda exc: None, progress=lambda stage, done, total: seen.setdefault(stage, []).append(
               (done, total)))
    # 8 images and a broken file found in the folder (the missing path is reported, not counted)
    assert seen["target images"][0] == (0, 9) and seen["target images"][-1] == (9, 9)
    # each of the 8 readable shots through the image itself and 2 laundered views
    assert seen["training views"][-1] == (24, 24)
    assert all(a[0] <= b[0] for a, b in zip(seen["training views"], seen["training views"][1:]))
