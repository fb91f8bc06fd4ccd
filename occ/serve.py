"""``occ serve``: one long-lived HTTP service (FastAPI on uvicorn; the ``serve`` extra of occ).

The backbone loads once; the registry's verifiers load on the first request and again whenever the
registry changes (a source enrolled, replaced or removed by another process: :meth:`Registry.versions`
is compared on every request, which reads one small file per source). Endpoints:

* ``GET /healthz``: ``{"status": "ok", "backbone": fingerprint, "sources": n}``;
* ``GET /v1/sources``: one object per enrolled source: what decides it
  (:meth:`occ.decisions.DecisionRecord.to_dict`: ``name``, ``kind``, ``decided_by``, ``joint_version``,
  ``threshold``, ``threshold_raw``, ``heldout_tpr``, ``heldout_far``, ``far``, ``target_tpr``,
  ``radius``, ``weak``) and ``n_target``; ``name`` and ``error`` for a source that cannot be used;
* ``POST /v1/verify?source=NAME`` and ``POST /v1/attribute``: one or more images as multipart field
  ``image``; the answer is a JSON array with one object per image, in upload order, the same objects
  as ``occ verify/attribute --json`` (``path`` is the uploaded file name; ``reason`` says why an image
  whose score reaches a threshold is not accepted), ``{"path", "error"}`` for an
  image that cannot be used.

Limits (:class:`Limits`): bytes per image, images per request (and so bytes per request, counted as the body
arrives: FastAPI's ``max_body_size``), declared pixels per image (checked before decoding).
A bad image is that image's error, never the request's. Scoring holds one lock, so concurrent requests
queue for the backbone instead of oversubscribing the cores. With a token, ``/v1/*`` needs
``Authorization: Bearer TOKEN``; binding anything but loopback without a token is refused
(:func:`check_bind`). FastAPI serves the OpenAPI description at ``/docs`` and ``/openapi.json``.

``occ serve --engine ray`` runs the same app (:func:`create_app`) in Ray Serve replicas
(:class:`ServiceReplica`, :func:`ray_application`, :func:`run_on_ray`): each replica has its own
:class:`Service` over the same registry folder, so each picks up registry changes as above; Ray is
imported only by those functions and the replicas (the 'ray' extra of occ).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile

from occ import __version__
from occ import threads as occ_threads
from occ.attribution import Attributor, attribute_row, error_row, verify_row
from occ.backbones import load_backbone
from occ.backbones.base import Backbone
from occ.errors import ImageError, OccError, RegistryError, UsageError
from occ.features import FeatureExtractor
from occ.images import ImageFile
from occ.registry import Registry

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TOKEN_ENV = "OCC_SERVE_TOKEN"
_MULTIPART_SLACK = 64 * 2**10  # headers and boundaries per uploaded part
Images = Annotated[list[UploadFile], File(description="One or more images (multipart field `image`).")]


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_image_bytes: int = 32 * 2**20
    max_images: int = 64
    max_pixels: int = 50_000_000

    def __post_init__(self):
        for name in ("max_image_bytes", "max_images", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"serve limit {name} must be >= 1, got {getattr(self, name)}")

    @property
    def max_request_bytes(self) -> int:
        return self.max_images * (self.max_image_bytes + _MULTIPART_SLACK)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a bearer token."""
    if not is_loopback(host) and not token:
        raise UsageError(f"serving on {host} (not loopback) needs a bearer token: pass --token or set {TOKEN_ENV}")


RECHECK_SECONDS = 2.0  # the longest a server trusts an unchanged change stamp without reading the versions


class Service:
    """The loaded backbone plus the registry's verifiers, reloaded when the registry changes."""

    def __init__(self, registry: Registry, backbone: Backbone, limits: Limits | None = None):
        self.registry = registry
        self.backbone = backbone
        self.limits = limits or Limits()
        self._state_lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._versions: dict | None = None
        self._stamp: str | None = None  # the registry's change stamp when the versions were last read
        self._checked = 0.0  # and when (time.monotonic)
        self._attributor: Attributor | None = None
        self._skipped: dict[str, str] = {}
        self._extractor = FeatureExtractor(backbone, max_pixels=self.limits.max_pixels)

    def state(self) -> tuple[Attributor | None, dict[str, str]]:
        """(attributor over every usable source or None when there is none, {unusable source: reason}).
        The registry's versions are read again when its change stamp moved (:meth:`Registry.changes`),
        and at least every :data:`RECHECK_SECONDS` all the same."""
        stamp, now = self.registry.changes(), time.monotonic()
        with self._state_lock:
            if (self._versions is not None and stamp is not None and stamp == self._stamp
                    and now - self._checked < RECHECK_SECONDS):
                return self._attributor, self._skipped
        versions = self.registry.versions()  # read after the stamp: a change from here on moves it again
        with self._state_lock:
            self._stamp, self._checked = stamp, now
            if versions != self._versions:
                skipped: dict[str, str] = {}
                try:  # every usable source, lda ones decided by the registry's joint model
                    self._attributor = Attributor.from_registry(
                        self.registry, self.backbone, list(versions), extractor=self._extractor,
                        on_skip=lambda name, exc: skipped.__setitem__(name, str(exc))) if versions else None
                except RegistryError:  # none of them can be used (each is in skipped)
                    self._attributor = None
                self._skipped, self._versions = skipped, versions
            return self._attributor, self._skipped

    def score(self, attributor: Attributor, items: list[ImageFile | ImageError]) -> list[tuple[str, object]]:
        """("decision", Decision) or ("error", ImageError) per item, in order."""
        results: list = [None] * len(items)
        files = []
        for i, item in enumerate(items):
            if isinstance(item, ImageError):
                results[i] = ("error", item)
            else:
                files.append(item)

        def on_error(exc: ImageError) -> None:
            results[int(exc.path)] = ("error", exc)

        with self._compute_lock:
            for decision in attributor.run_files(files, on_error):
                results[int(decision.path)] = ("decision", decision)
        return results


