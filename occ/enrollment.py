"""Enrollment: from a few images of one source to a calibrated verifier stored in the registry.

Non-target images are (a) the default bank of real photos that ships with occ
(:mod:`occ.negatives`), (b) the training images of every other enrolled source made on the same
backbone, found in the feature cache by their recorded sha256 (images no longer in the cache are
skipped and counted), and (c) any folders the user adds with ``negatives``.

``lda`` sources (the default kind) do not use (b) in their own fit: they store the evidence of their
training views instead, and after every enrollment the registry refits its joint model over all of them
(:func:`occ.openset.after_change`), so every source is a non-target for every other whatever the order.
A quality gate comes before anything is fitted or stored: fewer than :data:`MIN_SHOTS` distinct readable
target images are refused unless ``force`` (never fewer than :data:`MIN_FORCED`), and training images
already enrolled under another name (same sha256 of the file's bytes) are refused unless
``allow_overlap``, since such an image would be a target of one source and a non-target of the other,
and would move the other source's threshold. A source stored whose held-out TPR is below
:data:`occ.decisions.WEAK_TPR` is flagged weak (``EnrollResult.weak``).
"""

from __future__ import annotations

import datetime as _dt
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from occ import __version__
from occ.backbones.base import Backbone, Trunk
from occ.decisions import for_source
from occ.errors import ImageError, OccError, UsageError
from occ.features import FeatureExtractor, Features
from occ.images import iter_paths
from occ.negatives import bank_paths
from occ.openset import BANK_KEY, RefitOptions, enrolled_on, evidence_tensors, view_rows
from occ.registry import Registry, SourceRecord
from occ.verifier import Verifier

Progress = Callable[[str, int, int], None]
MIN_SHOTS = 5  # fewer distinct readable target images than this: refused unless force (then warned)
MIN_FORCED = 2  # the least any verifier is fitted from, even with force: cross-validation needs two folds
MIN_HELDOUT = 10  # held-out figures resting on fewer target images are flagged as rough


@dataclass
class EnrollResult:
    record: SourceRecord
    verifier: Verifier
    n_target: int
    negatives: dict[str, int]
    errors: list[ImageError] = field(default_factory=list)
    seconds: float = 0.0
    overlaps: dict[str, int] = field(default_factory=dict)  # other source -> training images shared with it
    weak: bool = False  # held-out TPR below occ.decisions.WEAK_TPR at the threshold that decides it


def _dedupe(features: Features, exclude: set[str] = frozenset()) -> Features:
    seen, keep = set(exclude), []
    for i, im in enumerate(features.images):
        if im.sha256 not in seen:
            seen.add(im.sha256)
            keep.append(i)
    return Features([features.images[i] for i in keep], features.trunk.select(keep))


def registry_negatives(registry: Registry, extractor: FeatureExtractor, backbone: Backbone, exclude: str,
                       blocks: Sequence[int]) -> tuple[list[Trunk], dict[str, int], int]:
    """Trunk features of other sources' training images that are still in the feature cache."""
    trunks, used, missing = [], {}, 0
    for name in registry.names():
        if name == exclude:
            continue
        try:
            meta = registry.info(name).meta
        except OccError:
            continue  # a damaged source is reported by `occ sources`, not here
        if enrolled_on(meta) != backbone.fingerprint:
            continue
        count = 0
        for sha in meta.get("training_images", []):
            trunk = extractor.cached(sha, blocks)
            if trunk is None:
                missing += 1
            else:
                trunks.append(trunk)
                count += 1
        if count:
            used[name] = count
    return trunks, used, missing


