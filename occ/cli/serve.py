"""``occ serve``: the HTTP service of :mod:`occ.serve` on uvicorn (the 'serve' extra of occ)."""

from __future__ import annotations

from typing import Annotated

import typer

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
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level (logs go to stderr).")] = "info",
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Serve verify and attribute over HTTP: GET /healthz, GET /v1/sources, POST /v1/verify?source=NAME and
    POST /v1/attribute (multipart field 'image', one or more). The backbone loads once; a change to the
    registry (an enroll elsewhere) is picked up without a restart. API docs at /docs."""
    try:
        # deferred: loads fastapi and PIL (an extra), only where it is used
        from occ import serve as service_module
    except ImportError:
        raise UsageError("occ serve needs the 'serve' extra of occ: pip install 'occ[serve]'") from None

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    service_module.check_bind(host, token)
    limits = service_module.Limits(max_image_bytes=max_image_bytes, max_images=max_images, max_pixels=max_pixels)
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
