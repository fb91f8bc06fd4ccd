"""Robustness battery for the ``occ`` command line (issue 5).

Runs bad inputs and faults against the CLI on a tiny random CLIP built in a temporary folder (with
``occ/testing/tiny_clip.py``; odd files come from ``occ/testing/imagegen.py``), and counts how many
cases were *handled as documented*:

* a bad input file: exit code 1, exactly one error naming the file (one JSON object ``{"path", "error"}``
  with ``--json``; one stderr line without), every other input of the batch still scored;
* an odd but valid image (16-bit, CMYK, palette + transparency, LA, animations, EXIF rotation): scored,
  exit 0 (EXIF-rotated copies score like the upright one within 1e-5: scores are printed to 6
  decimals and the tiny tower's float sums depend slightly on the batch);
* a usage error: exit 2, one stderr line, nothing written;
* a damaged, edited or hostile verifier / archive: refused with one line (exit 1), no code run, nothing
  written; ``occ attribute`` leaves the source out and goes on with the others;
* a full or read-only disk: one line, exit 1, the registry unchanged;
* ``kill -9`` during ``occ enroll`` (at chosen write steps and at random times), and enrolls running
  beside ``occ attribute``: the registry stays readable, old versions survive, no half-written source;
* a folder of many paths (100,000 by default, and 1 % of that): every path reported, peak memory flat.

    python bench/robustness.py [--out bench/results/robustness.json] [--kill-trials 3] [--many 100000]

Prints a JSON summary (and writes it with ``--out``); exits 1 if any case was not handled.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import platform
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from occ.testing import tiny_clip
from occ.testing.imagegen import (
    encode,
    exif_orientation,
    gif_bomb,
    jpeg_with_size,
    pattern_array,
    png_chunk,
    webp_bomb,
)

ROOT = Path(__file__).resolve().parent.parent
STEPS = "5"


# ----------------------------------------------------------------------------------------- tiny backbone


def build_backbone(folder: Path) -> tuple[Path, Callable, Callable, str]:
    """A tiny CLIP folder, two image families (target-like, other) and a label saying which tiny CLIP."""
    return (tiny_clip.build_tiny_clip(folder, seed=0), tiny_clip.noise_image, tiny_clip.gradient_image,
            "tiny random CLIP with text tower (occ/testing/tiny_clip.py)")


# ----------------------------------------------------------------------------------------- files


def jpeg_sized(width: int, height: int) -> bytes:
    return jpeg_with_size(encode(Image.fromarray(pattern()), "JPEG", quality=90), width, height)



def pattern(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    return pattern_array(width, height, seed)


def png_raw(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def png16(values: np.ndarray) -> bytes:
    colour = 0 if values.ndim == 2 else 2
    big = values.astype(">u2")
    return png_raw(values.shape[1], values.shape[0], 16, colour,
                   b"".join(b"\x00" + big[y].tobytes() for y in range(values.shape[0])))


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (48, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)


JPEG = encode(Image.fromarray(pattern()), "JPEG", quality=90)
PNG = encode(Image.fromarray(pattern()), "PNG")
BAD_FILES: dict[str, tuple[bytes, Callable[[], bytes], str]] = {
    "zero-byte file": (b"empty.png", lambda: b"", "empty file"),
    "text named .png": (b"text.png", lambda: b"not a picture\n" * 4, "not an image"),
    "binary named .png": (b"binary.png", lambda: b"\x00\x13\x37" + np.random.default_rng(0).bytes(4000), ""),
    "truncated PNG": (b"cut.png", lambda: PNG[:300], "truncated or corrupt"),
    "truncated JPEG": (b"cut.jpg", lambda: JPEG[: len(JPEG) // 2], "truncated or corrupt"),
    "1x1 image": (b"dot.png", lambda: encode(Image.new("RGB", (1, 1)), "PNG"), "too small"),
    "1xN image": (b"line.png", lambda: encode(Image.new("RGB", (1, 500)), "PNG"), "too small"),
    "PNG bomb 100000x100000": (b"bomb.png", lambda: png_raw(100_000, 100_000, 8, 2, b"\x00" * 64), "bomb"),
    "GIF bomb 65535x65535": (b"bomb.gif", lambda: gif_bomb(65_535, 65_535), "bomb"),
    "WebP bomb 16384x16384": (b"bomb.webp", lambda: webp_bomb(16_384, 16_384), "bomb"),
    "JPEG bomb 65000x65000": (b"bomb.jpg", lambda: jpeg_sized(65_000, 65_000), "bomb"),
    "non-UTF-8 file name": (b"caf\xe9-\xff.png", lambda: b"garbage", "not an image"),
    "newline in file name": (b"two\nlines.png", lambda: b"garbage", "not an image"),
    "very long file name": (b"L" * 246 + b".png", lambda: b"garbage", "not an image"),
    "rich markup in file name": (b"[bold]x[red].png", lambda: b"garbage", "not an image"),
    "unsupported format (ICO)": (b"icon.png", lambda: encode(Image.fromarray(pattern()), "ICO"), "unsupported"),
}
ODD_FILES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "16-bit RGB PNG": ("rgb16.png", lambda: png16(pattern().astype(np.uint16) * 257)),
    "16-bit gray PNG": ("gray16.png", lambda: png16((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16))),
    "CMYK JPEG": ("cmyk.jpg", lambda: encode(Image.fromarray(pattern()).convert("CMYK"), "JPEG")),
    "palette PNG with transparency": ("pal.png", lambda: encode(
        Image.fromarray(pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG", transparency=0)),
    "LA PNG": ("la.png", lambda: encode(Image.fromarray(pattern()).convert("LA"), "PNG")),
    "animated GIF": ("anim.gif", lambda: animated("GIF")),
    "animated WebP": ("anim.webp", lambda: animated("WEBP")),
    "APNG": ("anim.png", lambda: animated("PNG")),
    "JPEG named .png": ("jpeg.png", lambda: JPEG),
}


# ----------------------------------------------------------------------------------------- the battery


class Battery:
    def __init__(self, work: Path, backbone: Path, noise: Callable, gradient: Callable):
        self.work, self.backbone = work, backbone
        self.cases: list[dict] = []
        self.a_train, self.b_train, self.tests = work / "a_train", work / "b_train", work / "tests"
        for folder, make, seeds in ((self.a_train, noise, range(8)), (self.b_train, gradient, range(8)),
                                    (self.tests, noise, range(100, 102))):
            folder.mkdir(parents=True)
            for s in seeds:
                make(s).save(folder / f"{s:03d}.png")
        self.goods = sorted(self.tests.iterdir())
        self.reg = work / "reg"
        for name, folder in (("a", self.a_train), ("b", self.b_train)):
            run = self.cli(*self.enroll_args(name, folder, self.reg))
            if run[0] != 0:
                raise SystemExit(f"setup: enrolling {name} failed: {run}")

    # -- running the CLI

    def enroll_args(self, name, images, reg, *extra) -> list[str]:
        return ["enroll", name, str(images), "--registry", str(reg), "--backbone", str(self.backbone),
                "--steps", STEPS, *extra]

    @staticmethod
    def cli(*args, env: dict | None = None) -> tuple[int, str, str]:
        """``occ ARGS`` in-process; an exception escaping the CLI counts as exit code -1."""
        from typer.testing import CliRunner

        from occ.cli import app

        result = CliRunner().invoke(app, [os.fspath(a) if isinstance(a, os.PathLike) else a for a in args], env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return -1, result.stdout, f"{type(result.exception).__name__}: {result.exception}"
        return result.exit_code, result.stdout, result.stderr

    @staticmethod
    def env() -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return env

    def copy_reg(self, name: str) -> Path:
        dest = self.work / "copies" / name
        shutil.copytree(self.reg, dest)
        return dest

    @staticmethod
    def lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    @staticmethod
    def rows(stdout: str) -> list[dict] | None:
        try:
            return [json.loads(line) for line in stdout.splitlines()]
        except ValueError:
            return None

    @staticmethod
    def tree(root: Path) -> dict[str, bytes]:
        if not root.exists():
            return {}
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != ".lock"}

    def scores(self, reg: Path, source: str = "a") -> list[float] | None:
        code, stdout, _ = self.cli("verify", self.tests, "--source", source, "--registry", reg, "--json")
        rows = self.rows(stdout)
        return [r["score"] for r in rows] if code == 0 and rows else None

    def case(self, category: str, name: str, check: Callable[[], str | None]) -> None:
        """Run one case; ``check`` returns None when handled as documented, else what went wrong."""
        start = time.perf_counter()
        try:
            problem = check()
        except Exception as exc:  # a crash of the battery itself is a failure of the case
            problem = f"{type(exc).__name__}: {exc}"
        entry = {"category": category, "case": name, "handled": problem is None,
                 "seconds": round(time.perf_counter() - start, 2)}
        if problem:
            entry["problem"] = problem
        self.cases.append(entry)
        mark = "ok " if problem is None else "FAIL"
        print(f"[{mark}] {category}: {name}" + (f" -- {problem}" if problem else ""), file=sys.stderr, flush=True)

    # -- bad inputs

    def batch(self, inputs: list, bad_shown: str, needle: str) -> str | None:
        """verify --json / verify / attribute --json over good, bad, good."""
        code, stdout, stderr = self.cli("verify", *inputs, "--source", "a", "--registry", self.reg, "--json")
        rows = self.rows(stdout)
        if code != 1 or rows is None:
            return f"verify --json: exit {code}, stdout parses: {rows is not None}, stderr {stderr[-200:]!r}"
        errors = [r for r in rows if "error" in r]
        if len(errors) != 1 or set(errors[0]) != {"path", "error"} or not errors[0]["path"].endswith(bad_shown):
            return f"verify --json: errors {errors}"
        if needle not in errors[0]["error"] or "\n" in errors[0]["error"]:
            return f"verify --json: reason {errors[0]['error']!r}"
        if len(rows) != len(inputs):
            return f"verify --json: {len(rows)} rows for {len(inputs)} inputs"
        code, stdout, stderr = self.cli("verify", *inputs, "--source", "a", "--registry", self.reg)
        lines = self.lines(stderr)
        if code != 1 or len(lines) != 1 or bad_shown not in lines[0]:
            return f"verify (table): exit {code}, stderr lines {lines}"
        code, stdout, stderr = self.cli("attribute", *inputs, "--registry", self.reg, "--json")
        rows = self.rows(stdout)
        if code != 1 or rows is None or sum("error" in r for r in rows) != 1 or len(rows) != 3:
            return f"attribute --json: exit {code}, rows {rows}"
        return None

    def bad_inputs(self) -> None:
        from occ.images import display_path

        folder = self.work / "bad"
        folder.mkdir()
        good0, good1 = self.goods
        for label, (name, make, needle) in BAD_FILES.items():
            def check(name=name, make=make, needle=needle, label=label) -> str | None:
                raw = os.path.join(os.fsencode(folder), name)
                with open(raw, "wb") as handle:
                    handle.write(make())
                shown = os.path.basename(display_path(raw))
                start = time.perf_counter()
                problem = self.batch([good0, os.fsdecode(raw), good1], shown, needle)
                if problem is None and "bomb" in label and time.perf_counter() - start > 10:
                    problem = f"refusing the bomb took {time.perf_counter() - start:.1f} s"
                return problem
            self.case("bad input", label, check)

        def missing() -> str | None:
            path = self.work / "x[" / "[/yellow]gone.png"
            return self.batch([good0, path, good1], str(path), "no such file or folder")

        def unreadable() -> str | None:
            path = folder / "secret.png"
            path.write_bytes(good0.read_bytes())
            real = os.open

            def deny(target, *args, **kwargs):
                if os.fspath(target) == os.fspath(path):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(target))
                return real(target, *args, **kwargs)

            os.open = deny  # (root reads any file: refuse the open instead of chmod 000)
            try:
                return self.batch([good0, path, good1], str(path), "Permission denied")
            finally:
                os.open = real

        def fifo() -> str | None:
            path = folder / "pipe.png"
            os.mkfifo(path)
            return self.batch([good0, path, good1], str(path), "not a regular file")

        def empty_folder() -> str | None:
            path = self.work / "empty-folder"
            path.mkdir()
            return self.batch([good0, path, good1], str(path), "folder holds no images")

        def broken_link() -> str | None:
            path = self.work / "dangling.png"
            path.symlink_to(self.work / "nowhere.png")
            return self.batch([good0, path, good1], str(path), "broken symbolic link")

        def loop() -> str | None:
            root = self.work / "loop"
            (root / "sub").mkdir(parents=True)
            shutil.copy(good0, root / "a.png")
            (root / "sub" / "back").symlink_to(root, target_is_directory=True)
            code, stdout, stderr = self.cli("verify", root, "--source", "a", "--registry", self.reg, "--json")
            rows = self.rows(stdout)
            return None if code == 0 and rows and len(rows) == 1 else f"exit {code}, rows {rows}, {stderr[-200:]}"

        for label, check in (("missing path with rich markup", missing), ("unreadable file", unreadable),
                             ("FIFO named .png", fifo), ("empty folder", empty_folder),
                             ("broken symbolic link", broken_link), ("symlink loop in a folder", loop)):
            self.case("bad input", label, check)

    def odd_inputs(self) -> None:
        folder = self.work / "odd"
        folder.mkdir()
        for label, (name, make) in ODD_FILES.items():
            def check(name=name, make=make) -> str | None:
                path = folder / name
                path.write_bytes(make())
                code, stdout, stderr = self.cli("verify", path, "--source", "a", "--registry", self.reg, "--json")
                rows = self.rows(stdout)
                ok = code == 0 and rows and len(rows) == 1 and "score" in rows[0]
                return None if ok else f"exit {code}, rows {rows}, stderr {stderr[-200:]!r}"
            self.case("odd but valid input", label, check)

        upright = pattern(40, 64, seed=3)
        stored = {2: upright[:, ::-1], 3: upright[::-1, ::-1], 4: upright[::-1, :], 5: upright.transpose(1, 0, 2),
                  6: np.rot90(upright, 1), 7: upright[::-1, ::-1].transpose(1, 0, 2), 8: np.rot90(upright, -1)}
        reference = folder / "upright.png"
        Image.fromarray(upright).save(reference)
        for orientation, pixels in stored.items():
            def check(orientation=orientation, pixels=pixels) -> str | None:
                path = folder / f"exif{orientation}.png"
                image = Image.fromarray(np.ascontiguousarray(pixels))
                path.write_bytes(encode(image, "PNG", exif=exif_orientation(orientation)))
                code, stdout, _ = self.cli("verify", reference, path, "--source", "a", "--registry", self.reg,
                                           "--json")
                rows = self.rows(stdout)
                if code != 0 or not rows or len(rows) != 2:
                    return f"exit {code}, rows {rows}"
                delta = abs(rows[0]["score"] - rows[1]["score"])
                return None if delta <= 1e-5 else f"score differs from the upright copy by {delta:.2e}"
            self.case("odd but valid input", f"EXIF orientation {orientation} scores like upright", check)

    # -- usage errors

    def usage(self) -> None:
        reg = self.copy_reg("usage")
        empty = self.work / "empty-registry"
        cases = {
            "unknown source": ["verify", self.goods[0], "--source", "nope", "--registry", reg],
            "empty registry (attribute)": ["attribute", self.goods[0], "--registry", empty],
            "empty registry (verify)": ["verify", self.goods[0], "--source", "a", "--registry", empty],
            "--far 2": self.enroll_args("x", self.a_train, reg, "--far", "2"),
            "invalid name '../x'": self.enroll_args("../x", self.a_train, reg),
            "existing name without --replace": self.enroll_args("a", self.a_train, reg),
            "set-threshold --far 2": ["sources", "set-threshold", "a", "--far", "2", "--registry", reg],
            "remove without --yes (no terminal)": ["sources", "remove", "a", "--registry", reg],
            "import --as '../x'": ["import", self.work / "none.zip", "--as", "../x", "--registry", reg],
        }
        before = self.tree(reg)
        for label, args in cases.items():
            def check(args=args) -> str | None:
                code, stdout, stderr = self.cli(*args)
                lines = self.lines(stderr)
                if code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or stdout:
                    return f"exit {code}, stderr {lines}, stdout {stdout[:100]!r}"
                if self.tree(reg) != before or empty.exists():
                    return "something was written"
                return None
            self.case("usage error", label, check)

    # -- damaged and hostile files

    def damaged(self) -> None:
        from occ.registry.schema import _checksum

        def version(reg: Path, name: str = "a") -> Path:
            return reg / "sources" / name / (reg / "sources" / name / "CURRENT").read_text().strip()

        def rewrite(path: Path, change, fix: bool) -> None:
            record = json.loads(path.read_text())
            change(record)
            if fix:
                record["checksum"] = _checksum(record)
            path.write_text(json.dumps(record))

        marker = self.work / "PWNED"

        def pickle_payload(reg: Path) -> None:
            import torch

            class Payload:
                def __reduce__(self):
                    return (open, (str(marker), "w"))

            buffer = io.BytesIO()
            torch.save({"w": Payload()}, buffer)
            data = buffer.getvalue()
            (version(reg) / "verifier.safetensors").write_bytes(data)
            rewrite(version(reg) / "verifier.json", lambda r: r["files"]["verifier.safetensors"].update(
                sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)), fix=True)

        def flip(reg: Path) -> None:
            path = version(reg) / "verifier.safetensors"
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 1
            path.write_bytes(bytes(data))

        damages = {
            "flipped byte in verifier.safetensors": flip,
            "edited threshold in verifier.json": lambda reg: rewrite(
                version(reg) / "verifier.json", lambda r: r["calibration"].update(threshold=-1e9), fix=False),
            "truncated verifier.safetensors": lambda reg: (version(reg) / "verifier.safetensors").write_bytes(
                (version(reg) / "verifier.safetensors").read_bytes()[:64]),
            "pickle payload as verifier.safetensors (checksums recomputed)": pickle_payload,
        }
        for i, (label, damage) in enumerate(damages.items()):
            def check(damage=damage, i=i) -> str | None:
                reg = self.copy_reg(f"damaged{i}")
                b_before = self.scores(reg, "b")
                damage(reg)
                code, stdout, stderr = self.cli("verify", self.tests, "--source", "a", "--registry", reg, "--json")
                lines = self.lines(stderr)
                if code != 1 or stdout or len(lines) != 1 or "verifier." not in lines[0]:
                    return f"verify: exit {code}, stderr {lines}"
                code, stdout, stderr = self.cli("attribute", self.tests, "--registry", reg, "--json")
                rows, lines = self.rows(stdout), self.lines(stderr)
                if code != 1 or len(lines) != 1 or "source 'a' left out" not in lines[0]:
                    return f"attribute: exit {code}, stderr {lines}"
                if not rows or [r["scores"].get("b") for r in rows] != b_before or any(
                        "a" in r["scores"] for r in rows):
                    return f"attribute did not go on with 'b': {rows}"
                if marker.exists():
                    return "the pickle payload ran"
                return None
            self.case("damaged verifier", label, check)

        archive = self.work / "a.occ.zip"
        self.cli("export", "a", archive, "--registry", self.reg)
        with zipfile.ZipFile(archive) as z:
            members = {n: z.read(n) for n in z.namelist()}
        hostile = {
            "path traversal member": [*members.items(), ("../evil.txt", b"x")],
            "absolute member": [*members.items(), (str(self.work / "evil.txt"), b"x")],
            "extra member": [*members.items(), ("run.sh", b"#!/bin/sh\n")],
            "edited verifier.json": [(n, d.replace(b'"far": 0.05', b'"far": 0.5') if n == "verifier.json" else d)
                                     for n, d in members.items()],
            "not a zip": None,
        }
        for i, (label, entries) in enumerate(hostile.items()):
            def check(entries=entries, i=i) -> str | None:
                path = self.work / f"hostile{i}.zip"
                if entries is None:
                    path.write_bytes(b"PK\x03\x04 not really")
                else:
                    with zipfile.ZipFile(path, "w") as z:
                        for name, data in entries:
                            z.writestr(name, data)
                reg = self.copy_reg(f"hostile{i}")
                before = self.tree(reg)
                code, stdout, stderr = self.cli("import", path, "--as", "x", "--registry", reg)
                lines = self.lines(stderr)
                if code != 1 or len(lines) != 1:
                    return f"exit {code}, stderr {lines}"
                escaped = (self.work / "evil.txt").exists() or (self.work.parent / "evil.txt").exists()
                if self.tree(reg) != before or escaped:
                    return "something was written"
                return None
            self.case("hostile archive", f"occ import: {label}", check)

    # -- disk

    def disk(self) -> None:
        def faulty(function: str, error: int, reg: Path):
            real = getattr(os, function)

            def fake(*args, **kwargs):
                target = args[0] if args else None
                if function == "fsync" or (target is not None and str(reg) in os.fspath(target)):
                    raise OSError(error, os.strerror(error))
                return real(*args, **kwargs)

            return real, fake

        situations = {  # (removing a source needs no space: it is not tried on a full disk)
            "disk full (fsync fails)": (("fsync",), errno.ENOSPC, ("enroll --replace", "sources set-threshold")),
            "read-only registry (mkdir/rename/replace fail)": (
                ("mkdir", "rename", "replace"), errno.EROFS, ("enroll --replace", "sources set-threshold",
                                                              "sources remove")),
        }
        for i, (label, (functions, error, commands)) in enumerate(situations.items()):
            for command in commands:
                def check(functions=functions, error=error, command=command, i=i) -> str | None:
                    reg = self.copy_reg(f"disk{i}-{command.replace(' ', '_')}")
                    before, files = self.scores(reg), self.tree(reg)
                    args = {"enroll --replace": self.enroll_args("a", self.a_train, reg, "--replace", "--seed", "3"),
                            "sources set-threshold": ["sources", "set-threshold", "a", "--far", "0.3", "--registry",
                                                      reg],
                            "sources remove": ["sources", "remove", "a", "--yes", "--registry", reg]}[command]
                    saved = {}
                    for function in functions:
                        saved[function], fake = faulty(function, error, reg)
                        setattr(os, function, fake)
                    try:
                        code, _, stderr = self.cli(*args)
                    finally:
                        for function, real in saved.items():
                            setattr(os, function, real)
                    lines = self.lines(stderr)
                    if code != 1 or len(lines) != 1 or "cannot write registry" not in lines[0]:
                        return f"exit {code}, stderr {lines}"
                    if self.tree(reg) != files or self.scores(reg) != before:
                        return "the registry changed"
                    return None
                self.case("disk", f"{label}: occ {command}", check)

    # -- processes

    FAULT_CHILD = (
        "import sys, time\nimport occ.registry.store as r\nstop = sys.argv[1]\n"
        "def hook(step):\n    if step == stop:\n        sys.stderr.write('at ' + step + '\\n'); sys.stderr.flush()\n"
        "        time.sleep(3600)\n"
        "r._fault_point = hook\nsys.argv = ['occ', *sys.argv[2:]]\nfrom occ.cli import main\nmain()\n"
    )

    def kills(self, trials: int, rng: random.Random) -> None:
        before = self.scores(self.reg)
        plans = [("a", "meta-written", "old"), ("a", "current-written", "old"), ("a", "current-replaced", "new"),
                 ("fresh", "moved", "absent")]
        plans += [(rng.choice(["a", "fresh"]), rng.uniform(1.0, 12.0), "either") for _ in range(trials)]
        running = []
        for i, (name, when, expect) in enumerate(plans):
            reg = self.copy_reg(f"kill{i}")
            log = self.work / f"kill{i}.log"
            images = self.a_train if name == "a" else self.b_train
            args = self.enroll_args(name, images, reg, "--replace", "--seed", "1")
            argv = ([sys.executable, "-c", self.FAULT_CHILD, when, *args] if isinstance(when, str)
                    else [sys.executable, "-m", "occ.cli", *args])
            with open(log, "w") as handle:
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=handle, env=self.env())
            running.append({"name": name, "when": when, "expect": expect, "reg": reg, "log": log, "proc": proc,
                            "start": time.monotonic()})
        deadline = time.monotonic() + 300
        pending = list(running)
        while pending and time.monotonic() < deadline:
            for t in list(pending):
                if isinstance(t["when"], str):
                    hit = f"at {t['when']}" in t["log"].read_text(errors="replace") or t["proc"].poll() is not None
                else:
                    hit = time.monotonic() - t["start"] >= t["when"] or t["proc"].poll() is not None
                if hit:
                    if t["proc"].poll() is None:
                        t["proc"].send_signal(signal.SIGKILL)
                    t["proc"].wait(30)
                    pending.remove(t)
            time.sleep(0.05)
        for t in running:
            if t["proc"].poll() is None:
                t["proc"].kill()
                t["proc"].wait(30)
            label = (f"kill -9 at step '{t['when']}' ({t['name']})" if isinstance(t["when"], str)
                     else f"kill -9 after {t['when']:.1f} s ({t['name']})")

            def check(t=t) -> str | None:
                reg = t["reg"]
                code, stdout, stderr = self.cli("sources", "--registry", reg)
                if code != 0 or "unusable" in stdout:
                    return f"occ sources: exit {code}, {stderr[-200:]}"
                code, stdout, stderr = self.cli("attribute", self.tests, "--registry", reg, "--json")
                if code != 0 or stderr:
                    return f"occ attribute: exit {code}, {stderr[-200:]}"
                _, shown, _ = self.cli("sources", "show", "a", "--registry", reg)
                seed = json.loads(shown)["settings"]["seed"]
                if (t["expect"] == "old" and seed != 0) or (t["expect"] == "new" and seed != 1):
                    return f"source 'a' has seed {seed}, expected the {t['expect']} version"
                if seed == 0 and self.scores(reg) != before:
                    return "the earlier version of 'a' changed"
                names = [n for n in ("a", "b", "fresh") if f"│ {n} " in self.cli("sources", "--registry", reg)[1]]
                if t["expect"] == "absent" and "fresh" in names:
                    return "an uncommitted source is listed"
                if "fresh" in names and self.scores(reg, "fresh") is None:
                    return "a listed source cannot be used"
                if t["expect"] == "new" and t["proc"].returncode != -signal.SIGKILL:
                    return f"the child was not killed (exit {t['proc'].returncode})"
                return None
            self.case("process fault", label, check)

    def concurrency(self) -> None:
        def check() -> str | None:
            reg = self.copy_reg("concurrent")
            procs = [subprocess.Popen([sys.executable, "-m", "occ.cli", *args], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, env=self.env())
                     for args in (self.enroll_args("p1", self.b_train, reg),
                                  self.enroll_args("a", self.a_train, reg, "--replace", "--seed", "2"))]
            rounds, problem = 0, None
            deadline = time.monotonic() + 300
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                code, stdout, stderr = self.cli("attribute", self.tests, "--registry", reg, "--json")
                rows = self.rows(stdout)
                if code != 0 or stderr or not rows or "a" not in rows[0]["scores"]:
                    problem = problem or f"attribute during enrolls: exit {code}, {stderr[-200:]}"
                rounds += 1
            errors = [p.communicate(timeout=120)[1] for p in procs]
            if problem:
                return problem
            if [p.returncode for p in procs] != [0, 0]:
                return f"enrolls failed: {[e[-200:] for e in errors]}"
            _, listing, _ = self.cli("sources", "--registry", reg)
            if not all(f"│ {n} " in listing for n in ("a", "b", "p1")):
                return "a source is missing afterwards"
            return None if rounds else "attribute never ran during the enrolls"
        self.case("process fault", "two enrolls (new source, replacement) while attribute runs", check)

    def many(self, count: int) -> None:
        """``count`` empty files named .png in one folder, and 1 % of that as a reference: every path
        reported, and peak memory for ``count`` within 10 % (+ 8 MiB) of the reference's."""
        runs = {}

        def run(n: int) -> dict:
            folder = self.work / f"many-{n}"
            folder.mkdir()
            for i in range(n):
                open(folder / f"{i:06d}.png", "wb").close()
            script = ("import atexit, resource, sys\natexit.register(lambda: sys.stderr.write("
                      "'MAXRSS %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
                      "sys.argv = ['occ', *sys.argv[1:]]\nfrom occ.cli import main\nmain()\n")
            out = self.work / f"many-{n}.jsonl"
            start = time.perf_counter()
            with open(out, "w") as handle:
                result = subprocess.run([sys.executable, "-c", script, "verify", str(folder), "--source", "a",
                                         "--registry", str(self.reg), "--json"], stdout=handle,
                                        stderr=subprocess.PIPE, text=True, env=self.env(), timeout=1200, check=False)
            elapsed = time.perf_counter() - start
            with open(out) as handle:
                reported = sum(1 for line in handle if json.loads(line).get("error") == "empty file")
            rss = [int(x.split()[1]) for x in result.stderr.splitlines() if x.startswith("MAXRSS ")]
            return {"paths": n, "exit": result.returncode, "reported": reported, "seconds": round(elapsed, 1),
                    "peak_rss_mib": round(rss[0] / 1024) if rss else None}

        for n in (max(1, count // 100), count):
            def check(n=n) -> str | None:
                runs[n] = run(n)
                if runs[n]["exit"] != 1 or runs[n]["reported"] != n:
                    return f"exit {runs[n]['exit']}, {runs[n]['reported']} of {n} reported"
                return None
            self.case("scale", f"{n} empty files named .png in one folder (streamed)", check)
        small, large = (runs.get(n, {}).get("peak_rss_mib") for n in (max(1, count // 100), count))

        def flat() -> str | None:
            if small is None or large is None:
                return "peak memory not measured"
            return None if large <= small * 1.1 + 8 else f"peak RSS {large} MiB for {count} paths vs {small} MiB"
        self.case("scale", f"memory flat from {max(1, count // 100)} to {count} paths", flat)
        self.many_stats = list(runs.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    parser.add_argument("--kill-trials", type=int, default=3, help="random-time kill -9 trials (besides the 4 "
                        "at chosen write steps)")
    parser.add_argument("--many", type=int, default=100_000, help="paths in the many-files case (0: skip)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random kill times")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="occ-robustness-"))
    os.environ["OCC_CACHE_DIR"] = str(work / "cache")  # never the user's cache
    os.environ.pop("OCC_REGISTRY", None)
    try:
        backbone, noise, gradient, backbone_label = build_backbone(work / "tiny-clip")
        battery = Battery(work / "w", backbone, noise, gradient)
        battery.bad_inputs()
        battery.odd_inputs()
        battery.usage()
        battery.damaged()
        battery.disk()
        battery.kills(args.kill_trials, random.Random(seed))
        battery.concurrency()
        if args.many:
            battery.many(args.many)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    cases = battery.cases
    categories: dict[str, dict[str, int]] = {}
    for c in cases:
        entry = categories.setdefault(c["category"], {"tried": 0, "handled": 0})
        entry["tried"] += 1
        entry["handled"] += c["handled"]
    summary = {
        "benchmark": "bench/robustness.py",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backbone": backbone_label,
        "random_seed": seed,
        "tried": len(cases),
        "handled": sum(c["handled"] for c in cases),
        "by_category": categories,
        "not_handled": [{k: c[k] for k in ("category", "case", "problem")} for c in cases if not c["handled"]],
        "many_paths": getattr(battery, "many_stats", None),
        "peak_rss_mib_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "seconds": round(time.perf_counter() - start, 1),
        "cases": cases,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if summary["handled"] == summary["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
