"""Helpers for the CLI tests (tests/test_cli*.py): run ``occ`` in-process through typer's CliRunner or
as a subprocess, parse its output strictly, and write image families.

In-process runs share the test session's torch (one thread) and its feature cache (``OCC_CACHE_DIR``
from conftest), so a verify costs milliseconds; subprocesses are used only where a test needs a real
process (kill -9, concurrency, peak memory, imports).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from typer.testing import CliRunner

from occ.testing import tiny_clip

REPO = Path(__file__).resolve().parents[1]
VERIFY_KEYS = {"path", "source", "score", "threshold", "accepted", "reason"}
ATTRIBUTE_KEYS = {"path", "source", "scores", "accepted", "reason"}
ERROR_KEYS = {"path", "error"}
SUMMARY_RE = re.compile(r"(verify|attribute): \d+ images, \d+ scored, \d+ failed in |eval: \d+ files, \d+ scored, ")
STEPS = "5"  # training steps per model: enough for the tiny families, fast on a busy 2-core machine


class Run:
    """The outcome of one CLI run: exit code, stdout, stderr (text)."""

    def __init__(self, code: int, stdout: str, stderr: str, args: list[str]):
        self.code, self.stdout, self.stderr, self.args = code, stdout, stderr, args

    def __repr__(self) -> str:
        return f"Run({self.args}, code={self.code}, stdout={self.stdout[-800:]!r}, stderr={self.stderr[-800:]!r})"

    @property
    def summary(self) -> str | None:
        """The one-line summary verify/attribute/eval end with on stderr (None if there is none)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines and SUMMARY_RE.match(lines[-1]) else None

    @property
    def err_lines(self) -> list[str]:
        """stderr lines other than the closing summary."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[:-1] if self.summary is not None else lines

    def json(self) -> list[dict]:
        """Every stdout line as a JSON object (fails if any line is something else: --json prints only JSON)."""
        return json_lines(self.stdout)


def invoke(*args, env: dict | None = None, input: str | None = None) -> Run:
    """Run ``occ ARGS`` in-process. An exception other than the CLI's own exit is re-raised."""
    from occ.cli import app

    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
    result = CliRunner().invoke(app, argv, env=env, input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"occ {argv} raised instead of exiting:\n{text}\nstderr: {result.stderr}")
    return Run(result.exit_code, result.stdout, result.stderr, argv)


