"""Build occ's default non-target bank (occ/data/negatives/) from real photographs.

The photos come from free-licence packages (Debian, PyPI); `candidates.csv` lists each file with
its package, version, path inside the package, author and licence (see
occ/data/negatives/PROVENANCE.csv for the shipped result). This script only normalises them for the
repository: long side at most 512 px (never upscaled), RGB, JPEG quality 92, deterministic names.

    python tools/build_negative_bank.py CANDIDATES_DIR CANDIDATES_CSV [--exclude NAME ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image, ImageOps

from occ.paths import sha256_file

OUT = Path(__file__).resolve().parent.parent / "occ" / "data" / "negatives"
LONG_SIDE = 512
QUALITY = 92
FIELDS = ["file", "sha256", "package", "version", "path_in_package", "author", "licence", "licence_evidence",
          "original_width", "original_height", "processing"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates_dir", type=Path)
    ap.add_argument("candidates_csv", type=Path)
    ap.add_argument("--exclude", nargs="*", default=[], help="candidate file names to leave out")
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(args.candidates_csv.open()) if r["is_photo"] == "yes"
            and r["file"] not in set(args.exclude)]
    rows.sort(key=lambda r: r["file"])
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.jpg"):
        old.unlink()
    out_rows = []
    for i, row in enumerate(rows):
        image = ImageOps.exif_transpose(Image.open(args.candidates_dir / row["file"])).convert("RGB")
        w, h = image.size
        scale = min(1.0, LONG_SIDE / max(w, h))
        if scale < 1.0:
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        name = f"{i:03d}-{Path(row['file']).stem.split('__')[-1][:40]}.jpg"
        path = OUT / name
        image.save(path, "JPEG", quality=QUALITY)
        out_rows.append({
            "file": name,
            "sha256": sha256_file(path),
            "package": row["package"], "version": row["version"], "path_in_package": row["path_in_package"],
            "author": row["author"], "licence": row["licence"], "licence_evidence": row["licence_evidence"],
            "original_width": row["width"], "original_height": row["height"],
            "processing": f"RGB, long side <= {LONG_SIDE} px (Lanczos), JPEG q{QUALITY}",
        })
    with (OUT / "PROVENANCE.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(out_rows)
    total = sum(p.stat().st_size for p in OUT.glob("*.jpg"))
    print(f"{len(out_rows)} photos, {total / 2**20:.1f} MiB -> {OUT}")


if __name__ == "__main__":
    main()