def read_uploads(uploads: list[UploadFile], limits: Limits) -> tuple[list[str], list[ImageFile | ImageError]]:
    """(file names, an ImageFile or ImageError per upload). ImageFile paths are the upload's index."""
    if len(uploads) > limits.max_images:
        raise HTTPException(413, f"at most {limits.max_images} images per request, got {len(uploads)}")
    names, items = [], []
    for i, upload in enumerate(uploads):
        name = upload.filename or f"image-{i}"
        names.append(name)
        data = upload.file.read(limits.max_image_bytes + 1)
        if len(data) > limits.max_image_bytes:
            items.append(ImageError(i, f"upload too large (over {limits.max_image_bytes} bytes)"))
        elif not data:
            items.append(ImageError(i, "empty upload"))
        else:
            items.append(ImageFile(Path(str(i)), hashlib.sha256(data).hexdigest(), data))
    return names, items


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """The FastAPI application over ``service``; ``token`` protects ``/v1/*``."""
    limits = service.limits
    # max_body_size: FastAPI counts the bytes as they arrive (chunked uploads too) and answers 413.
    app = FastAPI(title="occ", version=__version__, max_body_size=limits.max_request_bytes,
                  description="Which generator made this image? Verify against one enrolled source or "
                              "attribute over all of them.")

    def _authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(_authorised)]

    def _attributor() -> tuple[Attributor, dict[str, str]]:
        try:
            attributor, skipped = service.state()
        except OccError as exc:
            raise HTTPException(503, str(exc)) from None
        if attributor is None:
            reason = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "enroll a source first"
            raise HTTPException(409, f"no usable source in registry {service.registry.root} ({reason})")
        return attributor, skipped

    def _answer(names, results, row: Callable) -> list[dict]:
        out = []
        for name, (kind, value) in zip(names, results):
            item = row(value) if kind == "decision" else error_row(value)
            item["path"] = name
            out.append(item)
        return out

    @app.get("/healthz")
    def healthz() -> dict:
        try:
            attributor, _ = service.state()
        except OccError as exc:
            raise HTTPException(503, str(exc)) from None
        return {"status": "ok", "backbone": service.backbone.fingerprint,
                "sources": len(attributor.verifiers) if attributor else 0}

    @app.get("/v1/sources", dependencies=auth)
    def sources() -> list[dict]:
        try:
            attributor, skipped = service.state()
        except OccError as exc:
            raise HTTPException(503, str(exc)) from None
        verifiers = attributor.verifiers if attributor else {}
        records = attributor.records if attributor else {}  # what decides each source, as `occ sources` says it
        rows = [{**records[n].to_dict(), "n_target": v.n_pos_} for n, v in verifiers.items()]
        rows += [{"name": n, "error": reason} for n, reason in skipped.items()]
        return sorted(rows, key=lambda r: r["name"])

    @app.post("/v1/verify", dependencies=auth)
    def verify(image: Images, source: Annotated[str, Query(description="An enrolled source.")]) -> list[dict]:
        attributor, skipped = _attributor()
        if source in skipped:
            raise HTTPException(409, f"source '{source}' cannot be used: {skipped[source]}")
        if source not in attributor.verifiers:
            raise HTTPException(404, f"no source named '{source}' (enrolled: "
                                     f"{', '.join(attributor.verifiers) or 'none'})")
        one = Attributor(attributor.verifiers.only([source]), service.backbone, attributor.extractor,
                         joint=attributor.joint)  # an lda source is decided by the registry's joint model
        names, items = read_uploads(image, limits)
        return _answer(names, service.score(one, items), lambda d: verify_row(d, source))

    @app.post("/v1/attribute", dependencies=auth)
    def attribute(image: Images) -> list[dict]:
        attributor, _ = _attributor()
        names, items = read_uploads(image, limits)
        return _answer(names, service.score(attributor, items), attribute_row)

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one (read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def server(app: FastAPI, log_level: str = "warning"):
    """A uvicorn server for ``app`` whose logs (access log included) go to stderr."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    for handler in log_config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, log_config=log_config))


# --- Ray Serve (``occ serve --engine ray``; the 'ray' extra of occ) -------------------------------------

RAY_APP = "occ"
REPLICA_HEADER = "X-Occ-Replica"


class ServiceReplica:
    """One Ray Serve replica: the backbone and the registry load once, in ``__init__``; the routes are
    :func:`create_app`'s over this replica's :class:`Service` (built by ``__serve_build_asgi_app__``,
    which Ray Serve calls on the replica after the constructor). Every answer carries the replica's id
    in the ``X-Occ-Replica`` header."""

    def __init__(self, registry_root: str, backbone_spec: str | None, limits: dict, token: str | None,
                 threads: int = 1, device: str = "cpu"):
        self.threads = occ_threads.apply(threads)
        self.service = Service(Registry(registry_root), load_backbone(backbone_spec, device=device), Limits(**limits))
        self.service.state()  # load the verifiers now: the first request should not pay for it
        self.token = token

    def _replica_id(self) -> str:
        from ray import serve  # the 'ray' extra: only replicas import it

        return serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.service, token=self.token)
        replica = self._replica_id()

        @app.middleware("http")
        async def _replica_header(request: Request, call_next):
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica
            return response

        return app

    def describe(self) -> dict:
        """What this replica runs: its id, threads, backbone and {usable sources}, {unusable: reason}."""
        attributor, skipped = self.service.state()
        return {"replica": self._replica_id(), "threads": self.threads,
                "backbone": self.service.backbone.fingerprint,
                "sources": sorted(attributor.verifiers) if attributor else [], "skipped": skipped}


def ray_application(registry_root: str | Path, backbone_spec: str | None, limits: Limits, token: str | None,
                    replicas: int = 1, threads: int = 1, device: str = "cpu"):
    """The Ray Serve application of ``occ serve --engine ray``: ``replicas`` replicas of
    :class:`ServiceReplica`, each reserving ``threads`` CPUs (and one GPU with ``device='cuda'``)."""
    from ray import serve  # the 'ray' extra of occ

    if replicas < 1:
        raise UsageError(f"--replicas must be >= 1, got {replicas}")
    deployment = serve.deployment(serve.ingress()(ServiceReplica), name="occ", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": threads, "num_gpus": 1 if device == "cuda" else 0})
    return deployment.bind(str(registry_root), backbone_spec,
                           {"max_image_bytes": limits.max_image_bytes, "max_images": limits.max_images,
                            "max_pixels": limits.max_pixels}, token, threads, device)


def running_replicas(app_name: str = RAY_APP) -> int:
    """How many replicas of ``app_name`` Ray Serve reports RUNNING."""
    from ray import serve  # the 'ray' extra of occ

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def run_on_ray(application, host: str, port: int, log_level: str = "warning"):
    """Start Ray Serve's HTTP proxy on (host, port) and deploy ``application`` there (on the Ray runtime
    this process joined); returns the ingress deployment's handle. Serve already running on this cluster
    with other HTTP options is an error (its options cannot change while it runs)."""
    from ray import serve  # the 'ray' extra of occ
    from ray.serve.context import _get_global_client

    level = {"TRACE": "DEBUG"}.get(log_level.upper(), log_level.upper())  # uvicorn's trace: Python has no such level
    # the replicas log at log_level (info: one access line per request); Serve's controller and proxy
    # only say what goes wrong unless debug is asked for
    logging_config = {"log_level": level, "enable_access_log": level in ("DEBUG", "INFO")}
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port},
                logging_config={"log_level": "DEBUG" if level == "DEBUG" else "WARNING"})
    config = _get_global_client().http_config  # what the running proxy listens on
    if (config.host, config.port) != (host, port):
        raise UsageError(f"Ray Serve already runs on this cluster with HTTP on {config.host}:{config.port}; "
                         f"pass --host {config.host} --port {config.port} or stop it (serve shutdown)")
    if RAY_APP in serve.status().applications:
        raise UsageError(f"a Ray Serve application named '{RAY_APP}' already runs on this cluster")
    try:
        return serve.run(application, name=RAY_APP, route_prefix="/", logging_config=logging_config)
    except BaseException as exc:  # Ray raises several types for a replica that fails to start; or Ctrl-C
        stop_on_ray(local=False)
        if not isinstance(exc, Exception):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise OccError(f"the occ replicas did not start: {lines[-1] if lines else type(exc).__name__}") from None


def stop_on_ray(local: bool) -> None:
    """Delete the occ application (its replicas stop gracefully); on a cluster, stop Serve too when no other
    application runs there. A local runtime goes with ``ray.shutdown()``, Serve's actors with it."""
    from ray import serve  # the 'ray' extra of occ

    serve.delete(RAY_APP)
    if not local and not serve.status().applications:
        serve.shutdown()
