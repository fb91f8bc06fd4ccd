"""Any transformers CLIP, by hub id or local folder: a full ``CLIPModel`` or an image tower alone.

Offline by default: a hub id is looked up in the local hub cache first, and the network is used only
when the model is not cached there (and ``HF_HUB_OFFLINE`` is not set). Only safetensors weights are
loaded; pickled checkpoints (``pytorch_model.bin``) are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from occ.backbones.base import (
    CLIP_MEAN,
    CLIP_STD,
    Backbone,
    Preprocessing,
    TowerConfig,
    check_torch_device,
    freeze,
    quiet_transformers,
    torch_trunk,
)
from occ.errors import BackboneError, first_line
from occ.paths import cache_dir, sha256_file

SUPPORTED = {"clip": "CLIPModel", "clip_vision_model": "CLIPVisionModelWithProjection"}


def resolve(spec: str) -> Path:
    """A local folder for ``spec``: the folder itself, or the hub snapshot (downloaded only if needed)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BackboneError(f"{spec}: not a model folder and not a hub id (like 'openai/clip-vit-base-patch16')")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(spec, local_files_only=True, allow_patterns=patterns))
    except Exception:  # not in the local cache (the hub raises several types for this)
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise BackboneError(f"{spec}: not in the local hub cache and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns))
    except Exception as exc:
        reason = first_line(exc)
        raise BackboneError(
            f"{spec}: not in the local hub cache and could not be downloaded ({reason}); "
            "check the id and the network, or pass a local folder"
        ) from None


def weights_digest(folder: Path) -> str:
    """sha256 over the folder's safetensors files (cached by size and mtime, so it is computed once)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise BackboneError(f"{folder}: only pickled weights (.bin/.pt) found; occ loads safetensors only")
        raise BackboneError(f"{folder}: no safetensors weights found")
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    memo_file = cache_dir() / "backbones" / "digests.json"
    key = f"{folder.resolve()}::{stamp}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        sha256_file(f, digest)
    memo[key] = digest.hexdigest()
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:
        pass  # the memo is an optimisation only
    return memo[key]


class HFBackbone(Backbone):
    """A transformers CLIP checkpoint (trunk in torch fp32)."""

    def __init__(self, spec: str, device: str = "cpu"):
        import transformers

        self.device = check_torch_device(device)
        quiet_transformers()
        folder = resolve(spec)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise BackboneError(f"{folder}: cannot read config.json ({exc})") from None
        model_type = config.get("model_type")
        if model_type not in SUPPORTED:
            raise BackboneError(
                f"{folder}: model_type {model_type!r} is not a CLIP (expected one of {sorted(SUPPORTED)})"
            )
        self.weights_sha256 = weights_digest(folder)
        cls = getattr(transformers, SUPPORTED[model_type])
        try:
            model = freeze(cls.from_pretrained(folder, use_safetensors=True))
        except Exception as exc:
            raise BackboneError(f"{folder}: cannot load the CLIP weights ({exc})") from None
        self.model_id = spec if not Path(spec).expanduser().is_dir() else f"local:{folder.resolve().name}"
        self.engine = "torch-fp32"
        self.location = str(folder)
        # Only the image tower moves to the device: the text tower serves per-source work on the CPU.
        model.vision_model.to(self.device)
        model.visual_projection.to(self.device)
        self._vision = model
        self.config = TowerConfig.from_transformers(model.config)
        self.preprocess = _preprocessing(folder, model)
        if model_type == "clip":
            self.text = model
            self.logit_scale = float(model.logit_scale.exp())
            self.tokenizer = _tokenizer(folder)

    @property
    def vision(self):
        return self._vision

    def _trunk(self, pixel_values, blocks):
        return torch_trunk(self.vision, pixel_values, blocks)


def _preprocessing(folder: Path, model) -> Preprocessing:
    vision_config = model.config.vision_config if hasattr(model.config, "vision_config") else model.config
    mean, std = CLIP_MEAN, CLIP_STD
    try:
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        mean = tuple(float(v) for v in pre.get("image_mean", mean))
        std = tuple(float(v) for v in pre.get("image_std", std))
    except (OSError, ValueError):
        pass
    return Preprocessing(size=int(vision_config.image_size), mean=mean, std=std)


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception:
        return None  # a CLIPModel without tokenizer files: the text tower cannot be prompted
