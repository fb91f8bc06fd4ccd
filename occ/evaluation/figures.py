"""The report's figures: ROC curves on a log false-accept axis, confusion matrices (matplotlib, no pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ.evaluation.tables import interval, number


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text)


def draw_figures(report: dict, directory: Path) -> dict[str, tuple[Path, str]]:
    """Draw every figure; returns {key: (path, caption)}."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    out = {}
    conds = report["conditions"]

    def tx(text) -> str:
        return str(text).replace("$", r"\$")  # names are data, never mathtext

    def roc_figure(title, curves, path, legend_title, n_negatives):
        """ROC curves on a log false-accept axis: the low-FAR region is where thresholds are set. The axis
        starts at one false accept among the most negatives of any curve (a FAR of 0 sits on that edge)."""
        fig = Figure(figsize=(5.2, 5.0))
        ax = fig.subplots()
        low = 1.0 / max(2, n_negatives)
        ax.set_xscale("log", nonpositive="clip")
        grid = np.geomspace(low, 1.0, 50)
        ax.plot(grid, grid, linestyle=":", color="grey", linewidth=1, label="chance")
        for label, roc, point in curves:
            fpr = np.maximum(np.asarray(roc["fpr"], dtype=float), low)
            line = ax.plot(fpr, roc["tpr"], linewidth=1.6, label=label)[0]
            if point is not None:
                ax.plot([max(point[0], low)], [point[1]], marker="o", color=line.get_color())
        ax.set_xlim(low, 1.0)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel(f"false-accept rate (log scale; {low:.2g} and below drawn at the left edge)")
        ax.set_ylabel("true-accept rate")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=7, title=legend_title, title_fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    for s in report["sources"]:
        name = s["name"]
        curves = []
        for c in conds:
            m = c["sources"][name]
            if m["roc"] is None:
                continue
            curves.append((f"{c['name']}: AUC {number(m['auc'])}{interval(m['auc_ci'])}, "
                           f"n {m['n_pos']}+/{m['n_neg']}-",
                           m["roc"], (m["far"], m["tpr"])))
        if not curves:
            continue
        path = directory / f"roc-{slug(name)}.png"
        roc_figure(f"'{tx(name)}' vs every other folder (dot: stored threshold)", curves, path,
                   "n P+/N-: P positives (its folder), N negatives (every other folder)",
                   max(c["sources"][name]["n_neg"] for c in conds))
        out[f"roc:{name}"] = (path, f"ROC of '{name}' (positives: its folder; negatives: every other folder)")
    curves = [(f"{c['name']}: AUROC {number(c['open_set']['auroc'])}{interval(c['open_set']['auroc_ci'])}, "
               f"n {c['open_set']['n_known']} known/{c['open_set']['n_unknown']} unknown", c["open_set"]["roc"], None)
              for c in conds if c["open_set"]["roc"] is not None]
    if curves:
        path = directory / "open-set-roc.png"
        roc_figure("known vs unknown (score: max calibrated score over sources)", curves, path,
                   "n: images of enrolled sources (known) / of other folders (unknown)",
                   max(c["open_set"]["n_unknown"] for c in conds))
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
        path = directory / f"confusion-{slug(c['name'])}.png"
        fig.savefig(path, dpi=110)
        out[f"confusion:{c['name']}"] = (path, f"confusion matrix, {c['name']}")
    return out
