"""Faults at the command line (issue 5): ``kill -9`` during ``occ enroll``, processes enrolling and
attributing at once, a full or read-only disk, damaged or hostile verifier files, hostile archives.

The registry's own crash protocol is tested step by step in tests/test_registry_faults.py; here the
real CLI runs (as a subprocess where a process must die or run beside another) and the checks are what
a user sees: ``occ sources`` / ``occ attribute`` keep working, old versions survive, messages are one
line, exit codes are as documented.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import clikit
import pytest
import torch
from clikit import check_attribute_row, check_verify_row, invoke

from occ.registry.schema import _checksum

pytestmark = pytest.mark.skipif(os.name != "posix", reason="kill -9 and fault injection are POSIX here")


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


def version_dir(reg: Path, name: str) -> Path:
    return reg / "sources" / name / (reg / "sources" / name / "CURRENT").read_text().strip()


def scores(w, reg: Path, source: str = "a") -> list[float]:
    run = invoke("verify", w.a_test, w.b_test, "--source", source, "--registry", reg, "--json")
    assert run.code == 0, run
    return [r["score"] for r in run.json()]


def seed_of(reg: Path, name: str) -> int:
    run = invoke("sources", "show", name, "--registry", reg)
    assert run.code == 0, run
    return json.loads(run.stdout)["settings"]["seed"]


STALE = "stored joint model does not match its sources"
UNKNOWN_B = ("warning: the registry's stored joint model was not fitted on exactly its readable sources (an "
             "interrupted change, or a damaged source): what decides b is known after `occ refit`")


def assert_registry_healthy(w, reg: Path, expected: set[str]) -> list[str]:
    """``occ sources`` lists only usable sources; ``occ attribute`` uses them all without complaint."""
    listing = invoke("sources", "--registry", reg)
    assert listing.code == 0 and "unusable" not in listing.stdout, listing
    names = [n for n in ("a", "b", "fresh", "p1", "p2") if f"│ {n} " in listing.stdout]
    assert expected <= set(names), (names, listing)
    run = invoke("attribute", w.a_test, w.b_test, "--registry", reg, "--json")
    # (a kill between storing a source and refitting the joint model leaves it stale: said, and refitted)
    assert run.code == 0 and [e for e in run.err_lines if STALE not in e] == [], run
    for row in run.json():
        check_attribute_row(row, names)
    return names


# -------------------------------------------------------------------------------------------------- kill -9


def start_enroll(w, reg: Path, name: str, stop_at: str | None, log: Path) -> subprocess.Popen:
    images = w.b_train if name != "a" else w.a_train
    args = clikit.enroll_args(name, images, reg, w.backbone, "--replace", "--seed", "1")
    argv = [sys.executable, "-c", clikit.FAULT_CHILD, stop_at, *map(str, args)] if stop_at else clikit.occ_argv(*args)
    # a child killed inside enroll leaves its verifier staging folder: in this test's folder, not /tmp
    tmp = log.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    with open(log, "w") as handle:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=handle,
                                env=clikit.subprocess_env(TMPDIR=str(tmp)))


@pytest.mark.slow
def test_kill_minus_9_during_enroll(w, tmp_path) -> None:
    """Kill ``occ enroll`` at chosen steps of the registry write and at random times: the registry stays
    readable, a replaced source keeps its old version until the new one is committed, a new source
    appears complete or not at all."""
    before = scores(w, w.reg_a)
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    trials = [
        {"name": "a", "stop_at": "meta-written", "expect": "old"},
        {"name": "a", "stop_at": "current-written", "expect": "old"},
        {"name": "a", "stop_at": "current-replaced", "expect": "new"},
        {"name": "fresh", "stop_at": "moved", "expect": "absent"},
        {"name": "a", "delay": rng.uniform(1.0, 12.0), "expect": "either"},
        {"name": "fresh", "delay": rng.uniform(1.0, 12.0), "expect": "either"},
    ]
    for i, trial in enumerate(trials):
        trial["reg"] = clikit.copy_registry(w.reg_a, tmp_path / f"reg{i}")
        trial["log"] = tmp_path / f"log{i}.txt"
        trial["proc"] = start_enroll(w, trial["reg"], trial["name"], trial.get("stop_at"), trial["log"])
        trial["start"] = time.monotonic()
    deadline = time.monotonic() + 240
    try:
        pending = list(trials)
        while pending and time.monotonic() < deadline:
            for trial in list(pending):
                proc = trial["proc"]
                if "stop_at" in trial:
                    hit = f"at {trial['stop_at']}" in trial["log"].read_text(errors="replace")
                    if hit:
                        proc.send_signal(signal.SIGKILL)
                    elif proc.poll() is not None:
                        raise AssertionError(f"{trial} ended before its kill point: {trial['log'].read_text()}")
                else:
                    hit = time.monotonic() - trial["start"] >= trial["delay"] or proc.poll() is not None
                    if hit and proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                if hit:
                    proc.wait(30)
                    pending.remove(trial)
            time.sleep(0.05)
        assert not pending, f"trials never reached their kill point: {pending}"
    finally:
        for trial in trials:
            if trial["proc"].poll() is None:
                trial["proc"].kill()
                trial["proc"].wait(30)

    for trial in trials:
        reg, context = trial["reg"], f"{trial} (random seed {seed})"
        names = assert_registry_healthy(w, reg, {"a"})
        if trial["expect"] == "old" or (trial["name"] == "a" and seed_of(reg, "a") == 0):
            assert seed_of(reg, "a") == 0, context
            assert scores(w, reg) == before, context  # the earlier version, intact
        elif trial["expect"] == "new":
            assert seed_of(reg, "a") == 1, context
        if trial["name"] == "fresh":
            if trial["expect"] == "absent":
                assert "fresh" not in names, context
            elif "fresh" in names:
                assert seed_of(reg, "fresh") == 1 and len(scores(w, reg, "fresh")) == 12, context
            assert scores(w, reg) == before, context
        # A later enroll works and sweeps what the killed one left behind ('fresh', if it was committed,
        # was trained on the same images).
        assert invoke(*clikit.enroll_args("p2", w.b_train, reg, w.backbone, "--allow-overlap")).code == 0
        assert os.listdir(reg / ".staging") == [], context
        for name in os.listdir(reg / "sources"):
            assert sorted(os.listdir(reg / "sources" / name)) == ["CURRENT", version_dir(reg, name).name], context


# -------------------------------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_two_processes_enroll_while_attribute_reads(w, tmp_path) -> None:
    """Two ``occ enroll`` processes on one registry (a new source, and a replacement of 'a') while this
    process runs ``occ attribute`` in a loop: every attribution succeeds on complete verifiers only, and
    both enrolled sources are there afterwards."""
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    procs = [
        subprocess.Popen(clikit.occ_argv(*clikit.enroll_args("p1", w.b_train, reg, w.backbone)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clikit.subprocess_env()),
        subprocess.Popen(clikit.occ_argv(*clikit.enroll_args("a", w.a_train, reg, w.backbone, "--replace", "--seed",
                                                             "2")),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clikit.subprocess_env()),
    ]
    seen: set[tuple[str, ...]] = set()
    rounds = 0
    try:
        deadline = time.monotonic() + 240
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            run = invoke("attribute", w.a_test, w.b_test, "--registry", reg, "--json")
            # never a half-written or missing verifier (a joint model not yet refitted is said and refitted)
            assert run.code == 0 and [e for e in run.err_lines if STALE not in e] == [], run
            rows = run.json()
            assert len(rows) == 12
            names = sorted(rows[0]["scores"])
            assert "a" in names and set(names) <= {"a", "p1"}
            for row in rows:
                check_attribute_row(row, names)
            seen.add(tuple(names))
            rounds += 1
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    assert [p.returncode for p in procs] == [0, 0], errors
    assert rounds > 0
    assert_registry_healthy(w, reg, {"a", "p1"})
    assert seed_of(reg, "a") == 2 and seed_of(reg, "p1") == 0


# -------------------------------------------------------------------------------------------------- disk


def _only_in(root: Path, real, error: int):
    def fake(path, *args, **kwargs):
        if str(root) in os.fspath(path):
            raise OSError(error, os.strerror(error), os.fspath(path))
        return real(path, *args, **kwargs)

    return fake


def test_full_disk_during_enroll_and_set_threshold(w, tmp_path, monkeypatch) -> None:
    reg = clikit.copy_registry(w.reg_ab, tmp_path / "reg")
    before, files = scores(w, reg), clikit.tree(reg)
    archive = tmp_path / "b.zip"
    assert invoke("export", "b", archive, "--registry", reg).code == 0
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    commands = [
        (clikit.enroll_args("a", w.a_train, reg, w.backbone, "--replace", "--seed", "3"), "saving source 'a'"),
        # (images no source was trained on: an overlap with 'a' would be refused before any write)
        (clikit.enroll_args("new", w.a_test, reg, w.backbone), "saving source 'new'"),
        (["sources", "set-threshold", "a", "--far", "0.3", "--registry", reg], "saving source 'a'"),
        # (a copy of 'b' under another name: refused as an overlap before any write unless allowed)
        (["import", archive, "--as", "b2", "--allow-overlap", "--registry", reg], "saving source 'b2'"),
    ]
    for args, needle in commands:
        run = invoke(*args)
        assert run.code == 1, run
        assert len(run.err_lines) == 1, run
        assert run.err_lines[0] == f"error: cannot write registry {reg}: No space left on device ({needle})"
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert scores(w, reg) == before
    assert {k: v for k, v in clikit.tree(reg).items() if k != ".lock"} == {
        k: v for k, v in files.items() if k != ".lock"}
    assert_registry_healthy(w, reg, {"a", "b"})


def test_read_only_registry(w, tmp_path, monkeypatch) -> None:
    reg = clikit.copy_registry(w.reg_ab, tmp_path / "reg")
    before, files = scores(w, reg), clikit.tree(reg)
    for function in ("mkdir", "rename", "replace"):
        monkeypatch.setattr(os, function, _only_in(reg, getattr(os, function), errno.EROFS))
    commands = [
        (clikit.enroll_args("a", w.a_train, reg, w.backbone, "--replace", "--seed", "3"), "saving source 'a'"),
        (["sources", "remove", "b", "--yes", "--registry", reg], "removing source 'b'"),
        (["sources", "set-threshold", "a", "--tpr", "0.5", "--registry", reg], "saving source 'a'"),
    ]
    for args, needle in commands:
        run = invoke(*args)
        assert run.code == 1, run
        assert run.err_lines == [f"error: cannot write registry {reg}: Read-only file system ({needle})"], run
    # Reading a read-only registry works.
    assert scores(w, reg) == before
    monkeypatch.undo()
    assert {k: v for k, v in clikit.tree(reg).items() if k != ".lock"} == {
        k: v for k, v in files.items() if k != ".lock"}
    assert_registry_healthy(w, reg, {"a", "b"})


# -------------------------------------------------------------------------------------------------- damaged files


def rewrite_json(path: Path, change, fix_checksum: bool) -> None:
    record = json.loads(path.read_text())
    change(record)
    if fix_checksum:
        record["checksum"] = _checksum(record)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))


def flip_tensor_byte(reg: Path) -> str:
    path = version_dir(reg, "a") / "verifier.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "was modified or corrupted (sha256 mismatch)"


def edit_threshold(reg: Path) -> str:
    rewrite_json(version_dir(reg, "a") / "verifier.json",
                 lambda r: r["calibration"].update(threshold=-1e9), fix_checksum=False)
    return "was modified or corrupted (checksum mismatch)"


def truncate_tensors(reg: Path) -> str:
    path = version_dir(reg, "a") / "verifier.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    return "(truncated or modified)"


def break_json(reg: Path) -> str:
    path = version_dir(reg, "a") / "verifier.json"
    path.write_bytes(path.read_bytes()[:-20])
    return "is not valid JSON"


DAMAGE = {"flipped-tensor-byte": flip_tensor_byte, "edited-threshold": edit_threshold,
          "truncated-tensors": truncate_tensors, "broken-json": break_json}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_verifier_is_refused_and_attribute_goes_on(w, tmp_path, damage) -> None:
    reg = clikit.copy_registry(w.reg_ab, tmp_path / "reg")
    # b is decided by the registry's joint model: with a unusable, by the model of the readable sources,
    # the one a registry without a has
    without_a = clikit.copy_registry(w.reg_ab, tmp_path / "without-a")
    assert invoke("sources", "remove", "a", "--yes", "--registry", without_a).code == 0
    b_before = scores(w, without_a, "b")
    needle = DAMAGE[damage](reg)

    run = invoke("verify", w.a_test, "--source", "a", "--registry", reg, "--json")
    assert run.code == 1 and run.stdout == "", run
    assert len(run.err_lines) == 1 and run.err_lines[0].startswith("error: source 'a': "), run
    assert needle in run.err_lines[0] and "verifier." in run.err_lines[0], run

    run = invoke("attribute", w.a_test, w.b_test, "--registry", reg, "--json")
    assert run.code == 1, run  # a source was left out; every image was still attributed over the rest
    assert len(run.err_lines) == 1 and run.err_lines[0].startswith("source 'a' left out: ") and needle in run.stderr
    rows = run.json()
    assert len(rows) == 12
    for row in rows:
        check_attribute_row(row, ["b"])
    assert [r["scores"]["b"] for r in rows] == b_before

    listing = invoke("sources", "--registry", reg)
    assert "│ b " in listing.stdout, listing
    if "json" in damage or "threshold" in damage:
        # `occ sources` reads verifier.json only (no tensors): it flags the source, on one stderr line.
        assert listing.code == 1 and "│ a    │ unusable" in listing.stdout, listing
        assert listing.err_lines[0].startswith("unusable: source 'a': ") and needle in listing.err_lines[0], listing
        # b is decided by a joint model fitted without a (attribute fits it in memory): not the stored one,
        # which was fitted with a; what decides b is unknown without a backbone until `occ refit` stores it
        assert listing.err_lines[1:] == [UNKNOWN_B], listing
        as_json = invoke("sources", "--registry", reg, "--json")  # the reason is the object's error
        assert as_json.code == 1 and as_json.err_lines == [UNKNOWN_B], as_json
        a, b = as_json.json()
        assert set(a) == {"name", "error"} and a["name"] == "a" and needle in a["error"], a
        assert b["name"] == "b" and b["threshold"] is None and b["weak"] is None, b
        refit = invoke("refit", "--registry", reg)
        # a source left out fails the command (exit 1) with one line naming it and why; b is refitted
        left_out = [line for line in refit.err_lines if " left out: " in line]
        assert refit.code == 1 and left_out == [refit.err_lines[0]], refit
        assert left_out[0].startswith("source 'a' left out: ") and needle in left_out[0], refit
        assert "joint model refitted over 1 source(s) (b)" in refit.stderr, refit
        b = invoke("sources", "--registry", reg, "--json").json()[1]
        verified = invoke("verify", w.b_test, "--source", "b", "--registry", reg, "--json").json()
        assert b["weak"] is False and {r["threshold"] for r in verified} == {b["threshold"]}, (b, verified)
    assert scores(w, reg, "b") == b_before  # the other source is untouched

    # With the damaged source alone there is nothing to attribute with: a clear error, exit 1, and no
    # default backbone loaded (or fetched) for nothing.
    assert invoke("sources", "remove", "b", "--yes", "--registry", reg).code == 0
    run = invoke("attribute", w.a_test, "--registry", reg, "--json")
    assert run.code == 1 and run.stdout == "", run
    assert needle in run.stderr and run.err_lines[-1].startswith("error: "), run
    if "json" in damage or "threshold" in damage:  # unreadable metadata: the damage is the error
        assert len(run.err_lines) == 1 and run.err_lines[0].startswith("error: source 'a': "), run
    else:  # readable metadata, damaged tensors: left out, then nothing is left
        assert len(run.err_lines) == 2 and "none of the enrolled sources" in run.err_lines[1], run


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("fix_manifest", [False, True], ids=["as-is", "checksums-recomputed"])
def test_pickle_payload_under_the_verifier_name_is_not_executed(w, tmp_path, fix_manifest) -> None:
    reg = clikit.copy_registry(w.reg_ab, tmp_path / "reg")
    marker = tmp_path / "PWNED"
    buffer = io.BytesIO()
    torch.save({"weight": _Payload(marker)}, buffer)
    payload = buffer.getvalue()
    folder = version_dir(reg, "a")
    (folder / "verifier.safetensors").write_bytes(payload)
    if fix_manifest:  # an attacker who also rewrites the manifest and the checksum
        rewrite_json(folder / "verifier.json", lambda r: r["files"]["verifier.safetensors"].update(
            sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload)), fix_checksum=True)
    run = invoke("verify", w.good(), "--source", "a", "--registry", reg, "--json")
    assert run.code == 1 and len(run.err_lines) == 1, run
    assert ("not a valid safetensors file" if fix_manifest else "modified") in run.stderr
    run = invoke("attribute", w.good(), "--registry", reg, "--json")
    assert run.code == 1 and "source 'a' left out" in run.stderr, run
    check_attribute_row(run.json()[0], ["b"])
    # Export copies the files as they are (checked against the manifest only); import parses them and
    # refuses. Either way nothing is unpickled.
    exported = invoke("export", "a", tmp_path / "a.zip", "--registry", reg)
    assert exported.code == (0 if fix_manifest else 1), exported
    if fix_manifest:
        run = invoke("import", tmp_path / "a.zip", "--registry", tmp_path / "other")
        assert run.code == 1 and "not a valid safetensors file" in run.stderr, run
        assert not (tmp_path / "other").exists()
    assert not marker.exists(), "the payload ran"


def test_hostile_import_writes_nothing(w, tmp_path) -> None:
    reg = clikit.copy_registry(w.reg_a, tmp_path / "reg")
    archive = tmp_path / "good.zip"
    assert invoke("export", "a", archive, "--registry", reg).code == 0
    with zipfile.ZipFile(archive) as z:
        members = {name: z.read(name) for name in z.namelist()}
    files = clikit.tree(reg)
    hostile = {
        "traversal": [*members.items(), ("../evil.txt", b"x")],
        "absolute": [*members.items(), (str(tmp_path / "evil.txt"), b"x")],
        "extra-member": [*members.items(), ("run.sh", b"#!/bin/sh\n")],
        "edited-meta": [(n, d.replace(b'"far": 0.05', b'"far": 0.5') if n == "verifier.json" else d)
                        for n, d in members.items()],
        "not-a-zip": None,
    }
    for case, entries in hostile.items():
        path = tmp_path / f"{case}.zip"
        if entries is None:
            path.write_bytes(b"PK\x03\x04 but not really a zip archive")
        else:
            with zipfile.ZipFile(path, "w") as z:
                for name, data in entries:
                    z.writestr(name, data)
        for target in (reg, tmp_path / "fresh-registry"):
            run = invoke("import", path, "--as", "imported", "--registry", target)
            assert run.code == 1, (case, run)
            assert len(run.err_lines) == 1 and run.err_lines[0].startswith(f"error: {path}"), (case, run)
            assert run.stdout == ""
        assert clikit.tree(reg) == files, case
        assert not (tmp_path / "fresh-registry").exists(), case
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists(), case
    check_verify_row(invoke("verify", w.good(), "--source", "a", "--registry", reg, "--json").json()[0], "a")
