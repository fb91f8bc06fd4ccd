"""Backbones: the embedded default (offline CLIP ViT-B/16 image tower) and any transformers CLIP."""

from __future__ import annotations

import os

from occ.backbones.base import Backbone, Preprocessing, Trunk
from occ.backbones.embedded import EmbeddedBackbone
from occ.backbones.hf import HFBackbone
from occ.errors import BackboneError

DEFAULT = "embedded"

__all__ = ["DEFAULT", "Backbone", "Preprocessing", "Trunk", "load_backbone", "default_spec"]


def default_spec() -> str:
    """The backbone used when none is named: ``OCC_BACKBONE`` or the embedded default."""
    return os.environ.get("OCC_BACKBONE") or DEFAULT


def load_backbone(spec: str | None = None, *, engine: str | None = None, device: str = "cpu",
                  progress=None) -> Backbone:
    """Load a backbone: ``"embedded"`` (default), a hub id, or a local transformers CLIP folder.

    ``engine`` applies to the embedded backbone: ``"onnx-int8"`` (default, fastest) or
    ``"torch-fp32"``; ``OCC_ENGINE`` sets the default. Other backbones run in torch fp32.
    ``device`` (``"cpu"`` or ``"cuda"``) is where the trunk pass runs: the torch engines move the image
    tower there, the int8 engine uses onnxruntime's CUDA provider (when installed).

    Nothing here imports torch or transformers: the embedded backbone's description (fingerprint,
    shape) comes from its stored provenance and fixed architecture; it loads onnxruntime and torch on
    its first trunk pass, and transformers only for the torch engine or pixel gradients, so scoring
    cached features never pays their import time.
    """
    spec = spec or default_spec()
    if spec == DEFAULT:
        return EmbeddedBackbone(engine or os.environ.get("OCC_ENGINE") or "onnx-int8", progress=progress,
                                device=device)
    if engine not in (None, "torch-fp32"):
        raise BackboneError(f"engine {engine!r} is only available for the embedded backbone")
    return HFBackbone(spec, device=device)
