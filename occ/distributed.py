"""Batch attribution on Ray (the ``ray`` extra of occ): ``occ attribute PATH... --engine ray``.

:func:`attribute_dataset` maps a Ray Dataset of image paths through a pool of actors; each actor loads
the backbone and the registry's verifiers once, reads its images itself (every node must see the same
paths, e.g. a shared or network filesystem) and answers one row per image with the columns of
:data:`COLUMNS`: ``path``, ``source`` (null = unknown), ``scores`` (a struct with one float field per
source), ``accepted`` (list of names, best first), ``reason`` (why a source whose score reaches its
threshold does not accept, as ``occ attribute --json`` says it; null when none) and ``error`` (null, or
why the image could not be used: bad files are per-row errors, never the job's).
:func:`attribute_paths` is the whole command: it expands files and folders like the CLI, starts (or
joins) Ray, keeps the input order and streams batches back to the caller, who writes JSONL or Parquet
(:func:`json_rows`, :func:`write_parquet`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from occ import threads as occ_threads
from occ.backbones import load_backbone
from occ.errors import ImageError, OccError, UsageError
from occ.registry import Registry

COLUMNS = ("path", "source", "scores", "accepted", "reason", "error")
DEFAULT_BATCH = 16


def schema(sources: Sequence[str]):
    """The Arrow schema of result rows for these sources."""
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()),
        ("source", pa.string()),
        ("scores", pa.struct([(name, pa.float64()) for name in sources])),
        ("accepted", pa.list_(pa.string())),
        ("reason", pa.string()),
        ("error", pa.string()),
    ])


class AttributionWorker:
    """A Ray Data actor: the backbone and verifiers load once, in ``__init__``; each call answers a
    batch of ``{"path", "file", "error"}`` rows (``file``: absolute path to read)."""

    def __init__(self, registry_root: str, backbone_spec: str | None, sources: Sequence[str],
                 threads: int = 1, device: str = "cpu"):
        # deferred: loads PIL, which occ --help and occ sources never import
        from occ.attribution import Attributor
        self.threads = occ_threads.apply(threads)
        backbone = load_backbone(backbone_spec, device=device)
        self.sources = sorted(sources)
        self.attributor = Attributor.from_registry(Registry(registry_root), backbone, self.sources)
        self.schema = schema(self.sources)

    def __call__(self, batch: dict):
        import pyarrow as pa

        # deferred: loads PIL, which occ --help and occ sources never import
        from occ.attribution import attribute_reason
        from occ.images import ImageFile, read_image_file

        paths, files, given = list(batch["path"]), list(batch["file"]), list(batch["error"])
        rows: list[dict] = [{"path": p, "source": None, "scores": None, "accepted": None, "reason": None,
                             "error": e or None}
                            for p, e in zip(paths, given)]
        todo = []
        for i, (file, error) in enumerate(zip(files, given)):
            if error:
                continue
            try:
                read = read_image_file(file)
            except ImageError as exc:
                rows[i]["error"] = exc.reason
                continue
            todo.append(ImageFile(Path(str(i)), read.sha256, read.data))

        def on_error(exc: ImageError) -> None:
            rows[int(exc.path)]["error"] = exc.reason

        for d in self.attributor.run_files(todo, on_error):
            rows[int(d.path)].update(source=d.source, scores=d.scores, accepted=list(d.accepted),
                                     reason=attribute_reason(d.reasons))
        return pa.Table.from_pylist(rows, schema=self.schema)


def attribute_dataset(ds, *, registry_root: str | os.PathLike, sources: Sequence[str],
                      backbone: str | None = None, workers: int = 1, threads: int = 1, device: str = "cpu",
                      batch_size: int = DEFAULT_BATCH):
    """``ds`` (rows ``{"path", "file", "error"}``, see :func:`path_rows`) mapped to result rows by
    ``workers`` actors of ``threads`` CPUs each. Output order follows the input order when the
    DataContext's ``execution_options.preserve_order`` is set (as :func:`attribute_paths` does)."""
    import ray.data

    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    return ds.map_batches(
        AttributionWorker,
        fn_constructor_kwargs={"registry_root": str(registry_root), "backbone_spec": backbone,
                               "sources": list(sources), "threads": threads, "device": device},
        batch_size=batch_size, batch_format="numpy", num_cpus=threads,
        num_gpus=1 if device == "cuda" else 0,
        compute=ray.data.ActorPoolStrategy(size=workers),
    )


