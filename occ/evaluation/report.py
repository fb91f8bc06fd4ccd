"""The report of an evaluation: its constants, the figures of one condition assembled from the scores
(metrics, curves, warnings), and its public JSON form."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from occ import metrics

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



def condition(name, perturbation, sources, attributor, unknown, labels, scores, raw, accepted, decided,
               bootstrap_n, seed) -> dict:
    """Every figure of one condition from per-image calibrated and raw scores (n x sources), accept flags
    and decisions. A source's ROC uses its raw scores (same order as the calibrated ones, without the ties
    where the calibrated scale saturates); open-set figures use calibrated scores, which compare across
    sources."""
    labels_arr = np.asarray(labels, dtype=object)
    folder_names = list(dict.fromkeys(labels))
    per_source = {}
    records = attributor.records  # what decides each source (occ.decisions)
    for j, s in enumerate(sources):
        is_pos = labels_arr == s
        pos, neg = raw[is_pos, j], raw[~is_pos, j]
        n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
        n_pos_acc, n_neg_acc = int(accepted[is_pos, j].sum()), int(accepted[~is_pos, j].sum())
        entry = {
            "threshold": records[s].threshold,
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


def warnings(report: dict, loose: int) -> list[str]:
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
