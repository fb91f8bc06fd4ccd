"""occ.backbones on tiny random CLIPs: loading, trunk, fingerprints, refusals, preprocessing."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from occ.backbones import Preprocessing, Trunk, load_backbone
from occ.backbones.base import CLIP_MEAN, CLIP_STD, PREPROCESS_VERSION
from occ.errors import BackboneError
from occ.testing import tiny_clip


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


def pooled(output) -> torch.Tensor:
    """transformers >= 5 returns a ModelOutput from get_*_features, older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------------
# Loading


def test_full_clip_attributes(tiny_backbone, tiny_clip_dir: Path) -> None:
    b = tiny_backbone
    assert b.has_text
    assert b.tokenizer is not None and b.text is not None
    assert b.num_layers == tiny_clip.VISION_LAYERS
    assert b.hidden_size == tiny_clip.WIDTH
    assert b.projection_dim == tiny_clip.PROJECTION
    assert b.preprocess.size == tiny_clip.IMAGE_SIZE
    assert b.num_patches == (tiny_clip.IMAGE_SIZE // tiny_clip.PATCH) ** 2
    assert b.engine == "torch-fp32"
    assert b.location == str(tiny_clip_dir)
    # logit scale from the checkpoint (CLIP's initial value 2.6592 -> exp ~ 14.29), not a default of 100
    assert b.logit_scale == pytest.approx(float(np.exp(2.6592)), rel=1e-4)
    info = b.describe()
    assert info["text_tower"] is True and info["layers"] == 4 and info["image_size"] == 32


def test_vision_only_attributes(tiny_vision_backbone) -> None:
    b = tiny_vision_backbone
    assert not b.has_text
    assert b.text is None and b.tokenizer is None
    assert (b.num_layers, b.hidden_size, b.projection_dim) == (4, 32, 16)
    assert b.preprocess.size == 32
    assert b.describe()["text_tower"] is False


def test_backbone_is_frozen(tiny_backbone, tiny_vision_backbone) -> None:
    for b in (tiny_backbone, tiny_vision_backbone):
        assert not b.vision.training
        assert all(not p.requires_grad for p in b.vision.parameters())
    assert all(not p.requires_grad for p in tiny_backbone.text.parameters())


def test_preprocessing_mean_std_from_the_folder(tiny_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "custom-stats"
    shutil.copytree(tiny_clip_dir, folder)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    tiny_clip.write_preprocessor(folder, mean=mean, std=std)
    b = load_backbone(str(folder))
    assert b.preprocess.mean == mean and b.preprocess.std == std
    default = load_backbone(str(tiny_clip_dir))
    # same weights, other normalisation: another preprocessing version, so another fingerprint
    assert b.weights_sha256 == default.weights_sha256
    assert b.preprocess.version != default.preprocess.version
    assert b.fingerprint != default.fingerprint


# --------------------------------------------------------------------------------------------------
# Trunk


def test_trunk_shapes(tiny_backbone, pixels) -> None:
    out = tiny_backbone.trunk(pixels, kv_blocks=[3, 0, 0])
    n, layers, d, p = 3, tiny_backbone.num_layers, tiny_backbone.hidden_size, tiny_backbone.projection_dim
    assert isinstance(out, Trunk) and len(out) == n
    assert out.cls.shape == (n, layers + 1, d) and out.cls.dtype == torch.float32
    assert out.embeds.shape == (n, p) and out.embeds.dtype == torch.float32
    assert sorted(out.kv) == [0, 3]
    for t in out.kv.values():
        assert t.shape == (n, 2, tiny_backbone.num_patches, d) and t.dtype == torch.float16
    assert tiny_backbone.trunk(pixels).kv == {}


def test_trunk_matches_transformers(tiny_backbone, pixels) -> None:
    model = tiny_backbone.text  # the CLIPModel itself
    out = tiny_backbone.trunk(pixels, kv_blocks=range(tiny_backbone.num_layers))
    with torch.no_grad():
        want_embeds = pooled(model.get_image_features(pixel_values=pixels))
        hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == tiny_backbone.num_layers + 1
    torch.testing.assert_close(out.embeds, want_embeds, rtol=1e-5, atol=1e-6)
    for i, h in enumerate(hidden):
        torch.testing.assert_close(out.cls[:, i], h[:, 0], rtol=1e-5, atol=1e-6)
    layers = model.vision_model.encoder.layers
    for b in range(tiny_backbone.num_layers):
        # keys and values of the patch tokens entering block b, as the block's own projections make them
        with torch.no_grad():
            x = layers[b].layer_norm1(hidden[b][:, 1:])
            want = torch.stack([layers[b].self_attn.k_proj(x), layers[b].self_attn.v_proj(x)], 1)
        torch.testing.assert_close(out.kv[b], want.half())


def test_vision_only_trunk_equals_full_clip_trunk(tiny_backbone, tiny_vision_backbone, pixels) -> None:
    # the vision-only folder holds the seed-0 model's image tower: same trunk, other fingerprint
    a = tiny_backbone.trunk(pixels, [1])
    b = tiny_vision_backbone.trunk(pixels, [1])
    torch.testing.assert_close(a.cls, b.cls, rtol=0, atol=0)
    torch.testing.assert_close(a.embeds, b.embeds, rtol=0, atol=0)
    assert torch.equal(a.kv[1], b.kv[1])
    assert tiny_backbone.fingerprint != tiny_vision_backbone.fingerprint


@pytest.mark.parametrize("block", [-1, 4, 99])
def test_trunk_refuses_blocks_out_of_range(tiny_backbone, pixels, block: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        tiny_backbone.trunk(pixels, [block])


def test_trunk_is_inference_only_and_hidden_states_are_differentiable(tiny_backbone, pixels) -> None:
    out = tiny_backbone.trunk(pixels)
    assert not out.embeds.requires_grad
    x = pixels.clone().requires_grad_(True)
    hidden, embeds = tiny_backbone.hidden_states(x)
    assert len(hidden) == tiny_backbone.num_layers + 1
    torch.testing.assert_close(embeds.detach(), out.embeds, rtol=1e-5, atol=1e-6)
    embeds.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.vision.parameters())


def test_trunk_select_and_concat(tiny_backbone, pixels) -> None:
    out = tiny_backbone.trunk(pixels, [2])
    parts = [out.select([2]), out.select([0, 1])]
    joined = Trunk.concat(parts)
    order = torch.tensor([2, 0, 1])
    assert torch.equal(joined.cls, out.cls[order])
    assert torch.equal(joined.embeds, out.embeds[order])
    assert torch.equal(joined.kv[2], out.kv[2][order])
    with pytest.raises(ValueError):
        Trunk.concat([])


# --------------------------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_contents(tiny_backbone) -> None:
    b = tiny_backbone
    fp = b.fingerprint
    assert len(b.weights_sha256) == 64 and int(b.weights_sha256, 16) >= 0
    for part in (b.model_id, b.engine, PREPROCESS_VERSION, f":{b.preprocess.size}", b.weights_sha256[:16]):
        assert part in fp, f"{part!r} missing from fingerprint {fp!r}"
    assert b.model_id.endswith("tiny-clip")


def test_fingerprint_is_stable_across_loads(tiny_clip_dir: Path, tiny_backbone) -> None:
    again = load_backbone(str(tiny_clip_dir))
    assert again.fingerprint == tiny_backbone.fingerprint
    assert again.weights_sha256 == tiny_backbone.weights_sha256


def _change_one_weight(folder: Path) -> None:
    path = folder / "model.safetensors"
    state = load_file(path)
    name = "vision_model.encoder.layers.1.mlp.fc1.weight"
    state[name] = state[name].clone()
    state[name][0, 0] += 1e-3
    save_file(state, path, metadata={"format": "pt"})


def test_fingerprint_changes_when_a_weight_changes(tiny_clip_dir: Path, tiny_backbone, tmp_path: Path) -> None:
    folder = tmp_path / "tiny-clip"  # same folder name: same model id
    shutil.copytree(tiny_clip_dir, folder)
    assert load_backbone(str(folder)).fingerprint == tiny_backbone.fingerprint
    _change_one_weight(folder)
    changed = load_backbone(str(folder))
    assert changed.model_id == tiny_backbone.model_id
    assert changed.weights_sha256 != tiny_backbone.weights_sha256
    assert changed.fingerprint != tiny_backbone.fingerprint


def test_weights_digest_memo_follows_an_in_place_rewrite(tiny_clip_dir: Path, tmp_path: Path) -> None:
    # The digest is memoised by (name, size, mtime); a rewrite of the same size with a new mtime must
    # give the new digest, not the memoised one.
    folder = tmp_path / "tiny-clip"
    shutil.copytree(tiny_clip_dir, folder)
    path = folder / "model.safetensors"
    before = load_backbone(str(folder))
    stat = path.stat()
    _change_one_weight(folder)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = load_backbone(str(folder))
    assert after.weights_sha256 != before.weights_sha256


# --------------------------------------------------------------------------------------------------
# Refusals


def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle a checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.mark.parametrize("weights_name", ["pytorch_model.bin", "model.pt"])
def test_pickled_weights_only_are_refused(tiny_clip_dir: Path, tmp_path: Path, monkeypatch, weights_name) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "config.json", folder)
    (folder / weights_name).write_bytes(b"not really a pickle \x80\x04junk")
    _no_unpickling(monkeypatch)
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(folder))
    message = one_line(exc)
    assert str(folder) in message
    assert "safetensors" in message


