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
from occ.cli.refit import refit_options
from occ.decisions import JOINT, WEAK_TPR, for_registry, for_source
from occ.errors import OccError, RegistryError, UsageError, one_line
from occ.paths import display_path
from occ.sources import details, listing, set_threshold

sources_app = typer.Typer(help="List, show and remove enrolled sources.", no_args_is_help=False, **TYPER_SETTINGS)

NameArg = Annotated[str, typer.Argument(help="Name of an enrolled source.")]
COLUMNS = ("name", "kind", "images", "threshold", "held-out TPR", "held-out FAR", "decided by", "quality", "backbone",
           "created")


def _cell(x) -> str:
    return "?" if x is None else fmt(x)


@sources_app.callback(invoke_without_command=True)
@handle_errors
def sources(ctx: typer.Context, registry: RegistryOpt = None,
            as_json: Annotated[bool, json_option("one JSON object per source")] = False) -> None:
    """Table of enrolled sources and what decides each one (occ.decisions): its threshold and held-out
    rates in the model that decides it (the registry's joint model for lda sources, with its version; the
    source's own verifier for the other kinds). A source marked weak accepts less than half of its own
    held-out images at its threshold (held-out TPR below 0.5): it names few of its images; enroll more,
    or more typical, images."""
    from rich.markup import escape

    if ctx.invoked_subcommand is not None:
        return
    reg = open_registry(registry)
    names = reg.names()
    if not names:
        err.print(f"no sources enrolled in {markup_path(reg.root)}", markup=True)
        return
    rows, broken, unknown = [], [], []
    for name, record in for_registry(reg, names).items():
        try:
            if isinstance(record, OccError):
                raise record
            row = listing(record, reg.info(name).meta)
        except OccError as exc:
            broken.append(exc)  # the reason goes to stderr on one line: a table cell would cut it up
            if as_json:
                print(json.dumps({"name": name, "error": one_line(exc)}), flush=True)
            rows.append((name, "[red]unusable[/red]", *[""] * (len(COLUMNS) - 2)))
            continue
        if not record.known:
            unknown.append(name)
        if as_json:
            print(json.dumps({"name": name, **row}), flush=True)
        decided = "own" if row["decided_by"] != JOINT else f"joint {row['joint_version'] or '(not stored)'}"
        quality = "?" if row["weak"] is None else "[yellow]weak[/yellow]" if row["weak"] else "ok"
        rows.append((name, escape(str(row["kind"])), str(row["images"]), _cell(row["threshold"]),
                     _cell(row["heldout_tpr"]), _cell(row["heldout_far"]), decided, quality,
                     markup_path(row["backbone"]), escape(str(row["created"]))))
    if not as_json:  # (with --json, an unusable source's reason is its JSON object's "error")
        print_table(f"sources in {markup_path(reg.root)}", COLUMNS, rows)
        for exc in broken:
            err.print(f"[red]unusable:[/red] {markup_line(exc)}", markup=True)
    if unknown:
        warn(f"the registry's stored joint model was not fitted on exactly its readable sources (an interrupted "
             f"change, or a damaged source): what decides {', '.join(unknown)} is known after `occ refit`")
    if broken:
        raise typer.Exit(1)


@sources_app.command("show")
@handle_errors
def sources_show(name: NameArg, registry: RegistryOpt = None) -> None:
    """Everything stored about one source (settings, provenance), and what decides it ("decision": its
    threshold, held-out rates and radius in the model that decides it, and that model), as JSON on stdout."""
    reg = open_registry(registry)
    out.print_json(json.dumps(details(for_source(reg, name), reg.info(name).meta)))


@sources_app.command("remove")
@handle_errors
def sources_remove(name: NameArg, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
                   registry: RegistryOpt = None) -> None:
    """Remove an enrolled source (asks first unless --yes); the joint model of the other lda sources is
    refitted without it."""
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
    the two rules --far and --tpr; a rule not given keeps its stored value. For an lda source the
    threshold that changes is the registry's joint model's; what decides the source is read back and
    printed."""
    reg = open_registry(registry)
    with stage_progress("refit: {stage}") as on_progress:
        record = set_threshold(reg, name, far, tpr, refit=refit_options(on_progress))
    cal = record.calibration
    if cal is None:
        raise RegistryError(f"source '{name}': the new rules are stored, but the joint model that decides it is not "
                            "(run `occ refit`)")
    err.print(f"'{name}': threshold {fmt(cal.calibrated_threshold)} (raw {cal.threshold:.4g}; FAR <= {cal.far:g}, "
              f"TPR <= {cal.target_tpr:g}; decided by {record.describe()}): held-out TPR {fmt(cal.tpr)}, FAR "
              f"{fmt(cal.achieved_far)}", markup=False)
    if record.weak:
        warn(f"source '{name}' is weak: it accepts {fmt(cal.tpr)} of its own held-out images at its new "
             f"threshold, below {WEAK_TPR:g}; marked weak in `occ sources`")
