"""The registry as one model: the joint open-set model over every ``lda`` source, kept with the registry.

Every ``lda`` source stores the evidence of its training images (the CLS tokens of each training view,
fp16, in its ``verifier.safetensors``: ``evidence.cls`` and ``evidence.ids``; the user's ``--negatives``
as ``evidence.neg_cls`` / ``evidence.neg_ids``; the low-level evidence of the same views,
:mod:`occ.lowlevel`, as ``evidence.low`` / ``evidence.neg_low``; the CLS tokens of their native-resolution
crops, :func:`occ.evidence.native_crops`, as ``evidence.crops`` / ``evidence.neg_crops``), so the joint
model (:class:`occ.joint.JointModel`) can be refitted from the registry alone, without the original files
or the feature cache. The non-target class is the shipped bank of real photos (with the same laundered
views, through the feature cache) plus every source's stored negatives. Sources enrolled before occ
stored the crops' evidence still work: a registry with one of them is decided without the crops (the
model says which sources to re-enroll to use them: :attr:`occ.joint.JointModel.without_crops_`).

The fitted model lives beside the sources in ``<registry>/joint-<key>.safetensors``, one per backbone
(tensors and, in the safetensors header, a JSON description; a file of the registry's layout, written by
:meth:`occ.registry.Registry.write_joint` under the registry's lock, atomically), and records the version
folder of every source it was fitted on (its *manifest*; the model's ``version_`` is a digest of it). It
is used only when it matches the sources exactly; otherwise (a refit that was interrupted, a source
enrolled by a process that died before refitting, a change made by an older occ) :func:`joint_for` fits
one in memory from the stored evidence, so attribution never mixes a model with sources it was not fitted
on. The registry itself keeps the model in line: every write of :class:`occ.registry.Registry` (enroll,
replace, remove, import, a threshold change) ends in :func:`after_change`, which refits the joint model of
the backbones the change touched (:func:`sync`, the one place that decides when to refit), so the Python
API and the command line cannot diverge, and decisions never depend on the order of enrollment.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from occ import joint
from occ.backbones import load_backbone
from occ.errors import OccError, RegistryError, UsageError, first_line
from occ.evidence import (
    CROP_COUNT,
    DEFAULT_VIEWS,
    crop_evidence,
    default_blocks,
    default_crop_blocks,
    evidence,
    training_views,
)
from occ.joint import (
    DEFAULT_DIMS,
    DEFAULT_DISCRIMINATIVE,
    DEFAULT_FIT_VIEWS,
    DEFAULT_MIN_MARGIN,
    ClassRows,
    JointModel,
    Stream,
)
from occ.lowlevel import DIMS as LOW_DIMS
from occ.negatives import bank_paths

if TYPE_CHECKING:  # torch only where a source's tensors are made (enrollment): fitting and using the model,
    # and `occ sources`, need numpy alone
    import torch

    from occ.backbones.base import Backbone

EVIDENCE_PREFIX = "evidence."  # a source's stored training evidence in its safetensors (not part of its head)

JOINT_KIND = "lda"  # the kind of source the joint model decides (its head stores training evidence)
JOINT_FORMAT = "occ-joint-v4"  # v2: held-out scores in the tensors, not the JSON; v3: log-odds tensors; v4:
# a bounded summary of each source's held-out non-target scores (occ.metrics.ScoreSummary), with bin counts
EVIDENCE_KEYS = tuple(EVIDENCE_PREFIX + k for k in ("cls", "ids", "neg_cls", "neg_ids"))
LOW_EVIDENCE_KEYS = tuple(EVIDENCE_PREFIX + k for k in ("low", "neg_low"))  # rows in the order of cls / neg_cls
CROP_EVIDENCE_KEYS = tuple(EVIDENCE_PREFIX + k for k in ("crops", "neg_crops"))  # the same rows' crops
# whether the joint model reads the native-resolution crops (occ.evidence); selected on the content-matched
# validation generators (bench/evidence_study.py --protocol native)
DEFAULT_CROPS = True
# weight of the low-level stream in the joint model (occ.joint.Stream); chosen on the content-matched
# validation split of bench/generalise.py (imagen-*) among none, 0.3 and 1
DEFAULT_LOW_WEIGHT: float | None = 0.3
LOW_COMPONENTS = 64
BANK_SEED = 0
BANK_KEY = "default bank"  # the key enrollment records in a source's "negatives" when it used the bank
_BANK_ROWS: dict[tuple, ViewRows] = {}  # view_rows of the bank

Progress = Callable[[str, int, int], None]


def enrolled_on(meta: dict) -> str | None:
    """The backbone fingerprint a saved verifier (its ``verifier.json``) was fitted on."""
    fingerprint = meta.get("backbone_fingerprint")
    return fingerprint if isinstance(fingerprint, str) else None


def decided_jointly(meta: dict) -> bool:
    """Whether a source (its ``verifier.json``) belongs to the registry's joint model: an ``lda`` source."""
    return meta.get("kind") == JOINT_KIND


