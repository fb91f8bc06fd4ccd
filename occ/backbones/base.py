"""The backbone contract every verifier relies on.

A :class:`Backbone` is a frozen CLIP. It offers

* :attr:`Backbone.preprocess`: PIL images -> normalised pixel tensors (CLIP's 224 bicubic resize of
  the shortest side and centre crop, with the model's own size, mean and std);
* :meth:`Backbone.trunk`: the shared, frozen pass (one per image). It returns a :class:`Trunk`: the
  CLS token of every hidden state (embedding output and each block), the final image embedding,
  and, on request, the keys and values of the patch tokens in chosen blocks (what visual prompts
  attend to: computed inside the trunk pass anyway, so per-source work never recomputes them);
* :meth:`Backbone.block`: one frozen block (fp32) for per-source work after the trunk;
* :attr:`Backbone.vision`: the whole torch image tower (fp32, frozen), for gradients with respect to
  pixels (adversarial augmentation);
* :attr:`Backbone.text` / :attr:`Backbone.tokenizer`: the text tower when the checkpoint has one;
* :attr:`Backbone.fingerprint`: model id + engine + preprocessing version + weights sha256, which
  verifiers store and check so that a verifier is never applied to features of another backbone.

This module imports torch only where tensors are made or run (preprocessing, the trunk pass, the
tower): a backbone's description (fingerprint, :class:`TowerConfig`) and a :class:`Trunk` read from
the feature cache need numpy alone, so scoring cached features with the joint model never imports torch.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from occ.errors import UsageError
from occ.evidence import CROP_COUNT
from occ.lowlevel import DIMS as LOW_DIMS

if TYPE_CHECKING:
    import torch
    from PIL import Image

PREPROCESS_VERSION = "clip-bicubic-short-side-center-crop-v1"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TowerConfig:
    """The shape of a CLIP image tower."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    patch_size: int
    image_size: int
    projection_dim: int
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @classmethod
    def from_transformers(cls, config) -> TowerConfig:
        vision = getattr(config, "vision_config", config)
        projection = getattr(config, "projection_dim", None) or vision.projection_dim
        return cls(vision.num_hidden_layers, vision.hidden_size, vision.intermediate_size,
                   vision.num_attention_heads, vision.patch_size, vision.image_size, projection,
                   vision.layer_norm_eps, vision.hidden_act)


