"""``occ verify`` and ``occ attribute``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from occ.cli import inspect as provenance_cli
from occ.cli.batch import attribute_on_ray
from occ.cli.common import (
    BackboneOpt,
    CsvOpt,
    DeviceOpt,
    RegistryOpt,
    ThreadsOpt,
    apply_threads,
    backbone_for,
    fmt,
    handle_errors,
    json_option,
    markup_path,
    open_registry,
    print_table,
    report_file_error,
    report_left_out,
    warn,
)
from occ.cli.output import (
    CsvRows,
    ImageProgress,
    attribute_csv_columns,
    attribute_csv_row,
    count_images,
    error_cells,
    output_format,
    print_attribution_table,
    summary,
    with_error_column,
)
from occ.errors import ImageError, UsageError
from occ.sources import require_enrolled

PathsArg = Annotated[list[Path], typer.Argument(help="Image files or folders.")]
PerImageJson = Annotated[bool, json_option("one JSON object per image (or per unreadable file)")]


def warn_if_stale(attributor) -> None:
    if attributor.joint_stale:
        warn("the registry's stored joint model does not match its sources (an interrupted enroll or refit?): "
             "fitted again in memory for this run; `occ refit` stores it")


def _failed(exc, bar: ImageProgress, csv_rows: CsvRows | None, fmt_out: str, failures: list) -> None:
    """A file that could not be used, in its place among the results: counted, and its row where the
    results go (a JSON line, a CSV row with the error column; for the table, a line on stderr now and its
    row in the table at the end)."""
    failures.append(exc)
    bar.advance()
    if csv_rows:
        csv_rows.row({"path": exc.path, "error": exc.reason})
    else:
        report_file_error(exc, fmt_out == "json")


@handle_errors
def verify(
    paths: PathsArg,
    source: Annotated[str, typer.Option("--source", help="The enrolled source to verify against.")],
    as_json: PerImageJson = False,
    as_csv: CsvOpt = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    provenance: provenance_cli.ProvenanceOpt = False,
    trust_list: provenance_cli.TrustListOpt = None,
) -> None:
    """Score images against one source: score (0..1), threshold, accept/reject, and the reason when an
    image whose score reaches the threshold is not accepted.

    The threshold is the one that decides the source (`occ sources` shows the same) and obeys its two
    rules from enrollment: at most --far of held-out non-target images and at most --tpr of held-out
    target images accepted (the stricter wins). A prompt or probe source accepts when the score reaches
    the threshold. An lda source (the default) is decided by the registry's joint model, so verify and
    attribute agree: it accepts when the score reaches the threshold, no other source scores higher and
    the image lies within the source's range (no farther from its centre than 99% of its own held-out
    images); otherwise a row that reaches the threshold says why it was not accepted ("nearer to OTHER",
    "outside SOURCE's range": JSON and CSV "reason", a note in the table).
    """
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ.attribution import Attributor, verify_row

    fmt_out = output_format(as_json, as_csv)
    inspector = provenance_cli.scoring_inspector(provenance, trust_list)
    apply_threads(threads)
    reg = open_registry(registry)
    if source not in reg:
        raise UsageError(f"no source named '{source}' in registry {reg.root} (enrolled: "
                         f"{', '.join(reg.names()) or 'none'})")
    reg.info(source)  # a damaged verifier.json is reported before any backbone is loaded
    bb = backbone_for(backbone, reg, [source], device=device)
    attributor = Attributor.from_registry(reg, bb, [source])
    warn_if_stale(attributor)
    failures, rows, found, outcome = [], [], [], Counter()
    csv_rows = CsvRows(["path", "source", "score", "threshold", "accepted", "reason"]) if fmt_out == "csv" else None
    bar = ImageProgress(f"verifying against '{source}'", count_images(paths))
    with bar:
        for d in attributor.results(paths):
            if isinstance(d, ImageError):
                _failed(d, bar, csv_rows, fmt_out, failures)
                if fmt_out == "table":
                    rows.append((markup_path(d.path), "-", "-", "[red]error[/red]", *(["-"] if inspector else []),
                                 d.reason))
                continue
            bar.advance()
            row = verify_row(d, source)
            outcome["accepted" if row["accepted"] else "rejected"] += 1
            cell = None
            if inspector is not None:  # beside the verdict, read after it: it cannot change it
                obj, cell = provenance_cli.evidence(inspector, d.path, source if row["accepted"] else None, [source])
                row["provenance"] = obj
                found.append((d.path, obj))
            if fmt_out == "json":
                print(json.dumps(row), flush=True)
            elif csv_rows:
                csv_rows.row(dict({k: v for k, v in row.items() if k != "provenance"},
                                  accepted=str(row["accepted"]).lower()))
            else:
                verdict = "[green]yes[/green]" if row["accepted"] else "no"
                if row["reason"]:
                    verdict += f" [yellow]({escape(row['reason'])})[/yellow]"
                rows.append((markup_path(d.path), fmt(d.scores[source]), fmt(d.thresholds[source]), verdict,
                             *([cell] if cell is not None else []), None))
    summary("verify", bar.done - len(failures), len(failures), bar.seconds, outcome)
    if rows and fmt_out == "table":
        columns = ("image", "score", "threshold", "accepted", *(["provenance"] if inspector else []))
        print_table(f"verify against '{source}'", with_error_column(columns, rows), error_cells(rows))
        provenance_cli.print_disagreements(found)
    raise typer.Exit(1 if failures else 0)


@handle_errors
def attribute(
    paths: PathsArg,
    as_json: PerImageJson = False,
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
    provenance: provenance_cli.ProvenanceOpt = False,
    trust_list: provenance_cli.TrustListOpt = None,
) -> None:
    """Name the source of each image among all enrolled sources, or 'unknown' when none accepts.

    lda sources (the default) are decided together by the registry's joint model: the nearest source is
    named when its score reaches its threshold and the image lies within its range (the spread of its own
    held-out images). Sources of other kinds accept when their score reaches their threshold (see `occ
    verify --help`). Among accepting sources the highest score wins; scores (0..1) compare across
    sources. A source whose score reaches its threshold and that does not accept is named with why
    ("reason": "a: nearer to b", "a: outside a's range"; a note in the table).
    """
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ.attribution import Attributor, attribute_row, error_row

    fmt_out = output_format(as_json, as_csv)
    inspector = provenance_cli.scoring_inspector(provenance, trust_list)
    if engine not in ("local", "ray"):
        raise UsageError(f"unknown engine {engine!r}; choose from local, ray")
    if engine != "ray" and (output is not None or ray_address or workers is not None):
        raise UsageError("--output, --ray-address and --workers go with --engine ray")
    if engine == "ray" and inspector is not None:
        raise UsageError("--provenance goes with the local engine")
    reg = open_registry(registry)
    require_enrolled(reg)  # before loading (perhaps fetching) a backbone
    if engine == "ray":
        attribute_on_ray(paths, reg, fmt_out, backbone=backbone, threads=threads, device=device,
                         address=ray_address, workers=workers, output=output)
    apply_threads(threads)
    bb = backbone_for(backbone, reg, device=device)
    skipped = []

    def on_skip(name, exc):
        skipped.append(name)
        report_left_out(name, exc)

    attributor = Attributor.from_registry(reg, bb, on_skip=on_skip)
    warn_if_stale(attributor)
    failures, rows, found, outcome = [], [], [], Counter()
    names = list(attributor.verifiers)
    csv_rows = CsvRows(attribute_csv_columns(names)) if fmt_out == "csv" else None
    bar = ImageProgress(f"attributing over {len(names)} source(s)", count_images(paths))
    with bar:
        for d in attributor.results(paths):
            if isinstance(d, ImageError):
                _failed(d, bar, csv_rows, fmt_out, failures)
                if fmt_out == "table":
                    rows.append((error_row(d), "-" if inspector else None))
                continue
            bar.advance()
            row = attribute_row(d)
            outcome[d.source or "unknown"] += 1
            cell = None
            if inspector is not None:  # beside the verdict, read after it: it cannot change it
                row["provenance"], cell = provenance_cli.evidence(inspector, d.path, d.source, names)
                found.append((d.path, row["provenance"]))
            if fmt_out == "json":
                print(json.dumps(row), flush=True)
            elif csv_rows:
                csv_rows.row(attribute_csv_row(row))
            else:
                rows.append((row, cell))
    summary("attribute", bar.done - len(failures), len(failures), bar.seconds, outcome)
    if rows and fmt_out == "table":
        print_attribution_table([r for r, _ in rows], len(names), [c for _, c in rows] if inspector else None)
        provenance_cli.print_disagreements(found)
    raise typer.Exit(1 if failures or skipped else 0)
