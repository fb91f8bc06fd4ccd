"""The devset protocol the benchmarks share (see ``bench/README.md``): the labelled devset's manifest,
the group-wise train/test split, and the ``normalised`` view (bottom 3 % cropped, shortest side 256
bicubic, lossless PNG), written once under ``bench/work/``. The devset itself is never copied into the
repository."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from occ.images import load_image

ROOT = Path(__file__).resolve().parents[2]  # the repository, in a source checkout
DEVSET = ROOT.parent / "shared" / "data" / "devset"
WORK = ROOT / "bench" / "work"
MIN_IMAGES = 40


def manifest(devset: Path) -> list[dict]:
    with open(devset / "manifest.csv") as f:
        return list(csv.DictReader(f))


def normalise_bytes(path: Path) -> bytes:
    from PIL import Image

    image = load_image(path).image
    w, h = image.size
    image = image.crop((0, 0, w, h - int(round(h * 0.03))))
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def view_paths(rows: list[dict], devset: Path, view: str) -> list[Path]:
    if view == "native":
        return [devset / r["path"] for r in rows]
    out = []
    for r in rows:
        dest = WORK / "normalised" / (r["path"].rsplit(".", 1)[0] + ".png")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(normalise_bytes(devset / r["path"]))
            tmp.replace(dest)
        out.append(dest)
    return out


def split(rows: list[dict], target: str, shots: int, seed: int):
    """(train positive idx, test positive idx, test negative idx) for one target and seed."""
    rng = np.random.default_rng(seed)
    labels = np.array([r["label"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    target_groups = np.unique(groups[labels == target])
    rng.shuffle(target_groups)
    train_groups = set(target_groups[: len(target_groups) // 2])
    pos = np.where(labels == target)[0]
    train = np.array([i for i in pos if groups[i] in train_groups])
    test = np.array([i for i in pos if groups[i] not in train_groups])
    train = rng.choice(train, size=min(shots, len(train)), replace=False)
    negatives = np.where(labels != target)[0]
    return np.sort(train), test, negatives
