"""The default non-target bank: real images that ship with occ.

379 images from 14 free-licence Debian and PyPI packages (no package over 35 %): 273 photographs
(people, rooms, food, streets, vehicles, animals, nature, objects), 9 photographed or scanned
documents and 97 program screenshots, re-encoded to at most 384 px on the short side and 768 px on
the long side (JPEG q90). ``occ/data/negatives/PROVENANCE.csv`` names each file's kind, package,
version, path, author and licence; ``tools/build_negative_bank.py`` rebuilds them from the packages
(and refuses any devset image). Their trunk features are computed once per backbone and kept in the
feature cache.
"""

from __future__ import annotations

from pathlib import Path

BANK_DIR = Path(__file__).resolve().parent / "data" / "negatives"


def bank_paths() -> list[Path]:
    """The bank's photos, sorted by name."""
    return sorted(BANK_DIR.glob("*.jpg"))
