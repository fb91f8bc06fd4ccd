"""Running an evaluation: the label folders, each condition through the trunk and every verifier."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from occ.attribution import Attributor
from occ.errors import ImageError, OccError, UsageError
from occ.evaluation.report import (
    BOOTSTRAP_N,
    CLEAN,
    MIN_NEGATIVES,
    MIN_POSITIVES,
    REPORT_FORMAT,
    REPORT_VERSION,
    UNKNOWN,
    Progress,
    condition,
    warnings,
)
from occ.features import FeatureExtractor
from occ.images import iter_paths
from occ.paths import display_path
from occ.perturb import Perturbation, parse_perturb_spec
from occ.registry import Registry

# -- inputs ----------------------------------------------------------------------------------------


def label_folders(root: str | os.PathLike) -> list[tuple[str, Path]]:
    """The label subfolders of ``root`` as ``(label, path)``, sorted by name; hidden ones are skipped.

    Raises :class:`UsageError` when ``root`` is not a folder or has no subfolders."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{display_path(root)}: not a folder (ROOT must hold one subfolder per label)")
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise UsageError(f"{display_path(root)}: cannot list folder ({exc.strerror or exc})") from None
    folders = [(p.name, p) for p in entries if not p.name.startswith(".") and p.is_dir()]
    if not folders:
        raise UsageError(f"{display_path(root)} has no subfolders: put each label's images in its own subfolder, "
                         "named like an enrolled source for its images, any other name (e.g. real) for images "
                         "that must be rejected")
    return folders


def _perturbations(perturbations) -> list[Perturbation]:
    if isinstance(perturbations, str):
        return parse_perturb_spec(perturbations)
    out = list(perturbations or ())
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise UsageError(f"the same perturbation is listed twice ({', '.join(labels)})")
    return out


# -- the evaluation ----------------------------------------------------------------------------------


