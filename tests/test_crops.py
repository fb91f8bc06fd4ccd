"""Native-resolution crops (occ.evidence.native_crops): the crops, their place in the feature cache, what
enrollment stores of them, and how the joint model reads them (and does without them for older sources)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from clikit import invoke
from PIL import Image
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from occ.attribution import Attributor
from occ.config import VerifierConfig
from occ.enrollment import enroll
from occ.evidence import (
    CROP_COUNT,
    DEFAULT_BLOCKS,
    LaunderedView,
    crop_evidence,
    default_blocks,
    default_crop_blocks,
    evidence,
    native_crops,
)
from occ.features import CROPS_KEY, FeatureExtractor
from occ.openset import CROP_EVIDENCE_KEYS, JointSettings, joint_for, refit
from occ.registry import Registry
from occ.testing import traced_peak
from occ.testing.imagegen import family_folders
from occ.testing.tiny_clip import gradient_image, noise_image
from occ.training import TrainSettings
from occ.verifier import Verifier


def _random(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_crops_are_the_images_own_pixels_on_the_diagonal():
    image = _random(400, 300)
    crops = native_crops(image, 100)
    assert len(crops) == CROP_COUNT and all(c.size == (100, 100) and c.mode == "RGB" for c in crops)
    # centred a quarter of the way in from the top left, and from the bottom right: no resampling
    assert np.array_equal(np.asarray(crops[0]), np.asarray(image.crop((50, 25, 150, 125))))
    assert np.array_equal(np.asarray(crops[1]), np.asarray(image.crop((250, 175, 350, 275))))
    again = native_crops(image, 100)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(crops, again))


def test_a_small_image_gives_its_largest_squares_resized_up():
    image = _random(90, 60)
    crops = native_crops(image, 100)
    assert [c.size for c in crops] == [(100, 100)] * 2
    expected = image.crop((0, 0, 60, 60)).resize((100, 100), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(crops[0]), np.asarray(expected))
    assert np.array_equal(np.asarray(crops[1]), np.asarray(image.crop((30, 0, 90, 60)).resize(
        (100, 100), Image.Resampling.BICUBIC)))


def test_a_very_wide_image_costs_what_its_crops_do():
    wide = _random(20000, 300)
    crops, peak = traced_peak(lambda: [np.asarray(c) for c in native_crops(wide, 224)])
    assert [c.shape for c in crops] == [(224, 224, 3)] * 2
    assert peak < 2 * 2 ** 20, peak  # the crops' arrays (2 x 150 kB); the whole image would be 18 MB
    thin = _random(20000, 20)  # a side under the input size: only the windows are resized, not the image
    crops, peak = traced_peak(lambda: [np.asarray(c) for c in native_crops(thin, 224)])
    assert [c.shape for c in crops] == [(224, 224, 3)] * 2 and peak < 2 * 2 ** 20, peak


def test_crop_evidence_is_the_unit_mean_of_each_crops_evidence():
    rng = np.random.default_rng(0)
    crops = rng.normal(0, 1, (3, 2, 13, 8)).astype(np.float32)
    out = crop_evidence(crops, (4, 5, 6))
    assert out.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    mean = (evidence(crops[:, 0], (4, 5, 6)) + evidence(crops[:, 1], (4, 5, 6))) / 2
    np.testing.assert_allclose(out, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def _images(folder: Path, n: int, size=(120, 90)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        _random(*size, seed=i).save(path)
        paths.append(path)
    return paths


def test_the_extractor_reads_crops_when_asked_and_the_cache_returns_them(tiny_backbone, tmp_path, monkeypatch):
    paths = _images(tmp_path / "images", 5)
    root = tmp_path / "cache"
    plain = FeatureExtractor(tiny_backbone, cache_root=root).load(paths)
    assert plain.trunk.crops is None  # not asked for: not computed
    side = tiny_backbone.preprocess.size
    calls = []
    original = tiny_backbone.trunk
    monkeypatch.setattr(tiny_backbone, "trunk", lambda px, *a, **k: calls.append(len(px)) or original(px, *a, **k))
    first = FeatureExtractor(tiny_backbone, cache_root=root).load(paths, crops=True)
    # the main view came from the cache: the trunk ran on the crops alone
    assert calls == [5 * CROP_COUNT]
    shape = (5, CROP_COUNT, tiny_backbone.num_layers + 1, tiny_backbone.hidden_size)
    assert first.trunk.crops.shape == shape
    np.testing.assert_array_equal(first.trunk.cls_array, plain.trunk.cls_array)
    calls.clear()
    again = FeatureExtractor(tiny_backbone, cache_root=root).load(paths, crops=True)
    assert calls == []  # a cache hit
    fresh = FeatureExtractor(tiny_backbone, cache=False).load(paths, crops=True)
    np.testing.assert_array_equal(again.trunk.crops, first.trunk.crops)
    np.testing.assert_array_equal(fresh.trunk.crops, first.trunk.crops)  # cache hit equals recompute
    # the crops' tokens are the trunk's CLS tokens of native_crops
    with Image.open(paths[3]) as im:
        crops = native_crops(im.convert("RGB"), side)
    direct = original(tiny_backbone.preprocess(crops)).cls_array.astype(np.float16)
    np.testing.assert_array_equal(first.trunk.crops[3], direct)
    # an entry rewritten without crops keeps the key/value blocks and main view, and a later read without
    # crops keeps the stored crops
    entry = next(root.rglob("*.safetensors"))
    assert CROPS_KEY in st_load(entry.read_bytes())
    FeatureExtractor(tiny_backbone, cache_root=root).load(paths, blocks=(1,))
    assert CROPS_KEY in st_load(entry.read_bytes())
    tensors = st_load(entry.read_bytes())
    tensors[CROPS_KEY] = tensors[CROPS_KEY][:1]  # damaged: recomputed
    entry.write_bytes(st_save(tensors))
    healed = FeatureExtractor(tiny_backbone, cache_root=root).load(paths, crops=True)
    np.testing.assert_array_equal(healed.trunk.crops, first.trunk.crops)


def test_transformed_views_have_their_own_crops(tiny_backbone, tmp_path):
    paths = _images(tmp_path / "images", 2)
    ex = FeatureExtractor(tiny_backbone, cache_root=tmp_path / "cache")
    plain = ex.load(paths, crops=True)
    viewed = ex.load(paths, transform=LaunderedView(0, 0), crops=True)
    again = FeatureExtractor(tiny_backbone, cache=False).load(paths, transform=LaunderedView(0, 0), crops=True)
    assert not np.allclose(plain.trunk.crops.astype(np.float32), viewed.trunk.crops.astype(np.float32))
    np.testing.assert_array_equal(viewed.trunk.crops, again.trunk.crops)  # determinism under the view's seed


FAMILIES = {"noise": noise_image, "grad": gradient_image}


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return family_folders(tmp_path_factory.mktemp("crop-families"), FAMILIES, 6, 3, size=(80, 64))


def _enroll(reg, name, folder, backbone):
    enroll(reg, name, [folder], backbone=backbone, backbone_spec=backbone.location,
           verifier=Verifier(VerifierConfig(kind="lda", views=1, settings=TrainSettings(seed=0))))


def _as_older_occ(reg: Registry, name: str, backbone) -> None:
    """Re-store source ``name`` without its crops' evidence, as an occ before the crops enrolled it."""
    verifier = Verifier.from_saved(backbone, *reg.load(name), name)
    for key in CROP_EVIDENCE_KEYS:
        del verifier.evidence_[key]
    with tempfile.TemporaryDirectory() as folder:
        reg.store(name, verifier.save(folder), replace=True)


