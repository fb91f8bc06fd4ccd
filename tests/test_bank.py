"""The shipped non-target bank: every file accounted for in PROVENANCE.csv, varied sources."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter

from PIL import Image

from occ.negatives import BANK_DIR, bank_paths


def _rows() -> list[dict]:
    with (BANK_DIR / "PROVENANCE.csv").open() as f:
        return list(csv.DictReader(f))


def test_every_bank_file_has_its_provenance_and_licence() -> None:
    rows = {r["file"]: r for r in _rows()}
    files = bank_paths()
    assert len(files) >= 300 and set(rows) == {p.name for p in files}
    for path in files:
        row = rows[path.name]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], path
        assert row["kind"] in {"photo", "document", "screenshot"}, path
        assert all(row[k].strip() for k in ("package", "version", "origin", "path_in_package", "licence",
                                            "licence_evidence")), path
        with Image.open(path) as im:
            assert im.format == "WEBP" and im.mode == "RGB" and min(im.size) <= 384 and max(im.size) <= 768
    assert len({r["original_sha256"] for r in rows.values()}) == len(rows)  # no file twice


def test_no_package_dominates_the_bank() -> None:
    rows = _rows()
    counts = Counter(r["package"] for r in rows)
    assert len(counts) >= 8
    assert max(counts.values()) <= 0.35 * len(rows), counts.most_common(3)
    assert Counter(r["kind"] for r in rows)["photo"] >= 0.6 * len(rows)


def test_the_bank_is_lossless() -> None:
    # A bank of JPEGs taught the joint model that JPEG traces mean "photo" (bench/format_cue.py): every
    # file is simple-format lossless WebP (RIFF header, then a VP8L chunk; lossy WebP has VP8 here)
    for path in bank_paths():
        head = path.read_bytes()[:16]
        assert head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:16] == b"VP8L", path