def enroll(
    registry: Registry,
    name: str,
    paths: Sequence,
    *,
    backbone: Backbone,
    verifier: Verifier | None = None,
    negatives: Sequence = (),
    use_bank: bool = True,
    use_registry: bool = True,
    replace: bool = False,
    extractor: FeatureExtractor | None = None,
    backbone_spec: str | None = None,
    on_error: Callable[[ImageError], None] | None = None,
    progress: Progress | None = None,
    force: bool = False,
    allow_overlap: bool = False,
) -> EnrollResult:
    """Learn a verifier for source ``name`` from the images under ``paths`` and store it.

    UsageError, before anything is fitted or written, when fewer than :data:`MIN_SHOTS` distinct target
    images are readable (``force``: down to :data:`MIN_FORCED`), or when some of them are training images
    of another enrolled source (unless ``allow_overlap``)."""
    start = time.perf_counter()
    registry.check_new(name, replace=replace)
    verifier = verifier or Verifier()
    extractor = extractor or FeatureExtractor(backbone)
    blocks = verifier.kv_blocks(backbone)
    errors: list[ImageError] = []

    def bad(exc: ImageError) -> None:
        errors.append(exc)
        if on_error:
            on_error(exc)

    targets = []
    for item in iter_paths(paths):
        if isinstance(item, ImageError):
            bad(item)
        else:
            targets.append(item)
    if progress:
        progress("target images", 0, len(targets))
    pos = _dedupe(extractor.load(targets, blocks, bad, on_progress=progress and (
        lambda done: progress("target images", done, len(targets)))))
    check_count(name, len(pos), force)
    pos_shas = {im.sha256 for im in pos.images}
    overlaps = check_overlaps(registry, name, pos_shas, allow_overlap)
    stores_evidence = verifier.config.head_class.stores_evidence
    if stores_evidence:
        use_registry = False  # other sources compete in the joint model, whatever the order

    neg_parts: list[Features] = []
    counts: dict[str, int] = {}
    if use_bank:
        if progress:
            progress("default negatives", 0, 1)
        bank = _dedupe(extractor.load(bank_paths(), blocks), pos_shas)
        neg_parts.append(bank)
        counts[BANK_KEY] = len(bank)
    if negatives:
        user = _dedupe(extractor.load(negatives, blocks, bad), pos_shas)
        neg_parts.append(user)
        counts["--negatives"] = len(user)
    neg_trunk_parts = [p.trunk for p in neg_parts]
    if use_registry:
        trunks, used, missing = registry_negatives(registry, extractor, backbone, name, blocks)
        neg_trunk_parts += trunks
        counts.update({f"source {k}": v for k, v in used.items()})
        if missing:
            counts["other sources' images not in the feature cache (skipped)"] = missing
    neg_count = sum(len(t) for t in neg_trunk_parts)
    if neg_count < 2:
        raise UsageError(f"need non-target images to enroll '{name}': the default bank is off and "
                         "no --negatives were readable")
    neg = Trunk.concat([t for t in neg_trunk_parts if len(t)])
    neg_pixels = None
    if verifier.settings.adversarial == "pixel":
        refs = [im for p in neg_parts for im in p.images]
        if len(refs) != len(neg):  # pixel ADA needs pixels: negatives known only from the cache are left out
            neg = neg.select(list(range(len(refs))))
        neg_pixels = extractor.pixels(refs)

    verifier.fit(backbone, pos.trunk, neg, neg_pixels=neg_pixels, progress=progress)
    if stores_evidence:
        seed, views = verifier.settings.seed, verifier.config.views
        shots = [im.path for im in pos.images]
        verifier.evidence_ = evidence_tensors(
            view_rows(extractor, shots, views, seed, on_progress=progress and (
                lambda done, total: progress("training views", done, total))),
            view_rows(extractor, [im.path for im in user.images], views, seed) if negatives else None)
    verifier.provenance = {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "occ_version": __version__,
        "backbone": {"spec": backbone_spec, "model_id": backbone.model_id, "engine": backbone.engine},
        "training_images": [im.sha256 for im in pos.images],
        "negatives": counts,
    }
    with tempfile.TemporaryDirectory(prefix="occ-verifier-") as folder:  # (the joint model is refitted then)
        record = registry.store(name, verifier.save(folder), replace=replace,
                                refit=RefitOptions(backbone, extractor, progress))
    # What was stored, read back: the summary a caller shows describes this, not the request.
    stored = Verifier.from_saved(backbone, *registry.load(name), name)
    weak = bool(for_source(registry, name).weak)
    return EnrollResult(record, stored, len(pos), counts, errors, time.perf_counter() - start, overlaps, weak)


def check_count(name: str, n: int, force: bool = False) -> None:
    """UsageError when ``n`` distinct readable target images are too few to enroll source ``name``."""
    if n >= MIN_SHOTS or (force and n >= MIN_FORCED):
        return
    if n < MIN_FORCED:
        raise UsageError(f"cannot enroll '{name}' from {n} distinct readable target image(s): the minimum is "
                         f"{MIN_SHOTS} ({MIN_FORCED} with --force)")
    raise UsageError(f"cannot enroll '{name}' from {n} distinct readable target images: the minimum is {MIN_SHOTS} "
                     "(below it a verifier is unreliable); add images, or pass --force to enroll it anyway")


def check_overlaps(registry: Registry, name: str, shas: set[str], allow: bool, verb: str = "enroll"
                   ) -> dict[str, int]:
    """:func:`training_overlaps` of source ``name``'s training images ``shas``; UsageError when there are
    any and not ``allow`` (what ``occ enroll`` and ``occ import`` refuse without --allow-overlap)."""
    overlaps = training_overlaps(registry, name, shas)
    if overlaps and not allow:
        (first, n), *more = overlaps.items()
        shared = "".join([f"{n} of its training images are already training images of source '{first}'",
                          *(f", {k} of source '{other}'" for other, k in more)])
        remedy = ("leave them out, or pass --allow-overlap" if verb == "enroll"
                  else f"pass --allow-overlap to {verb} it anyway")
        raise UsageError(f"cannot {verb} '{name}': {shared} (same file contents), and would be a target of one "
                         f"source and a non-target of the other; {remedy}")
    return overlaps


def training_overlaps(registry: Registry, name: str, shas: set[str]) -> dict[str, int]:
    """Other sources whose recorded training images include some of ``shas`` (content hashes), with how
    many: the same image enrolled under two names would be a positive and a non-target at once."""
    out = {}
    for other in registry.names():
        if other == name:
            continue
        try:
            theirs = set(registry.info(other).meta.get("training_images", []))
        except OccError:
            continue
        if shared := len(theirs & shas):
            out[other] = shared
    return out

