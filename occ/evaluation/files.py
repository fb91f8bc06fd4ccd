"""The report on disk: report.json, report.md (tables, warnings, figures embedded), scores.csv."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from pathlib import Path

from occ.errors import OccError, UsageError
from occ.evaluation.figures import draw_figures
from occ.evaluation.report import public
from occ.evaluation.tables import interval, number
from occ.paths import display_path

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
        figures = draw_figures(report, directory)
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
                         f"{number(m['auc'])}{interval(m['auc_ci'])} | "
                         f"{number(m['tpr'])} ({m['n_pos_accepted']}/{m['n_pos']}) | "
                         f"{number(m['far'])} ({m['n_neg_accepted']}/{m['n_neg']}) | {number(m['threshold'])} |")
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
        lines.append(f"| {c['name']} | {o['n_known']} / {o['n_unknown']} | {number(o['closed_set_accuracy'])} | "
                     f"{number(o['known_accuracy'])} | {number(o['known_rejection_rate'])} | "
                     f"{number(o['unknown_rejection_rate'])} | {number(o['auroc'])}{interval(o['auroc_ci'])} | "
                     f"{number(o['oscr'])} |")
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
