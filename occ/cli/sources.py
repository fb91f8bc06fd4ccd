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
    markup_line,
    markup_path,
    open_registry,
    out,
    print_table,
)
from occ.errors import OccError, UsageError
from occ.paths import display_path

sources_app = typer.Typer(help="List, show and remove enrolled sources.", no_args_is_help=False, **TYPER_SETTINGS)

NameArg = Annotated[str, typer.Argument(help="Name of an enrolled source.")]


@sources_app.callback(invoke_without_command=True)
@handle_errors
def sources(ctx: typer.Context, registry: RegistryOpt = None) -> None:
    """Table of enrolled sources."""
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
            rows.append((name, "[red]unusable[/red]", "", "", "", "", "", ""))
            continue
        rows.append((name, escape(str(row["kind"])), str(row["images"]), fmt(row["threshold"]), fmt(row["heldout_tpr"]),
                     fmt(row["heldout_far"]), markup_path(row["backbone"]), escape(str(row["created"]))))
    print_table(f"sources in {markup_path(reg.root)}",
                ("name", "kind", "images", "threshold", "held-out TPR", "held-out FAR", "backbone", "created"), rows)
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
    from occ.cli.refit import refit_registry

    reg = open_registry(registry)
    reg.info(name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to remove '{name}' without --yes (no terminal to ask)")
        typer.confirm(f"remove source '{name}' from {display_path(reg.root)}?", abort=True)
    reg.remove(name)
    err.print(f"removed '{name}'", markup=False)
    refit_registry(reg, None)


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
    from occ.sources import set_threshold

    cal = set_threshold(open_registry(registry), name, far, tpr).calibration_
    err.print(f"'{name}': threshold {fmt(cal.calibrated_threshold)} (FAR <= {cal.far:g}, TPR <= {cal.target_tpr:g}): "
              f"held-out TPR {fmt(cal.tpr)}, FAR {fmt(cal.achieved_far)}", markup=False)
