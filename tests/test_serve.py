"""``occ serve`` (issue 14): a real uvicorn server on a free loopback port, talked to over HTTP.

The app runs in a thread of the test process (the tiny CLIP is loaded once per session); one test
starts ``occ serve`` itself as a child process. Answers are compared with ``occ attribute/verify
--json`` on the same files.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import clikit
import pytest
from clikit import check_attribute_row, check_error_row, check_verify_row, invoke

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servekit import http, running, uploads  # noqa: E402

from occ.errors import UsageError  # noqa: E402
from occ.registry import Registry  # noqa: E402
from occ.serve import Limits, Service, check_bind, create_app  # noqa: E402


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


@pytest.fixture(scope="module")
def served(w, tmp_path_factory, tiny_backbone):
    """(base URL, registry folder) of a server over a private copy of the two-source registry."""
    reg = clikit.copy_registry(w.reg_ab, tmp_path_factory.mktemp("serve") / "reg")
    service = Service(Registry(reg), tiny_backbone, Limits(max_image_bytes=200_000, max_images=8))
    with running(create_app(service)) as url:
        yield url, reg


def test_healthz_and_sources(served, tiny_backbone) -> None:
    url, _ = served
    status, body = http("GET", f"{url}/healthz")
    assert status == 200 and body == {"status": "ok", "backbone": tiny_backbone.fingerprint, "sources": 2}
    status, body = http("GET", f"{url}/v1/sources")
    assert status == 200 and [s["name"] for s in body] == ["a", "b"]
    assert all(s["kind"] == "lda" and 0 < s["threshold"] < 1 and s["n_target"] == 8 for s in body), body
    status, body = http("GET", f"{url}/openapi.json")
    assert status == 200 and {"/v1/verify", "/v1/attribute", "/v1/sources", "/healthz"} <= set(body["paths"])


def test_attribute_answers_what_the_cli_answers_with_per_image_errors(served, w) -> None:
    url, reg = served
    good = [w.good(0), sorted(w.b_test.iterdir())[0], w.good(1)]
    files = uploads(good[0], good[1]) + [("junk.png", b"not an image at all"), ("empty.png", b"")] \
        + uploads(good[2])
    status, rows = http("POST", f"{url}/v1/attribute", files)
    assert status == 200, rows
    assert [r["path"] for r in rows] == [good[0].name, good[1].name, "junk.png", "empty.png", good[2].name]
    for row in rows[2:4]:
        check_error_row(row)
    assert rows[2]["error"] == "not an image (unrecognised content)" and rows[3]["error"] == "empty upload"
    cli = {Path(r["path"]).name: r for r in invoke("attribute", *good, "--registry", reg, "--json").json()}
    for row in (rows[0], rows[1], rows[4]):
        check_attribute_row(row, ["a", "b"])
        assert row == dict(cli[row["path"]], path=row["path"])
    assert rows[0]["source"] == "a"


def test_verify_one_source_and_request_errors(served, w) -> None:
    url, reg = served
    status, rows = http("POST", f"{url}/v1/verify?source=a", uploads(w.good(0), w.good(2)))
    assert status == 200
    cli = invoke("verify", w.good(0), w.good(2), "--source", "a", "--registry", reg, "--json").json()
    for row, expected in zip(rows, cli):
        check_verify_row(row, "a")
        assert row == dict(expected, path=Path(expected["path"]).name)
    status, body = http("POST", f"{url}/v1/verify?source=nope", uploads(w.good(0)))
    assert status == 404 and "nope" in body["detail"] and "a, b" in body["detail"]
    status, body = http("POST", f"{url}/v1/verify", uploads(w.good(0)))  # no source given
    assert status == 422
    status, body = http("POST", f"{url}/v1/attribute", [])  # no image field at all
    assert status == 422


def test_verify_answers_in_upload_order_with_failed_uploads_in_place(served, w, tmp_path) -> None:
    url, reg = served
    fresh = clikit.noise_family(tmp_path / "fresh", [950, 951])  # not in the feature cache: through the trunk
    good = [w.good(0), fresh[0], w.good(1), fresh[1]]
    files = [("empty.png", b""), *uploads(good[0], good[1]), ("text.png", b"just text\n"), *uploads(good[2]),
             ("too-big.png", b"\0" * 200_001), *uploads(good[3])]
    status, rows = http("POST", f"{url}/v1/verify?source=a", files)
    assert status == 200, rows
    assert [r["path"] for r in rows] == [name for name, _ in files]
    assert [r.get("error") for r in rows] == ["empty upload", None, None, "not an image (unrecognised content)",
                                              None, "upload too large (over 200000 bytes)", None]
    cli = invoke("verify", *good, "--source", "a", "--registry", reg, "--json").json()
    assert [r for r in rows if "error" not in r] == [dict(c, path=Path(c["path"]).name) for c in cli]


def test_limits_images_bytes_and_pixels(w, tiny_backbone, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    small = Limits(max_image_bytes=6_000, max_images=2, max_pixels=1_000)
    with running(create_app(Service(Registry(reg), tiny_backbone, small))) as url:
        status, body = http("POST", f"{url}/v1/attribute", uploads(w.good(0), w.good(1), w.good(2)))
        assert status == 413 and "at most 2 images" in body["detail"]
        big = ("big.png", w.good(0).read_bytes() + b"\0" * 6_000)
        fresh = clikit.noise_family(tmp_path / "fresh", [900])  # never seen: not in the feature cache
        status, rows = http("POST", f"{url}/v1/attribute", [big, *uploads(*fresh)])
        assert status == 200 and rows[0] == {"path": "big.png", "error": "upload too large (over 6000 bytes)"}
        # 48x40 = 1920 declared pixels, over this server's 1,000
        assert "exceeds the 1000-pixel limit" in rows[1]["error"], rows
        status, body = http("POST", f"{url}/v1/attribute", [("huge.png", b"\0" * (small.max_request_bytes + 1))])
        assert status == 413, body
    roomy = Limits(max_image_bytes=6_000, max_images=2, max_pixels=2_000)
    with running(create_app(Service(Registry(reg), tiny_backbone, roomy))) as url:
        status, rows = http("POST", f"{url}/v1/attribute", uploads(*fresh))
        assert status == 200 and "error" not in rows[0], rows


def test_concurrent_requests_get_the_same_answers(served, w) -> None:
    url, _ = served
    files = uploads(w.good(0), sorted(w.b_test.iterdir())[1])
    answers, errors = [], []

    def client():
        try:
            answers.append(http("POST", f"{url}/v1/attribute", files))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(answers) == 8
    assert all(a == answers[0] for a in answers) and answers[0][0] == 200


def test_registry_changes_are_picked_up_without_restart(w, tiny_backbone, tiny_clip_dir, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    with running(create_app(Service(Registry(reg), tiny_backbone))) as url:
        assert http("GET", f"{url}/healthz")[1]["sources"] == 1
        status, rows = http("POST", f"{url}/v1/attribute", uploads(w.good(0)))
        assert set(rows[0]["scores"]) == {"a"}
        assert invoke(*clikit.enroll_args("b", w.b_train, reg, tiny_clip_dir)).code == 0  # "elsewhere"
        status, rows = http("POST", f"{url}/v1/attribute", uploads(sorted(w.b_test.iterdir())[0]))
        assert status == 200 and set(rows[0]["scores"]) == {"a", "b"}
        assert invoke("sources", "remove", "a", "--yes", "--registry", reg).code == 0
        assert [s["name"] for s in http("GET", f"{url}/v1/sources")[1]] == ["b"]
        assert http("POST", f"{url}/v1/verify?source=a", uploads(w.good(0)))[0] == 404


def test_versions_are_read_when_the_change_stamp_moves_or_after_the_recheck_time(
        w, tiny_backbone, tiny_clip_dir, tmp_path, monkeypatch) -> None:
    """A server does not read every source's CURRENT per request (80 ms at 1,000 sources): it stats the
    registry's change stamp, and reads the versions when it moved, or RECHECK_SECONDS after the last read
    (a writer that crashed after its commit leaves the stamp as it was)."""
    import occ.serve
    from occ.enrollment import enroll

    reg = Registry(clikit.copy_registry(w.reg_a, tmp_path / "reg"))
    reads = []
    real_versions = reg.versions
    monkeypatch.setattr(reg, "versions", lambda: reads.append(1) or real_versions())
    monkeypatch.setattr(occ.serve, "RECHECK_SECONDS", 3600.0)
    with running(create_app(Service(reg, tiny_backbone))) as url:
        for _ in range(3):
            assert http("GET", f"{url}/healthz")[1]["sources"] == 1
        assert len(reads) == 1
        assert invoke(*clikit.enroll_args("b", w.b_train, reg.root, tiny_clip_dir)).code == 0  # the CLI's write
        assert http("GET", f"{url}/healthz")[1]["sources"] == 2 and len(reads) == 2
        # a writer that commits and dies before it stamps: seen once the recheck time has passed
        monkeypatch.setattr(Registry, "_stamp_changes", lambda self: None)
        other = Registry(reg.root)
        enroll(other, "c", sorted(w.b_test.iterdir()), backbone=tiny_backbone)
        assert http("GET", f"{url}/healthz")[1]["sources"] == 2, "the stamp did not move: not read yet"
        monkeypatch.setattr(occ.serve, "RECHECK_SECONDS", 0.0)
        assert http("GET", f"{url}/healthz")[1]["sources"] == 3


def test_empty_registry_is_a_clear_409(tiny_backbone, tmp_path, w) -> None:
    with running(create_app(Service(Registry(tmp_path / "empty"), tiny_backbone))) as url:
        assert http("GET", f"{url}/healthz") == (200, {"status": "ok", "backbone": tiny_backbone.fingerprint,
                                                      "sources": 0})
        status, body = http("POST", f"{url}/v1/attribute", uploads(w.good(0)))
        assert status == 409 and "no usable source" in body["detail"]


def test_bearer_token(w, tiny_backbone) -> None:
    with running(create_app(Service(Registry(w.reg_a), tiny_backbone), token="s3cret")) as url:
        assert http("GET", f"{url}/healthz")[0] == 200  # health checks need no token
        assert http("GET", f"{url}/v1/sources")[0] == 401
        assert http("GET", f"{url}/v1/sources", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http("POST", f"{url}/v1/attribute", uploads(w.good(0)))[0] == 401
        status, body = http("GET", f"{url}/v1/sources", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and [s["name"] for s in body] == ["a"]


def test_binding_beyond_loopback_needs_a_token() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    with pytest.raises(UsageError, match="not loopback.*--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(UsageError):
        check_bind("192.168.1.5", "")
    check_bind("0.0.0.0", "s3cret")


def test_occ_serve_command_over_http(w, tiny_clip_dir, tmp_path) -> None:
    """The CLI: a child process listening on a free port (read back from its stderr), its options applied,
    then Ctrl-C."""
    argv = clikit.occ_argv("serve", "--port", "0", "--registry", w.reg_ab, "--backbone", tiny_clip_dir,
                           "--threads", "1", "--max-images", "1", "--max-image-bytes", "20000", "--log-level", "info")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clikit.subprocess_env(OCC_SERVE_TOKEN="t0ken"))
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving on" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, (line, proc.poll())
            line = proc.stderr.readline()
        url = line.split("serving on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert "(2 source(s)" in line and "1 thread(s)" in line and "token required" in line, line
        status, body = http("GET", f"{url}/healthz")
        assert status == 200 and body["sources"] == 2
        auth = {"Authorization": "Bearer t0ken"}
        assert http("POST", f"{url}/v1/attribute", uploads(w.good(0)))[0] == 401  # OCC_SERVE_TOKEN applies
        status, rows = http("POST", f"{url}/v1/attribute", uploads(w.good(0)), headers=auth)
        assert status == 200 and rows[0]["source"] == "a"
        assert http("POST", f"{url}/v1/attribute", uploads(w.good(0), w.good(1)), headers=auth)[0] == 413
        big = [("big.png", w.good(0).read_bytes() + b"\0" * 20000)]
        assert http("POST", f"{url}/v1/attribute", big, headers=auth)[1][0]["error"].startswith("upload too large")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""  # nothing on stdout: logs go to stderr
    assert '"POST /v1/attribute HTTP/1.1" 200' in err  # --log-level info: the access log, on stderr


def test_occ_serve_refuses_a_public_host_without_token(w, tiny_clip_dir) -> None:
    run = invoke("serve", "--host", "0.0.0.0", "--registry", w.reg_a, "--backbone", tiny_clip_dir)
    assert run.code == 2 and "needs a bearer token" in run.stderr, run