def test_enrollment_stores_the_crops_and_the_joint_model_reads_them(tmp_path, families, tiny_vision_backbone):
    reg = Registry(tmp_path / "reg")
    for name, (train, _) in families.items():
        _enroll(reg, name, train, tiny_vision_backbone)
    tensors, _ = reg.load("noise", framework="numpy")
    views = 6 * 2  # the shots and one laundered view each
    assert tensors["evidence.crops"].shape == (views, CROP_COUNT, tiny_vision_backbone.num_layers + 1,
                                               tiny_vision_backbone.hidden_size)
    assert tensors["evidence.neg_crops"].shape[0] == 0
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert not stale and model.settings_.crops and model.without_crops_ == []
    tests = [families[n][1] for n in FAMILIES]
    att = Attributor.from_registry(reg, tiny_vision_backbone)
    assert att.crops
    with_crops = {d.path: d for d in att.run(tests)}
    # the same registry decided on the main view alone scores otherwise: the crops are read
    without = refit(reg, tiny_vision_backbone, settings=JointSettings(crops=False))
    assert not without.settings_.crops
    att = Attributor.from_registry(reg, tiny_vision_backbone)
    assert not att.crops
    plain = {d.path: d for d in att.run(tests)}
    assert with_crops.keys() == plain.keys()
    assert any(abs(with_crops[p].raw[n] - plain[p].raw[n]) > 1e-3 for p in plain for n in FAMILIES)


