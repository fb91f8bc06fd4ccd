"""The head protocol: what every verifier kind is, on the head modules themselves.

A *head* is the small learnable part of a verifier on the frozen trunk (prompt tokens and a class
head, or a probe). Every kind is one :class:`Head` subclass, registered in :data:`occ.config.KINDS`;
:class:`occ.verifier.Verifier` drives any of them the same way:

* ``Head.create(backbone, template, generator)`` builds an untrained head;
  ``Head.needed_blocks(backbone, template)`` names the blocks whose patch keys/values it reads;
* ``head.inputs(batch)`` turns a :class:`TrunkBatch` into the head's input tensors (first dimension =
  images), ``head.logits(inputs)`` gives (N, 2) logits [non-target, target], and ``head.raw(batch)``
  the raw score ``logit(target) - logit(non-target)`` (a kind may compute it faster than via logits);
* ``head.fit(pos, neg, settings, ...)`` learns from target and non-target batches;
* ``head.saved_tensors()`` / ``head.load_saved(tensors)`` are its fitted state (any tensors the kind
  needs: the registry stores them without knowing their names); ``head.describe()`` says what was fitted.

:class:`PromptHead` is the kind trained by :func:`occ.training.train` (gradient steps, adversarial
augmentation, SAM); it adds the differentiable pixel path that pixel-space augmentation needs.

:class:`TrunkBatch` is one batch of trunk features plus the per-batch work that heads of different
sources share (patch keys/values split into attention heads, the CLS token's attention statistics).
The attributor makes one per batch and hands it to every verifier, so that work is done once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from occ.backbones.base import Backbone, Trunk
from occ.training import train

if TYPE_CHECKING:
    from occ.prompts import PromptTemplate
    from occ.training import TrainSettings

StepProgress = Callable[[int, int], None]


def split_heads(x: torch.Tensor, attn) -> torch.Tensor:
    """(N, T, D) -> (N, H, T, D/H) for attention module ``attn``."""
    n, t, _ = x.shape
    return x.view(n, t, attn.num_heads, attn.head_dim).transpose(1, 2)


def split_keys_values(backbone: Backbone, block: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's (N, 2, T, D) patch keys/values of ``block`` split into heads: 2 x (N, H, T, D/H)."""
    attn = backbone.block(block).self_attn
    kv = kv.float()
    return split_heads(kv[:, 0], attn), split_heads(kv[:, 1], attn)


@torch.no_grad()
def cls_attention_stats(layer, cls_in: torch.Tensor, k_patch: torch.Tensor, v_patch: torch.Tensor):
    """The frozen CLS token's attention over itself and the patch tokens in ``layer``, un-normalised:
    (query, max score, sum of exp(score - max), exp-weighted sum of values), per head. Prompt tokens
    added to that block change only the softmax's extra terms (see
    :meth:`occ.prompts.VisualPrompts.raw_from_stats`), so these are computed once per image for all sources."""
    attn = layer.self_attn
    h = layer.layer_norm1(cls_in.float().unsqueeze(1))
    q = split_heads(attn.q_proj(h), attn) * attn.scale  # (N, H, 1, D/H)
    keys = torch.cat([k_patch, split_heads(attn.k_proj(h), attn)], 2)
    values = torch.cat([v_patch, split_heads(attn.v_proj(h), attn)], 2)
    s = q @ keys.transpose(-1, -2)
    m = s.amax(-1, keepdim=True)
    e = (s - m).exp()
    return q[:, :, 0], m[:, :, 0, 0], e.sum(-1)[:, :, 0], (e @ values)[:, :, 0]  # (N,H,D/H), (N,H), (N,H), (N,H,D/H)