def test_folder_without_weights_is_refused(tiny_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "empty-weights"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "config.json", folder)
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(folder))
    assert str(folder) in one_line(exc)


def test_non_clip_config_is_refused(tiny_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    shutil.copytree(tiny_clip_dir, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(folder))
    message = one_line(exc)
    assert str(folder) in message and "'bert'" in message


@pytest.mark.parametrize("content", [None, "{not json"])
def test_missing_or_broken_config_is_refused(tiny_clip_dir: Path, tmp_path: Path, content) -> None:
    folder = tmp_path / "noconfig"
    shutil.copytree(tiny_clip_dir, folder)
    if content is None:
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text(content)
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(folder))
    assert str(folder) in one_line(exc)


def test_damaged_safetensors_is_refused(tiny_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_clip_dir, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(folder))
    assert str(folder) in one_line(exc)


def test_engine_option_is_for_the_embedded_backbone_only(tiny_clip_dir: Path) -> None:
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(tiny_clip_dir), engine="onnx-int8")
    assert "onnx-int8" in one_line(exc)
    assert load_backbone(str(tiny_clip_dir), engine="torch-fp32").engine == "torch-fp32"


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/folder", "a/b/c"])
def test_paths_that_are_not_folders_are_refused_without_the_hub(spec: str, monkeypatch) -> None:
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    with pytest.raises(BackboneError) as exc:
        load_backbone(spec)
    assert spec in one_line(exc)


