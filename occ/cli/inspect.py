"""``occ inspect``, and what ``--provenance`` adds to ``occ verify`` / ``occ attribute``: the provenance
evidence in image files' metadata (:mod:`occ.provenance`), shown beside the pixel verdict, never in it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from occ.cli.common import InputErrors, handle_errors, json_option, markup_path, out, print_table
from occ.errors import ImageError, UsageError

TrustListOpt = Annotated[
    Path | None,
    typer.Option("--trust-list", help="PEM file of certificates a C2PA signer must chain to for its manifest "
                 "to count as signed and valid (needs the 'provenance' extra).", show_default=False),
]
ProvenanceOpt = Annotated[
    bool,
    typer.Option("--provenance", help="Add the provenance evidence of each file's metadata (C2PA, XMP/IPTC, "
                 "PNG text, EXIF; see `occ inspect`) under \"provenance\", and say where it disagrees with the "
                 "pixels. Scores and decisions never depend on it."),
]


def inspector(trust_list: Path | None):
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ.provenance import Inspector, load_trust_list

    return Inspector(load_trust_list(trust_list) if trust_list is not None else None)


def scoring_inspector(provenance: bool, trust_list: Path | None):
    """The inspector for ``verify`` / ``attribute`` with ``--provenance``, else None."""
    if trust_list is not None and not provenance:
        raise UsageError("--trust-list applies to the provenance evidence: add --provenance")
    return inspector(trust_list) if provenance else None


def evidence(reader, path: str, pixel_source: str | None, candidates: Sequence[str]) -> tuple[dict, str]:
    """The ``"provenance"`` object of one verify/attribute result (the file's evidence, and whether it
    disagrees with the pixel verdict: ``pixel_source`` among ``candidates``) and its short table cell."""
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ.provenance import disagreement

    try:
        found = reader.inspect(path)
    except ImageError as exc:  # the file changed or vanished since it was scored
        return {"error": exc.reason}, "[red]unreadable[/red]"
    said = disagreement(found, pixel_source, candidates)
    cell = escape(found.summary()) + (" [yellow](disagrees)[/yellow]" if said else "")
    return {**found.to_dict(), "disagreement": said}, cell


def print_disagreements(rows: Sequence[tuple[str, dict]]) -> None:
    """Below a table: one line per image whose metadata disagrees with its pixel verdict."""
    for path, obj in rows:
        if obj.get("disagreement"):
            out.print(f"[yellow]disagreement:[/yellow] {markup_path(path)}: {escape(obj['disagreement'])}",
                      markup=True, soft_wrap=True)


@handle_errors
def inspect_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    as_json: Annotated[bool, json_option("one JSON object per image (or per unreadable file)")] = False,
    trust_list: TrustListOpt = None,
) -> None:
    """Show the provenance evidence in image files' metadata, with how far each piece can be trusted.

    signed-valid: a C2PA manifest whose signature and hashes verify (and whose signer chains to
    --trust-list when given); signed-invalid: one that fails, with what failed; unsigned-claim: XMP/IPTC
    DigitalSourceType, AUTOMATIC1111/ComfyUI PNG text, EXIF Software (trivially forged or stripped);
    unreadable: malformed or unverifiable metadata. Absent metadata proves nothing: most platforms strip it.
    """
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ.images import iter_paths

    reader = inspector(trust_list)
    failures = InputErrors(as_json)
    rows = []
    for item in iter_paths(paths):
        try:
            if isinstance(item, ImageError):
                raise item
            found = reader.inspect(item)
        except ImageError as exc:
            failures(exc)
            continue
        if as_json:
            print(json.dumps({"path": found.path, "provenance": found.to_dict()}), flush=True)
        else:
            lines = "\n".join(escape(e.describe()) for e in found.items) or "[dim]no provenance metadata[/dim]"
            rows.append((markup_path(found.path), found.level, lines))
    if rows:
        print_table("provenance evidence", ("image", "level", "evidence"), rows)
    raise typer.Exit(1 if failures.count else 0)
