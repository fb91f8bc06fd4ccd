"""``occ refit``: refit the registry-wide joint model over every enrolled lda source; and how every
command that changes the registry shows the refit the library does after it."""

from __future__ import annotations

from dataclasses import replace

import typer

from occ.cli.common import (
    BackboneOpt,
    RegistryOpt,
    backbone_for,
    err,
    handle_errors,
    open_registry,
    report_left_out,
    stage_progress,
)
from occ.openset import RefitOptions, sync
from occ.sources import require_enrolled


def report_fit(model, seconds: float) -> None:
    """One line on stderr for a joint model the library fitted (read back from the fitted model)."""
    err.print(f"joint model refitted over {len(model.names_)} source(s) ({', '.join(model.names_)}) and "
              f"{model.n_rows_['non-target']} non-target rows in {seconds:.1f} s", markup=False)
    if model.without_crops_:
        err.print(f"the joint model reads no native-resolution crops: {', '.join(model.without_crops_)} "
                  "were enrolled by an older occ; re-enroll them to use the crops", markup=False)


def refit_options(on_progress, backbone=None):
    """The :class:`occ.openset.RefitOptions` of a command: progress, sources left out and every model
    fitted said on stderr, backbones loaded as the commands load them."""
    return RefitOptions(backbone=backbone, progress=on_progress, on_skip=report_left_out, on_fit=report_fit,
                        load=lambda spec: backbone_for(spec))


@handle_errors
def refit_cmd(registry: RegistryOpt = None, backbone: BackboneOpt = None) -> None:
    """Refit the registry-wide model that decides among lda sources (the library does it after every
    enroll, replace, remove, import and set-threshold; run it after an interrupted one, or to bring an
    older registry up to date). Exit code 1 when a source had to be left out (one line on stderr each:
    which, and why); the model is then refitted over the others."""
    reg = open_registry(registry)
    require_enrolled(reg)
    bb = backbone_for(backbone, reg) if backbone is not None else None
    left_out = []

    def leave_out(name, exc) -> None:
        left_out.append(name)
        report_left_out(name, exc)

    with stage_progress("refit: {stage}") as on_progress:
        options = replace(refit_options(on_progress, bb), on_skip=leave_out)
        models = sync(reg, None if bb is None else [bb.fingerprint], options, force=True)
    if bb is not None and not models:
        err.print(f"no lda source made on backbone {bb.fingerprint}: nothing to refit", markup=False)
    if left_out:
        raise typer.Exit(1)
