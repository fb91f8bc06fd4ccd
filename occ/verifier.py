"""One source's verifier: fit on target + non-target features, score, threshold (scikit-learn style).

``Verifier(config)`` holds a :class:`occ.config.VerifierConfig`; ``fit`` builds the config's kind of
head (:mod:`occ.heads`, :data:`occ.config.KINDS`) on the frozen backbone, estimates held-out scores by
cross-validation over the shots, fits the head on all of them, and calibrates a threshold at the
requested false-accept rate (:mod:`occ.calibration`); learned state lives in attributes ending in ``_``.

Raw scores are ``logit(target) - logit(non-target)``; :meth:`Verifier.score` gives the calibrated
probability, comparable across sources.

The verifier owns its saved form: :meth:`Verifier.save` writes a folder with ``verifier.json`` (config,
calibration, fit facts and provenance) and ``verifier.safetensors`` (the head's fitted tensors, whatever
the kind stores), :meth:`Verifier.load` reads it back; :meth:`to_saved` / :meth:`from_saved` are the
same in memory (what the registry stores and checks, without knowing the keys). A verifier is refused on
any backbone but the one it was fitted on (:func:`check_backbone`, the one place that checks).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from occ.backbones.base import Backbone, Trunk
from occ.calibration import Calibration
from occ.config import KINDS, VerifierConfig
from occ.errors import RegistryError, UsageError, first_line
from occ.heads import Head, TrunkBatch
from occ.openset import EVIDENCE_PREFIX, enrolled_on
from occ.registry.schema import META_FILE, TENSOR_FILE

VERIFIER_FORMAT = "occ-verifier"
# The keys of verifier.json the verifier writes; every other key is provenance, kept as it is.
OWN_KEYS = ("format", "kind", "template", "settings", "folds", "views", "calibration", "backbone_fingerprint",
            "n_target", "n_nontarget", "fit_seconds")

Progress = Callable[[str, int, int], None]
Features = Trunk | TrunkBatch


def check_backbone(meta: dict, backbone: Backbone, name: str) -> None:
    """RegistryError unless the saved verifier ``meta`` was fitted on ``backbone``."""
    theirs = enrolled_on(meta)
    if theirs != backbone.fingerprint:
        raise RegistryError(f"source '{name}' was enrolled on backbone {theirs or '(unknown)'}; the backbone in use "
                            f"is {backbone.fingerprint}; re-enroll it or select that backbone")


def _folds(n: int, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i::k] for i in range(k)]


class Verifier:
    """A one-class verifier for one source on a frozen CLIP, made as ``config`` says.

    ``provenance``: facts stored with the verifier that it does not use itself (source name, training
    image hashes, negatives used, time of enrollment); set by :func:`occ.enrollment.enroll`.
    """

    def __init__(self, config: VerifierConfig | None = None):
        self.config = config if config is not None else VerifierConfig()
        if not isinstance(self.config, VerifierConfig):
            raise UsageError(f"Verifier takes a VerifierConfig, not {type(self.config).__name__}")
        self.provenance: dict = {}
        self.evidence_: dict[str, torch.Tensor] = {}

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def settings(self):
        return self.config.settings

    # -- fitting -------------------------------------------------------------------------------

    def kv_blocks(self, backbone: Backbone) -> tuple[int, ...]:
        """Blocks whose patch keys/values this verifier needs from the trunk."""
        return self.config.head_class.needed_blocks(backbone, self.config.template)

    def fit(self, backbone: Backbone, pos: Trunk, neg: Trunk, *, neg_pixels: torch.Tensor | None = None,
            progress: Progress | None = None) -> Verifier:
        """Learn from target features ``pos`` and non-target features ``neg`` (trunk outputs)."""
        n_pos, n_neg = len(pos), len(neg)
        if n_pos < 2:
            raise UsageError(f"need at least 2 target images to enroll, got {n_pos}")
        if n_neg < 2:
            raise UsageError(f"need at least 2 non-target images, got {n_neg}")
        start = time.perf_counter()
        k = max(2, min(self.config.folds, n_pos))
        generator = torch.Generator().manual_seed(self.settings.seed)
        pos_folds, neg_folds = _folds(n_pos, k, generator), _folds(n_neg, k, generator)
        held_pos, held_neg = [], []
        for fold in range(k):
            train_pos = torch.cat([f for i, f in enumerate(pos_folds) if i != fold])
            train_neg = torch.cat([f for i, f in enumerate(neg_folds) if i != fold])
            head = self._train(backbone, pos.select(train_pos), neg.select(train_neg),
                               neg_pixels[train_neg] if neg_pixels is not None else None, progress, fold, k + 1)
            held_pos.append(_raw(head, TrunkBatch(pos.select(pos_folds[fold]), backbone)))
            held_neg.append(_raw(head, TrunkBatch(neg.select(neg_folds[fold]), backbone)))
        self.head_ = self._train(backbone, pos, neg, neg_pixels, progress, k, k + 1)
        self.backbone_ = backbone
        self.calibration_ = Calibration.fit(np.concatenate(held_pos), np.concatenate(held_neg), self.config.far,
                                            self.config.target_tpr)
        self.backbone_fingerprint_ = backbone.fingerprint
        self.n_pos_, self.n_neg_ = n_pos, n_neg
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _train(self, backbone, pos: Trunk, neg: Trunk, neg_pixels, progress, run: int, runs: int) -> Head:
        head = self.config.head_class.create(backbone, self.config.template,
                                             torch.Generator().manual_seed(self.settings.seed))

        def step_progress(done, total):
            if progress:
                progress("train", run * total + done, runs * total)

        head.fit(TrunkBatch(pos, backbone), TrunkBatch(neg, backbone), self.settings, neg_pixels=neg_pixels,
                 progress=step_progress)
        return head

    def describe(self) -> str:
        """What was fitted, read from the fitted head and the settings it was trained with."""
        self._check_fitted()
        s = self.settings
        text = self.head_.describe()
        if self.head_.trains:
            text += f", loss {s.loss}{' + SAM' if s.sam else ''}, adversarial {s.adversarial}, {s.steps} steps"
        return f"{text}, seed {s.seed}"

    # -- scoring -------------------------------------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "calibration_"):
            raise UsageError("this verifier is not fitted yet")
        if self.head_ is None:
            raise UsageError("this verifier was loaded without a backbone: load it with one to score images")

    def decision_function(self, features: Features) -> np.ndarray:
        """Raw scores (higher = more like the source) of trunk features or a :class:`TrunkBatch` (whose
        shared per-batch work is reused across the verifiers that score it)."""
        self._check_fitted()
        batch = features if isinstance(features, TrunkBatch) else TrunkBatch(features, self.backbone_)
        return _raw(self.head_, batch)

    def score(self, features: Features) -> np.ndarray:
        """Calibrated scores in [0, 1], comparable across sources."""
        return self.calibration_.probability(self.decision_function(features))

    def predict(self, features: Features) -> np.ndarray:
        """True where the image is accepted as coming from the source."""
        return self.calibration_.accept(self.decision_function(features))

    @property
    def threshold(self) -> float:
        """Threshold on the calibrated scale."""
        return self.calibration_.calibrated_threshold

    def set_threshold(self, far: float | None = None, target_tpr: float | None = None) -> Verifier:
        """Re-choose the threshold for other rates from the stored held-out scores (no retraining)."""
        if not hasattr(self, "calibration_"):
            raise UsageError("this verifier is not fitted yet")
        self.calibration_ = self.calibration_.with_far(far, target_tpr)
        self.config = dataclasses.replace(self.config, far=self.calibration_.far,
                                          target_tpr=self.calibration_.target_tpr)
        return self

    # -- saved form ----------------------------------------------------------------------------

    def to_saved(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata): the contents of ``verifier.safetensors`` and ``verifier.json``."""
        if not hasattr(self, "calibration_"):
            raise UsageError("this verifier is not fitted yet")
        tensors = self.head_.saved_tensors() if self.head_ is not None else dict(self._tensors)
        tensors.update(self.evidence_)  # what the registry-wide model is refitted from (occ.openset)
        meta = dict(self.provenance)
        meta.update({"format": VERIFIER_FORMAT, **self.config.to_dict(), "calibration": self.calibration_.to_dict(),
                     "backbone_fingerprint": self.backbone_fingerprint_, "n_target": self.n_pos_,
                     "n_nontarget": self.n_neg_, "fit_seconds": round(self.fit_seconds_, 3)})
        return tensors, meta

    @classmethod
    def from_saved(cls, backbone: Backbone | None, tensors: dict[str, torch.Tensor], meta: dict,
                   name: str = "?") -> Verifier:
        """Rebuild a fitted verifier; refuses one made on another backbone. With ``backbone`` None the
        head is not built: the verifier can change its threshold and be saved again, but not score."""
        if meta.get("format") != VERIFIER_FORMAT or meta.get("kind") not in KINDS:
            raise RegistryError(f"source '{name}': not an occ verifier (format {meta.get('format')!r})")
        if backbone is not None:
            check_backbone(meta, backbone, name)
        try:
            config = VerifierConfig.from_dict(meta, meta["calibration"])
            calibration = Calibration.from_dict(meta["calibration"])
            head = None
            if backbone is not None:
                head = config.head_class.create(backbone, config.template,
                                                torch.Generator().manual_seed(config.settings.seed))
                head.load_saved({k: v for k, v in tensors.items() if not k.startswith(EVIDENCE_PREFIX)})
        except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as exc:
            raise RegistryError(f"source '{name}': verifier data does not fit its kind ({first_line(exc)})") from None
        verifier = cls(config)
        verifier.provenance = {k: v for k, v in meta.items() if k not in OWN_KEYS}
        verifier.calibration_ = calibration
        verifier.head_, verifier.backbone_ = head, backbone
        verifier._tensors = {k: v for k, v in tensors.items() if not k.startswith(EVIDENCE_PREFIX)}
        verifier.evidence_ = {k: v for k, v in tensors.items() if k.startswith(EVIDENCE_PREFIX)}
        verifier.backbone_fingerprint_ = meta["backbone_fingerprint"]
        verifier.n_pos_, verifier.n_neg_ = meta.get("n_target", 0), meta.get("n_nontarget", 0)
        verifier.fit_seconds_ = meta.get("fit_seconds", 0.0)
        return verifier

    def save(self, folder: str | Path) -> Path:
        """Write ``verifier.json`` and ``verifier.safetensors`` into ``folder`` (made if needed)."""
        from safetensors.torch import save_file

        tensors, meta = self.to_saved()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / TENSOR_FILE))
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, backbone: Backbone | None, name: str | None = None) -> Verifier:
        """Read a folder written by :meth:`save` (or a registry version folder). Tensors are parsed with
        safetensors, never unpickled."""
        from safetensors.torch import load_file

        folder = Path(folder)
        name = name or folder.name
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            tensors = load_file(str(folder / TENSOR_FILE))
        except OSError as exc:
            raise RegistryError(f"cannot read verifier folder {folder}: {first_line(exc)}") from None
        except Exception as exc:  # invalid JSON or safetensors: the parsers raise their own types
            raise RegistryError(f"verifier folder {folder} is damaged ({first_line(exc)})") from None
        if not isinstance(meta, dict):
            raise RegistryError(f"verifier folder {folder} is damaged ({META_FILE} is not a JSON object)")
        return cls.from_saved(backbone, tensors, meta, name)


def _raw(head: Head, batch: TrunkBatch) -> np.ndarray:
    with torch.no_grad():
        return head.raw(batch).double().numpy()

