"""``occ attribute --engine ray``: the same rows as the local engine, computed by a pool of Ray actors
(:mod:`occ.distributed`), in input order, as JSON lines, CSV, a table, or one Parquet file."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import typer

from occ import distributed
from occ.cli.common import err, markup_line
from occ.cli.output import (
    CsvRows,
    ImageProgress,
    attribute_csv_columns,
    attribute_csv_row,
    print_attribution_table,
    summary,
)
from occ.errors import OccError, RegistryError, UsageError
from occ.sources import sources_backbone_spec
from occ.threads import resolve


def attribute_on_ray(paths, reg, fmt_out: str, *, backbone, threads, device, address, workers, output) -> None:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs the 'ray' extra of occ: pip install 'occ[ray]'") from None

    if output is not None and output.suffix != ".parquet":
        raise UsageError(f"--output {output}: only .parquet files are written")
    if output is not None and fmt_out != "table":
        raise UsageError("--output writes Parquet: leave out --json and --csv")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    per_worker = resolve(threads) if threads is not None else 1
    spec = backbone if backbone is not None else sources_backbone_spec(reg)
    if spec is not None and Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())  # workers may run elsewhere
    names, skipped = [], []
    for name in reg.names():
        try:
            reg.load(name)  # checksums: a damaged source is left out here, not in every worker
            names.append(name)
        except OccError as exc:
            skipped.append(name)
            err.print(f"[yellow]source '{name}' left out:[/yellow] {markup_line(exc)}", markup=True)
    if not names:
        raise RegistryError(f"none of the enrolled sources in registry {reg.root} can be used")
    with err.status("starting Ray", spinner="dots") if err.is_terminal else contextlib.nullcontext():
        distributed.init(address)
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // per_worker)
    err.print(f"Ray cluster at {ray.get_runtime_context().gcs_address}: {workers} worker(s) of {per_worker} "
              "thread(s)", markup=False)
    total, batches = distributed.attribute_paths(paths, registry_root=reg.root, sources=names, backbone=spec,
                                                 workers=workers, threads=per_worker, device=device)
    failures, outcome, rows = 0, Counter(), []
    csv_rows = CsvRows(attribute_csv_columns(names)) if fmt_out == "csv" else None
    bar = ImageProgress(f"attributing on {workers} Ray worker(s)", total)

    def counted(batches):
        nonlocal failures
        for batch in batches:
            errors = sum(e is not None for e in batch.column("error").to_pylist())
            failures += errors
            outcome.update(s or "unknown" for s, e in zip(batch.column("source").to_pylist(),
                                                         batch.column("error").to_pylist()) if e is None)
            bar.advance(batch.num_rows)
            yield batch

    with bar:
        if output is not None:
            written = distributed.write_parquet(counted(batches), output, names)
        else:
            for batch in counted(batches):
                for row in distributed.json_rows(batch):
                    if "error" in row:
                        if csv_rows:
                            csv_rows.row(row)
                        elif fmt_out == "json":
                            print(json.dumps(row), flush=True)
                        else:  # the table shows it in its place; the line says it now
                            err.print(f"[yellow]skipped[/yellow] {markup_line(row['path'] + ': ' + row['error'])}",
                                      markup=True)
                            rows.append(row)
                    elif csv_rows:
                        csv_rows.row(attribute_csv_row(row))
                    elif fmt_out == "json":
                        print(json.dumps(row), flush=True)
                    else:
                        rows.append(row)
    summary("attribute", bar.done - failures, failures, bar.seconds, outcome)
    if output is not None:
        err.print(f"wrote {written} rows to {output}", markup=False)
    print_attribution_table(rows, len(names))
    raise typer.Exit(1 if failures or skipped else 0)

