"""Decisions that explain themselves (issue 25): rows that reach a threshold and are not accepted say why.

Three lda sources on the tiny random CLIP (conftest's ``tiny_clip_dir``), enrolled through the command
line from image families made here; ``occ serve`` runs as a real uvicorn server on a loopback port.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import clikit
import numpy as np
import pytest
from clikit import check_attribute_row, check_verify_row, invoke
from PIL import Image

from occ.attribution import Attributor
from occ.openset import _write, fresh_stored, joint_for
from occ.registry import Registry
from occ.testing import imagegen

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servekit import http, running  # noqa: E402

from occ.serve import Service, create_app  # noqa: E402

NAMES = ("a", "b", "c")


def _flat(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.clip(rng.uniform(0, 255, 3) + rng.normal(0, 4, (40, 40, 3)), 0, 255).astype(np.uint8))


def _patterns(folder: Path, seeds) -> list[Path]:
    return clikit.write_family(folder, lambda s: imagegen.pattern_image(seed=s), seeds, "pat")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_clip_dir):
    """(registry of sources a, b, c; the labelled test root: a/, b/, c/ and real/)."""
    root = tmp_path_factory.mktemp("decisions")
    train = {"a": clikit.noise_family(root / "a", range(8)), "b": clikit.gradient_family(root / "b", range(8)),
             "c": _patterns(root / "c", range(8))}
    tests = root / "tests"
    clikit.noise_family(tests / "a", range(100, 106))
    clikit.gradient_family(tests / "b", range(100, 106))
    _patterns(tests / "c", range(100, 106))
    clikit.write_family(tests / "real", _flat, range(300, 304), "flat")  # of no source
    reg = root / "reg"
    for name in NAMES:
        run = invoke(*clikit.enroll_args(name, train[name][0].parent, reg, tiny_clip_dir))
        assert run.code == 0, run
    return reg, tests


def verify_rows(reg, tests, name) -> list[dict]:
    run = invoke("verify", tests, "--source", name, "--registry", reg, "--json")
    assert run.code == 0, run
    rows = run.json()
    for row in rows:
        check_verify_row(row, name)
    return rows


# -------------------------------------------------------------------------------------------------- reasons


@pytest.fixture(scope="module")
def constructed(world, tmp_path_factory, tiny_backbone):
    """A copy of the registry whose stored joint model is changed so that both reasons must occur: b's
    radius is 0 (every image lies outside b's range), a's threshold is far below any score (a's score
    reaches it on every image, so another source that scores higher is the only thing that stops it)."""
    reg = Registry(clikit.copy_registry(world[0], tmp_path_factory.mktemp("constructed") / "reg"))
    model = fresh_stored(reg, tiny_backbone.fingerprint)
    model.radii_["b"] = 0.0
    model.calibrations_["a"] = replace(model.calibrations_["a"], threshold=-1e6)
    assert _write(reg, model, model.manifest_, reg.versions())
    assert not joint_for(reg, tiny_backbone)[1]
    return reg.root, world[1]


def test_rows_not_accepted_above_the_threshold_say_why(constructed, tiny_backbone) -> None:
    reg, tests = constructed
    att = Attributor.from_registry(Registry(reg), tiny_backbone)
    decisions = {(Path(d.path).parent.name, Path(d.path).name): d for d in att.run([tests])}
    seen = set()
    for (folder, _), d in decisions.items():
        best = max(NAMES, key=lambda n: d.raw[n])
        for name in NAMES:
            reaches = d.raw[name] >= d.raw_thresholds[name]
            why = d.reasons.get(name)
            if name in d.accepted or not reaches:
                assert why is None, (d, name)  # accepted rows and plain rejections carry none
                continue
            assert why == (f"nearer to {best}" if best != name else f"outside {name}'s range"), (d, name)
            seen.add((folder, name, why))
    assert ("b", "b", "outside b's range") in seen and ("b", "a", "nearer to b") in seen
    assert ("c", "a", "nearer to c") in seen
    assert all(d.source != "b" for d in decisions.values())  # b's radius holds no image
    assert any("c" in d.accepted for d in decisions.values())  # c is untouched: it still accepts


def test_every_surface_says_why(constructed, tiny_backbone) -> None:
    reg, tests = constructed
    image = sorted((tests / "b").iterdir())[0]
    rows = {n: verify_rows(reg, image, n)[0] for n in NAMES}
    assert rows["b"]["reason"] == "outside b's range" and not rows["b"]["accepted"]
    assert rows["b"]["score"] >= rows["b"]["threshold"]
    assert rows["a"]["reason"] == "nearer to b" and not rows["a"]["accepted"]
    attributed = invoke("attribute", image, "--registry", reg, "--json").json()[0]
    check_attribute_row(attributed, NAMES)
    assert attributed["reason"] == "a: nearer to b; b: outside b's range" and attributed["source"] is None

    as_csv = list(csv.DictReader(io.StringIO(invoke("verify", image, "--source", "b", "--registry", reg,
                                                    "--csv").stdout)))
    assert as_csv[0]["reason"] == "outside b's range" and as_csv[0]["accepted"] == "false"
    as_csv = list(csv.DictReader(io.StringIO(invoke("attribute", image, "--registry", reg, "--csv").stdout)))
    assert as_csv[0]["reason"] == attributed["reason"]
    table = invoke("verify", image, "--source", "b", "--registry", reg).stdout
    assert "no (outside b's range)" in table
    table = invoke("attribute", image, "--registry", reg).stdout
    assert "(not a: nearer to b; b: outside b's range)" in table

    good = sorted((tests / "c").iterdir())[0]  # accepted by c: no reason anywhere
    accepted = verify_rows(reg, good, "c")[0]
    assert accepted["accepted"] and accepted["reason"] is None

    with running(create_app(Service(Registry(reg), tiny_backbone))) as url:
        files = [(p.name, p.read_bytes()) for p in (image, good)]
        status, body = http("POST", f"{url}/v1/verify?source=b", files)
        assert status == 200 and [r["reason"] for r in body] == ["outside b's range", verify_rows(reg, good, "b")[0][
            "reason"]], body
        status, body = http("POST", f"{url}/v1/attribute", files)
        assert status == 200 and body[0] == dict(attributed, path=image.name), body
        assert body[1] == dict(invoke("attribute", good, "--registry", reg, "--json").json()[0], path=good.name)
