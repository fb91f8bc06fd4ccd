"""The walk-through's example images: the toy generator reproduces the committed files, and nothing under
examples/ or the default bank is a devset file (checked when the devset is present)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEVSET = REPO.parent / "shared" / "data" / "devset"


def _toy_module():
    spec = importlib.util.spec_from_file_location("make_toy_images", REPO / "examples" / "make_toy_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_toy_images_are_what_the_generator_writes(tmp_path) -> None:
    toy = _toy_module()
    committed = toy.targets()
    assert len(committed) == 12
    for (index, path), (_, fresh) in zip(committed, toy.targets(tmp_path)):
        fresh.parent.mkdir(parents=True, exist_ok=True)
        toy.toy_image(index).save(fresh, "PNG")
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(fresh))), path
    # images differ from each other: the index drives the content
    assert len({hashlib.sha256(np.asarray(toy.toy_image(i)).tobytes()).hexdigest() for i in range(12)}) == 12


@pytest.mark.skipif(not DEVSET.is_dir(), reason="devset not present")
def test_no_devset_file_ships_with_the_project() -> None:
    devset = {hashlib.sha256(p.read_bytes()).hexdigest() for p in DEVSET.rglob("*") if p.is_file()}
    shipped = [p for d in ("examples", "occ/data") for p in (REPO / d).rglob("*") if p.is_file()]
    assert shipped
    assert not [p for p in shipped if hashlib.sha256(p.read_bytes()).hexdigest() in devset]


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_what_the_walkthrough_writes_is_ignored_by_git() -> None:
    import subprocess

    script = (REPO / "examples" / "walkthrough.sh").read_text()
    for where in ('OCC_REGISTRY:-$PWD/.registry', '$OCC_REGISTRY/../toy.occ.zip', '$OCC_REGISTRY/../.registry-shared'):
        assert where in script, where
    written = ["examples/.registry/sources/toy/verifier.json", "examples/toy.occ.zip",
               "examples/.registry-shared/sources/toy/verifier.json"]
    out = subprocess.run(["git", "-C", str(REPO), "check-ignore", *written], capture_output=True, text=True)
    assert out.stdout.split() == written