def path_rows(inputs: Iterable) -> list[dict]:
    """One row per image under ``inputs`` (files and folders, expanded like the CLI), in order; a
    missing or unreadable input is a row with its error."""
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ.images import iter_paths

    rows = []
    for item in iter_paths(inputs):
        if isinstance(item, ImageError):
            rows.append({"path": item.path, "file": "", "error": item.reason})
        else:
            rows.append({"path": str(item), "file": str(Path(item).absolute()), "error": ""})
    return rows


CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """Fail at once, with one line, when nothing listens at a ``host:port`` (or ``ray://host:port``)
    address: Ray itself retries an unreachable head for minutes. Other forms ("auto") go to Ray as given."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise OccError(f"cannot join the Ray cluster at {address}: nothing answers there "
                       f"({exc.strerror or type(exc).__name__})") from None


def init(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Join the Ray cluster at ``address``, or start a local runtime (no dashboard); reuse a running one.
    ``log_to_driver``: the workers' output (Ray Serve's logs, for ``occ serve --engine ray``) on this
    process's stdout/stderr."""
    import logging

    import ray

    if ray.is_initialized():
        return
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # Ray raises several types for an address it cannot reach
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[0] if lines else type(exc).__name__
            raise OccError(f"cannot join the Ray cluster at {address}: {reason}") from None
    else:
        # "local": a new runtime for this command, never a cluster that `ray start` left on this machine
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def attribute_paths(inputs: Iterable, *, registry_root: str | os.PathLike, sources: Sequence[str],
                    backbone: str | None = None, workers: int = 1, threads: int = 1, device: str = "cpu",
                    address: str | None = None, batch_size: int = DEFAULT_BATCH) -> tuple[int, Iterator]:
    """(number of rows, iterator of Arrow record batches of result rows in input order)."""
    import logging

    import ray.data

    rows = path_rows(inputs)
    if not rows:
        return 0, iter(())
    init(address, None if address else max(os.cpu_count() or 1, workers * threads))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the CLI shows its own
    # and its own summary: Ray Data's per-run log lines (execution plan, "finished in") would mix with it
    # on stderr; a failing run still raises
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # enough blocks for every worker to have work, batch-sized where there are plenty of images
    blocks = min(len(rows), max(4 * workers, min(math.ceil(len(rows) / batch_size), 1000)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    result = attribute_dataset(ds, registry_root=registry_root, sources=sources, backbone=backbone,
                               workers=workers, threads=threads, device=device, batch_size=batch_size)
    return len(rows), result.iter_batches(batch_format="pyarrow", batch_size=None)


def json_rows(table) -> Iterator[dict]:
    """The rows of a result batch as ``occ attribute --json`` objects."""
    # deferred: loads PIL, which occ --help and occ sources never import
    from occ.attribution import round_scores

    for row in table.to_pylist():
        if row["error"] is not None:
            yield {"path": row["path"], "error": row["error"]}
        else:
            yield {"path": row["path"], "source": row["source"], "scores": round_scores(row["scores"]),
                   "accepted": row["accepted"], "reason": row["reason"]}


def write_parquet(batches: Iterable, path: str | os.PathLike, sources: Sequence[str]) -> int:
    """Write result batches to one Parquet file (atomically); returns the number of rows written."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema(sorted(sources))) as writer:
            for batch in batches:
                writer.write_table(batch)
                n += batch.num_rows
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n
