"""One source's verifier: fit on target + non-target features, score, threshold (scikit-learn style).

``Verifier(kind=...)`` holds the parameters; ``fit`` learns the prompt tokens on the frozen backbone,
estimates held-out scores by cross-validation over the shots, and calibrates a threshold at the
requested false-accept rate (:mod:`occ.calibration`); learned state lives in attributes ending in ``_``.

Kinds:

* ``"visual"`` (default for image-only towers): :class:`occ.prompts.VisualPrompts`;
* ``"text"`` (OCC-CLIP proper, needs a text tower): :class:`occ.prompts.TextPrompts`;
* ``"probe"`` (USIA-style, ``--method probe``): :class:`occ.probe.ProbeHead`, a logistic probe on the
  CLS token of an intermediate block chosen by cross-validation; no prompt tokens.

Raw scores are ``logit(target) - logit(non-target)``; :meth:`Verifier.score` gives the calibrated
probability, comparable across sources.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from occ.backbones.base import Backbone, Trunk, patch_keys_values
from occ.calibration import DEFAULT_FAR, DEFAULT_TARGET_TPR, Calibration, check_far, check_tpr
from occ.errors import RegistryError, UsageError
from occ.probe import ProbeHead
from occ.prompts import PromptTemplate, TextPrompts, VisualPrompts, cls_attention_stats
from occ.training import Adapter, TrainSettings, train

VERIFIER_FORMAT = "occ-verifier"
KINDS = ("visual", "text", "probe")
DEFAULT_TEMPLATES = {"visual": "visual-mid-attn", "text": "occ-clip", "probe": None}
DEFAULT_FOLDS = 3

Progress = Callable[[str, int, int], None]


class _VisualAdapter(Adapter):
    def __init__(self, head: VisualPrompts, backbone: Backbone):
        self.module = head
        self.backbone = backbone
        self.preprocess = backbone.preprocess

    def from_trunk(self, trunk: Trunk, shared: dict | None = None) -> list[torch.Tensor]:
        head = self.module
        with torch.no_grad():
            pairs = []
            for b in head.blocks:
                key = ("kv", b)
                if shared is not None and key in shared:
                    pairs.append(shared[key])
                    continue
                kv = head.keys_values(trunk.kv[b], b)
                if shared is not None:
                    shared[key] = kv
                pairs.append(kv)
        return [trunk.cls[:, head.first].float()] + [t for kv in pairs for t in kv]

    def logits(self, inputs):
        kv = list(zip(inputs[1::2], inputs[2::2]))
        return self.module(inputs[0], kv)

    def raw(self, trunk: Trunk, shared: dict | None = None) -> torch.Tensor:
        head = self.module
        if not head.single_attention:
            return super().raw(trunk, shared)
        # One block read out after its attention: share the CLS token's attention over the patches.
        shared = {} if shared is None else shared
        key = ("cls-attention", head.first)
        if key not in shared:
            k, v = self.from_trunk(trunk, shared)[1:3]
            shared[key] = cls_attention_stats(self.backbone.block(head.first), trunk.cls[:, head.first], k, v)
        return head.raw_from_stats(trunk.cls[:, head.first], shared[key])

    def pixel_inputs(self, pixels):
        hidden, _ = self.backbone.hidden_states(pixels)
        head = self.module
        kv = [head.keys_values(patch_keys_values(self.backbone.block(b), hidden[b]), b) for b in head.blocks]
        return [hidden[head.first][:, 0]] + [t for pair in kv for t in pair]

    def trunk_inputs(self, pixels):
        return self.from_trunk(self.backbone.trunk(pixels, self.module.blocks))


class _TextAdapter(Adapter):
    def __init__(self, head: TextPrompts, backbone: Backbone):
        self.module = head
        self.backbone = backbone
        self.preprocess = backbone.preprocess

    def from_trunk(self, trunk: Trunk, shared: dict | None = None) -> list[torch.Tensor]:
        return [trunk.embeds.float()]

    def logits(self, inputs):
        return self.module(inputs[0])

    def pixel_inputs(self, pixels):
        return [self.backbone.hidden_states(pixels)[1]]

    def trunk_inputs(self, pixels):
        return self.from_trunk(self.backbone.trunk(pixels))


class _ProbeAdapter(Adapter):
    def __init__(self, head: ProbeHead, backbone: Backbone):
        self.module = head
        self.backbone = backbone

    def from_trunk(self, trunk: Trunk, shared: dict | None = None) -> list[torch.Tensor]:
        return [trunk.cls]

    def logits(self, inputs):
        return self.module(inputs[0])


def _build_head(kind: str, backbone: Backbone, template: PromptTemplate | None, seed: int):
    generator = torch.Generator().manual_seed(seed)
    if kind == "probe":
        head = ProbeHead(backbone.num_layers, backbone.hidden_size)
        return head, _ProbeAdapter(head, backbone)
    if kind == "visual":
        head = VisualPrompts(backbone, template, generator)
        return head, _VisualAdapter(head, backbone)
    head = TextPrompts(backbone, template, generator)
    return head, _TextAdapter(head, backbone)


def _folds(n: int, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i::k] for i in range(k)]


class Verifier:
    """A one-class verifier for one source on a frozen CLIP.

    Parameters: ``kind`` ("visual" or "text"), ``template`` (a prompt template name or JSON path;
    defaults per kind), ``settings`` (:class:`occ.training.TrainSettings`), ``far`` and
    ``target_tpr`` (the threshold rules, see :mod:`occ.calibration`), ``folds`` (cross-validation
    folds for calibration).
    """

    def __init__(self, kind: str = "visual", template: str | None = None, settings: TrainSettings | None = None,
                 far: float = DEFAULT_FAR, folds: int = DEFAULT_FOLDS, target_tpr: float = DEFAULT_TARGET_TPR):
        if kind not in KINDS:
            raise UsageError(f"unknown verifier kind {kind!r}; choose from {', '.join(KINDS)}")
        check_far(far)
        check_tpr(target_tpr)
        self.kind = kind
        self.template = template or DEFAULT_TEMPLATES[kind]
        self.settings = settings or TrainSettings()
        self.far = far
        self.target_tpr = target_tpr
        self.folds = folds

    # -- fitting -------------------------------------------------------------------------------

    def kv_blocks(self, backbone: Backbone) -> tuple[int, ...]:
        """Blocks whose patch keys/values this verifier needs from the trunk."""
        if self.kind != "visual":
            return ()
        return VisualPrompts(backbone, PromptTemplate.load(self.template)).blocks

    def fit(self, backbone: Backbone, pos: Trunk, neg: Trunk, *, neg_pixels: torch.Tensor | None = None,
            progress: Progress | None = None) -> Verifier:
        """Learn from target features ``pos`` and non-target features ``neg`` (trunk outputs)."""
        n_pos, n_neg = len(pos), len(neg)
        if n_pos < 2:
            raise UsageError(f"need at least 2 target images to enroll, got {n_pos}")
        if n_neg < 2:
            raise UsageError(f"need at least 2 non-target images, got {n_neg}")
        start = time.perf_counter()
        template = PromptTemplate.load(self.template) if self.template else None
        k = max(2, min(self.folds, n_pos))
        generator = torch.Generator().manual_seed(self.settings.seed)
        pos_folds, neg_folds = _folds(n_pos, k, generator), _folds(n_neg, k, generator)
        held_pos, held_neg = [], []
        total_runs = k + 1
        for fold in range(k):
            train_pos = torch.cat([f for i, f in enumerate(pos_folds) if i != fold])
            train_neg = torch.cat([f for i, f in enumerate(neg_folds) if i != fold])
            head, adapter = self._train(backbone, template, pos.select(train_pos), neg.select(train_neg),
                                        neg_pixels[train_neg] if neg_pixels is not None else None,
                                        progress, fold, total_runs)
            held_pos.append(self._raw(adapter, pos.select(pos_folds[fold])))
            held_neg.append(self._raw(adapter, neg.select(neg_folds[fold])))
        head, adapter = self._train(backbone, template, pos, neg, neg_pixels, progress, k, total_runs)
        self.template_ = template
        self.head_ = head
        self.adapter_ = adapter
        self.calibration_ = Calibration.fit(np.concatenate(held_pos), np.concatenate(held_neg), self.far,
                                            self.target_tpr)
        self.backbone_fingerprint_ = backbone.fingerprint
        self.n_pos_, self.n_neg_ = n_pos, n_neg
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _train(self, backbone, template, pos: Trunk, neg: Trunk, neg_pixels, progress, run, total_runs):
        head, adapter = _build_head(self.kind, backbone, template, self.settings.seed)
        pos_in, neg_in = adapter.from_trunk(pos), adapter.from_trunk(neg)
        if self.kind == "probe":
            head.fit(pos_in[0], neg_in[0], self.settings.seed)
            if progress:
                progress("train", run + 1, total_runs)
            return head, adapter
        if self.kind == "visual":
            head.initialise(pos_in[0], neg_in[0], list(zip(pos_in[1::2], pos_in[2::2])),
                            list(zip(neg_in[1::2], neg_in[2::2])))
        steps = self.settings.steps

        def step_progress(done, _total):
            if progress:
                progress("train", run * steps + done, total_runs * steps)

        train(adapter, pos_in, neg_in, self.settings, neg_pixels=neg_pixels, progress=step_progress)
        return head, adapter

    @staticmethod
    def _raw(adapter, trunk: Trunk, shared: dict | None = None) -> np.ndarray:
        with torch.no_grad():
            return adapter.raw(trunk, shared).double().numpy()

    # -- scoring -------------------------------------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "head_"):
            raise UsageError("this verifier is not fitted yet")

    def decision_function(self, trunk: Trunk, shared: dict | None = None) -> np.ndarray:
        """Raw scores (higher = more like the source). ``shared`` caches per-batch work across verifiers."""
        self._check_fitted()
        return self._raw(self.adapter_, trunk, shared)

    def score(self, trunk: Trunk, shared: dict | None = None) -> np.ndarray:
        """Calibrated scores in [0, 1], comparable across sources."""
        return self.calibration_.probability(self.decision_function(trunk, shared))

    def predict(self, trunk: Trunk, shared: dict | None = None) -> np.ndarray:
        """True where the image is accepted as coming from the source."""
        return self.calibration_.accept(self.decision_function(trunk, shared))

    @property
    def threshold(self) -> float:
        """Threshold on the calibrated scale."""
        return self.calibration_.calibrated_threshold

    def set_threshold(self, far: float | None = None, target_tpr: float | None = None) -> Verifier:
        """Re-choose the threshold for other rates from the stored held-out scores (no retraining)."""
        self._check_fitted()
        self.calibration_ = self.calibration_.with_far(far, target_tpr)
        self.far, self.target_tpr = self.calibration_.far, self.calibration_.target_tpr
        return self

    # -- persistence ---------------------------------------------------------------------------

    def to_saved(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata) for the registry: safetensors + JSON, nothing executable."""
        self._check_fitted()
        tensors = {k: v.detach().contiguous().clone() for k, v in self.head_.state_dict().items()}
        meta = {
            "format": VERIFIER_FORMAT,
            "kind": self.kind,
            "template": self.template_.to_dict() if self.template_ else None,
            "settings": self.settings.to_dict(),
            "folds": self.folds,
            "calibration": self.calibration_.to_dict(),
            "backbone_fingerprint": self.backbone_fingerprint_,
            "n_target": self.n_pos_,
            "n_nontarget": self.n_neg_,
            "fit_seconds": round(self.fit_seconds_, 3),
        }
        return tensors, meta

    @classmethod
    def from_saved(cls, backbone: Backbone, tensors: dict[str, torch.Tensor], meta: dict,
                   name: str = "?") -> Verifier:
        """Rebuild a fitted verifier; refuses one made on another backbone."""
        if meta.get("format") != VERIFIER_FORMAT or meta.get("kind") not in KINDS:
            raise RegistryError(f"source '{name}': not an occ verifier (format {meta.get('format')!r})")
        if meta.get("backbone_fingerprint") != backbone.fingerprint:
            raise RegistryError(
                f"source '{name}' was enrolled on backbone {meta.get('backbone_fingerprint')}; "
                f"the backbone in use is {backbone.fingerprint}"
            )
        try:
            template = PromptTemplate(**meta["template"]) if meta["template"] is not None else None
            settings = TrainSettings(**meta["settings"])
            verifier = cls(meta["kind"], template.name if template else None, settings,
                           meta["calibration"]["far"], meta["folds"], meta["calibration"]["target_tpr"])
            head, adapter = _build_head(meta["kind"], backbone, template, settings.seed)
            head.load_state_dict(tensors, strict=True)
            verifier.calibration_ = Calibration.from_dict(meta["calibration"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RegistryError(f"source '{name}': verifier data does not fit its kind ({reason})") from None
        head.eval()
        verifier.template_ = template
        verifier.head_, verifier.adapter_ = head, adapter
        verifier.backbone_fingerprint_ = meta["backbone_fingerprint"]
        verifier.n_pos_, verifier.n_neg_ = meta.get("n_target", 0), meta.get("n_nontarget", 0)
        verifier.fit_seconds_ = meta.get("fit_seconds", 0.0)
        return verifier

    def with_settings(self, **changes) -> Verifier:
        return Verifier(self.kind, self.template, replace(self.settings, **changes), self.far, self.folds,
                        self.target_tpr)
