"""Open-set attribution over a registry.

``lda`` sources (the default kind) are decided together by the registry-wide joint model
(:mod:`occ.openset`, :class:`occ.joint.JointModel`): the source nearest the image in the shared
whitened space is named when its margin against the non-target class reaches its threshold and the
image is no farther from it than its own held-out images; otherwise the image is unknown. For those
sources a verifier "accepts" only the image the joint model names it for, so ``verify --source S`` and
``attribute`` always agree. Sources of the other kinds (prompt tokens, probe) are scored by their own
verifiers on the same shared trunk pass and accept where their score reaches their threshold. The
named source is the accepted one with the highest score, or ``None`` ("unknown"). What decides each
source (its threshold, radius, the model it belongs to) is its :class:`occ.decisions.DecisionRecord`, in
:attr:`Attributor.records`; a source whose score alone reaches its threshold and that does not accept
says why in :attr:`Decision.reasons` (:func:`occ.decisions.reason`).

The joint model reads only the CLS tokens, as numpy arrays: over images whose features are cached, a
registry of ``lda`` sources is decided without importing torch (nor building those sources' heads:
their verifiers load only when asked for, see :class:`Verifiers`). torch is imported when the trunk
runs (an image not in the cache) or a source of another kind is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from occ import decisions
from occ.backbones.base import Backbone, Trunk
from occ.calibration import accept_columns
from occ.errors import ImageError, OccError, RegistryError, UsageError
from occ.features import FeatureExtractor
from occ.images import ImageFile, iter_paths, read_image_file
from occ.openset import JOINT_KIND, joint_for
from occ.paths import display_path
from occ.registry import Registry
from occ.sources import require_enrolled

if TYPE_CHECKING:  # (a verifier's head needs torch: loaded only for the sources that score with it)
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
    raw_thresholds: dict[str, float] = field(default_factory=dict)  # thresholds on the raw scale
    # why a source whose score alone reaches its threshold does not accept (occ.decisions.reason), by source
    reasons: dict[str, str] = field(default_factory=dict)


def load_verifier(registry: Registry, backbone: Backbone, name: str) -> Verifier:
    """The verifier of source ``name``, checked against ``backbone``."""
    # deferred: loads torch, which occ --help, occ sources and cached scoring never import
    from occ.verifier import Verifier

    return Verifier.from_saved(backbone, *registry.load(name), name)


def load_verifiers(registry: Registry, backbone: Backbone, names: Sequence[str] | None = None,
                   on_skip: Callable[[str, OccError], None] | None = None) -> dict[str, Verifier]:
    """Load verifiers from the registry (all when ``names`` is None). A source that cannot be used
    (damaged, another backbone) is passed to ``on_skip`` and left out; with ``on_skip`` None it raises."""
    names = list(registry.names() if names is None else names)
    loaded = {}
    for name in names:
        try:
            loaded[name] = load_verifier(registry, backbone, name)
        except UsageError:
            raise
        except OccError as exc:
            if on_skip is None:
                raise
            on_skip(name, exc)
    return loaded


class Verifiers(Mapping):
    """An attributor's verifiers by name, in name order. Sources the registry's joint model decides need
    no verifier of their own to be decided (the joint model reads CLS tokens only), so their verifiers
    are loaded from the registry only when asked for (``occ serve``'s source list, ``occ eval``'s
    report): deciding ``lda`` sources builds no head, and needs no torch."""

    def __init__(self, loaded: Mapping[str, Verifier], deferred: Mapping[str, Callable[[], Verifier]] | None = None):
        self._loaded = dict(loaded)
        self._deferred = {n: f for n, f in (deferred or {}).items() if n not in self._loaded}
        self._names = sorted([*self._loaded, *self._deferred])

    def __getitem__(self, name: str) -> Verifier:
        if name not in self._loaded:
            self._loaded[name] = self._deferred[name]()  # KeyError for an unknown name
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in self._loaded or name in self._deferred

    def only(self, names: Iterable[str]) -> Verifiers:
        """The verifiers of ``names`` (loaded ones shared, deferred ones still deferred)."""
        names = set(names)
        return Verifiers({n: v for n, v in self._loaded.items() if n in names},
                         {n: f for n, f in self._deferred.items() if n in names})


class Attributor:
    """Every enrolled verifier over one shared trunk pass per image.

    The trunk runs once per image (and is cached on disk); per-source work is the verifier heads only,
    with per-batch work they share (a :class:`occ.heads.TrunkBatch`: keys/values of patch tokens, the CLS
    token's attention) computed once. Sources of the joint model are decided by it, from the CLS tokens.
    """

    def __init__(self, verifiers: Mapping[str, Verifier], backbone: Backbone,
                 extractor: FeatureExtractor | None = None, joint=None, joint_stale: bool = False):
        if not verifiers:
            raise UsageError("no sources to attribute against: enroll one first with `occ enroll NAME PATH...`")
        self.verifiers = verifiers if isinstance(verifiers, Verifiers) else Verifiers(verifiers)
        self.backbone = backbone
        self.extractor = extractor or FeatureExtractor(backbone)
        # the joint model decides its sources; it may know more sources than are scored here (verify)
        self.joint = joint
        self.joint_stale = joint_stale  # the stored joint model did not match the sources: fitted now
        self._joint_names = set(joint.names_) & set(self.verifiers) if joint is not None else set()
        self._own = [n for n in self.verifiers if n not in self._joint_names]  # scored by their own heads
        self.blocks = tuple(sorted({b for n in self._own for b in self.verifiers[n].kv_blocks(backbone)}))
        # whether the trunk reads each image's native-resolution crops too (the joint model's evidence)
        self.crops = bool(self._joint_names) and bool(joint.settings_.crops)

    @property
    def records(self) -> dict[str, decisions.DecisionRecord]:
        """What decides each source, now (:func:`occ.decisions.record`, the one rule): the joint model for
        the sources it was fitted on (their verifiers are not loaded for it), else the source's verifier."""
        return {n: decisions.record(n, JOINT_KIND, None, self.joint) if n in self._joint_names else
                decisions.record(n, self.verifiers[n].kind, self.verifiers[n].calibration_) for n in self.verifiers}

    @classmethod
    def from_registry(cls, registry: Registry, backbone: Backbone, names: Sequence[str] | None = None,
                      on_skip: Callable[[str, OccError], None] | None = None, **kwargs) -> Attributor:
        if names is None:
            require_enrolled(registry)
        names = list(registry.names() if names is None else names)
        kwargs.setdefault("extractor", FeatureExtractor(backbone))
        joint = None
        if names:
            # a damaged source is reported by load_verifiers (or, for verify, by attribute), and left out here
            joint, kwargs["joint_stale"] = joint_for(registry, backbone, extractor=kwargs["extractor"],
                                                     on_skip=lambda _name, _exc: None)
        kwargs["joint"] = joint
        decided = [n for n in names if joint is not None and n in joint.names_]
        loaded = load_verifiers(registry, backbone, [n for n in names if n not in decided], on_skip)
        verifiers = Verifiers(loaded, {n: (lambda n=n: load_verifier(registry, backbone, n)) for n in decided})
        if not verifiers and names:
            # Sources are enrolled but none can be used (each was reported to on_skip): a damaged
            # registry or another backbone, not a usage error.
            raise RegistryError(f"none of the enrolled sources in registry {registry.root} can be used "
                                f"with backbone {backbone.fingerprint}")
        return cls(verifiers, backbone, **kwargs)

    def decide(self, trunk: Trunk, paths: Sequence) -> list[Decision]:
        """Decisions for a batch of trunk features (row i belongs to ``paths[i]``)."""
        own = self._own
        raw = {}
        if own:
            # deferred: loads torch, which occ --help, occ sources and cached scoring never import
            from occ.heads import TrunkBatch

            batch = TrunkBatch(trunk, self.backbone)  # per-batch work the verifiers share
            raw = {name: self.verifiers[name].decision_function(batch) for name in own}
        calibrations = {name: record.calibration for name, record in self.records.items()}
        accepted = {name: calibrations[name].accept(raw[name]) for name in own}
        calibrated = {name: calibrations[name].probability(raw[name]) for name in own}
        reasons: list[dict[str, str]] = [{} for _ in paths]
        if self._joint_names:
            joint = self.joint.decide_arrays(self.joint.settings_.rows(trunk.cls_array, trunk.low, trunk.crops))
            cols = [j for j, name in enumerate(joint.names) if name in self._joint_names]
            joint_raw = joint.raw[:, cols].astype(np.float64)
            joint_accepted = joint.named[:, None] == np.asarray(cols, dtype=joint.named.dtype)[None]
            reaches = accept_columns([calibrations[joint.names[j]] for j in cols], joint_raw)
            for c, j in enumerate(cols):
                name = joint.names[j]
                raw[name], accepted[name], calibrated[name] = joint_raw[:, c], joint_accepted[:, c], joint.scores[:, j]
            for i, c in zip(*np.nonzero(reaches & ~joint_accepted)):
                name, j = joint.names[cols[c]], cols[c]
                why = decisions.reason(name, True, False, joint.names[joint.best[i]], bool(joint.within[i, j]))
                if why is not None:
                    reasons[i][name] = why
        names = list(self.verifiers)
        thresholds = {name: calibrations[name].calibrated_threshold for name in names}
        raw_thresholds = {name: calibrations[name].threshold for name in names}
        # (N, K) arrays turned into rows at once: per-row work over every source dominated a cached
        # attribution over a registry of many sources
        score_rows = np.stack([np.asarray(calibrated[n], np.float64) for n in names], 1).tolist()
        raw_rows = np.stack([np.asarray(raw[n], np.float64) for n in names], 1).tolist()
        accepts = np.stack([np.asarray(accepted[n], bool) for n in names], 1)
        out = []
        for i, path in enumerate(paths):
            scores = dict(zip(names, score_rows[i]))
            ok = sorted((names[j] for j in np.flatnonzero(accepts[i])), key=lambda n, s=scores: (-s[n], n))
            out.append(Decision(str(path), ok[0] if ok else None, scores, ok, thresholds,
                                dict(zip(names, raw_rows[i])), raw_thresholds, dict(sorted(reasons[i].items()))))
        return out

    def results(self, inputs: Iterable) -> Iterator[Decision | ImageError]:
        """A :class:`Decision` or, for a file that cannot be used, an :class:`ImageError` per image under
        ``inputs`` (files and folders), in input order: a failed file's error comes where the file does.

        Files are read as they come and decided in batches of the extractor's batch size; an error is
        held back only until the images before it in that batch are decided."""
        pending: list[ImageFile | ImageError] = []  # in input order, from the first file not yet decided
        n_files = 0
        for item in iter_paths(inputs):
            if not isinstance(item, ImageError):
                try:
                    item = read_image_file(item)
                except ImageError as exc:
                    item = exc
            if isinstance(item, ImageError) and not pending:
                yield item  # nothing before it is waiting
                continue
            pending.append(item)
            n_files += isinstance(item, ImageFile)
            if n_files == self.extractor.batch_size:
                yield from self._in_place(pending)
                pending, n_files = [], 0
        if pending:
            yield from self._in_place(pending)

    def _in_place(self, items: Sequence[ImageFile | ImageError]) -> list[Decision | ImageError]:
        """``items`` with each file replaced by its decision, or by its error when it cannot be decoded.
        The files go to the extractor under their index as path (as ``occ serve`` does), so every result
        finds its place even when one file is named twice."""
        out: list[Decision | ImageError] = list(items)
        files = [ImageFile(Path(str(i)), f.sha256, f.data) for i, f in enumerate(items) if isinstance(f, ImageFile)]

        def on_error(exc: ImageError) -> None:
            i = int(exc.path)
            out[i] = ImageError(display_path(items[i].path), exc.reason)  # as images.py names files

        for decision in self.run_files(files, on_error):
            i = int(decision.path)
            decision.path = str(items[i].path)
            out[i] = decision
        return out

    def run(self, inputs: Iterable, on_error: Callable[[ImageError], None] | None = None) -> Iterator[Decision]:
        """Stream decisions for the images under ``inputs`` (files and folders), in input order; each file
        that cannot be used goes to ``on_error`` in its place among them (see :meth:`results`)."""
        for result in self.results(inputs):
            if not isinstance(result, Decision):
                if on_error:
                    on_error(result)
                continue
            yield result

    def run_files(self, files: Sequence[ImageFile],
                  on_error: Callable[[ImageError], None] | None = None) -> Iterator[Decision]:
        """Decisions for images whose bytes are already read (see :meth:`FeatureExtractor.from_files`)."""
        for batch in self.extractor.from_files(files, self.blocks, on_error, crops=self.crops):
            yield from self.decide(batch.trunk, [im.path for im in batch.images])


def verify_row(decision: Decision, source: str) -> dict:
    """What ``occ verify --json`` (and ``occ serve``) answers for one image and one source: ``reason`` says
    why an image whose score reaches the threshold is not accepted (null otherwise)."""
    return {"path": decision.path, "source": source, "score": round(decision.scores[source], 6),
            "threshold": round(decision.thresholds[source], 6), "accepted": source in decision.accepted,
            "reason": decision.reasons.get(source)}


def attribute_reason(reasons: dict[str, str]) -> str | None:
    """An attribute row's ``reason``: every source whose score reaches its threshold and that does not
    accept, with why (``"a: outside a's range; b: nearer to c"``), or None."""
    return "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items())) or None


def round_scores(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in scores.items()}


def attribute_row(decision: Decision) -> dict:
    """What ``occ attribute --json`` (and ``occ serve``, and the Ray engine) answers for one image."""
    return {"path": decision.path, "source": decision.source, "scores": round_scores(decision.scores),
            "accepted": list(decision.accepted), "reason": attribute_reason(decision.reasons)}


def error_row(exc: ImageError) -> dict:
    """What ``--json`` answers for an image that could not be read."""
    return {"path": exc.path, "error": exc.reason}