@dataclass
class JointSettings:
    """Registry-wide settings of the joint model (``bench/generalise.py`` selects among them)."""

    dims: int = DEFAULT_DIMS
    blocks: tuple[int, ...] | None = None  # None: occ.evidence.default_blocks of the backbone
    bank_views: int = DEFAULT_VIEWS
    seed: int = 0
    min_margin: float | None = DEFAULT_MIN_MARGIN  # the lowest threshold (occ.joint, point 6); None: no floor
    discriminative: float | None = DEFAULT_DISCRIMINATIVE  # occ.joint, point 3; None: discriminant margins
    low_weight: float | None = DEFAULT_LOW_WEIGHT  # the low-level stream's weight; None: CLIP evidence alone
    crops: bool = DEFAULT_CROPS  # the native-resolution crops' evidence beside the main view's
    crop_blocks: tuple[int, ...] | None = None  # the blocks the crops' evidence reads; None: default_crop_blocks
    fit_views: bool = DEFAULT_FIT_VIEWS  # the laundered views fitted on, or only scored for the thresholds

    def resolved(self, backbone: Backbone) -> JointSettings:
        blocks = default_blocks(backbone.num_layers) if self.blocks is None else tuple(self.blocks)
        crop_blocks = default_crop_blocks(backbone.num_layers) if self.crop_blocks is None else tuple(self.crop_blocks)
        return replace(self, blocks=blocks, crop_blocks=crop_blocks)

    def to_dict(self) -> dict:
        return {"dims": self.dims, "blocks": list(self.blocks), "bank_views": self.bank_views, "seed": self.seed,
                "min_margin": self.min_margin, "discriminative": self.discriminative, "low_weight": self.low_weight,
                "crops": self.crops, "crop_blocks": list(self.crop_blocks), "fit_views": self.fit_views}

    @property
    def stream(self) -> Stream | None:
        """The joint model's second stream: the low-level evidence, when it is weighed in."""
        return None if self.low_weight is None else Stream(LOW_DIMS, LOW_COMPONENTS, float(self.low_weight))

    def rows(self, cls: np.ndarray, low: np.ndarray | None, crops: np.ndarray | None = None) -> np.ndarray:
        """The joint model's evidence rows: the CLS evidence of :attr:`blocks` (with :attr:`crops`, joined
        by the crops' evidence of :attr:`crop_blocks`, :func:`occ.evidence.crop_evidence`, the two scaled to
        unit length together; ``crops`` must then be given), then the low-level evidence when it is weighed
        in (``low`` must then be given)."""
        x = evidence(cls, self.blocks)
        if self.crops:
            if crops is None:
                raise ValueError("the joint model reads native-resolution crops, and none were computed")
            x = np.concatenate([x, crop_evidence(crops, self.crop_blocks)], 1) / np.float32(np.sqrt(2.0))
        if self.low_weight is None:
            return x
        if low is None:
            raise ValueError("the joint model weighs low-level evidence, and none was computed")
        return np.concatenate([x, np.asarray(low, dtype=np.float32)], 1)


class ViewRows(NamedTuple):
    """The evidence of every training view of some images (:func:`view_rows`), row by row."""

    cls: np.ndarray  # (R, L+1, D) float16 CLS tokens of the main view
    low: np.ndarray  # (R, occ.lowlevel.DIMS) float32
    crops: np.ndarray | None  # (R, K, L+1, D) float16 CLS tokens of the native-resolution crops (None: not read)
    ids: np.ndarray  # (R,) int64 index of the image each row is a view of


