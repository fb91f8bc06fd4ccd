"""Evaluate a registry on the user's own labelled images: the figures forensic papers report.

``ROOT`` holds one subfolder per label. A subfolder named like an enrolled source holds that source's
images (its positives); any other subfolder (``real/``, ``unknown-gen/``...) holds out-of-registry
images, which every verifier should reject and the attributor should call "unknown". Subfolders are
walked recursively; files directly under ``ROOT`` are ignored (and counted in a warning).

Every image goes through the frozen trunk once per condition ("clean", then each perturbation, see
:mod:`occ.perturb`) via :class:`occ.features.FeatureExtractor` (cached), and through every enrolled
verifier via :class:`occ.attribution.Attributor` -- exactly what ``occ verify`` / ``occ attribute``
would output for it. From that, per condition:

* **per source** (verification, one source against everything else): ROC AUC of that source's
  scores (raw margins: the same order as the calibrated scores, without ties where those saturate at
  0 or 1), positives = its folder, negatives = every other evaluated folder, with a
  percentile-bootstrap 95 % CI; TPR and false-accept rate (FAR) of the verifier's own accept decision at
  its stored threshold; the accept rate on each folder; the ROC curve;
* **open set** (attribution): closed-set accuracy (argmax over sources, rejection ignored) and the
  accuracy of the actual decision on images of known sources, the rejection rates, AUROC known-vs-unknown
  and OSCR, where the score of an image is its maximum calibrated score over sources; the confusion
  matrix (rows: true label, columns: decision).

AUCs are never flipped (an AUC below 0.5 is reported as such). Every figure comes with its counts, and a
figure resting on fewer than :data:`MIN_POSITIVES` positives (or known images) or fewer than
:data:`MIN_NEGATIVES` negatives (or unknown images) gets a warning. Undefined figures (no positives, no
unknowns...) are ``null`` in the report.

:func:`evaluate` returns the report (a JSON-ready dict, see :data:`REPORT_FORMAT`);
:func:`write_report` writes ``report.json``, ``report.md`` and PNG figures (needs matplotlib, the
``plots`` extra); :func:`tables` renders it for the terminal.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from occ import metrics
from occ.errors import ImageError, OccError, UsageError
from occ.images import display_path, iter_paths
from occ.perturb import Perturbation, parse_perturb_spec

__all__ = [
    "BOOTSTRAP_N",
    "CLEAN",
    "MIN_NEGATIVES",
    "MIN_POSITIVES",
    "REPORT_FORMAT",
    "evaluate",
    "label_folders",
    "public",
    "check_report_dir",
    "require_matplotlib",
    "tables",
    "write_report",
]

REPORT_FORMAT = "occ-eval-report"
REPORT_VERSION = 1
CLEAN = "clean"
UNKNOWN = "unknown"

MIN_POSITIVES = 20
"""Below this many positive images (a source's folder) or known images, a figure gets a warning."""

MIN_NEGATIVES = 50
"""Below this many negative images (the other folders) or unknown images, a figure gets a warning."""

BOOTSTRAP_N = 500
"""Bootstrap replicates for the 95 % confidence intervals of AUCs."""

Progress = Callable[[str, int, int], None]


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
    from occ.attribution import Attributor
    from occ.features import FeatureExtractor
    from occ.registry import Registry

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
            for batch in attributor.extractor.stream(found, attributor.blocks, bad, transform=perturbation):
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
        result = _condition(name, perturbation, sources, attributor, unknown, labels,
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

    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "root": str(Path(root).absolute()),
        "registry": str(registry.root),
        "backbone": {"model_id": backbone.model_id, "engine": backbone.engine, "fingerprint": backbone.fingerprint},
        "sources": [{"name": s, "threshold": float(attributor.verifiers[s].threshold),
                     "far_target": float(attributor.verifiers[s].far),
                     "tpr_target": float(attributor.verifiers[s].target_tpr),
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
    report["warnings"] = _warnings(report, loose)
    return report


def _loose_files(root: Path) -> int:
    try:
        return sum(1 for p in root.iterdir() if not p.name.startswith(".") and not p.is_dir())
    except OSError:
        return 0


def _condition(name, perturbation, sources, attributor, unknown, labels, scores, raw, accepted, decided,
               bootstrap_n, seed) -> dict:
    """Every figure of one condition from per-image calibrated and raw scores (n x sources), accept flags
    and decisions. A source's ROC uses its raw scores (same order as the calibrated ones, without the ties
    where the calibrated scale saturates); open-set figures use calibrated scores, which compare across
    sources."""
    labels_arr = np.asarray(labels, dtype=object)
    folder_names = list(dict.fromkeys(labels))
    per_source = {}
    for j, s in enumerate(sources):
        is_pos = labels_arr == s
        pos, neg = raw[is_pos, j], raw[~is_pos, j]
        n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
        n_pos_acc, n_neg_acc = int(accepted[is_pos, j].sum()), int(accepted[~is_pos, j].sum())
        entry = {
            "threshold": float(attributor.verifiers[s].threshold),
            "n_pos": n_pos,
            "n_neg": n_neg,
            "auc": None,
            "auc_ci": None,
            "tpr": n_pos_acc / n_pos if n_pos else None,
            "far": n_neg_acc / n_neg if n_neg else None,
            "n_pos_accepted": n_pos_acc,
            "n_neg_accepted": n_neg_acc,
            "accept_rate_by_label": {
                lab: {"n": int((labels_arr == lab).sum()), "n_accepted": int(accepted[labels_arr == lab, j].sum()),
                      "rate": float(accepted[labels_arr == lab, j].mean())}
                for lab in folder_names},
            "roc": None,
        }
        if n_pos and n_neg:
            entry["auc"] = metrics.roc_auc(pos, neg)
            entry["auc_ci"] = list(metrics.bootstrap_ci(pos, neg, n=bootstrap_n, seed=seed))
            entry["roc"] = _curve(pos, neg)
        per_source[s] = entry

    known = set(sources)
    max_scores = scores.max(axis=1)
    summary = metrics.open_set_summary(labels, decided, max_scores, sources, unknown_label=unknown)
    is_known = np.fromiter((lab in known for lab in labels), dtype=bool, count=len(labels))
    argmax = [sources[int(i)] for i in np.argmax(scores[is_known], axis=1)] if is_known.any() else []
    true_known = [lab for lab, k in zip(labels, is_known) if k]
    open_set = {
        "closed_set_accuracy": metrics.closed_set_accuracy(true_known, argmax) if true_known else None,
        "known_accuracy": summary["closed_set_accuracy"],
        "known_rejection_rate": summary["known_rejection_rate"],
        "unknown_rejection_rate": summary["unknown_rejection_rate"],
        "auroc": summary["auroc"],
        "auroc_ci": None,
        "oscr": summary["oscr"],
        **{k: summary[k] for k in ("n_known", "n_unknown", "n_known_correct", "n_known_rejected",
                                   "n_unknown_rejected")},
        "n_known_closed_set_correct": sum(t == p for t, p in zip(true_known, argmax)),
        "roc": None,
    }
    if summary["n_known"] and summary["n_unknown"]:
        k_scores, u_scores = max_scores[is_known], max_scores[~is_known]
        open_set["auroc_ci"] = list(metrics.bootstrap_ci(k_scores, u_scores, n=bootstrap_n, seed=seed))
        open_set["roc"] = _curve(k_scores, u_scores)

    columns = [*sources, unknown]
    truth = [lab if lab in known else unknown for lab in labels]
    matrix = metrics.confusion_matrix(truth, decided, columns)
    index = {c: i for i, c in enumerate(columns)}
    by_folder = np.zeros((len(folder_names), len(columns)), dtype=np.int64)
    rows = {lab: i for i, lab in enumerate(folder_names)}
    for lab, dec in zip(labels, decided):
        by_folder[rows[lab], index[dec]] += 1
    return _clean_json({
        "name": name,
        "perturbation": None if perturbation is None else perturbation.label,
        "n_images": len(labels),
        "sources": per_source,
        "open_set": open_set,
        "confusion": {"rows": columns, "columns": columns, "matrix": matrix.tolist()},
        "confusion_by_folder": {"rows": folder_names, "columns": columns, "matrix": by_folder.tolist()},
    })


def _curve(pos: np.ndarray, neg: np.ndarray) -> dict:
    """The ROC curve with collinear points dropped (the same polyline, far fewer points)."""
    fpr, tpr, _ = metrics.roc_curve(pos, neg)
    fp, tp = np.rint(fpr * len(neg)).astype(np.int64), np.rint(tpr * len(pos)).astype(np.int64)
    keep = [0]
    for i in range(1, len(fp) - 1):
        a, b = keep[-1], i + 1
        if (fp[i] - fp[a]) * (tp[b] - tp[i]) != (tp[i] - tp[a]) * (fp[b] - fp[i]):
            keep.append(i)
    if len(fp) > 1:
        keep.append(len(fp) - 1)
    return {"fpr": [round(float(fpr[i]), 6) for i in keep], "tpr": [round(float(tpr[i]), 6) for i in keep]}


def _clean_json(value):
    """NaN/inf -> None, numpy scalars -> Python: the report must be strict JSON."""
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _warnings(report: dict, loose: int) -> list[str]:
    """Warnings about figures resting on too few images (from the clean condition's counts)."""
    min_pos, min_neg = report["settings"]["min_positives"], report["settings"]["min_negatives"]
    clean = report["conditions"][0]
    out = []
    if report["n_failed"]:
        out.append(f"{report['n_failed']} file(s) could not be read and were left out of every figure")
    for s in report["skipped_sources"]:
        out.append(f"source '{s['name']}' could not be loaded and was left out, with its folder: {s['error']}")
    for info in report["labels"]:
        if info["kind"] != "excluded" and info["n_images"] == 0:
            out.append(f"folder '{info['name']}' has no readable images")
    if loose:
        out.append(f"{loose} file(s) directly under ROOT are in no label subfolder and were ignored")
    for name, m in clean["sources"].items():
        if m["n_pos"] == 0:
            out.append(f"source '{name}': no folder named '{name}' with readable images, so its AUC and TPR are "
                       f"not measured (only false accepts on the other {m['n_neg']} images)")
        elif m["n_pos"] < min_pos:
            out.append(f"source '{name}': only {m['n_pos']} positive images (< {min_pos}): its AUC, CI and TPR "
                       "are rough")
        if 0 < m["n_neg"] < min_neg:
            out.append(f"source '{name}': only {m['n_neg']} negative images (< {min_neg}): its AUC, CI and "
                       "false-accept rate are rough")
        elif m["n_neg"] == 0:
            out.append(f"source '{name}': no negative images, so its AUC and false-accept rate are not measured")
    o = clean["open_set"]
    if o["n_unknown"] == 0:
        out.append("open set: no out-of-registry folder (e.g. real/), so the rejection of unknowns, AUROC "
                   "known-vs-unknown and OSCR are not measured")
    elif o["n_unknown"] < min_neg:
        out.append(f"open set: only {o['n_unknown']} unknown images (< {min_neg}): the unknown rejection rate, "
                   "AUROC and OSCR are rough")
    if o["n_known"] == 0:
        out.append("open set: no images of an enrolled source, so closed-set accuracy, AUROC and OSCR are not "
                   "measured")
    elif o["n_known"] < min_pos:
        out.append(f"open set: only {o['n_known']} images of known sources (< {min_pos}): closed-set accuracy, "
                   "AUROC and OSCR are rough")
    if len(report["sources"]) == 1:
        out.append("only one source is evaluated: closed-set accuracy is 1 by construction")
    return out


def public(report: dict) -> dict:
    """The report without per-image records (what ``--json`` prints and ``report.json`` holds)."""
    out = dict(report)
    out["conditions"] = [{k: v for k, v in c.items() if k != "images"} for c in report["conditions"]]
    return out


# -- terminal ----------------------------------------------------------------------------------------


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def tables(report: dict) -> list:
    """Rich tables of the report (fit 80 columns): verification per source and condition, open set per
    condition, the clean confusion matrix by folder."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    def table(title, caption, columns, rows, left=2):
        """Cells never fold: each column is at least as wide as its widest cell (headers may wrap)."""
        t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, caption_justify="left", pad_edge=False,
                  collapse_padding=True)
        for i, col in enumerate(columns):
            widest = max((len(r[i]) for r in rows), default=1)
            t.add_column(col, justify="left" if i < left else "right", min_width=min(widest, 24))
        for r in rows:
            t.add_row(*(escape(cell) for cell in r))
        return t

    def ci(x):
        return "-" if not x else f"{x[0]:.3f}-{x[1]:.3f}"

    rows = [[s["name"], c["name"], f"{m['n_pos']}/{m['n_neg']}", _f(m["auc"]), ci(m["auc_ci"]), _f(m["tpr"]),
             _f(m["far"]), _f(m["threshold"])]
            for s in report["sources"] for c in report["conditions"] for m in [c["sources"][s["name"]]]]
    verify = table("verification: each source against every other folder",
                   "n +/-: positives (the source's folder) / negatives (every other folder). TPR, FAR: share "
                   "of positives, negatives the verifier accepts at its stored threshold thr.",
                   ["source", "condition", "n +/-", "AUC", "95% CI", "TPR", "FAR", "thr"], rows)
    rows = [[c["name"], f"{o['n_known']}/{o['n_unknown']}", _f(o["closed_set_accuracy"]), _f(o["known_accuracy"]),
             _f(o["unknown_rejection_rate"]), _f(o["auroc"]), ci(o["auroc_ci"]), _f(o["oscr"])]
            for c in report["conditions"] for o in [c["open_set"]]]
    open_set = table("open set: attribution over every source",
                     "n known/unk: images of enrolled sources / of other folders. closed acc: argmax over sources "
                     "(rejection ignored); known acc: the actual decision; unk rej: unknowns decided "
                     f"'{report['unknown_label']}'; AUROC (known vs unknown) and OSCR by the maximum calibrated "
                     "score.",
                     ["condition", "n\nknown/unk", "closed\nacc", "known\nacc", "unk\nrej", "AUROC", "95% CI", "OSCR"],
                     rows, left=1)
    clean = report["conditions"][0]
    conf = clean["confusion_by_folder"]
    rows = [[row, *map(str, counts), str(sum(counts))] for row, counts in zip(conf["rows"], conf["matrix"])]
    confusion = table(f"confusion ({clean['name']}): rows = folder, columns = decision",
                      "per-condition matrices: --report or --json" if len(report["conditions"]) > 1 else None,
                      ["folder", *conf["columns"], "n"], rows, left=1)
    return [verify, open_set, confusion]


# -- files -------------------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise a one-line :class:`UsageError` when matplotlib (the ``plots`` extra) is not installed."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError("--report writes figures and needs matplotlib, which is not installed: "
                         "pip install 'occ[plots]'")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text)


def check_report_dir(directory: str | os.PathLike) -> Path:
    """``directory`` as a Path; :class:`UsageError` if it exists and is not a folder."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--report {display_path(directory)}: exists and is not a folder")
    return directory


def write_report(report: dict, directory: str | os.PathLike) -> list[Path]:
    """Write into ``directory`` (created; existing files of these names are replaced):

    * ``report.json``: :func:`public` of the report;
    * ``roc-<source>.png``: the source's ROC curve, conditions overlaid, a dot at the stored threshold;
    * ``open-set-roc.png``: known vs unknown by maximum calibrated score, conditions overlaid;
    * ``confusion-<condition>.png``: the confusion matrix by folder, one per condition;
    * ``scores.csv``: per-image scores and decisions, when the report kept them (``keep_scores``);
    * ``report.md``: every table, the warnings, and the figures embedded.

    Returns the paths written. Needs matplotlib (:class:`UsageError` otherwise); a file that cannot be
    written raises :class:`OccError`.
    """
    require_matplotlib()
    directory = check_report_dir(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        path = directory / "report.json"
        path.write_text(json.dumps(public(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.append(path)
        figures = _figures(report, directory)
        written += [p for p, _ in figures.values()]
        if any("images" in c for c in report["conditions"]):
            written.append(_scores_csv(report, directory / "scores.csv"))
        path = directory / "report.md"
        path.write_text(_markdown(report, figures), encoding="utf-8")
        written.append(path)
    except OSError as exc:
        where = display_path(exc.filename) if getattr(exc, "filename", None) else display_path(directory)
        raise OccError(f"cannot write the report: {where}: {exc.strerror or exc}") from None
    return written


def _figures(report: dict, directory: Path) -> dict[str, tuple[Path, str]]:
    """Draw every figure; returns {key: (path, caption)}."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    out = {}
    conds = report["conditions"]

    def tx(text) -> str:
        return str(text).replace("$", r"\$")  # names are data, never mathtext

    def roc_figure(title, curves, path):
        fig = Figure(figsize=(5.2, 5.0))
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
        for label, roc, point in curves:
            line = ax.plot(roc["fpr"], roc["tpr"], linewidth=1.6, label=label)[0]
            if point is not None:
                ax.plot([point[0]], [point[1]], marker="o", color=line.get_color())
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel("false-accept rate")
        ax.set_ylabel("true-accept rate")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    for s in report["sources"]:
        name = s["name"]
        curves = []
        for c in conds:
            m = c["sources"][name]
            if m["roc"] is None:
                continue
            curves.append((f"{c['name']}: AUC {_f(m['auc'])}{_ci(m['auc_ci'])}, n {m['n_pos']}+/{m['n_neg']}-",
                           m["roc"], (m["far"], m["tpr"])))
        if not curves:
            continue
        path = directory / f"roc-{_slug(name)}.png"
        roc_figure(f"'{tx(name)}' vs every other folder (dot: stored threshold)", curves, path)
        out[f"roc:{name}"] = (path, f"ROC of '{name}' (positives: its folder; negatives: every other folder)")
    curves = [(f"{c['name']}: AUROC {_f(c['open_set']['auroc'])}{_ci(c['open_set']['auroc_ci'])}, "
               f"n {c['open_set']['n_known']} known/{c['open_set']['n_unknown']} unknown", c["open_set"]["roc"], None)
              for c in conds if c["open_set"]["roc"] is not None]
    if curves:
        path = directory / "open-set-roc.png"
        roc_figure("known vs unknown (score: max calibrated score over sources)", curves, path)
        out["roc:open-set"] = (path, "ROC of known-source images vs unknown images, by maximum calibrated score")
    for c in conds:
        conf = c["confusion_by_folder"]
        matrix = np.asarray(conf["matrix"], dtype=float).reshape(len(conf["rows"]), len(conf["columns"]))
        if not matrix.size:
            continue
        fig = Figure(figsize=(1.2 + 0.9 * len(conf["columns"]), 1.2 + 0.6 * len(conf["rows"])))
        ax = fig.subplots()
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=9,
                        color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(conf["columns"])), [tx(c) for c in conf["columns"]], rotation=30, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(conf["rows"])), [f"{tx(r)} (n={int(n)})" for r, n in zip(conf["rows"],
                                                                                       matrix.sum(axis=1))],
                      fontsize=8)
        ax.set_xlabel("decision")
        ax.set_ylabel("folder (true label)")
        ax.set_title(f"confusion, {c['name']} ({c['n_images']} images)", fontsize=10)
        fig.tight_layout()
        path = directory / f"confusion-{_slug(c['name'])}.png"
        fig.savefig(path, dpi=110)
        out[f"confusion:{c['name']}"] = (path, f"confusion matrix, {c['name']}")
    return out


def _scores_csv(report: dict, path: Path) -> Path:
    sources = [s["name"] for s in report["sources"]]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["condition", "path", "label", "decision", *[f"score:{s}" for s in sources]])
        for c in report["conditions"]:
            for im in c.get("images", []):
                writer.writerow([c["name"], im["path"], im["label"], im["decision"],
                                 *[f"{im['scores'][s]:.6f}" for s in sources]])
    return path


def _md(text) -> str:
    """Plain text for a markdown table cell or line (names are user data: folder names)."""
    text = " ".join(str(text).split())
    return "".join("\\" + ch if ch in "\\`*_[]<>|#$" else ch for ch in text)


def _code(text) -> str:
    """Text as an inline code span (a path), whatever backticks it holds."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def _markdown(report: dict, figures: dict[str, tuple[Path, str]]) -> str:
    settings = report["settings"]
    min_pos, min_neg = settings["min_positives"], settings["min_negatives"]
    lines = [
        "# occ evaluation report",
        "",
        f"- images: {_code(report['root'])} ({report['n_images']} evaluated, {report['n_failed']} unreadable)",
        f"- registry: {_code(report['registry'])}",
        f"- backbone: {_code(report['backbone']['fingerprint'])}",
        f"- conditions: {', '.join(c['name'] for c in report['conditions'])}",
        f"- created: {report['created']}",
        "",
        "| folder | role | images |",
        "|---|---|---|",
    ]
    roles = {"source": "enrolled source (positives)", "unknown": "out of registry (must be rejected)",
             "excluded": "excluded (source could not be loaded)"}
    lines += [f"| {_md(i['name'])} | {roles[i['kind']]} | {i['n_images']} |" for i in report["labels"]]
    lines.append("")
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {_md(w)}" for w in report["warnings"]] + [""]
    lines += ["## Verification (one source against every other folder)", "",
              "| source | condition | n pos / neg | AUC [95% CI] | TPR @ threshold | FAR @ threshold | threshold |",
              "|---|---|---|---|---|---|---|"]
    for s in report["sources"]:
        for c in report["conditions"]:
            m = c["sources"][s["name"]]
            lines.append(f"| {_md(s['name'])} | {c['name']} | {m['n_pos']} / {m['n_neg']} | "
                         f"{_f(m['auc'])}{_ci(m['auc_ci'])} | {_f(m['tpr'])} ({m['n_pos_accepted']}/{m['n_pos']}) | "
                         f"{_f(m['far'])} ({m['n_neg_accepted']}/{m['n_neg']}) | {_f(m['threshold'])} |")
    lines.append("")
    for s in report["sources"]:
        key = f"roc:{s['name']}"
        if key in figures:
            lines += [f"![{_md(figures[key][1])}]({figures[key][0].name})", ""]
    lines += ["## Open set (attribution)", "",
              "| condition | n known / unknown | closed-set accuracy | known accuracy | known rejected | "
              "unknown rejected | AUROC known-vs-unknown [95% CI] | OSCR |",
              "|---|---|---|---|---|---|---|---|"]
    for c in report["conditions"]:
        o = c["open_set"]
        lines.append(f"| {c['name']} | {o['n_known']} / {o['n_unknown']} | {_f(o['closed_set_accuracy'])} | "
                     f"{_f(o['known_accuracy'])} | {_f(o['known_rejection_rate'])} | "
                     f"{_f(o['unknown_rejection_rate'])} | {_f(o['auroc'])}{_ci(o['auroc_ci'])} | {_f(o['oscr'])} |")
    lines.append("")
    if "roc:open-set" in figures:
        lines += [f"![{figures['roc:open-set'][1]}]({figures['roc:open-set'][0].name})", ""]
    lines += ["## Confusion matrices", ""]
    for c in report["conditions"]:
        conf = c["confusion_by_folder"]
        lines += [f"### {c['name']}", "", "| folder \\ decision | " + " | ".join(map(_md, conf["columns"])) + " | n |",
                  "|---" * (len(conf["columns"]) + 2) + "|"]
        lines += [f"| {_md(r)} | " + " | ".join(map(str, row)) + f" | {sum(row)} |"
                  for r, row in zip(conf["rows"], conf["matrix"])]
        lines.append("")
        key = f"confusion:{c['name']}"
        if key in figures:
            lines += [f"![{figures[key][1]}]({figures[key][0].name})", ""]
    if report["failures"]:
        lines += ["## Unreadable files", ""] + [f"- {_code(f['path'])}: {_md(f['error'])}"
                                                 for f in report["failures"]] + [""]
    lines += [
        "## How to read this",
        "",
        "- Scores are the calibrated scores `occ verify` prints; TPR and FAR use each verifier's own accept "
        "decision at its stored threshold (the dot on each ROC curve). A source's ROC and AUC rank its raw "
        "scores, which order images as the calibrated ones do without ties where those reach 0 or 1.",
        "- AUC: positives = the source's folder, negatives = every other folder. AUCs are never flipped: below "
        "0.5 means the verifier ranks other images above its own source's.",
        f"- 95% CIs: percentile bootstrap, {settings['bootstrap']['n']} resamples of positives and negatives "
        "separately.",
        "- Closed-set accuracy: argmax over sources on images of known sources, rejection ignored. Known "
        "accuracy: the attributor's actual decision (a rejected known image counts as wrong).",
        "- AUROC known-vs-unknown and OSCR use each image's maximum calibrated score over sources.",
        f"- A figure resting on fewer than {min_pos} positives (or known images) or fewer than {min_neg} "
        "negatives (or unknown images) is flagged under Warnings: treat it as rough.",
        "",
    ]
    return "\n".join(lines)
