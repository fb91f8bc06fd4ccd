"""``occ attribute --engine ray --ray-address`` against a real cluster head started by ``ray start`` (issue
14), as a user runs it: the head in its own processes, on loopback, with Ray's token authentication on
(the default of recent Ray for clusters), and the CLI in a child process that must join that head rather
than start a runtime of its own. The head is stopped by killing the processes of its own temp folder, so
no other Ray runtime on the machine is touched.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import clikit
import pytest
from clikit import free_port, invoke, json_lines

pytest.importorskip("ray")

from occ import distributed  # noqa: E402

RAY = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


def _processes_under(folder: Path) -> list[int]:
    """PIDs whose command line names ``folder`` (every process of a head started with that temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def head():
    """(address, environment with the cluster's token) of a Ray head on a free loopback port."""
    if not RAY.exists():
        pytest.skip("the ray command is not installed beside this Python")
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="occray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                        "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                            f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _processes_under(temp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while _processes_under(temp) and time.monotonic() < deadline:
                time.sleep(0.2)


def _occ(*args, env: dict) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "occ.cli", *(os.fspath(a) for a in args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def test_attribute_joins_the_cluster_at_the_address(w, head, tmp_path) -> None:
    address, env = head
    odd = tmp_path / "junk.png"
    odd.write_bytes(b"not an image")
    inputs = [w.a_test, odd, w.good(3)]
    plain = invoke("attribute", *inputs, "--registry", w.reg_ab, "--json")
    assert plain.code == 1, plain
    run = _occ("attribute", *inputs, "--registry", w.reg_ab, "--json", "--engine", "ray",
               "--ray-address", address, "--workers", "1", env=env)
    assert run.returncode == 1, run.stderr[-2000:]  # the junk file failed, the rest were processed
    # read back from the runtime it ran on: the head's GCS (on the node's own IP), not a runtime of its own
    port = address.rsplit(":", 1)[1]
    assert re.search(rf"^Ray cluster at \S+:{port}: 1 worker\(s\)", run.stderr, re.M), run.stderr[-2000:]
    assert "INFO" not in run.stderr, run.stderr[-2000:]  # Ray Data's own log lines are kept off
    rows = json_lines(run.stdout)
    assert [r["path"] for r in rows] == [r["path"] for r in distributed.path_rows(inputs)]  # input order
    theirs_by_path = {r["path"]: r for r in plain.json()}
    assert {r["path"] for r in rows} == set(theirs_by_path)
    for ours in rows:
        theirs = theirs_by_path[ours["path"]]
        assert ours.keys() == theirs.keys() and ours.get("source") == theirs.get("source")
        assert ours.get("error") == theirs.get("error")
        for name, score in ours.get("scores", {}).items():
            assert score == pytest.approx(theirs["scores"][name], abs=1e-5)


def test_a_wrong_token_ends_in_a_line_naming_the_address(w, head) -> None:
    address, env = head
    run = _occ("attribute", w.good(3), "--registry", w.reg_ab, "--json", "--engine", "ray",
               "--ray-address", address, env=env | {"RAY_AUTH_TOKEN": secrets.token_hex(32)})
    assert run.returncode != 0 and run.stdout == ""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines and f"cannot join the Ray cluster at {address}" in lines[-1], run.stderr[-2000:]