def view_rows(extractor, paths: Sequence, views: int, seed: int, on_error=None,
              on_progress=None, crops: bool = True) -> ViewRows:
    """The evidence of every training view of the images under ``paths`` (image itself + ``views``
    laundered copies), with the image index of each row; the crops' CLS tokens too with ``crops``.
    Images unreadable in any view are dropped. ``on_progress(done, total)`` counts views made, over all
    images."""
    per_view = []
    transforms = training_views(seed, views)
    total = len(paths) * len(transforms)
    for k, transform in enumerate(transforms):
        feats = extractor.load(paths, (), on_error if transform is None else None, transform,
                               on_progress and (lambda done, k=k: on_progress(k * len(paths) + done, total)),
                               crops=crops)
        t = feats.trunk
        per_view.append({str(im.path): (t.cls_array[i], t.low[i], None if t.crops is None else t.crops[i])
                         for i, im in enumerate(feats.images)})
    keep = [p for p in per_view[0] if all(p in v for v in per_view)]
    rows = [v[p] for v in per_view for p in keep]
    ids = np.asarray([i for _ in per_view for i in range(len(keep))], np.int64)
    bb = extractor.backbone
    shape = (bb.num_layers + 1, bb.hidden_size)
    if not rows:
        return ViewRows(np.zeros((0, *shape), np.float16), np.zeros((0, LOW_DIMS), np.float32),
                        np.zeros((0, CROP_COUNT, *shape), np.float16) if crops else None, ids)
    return ViewRows(np.stack([r[0] for r in rows]).astype(np.float16),
                    np.stack([r[1] for r in rows]).astype(np.float32),
                    np.stack([r[2] for r in rows]).astype(np.float16) if crops else None, ids)


def evidence_tensors(pos: ViewRows, neg: ViewRows | None) -> dict[str, torch.Tensor]:
    """What a source stores for refits (see the module docstring), from :func:`view_rows` of its
    images and of its negatives (both read with their crops)."""
    import torch

    if neg is None:
        neg = ViewRows(np.zeros((0, *pos.cls.shape[1:]), np.float16), np.zeros((0, LOW_DIMS), np.float32),
                       np.zeros((0, *pos.crops.shape[1:]), np.float16), np.zeros(0, np.int64))
    arrays = {"cls": np.ascontiguousarray(pos.cls, np.float16), "ids": np.ascontiguousarray(pos.ids, np.int64),
              "neg_cls": np.ascontiguousarray(neg.cls, np.float16), "neg_ids": np.ascontiguousarray(neg.ids, np.int64),
              "low": np.ascontiguousarray(pos.low, np.float32), "neg_low": np.ascontiguousarray(neg.low, np.float32),
              "crops": np.ascontiguousarray(pos.crops, np.float16),
              "neg_crops": np.ascontiguousarray(neg.crops, np.float16)}
    return {EVIDENCE_PREFIX + k: torch.from_numpy(a) for k, a in arrays.items()}


def _joint_sources(registry, backbone: Backbone, on_skip=None):
    """(name -> (version, tensors, meta)) of the usable ``lda`` sources made on ``backbone`` (tensors as
    numpy arrays: the joint model needs no torch)."""
    out = {}
    for name in registry.names():
        try:
            try:
                record, tensors = registry.load_record(name, framework="numpy")  # one read of the source
            except OccError:
                meta = registry.info(name).meta  # an unusable source matters here only if it is one of them
                if decided_jointly(meta) and enrolled_on(meta) == backbone.fingerprint:
                    raise
                continue
            meta = record.meta
            if not decided_jointly(meta) or enrolled_on(meta) != backbone.fingerprint:
                continue
            if not all(k in tensors for k in EVIDENCE_KEYS):
                raise RegistryError(f"source '{name}' stores no training evidence: re-enroll it")
            if not all(k in tensors for k in LOW_EVIDENCE_KEYS):
                raise RegistryError(f"source '{name}' stores no low-level evidence (enrolled by an older occ): "
                                    "re-enroll it")
            out[name] = (record.path.name, tensors, meta)
        except OccError as exc:
            if on_skip is None:
                raise
            on_skip(name, exc)
    return out