class TrunkBatch:
    """Trunk features of a batch of images and the work on them that every source's head shares.

    Each quantity is computed on first use and kept for the other heads of the same batch.
    """

    def __init__(self, trunk: Trunk, backbone: Backbone):
        self.trunk = trunk
        self.backbone = backbone
        self._keys_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cls_attention: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.trunk)

    @torch.no_grad()
    def keys_values(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch keys and values of ``block``, split into attention heads (float32)."""
        if block not in self._keys_values:
            self._keys_values[block] = split_keys_values(self.backbone, block, self.trunk.kv[block])
        return self._keys_values[block]

    def cls_attention(self, block: int) -> tuple:
        """:func:`cls_attention_stats` of the frozen CLS token entering ``block``."""
        if block not in self._cls_attention:
            k, v = self.keys_values(block)
            self._cls_attention[block] = cls_attention_stats(self.backbone.block(block), self.trunk.cls[:, block], k, v)
        return self._cls_attention[block]

    @property
    def shared_blocks(self) -> dict[str, tuple[int, ...]]:
        """Which shared quantities have been computed, per kind of quantity (for tests and benchmarks)."""
        return {"keys_values": tuple(sorted(self._keys_values)), "cls_attention": tuple(sorted(self._cls_attention))}


class Head(nn.Module, abc.ABC):
    """One verifier kind (see the module docstring for the protocol)."""

    kind: ClassVar[str]  # the name in occ.config.KINDS and in saved verifiers
    method: ClassVar[str]  # the family the CLI's --method names ("prompt", "probe")
    template_kind: ClassVar[str | None] = None  # the prompt-template kind it reads, None: no template
    default_template: ClassVar[str | None] = None
    trains: ClassVar[bool] = False  # True: the training settings (steps, loss, SAM, adversarial) apply
    # True: the source stores the evidence of its training views, and the registry-wide joint model
    # (occ.openset) makes its decisions
    stores_evidence: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def create(cls, backbone: Backbone, template: PromptTemplate | None, generator: torch.Generator) -> Head:
        """An untrained head for ``backbone``."""

    @classmethod
    def needed_blocks(cls, backbone: Backbone, template: PromptTemplate | None) -> tuple[int, ...]:
        """Blocks whose patch keys/values this kind reads from the trunk."""
        return ()

    @abc.abstractmethod
    def inputs(self, batch: TrunkBatch) -> list[torch.Tensor]:
        """The head's input tensors for ``batch`` (first dimension = images)."""

    @abc.abstractmethod
    def logits(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """(N, 2) logits [non-target, target]."""

    def raw(self, batch: TrunkBatch) -> torch.Tensor:
        """Raw scores ``logit(target) - logit(non-target)``."""
        logits = self.logits(self.inputs(batch))
        return logits[:, 1] - logits[:, 0]

    @abc.abstractmethod
    def fit(self, pos: TrunkBatch, neg: TrunkBatch, settings: TrainSettings, *,
            neg_pixels: torch.Tensor | None = None, progress: StepProgress | None = None) -> None:
        """Learn from target ``pos`` and non-target ``neg``; ``progress(done, total)`` as it goes."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What was fitted, in a few words (read from the fitted state)."""

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """The fitted state to store (safetensors): copies, contiguous."""
        return {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}

    def load_saved(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`saved_tensors` (RuntimeError on missing or unexpected tensors)."""
        self.load_state_dict(tensors, strict=True)
        self.eval()


class PromptHead(Head):
    """A head trained by gradient steps (:func:`occ.training.train`) on a frozen tower it holds."""

    method = "prompt"
    trains = True
    backbone: Backbone

    @property
    def preprocess(self):
        return self.backbone.preprocess

    @abc.abstractmethod
    def pixel_inputs(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Normalised pixels -> :meth:`inputs`, differentiably (for pixel-space adversarial augmentation)."""

    @abc.abstractmethod
    def trunk_inputs(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Normalised pixels -> :meth:`inputs` through the backbone's trunk engine, without gradients."""

    def start(self, pos: list[torch.Tensor], neg: list[torch.Tensor]) -> None:
        """Data-dependent initialisation before the first step (none by default)."""

    def fit(self, pos: TrunkBatch, neg: TrunkBatch, settings: TrainSettings, *,
            neg_pixels: torch.Tensor | None = None, progress: StepProgress | None = None) -> None:
        pos_in, neg_in = self.inputs(pos), self.inputs(neg)
        self.start(pos_in, neg_in)
        train(self, pos_in, neg_in, settings, neg_pixels=neg_pixels, progress=progress)
