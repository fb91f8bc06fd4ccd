"""``occ sources`` (list), ``sources show``, ``sources remove``, ``sources set-threshold``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from occ.cli.common import (
    TYPER_SETTINGS,
    RegistryOpt,
    err,
    fmt,
    handle_errors,
    json_option,
    markup_line,
    markup_path,
    open_registry,
    out,
    print_table,
    stage_progress,
    warn,
)
from occ.errors import OccError, UsageError, one_line
from occ.paths import display_path

sources_app = typer.Typer(help="List, show and remove enrolled sources.", no_args_is_help=False, **TYPER_SETTINGS)

NameArg = Annotated[str, typer.Argument(help="Name of an enrolled source.")]
_RATES = ("threshold", "heldout_tpr", "heldout_far")


@sources_app.callback(invoke_without_command=True)
@handle_errors
def sources(ctx: typer.Context, registry: RegistryOpt = None,
            as_json: Annotated[bool, json_option("one JSON object per source")] = False) -> None:
    """Table of enrolled sources. A source marked weak accepts less than half of its own held-out images
    at its threshold (held-out TPR below 0.5): it names few of its images; enroll more, or more typical,
    images."""
    from rich.markup import escape

    from occ.sources import listing

    if ctx.invoked_subcommand is not None:
        return
    reg = open_registry(registry)
    names = reg.names()
    if not names:
        err.print(f"no sources enrolled in {markup_path(reg.root)}", markup=True)
        return
    rows, broken = [], []
    for name in names:
        try:
            row = listing(reg, name, reg.info(name).meta)
        except OccError as exc:
            broken.append(exc)  # the reason goes to stderr on one line: a table cell would cut it up
            if as_json:
                print(json.dumps({"name": name, "error": one_line(exc)}), flush=True)
            rows.append((name, "[red]unusable[/red]", "", "", "", "", "", "", ""))
            continue
        if as_json:
            print(json.dumps({"name": name, **row, **{k: round(row[k], 6) for k in _RATES}}), flush=True)
        rows.append((name, escape(str(row["kind"])), str(row["images"]), fmt(row["threshold"]), fmt(row["heldout_tpr"]),
                     fmt(row["heldout_far"]), "[yellow]weak[/yellow]" if row["weak"] else "ok",
                     markup_path(row["backbone"]), escape(str(row["created"]))))
    if not as_json:  # (with --json, an unusable source's reason is its JSON object's "error")
        print_table(f"sources in {markup_path(reg.root)}", ("name", "kind", "images", "threshold", "held-out TPR",
                                                            "held-out FAR", "quality", "backbone", "created"), rows)
        for exc in broken:
            err.print(f"[red]unusable:[/red] {markup_line(exc)}", markup=True)
    if broken:
        raise typer.Exit(1)


@sources_app.command("show")
@handle_errors
def sources_show(name: NameArg, registry: RegistryOpt = None) -> None:
    """Everything stored about one source (settings, calibration, provenance), as JSON on stdout."""
    from occ.sources import details

    reg = open_registry(registry)
    out.print_json(json.dumps(details(reg, name, reg.info(name).meta)))


@sources_app.command("remove")
@handle_errors
def sources_remove(name: NameArg, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
                   registry: RegistryOpt = None) -> None:
    """Remove an enrolled source (asks first unless --yes); the joint model of the other lda sources is
    refitted without it."""
    from occ.cli.refit import refit_options

    reg = open_registry(registry)
    reg.info(name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to remove '{name}' without --yes (no terminal to ask)")
        typer.confirm(f"remove source '{name}' from {display_path(reg.root)}?", abort=True)
    with stage_progress("refit: {stage}") as on_progress:
        reg.remove(name, refit=refit_options(on_progress))
    err.print(f"removed '{name}'", markup=False)


@sources_app.command("set-threshold")
@handle_errors
def sources_set_threshold(
    name: NameArg,
    far: Annotated[float | None, typer.Option("--far", help="New highest share of held-out non-target images "
                                              "to accept (false-accept rate).")] = None,
    tpr: Annotated[float | None, typer.Option("--tpr", help="New highest share of held-out target images to "
                                              "accept.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Re-choose a source's threshold from its stored held-out scores (no retraining): the stricter of
    the two rules --far and --tpr; a rule not given keeps its stored value."""
    from occ.cli.refit import refit_options
    from occ.sources import WEAK_TPR, decision_calibration, is_weak, set_threshold

    reg = open_registry(registry)
    with stage_progress("refit: {stage}") as on_progress:
        cal = set_threshold(reg, name, far, tpr, refit=refit_options(on_progress)).calibration_
    err.print(f"'{name}': threshold {fmt(cal.calibrated_threshold)} (FAR <= {cal.far:g}, TPR <= {cal.target_tpr:g}): "
              f"held-out TPR {fmt(cal.tpr)}, FAR {fmt(cal.achieved_far)}", markup=False)
    decides, _ = decision_calibration(reg, name, reg.info(name).meta)
    if is_weak(decides):
        warn(f"source '{name}' is weak: it accepts {fmt(decides.tpr)} of its own held-out images at its new "
             f"threshold, below {WEAK_TPR:g}; marked weak in `occ sources`")