def _without_crops(sources: dict) -> list[str]:
    """The sources (of :func:`_joint_sources`) that store no native-resolution crops' evidence: enrolled
    by an older occ."""
    return sorted(n for n, (_, tensors, _) in sources.items() if not all(k in tensors for k in CROP_EVIDENCE_KEYS))


def _settled(settings: JointSettings, sources: dict) -> JointSettings:
    """``settings`` as they can be applied to ``sources``: without the crops when a source lacks them."""
    return replace(settings, crops=False) if settings.crops and _without_crops(sources) else settings


def _rows(sources: dict, backbone: Backbone, extractor, settings: JointSettings,
          progress: Progress | None) -> tuple[dict[str, ClassRows], ClassRows]:
    """(rows of each source, rows of the non-target class) that the joint model of ``sources`` is fitted
    on, with ``settings`` (as :func:`_settled` leaves them)."""
    neg_x, neg_ids, offset = [], [], 0
    # the bank is in the non-target class unless every source was enrolled without it
    if any(BANK_KEY in (meta.get("negatives") or {}) for _, _, meta in sources.values()):
        if progress:
            progress("default negatives", 0, 1)
        key = (backbone.fingerprint, settings.bank_views, settings.crops, tuple(map(str, bank_paths())))
        if key not in _BANK_ROWS:  # the same for every refit in a process (a service refits often)
            _BANK_ROWS.clear()
            _BANK_ROWS[key] = view_rows(extractor, bank_paths(), settings.bank_views, BANK_SEED, crops=settings.crops)
        bank = _BANK_ROWS[key]
        neg_x, neg_ids, offset = [settings.rows(bank.cls, bank.low, bank.crops)], [bank.ids], int(bank.ids.max()) + 1
    classes = {}
    for name, (_, tensors, _meta) in sorted(sources.items()):
        cls, ids, n_cls, n_ids = (np.asarray(tensors[k]) for k in EVIDENCE_KEYS)
        low, n_low = (np.asarray(tensors[k]) for k in LOW_EVIDENCE_KEYS)
        crops, n_crops = (np.asarray(tensors[k]) if settings.crops else None for k in CROP_EVIDENCE_KEYS)
        classes[name] = ClassRows(settings.rows(cls, low, crops), ids)
        if len(n_ids):
            neg_x.append(settings.rows(n_cls, n_low, n_crops))
            neg_ids.append(n_ids + offset)
            offset += int(n_ids.max()) + 1
    if not neg_x:
        raise UsageError("the joint model has no non-target images: every lda source was enrolled without "
                         "the default bank and without --negatives")
    return classes, ClassRows(np.concatenate(neg_x), np.concatenate(neg_ids))


def training_rows(registry, backbone: Backbone, *, extractor=None,
                  settings: JointSettings | None = None) -> tuple[dict[str, ClassRows], ClassRows]:
    """The rows :func:`refit` fits the registry's joint model on (each source's, the non-target class's),
    for studies of the decision (``bench/openset_rules.py``)."""
    from occ.features import FeatureExtractor  # PIL, as in refit: the stored model's readers need numpy alone

    settings = (settings or JointSettings()).resolved(backbone)
    sources = _joint_sources(registry, backbone)
    return _rows(sources, backbone, extractor or FeatureExtractor(backbone), _settled(settings, sources), None)


def _fit(sources: dict, backbone: Backbone, extractor, settings: JointSettings,
         progress: Progress | None) -> JointModel:
    """The joint model of ``sources`` with ``settings`` (as :func:`_settled` leaves them)."""
    classes, nontarget = _rows(sources, backbone, extractor, settings, progress)
    if progress:
        progress("joint model", 0, 1)
    far = {n: m["calibration"]["far"] for n, (_, _, m) in sources.items()}
    tpr = {n: m["calibration"]["target_tpr"] for n, (_, _, m) in sources.items()}
    try:
        model = JointModel(settings.dims, seed=settings.seed, min_margin=settings.min_margin,
                           discriminative=settings.discriminative, stream=settings.stream,
                           scale_from=joint.LARGE_SOURCES, fit_views=settings.fit_views)
        model.fit(classes, nontarget, far=far, target_tpr=tpr)
    except ValueError as exc:
        raise RegistryError(f"cannot fit the joint model of the registry: {first_line(exc)}") from None
    model.settings_ = settings
    if progress:
        progress("joint model", 1, 1)
    return model


