"""The default non-target bank: real images that ship with occ.

370 images from 14 free-licence Debian and PyPI packages (no package over 35 %): 264 photographs
(people, rooms, food, streets, vehicles, animals, nature, objects), 9 photographed or scanned
documents and 97 program screenshots, resized to at most 384 px on the short side and 768 px on the
long side and stored losslessly (WebP): a bank of JPEG files taught the joint model that JPEG traces
mean "photo". ``occ/data/negatives/PROVENANCE.csv`` names each file's kind, package,
version, path, author and licence; ``tools/build_negative_bank.py`` rebuilds them from the packages
(and refuses any devset image). Their trunk features are computed once per backbone and kept in the
feature cache.
"""

from __future__ import annotations

import csv
from pathlib import Path

BANK_DIR = Path(__file__).resolve().parent / "data" / "negatives"


def bank_paths() -> list[Path]:
    """The bank's images (every file ``PROVENANCE.csv`` lists in :data:`BANK_DIR`), sorted by name."""
    with (BANK_DIR / "PROVENANCE.csv").open(newline="") as f:
        return sorted(BANK_DIR / row["file"] for row in csv.DictReader(f))