@dataclass(frozen=True)
class Preprocessing:
    """CLIP preprocessing: bicubic resize of the shortest side to ``size``, centre crop, normalise."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def version(self) -> str:
        version = f"{PREPROCESS_VERSION}:{self.size}"
        if (self.mean, self.std) != (CLIP_MEAN, CLIP_STD):
            stats = ",".join(f"{v:.6g}" for v in self.mean + self.std)
            version += ":" + hashlib.sha256(stats.encode()).hexdigest()[:8]
        return version

    def array(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> float32 array (3, size, size), normalised."""
        from PIL import Image

        image = image.convert("RGB") if image.mode != "RGB" else image
        w, h = image.size
        scale = self.size / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return (arr - mean) / std

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.stack([self.array(im) for im in images]))

    def to_unit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> [0, 1] pixels (for perturbations in pixel space)."""
        import torch

        mean = torch.tensor(self.mean, dtype=pixel_values.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=pixel_values.dtype).view(1, 3, 1, 1)
        return pixel_values * std + mean

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        import torch

        mean = torch.tensor(self.mean, dtype=unit.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=unit.dtype).view(1, 3, 1, 1)
        return (unit - mean) / std


def _as_torch(a):
    """A torch tensor of ``a`` (a numpy array is wrapped without a copy, or copied when read-only)."""
    if not isinstance(a, np.ndarray):
        return a
    import torch

    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _as_numpy(a) -> np.ndarray:
    """A numpy array of ``a`` (a CPU torch tensor is viewed without a copy)."""
    return a if isinstance(a, np.ndarray) else a.detach().cpu().numpy()


def _take(a, index):
    if isinstance(a, np.ndarray):
        return a[np.asarray(index, dtype=np.int64)]
    import torch

    return a[torch.as_tensor(index, dtype=torch.long)]


def _cat(parts: list):
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    import torch

    return torch.cat([_as_torch(p) for p in parts])


class Trunk:
    """Frozen features of a batch of images: what the trunk pass gives every verifier.

    ``cls``: (N, L+1, D) float32, CLS token of hidden state 0 (embeddings) .. L (last block, before
    the final layer norm). ``embeds``: (N, P) float32 image embedding (after post-LN and projection,
    not normalised). ``kv``: {block: (N, 2, T-1, D) float16}, keys and values of the patch tokens in
    the attention of ``block``. ``low``: (N, :data:`occ.lowlevel.DIMS`) float32 low-level evidence
    (:mod:`occ.lowlevel`), computed from the same decoded pixels beside the trunk pass (by
    :class:`occ.features.FeatureExtractor`), or None where it was not computed (a bare trunk pass).
    ``crops``: (N, K, L+1, D) CLS tokens of every hidden state for each image's K native-resolution crops
    (:func:`occ.evidence.native_crops`, float16 or float32), or None where they were not asked for.

    The arrays are kept as they were given: numpy arrays (the feature cache reads them so, without
    torch) or torch tensors (a trunk pass). ``cls``, ``embeds`` and ``kv`` are torch tensors (a numpy
    array becomes one on first use, sharing its memory; torch is imported then); ``cls_array``,
    ``embeds_array`` and ``kv_arrays`` are numpy arrays and never import torch.
    """

    def __init__(self, cls: np.ndarray | torch.Tensor, embeds: np.ndarray | torch.Tensor,
                 kv: dict[int, np.ndarray | torch.Tensor] | None = None, low: np.ndarray | None = None,
                 crops: np.ndarray | None = None):
        self._cls, self._embeds, self._kv = cls, embeds, dict(kv or {})
        self.low = None if low is None else np.asarray(low, dtype=np.float32)
        self.crops = None if crops is None else np.asarray(crops)

    @property
    def cls(self) -> torch.Tensor:
        self._cls = _as_torch(self._cls)
        return self._cls

    @property
    def embeds(self) -> torch.Tensor:
        self._embeds = _as_torch(self._embeds)
        return self._embeds

    @property
    def kv(self) -> dict[int, torch.Tensor]:
        self._kv = {b: _as_torch(t) for b, t in self._kv.items()}
        return self._kv

    @property
    def cls_array(self) -> np.ndarray:
        return _as_numpy(self._cls)

    @property
    def embeds_array(self) -> np.ndarray:
        return _as_numpy(self._embeds)

    @property
    def kv_arrays(self) -> dict[int, np.ndarray]:
        return {b: _as_numpy(t) for b, t in self._kv.items()}

    @property
    def blocks(self) -> tuple[int, ...]:
        """The blocks whose keys/values this trunk output holds."""
        return tuple(sorted(self._kv))

    def __len__(self) -> int:
        return self._cls.shape[0]

    def select(self, index) -> Trunk:
        return Trunk(_take(self._cls, index), _take(self._embeds, index),
                     {k: _take(v, index) for k, v in self._kv.items()},
                     None if self.low is None else _take(self.low, index),
                     None if self.crops is None else _take(self.crops, index))

    @staticmethod
    def concat(parts: Sequence[Trunk]) -> Trunk:
        if not parts:
            raise ValueError("no trunk outputs to concatenate")
        keys = set(parts[0]._kv)
        return Trunk(
            _cat([p._cls for p in parts]),
            _cat([p._embeds for p in parts]),
            {k: _cat([p._kv[k] for p in parts]) for k in sorted(keys)},
            None if any(p.low is None for p in parts) else np.concatenate([p.low for p in parts]),
            None if any(p.crops is None for p in parts) else np.concatenate([p.crops for p in parts]),
        )


class Backbone:
    """A frozen CLIP with the contract above. Subclasses set the attributes and implement ``_trunk``."""

    model_id: str
    engine: str
    weights_sha256: str
    preprocess: Preprocessing
    config: TowerConfig
    text: torch.nn.Module | None = None  # CLIPModel with text_model and text_projection, when present
    tokenizer = None
    logit_scale: float = 100.0
    location: str = ""
    device: str = "cpu"  # where the trunk pass runs; per-source work and every returned tensor stay on the CPU

    @property
    def vision(self) -> torch.nn.Module:
        """The whole image tower: has ``.vision_model`` (embeddings, pre_layrnorm, encoder.layers,
        post_layernorm) and ``.visual_projection``."""
        raise NotImplementedError

    def block(self, index: int) -> torch.nn.Module:
        """Frozen block ``index`` (CLIPEncoderLayer attribute names), on the CPU."""
        layer = self.vision.vision_model.encoder.layers[index]
        if self.device == "cpu":
            return layer
        copies = self.__dict__.setdefault("_cpu_blocks", {})
        if index not in copies:
            copies[index] = freeze(copy.deepcopy(layer).to("cpu"))
        return copies[index]

    @property
    def has_text(self) -> bool:
        return self.text is not None and self.tokenizer is not None

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def projection_dim(self) -> int:
        return self.config.projection_dim

    @property
    def num_patches(self) -> int:
        return (self.preprocess.size // self.config.patch_size) ** 2

    @property
    def fingerprint(self) -> str:
        return f"{self.model_id}|{self.engine}|{self.preprocess.version}|sha256:{self.weights_sha256[:16]}"

    def trunk(self, pixel_values: torch.Tensor, kv_blocks: Sequence[int] = ()) -> Trunk:
        """The shared frozen pass. ``kv_blocks``: blocks whose patch keys/values to return."""
        blocks = tuple(sorted(set(int(b) for b in kv_blocks)))
        for b in blocks:
            if not 0 <= b < self.num_layers:
                raise ValueError(f"block {b} out of range for a {self.num_layers}-block tower")
        import torch

        with torch.inference_mode():
            return self._trunk(pixel_values, blocks)

    def _trunk(self, pixel_values: torch.Tensor, blocks: tuple[int, ...]) -> Trunk:
        raise NotImplementedError

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Differentiable torch pass: (hidden states 0..L, image embeddings). Gradients flow to pixels."""
        vm = self.vision.vision_model
        out = vm(pixel_values=pixel_values.to(tower_device(self.vision)), output_hidden_states=True)
        embeds = self.vision.visual_projection(out.pooler_output)
        return [h.cpu() for h in out.hidden_states], embeds.cpu()

    def describe(self) -> dict:
        return {
            "model_id": self.model_id,
            "engine": self.engine,
            "fingerprint": self.fingerprint,
            "weights": self.location,
            "weights_sha256": self.weights_sha256,
            "text_tower": self.has_text,
            "layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "projection_dim": self.projection_dim,
            "image_size": self.preprocess.size,
            "preprocessing": self.preprocess.version,
            "device": self.device,
        }


