"""``occ verify`` and ``occ attribute``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from occ.cli import inspect as provenance_cli
from occ.cli.common import (
    BackboneOpt,
    JsonOpt,
    RegistryOpt,
    backbone_for,
    err,
    fmt,
    handle_errors,
    markup_line,
    markup_path,
    open_registry,
    out,
    report_file_error,
)
from occ.errors import UsageError


@handle_errors
def verify(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    source: Annotated[str, typer.Option("--source", help="The enrolled source to verify against.")],
    as_json: JsonOpt = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    provenance: provenance_cli.ProvenanceOpt = False,
    trust_list: provenance_cli.TrustListOpt = None,
) -> None:
    """Score images against one source: calibrated score, threshold, accept/reject.

    Scores are calibrated probabilities (0..1) that the image comes from the source; the threshold
    keeps held-out false accepts at the source's --far.
    """
    from occ.attribution import Attributor

    inspector = provenance_cli.scoring_inspector(provenance, trust_list)
    reg = open_registry(registry)
    if source not in reg:
        raise UsageError(f"no source named '{source}' in registry {reg.root} (enrolled: "
                         f"{', '.join(reg.names()) or 'none'})")
    reg.info(source)  # a damaged verifier.json is reported before any backbone is loaded
    bb = backbone_for(backbone, reg, [source])
    attributor = Attributor.from_registry(reg, bb, [source])
    failures = 0
    rows = []

    def on_error(exc):
        nonlocal failures
        failures += 1
        report_file_error(exc, as_json)

    found = []
    for d in attributor.run(paths, on_error):
        score, threshold = d.scores[source], d.thresholds[source]
        accepted = source in d.accepted
        extra, cell = {}, None
        if inspector is not None:  # beside the verdict, read after it: it cannot change it
            obj, cell = provenance_cli.evidence(inspector, d.path, source if accepted else None, [source])
            extra = {"provenance": obj}
            found.append((d.path, obj))
        if as_json:
            print(json.dumps({"path": d.path, "source": source, "score": round(score, 6),
                              "threshold": round(threshold, 6), "accepted": accepted, **extra}), flush=True)
        else:
            rows.append((markup_path(d.path), fmt(score), fmt(threshold), "[green]yes[/green]" if accepted else "no",
                         *([cell] if cell is not None else [])))
    if not as_json and rows:
        table = Table(title=f"verify against '{source}'")
        for col in ("image", "score", "threshold", "accepted", *(["provenance"] if inspector else [])):
            table.add_column(col, overflow="fold" if col == "image" else "ellipsis")  # never cut a file name
        for row in rows:
            table.add_row(*row)
        out.print(table)
        provenance_cli.print_disagreements(found)
    raise typer.Exit(1 if failures else 0)


@handle_errors
def attribute(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    as_json: JsonOpt = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    provenance: provenance_cli.ProvenanceOpt = False,
    trust_list: provenance_cli.TrustListOpt = None,
) -> None:
    """Name the source of each image among all enrolled sources, or 'unknown' when none accepts.

    Every enrolled verifier scores the image; among those that accept, the highest calibrated score
    wins. Scores are calibrated probabilities (0..1), comparable across sources.
    """
    from occ.attribution import Attributor

    inspector = provenance_cli.scoring_inspector(provenance, trust_list)
    reg = open_registry(registry)
    if len(reg) == 0:  # before loading (perhaps fetching) a backbone
        raise UsageError(f"registry {reg.root} is empty: enroll a source first with `occ enroll`")
    bb = backbone_for(backbone, reg)
    skipped = []

    def on_skip(name, exc):
        skipped.append(name)
        err.print(f"[yellow]source '{name}' left out:[/yellow] {markup_line(exc)}", markup=True)

    attributor = Attributor.from_registry(reg, bb, on_skip=on_skip)
    failures = 0
    rows = []

    def on_error(exc):
        nonlocal failures
        failures += 1
        report_file_error(exc, as_json)

    found = []
    for d in attributor.run(paths, on_error):
        extra, cell = {}, None
        if inspector is not None:  # beside the verdict, read after it: it cannot change it
            obj, cell = provenance_cli.evidence(inspector, d.path, d.source, list(attributor.verifiers))
            extra = {"provenance": obj}
            found.append((d.path, obj))
        if as_json:
            print(json.dumps({"path": d.path, "source": d.source,
                              "scores": {k: round(v, 6) for k, v in d.scores.items()},
                              "accepted": d.accepted, **extra}), flush=True)
        else:
            best = max(d.scores.items(), key=lambda kv: kv[1])
            rows.append((markup_path(d.path), d.source or "[dim]unknown[/dim]", f"{best[0]} {fmt(best[1])}",
                         ", ".join(d.accepted) or "-", *([cell] if cell is not None else [])))
    if not as_json and rows:
        table = Table(title=f"attribution over {len(attributor.verifiers)} source(s)")
        for col in ("image", "source", "best score", "accepted by", *(["provenance"] if inspector else [])):
            table.add_column(col, overflow="fold" if col == "image" else "ellipsis")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        provenance_cli.print_disagreements(found)
    raise typer.Exit(1 if failures or skipped else 0)
