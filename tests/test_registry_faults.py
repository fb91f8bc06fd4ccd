"""Fault tests of occ.registry: kill -9 mid-write, concurrent processes, and OS errors (disk full, read-only).

Child processes come from a multiprocessing "forkserver" that has imported torch once, so that a dozen
children cost one torch import rather than a dozen: each child is still a fresh process forked from a
clean server (not from pytest), as with "spawn".
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import random
import shutil
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path

import pytest
import torch

import occ.registry.files as registry_files
from occ.errors import RegistryError, UsageError
from occ.registry import Registry

pytestmark = pytest.mark.skipif(os.name != "posix", reason="kill -9, fork server and flock are POSIX")

BIG = 12_500_000  # float32 elements: 50 MB
STEPS_KEEP_OLD = ["staging-created", "tensors-written", "meta-written", "locked", "moved", "current-written"]
STEPS_SHOW_NEW = ["current-replaced", "cleaned"]


def context() -> mp.context.BaseContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "safetensors.torch", "occ.registry"])
    return ctx


# --------------------------------------------------------------------------- kill -9 at every step


def _crash_child(root: str, name: str, stop_at: str | None, conn) -> None:
    """Save a 50 MB source under replace, reporting each step; sleep at ``stop_at`` until killed."""
    import occ.registry.store as registry

    def hook(step: str) -> None:
        conn.send(step)
        if step == stop_at:
            time.sleep(3600)

    registry._fault_point = hook
    tensors = {"w": torch.full((BIG,), 2.0)}
    conn.send("ready")
    registry.Registry(root).save(name, tensors, {"gen": "new"}, replace=True)
    conn.send("done")
    time.sleep(3600)  # stay alive until killed, so the kill always hits this process


def _make_template(root: Path) -> None:
    Registry(root).save("big", {"w": torch.full((BIG,), 1.0)}, {"gen": "old"})


def _clone(template: Path, dest: Path) -> None:
    """Copy a registry, hard-linking the big tensor files (the registry never writes into a file in place)."""

    def copy(src: str, dst: str) -> None:
        if src.endswith(".safetensors"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(template, dest, copy_function=copy)


def _run_and_kill(ctx, trials: list[dict]) -> None:
    """Start one child per trial; kill each with SIGKILL at its step, or a delay after it starts writing."""
    for trial in trials:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_crash_child, args=(str(trial["root"]), trial["name"], trial.get("stop_at"), writer)
        )
        proc.start()
        writer.close()
        trial.update(proc=proc, conn=reader, steps=[], killed=False)
    timers = []
    deadline = time.monotonic() + 120
    try:
        pending = {id(t["conn"]): t for t in trials}
        while pending and time.monotonic() < deadline:
            for conn in wait([t["conn"] for t in pending.values()], timeout=1.0):
                trial = pending[id(conn)]
                try:
                    step = conn.recv()
                except EOFError:
                    del pending[id(conn)]  # the child is gone
                    continue
                trial["steps"].append(step)
                if step == trial.get("stop_at"):
                    trial["proc"].kill()
                    trial["killed"] = True
                elif step == "staging-created" and "delay" in trial:
                    timer = threading.Timer(trial["delay"], trial["proc"].kill)
                    timer.start()
                    timers.append(timer)
                    trial["killed"] = True  # (if the save finishes first, the child waits to be killed)
    finally:
        for timer in timers:
            timer.join(10)
        for trial in trials:
            if trial["proc"].is_alive():
                trial["proc"].kill()
            trial["proc"].join(30)
            trial["conn"].close()
    for trial in trials:
        assert trial["killed"], f"trial {trial} never reached its kill point"


def _check_after_crash(trial: dict) -> None:
    root = trial["root"]
    reg = Registry(root)
    names = reg.names()
    assert "big" in names
    tensors, meta = reg.load("big")
    assert meta["gen"] in ("old", "new")
    w = tensors["w"]
    assert w.shape == (BIG,)
    assert bool((w == (1.0 if meta["gen"] == "old" else 2.0)).all()), (
        "tensors and metadata from different writes"
    )
    if trial["name"] == "big" and "stop_at" in trial:
        assert meta["gen"] == trial["expect"], (trial["stop_at"], meta["gen"])
    if trial["name"] == "fresh":
        if trial["expect"] == "absent":
            assert "fresh" not in names
        else:
            fresh_tensors, fresh_meta = reg.load("fresh")
            assert fresh_meta["gen"] == "new" and bool((fresh_tensors["w"] == 2.0).all())

    # A later writer works and sweeps whatever the killed one left behind.
    Registry(root).save("after", {"w": torch.ones(3)}, {})
    assert os.listdir(root / ".staging") == []
    for name in reg.names():
        version = reg.info(name).version
        assert sorted(os.listdir(root / "sources" / name)) == ["CURRENT", version]
    assert set(os.listdir(root / "sources")) == set(reg.names())


def test_kill_minus_9_at_every_step_leaves_old_or_new(tmp_path: Path) -> None:
    ctx = context()
    template = tmp_path / "template"
    _make_template(template)
    rng = random.Random(1234)
    trials: list[dict] = []
    for step in STEPS_KEEP_OLD + STEPS_SHOW_NEW:
        expect = "old" if step in STEPS_KEEP_OLD else "new"
        trials.append({"name": "big", "stop_at": step, "expect": expect})
    # An interrupted first enroll: not listed before the commit point, complete after it.
    trials.append({"name": "fresh", "stop_at": "moved", "expect": "absent"})
    trials.append({"name": "fresh", "stop_at": "current-replaced", "expect": "present"})
    for _ in range(4):
        trials.append({"name": "big", "delay": rng.uniform(0.0, 0.6)})
    for index, trial in enumerate(trials):
        trial["root"] = tmp_path / f"trial{index}"
        _clone(template, trial["root"])
    for batch in (trials[:7], trials[7:]):  # bounded memory: each child holds ~150 MB
        _run_and_kill(ctx, batch)
        for trial in batch:
            _check_after_crash(trial)
    for trial in trials:
        if "stop_at" in trial:
            assert trial["steps"][-1] == trial["stop_at"]


# --------------------------------------------------------------------------- concurrency


def _save_many(root: str, prefix: str, count: int, barrier) -> list[str]:
    barrier.wait(timeout=60)
    reg = Registry(root)
    for index in range(count):
        reg.save(f"{prefix}-{index}", {"w": torch.full((1000,), float(index))}, {"who": prefix, "i": index})
    return [prefix]


def _save_once(root: str, barrier, results) -> None:
    barrier.wait(timeout=60)
    try:
        Registry(root).save(
            "contested", {"w": torch.full((100_000,), float(os.getpid()))}, {"pid": os.getpid()}
        )
    except UsageError as exc:
        results.put(("usage", str(exc)))
    except Exception as exc:  # anything else is a failure the parent reports
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    else:
        results.put(("saved", os.getpid()))


def _writer(root: str, generations: int) -> None:
    reg = Registry(root)
    for gen in range(1, generations + 1):
        reg.save("hot", {"w": torch.full((250_000,), float(gen))}, {"gen": gen}, replace=True)


def _reader(root: str, stop, results) -> None:
    reg = Registry(root)
    loads, errors, seen = 0, [], []
    while True:
        stopping = stop.is_set()
        try:
            tensors, meta = reg.load("hot")
            if not bool((tensors["w"] == float(meta["gen"])).all()):
                errors.append(f"mixed versions: meta gen {meta['gen']}")
            seen.append(meta["gen"])
            loads += 1
        except Exception as exc:  # the test asserts there are none
            errors.append(f"{type(exc).__name__}: {exc}")
        if stopping:
            break
    results.put((loads, errors, seen))


def test_processes_saving_different_names_all_land(tmp_path: Path) -> None:
    ctx = context()
    root = tmp_path / "reg"
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_save_many, args=(str(root), f"p{i}", 4, barrier)) for i in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    reg = Registry(root)
    assert reg.names() == sorted(f"p{i}-{j}" for i in range(3) for j in range(4))
    for i in range(3):
        for j in range(4):
            tensors, meta = reg.load(f"p{i}-{j}")
            assert meta["who"] == f"p{i}" and bool((tensors["w"] == float(j)).all())
    assert os.listdir(root / ".staging") == []


def test_processes_saving_the_same_name_one_wins(tmp_path: Path) -> None:
    ctx = context()
    root = tmp_path / "reg"
    Registry(root).save("seed", {"w": torch.zeros(1)}, {})  # the registry exists, so all race on the name
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_save_once, args=(str(root), barrier, results)) for _ in range(3)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
    kinds = sorted(kind for kind, _ in outcomes)
    assert kinds == ["saved", "usage", "usage"], outcomes
    winner = next(value for kind, value in outcomes if kind == "saved")
    for kind, message in outcomes:
        if kind == "usage":
            assert message == f"source 'contested' already exists in {root}; use --replace to overwrite it"
    tensors, meta = Registry(root).load("contested")
    assert meta["pid"] == winner and bool((tensors["w"] == float(winner)).all())


def test_readers_see_only_complete_versions_while_a_writer_replaces(tmp_path: Path) -> None:
    ctx = context()
    root = tmp_path / "reg"
    Registry(root).save("hot", {"w": torch.full((250_000,), 0.0)}, {"gen": 0})
    generations = 25
    stop, results = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(str(root), stop, results)) for _ in range(2)]
    for proc in readers:
        proc.start()
    writer = ctx.Process(target=_writer, args=(str(root), generations))
    writer.start()
    writer.join(120)
    assert writer.exitcode == 0
    stop.set()
    reports = [results.get(timeout=60) for _ in readers]
    for proc in readers:
        proc.join(60)
    for loads, errors, seen in reports:
        assert errors == []
        assert loads > 0
        assert seen == sorted(seen), "a reader went back to an older version"
        assert seen[-1] == generations
    assert sorted(os.listdir(root / "sources" / "hot")) == ["CURRENT", Registry(root).info("hot").version]


def test_reader_retries_when_the_version_vanishes_under_it(tmp_path: Path, monkeypatch) -> None:
    """Deterministic version of the race above: a writer replaces the source between a reader's
    reading CURRENT and its opening the version folder."""
    reg = Registry(tmp_path / "reg")
    reg.save("hot", {"w": torch.zeros(10)}, {"gen": 0})
    real_read = registry_files.read_regular
    state = {"fired": False}

    def racing_read(path: Path, limit: int) -> bytes:
        if path.name == "verifier.json" and not state["fired"]:
            state["fired"] = True
            monkeypatch.setattr(registry_files, "read_regular", real_read)
            Registry(reg.root).save("hot", {"w": torch.ones(10)}, {"gen": 1}, replace=True)
            assert not path.parent.exists()
        return real_read(path, limit)

    monkeypatch.setattr(registry_files, "read_regular", racing_read)
    tensors, meta = reg.load("hot")
    assert state["fired"]
    assert meta["gen"] == 1 and bool((tensors["w"] == 1).all())


def test_threads_saving_at_once(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for j in range(3):
                Registry(reg.root).save(f"t{index}-{j}", {"w": torch.full((10,), float(j))}, {})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(reg) == 12
    assert os.listdir(reg.root / ".staging") == []


# --------------------------------------------------------------------------- OS errors


@pytest.fixture
def populated(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "reg")
    reg.save("midjourney", {"w": torch.full((1000,), 1.0)}, {"gen": "old"})
    return reg


def _fail(code: int):
    def raiser(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return raiser


def _assert_intact(reg: Registry, version: str) -> None:
    tensors, meta = reg.load("midjourney")
    assert meta["gen"] == "old" and bool((tensors["w"] == 1.0).all())
    assert reg.info("midjourney").version == version
    assert sorted(os.listdir(reg.root / "sources" / "midjourney")) == ["CURRENT", version]
    assert os.listdir(reg.root / ".staging") == []
    assert reg.names() == ["midjourney"]


def _only_for(predicate, code: int, real):
    def patched(*args, **kwargs):
        if predicate(*args):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return patched


FAULTS = {
    "disk-full-writing-tensors": ("write", lambda real: _fail(errno.ENOSPC), "No space left on device"),
    "disk-full-half-way": (
        "write",
        lambda real: _half_then_fail(real),
        "No space left on device",
    ),
    "fsync-io-error": ("fsync", lambda real: _fail(errno.EIO), "Input/output error"),
    "read-only-current-swap": (
        "replace",
        lambda real: _only_for(lambda src, dst: str(dst).endswith("CURRENT"), errno.EROFS, real),
        "Read-only file system",
    ),
    "read-only-move": (
        "rename",
        lambda real: _only_for(lambda src, dst: "sources" in str(dst), errno.EROFS, real),
        "Read-only file system",
    ),
    "permission-denied-staging": (
        "mkdir",
        lambda real: _only_for(lambda path, *a: ".staging" in str(path), errno.EACCES, real),
        "Permission denied",
    ),
}


def _half_then_fail(real):
    calls = {"n": 0}

    def write(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, bytes(data[: max(1, len(data) // 2)]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_os_errors_become_one_line_registry_errors(
    populated: Registry, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    function, make, reason = FAULTS[fault]
    version = populated.info("midjourney").version
    with monkeypatch.context() as patch:
        patch.setattr(os, function, make(getattr(os, function)))
        with pytest.raises(RegistryError) as exc:
            populated.save("midjourney", {"w": torch.full((1000,), 2.0)}, {"gen": "new"}, replace=True)
    message = str(exc.value)
    assert "\n" not in message
    assert message == f"cannot write registry {populated.root}: {reason} (saving source 'midjourney')"
    _assert_intact(populated, version)
    populated.save("midjourney", {"w": torch.full((1000,), 2.0)}, {"gen": "new"}, replace=True)
    assert populated.load("midjourney")[1]["gen"] == "new"


def test_first_write_to_read_only_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "deep" / "reg")
    monkeypatch.setattr(os, "mkdir", _fail(errno.EROFS))
    with pytest.raises(RegistryError) as exc:
        reg.save("a", {"w": torch.zeros(1)}, {})
    assert str(exc.value) == f"cannot write registry {reg.root}: Read-only file system (saving source 'a')"
    monkeypatch.undo()
    assert not (tmp_path / "deep").exists()


def test_new_source_failing_at_commit_leaves_nothing(
    populated: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    monkeypatch.setattr(os, "replace", _only_for(lambda s, d: str(d).endswith("CURRENT"), errno.ENOSPC, real))
    with pytest.raises(RegistryError, match="No space left on device"):
        populated.save("second", {"w": torch.zeros(1)}, {})
    monkeypatch.undo()
    assert populated.names() == ["midjourney"]
    assert "second" not in populated
    populated.save("third", {"w": torch.zeros(1)}, {})  # the sweep removes the uncommitted 'second' folder
    assert sorted(os.listdir(populated.root / "sources")) == ["midjourney", "third"]


def test_remove_on_read_only_registry(populated: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    version = populated.info("midjourney").version
    monkeypatch.setattr(os, "rename", _fail(errno.EROFS))
    with pytest.raises(RegistryError) as exc:
        populated.remove("midjourney")
    monkeypatch.undo()
    assert str(exc.value) == (
        f"cannot write registry {populated.root}: Read-only file system (removing source 'midjourney')"
    )
    _assert_intact(populated, version)


def test_export_on_full_disk(populated: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    monkeypatch.setattr(os, "fsync", _fail(errno.ENOSPC))
    with pytest.raises(RegistryError) as exc:
        populated.export("midjourney", dest)
    monkeypatch.undo()
    assert str(exc.value) == f"cannot write export {dest / 'midjourney.occ.zip'}: No space left on device"
    assert os.listdir(dest) == []


def test_unwritable_lock_file(populated: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    version = populated.info("midjourney").version
    real = os.open
    monkeypatch.setattr(
        os, "open", _only_for(lambda path, *a: str(path).endswith(".lock"), errno.EACCES, real)
    )
    with pytest.raises(RegistryError) as exc:
        populated.save("midjourney", {"w": torch.zeros(1)}, {"gen": "new"}, replace=True)
    monkeypatch.undo()
    assert "Permission denied" in str(exc.value) and "\n" not in str(exc.value)
    _assert_intact(populated, version)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_really_read_only_folder(populated: Registry) -> None:
    version = populated.info("midjourney").version
    folders = [populated.root, populated.root / "sources", populated.root / "sources" / "midjourney"]
    folders.append(populated.root / ".staging")
    for folder in folders:
        folder.chmod(0o555)
    try:
        with pytest.raises(RegistryError, match="cannot write registry"):
            populated.save("midjourney", {"w": torch.zeros(1)}, {"gen": "new"}, replace=True)
        assert populated.load("midjourney")[1]["gen"] == "old"
    finally:
        for folder in folders:
            folder.chmod(0o755)
    _assert_intact(populated, version)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced descriptors")
def test_commit_fsyncs_files_then_folders(populated: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 cannot show a missing fsync (the page cache survives it), so check the protocol directly."""
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    populated.save("midjourney", {"w": torch.zeros(10)}, {"gen": "new"}, replace=True)
    monkeypatch.undo()
    staging = str(populated.root / ".staging")
    source = str(populated.root / "sources" / "midjourney")

    def first(predicate) -> int:
        return next(i for i, path in enumerate(synced) if predicate(path))

    tensors = first(lambda p: p.startswith(staging) and p.endswith("/verifier.safetensors"))
    meta = first(lambda p: p.startswith(staging) and p.endswith("/verifier.json"))
    staging_folder = first(lambda p: p.startswith(staging + "/") and len(Path(p).name) == 32)
    moved = first(lambda p: p == source)
    current = first(lambda p: p.startswith(source + "/.CURRENT."))
    swapped = max(i for i, p in enumerate(synced) if p == source)
    assert tensors < staging_folder and meta < staging_folder < moved < current < swapped


