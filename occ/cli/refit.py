"""``occ refit``: refit the registry-wide joint model over every enrolled lda source."""

from __future__ import annotations

import time

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


def refit_registry(reg, backbone_spec: str | None) -> None:
    """Refit the joint model of ``reg``'s lda sources (one per backbone they were enrolled on, or only
    ``backbone_spec``'s), with progress, and say what was fitted (read back from the fitted model)."""
    from occ.openset import discard, joint_backbones, refit

    groups = joint_backbones(reg)
    if not groups:
        discard(reg)
        return
    for spec in [backbone_spec] if backbone_spec is not None else list(groups):
        bb = backbone_for(spec, reg)
        start = time.perf_counter()
        with stage_progress("refit: {stage}") as on_progress:
            model = refit(reg, bb, progress=on_progress, on_skip=report_left_out)
        if model is None:
            err.print(f"no lda source made on backbone {bb.fingerprint}: nothing to refit", markup=False)
            continue
        err.print(f"joint model refitted over {len(model.names_)} source(s) ({', '.join(model.names_)}) and "
                  f"{model.n_rows_['non-target']} non-target rows in {time.perf_counter() - start:.1f} s",
                  markup=False)


@handle_errors
def refit_cmd(registry: RegistryOpt = None, backbone: BackboneOpt = None) -> None:
    """Refit the registry-wide model that decides among lda sources (done after every enroll, replace and
    remove; run it after an interrupted one, or to bring an older registry up to date)."""
    from occ.sources import require_enrolled

    reg = open_registry(registry)
    require_enrolled(reg)
    refit_registry(reg, backbone)
