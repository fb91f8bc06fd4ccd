"""``occ export`` and ``occ import``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from occ.cli.common import RegistryOpt, err, handle_errors, markup_path, open_registry, stage_progress, warn
from occ.cli.refit import refit_options
from occ.sources import export


@handle_errors
def export_cmd(name: Annotated[str, typer.Argument(help="The source to export.")],
               file: Annotated[Path, typer.Argument(help="File to write, or an existing folder to write "
                                                    "NAME.occ.zip into.")],
               replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing file.")] = False,
               registry: RegistryOpt = None) -> None:
    """Write one source to a single file that `occ import` checks before it writes anything. The file
    records what decides the source here; imported elsewhere, an lda source is decided by that registry's
    joint model."""
    from rich.markup import escape

    path, record = export(open_registry(registry), name, file, replace=replace)
    decided = "" if record.threshold is None else f" (threshold {record.threshold:.3f}, decided by {record.describe()})"
    err.print(f"exported '{name}' to {markup_path(path)}{escape(decided)}", markup=True)


@handle_errors
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A file made by `occ export`.")],
    as_name: Annotated[str | None, typer.Option("--as", help="Store under another name.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing source of that name.")] = False,
    allow_overlap: Annotated[bool, typer.Option("--allow-overlap", help="Import a source whose training images "
                                                "are also training images of another source (warned about).")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Add a source from a file made by `occ export` (validated first; a bad file writes nothing); the
    registry's joint model is then refitted with it. Refuses a source whose training images are training
    images of another source here (unless --allow-overlap), as `occ enroll` does."""
    # deferred: loads PIL and torch, which occ --help, occ sources and cached scoring never import
    from occ.enrollment import check_overlaps

    reg = open_registry(registry)
    overlaps: dict[str, int] = {}

    def check(name: str, record: dict) -> None:
        overlaps.update(check_overlaps(reg, name, set(record.get("training_images", [])), allow_overlap, "import"))

    with stage_progress("refit: {stage}") as on_progress:
        record = reg.import_file(file, as_name=as_name, replace=replace, refit=refit_options(on_progress), check=check)
    err.print(f"imported '{record.name}'", markup=False)
    for other, n in overlaps.items():
        warn(f"{n} of its training images are also training images of source '{other}'")
