"""``occ verify`` and ``occ attribute``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from occ.cli.common import (
    BackboneOpt,
    CsvOpt,
    DeviceOpt,
    JsonOpt,
    RegistryOpt,
    ThreadsOpt,
    apply_threads,
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
from occ.cli.output import CsvRows, ImageProgress, count_images, output_format, summary
from occ.errors import UsageError


@handle_errors
def verify(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    source: Annotated[str, typer.Option("--source", help="The enrolled source to verify against.")],
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Score images against one source: calibrated score, threshold, accept/reject.

    Scores are calibrated probabilities (0..1) that the image comes from the source; the threshold
    keeps held-out false accepts at the source's --far.
    """
    from collections import Counter

    from occ.attribution import Attributor, verify_row

    fmt_out = output_format(as_json, as_csv)
    apply_threads(threads)
    reg = open_registry(registry)
    if source not in reg:
        raise UsageError(f"no source named '{source}' in registry {reg.root} (enrolled: "
                         f"{', '.join(reg.names()) or 'none'})")
    reg.info(source)  # a damaged verifier.json is reported before any backbone is loaded
    bb = backbone_for(backbone, reg, [source], device=device)
    attributor = Attributor.from_registry(reg, bb, [source])
    failures = 0
    rows = []
    outcome = Counter()
    csv_rows = CsvRows(["path", "source", "score", "threshold", "accepted"]) if fmt_out == "csv" else None
    bar = ImageProgress(f"verifying against '{source}'", count_images(paths))

    def on_error(exc):
        nonlocal failures
        failures += 1
        bar.advance()
        if csv_rows:
            csv_rows.row({"path": exc.path, "error": exc.reason})
        else:
            report_file_error(exc, as_json)

    with bar:
        for d in attributor.run(paths, on_error):
            bar.advance()
            row = verify_row(d, source)
            outcome["accepted" if row["accepted"] else "rejected"] += 1
            if as_json:
                print(json.dumps(row), flush=True)
            elif csv_rows:
                csv_rows.row(dict(row, accepted=str(row["accepted"]).lower()))
            else:
                rows.append((markup_path(d.path), fmt(d.scores[source]), fmt(d.thresholds[source]),
                             "[green]yes[/green]" if row["accepted"] else "no"))
    summary("verify", bar.done - failures, failures, bar.seconds, outcome)
    if fmt_out == "table" and rows:
        table = Table(title=f"verify against '{source}'")
        for col in ("image", "score", "threshold", "accepted"):
            table.add_column(col, overflow="fold" if col == "image" else "ellipsis")  # never cut a file name
        for row in rows:
            table.add_row(*row)
        out.print(table)
    raise typer.Exit(1 if failures else 0)


@handle_errors
def attribute(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    engine: Annotated[str, typer.Option("--engine", help="'local' (this process) or 'ray' (a pool of Ray "
                                        "actors; needs the 'ray' extra of occ).")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join (engine ray; "
                                                    "default: start a local Ray runtime).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Ray actors (engine ray; default: the "
                                                "cluster's CPUs / --threads).", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the rows to this .parquet file instead "
                                                "of stdout (engine ray).")] = None,
) -> None:
    """Name the source of each image among all enrolled sources, or 'unknown' when none accepts.

    Every enrolled verifier scores the image; among those that accept, the highest calibrated score
    wins. Scores are calibrated probabilities (0..1), comparable across sources.
    """
    from collections import Counter

    from occ.attribution import Attributor, attribute_row

    fmt_out = output_format(as_json, as_csv)
    if engine not in ("local", "ray"):
        raise UsageError(f"unknown engine {engine!r}; choose from local, ray")
    if engine != "ray" and (output is not None or ray_address or workers is not None):
        raise UsageError("--output, --ray-address and --workers go with --engine ray")
    reg = open_registry(registry)
    if len(reg) == 0:  # before loading (perhaps fetching) a backbone
        raise UsageError(f"registry {reg.root} is empty: enroll a source first with `occ enroll`")
    if engine == "ray":
        from occ.cli.batch import attribute_on_ray

        attribute_on_ray(paths, reg, fmt_out, backbone=backbone, threads=threads, device=device,
                         address=ray_address, workers=workers, output=output)
    apply_threads(threads)
    bb = backbone_for(backbone, reg, device=device)
    skipped = []

    def on_skip(name, exc):
        skipped.append(name)
        err.print(f"[yellow]source '{name}' left out:[/yellow] {markup_line(exc)}", markup=True)

    attributor = Attributor.from_registry(reg, bb, on_skip=on_skip)
    failures = 0
    rows = []
    outcome = Counter()
    names = list(attributor.verifiers)
    csv_rows = CsvRows(attribute_csv_columns(names)) if fmt_out == "csv" else None
    bar = ImageProgress(f"attributing over {len(names)} source(s)", count_images(paths))

    def on_error(exc):
        nonlocal failures
        failures += 1
        bar.advance()
        if csv_rows:
            csv_rows.row({"path": exc.path, "error": exc.reason})
        else:
            report_file_error(exc, as_json)

    with bar:
        for d in attributor.run(paths, on_error):
            bar.advance()
            row = attribute_row(d)
            outcome[d.source or "unknown"] += 1
            if as_json:
                print(json.dumps(row), flush=True)
            elif csv_rows:
                csv_rows.row(attribute_csv_row(row))
            else:
                rows.append(row)
    summary("attribute", bar.done - failures, failures, bar.seconds, outcome)
    print_attribution_table(rows, len(names))
    raise typer.Exit(1 if failures or skipped else 0)


def print_attribution_table(rows: list[dict], n_sources: int) -> None:
    """``attribute --json`` objects as a table on stdout (nothing when there are none)."""
    if not rows:
        return
    table = Table(title=f"attribution over {n_sources} source(s)")
    for col in ("image", "source", "best score", "accepted by"):
        table.add_column(col, overflow="fold" if col == "image" else "ellipsis")
    for row in rows:
        best = max(row["scores"].items(), key=lambda kv: kv[1])
        table.add_row(markup_path(row["path"]), row["source"] or "[dim]unknown[/dim]", f"{best[0]} {fmt(best[1])}",
                      ", ".join(row["accepted"]) or "-")
    out.print(table)


def attribute_csv_columns(sources) -> list[str]:
    return ["path", "source", "accepted", *(f"score:{name}" for name in sources)]


def attribute_csv_row(row: dict) -> dict:
    """An ``attribute --json`` object as a CSV row (accepted sources joined by ';', best first)."""
    return {"path": row["path"], "source": row["source"] or "unknown", "accepted": ";".join(row["accepted"]),
            **{f"score:{k}": v for k, v in row["scores"].items()}}