def free_port() -> int:
    """A TCP port free on loopback now (for a server or a Ray head a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_lines(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        row = json.loads(line)  # a non-JSON line on stdout fails here
        assert isinstance(row, dict), line
        rows.append(row)
    return rows


def check_verify_row(row: dict, source: str) -> None:
    assert set(row) == VERIFY_KEYS, row
    assert isinstance(row["path"], str) and row["source"] == source
    assert isinstance(row["score"], float) and 0.0 <= row["score"] <= 1.0
    assert isinstance(row["threshold"], float) and isinstance(row["accepted"], bool)
    assert row["reason"] is None or (isinstance(row["reason"], str) and not row["accepted"]), row
    # the threshold shown is the one that decides: accepted <=> the score reaches it and nothing overrides it
    assert row["accepted"] == (row["score"] >= row["threshold"] and row["reason"] is None) \
        or abs(row["score"] - row["threshold"]) < 1e-5, row


def check_attribute_row(row: dict, sources: Iterable[str]) -> None:
    assert set(row) == ATTRIBUTE_KEYS, row
    assert isinstance(row["path"], str)
    assert set(row["scores"]) == set(sources), row
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in row["scores"].values())
    assert isinstance(row["accepted"], list) and set(row["accepted"]) <= set(row["scores"])
    assert row["reason"] is None or isinstance(row["reason"], str), row
    if row["accepted"]:
        assert row["source"] == row["accepted"][0]
        assert [row["scores"][n] for n in row["accepted"]] == sorted(
            (row["scores"][n] for n in row["accepted"]), reverse=True)
    else:
        assert row["source"] is None


def check_error_row(row: dict) -> None:
    assert set(row) == ERROR_KEYS, row
    assert isinstance(row["path"], str) and isinstance(row["error"], str) and row["error"]
    assert "\n" not in row["error"] and row["path"] and row["error"].isprintable()


def write_family(folder: Path, make: Callable, seeds: Iterable[int], prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"{prefix}{seed:03d}.png"
        make(seed).save(path)
        paths.append(path)
    return paths


def noise_family(folder: Path, seeds: Iterable[int]) -> list[Path]:
    return write_family(folder, tiny_clip.noise_image, seeds, "noise")


def gradient_family(folder: Path, seeds: Iterable[int]) -> list[Path]:
    return write_family(folder, tiny_clip.gradient_image, seeds, "grad")


def enroll_args(name: str, images, registry: Path, backbone: Path, *extra) -> list:
    """``occ enroll`` with the default method (lda, fitted in closed form)."""
    paths = images if isinstance(images, (list, tuple)) else [images]
    return ["enroll", name, *paths, "--registry", registry, "--backbone", backbone, *extra]


PROMPT = ("--method", "prompt", "--steps", STEPS)  # enroll options for a prompt verifier, trained briefly


def copy_registry(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): what must not change."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


# --------------------------------------------------------------------------------------------------
# Subprocesses


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of an ``occ`` child: this checkout first on the path, torch on one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="80")
    env.update(extra)
    return env


def occ_argv(*args) -> list[str]:
    return [sys.executable, "-m", "occ.cli", *(os.fspath(a) if isinstance(a, os.PathLike) else str(a)
                                                for a in args)]


def run_occ(*args, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(occ_argv(*args), capture_output=True, text=True, env=subprocess_env(**env),
                          timeout=timeout, check=False)


# A child that runs the CLI with occ.registry's fault hook replaced: when the write reaches STEP it
# prints "at STEP" on stderr and sleeps until killed. argv: STEP occ-arguments...
FAULT_CHILD = r"""
import sys, time
import occ.registry.store as registry
stop_at = sys.argv[1]

def hook(step):
    if step == stop_at:
        sys.stderr.write(f"at {step}\n")
        sys.stderr.flush()
        time.sleep(3600)

registry._fault_point = hook
sys.argv = ["occ", *sys.argv[2:]]
from occ.cli import main
main()
"""


# --------------------------------------------------------------------------------------------------
# One small world per test session: image families and registries enrolled through the CLI


class World:
    """Folders of the two tiny-CLIP families and registries enrolled from them (read-only: copy to change).

    * ``a_train`` / ``a_test``: warm noise textures (source "a"), ``b_train`` / ``b_test``: cool gradients;
    * ``reg_a``: source "a" alone; ``reg_ab``: "a" and "b" (from ``b_train``), all on ``backbone``.
    """

    def __init__(self, root: Path, backbone: Path):
        self.root, self.backbone = root, backbone
        self.a_train = root / "a_train"
        self.b_train = root / "b_train"
        self.a_test = root / "a_test"
        self.b_test = root / "b_test"
        noise_family(self.a_train, range(8))
        gradient_family(self.b_train, range(8))
        noise_family(self.a_test, range(100, 106))
        gradient_family(self.b_test, range(100, 106))
        self.reg_a = root / "reg_a"
        self.reg_ab = root / "reg_ab"
        for args in (enroll_args("a", self.a_train, self.reg_a, backbone),
                     enroll_args("a", self.a_train, self.reg_ab, backbone),
                     enroll_args("b", self.b_train, self.reg_ab, backbone)):
            run = invoke(*args)
            assert run.code == 0, run

    def good(self, i: int = 0) -> Path:
        return sorted(self.a_test.iterdir())[i]


_WORLDS: dict[str, World] = {}


def world(tmp_path_factory, backbone: Path) -> World:
    """The session's :class:`World` on ``backbone`` (built on first use)."""
    key = str(backbone)
    if key not in _WORLDS:
        _WORLDS[key] = World(tmp_path_factory.mktemp("cli-world"), backbone)
    return _WORLDS[key]
