"""``occ eval``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from occ.cli.common import (
    BackboneOpt,
    DeviceOpt,
    RegistryOpt,
    ThreadsOpt,
    apply_threads,
    backbone_for,
    err,
    handle_errors,
    json_option,
    markup_line,
    markup_path,
    open_registry,
    out,
    report_file_error,
    report_left_out,
    show,
    stage_progress,
)
from occ.sources import require_enrolled


@handle_errors
def eval_cmd(
    root: Annotated[Path, typer.Argument(help="Folder with one subfolder per label: a subfolder named like an "
                                         "enrolled source holds its images; any other (e.g. real) holds images "
                                         "that must be rejected.")],
    perturb: Annotated[str | None, typer.Option("--perturb", help="Also evaluate on perturbed copies, each item on "
                                                "its own: e.g. jpeg:75,resize:0.5,blur:1.5,crop:0.9")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Write report.json, report.md, ROC and "
                                                    "confusion PNGs and scores.csv into this folder (needs "
                                                    "matplotlib, the 'plots' extra of occ).")] = None,
    as_json: Annotated[bool, json_option("the report as one JSON object")] = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Evaluate the enrolled sources on labelled images: per-source ROC AUC (95% bootstrap CI), TPR and
    false-accept rate at the stored threshold; open-set accuracy, rejection of unknowns, AUROC, OSCR and
    confusion matrix; optionally under perturbations. Figures resting on fewer than 20 positives or 50
    negatives are flagged as rough.
    """
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ import evaluation
    from occ.perturb import parse_perturb_spec

    perturbations = parse_perturb_spec(perturb) if perturb is not None else []
    if report_dir is not None:
        evaluation.require_matplotlib()
        evaluation.check_report_dir(report_dir)
    evaluation.label_folders(root)
    reg = open_registry(registry)
    require_enrolled(reg)
    apply_threads(threads)
    bb = backbone_for(backbone, reg, device=device)
    failures, skipped = [], []

    def on_error(exc):
        failures.append(exc)
        report_file_error(exc, False)  # the report is the one JSON object on stdout

    def on_skip(name, exc):
        skipped.append(name)
        report_left_out(name, exc)

    with stage_progress("evaluating ({stage})") as on_progress:
        report = evaluation.evaluate(reg, bb, root, perturbations, on_error=on_error, on_skip=on_skip,
                                     progress=on_progress, keep_scores=report_dir is not None)
    if report_dir is not None:
        with err.status("writing report", spinner="dots") if err.is_terminal else contextlib.nullcontext():
            evaluation.write_report(report, report_dir)
    if as_json:
        print(json.dumps(evaluation.public(report), allow_nan=False), flush=True)
        for warning in report["warnings"]:
            err.print(f"[yellow]warning:[/yellow] {markup_line(warning)}", markup=True)
    else:
        for table in evaluation.tables(report):
            show(table)
        for warning in report["warnings"]:
            out.print(f"[yellow]warning:[/yellow] {markup_line(warning)}", markup=True, soft_wrap=True)
        if report_dir is not None:
            out.print(f"report written to {markup_path(report_dir / 'report.md')}", markup=True, soft_wrap=True)
    conditions = len(report["conditions"])
    err.print(f"eval: {report['n_files']} files, {report['n_images']} scored, {report['n_failed']} failed, "
              f"{len(report['sources'])} source(s), {conditions} condition(s) in {report['seconds']:.1f} s",
              markup=False)
    raise typer.Exit(1 if failures or skipped else 0)