_REAL_FS_SCRIPT = r"""
import json, os, subprocess, sys
import torch
from occ.errors import RegistryError
from occ.registry import Registry

mount = sys.argv[1]
reg = Registry(os.path.join(mount, "reg"))
reg.save("a", {"w": torch.ones(1000)}, {"gen": "old"})
version = reg.info("a").version
out = {}

def state():
    tensors, meta = reg.load("a")
    return [meta["gen"], bool((tensors["w"] == 1).all()), reg.info("a").version == version,
            sorted(os.listdir(os.path.join(reg.root, "sources", "a"))) == ["CURRENT", version],
            os.listdir(os.path.join(reg.root, ".staging")), reg.names()]

try:
    reg.save("a", {"w": torch.full((1_000_000,), 2.0)}, {"gen": "new"}, replace=True)  # 4 MB > 2 MB disk
except RegistryError as exc:
    out["full"] = str(exc)
out["after_full"] = state()
subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
for key, call in [("ro_save", lambda: reg.save("a", {"w": torch.zeros(1)}, {}, replace=True)),
                  ("ro_new", lambda: reg.save("b", {"w": torch.zeros(1)}, {})),
                  ("ro_remove", lambda: reg.remove("a"))]:
    try:
        call()
    except RegistryError as exc:
        out[key] = str(exc)
out["after_ro"] = state()
print(json.dumps(out))
"""


def test_real_full_and_read_only_filesystem(tmp_path: Path) -> None:
    """A real 2 MB tmpfs, then remounted read-only, in a private mount namespace (skipped if not allowed)."""
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    mount = tmp_path / "mnt"
    mount.mkdir()
    repo = Path(registry_files.__file__).resolve().parents[2]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    )
    shell = 'mount -t tmpfs -o size=2m occ-test "$0" || exit 77; exec "$1" -c "$2" "$0"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell]
    result = subprocess.run(
        [*command, str(mount), sys.executable, _REAL_FS_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if result.returncode == 77 or (result.returncode != 0 and "unshare" in result.stderr):
        pytest.skip(f"cannot mount a private tmpfs here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    root = mount / "reg"
    assert out["full"] == f"cannot write registry {root}: No space left on device (saving source 'a')"
    assert out["ro_save"] == f"cannot write registry {root}: Read-only file system (saving source 'a')"
    assert out["ro_new"] == f"cannot write registry {root}: Read-only file system (saving source 'b')"
    assert out["ro_remove"] == f"cannot write registry {root}: Read-only file system (removing source 'a')"
    intact = ["old", True, True, True, [], ["a"]]
    assert out["after_full"] == intact
    assert out["after_ro"] == intact
