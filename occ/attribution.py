"""Open-set attribution over a registry: run every enrolled verifier on each image's shared trunk
features, accept where a verifier's calibrated score reaches its threshold, and name the accepted
source with the highest calibrated score, or ``None`` ("unknown") when no verifier accepts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from occ.backbones.base import Backbone, Trunk
from occ.errors import ImageError, OccError, RegistryError, UsageError
from occ.features import FeatureExtractor
from occ.images import ImageFile
from occ.registry import Registry
from occ.verifier import Verifier


@dataclass
class Decision:
    """The outcome for one image."""

    path: str
    source: str | None  # best accepted source, None = unknown
    scores: dict[str, float]  # calibrated score per source
    accepted: list[str]  # sources whose verifier accepts, best first
    thresholds: dict[str, float] = field(default_factory=dict)
    # Raw verifier scores per source (logit margins): the calibrated scores are a monotone map of
    # these, but saturate at 0 and 1, so ranking figures (ROC AUC of one source) use these.
    raw: dict[str, float] = field(default_factory=dict)


def load_verifiers(registry: Registry, backbone: Backbone, names: Sequence[str] | None = None,
                   on_skip: Callable[[str, OccError], None] | None = None) -> dict[str, Verifier]:
    """Load verifiers from the registry (all when ``names`` is None). A source that cannot be used
    (damaged, another backbone) is passed to ``on_skip`` and left out; with ``on_skip`` None it raises."""
    names = list(registry.names() if names is None else names)
    loaded = {}
    for name in names:
        try:
            tensors, meta = registry.load(name, expected_fingerprint=backbone.fingerprint)
            loaded[name] = Verifier.from_saved(backbone, tensors, meta, name)
        except UsageError:
            raise
        except OccError as exc:
            if on_skip is None:
                raise
            on_skip(name, exc)
    return loaded


class Attributor:
    """Every enrolled verifier over one shared trunk pass per image.

    The trunk runs once per image (and is cached on disk); per-source work is the verifier heads only,
    with per-batch work they share (keys/values of patch tokens) computed once.
    """

    def __init__(self, verifiers: dict[str, Verifier], backbone: Backbone,
                 extractor: FeatureExtractor | None = None):
        if not verifiers:
            raise UsageError("no sources to attribute against: enroll one first with `occ enroll NAME PATH...`")
        self.verifiers = dict(sorted(verifiers.items()))
        self.backbone = backbone
        self.extractor = extractor or FeatureExtractor(backbone)
        self.blocks = tuple(sorted({b for v in self.verifiers.values() for b in v.kv_blocks(backbone)}))

    @classmethod
    def from_registry(cls, registry: Registry, backbone: Backbone, names: Sequence[str] | None = None,
                      on_skip: Callable[[str, OccError], None] | None = None, **kwargs) -> Attributor:
        if names is None and len(registry) == 0:
            raise UsageError(f"registry {registry.root} is empty: enroll a source first with `occ enroll`")
        verifiers = load_verifiers(registry, backbone, names, on_skip)
        if not verifiers and (names is None or names):
            # Sources are enrolled but none can be used (each was reported to on_skip): a damaged
            # registry or another backbone, not a usage error.
            raise RegistryError(f"none of the enrolled sources in registry {registry.root} can be used "
                                f"with backbone {backbone.fingerprint}")
        return cls(verifiers, backbone, **kwargs)

    def decide(self, trunk: Trunk, paths: Sequence) -> list[Decision]:
        """Decisions for a batch of trunk features (row i belongs to ``paths[i]``)."""
        shared: dict = {}
        raw = {name: v.decision_function(trunk, shared) for name, v in self.verifiers.items()}
        calibrated = {name: self.verifiers[name].calibration_.probability(r) for name, r in raw.items()}
        accepted = {name: self.verifiers[name].calibration_.accept(r) for name, r in raw.items()}
        thresholds = {name: v.threshold for name, v in self.verifiers.items()}
        out = []
        for i, path in enumerate(paths):
            scores = {name: float(calibrated[name][i]) for name in self.verifiers}
            ok = sorted((n for n in self.verifiers if accepted[n][i]), key=lambda n: (-scores[n], n))
            out.append(Decision(str(path), ok[0] if ok else None, scores, ok, thresholds,
                                {name: float(raw[name][i]) for name in self.verifiers}))
        return out

    def run(self, inputs: Iterable, on_error: Callable[[ImageError], None] | None = None) -> Iterator[Decision]:
        """Stream decisions for the images under ``inputs`` (files and folders), in input order."""
        for batch in self.extractor.stream(inputs, self.blocks, on_error):
            yield from self.decide(batch.trunk, [im.path for im in batch.images])

    def run_files(self, files: Sequence[ImageFile],
                  on_error: Callable[[ImageError], None] | None = None) -> Iterator[Decision]:
        """Decisions for images whose bytes are already read (see :meth:`FeatureExtractor.from_files`)."""
        for batch in self.extractor.from_files(files, self.blocks, on_error):
            yield from self.decide(batch.trunk, [im.path for im in batch.images])


def verify_row(decision: Decision, source: str) -> dict:
    """What ``occ verify --json`` (and ``occ serve``) answers for one image and one source."""
    return {"path": decision.path, "source": source, "score": round(decision.scores[source], 6),
            "threshold": round(decision.thresholds[source], 6), "accepted": source in decision.accepted}


def round_scores(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in scores.items()}


def attribute_row(decision: Decision) -> dict:
    """What ``occ attribute --json`` (and ``occ serve``, and the Ray engine) answers for one image."""
    return {"path": decision.path, "source": decision.source, "scores": round_scores(decision.scores),
            "accepted": list(decision.accepted)}


def error_row(exc: ImageError) -> dict:
    """What ``--json`` answers for an image that could not be read."""
    return {"path": exc.path, "error": exc.reason}


def best_first(decision: Decision) -> list[tuple[str, float]]:
    return sorted(decision.scores.items(), key=lambda kv: (-kv[1], kv[0]))


def as_array(decisions: Sequence[Decision], name: str) -> np.ndarray:
    return np.array([d.scores[name] for d in decisions])