def test_file_instead_of_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(path))
    assert str(path) in one_line(exc)


def test_unknown_hub_id_offline_is_a_clear_error_without_network(monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def fake_snapshot_download(repo_id, *args, local_files_only=False, **kwargs):
        calls.append((repo_id, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        raise AssertionError("a download was attempted while HF_HUB_OFFLINE is set")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as exc:
        load_backbone("nobody-here/no-such-clip")
    message = one_line(exc)
    assert "nobody-here/no-such-clip" in message and "HF_HUB_OFFLINE" in message
    assert calls == [("nobody-here/no-such-clip", True)]


def test_unknown_hub_id_with_the_real_hub_client_opens_no_socket(monkeypatch, tmp_path: Path) -> None:
    # The real snapshot_download, an empty hub cache, HF_HUB_OFFLINE=1, and sockets that refuse to
    # connect: the error must be ours, and no connection may be attempted.
    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(BackboneError) as exc:
        load_backbone("nobody-here/no-such-clip")
    assert "nobody-here/no-such-clip" in one_line(exc)
    assert attempts == []


def test_failed_download_is_one_line(monkeypatch) -> None:
    import huggingface_hub

    def fail(repo_id, *args, local_files_only=False, **kwargs):
        raise OSError("first line of a long story\nsecond line\nthird line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(BackboneError) as exc:
        load_backbone("nobody-here/no-such-clip")
    message = one_line(exc)
    assert "nobody-here/no-such-clip" in message and "first line of a long story" in message


def test_hub_snapshot_is_loaded_from_the_local_cache(monkeypatch, tiny_clip_dir: Path) -> None:
    import huggingface_hub

    def cached(repo_id, *args, local_files_only=False, **kwargs):
        assert local_files_only, "the cache must be asked first"
        return str(tiny_clip_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    b = load_backbone("someone/tiny-clip")
    assert b.model_id == "someone/tiny-clip"
    assert b.has_text and b.num_layers == 4


# --------------------------------------------------------------------------------------------------
# Preprocessing


def test_preprocess_non_square_shape_and_normalisation() -> None:
    prep = Preprocessing(size=32)
    colour = (200, 30, 90)
    images = [Image.new("RGB", (70, 40), colour), Image.new("RGB", (33, 90), colour),
              Image.new("L", (32, 32), 128), Image.new("RGBA", (50, 50), colour + (10,))]
    out = prep(images)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    want = (torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
    for i in (0, 1, 3):  # flat images stay flat through resizing; alpha is dropped
        torch.testing.assert_close(out[i], want.expand(3, 32, 32), rtol=0, atol=1e-5)
    grey = (torch.full((3, 1, 1), 128 / 255) - mean) / std
    torch.testing.assert_close(out[2], grey.expand(3, 32, 32), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size,offset", [((42, 32), (5, 0)), ((32, 51), (0, 9)), ((33, 32), (0, 0)),
                                         ((32, 32), (0, 0))])
def test_centre_crop_is_exact(size, offset) -> None:
    # shortest side == crop size: no resampling, so the crop must be exactly the centre window
    w, h = size
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    prep = Preprocessing(size=32)
    unit = prep.to_unit(prep([Image.fromarray(arr)]))[0]
    left, top = offset
    want = torch.from_numpy(arr[top:top + 32, left:left + 32].astype(np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(unit, want, rtol=0, atol=2e-6)


def test_resize_short_side_then_crop_keeps_the_centre() -> None:
    # a 64x128 picture, left half red, right half blue, a green band in rows 48..79 (the centre square
    # after halving): resize to 32x64, crop rows 16..47 -> the band fills rows 8..23 of the crop
    arr = np.zeros((128, 64, 3), dtype=np.uint8)
    arr[:, :32, 0] = 255
    arr[:, 32:, 2] = 255
    arr[48:80, :, :] = (0, 255, 0)
    prep = Preprocessing(size=32)
    unit = prep.to_unit(prep([Image.fromarray(arr)]))[0].numpy()
    assert np.allclose(unit[:, 12:20, :], np.array([0, 1, 0])[:, None, None], atol=0.02)
    assert unit[0, 2, 2] > 0.9 and unit[2, 2, 29] > 0.9  # red left, blue right, above the band


def test_preprocess_agrees_with_transformers_clip_processor(tiny_clip_dir: Path) -> None:
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)  # exact 2x downscale: no rounding question
    image = Image.fromarray(arr)
    theirs = CLIPImageProcessor.from_pretrained(tiny_clip_dir)(images=[image], return_tensors="pt")
    ours = Preprocessing(size=32)([image])
    diff = (ours - theirs["pixel_values"]).abs()
    assert diff.mean() < 0.02, f"mean abs difference {diff.mean():.4f}"


def test_to_unit_from_unit_round_trip() -> None:
    prep = Preprocessing(size=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(prep.from_unit(prep.to_unit(x)), x, rtol=1e-6, atol=1e-6)
    unit = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(prep.to_unit(prep.from_unit(unit)), unit, rtol=1e-6, atol=1e-6)
    x64 = x.double()
    assert prep.to_unit(x64).dtype == torch.float64


def test_preprocessing_version() -> None:
    assert Preprocessing(size=32).version == f"{PREPROCESS_VERSION}:32"
    assert Preprocessing(size=224).version != Preprocessing(size=32).version
    other = Preprocessing(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert other.version.startswith(f"{PREPROCESS_VERSION}:32:") and other.version != Preprocessing(32).version
