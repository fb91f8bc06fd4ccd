"""Hostile metadata against ``occ inspect`` (issue 15): time and peak memory per case.

Each case is one file built here (hostile and ordinary ones; builders from ``tests/provenancekit.py``
and ``tests/imagegen.py``), inspected by a fresh ``occ inspect --json`` process, so the figures are the
command's own: wall time of the process (start-up included) and its peak resident memory (VmHWM,
which includes Python, Pillow and c2pa-python's native library; Linux only). A case passes when the command exits 0 with
one JSON row whose evidence is what the case expects (an ``unreadable`` item saying why for hostile
metadata), within the time and memory limits given on the command line.

    python bench/provenance.py [--out bench/results/provenance.json] [--max-seconds 10] [--max-mib 256]

Prints a JSON summary (and writes it with ``--out``); exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from imagegen import encode, pattern_image, png_chunk  # noqa: E402
from provenancekit import A1111_PARAMETERS, c2pa_sign, make_chain, png_with, text_chunk, xmp_packet  # noqa: E402

sys.path.remove(str(ROOT / "tests"))


def jpeg_many_segments(count: int) -> bytes:
    """A JPEG with ``count`` 64 KiB APP1 segments before its image data (Pillow keeps each one)."""
    data = encode(pattern_image(), "JPEG")
    segment = b"\xff\xe1" + (65535).to_bytes(2, "big") + b"x" * 65533
    return data[:2] + segment * count + data[2:]


def zeros_compressed(size: int) -> bytes:
    """zlib of ``size`` zero bytes, compressed in pieces (the zeros never sit in memory at once)."""
    packer, piece = zlib.compressobj(9), b"\x00" * 2**20
    return b"".join(packer.compress(piece) for _ in range(size // len(piece))) + packer.flush()


def billion_laughs() -> bytes:
    entities = b"".join(b'<!ENTITY %s "%s">' % (bytes([98 + i]), b"&%s;" % bytes([97 + i]) * 10) for i in range(9))
    return b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' + entities + b"]><x>&j;</x>"


def cases(chain) -> dict:
    """name -> (builder of the file's bytes, extension, what the evidence must show)."""
    xmp = "XML:com.adobe.xmp"
    return {
        "plain PNG (baseline)": (lambda: encode(pattern_image(), "PNG"), ".png", "level none"),
        "signed C2PA PNG, 2048x2048": (
            lambda: c2pa_sign(encode(pattern_image(2048, 2048), "PNG"), "image/png", chain), ".png", "signed-valid"),
        "signed C2PA JPEG, 2048x2048": (
            lambda: c2pa_sign(encode(pattern_image(2048, 2048), "JPEG"), "image/jpeg", chain), ".jpg", "signed-valid"),
        "XMP packet of 3 MiB": (lambda: png_with(text_chunk(xmp, b"<x>" + b" " * 3 * 2**20 + b"</x>", "iTXt")),
                                ".png", "XMP packet too large"),
        "XMP nested 500,000 deep": (lambda: png_with(text_chunk(xmp, b"<a>" * 500_000, "iTXt")), ".png",
                                      "nested deeper"),
        "XMP entity expansion (billion laughs)": (lambda: png_with(text_chunk(xmp, billion_laughs(), "iTXt")),
                                                  ".png", "DOCTYPE"),
        "100,000 text chunks": (lambda: png_with(text_chunk("parameters", A1111_PARAMETERS),
                                                 *[text_chunk(f"k{i}", "v" * 20) for i in range(100_000)]),
                                ".png", "only the first 64 were read"),
        "zTXt bomb (1 GiB of zeros)": (
            lambda: png_with(png_chunk(b"zTXt", b"parameters\x00\x00" + zeros_compressed(2**30))), ".png",
            "once decompressed"),
        "malformed C2PA box of 64 MiB": (
            lambda: png_with(png_chunk(b"caBX", b"\x00\x00\x00\x40jumb" + os.urandom(2**26))), ".png",
            "cannot verify C2PA data"),
        "ComfyUI prompt nested 500,000 deep": (lambda: png_with(text_chunk("prompt", "[" * 500_000)), ".png",
                                               "not valid JSON"),
        "invalid UTF-8 iTXt": (
            lambda: png_with(text_chunk("parameters", b"\xff\xfe" * 100_000 + b"\nSteps: 1", "iTXt")), ".png",
            "not valid UTF-8"),
        "JPEG with 1,000 APP1 segments (64 MiB)": (lambda: jpeg_many_segments(1000), ".jpg", "level none"),
        "XMP in JPEG, trainedAlgorithmicMedia": (
            lambda: encode(pattern_image(), "JPEG", xmp=xmp_packet("trainedAlgorithmicMedia")), ".jpg",
            "trainedAlgorithmicMedia"),
    }


# Runs `occ` and, at exit, writes the process's peak resident memory (VmHWM of its own address space:
# what exec started, not what the parent held) to the file $OCC_BENCH_HWM. Linux only.
_WRAPPER = """
import atexit, os, sys
def report():
    with open('/proc/self/status') as status:
        kib = next(line.split()[1] for line in status if line.startswith('VmHWM'))
    with open(os.environ['OCC_BENCH_HWM'], 'w') as out:
        out.write(kib)
atexit.register(report)
sys.argv[0] = 'occ'
from occ.cli import main
main()
"""


def run_case(path: Path, scratch: Path) -> tuple[int, str, float, float]:
    """(exit code, stdout, wall seconds, peak RSS in MiB) of ``occ inspect --json PATH``."""
    hwm = scratch / "hwm"
    env = {**os.environ, "OCC_BENCH_HWM": str(hwm), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, "inspect", "--json", str(path)], env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    return proc.returncode, proc.stdout, seconds, int(hwm.read_text()) / 1024


def shows(row: dict, expect: str) -> bool:
    prov = row.get("provenance") or {}
    if expect.startswith("level "):
        return prov.get("level") == expect.removeprefix("level ")
    return expect in json.dumps(prov)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--max-mib", type=float, default=256.0)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (build, ext, expect)) in enumerate(cases(make_chain()).items()):
            path = Path(tmp) / f"case{i}{ext}"
            data = build()
            path.write_bytes(data)
            size = len(data)
            del data
            code, stdout, seconds, mib = run_case(path, Path(tmp))
            rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
            ok = code == 0 and len(rows) == 1 and shows(rows[0], expect)
            ok = ok and seconds <= args.max_seconds and mib <= args.max_mib
            results.append({"case": name, "file_bytes": size, "exit": code, "seconds": round(seconds, 2),
                            "peak_rss_mib": round(mib, 1), "expected": expect, "ok": ok})
            path.unlink()
    summary = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "limits": {"max_seconds": args.max_seconds, "max_mib": args.max_mib},
        "passed": sum(r["ok"] for r in results), "cases": len(results), "results": results,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if summary["passed"] == summary["cases"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
