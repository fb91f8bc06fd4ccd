"""``occ verify`` and ``occ attribute``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from occ.cli import inspect as provenance_cli
from occ.cli.common import (
    BackboneOpt,
    InputErrors,
    RegistryOpt,
    backbone_for,
    fmt,
    handle_errors,
    json_option,
    markup_path,
    open_registry,
    print_table,
    report_left_out,
    warn,
)
from occ.errors import UsageError

PathsArg = Annotated[list[Path], typer.Argument(help="Image files or folders.")]
PerImageJson = Annotated[bool, json_option("one JSON object per image (or per unreadable file)")]


def warn_if_stale(attributor) -> None:
    if attributor.joint_stale:
        warn("the registry's stored joint model does not match its sources (an interrupted enroll or refit?): "
             "fitted again in memory for this run; `occ refit` stores it")


@handle_errors
def verify(
    paths: PathsArg,
    source: Annotated[str, typer.Option("--source", help="The enrolled source to verify against.")],
    as_json: PerImageJson = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    provenance: provenance_cli.ProvenanceOpt = False,
    trust_list: provenance_cli.TrustListOpt = None,
) -> None:
    """Score images against one source: score (0..1), threshold, accept/reject.

    The source's threshold obeys its two rules from enrollment: at most --far of held-out non-target
    images and at most --tpr of held-out target images accepted (the stricter wins). An lda source
    accepts only an image that the registry's joint model attributes to it, so verify and attribute agree.
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
    warn_if_stale(attributor)
    failures = InputErrors(as_json)
    rows = []
    found = []
    for d in attributor.run(paths, failures):
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
    if rows:
        print_table(f"verify against '{source}'",
                    ("image", "score", "threshold", "accepted", *(["provenance"] if inspector else [])), rows)
        provenance_cli.print_disagreements(found)
    raise typer.Exit(1 if failures.count else 0)


@handle_errors
def attribute(
    paths: PathsArg,
    as_json: PerImageJson = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    provenance: provenance_cli.ProvenanceOpt = False,
    trust_list: provenance_cli.TrustListOpt = None,
) -> None:
    """Name the source of each image among all enrolled sources, or 'unknown' when none accepts.

    lda sources (the default) are decided together by the registry's joint model: the nearest source is
    named when its margin reaches its threshold and the image lies within the spread of its own held-out
    images. Sources of other kinds accept when their score reaches their threshold (see `occ verify
    --help`). Among accepting sources the highest score wins; scores (0..1) compare across sources.
    """
    from occ.attribution import Attributor
    from occ.sources import require_enrolled

    inspector = provenance_cli.scoring_inspector(provenance, trust_list)
    reg = open_registry(registry)
    require_enrolled(reg)  # before loading (perhaps fetching) a backbone
    bb = backbone_for(backbone, reg)
    skipped = []

    def on_skip(name, exc):
        skipped.append(name)
        report_left_out(name, exc)

    attributor = Attributor.from_registry(reg, bb, on_skip=on_skip)
    warn_if_stale(attributor)
    failures = InputErrors(as_json)
    rows = []
    found = []
    for d in attributor.run(paths, failures):
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
    if rows:
        print_table(f"attribution over {len(attributor.verifiers)} source(s)",
                    ("image", "source", "best score", "accepted by", *(["provenance"] if inspector else [])), rows)
        provenance_cli.print_disagreements(found)
    raise typer.Exit(1 if failures.count or skipped else 0)
