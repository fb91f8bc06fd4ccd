"""The report as terminal tables (rich renderables; the CLI prints them)."""

from __future__ import annotations

# -- terminal ----------------------------------------------------------------------------------------


def number(x, digits: int = 3) -> str:
    """A figure with ``digits`` decimals, "-" for an undefined one."""
    return "-" if x is None else f"{x:.{digits}f}"


def interval(ci) -> str:
    """A 95 % interval after a figure, " [lo, hi]", or nothing."""
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

    rows = [[s["name"], c["name"], f"{m['n_pos']}/{m['n_neg']}", number(m["auc"]), ci(m["auc_ci"]), number(m["tpr"]),
             number(m["far"]), number(m["threshold"])]
            for s in report["sources"] for c in report["conditions"] for m in [c["sources"][s["name"]]]]
    verify = table("verification: each source against every other folder",
                   "n +/-: positives (the source's folder) / negatives (every other folder). TPR, FAR: share "
                   "of positives, negatives the verifier accepts at its stored threshold thr.",
                   ["source", "condition", "n +/-", "AUC", "95% CI", "TPR", "FAR", "thr"], rows)
    rows = [[c["name"], f"{o['n_known']}/{o['n_unknown']}", number(o["closed_set_accuracy"]),
             number(o["known_accuracy"]),
             number(o["unknown_rejection_rate"]), number(o["auroc"]), ci(o["auroc_ci"]), number(o["oscr"])]
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
