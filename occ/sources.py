"""Enrolled sources as the commands see them: which backbone they need, what is stored about each one
(with what decides it, :mod:`occ.decisions`), threshold changes and exports. The store
(:mod:`occ.registry`) keeps the files; this module reads the keys of a source's ``verifier.json`` that
enrollment wrote (:mod:`occ.enrollment`), so the CLI holds no such logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from occ.backbones import default_spec
from occ.decisions import for_source
from occ.errors import OccError, RegistryError, UsageError
from occ.openset import after_change, rethreshold

# Fields of verifier.json that `sources show` leaves out: the store's own, and the bulky lists it
# summarises (the held-out scores inside the calibration, the training images' hashes under their own key).
_NOT_SHOWN = ("calibration", "training_images", "checksum", "files")


def require_enrolled(registry) -> None:
    """UsageError when ``registry`` has no source (checked before a backbone is loaded, perhaps fetched)."""
    if len(registry) == 0:
        raise UsageError(f"registry {registry.root} is empty: enroll a source first with `occ enroll`")


def enroll_backbone_spec(spec: str | None) -> str:
    """The backbone spec to record for a new source: the one given (else ``OCC_BACKBONE``, else the
    embedded one), a local folder as an absolute path so that verify/attribute find it from any folder."""
    spec = spec or default_spec()
    if Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())
    return spec


def sources_backbone_spec(registry, names: Sequence[str] | None = None) -> str | None:
    """The backbone the sources ``names`` (default: all) were enrolled on, None if none records one.

    UsageError when they were enrolled on different backbones; RegistryError when no source can be read
    at all (then none says which backbone it needs, and loading the default one would be for nothing).
    """
    specs, problems = set(), []
    names = registry.names() if names is None else list(names)
    for name in names:
        try:
            specs.add((registry.info(name).meta.get("backbone") or {}).get("spec"))
        except OccError as exc:
            problems.append(exc)
    specs.discard(None)
    if len(specs) > 1:
        raise UsageError(f"sources were enrolled on different backbones ({', '.join(sorted(specs))}); "
                         "choose one with --backbone")
    if names and len(problems) == len(names):
        more = f" ({len(problems) - 1} more source(s) cannot be read either)" if len(problems) > 1 else ""
        raise RegistryError(f"{problems[0]}{more}")
    return specs.pop() if specs else None


def listing(record, meta: dict) -> dict:
    """One row of ``occ sources``: what decides the source (its :class:`occ.decisions.DecisionRecord`:
    threshold, held-out rates, whether it is weak, radius, the model), images, backbone, creation time."""
    out = {k: v for k, v in record.to_dict().items() if k != "name"}
    out.update(images=meta.get("n_target", "?"), backbone=(meta.get("backbone") or {}).get("spec") or "?",
               created=meta.get("created", "?"))
    return out


def details(record, meta: dict) -> dict:
    """Everything stored about one source (``occ sources show``), with what decides it (``"decision"``: its
    :class:`occ.decisions.DecisionRecord`, and the held-out figures of that calibration) in place of the
    calibration of its own fit, which decides an lda source nothing."""
    summary = {k: v for k, v in meta.items() if k not in _NOT_SHOWN}
    summary["decision"] = record.to_dict()
    cal = record.calibration
    if cal is not None:
        summary["decision"].update(heldout_auc=round(cal.auc, 6), heldout_target=len(cal.pos_scores),
                                   heldout_nontarget=len(cal.neg_scores))
    summary["training_images_sha256"] = meta.get("training_images", [])
    return summary


def export(registry, name: str, dest, *, replace: bool = False):
    """Export source ``name`` (:meth:`occ.registry.Registry.export`), the archive recording what decides it
    in this registry; returns (path, its :class:`occ.decisions.DecisionRecord`)."""
    record = for_source(registry, name)
    return registry.export(name, dest, replace=replace, decision=record.to_dict()), record


def set_threshold(registry, name: str, far: float | None = None, target_tpr: float | None = None, *,
                  refit=None):
    """Re-choose source ``name``'s threshold from its stored held-out scores (no retraining): through
    :meth:`occ.verifier.Verifier.set_threshold`, stored back with everything else unchanged, and for an
    ``lda`` source in the joint model that decides it: re-chosen in the stored model from its held-out
    scores (:func:`occ.openset.rethreshold`, no backbone needed), or, when the stored model did not match
    the registry, refitted (:func:`occ.openset.sync`, with ``refit``: :class:`occ.openset.RefitOptions`).
    Returns what decides the source now, read back (:class:`occ.decisions.DecisionRecord`)."""
    from occ.verifier import Verifier  # torch: `occ sources` (the listing) must not import it

    if far is None and target_tpr is None:
        raise UsageError("give --far and/or --tpr")
    version = registry.info(name).path.name
    verifier = Verifier.from_saved(None, *registry.load(name), name)
    verifier.set_threshold(far, target_tpr)
    record = registry.save(name, *verifier.to_saved(), replace=True, refit=False)  # the joint model: below
    if verifier.config.head_class.stores_evidence:
        rethreshold(registry, name, far, target_tpr, version)
    after_change(registry, [record.meta], refit)  # nothing to do when the stored model now matches
    return for_source(registry, name)