def test_a_source_from_an_older_occ_is_decided_without_the_crops_and_named(tmp_path, families, tiny_vision_dir,
                                                                          tiny_vision_backbone):
    reg = Registry(tmp_path / "reg")
    for name, (train, _) in families.items():
        _enroll(reg, name, train, tiny_vision_backbone)
    _as_older_occ(reg, "grad", tiny_vision_backbone)
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert not stale and not model.settings_.crops and model.without_crops_ == ["grad"]
    att = Attributor.from_registry(reg, tiny_vision_backbone)
    assert not att.crops
    decisions = list(att.run([families[n][1] for n in FAMILIES]))
    assert len(decisions) == 6
    run = invoke("refit", "--registry", str(reg.root), "--backbone", tiny_vision_dir)
    assert run.code == 0, run
    assert "reads no native-resolution crops: grad were enrolled by an older occ; re-enroll them" in run.stderr
    # re-enrolled: the crops are read again
    reg.remove("grad")
    _enroll(reg, "grad", families["grad"][0], tiny_vision_backbone)
    model, _ = joint_for(reg, tiny_vision_backbone)
    assert model.settings_.crops and model.without_crops_ == []


def test_a_model_stored_by_an_occ_without_crops_is_used_as_stored(tmp_path, families, tiny_vision_backbone,
                                                                  monkeypatch):
    import json

    from safetensors import safe_open

    from occ import openset

    reg = Registry(tmp_path / "reg")
    for name, (train, _) in families.items():
        _enroll(reg, name, train, tiny_vision_backbone)
        _as_older_occ(reg, name, tiny_vision_backbone)
    refit(reg, tiny_vision_backbone)
    path = reg.joint_path(tiny_vision_backbone.fingerprint)
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["occ"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    settings = meta["manifest"]["settings"]
    del settings["crops"], settings["crop_blocks"], meta["manifest"]["without_crops"]  # as the older occ wrote it
    path.write_bytes(st_save(tensors, metadata={"occ": json.dumps(meta)}))
    monkeypatch.setattr(openset, "_fit", lambda *a, **k: pytest.fail("the stored model was refitted"))
    model, stale = joint_for(reg, tiny_vision_backbone)
    assert not stale and not model.settings_.crops and model.without_crops_ == ["grad", "noise"]


def _stored_meta(reg: Registry, backbone) -> tuple[Path, dict, dict]:
    import json

    from safetensors import safe_open

    path = reg.joint_path(backbone.fingerprint)
    with safe_open(str(path), framework="numpy") as f:
        return path, json.loads(f.metadata()["occ"]), {k: f.get_tensor(k) for k in f.keys()}


def test_the_crops_evidence_reads_its_own_blocks(tmp_path, families, tiny_vision_backbone, monkeypatch):
    import json

    from occ import openset

    assert default_crop_blocks(12) == (2, 3, 4, 5, 6, 7, 8) and default_blocks(12) == DEFAULT_BLOCKS
    bb = tiny_vision_backbone
    reg = Registry(tmp_path / "reg")
    for name, (train, _) in families.items():
        _enroll(reg, name, train, bb)
    model, _ = joint_for(reg, bb)
    assert model.settings_.crop_blocks == default_crop_blocks(bb.num_layers)
    tests = [families[n][1] for n in FAMILIES]
    trunk = FeatureExtractor(bb).load(tests, (), crops=True).trunk
    first, last = (1,), (bb.num_layers,)
    settings = JointSettings(crop_blocks=first, low_weight=None).resolved(bb)
    expected = np.concatenate([evidence(trunk.cls_array, settings.blocks), crop_evidence(trunk.crops, first)], 1)
    assert np.allclose(settings.rows(trunk.cls_array, trunk.low, trunk.crops), expected / np.sqrt(2.0), atol=1e-6)
    # the band a refit was given is the one it stores and the one decisions read
    scores = {}
    for band in (first, last):
        refit(reg, bb, settings=JointSettings(crop_blocks=band))
        model, stale = joint_for(reg, bb)
        assert not stale and tuple(model.settings_.crop_blocks) == band
        assert _stored_meta(reg, bb)[1]["manifest"]["settings"]["crop_blocks"] == list(band)
        scores[band] = {d.path: d.raw for d in Attributor.from_registry(reg, bb).run(tests)}
    assert any(abs(scores[first][p][n] - scores[last][p][n]) > 1e-3 for p in scores[first] for n in FAMILIES)
    # a model stored before the crops had a band of their own read them with the main view's blocks
    path, meta, tensors = _stored_meta(reg, bb)
    del meta["manifest"]["settings"]["crop_blocks"]
    path.write_bytes(st_save(tensors, metadata={"occ": json.dumps(meta)}))
    monkeypatch.setattr(openset, "_fit", lambda *a, **k: pytest.fail("the stored model was refitted"))
    model, stale = joint_for(reg, bb)
    assert not stale and tuple(model.settings_.crop_blocks) == tuple(model.settings_.blocks)
