"""``occ serve --engine ray`` (issue 26): the CLI in a child process deploying a real Ray Serve application,
talked to over HTTP on a free loopback port.

One Ray runtime per module, started by this test process (``distributed.init``, 2 CPUs) in its own temp
folder: the ``served`` child joins it with ``--ray-address`` and runs 2 replicas of one CPU each, so this
process reads what runs from Ray Serve itself (``serve.status()``, the cluster's free CPUs). One more child
starts a local runtime of its own (no ``--ray-address``). Every answer is compared with the plain engine's
(uvicorn in this process, over the same registry, token and limits); the ``X-Occ-Replica`` header says which
replica answered.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import clikit
import pytest
from clikit import check_attribute_row, check_error_row, free_port, invoke

pytest.importorskip("fastapi")
pytest.importorskip("ray.serve")

import servekit  # noqa: E402
from servekit import multipart, running  # noqa: E402

from occ import distributed  # noqa: E402
from occ import serve as occ_serve  # noqa: E402
from occ.registry import Registry  # noqa: E402
from occ.serve import Limits, Service, create_app  # noqa: E402

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def http(method: str, url: str, files=None, headers=None) -> tuple[int, object, str | None]:
    """(status, JSON body, the replica that answered)."""
    import json

    body, hdrs = None, dict(headers or {})
    if files is not None:
        body, hdrs["Content-Type"] = multipart(files)
    request = urllib.request.Request(url, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers.get(occ_serve.REPLICA_HEADER)
    except urllib.error.HTTPError as exc:
        data = exc.read()
        try:
            body = json.loads(data)
        except ValueError:  # as servekit.http: FastAPI answers 413 on a body too large in plain text
            body = data.decode()
        return exc.code, body, exc.headers.get(occ_serve.REPLICA_HEADER)


def uploads(*paths: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths]


def _processes_under(folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _reap(folder: Path) -> None:
    """Kill whatever still runs from a Ray temp folder (nothing, after a clean stop), then remove it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_under(folder):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _processes_under(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


@pytest.fixture(scope="module")
def cluster():
    """(GCS address, environment for children) of a 2-CPU Ray runtime of this process, in a temp folder of
    its own (short: Ray's socket paths have a length limit)."""
    import ray
    from ray import serve

    temp = Path(tempfile.mkdtemp(prefix="occray", dir="/tmp"))
    env = {"RAY_TMPDIR": str(temp), "RAY_USAGE_STATS_ENABLED": "0"}
    assert not ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        try:
            distributed.init(None, num_cpus=2)
            yield ray.get_runtime_context().gcs_address, env
        finally:
            serve.shutdown()
            ray.shutdown()
            _reap(temp)


def start(*args, env: dict, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """A child ``occ serve --engine ray ARGS`` and its 'serving on' line. The child starts with SIGINT
    ignored, as a background job of a script does: Ctrl-C (:func:`stop`) must stop it all the same."""
    proc = subprocess.Popen(clikit.occ_argv("serve", "--engine", "ray", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clikit.subprocess_env(**env),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    line, seen = "", []
    deadline = time.monotonic() + timeout
    while "serving on" not in line:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"occ serve --engine ray did not start: {''.join(seen)[-3000:]}")
        line = proc.stderr.readline()
        seen.append(line)
    # read on while it runs: the relayed access log must never fill the pipe and block the child
    proc.err_lines = seen
    proc.err_reader = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)
    proc.err_reader.start()
    return proc, line


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str, str]:
    """Ctrl-C (or ``sig``): (exit code, stdout, all of stderr)."""
    proc.send_signal(sig)
    try:
        proc.wait(120)  # it writes nothing on stdout, so waiting first cannot block it on a full pipe
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"occ serve --engine ray did not stop on signal {sig}") from None
    out = proc.stdout.read()
    proc.err_reader.join(30)
    return proc.returncode, out, "".join(proc.err_lines)


