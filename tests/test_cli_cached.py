"""Scoring cached features (issue 14, point 3): on the embedded backbone, ``occ attribute`` and ``occ verify``
over an lda-only registry and images whose features are all in the feature cache import neither torch nor
transformers; an image that is not cached still works in the same kind of run (the trunk runs: torch is
imported then).

Every ``occ`` here is a real process (what a process imported is the point), on the session's embedded
cache (see conftest).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import clikit
import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.embedded, pytest.mark.slow]

HEAVY = ("torch", "transformers")

# Runs the CLI, then writes which heavy modules the process imported as a last line on stderr.
PROBE = ("import atexit, json, sys\n"
         "atexit.register(lambda: sys.stderr.write('\\nIMPORTED ' + json.dumps(sorted(m for m in "
         f"{HEAVY!r} if m in sys.modules)) + '\\n'))\n"
         "from occ.cli import main\n"
         "sys.argv = ['occ', *sys.argv[1:]]\n"
         "main()\n")


def occ_process(env: dict, *args) -> tuple[list[dict], list[str]]:
    """``occ ARGS`` (``--json``) in a fresh process: its JSON rows and the heavy modules it imported."""
    argv = [str(a) for a in args]
    child = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                           timeout=600, check=False)
    assert child.returncode == 0, (argv, child.stderr[-2000:])
    marker = [line for line in child.stderr.splitlines() if line.startswith("IMPORTED ")]
    assert len(marker) == 1, child.stderr[-2000:]
    return clikit.json_lines(child.stdout), json.loads(marker[0].removeprefix("IMPORTED "))


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, embedded_cache_dir) -> tuple[dict, Path, Path]:
    """(child environment, registry with one lda source 'grad', folder of images to score)."""
    root = tmp_path_factory.mktemp("cached")
    env = clikit.subprocess_env(OCC_CACHE_DIR=str(embedded_cache_dir))
    shots = clikit.gradient_family(root / "shots", range(1400, 1408))
    check = root / "check"
    clikit.gradient_family(check, range(1420, 1423))
    clikit.noise_family(check, range(1420, 1423))
    registry = root / "reg"
    child = subprocess.run(clikit.occ_argv("enroll", "grad", *shots, "--registry", registry), capture_output=True,
                           text=True, env=env, timeout=900, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    return env, registry, check


def test_cached_attribute_and_verify_import_neither_torch_nor_transformers(enrolled) -> None:
    env, registry, check = enrolled
    cold, _ = occ_process(env, "attribute", check, "--registry", registry, "--json")  # fills the feature cache
    assert len(cold) == 6
    for row in cold:
        clikit.check_attribute_row(row, ["grad"])
    cached, imported = occ_process(env, "attribute", check, "--registry", registry, "--json")
    assert imported == [], f"a cached occ attribute imported {imported}"
    assert cached == cold
    verified, imported = occ_process(env, "verify", check, "--source", "grad", "--registry", registry, "--json")
    assert imported == [], f"a cached occ verify imported {imported}"
    assert [r["path"] for r in verified] == [r["path"] for r in cold]
    for v, a in zip(verified, cold):
        clikit.check_verify_row(v, "grad")
        assert v["score"] == a["scores"]["grad"]
        assert v["accepted"] == (a["source"] == "grad")


def test_an_image_not_cached_is_scored_in_the_same_kind_of_run(enrolled, tmp_path) -> None:
    env, registry, check = enrolled
    before, _ = occ_process(env, "attribute", check, "--registry", registry, "--json")  # (cached from now on)
    folder = tmp_path / "more"
    folder.mkdir()
    for path in check.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    # pixels never seen before, in any session: this image's features cannot be in the cache
    new = folder / "zz-new.png"
    Image.fromarray(np.random.default_rng().integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(new)
    rows, imported = occ_process(env, "attribute", folder, "--registry", registry, "--json")
    assert "torch" in imported  # the trunk ran for the new image
    assert "transformers" not in imported  # the int8 engine runs on onnxruntime
    assert [Path(r["path"]).name for r in rows] == [Path(r["path"]).name for r in before] + ["zz-new.png"]
    clikit.check_attribute_row(rows[-1], ["grad"])
    assert [{k: v for k, v in r.items() if k != "path"} for r in rows[:-1]] == \
        [{k: v for k, v in r.items() if k != "path"} for r in before]
