"""``occ serve``: the HTTP service of :mod:`occ.serve` on uvicorn (the 'serve' extra of occ), or with
``--engine ray`` as a Ray Serve application of ``--replicas`` replicas behind one HTTP endpoint (the 'ray'
extra)."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from occ import distributed
from occ.cli.common import (
    BackboneOpt,
    DeviceOpt,
    RegistryOpt,
    ThreadsOpt,
    apply_threads,
    backbone_for,
    err,
    handle_errors,
    open_registry,
)
from occ.errors import UsageError
from occ.sources import sources_backbone_spec
from occ.threads import resolve, usable_cpus


@handle_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (anything but loopback needs "
                                      "--token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="OCC_SERVE_TOKEN", show_envvar=True,
                                              help="Bearer token required on /v1/*.")] = None,
    max_image_bytes: Annotated[int, typer.Option("--max-image-bytes", help="Largest upload per image.")] = 32 * 2**20,
    max_images: Annotated[int, typer.Option("--max-images", help="Most images per request.")] = 64,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Largest declared width x height per image "
                                            "(checked before decoding).")] = 50_000_000,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level, or the replicas' with "
                                      "--engine ray (logs go to stderr).")] = "info",
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    engine: Annotated[str, typer.Option("--engine", help="'local' (uvicorn in this process) or 'ray' (a Ray Serve "
                                        "application; needs the 'ray' extra of occ).")] = "local",
    replicas: Annotated[int | None, typer.Option("--replicas", help="Ray Serve replicas, each loading the backbone "
                                                 "and registry once and reserving --threads CPUs (engine ray; "
                                                 "default 1).", show_default=False)] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join: HOST:PORT of its "
                                                    "head, or 'auto' on a cluster node (engine ray; default: "
                                                    "start a local Ray runtime).")] = None,
) -> None:
    """Serve verify and attribute over HTTP: GET /healthz, GET /v1/sources, POST /v1/verify?source=NAME and
    POST /v1/attribute (multipart field 'image', one or more). The backbone loads once; a change to the
    registry (an enroll elsewhere) is picked up without a restart. API docs at /docs. With --engine ray the same
    routes run in --replicas Ray Serve replicas behind one endpoint (--threads is then per replica, default 1)."""
    try:
        # deferred: loads fastapi and PIL (an extra), only where it is used
        from occ import serve as service_module
    except ImportError:
        raise UsageError("occ serve needs the 'serve' extra of occ: pip install 'occ[serve]'") from None

    if engine not in ("local", "ray"):
        raise UsageError(f"unknown engine {engine!r}; choose from local, ray")
    if engine != "ray" and (replicas is not None or ray_address):
        raise UsageError("--replicas and --ray-address go with --engine ray")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    service_module.check_bind(host, token)
    limits = service_module.Limits(max_image_bytes=max_image_bytes, max_images=max_images, max_pixels=max_pixels)
    if engine == "ray":
        return serve_on_ray(service_module, open_registry(registry), limits, host=host, port=port, token=token,
                            log_level=log_level, backbone=backbone, threads=threads, device=device,
                            replicas=1 if replicas is None else replicas, address=ray_address)
    n_threads = apply_threads(threads)
    reg = open_registry(registry)
    bb = backbone_for(backbone, reg, device=device)
    service = service_module.Service(reg, bb, limits)
    attributor, skipped = service.state()  # load the verifiers now: the first request should not pay for it
    for name, reason in skipped.items():
        err.print(f"source '{name}' left out: {reason}", markup=False)
    sock = service_module.bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    n = len(attributor.verifiers) if attributor else 0
    err.print(f"serving on http://{shown}:{bound_port} ({n} source(s), backbone {bb.fingerprint}, {n_threads} "
              f"thread(s){', token required' if token else ''}; API docs at /docs)", markup=False)
    server = service_module.server(service_module.create_app(service, token=token), log_level=log_level)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl-C, then re-raises it: a normal stop
        pass
    finally:
        sock.close()
    err.print("stopped", markup=False)


def serve_on_ray(service_module, reg, limits, *, host: str, port: int, token: str | None, log_level: str,
                 backbone: str | None, threads: int | None, device: str, replicas: int, address: str | None) -> None:
    """``occ serve --engine ray``: deploy :func:`occ.serve.ray_application` on a local Ray runtime or the
    cluster at ``address``, report what runs (read back from Ray Serve and from a replica), wait for Ctrl-C."""
    import logging
    import os
    import sys

    # read when ray is imported: the replicas' log lines, relayed here, each as it is (Ray would fold
    # similar access-log lines into "[repeated Nx]"), without colour codes unless stderr is a terminal
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        # deferred: Ray and Ray Serve are the 'ray' extra of occ
        import ray
        import ray.serve  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs the 'ray' extra of occ: pip install 'occ[ray]'") from None

    if replicas < 1:
        raise UsageError(f"--replicas must be >= 1, got {replicas}")
    per_replica = resolve(threads) if threads is not None else 1
    spec = backbone if backbone is not None else sources_backbone_spec(reg)
    if spec is not None and Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())  # replicas may run elsewhere
    sock = service_module.bind(host, port)  # refuse a busy port now; 0: the free port it picked
    port = sock.getsockname()[1]
    sock.close()
    # this command writes nothing on stdout, as the plain engine: Ray relays the replicas' output and its
    # own messages (from background threads, to sys.stdout at the time) to stderr with this command's lines
    with contextlib.redirect_stdout(sys.stderr):
        distributed.init(address, None if address else max(usable_cpus(), replicas * per_replica),
                         log_to_driver=True)
        # SIGTERM stops as Ctrl-C does: cleanly; Ctrl-C is handled here too, as the plain engine's uvicorn
        # does, so a server started with SIGINT ignored (nohup, a background job of a script) still stops
        previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if device == "cuda" and ray.cluster_resources().get("GPU", 0) < replicas:
                raise UsageError(f"--device cuda: the Ray cluster has {ray.cluster_resources().get('GPU', 0):g} "
                                 f"GPU(s) for {replicas} replica(s)")
            logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this command says what runs, below
            application = service_module.ray_application(reg.root, spec, limits, token, replicas=replicas,
                                                         threads=per_replica, device=device)
            # deletes what it deployed when the replicas do not start
            handle = service_module.run_on_ray(application, host, port, log_level=log_level)
            try:
                replica = handle.describe.remote().result()  # what a replica loaded
                handle.shutdown()  # this process routes nothing more to the replicas
                for name, reason in replica["skipped"].items():
                    err.print(f"source '{name}' left out: {reason}", markup=False)
                shown = f"[{host}]" if ":" in host else host
                err.print(f"serving on http://{shown}:{port} ({service_module.running_replicas()} replica(s) "
                          f"on the Ray cluster at {ray.get_runtime_context().gcs_address}, "
                          f"{len(replica['sources'])} source(s), backbone {replica['backbone']}, "
                          f"{replica['threads']} thread(s) per replica{', token required' if token else ''}; "
                          "API docs at /docs)", markup=False)
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:  # Ctrl-C: a normal stop
                pass
            finally:
                service_module.stop_on_ray(local=address is None)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            ray.shutdown()  # a local runtime stops; a cluster's stays up, this process leaves it
    err.print("stopped", markup=False)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