def empty_trunk(backbone: Backbone, blocks: Sequence[int], crops: bool = False) -> Trunk:
    """A trunk output of no images, with the shapes ``backbone`` gives (keys/values for ``blocks``, the
    native-resolution crops' CLS tokens with ``crops``)."""
    d = backbone.hidden_size
    return Trunk(
        np.zeros((0, backbone.num_layers + 1, d), np.float32),
        np.zeros((0, backbone.projection_dim), np.float32),
        {b: np.zeros((0, 2, backbone.num_patches, d), np.float16) for b in blocks},
        np.zeros((0, LOW_DIMS), np.float32),
        np.zeros((0, CROP_COUNT, backbone.num_layers + 1, d), np.float16) if crops else None,
    )


def patch_keys_values(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """(N, 2, T-1, D): keys and values of the patch tokens of ``hidden`` (N, T, D) in ``layer``."""
    import torch

    x = layer.layer_norm1(hidden[:, 1:])
    return torch.stack([layer.self_attn.k_proj(x), layer.self_attn.v_proj(x)], dim=1)


def tower_device(vision: torch.nn.Module) -> torch.device:
    """The device the image tower's weights are on."""
    return next(vision.vision_model.parameters()).device


def torch_trunk(vision: torch.nn.Module, pixel_values: torch.Tensor, blocks: tuple[int, ...]) -> Trunk:
    """Trunk pass in torch for any transformers CLIP image tower, on the tower's device (the whole
    batch at once); the features come back on the CPU."""
    import torch

    out = vision.vision_model(pixel_values=pixel_values.to(tower_device(vision)), output_hidden_states=True)
    hs = out.hidden_states
    cls = torch.stack([h[:, 0] for h in hs], 1).float().cpu()
    embeds = vision.visual_projection(out.pooler_output).float().cpu()
    layers = vision.vision_model.encoder.layers
    kv = {b: patch_keys_values(layers[b], hs[b]).to(torch.float16).cpu() for b in blocks}
    return Trunk(cls, embeds, kv)


DEVICES = ("cpu", "cuda")


def check_torch_device(device: str) -> str:
    """``device`` if torch can run there; a usage error naming the reason otherwise."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device on this machine "
                             "(torch.cuda.is_available() is False)")
    return device


def quiet_transformers() -> None:
    """transformers prints progress bars and warnings when it loads models: the library never prints."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
