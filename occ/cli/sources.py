"""``occ sources`` (list), ``sources show``, ``sources remove``, ``sources set-threshold``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from occ.cli.common import RegistryOpt, err, fmt, handle_errors, markup_line, markup_path, open_registry, out
from occ.errors import OccError, UsageError

sources_app = typer.Typer(help="List, show and remove enrolled sources.", no_args_is_help=False)


@sources_app.callback(invoke_without_command=True)
@handle_errors
def sources(ctx: typer.Context, registry: RegistryOpt = None) -> None:
    """Table of enrolled sources."""
    if ctx.invoked_subcommand is not None:
        return
    reg = open_registry(registry)
    names = reg.names()
    if not names:
        err.print(f"no sources enrolled in {reg.root}", markup=False)
        return
    table = Table(title=f"sources in {markup_path(reg.root)}")
    for col in ("name", "kind", "images", "threshold", "held-out TPR", "held-out FAR", "backbone", "created"):
        table.add_column(col)
    broken = []
    for name in names:
        try:
            meta = reg.info(name).meta
        except OccError as exc:
            broken.append(exc)  # the reason goes to stderr on one line: a table cell would cut it up
            table.add_row(name, "[red]unusable[/red]", "", "", "", "", "", "")
            continue
        cal = _calibration(meta)
        table.add_row(name, meta.get("kind", "?"), str(meta.get("n_target", "?")),
                      fmt(cal.calibrated_threshold), fmt(cal.tpr), fmt(cal.achieved_far),
                      (meta.get("backbone") or {}).get("spec") or "?", str(meta.get("created", "?")))
    out.print(table)
    for exc in broken:
        err.print(f"[red]unusable:[/red] {markup_line(exc)}", markup=True)
    if broken:
        raise typer.Exit(1)


def _calibration(meta):
    from occ.calibration import Calibration

    return Calibration.from_dict(meta["calibration"])


@sources_app.command("show")
@handle_errors
def sources_show(name: str, registry: RegistryOpt = None) -> None:
    """Everything stored about one source (settings, calibration, provenance)."""
    reg = open_registry(registry)
    meta = reg.info(name).meta
    cal = _calibration(meta)
    summary = {k: v for k, v in meta.items() if k not in ("calibration", "training_images", "checksum", "files")}
    summary["calibration"] = {"far": cal.far, "target_tpr": cal.target_tpr,
                              "threshold_calibrated": cal.calibrated_threshold, "threshold_raw": cal.threshold,
                              "heldout_tpr": cal.tpr,
                              "heldout_far": cal.achieved_far, "heldout_auc": cal.auc,
                              "heldout_target": len(cal.pos_scores), "heldout_nontarget": len(cal.neg_scores)}
    summary["training_images_sha256"] = meta.get("training_images", [])
    out.print_json(json.dumps(summary))


@sources_app.command("remove")
@handle_errors
def sources_remove(name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
                   registry: RegistryOpt = None) -> None:
    """Remove an enrolled source (asks first unless --yes)."""
    reg = open_registry(registry)
    reg.info(name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to remove '{name}' without --yes (no terminal to ask)")
        typer.confirm(f"remove source '{name}' from {reg.root}?", abort=True)
    reg.remove(name)
    err.print(f"removed '{name}'")


@sources_app.command("set-threshold")
@handle_errors
def sources_set_threshold(
    name: str,
    far: Annotated[float | None, typer.Option("--far", help="New highest held-out false-accept rate.")] = None,
    tpr: Annotated[float | None, typer.Option("--tpr", help="New share of held-out target images to accept.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Re-choose a source's threshold from its stored held-out scores (no retraining)."""
    if far is None and tpr is None:
        raise UsageError("give --far and/or --tpr")
    reg = open_registry(registry)
    tensors, meta = reg.load(name)
    cal = _calibration(meta).with_far(far, tpr)
    meta["calibration"] = cal.to_dict()
    reg.save(name, tensors, meta, replace=True)
    err.print(f"'{name}': threshold {fmt(cal.calibrated_threshold)} (FAR <= {cal.far:g}, TPR <= {cal.target_tpr:g}): "
              f"held-out TPR {fmt(cal.tpr)}, FAR {fmt(cal.achieved_far)}")