@pytest.fixture(scope="module")
def served(w, cluster, tmp_path_factory, tiny_clip_dir):
    """(base URL, registry folder, the child, its 'serving on' line): 2 replicas joined to ``cluster``."""
    address, env = cluster
    reg = clikit.copy_registry(w.reg_ab, tmp_path_factory.mktemp("serve-ray") / "reg")
    port = free_port()
    proc, line = start("--ray-address", address, "--replicas", "2", "--threads", "1", "--port", port,
                       "--max-images", "4", "--max-image-bytes", "200000", "--registry", reg,
                       "--backbone", tiny_clip_dir, env={**env, "OCC_SERVE_TOKEN": TOKEN})
    try:
        yield f"http://127.0.0.1:{port}", reg, proc, line
    finally:
        if proc.poll() is None:
            stop(proc)


def replicas_answering(url: str, path: str = "/healthz", headers=None, n: int = 40) -> dict[str, object]:
    """{replica id: its body} over ``n`` requests, 4 at a time (the router spreads them); every replica's
    answers must all be the same body."""
    seen: dict[str, list] = {}
    lock = threading.Lock()

    def client():
        for _ in range(n // 4):
            status, body, replica = http("GET", url + path, headers=headers)
            assert status == 200, body
            with lock:
                seen.setdefault(replica, []).append(body)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(map(len, seen.values())) == n // 4 * 4, seen
    assert all(all(b == bodies[0] for b in bodies) for bodies in seen.values()), seen
    return {replica: bodies[0] for replica, bodies in seen.items()}


def test_two_replicas_run_read_back_from_ray_serve(served, cluster, tiny_backbone) -> None:
    import ray

    url, _, _, line = served
    assert occ_serve.running_replicas() == 2  # Ray Serve's own status, in this process
    assert ray.available_resources().get("CPU", 0) == 0  # 2 replicas x --threads 1 on the 2 CPUs
    address = cluster[0]
    assert f"(2 replica(s) on the Ray cluster at {address}, 2 source(s)" in line, line
    assert "1 thread(s) per replica, token required" in line, line
    seen = replicas_answering(url)
    assert len(seen) == 2 and None not in seen, seen
    assert all(body == {"status": "ok", "backbone": tiny_backbone.fingerprint, "sources": 2}
               for body in seen.values())


@pytest.fixture(scope="module")
def plain(served, tiny_backbone):
    """The base URL of the plain engine (uvicorn, in this process) over the same registry, token and limits."""
    service = Service(Registry(served[1]), tiny_backbone, Limits(max_image_bytes=200_000, max_images=4))
    with running(create_app(service, token=TOKEN)) as url:
        yield url


def requests_to_compare(w) -> list[tuple[str, str, list | None, dict | None]]:
    """(method, path, uploads, headers): good images, bad uploads among them, each limit, each error."""
    good = [w.good(0), sorted(w.b_test.iterdir())[0], w.good(2)]
    mixed = [*uploads(good[0]), ("junk.png", b"not an image at all"), ("too-big.png", b"\0" * 200_001),
             *uploads(good[1])]  # as many as --max-images 4
    other = [("empty.png", b""), *uploads(good[2]), ("text.png", b"just text\n")]
    return [
        ("GET", "/healthz", None, None),
        ("GET", "/v1/sources", None, None),  # no token
        ("GET", "/v1/sources", None, {"Authorization": "Bearer wrong"}),
        ("POST", "/v1/attribute", uploads(good[0]), None),
        ("GET", "/v1/sources", None, AUTH),
        ("POST", "/v1/attribute", mixed, AUTH),
        ("POST", "/v1/verify?source=a", mixed, AUTH),
        ("POST", "/v1/verify?source=b", other, AUTH),
        ("POST", "/v1/verify?source=nope", uploads(good[0]), AUTH),
        ("POST", "/v1/verify", uploads(good[0]), AUTH),  # no source
        ("POST", "/v1/attribute", [], AUTH),  # no image field
        ("POST", "/v1/attribute", uploads(*[w.good(i) for i in range(5)]), AUTH),  # over --max-images 4
        ("POST", "/v1/attribute", [("huge.png", b"\0" * (Limits(200_000, 4).max_request_bytes + 1))], AUTH),
    ]


def _retrying(request, *args, tries: int = 5):
    """``request(*args)``, again when the connection broke: a server answers 413 to a body over its limit before
    the client has sent all of it and closes, so the client may see a broken pipe instead of the answer."""
    for attempt in range(tries):
        try:
            return request(*args)
        except urllib.error.URLError as exc:
            if attempt == tries - 1 or not isinstance(exc.reason, (BrokenPipeError, ConnectionResetError)):
                raise
            time.sleep(0.2)


def test_every_answer_is_the_plain_engines(served, plain, w) -> None:
    """Status and JSON body of each request, byte for byte the plain server's: answers, per-image errors in
    upload order, the token (401), --max-images and --max-image-bytes (413), unknown source (404), 422."""
    url = served[0]
    statuses = []
    todo = requests_to_compare(w)
    for i, (method, path, files, headers) in enumerate(todo):
        got = _retrying(http, method, url + path, files, headers)
        expected = _retrying(servekit.http, method, plain + path, files, headers)
        assert got[:2] == expected, (method, path, got, expected)
        # answered by a replica; the last (a body over the limit) by FastAPI's body limit, which sits outside
        # the app's middleware (and so outside the one that names the replica)
        assert (got[2] is None) == (i == len(todo) - 1), (method, path, got[2])
        statuses.append(got[0])
    assert statuses == [200, 401, 401, 401, 200, 200, 200, 200, 404, 422, 422, 413, 413]
    rows = http("POST", f"{url}/v1/attribute", requests_to_compare(w)[5][2], AUTH)[1]
    assert [r.get("error") for r in rows] == [None, "not an image (unrecognised content)",
                                              "upload too large (over 200000 bytes)", None]
    for row in (rows[0], rows[3]):
        check_attribute_row(row, ["a", "b"])
    for row in rows[1:3]:
        check_error_row(row)
    assert [r["source"] for r in (rows[0], rows[3])] == ["a", "b"]
    rows = http("POST", f"{url}/v1/verify?source=b", requests_to_compare(w)[7][2], AUTH)[1]
    assert [r.get("error") for r in rows] == ["empty upload", None, "not an image (unrecognised content)"]


def test_concurrent_requests_all_answered_in_order_by_both_replicas(served, plain, w) -> None:
    url = served[0]
    files = uploads(w.good(1), sorted(w.b_test.iterdir())[1], w.good(3))
    expected = servekit.http("POST", f"{plain}/v1/attribute", files, AUTH)
    assert expected[0] == 200 and [r["path"] for r in expected[1]] == [name for name, _ in files]
    answers, errors = [], []

    def client():
        try:
            for _ in range(3):
                answers.append(http("POST", f"{url}/v1/attribute", files, AUTH))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors and len(answers) == 24, errors
    assert all(a[:2] == expected for a in answers)  # every row in upload order, as the plain server's
    assert len({a[2] for a in answers}) == 2  # both replicas answered


def test_a_registry_change_is_seen_by_every_replica(served, w, tiny_clip_dir) -> None:
    url, reg, _, _ = served
    before = replicas_answering(url, "/v1/sources", AUTH)
    assert len(before) == 2 and all([s["name"] for s in b] == ["a", "b"] for b in before.values())
    Registry(reg).remove("a")  # the Python API, another "process" than the replicas
    after = replicas_answering(url, "/v1/sources", AUTH)
    assert set(after) == set(before), after  # the same two replicas, no restart
    assert all([s["name"] for s in b] == ["b"] for b in after.values()), after
    seen = replicas_answering(url, "/healthz")
    assert len(seen) == 2 and all(body["sources"] == 1 for body in seen.values())
    assert invoke(*clikit.enroll_args("c", w.a_train, reg, tiny_clip_dir)).code == 0  # enrolled "elsewhere"
    again = replicas_answering(url, "/v1/sources", AUTH)
    assert set(again) == set(before) and all([s["name"] for s in b] == ["b", "c"] for b in again.values()), again


def test_a_second_server_on_the_same_cluster_is_refused_and_leaves_the_first(served, cluster, w) -> None:
    url, _, _, _ = served
    port = int(url.rsplit(":", 1)[1])
    other = free_port()
    run = clikit.run_occ("serve", "--engine", "ray", "--ray-address", cluster[0], "--port", other,
                         "--registry", w.reg_a, timeout=180, **cluster[1])
    assert run.returncode == 2, run
    assert (f"Ray Serve already runs on this cluster with HTTP on 127.0.0.1:{port}; pass --host 127.0.0.1 "
            f"--port {port} or stop it") in run.stderr, run.stderr
    run = clikit.run_occ("serve", "--engine", "ray", "--ray-address", cluster[0], "--port", port,
                         "--registry", w.reg_a, timeout=180, **cluster[1])
    assert run.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in run.stderr, run.stderr
    assert occ_serve.running_replicas() == 2  # the first application is untouched
    assert http("GET", f"{url}/healthz")[0] == 200


def test_ctrl_c_stops_the_application(served) -> None:
    """Last of the module: Ctrl-C deletes the occ application, its access log went to stderr."""
    url, _, proc, _ = served
    code, out, err = stop(proc)
    assert code == 0, err[-3000:]
    assert out == "" and err.rstrip().splitlines()[-1] == "stopped", (out, err[-3000:])
    assert "GET /healthz 200" in err  # the default --log-level info: the replicas' access log, relayed
    import ray

    # Serve stopped on the cluster (no other application ran there): its controller is gone
    assert "SERVE_CONTROLLER_ACTOR" not in [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/healthz", timeout=5)  # Serve stopped too: no application left


def test_local_runtime_of_its_own_with_its_options(w, cluster, tiny_clip_dir, tmp_path) -> None:
    """No --ray-address: a runtime of its own (another GCS), 1 replica by default; --host, --threads,
    --max-pixels and --log-level applied; SIGTERM stops it cleanly, its runtime with it."""
    temp = Path(tempfile.mkdtemp(prefix="occray", dir="/tmp"))
    env = {**cluster[1], "RAY_TMPDIR": str(temp)}
    port = free_port()
    try:
        proc, line = start("--host", "127.0.0.2", "--port", port, "--threads", "2", "--max-pixels", "1000",
                           "--log-level", "warning", "--registry", w.reg_a, "--backbone", tiny_clip_dir, env=env)
        try:
            assert line.startswith(f"serving on http://127.0.0.2:{port} (1 replica(s) on the Ray cluster at "), line
            assert cluster[0] not in line and "2 thread(s) per replica" in line and "token required" not in line
            url = f"http://127.0.0.2:{port}"
            with pytest.raises(urllib.error.URLError):  # --host: 127.0.0.2 only
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            seen = replicas_answering(url, "/healthz", n=12)
            assert len(seen) == 1 and list(seen.values())[0]["sources"] == 1
            fresh = clikit.noise_family(tmp_path / "fresh", [900])  # 48x40: over 1,000 pixels
            status, rows, _ = http("POST", f"{url}/v1/attribute", uploads(*fresh))
            assert status == 200 and "exceeds the 1000-pixel limit" in rows[0]["error"], rows
        finally:
            code, out, err = stop(proc, signal.SIGTERM)  # stops as Ctrl-C does
        assert code == 0 and out == "" and err.rstrip().splitlines()[-1] == "stopped", (out, err[-3000:])
        assert "GET /healthz" not in err  # --log-level warning: no access log
        assert _processes_under(temp) == []  # its runtime went with it
    finally:
        _reap(temp)


def test_usage_errors(w) -> None:
    for args, said in ((["--replicas", "2"], "--replicas and --ray-address go with --engine ray"),
                       (["--ray-address", "auto"], "--replicas and --ray-address go with --engine ray"),
                       (["--engine", "nope"], "unknown engine 'nope'"),
                       (["--engine", "ray", "--host", "0.0.0.0"], "needs a bearer token"),
                       (["--engine", "ray", "--replicas", "0"], "--replicas must be >= 1, got 0")):
        run = invoke("serve", *args, "--registry", w.reg_a)
        assert run.code == 2 and said in run.stderr, (args, run)


def test_an_address_where_no_ray_cluster_answers_is_one_line(w) -> None:
    """--ray-address is used: nothing listening there is refused at once (a child: this process runs Ray)."""
    address = f"127.0.0.1:{free_port()}"
    run = clikit.run_occ("serve", "--engine", "ray", "--ray-address", address, "--registry", w.reg_a, timeout=120)
    assert run.returncode == 1, run
    assert run.stderr.strip().splitlines()[-1].endswith(f"cannot join the Ray cluster at {address}: nothing "
                                                        "answers there (Connection refused)"), run.stderr