def evaluate(
    registry,
    backbone,
    root: str | os.PathLike,
    perturbations: Sequence[Perturbation] | str = (),
    *,
    names: Sequence[str] | None = None,
    extractor=None,
    on_error: Callable[[ImageError], None] | None = None,
    on_skip: Callable[[str, OccError], None] | None = None,
    progress: Progress | None = None,
    bootstrap_n: int = BOOTSTRAP_N,
    seed: int = 0,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
    keep_scores: bool = False,
) -> dict:
    """Evaluate the sources of ``registry`` (a :class:`occ.registry.Registry` or its folder) on the
    labelled images under ``root``, clean and under each of ``perturbations`` (Perturbation objects or a
    ``--perturb`` spec string), and return the report.

    ``names`` restricts the evaluation to some sources. A bad image file is passed to ``on_error`` once
    (whatever the number of conditions), listed in ``report["failures"]`` and left out. A source that
    cannot be loaded is passed to ``on_skip`` and left out (its folder too); with ``on_skip`` None it
    raises. ``progress(condition, done, total)`` follows each condition. ``keep_scores`` adds each
    condition's per-image scores and decisions under ``"images"`` (see :func:`public`).

    Raises :class:`UsageError` for an empty registry, a ``root`` without subfolders, or subfolders
    without a single candidate image file.
    """
    start = time.perf_counter()
    conditions: list[Perturbation | None] = [None, *_perturbations(perturbations)]
    folders = label_folders(root)
    if not isinstance(registry, Registry):
        registry = Registry(registry)
    skipped: dict[str, str] = {}

    def skip(name: str, exc: OccError) -> None:
        skipped[name] = " ".join(str(exc).split())
        if on_skip is None:
            raise exc
        on_skip(name, exc)

    attributor = Attributor.from_registry(registry, backbone, names, on_skip=skip,
                                          extractor=extractor or FeatureExtractor(backbone))
    sources = list(attributor.verifiers)
    unknown = UNKNOWN if UNKNOWN not in sources else f"<{UNKNOWN}>"

    failures: dict[str, str] = {}

    def fail(exc: ImageError) -> None:
        if exc.path not in failures:
            failures[exc.path] = exc.reason
            if on_error:
                on_error(exc)

    # Walk every label folder once; the same file list serves every condition.
    files: dict[str, list[Path]] = {}
    labels_info = []
    for label, path in folders:
        if label in skipped:
            labels_info.append({"name": label, "kind": "excluded", "n_files": 0, "n_images": 0})
            continue
        found = []
        for item in iter_paths([path]):
            if isinstance(item, ImageError):
                fail(item)
            else:
                found.append(item)
        files[label] = found
        labels_info.append({"name": label, "kind": "source" if label in sources else "unknown",
                            "n_files": len(found), "n_images": 0})
    total = sum(len(v) for v in files.values())
    if total == 0:
        raise UsageError(f"no image files in the subfolders of {display_path(root)} "
                         f"({', '.join(label for label, _ in folders)})")
    loose = _loose_files(Path(root))

    reports = []
    n_images: dict[str, int] = {}
    for perturbation in conditions:
        name = CLEAN if perturbation is None else perturbation.label
        labels, paths, scores, raw, accepted, decided = [], [], [], [], [], []
        n_bad = 0

        def bad(exc: ImageError) -> None:
            nonlocal n_bad
            n_bad += 1
            fail(exc)

        if progress:
            progress(name, 0, total)
        for label, found in files.items():
            for batch in attributor.extractor.stream(found, attributor.blocks, bad, transform=perturbation,
                                                      crops=attributor.crops):
                for d in attributor.decide(batch.trunk, [im.path for im in batch.images]):
                    labels.append(label)
                    paths.append(d.path)
                    scores.append([d.scores[s] for s in sources])
                    raw.append([d.raw[s] for s in sources])
                    accepted.append([s in d.accepted for s in sources])
                    decided.append(d.source if d.source is not None else unknown)
                if progress:
                    progress(name, min(total, len(labels) + n_bad), total)
        if progress:
            progress(name, total, total)
        n = len(labels)
        result = condition(name, perturbation, sources, attributor, unknown, labels,
                            np.asarray(scores, dtype=np.float64).reshape(n, len(sources)),
                            np.asarray(raw, dtype=np.float64).reshape(n, len(sources)),
                            np.asarray(accepted, dtype=bool).reshape(n, len(sources)), decided, bootstrap_n, seed)
        if keep_scores:
            result["images"] = [{"path": p, "label": lab, "decision": dec,
                                 "scores": {s: round(float(v), 6) for s, v in zip(sources, row)}}
                                for p, lab, dec, row in zip(paths, labels, decided, scores)]
        if perturbation is None:
            for lab in labels:
                n_images[lab] = n_images.get(lab, 0) + 1
        reports.append(result)
    for info in labels_info:
        info["n_images"] = n_images.get(info["name"], 0)

    records = attributor.records
    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "root": str(Path(root).absolute()),
        "registry": str(registry.root),
        "backbone": {"model_id": backbone.model_id, "engine": backbone.engine, "fingerprint": backbone.fingerprint},
        # what decides each source (occ.decisions), as every other command says it
        "sources": [{"name": s, "threshold": records[s].threshold, "far_target": records[s].calibration.far,
                     "tpr_target": records[s].calibration.target_tpr, "decision": records[s].to_dict(),
                     "has_folder": s in files} for s in sources],
        "unknown_label": unknown,
        "labels": labels_info,
        "n_files": total,
        "n_images": reports[0]["n_images"],
        "n_failed": len(failures),
        "failures": [{"path": p, "error": r} for p, r in failures.items()],
        "skipped_sources": [{"name": n, "error": r} for n, r in skipped.items()],
        "settings": {"perturbations": [p.label for p in conditions if p is not None],
                     "min_positives": min_positives, "min_negatives": min_negatives,
                     "bootstrap": {"n": bootstrap_n, "alpha": 0.05, "seed": seed}},
        "conditions": reports,
        "warnings": [],
        "seconds": round(time.perf_counter() - start, 3),
    }
    report["warnings"] = warnings(report, loose)
    return report


def _loose_files(root: Path) -> int:
    try:
        return sum(1 for p in root.iterdir() if not p.name.startswith(".") and not p.is_dir())
    except OSError:
        return 0