def _manifest(sources: dict, backbone: Backbone, settings: JointSettings) -> dict:
    return {"format": JOINT_FORMAT, "backbone": backbone.fingerprint, "settings": settings.to_dict(),
            "sources": {n: v for n, (v, _, _) in sorted(sources.items())}, "without_crops": _without_crops(sources)}


def _tagged(model: JointModel, manifest: dict, settings: JointSettings) -> JointModel:
    """``model`` with what it was fitted on: ``settings_``, ``manifest_`` and ``version_`` (a digest of the
    manifest: the same sources' versions and settings give the same model, stored or fitted in memory)."""
    model.settings_, model.manifest_ = settings, manifest
    model.version_ = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    model.without_crops_ = list(manifest["without_crops"])  # sources to re-enroll for the crops' evidence
    return model


def refit(registry, backbone: Backbone, *, extractor=None, settings: JointSettings | None = None,
          progress: Progress | None = None, on_skip=None) -> JointModel | None:
    """Fit the joint model over every readable ``lda`` source of ``registry`` made on ``backbone`` and store
    it; a source that cannot be read is passed to ``on_skip`` and left out. With no such source, a stored
    model is removed. Returns the model (None when there is no source). The model is not stored when a
    source changed while it was fitted (that change's own refit stores the model of the sources then)."""
    from occ.features import FeatureExtractor  # PIL: `occ sources` and the stored model's readers need numpy alone

    settings = (settings or JointSettings()).resolved(backbone)
    before = registry.versions()  # what the model is fitted on, checked again under the registry's lock
    sources = _joint_sources(registry, backbone, on_skip=on_skip or (lambda _name, _exc: None))
    if not sources:
        registry.write_joint(registry.joint_path(backbone.fingerprint).name, None, versions=before)
        return None
    settings = _settled(settings, sources)
    model = _fit(sources, backbone, extractor or FeatureExtractor(backbone), settings, progress)
    manifest = _manifest(sources, backbone, settings)
    _write(registry, _tagged(model, manifest, settings), manifest, before)
    return model


def discard(registry, fingerprint: str | None = None) -> None:
    """Remove the stored joint model of backbone ``fingerprint`` (all of them when None): when no lda
    source of that backbone is left."""
    if fingerprint:
        paths = [registry.joint_path(fingerprint)]
    else:
        paths = registry.joint_files()
    for path in paths:
        if os.path.lexists(path):
            registry.write_joint(path.name, None)


def _write(registry, model: JointModel, manifest: dict, versions: dict) -> bool:
    """Store ``model`` with the ``manifest`` of what it was fitted on, atomically and under the registry's
    lock, unless the registry's sources are no longer at ``versions`` (see :meth:`Registry.write_joint`)."""
    from safetensors.numpy import save as st_save

    tensors, meta = model.to_saved()
    meta["manifest"] = manifest
    data = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                   metadata={"occ": json.dumps(meta, allow_nan=False)})
    _fault_point("joint-write")
    return registry.write_joint(registry.joint_path(manifest["backbone"]).name, data, versions=versions)


