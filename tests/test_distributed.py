"""Batch attribution on Ray (issue 14) on a real local Ray runtime (2 CPUs, no dashboard), started once
for the module. Answers are compared with ``occ attribute --json`` (the plain engine) on the same files.
"""

from __future__ import annotations

from pathlib import Path

import clikit
import pytest
from clikit import check_attribute_row, check_error_row, free_port, invoke

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from occ import distributed  # noqa: E402


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


@pytest.fixture(scope="module")
def ray_runtime():
    distributed.init(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(w, tmp_path_factory) -> list[Path]:
    """A folder of both families, then a missing file, a junk file and one more good image."""
    odd = tmp_path_factory.mktemp("odd")
    (odd / "junk.png").write_bytes(b"not an image")
    return [w.a_test, w.b_test, odd / "missing.png", odd / "junk.png", w.good(3)]


@pytest.fixture(scope="module")
def plain(w, inputs) -> list[dict]:
    run = invoke("attribute", *inputs, "--registry", w.reg_ab, "--json")
    assert run.code == 1, run
    return run.json()


def by_path(rows):
    return {r["path"]: r for r in rows}


def test_rows_in_input_order_with_per_row_errors(ray_runtime, w, inputs, plain, tiny_clip_dir) -> None:
    n, batches = distributed.attribute_paths(inputs, registry_root=w.reg_ab, sources=["a", "b"],
                                             backbone=str(tiny_clip_dir), workers=2, batch_size=3)
    rows = [row for batch in batches for row in distributed.json_rows(batch)]
    expected_paths = ([str(p) for p in sorted(w.a_test.iterdir())] + [str(p) for p in sorted(w.b_test.iterdir())]
                      + [str(inputs[2]), str(inputs[3]), str(w.good(3))])
    assert n == len(rows) == len(expected_paths) and [r["path"] for r in rows] == expected_paths
    assert rows[-3] == {"path": str(inputs[2]), "error": "no such file or folder"}
    check_error_row(rows[-2])
    assert rows[-2]["error"] == "not an image (unrecognised content)"
    for row in rows[:-3] + rows[-1:]:
        check_attribute_row(row, ["a", "b"])
    # the same answers as the plain engine (scores to float rounding: the joint model's matrix products
    # run on other thread counts in the actors)
    ours, theirs = by_path(rows), by_path(plain)
    assert ours.keys() == theirs.keys()
    for key, row in ours.items():
        other = theirs[key]
        assert {k: v for k, v in row.items() if k != "scores"} == {k: v for k, v in other.items() if k != "scores"}
        assert row.get("scores", {}).keys() == other.get("scores", {}).keys()
        for name, score in row.get("scores", {}).items():
            assert score == pytest.approx(other["scores"][name], abs=1e-5)


def test_a_ray_dataset_of_paths_and_parquet_output(ray_runtime, w, tiny_clip_dir, tmp_path, plain) -> None:
    import ray.data

    rows = distributed.path_rows([w.a_test])
    ds = distributed.attribute_dataset(ray.data.from_items(rows), registry_root=w.reg_ab, sources=["a", "b"],
                                       backbone=str(tiny_clip_dir), workers=1)
    out = tmp_path / "out.parquet"
    assert distributed.write_parquet(ds.iter_batches(batch_format="pyarrow", batch_size=None), out,
                                     ["a", "b"]) == len(rows)
    table = pq.read_table(out)
    assert table.column_names == list(distributed.COLUMNS)
    assert table.schema.field("scores").type.num_fields == 2
    expected = by_path(plain)
    for row in table.to_pylist():
        assert row["error"] is None and row["source"] == expected[row["path"]]["source"]
        assert row["accepted"] == expected[row["path"]]["accepted"]
        # to float rounding, as above: the actors' matrix products run on other thread counts
        assert row["scores"] == pytest.approx(expected[row["path"]]["scores"], abs=1e-5)


def test_cli_engine_ray_jsonl_and_parquet(ray_runtime, w, inputs, plain, tmp_path) -> None:
    order = [r["path"] for r in distributed.path_rows(inputs)]
    run = invoke("attribute", *inputs, "--registry", w.reg_ab, "--json", "--engine", "ray", "--workers", "2")
    assert run.code == 1, run  # two inputs failed, the rest were processed
    assert [r["path"] for r in run.json()] == order and by_path(run.json()) == by_path(plain)
    out = tmp_path / "res.parquet"
    run = invoke("attribute", *inputs, "--registry", w.reg_ab, "--engine", "ray", "--output", out)
    assert run.code == 1 and run.stdout == "", run
    table = pq.read_table(out).to_pylist()
    assert [r["path"] for r in table] == order
    assert [r["path"] for r in table if r["error"] is not None] == [str(inputs[2]), str(inputs[3])]
    assert f"wrote {len(order)} rows" in run.stderr, run
    run = invoke("attribute", *inputs, "--registry", w.reg_ab, "--engine", "ray", "--workers", "2")
    assert run.code == 1, run  # the table: every row in input order, the failed ones saying so in their place
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in run.stdout.splitlines() if line.startswith("│")]
    assert [r[0] for r in rows] == order
    assert [(r[0], r[1], r[-1]) for r in rows if r[1] == "error"] == [
        (str(inputs[2]), "error", "no such file or folder"),
        (str(inputs[3]), "error", "not an image (unrecognised content)")]


def test_output_needs_the_ray_engine_and_parquet(w, tmp_path) -> None:
    run = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--output", tmp_path / "x.parquet")
    assert run.code == 2 and "--engine ray" in run.stderr, run
    run = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--engine", "ray", "--output", tmp_path / "x.csv")
    assert run.code == 2 and ".parquet" in run.stderr, run




def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    import time

    from occ.errors import OccError

    start = time.monotonic()
    with pytest.raises(OccError, match=r"cannot join the Ray cluster at 127\.0\.0\.1:\d+: nothing answers there"):
        distributed._check_reachable(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - start < distributed.CONNECT_TIMEOUT_S
    distributed._check_reachable("auto")  # not host:port: left to Ray