def _stored(registry, fingerprint: str) -> tuple[JointModel, dict] | None:
    from safetensors import safe_open

    path = registry.joint_path(fingerprint)
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["occ"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        model = JointModel.from_saved(tensors, meta)
        manifest = meta["manifest"]
        if "crops" not in manifest["settings"]:  # stored by an occ without the crops: so were its sources
            manifest["settings"]["crops"] = False
            manifest["without_crops"] = sorted(manifest["sources"])
        if "crop_blocks" not in manifest["settings"]:  # stored when the crops read the main view's blocks
            manifest["settings"]["crop_blocks"] = list(manifest["settings"]["blocks"])
        manifest["settings"].setdefault("fit_views", True)  # stored when every view was fitted on
        return _tagged(model, manifest, JointSettings(**manifest["settings"])), manifest
    except Exception:  # damaged or from another version: it is derived data, refitted on demand
        return None


def joint_for(registry, backbone: Backbone, *, extractor=None, settings: JointSettings | None = None, on_skip=None,
              progress: Progress | None = None) -> tuple[JointModel | None, bool]:
    """The joint model over the registry's usable ``lda`` sources: the stored one when it was fitted on
    exactly these source versions, else one fitted now in memory. Returns (model, stale):
    ``stale`` is True when the stored model did not match (``occ refit`` stores a fresh one)."""
    from occ.features import FeatureExtractor  # PIL: `occ sources` and the stored model's readers need numpy alone

    skipped = []

    def skip(name, exc):
        skipped.append(name)
        if on_skip is not None:
            on_skip(name, exc)

    sources = _joint_sources(registry, backbone, on_skip=skip)
    if not sources:
        return None, False
    stored = _stored(registry, backbone.fingerprint)
    settings = (settings or (JointSettings(**stored[1]["settings"]) if stored else JointSettings()))
    settings = _settled(settings.resolved(backbone), sources)
    manifest = _manifest(sources, backbone, settings)
    if stored and stored[1] == manifest:
        return _tagged(stored[0], manifest, settings), False
    model = _tagged(_fit(sources, backbone, extractor or FeatureExtractor(backbone), settings, progress), manifest,
                    settings)
    # stale: the stored model was fitted on other versions than the readable sources have (sources that
    # cannot be read are reported as such, and explain a difference by themselves), or it is there but
    # cannot be read (damaged, or written in an older format)
    if stored is None:
        return model, os.path.isfile(registry.joint_path(backbone.fingerprint))
    stale = {n: v for n, v in stored[1]["sources"].items() if n not in skipped} != manifest["sources"]
    return model, stale


def rethreshold(registry, name: str, far: float | None, target_tpr: float | None, old_version: str) -> bool:
    """After ``name``'s threshold rules changed (its verifier saved anew, previously at ``old_version``):
    re-choose its threshold in the stored joint model from that model's held-out scores, and record the
    source's new version, without refitting (no backbone needed). Returns False when there is no stored
    model that matched the registry before the change (:func:`sync` then refits)."""
    before = registry.versions()
    stored = _stored(registry, enrolled_on(registry.info(name).meta) or "")
    if stored is None or stored[1]["sources"].get(name) != old_version:
        return False
    model, manifest = stored
    model.set_threshold(name, far, target_tpr)
    manifest["sources"][name] = registry.info(name).path.name
    return _write(registry, model, manifest, before)


def _fault_point(step: str) -> None:
    """Marks a step of a write; a no-op that crash tests replace to stop a writer there."""


# -- keeping the stored models in line with the registry ---------------------------------------------


@dataclass
class RefitOptions:
    """How :func:`sync` refits: ``backbone`` (with its ``extractor``) is used for the sources enrolled on
    it, other backbones are loaded from the spec their sources recorded with ``load`` (default
    :func:`occ.backbones.load_backbone`); ``progress`` and ``on_skip`` as for :func:`refit`;
    ``on_fit(model, seconds)`` is told of every model fitted."""

    backbone: Backbone | None = None
    extractor: object = None
    progress: Progress | None = None
    on_skip: Callable[[str, OccError], None] | None = None
    on_fit: Callable[[JointModel, float], None] | None = None
    load: Callable[[str | None], Backbone] | None = None


def _groups(registry) -> dict[str, dict]:
    """The registry's readable ``lda`` sources by the backbone fingerprint they were enrolled on:
    ``{fingerprint: {"sources": {name: version}, "spec": backbone spec}}``, read from their
    ``verifier.json`` alone (no tensors, no backbone)."""
    out: dict[str, dict] = {}
    for name in registry.names():
        try:
            record = registry.info(name)
        except OccError:
            continue  # unusable: left out of every model (and said where it is used)
        fingerprint = enrolled_on(record.meta)
        if decided_jointly(record.meta) and fingerprint:
            group = out.setdefault(fingerprint, {"sources": {}, "spec": None})
            group["sources"][name] = record.path.name
            group["spec"] = group["spec"] or (record.meta.get("backbone") or {}).get("spec")
    return out


def _stored_manifest(path) -> dict | None:
    """The manifest of the stored joint model at ``path``, read from its header alone (None: unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            manifest = json.loads(f.metadata()["occ"])["manifest"]
        return manifest if isinstance(manifest, dict) else None
    except Exception:  # missing, damaged or from another version
        return None


def _stored_backbones(registry) -> dict[str, str | None]:
    """The stored joint model files, by name: the backbone each was fitted for (None: unreadable)."""
    return {path.name: (_stored_manifest(path) or {}).get("backbone")
            for path in registry.joint_files()}


def _matches(registry, fingerprint: str, group: dict | None) -> bool:
    """Whether the stored joint model of ``fingerprint`` was fitted on exactly the sources of ``group``."""
    manifest = _stored_manifest(registry.joint_path(fingerprint))
    return manifest is not None and group is not None and manifest.get("sources") == group["sources"]


def fresh_stored(registry, fingerprint: str, group: dict | None = None) -> JointModel | None:
    """The stored joint model of backbone ``fingerprint`` when it was fitted on exactly the registry's
    current ``lda`` sources of that backbone (versions read from their ``verifier.json``; no backbone
    needed), else None."""
    group = group if group is not None else _groups(registry).get(fingerprint)
    if not _matches(registry, fingerprint, group):
        return None
    stored = _stored(registry, fingerprint)
    return None if stored is None or stored[1]["sources"] != group["sources"] else stored[0]


def sync(registry, fingerprints: Iterable[str] | None = None, options: RefitOptions | None = None, *,
         force: bool = False) -> list[JointModel]:
    """Bring the stored joint model of each backbone in ``fingerprints`` (None: every backbone that lda
    sources or stored models name) in line with the registry: refitted when it does not match the lda
    sources of that backbone (always, with ``force``), removed when none is left. Returns the models
    fitted. The one place that decides when the joint model is refitted (see :func:`after_change`)."""
    options = options or RefitOptions()
    groups = _groups(registry)
    stored = _stored_backbones(registry)
    if fingerprints is None:
        for filename, backbone in stored.items():  # models of backbones no lda source is left on
            if backbone not in groups:
                registry.write_joint(filename, None)
        targets = sorted(groups)
    else:
        targets = sorted(set(fingerprints))
    fitted = []
    for fingerprint in targets:
        group = groups.get(fingerprint)
        if group is None:
            discard(registry, fingerprint)
            continue
        if not force and _matches(registry, fingerprint, group):
            continue
        backbone, extractor = options.backbone, options.extractor
        if backbone is None or backbone.fingerprint != fingerprint:
            if options.load is not None:
                backbone = options.load(group["spec"])
            else:
                backbone = load_backbone(group["spec"])
            extractor = None
        if backbone.fingerprint != fingerprint:
            for name in group["sources"]:  # the backbone they name now loads other weights
                if options.on_skip is not None:
                    options.on_skip(name, RegistryError(
                        f"source '{name}' was enrolled on backbone {fingerprint}; {group['spec']} now loads "
                        f"{backbone.fingerprint}: re-enroll it"))
            continue
        start = time.perf_counter()
        model = refit(registry, backbone, extractor=extractor, progress=options.progress, on_skip=options.on_skip)
        if model is not None:
            fitted.append(model)
            if options.on_fit is not None:
                options.on_fit(model, time.perf_counter() - start)
    return fitted


def after_change(registry, metas: Sequence[dict] | None, options: RefitOptions | None = None) -> list[JointModel]:
    """What :class:`occ.registry.Registry` calls after every change it commits: ``metas`` are the
    ``verifier.json`` of the source before and after the change (None where unknown: every backbone is
    checked); the joint model of each backbone an ``lda`` one was enrolled on is brought in line
    (:func:`sync`)."""
    if metas is None:
        return sync(registry, None, options)
    fingerprints = {enrolled_on(m) for m in metas if m is not None and decided_jointly(m)} - {None}
    return sync(registry, fingerprints, options) if fingerprints else []

