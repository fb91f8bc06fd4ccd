"""Options of issue 14 on the commands: --csv, --threads / OCC_NUM_THREADS, --device, the progress bar
and the closing summary line (the server and the Ray engine have their own test files)."""

from __future__ import annotations

import csv
import io

import clikit
import pytest
import torch
from clikit import invoke
from rich.console import Console

from occ.cli.output import ImageProgress


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


@pytest.fixture
def restore_threads():
    yield
    from occ import threads

    threads.apply(1)


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_verify_csv_has_the_json_values_one_row_per_image(w) -> None:
    missing = w.root / "missing.png"
    args = ["verify", w.a_test, missing, "--source", "a", "--registry", w.reg_a]
    as_json, as_csv = invoke(*args, "--json"), invoke(*args, "--csv")
    assert as_csv.code == as_json.code == 1
    rows = read_csv(as_csv.stdout)
    assert list(rows[0]) == ["path", "source", "score", "threshold", "accepted", "reason", "error"]
    expected = {r["path"]: r for r in as_json.json()}
    assert len(rows) == len(expected) == 7
    for row in rows:
        want = expected[row["path"]]
        if "error" in want:
            assert row["error"] == want["error"] and row["score"] == ""
        else:
            assert float(row["score"]) == want["score"] and float(row["threshold"]) == want["threshold"]
            assert row["accepted"] == str(want["accepted"]).lower() and row["error"] == ""
            assert row["reason"] == (want["reason"] or "")
    assert as_csv.err_lines == [] and as_csv.summary.startswith("verify: 7 images, 6 scored, 1 failed")


def test_attribute_csv_has_one_column_per_source(w, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    odd = "=cmd.png"  # a name a spreadsheet would take for a formula
    (tmp_path / odd).write_bytes(w.good(0).read_bytes())
    args = ["attribute", w.a_test, w.b_test, odd, "--registry", w.reg_ab]
    as_json, as_csv = invoke(*args, "--json"), invoke(*args, "--csv")
    assert as_csv.code == 0, as_csv
    rows = read_csv(as_csv.stdout)
    assert list(rows[0]) == ["path", "source", "accepted", "reason", "score:a", "score:b", "error"]
    decisions = as_json.json()
    assert len(rows) == len(decisions) == 13
    for row, want in zip(rows, decisions):
        assert row["path"] == (want["path"] if want["path"] != odd else "'" + odd)
        assert row["source"] == (want["source"] or "unknown")
        assert row["accepted"] == ";".join(want["accepted"]) and row["reason"] == (want["reason"] or "")
        assert {k: float(row[f"score:{k}"]) for k in ("a", "b")} == want["scores"]


def test_json_and_csv_together_is_a_usage_error(w) -> None:
    run = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--json", "--csv")
    assert run.code == 2 and "choose one of --json and --csv" in run.stderr


def test_summary_counts_what_was_decided(w) -> None:
    run = invoke("attribute", w.a_test, w.b_test, "--registry", w.reg_ab, "--json")
    decided = [r["source"] or "unknown" for r in run.json()]
    counts = ", ".join(f"{k} {decided.count(k)}" for k in sorted(set(decided), key=lambda k: (-decided.count(k), k)))
    assert run.summary.startswith("attribute: 12 images, 12 scored, 0 failed in ") and run.summary.endswith(counts)


@pytest.mark.parametrize("command", ["verify", "attribute", "eval", "enroll"])
def test_threads_option_and_environment_reach_torch(w, command, restore_threads, tmp_path, monkeypatch) -> None:
    eval_root = tmp_path / "eval"
    clikit.copy_registry(w.a_test, eval_root / "a")
    args = {"verify": ["verify", w.a_test, "--source", "a", "--registry", w.reg_a],
            "attribute": ["attribute", w.a_test, "--registry", w.reg_a],
            "eval": ["eval", eval_root, "--registry", w.reg_a, "--json"],
            "enroll": clikit.enroll_args("n", w.a_train, tmp_path / "reg", w.backbone)}[command]
    assert invoke(*args, "--threads", "3").code == 0
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("OCC_NUM_THREADS", "2")
    assert invoke(*(args if command != "enroll" else [*args, "--replace"])).code == 0
    assert torch.get_num_threads() == 2


def test_bad_thread_counts_are_usage_errors(w, monkeypatch) -> None:
    run = invoke("attribute", w.a_test, "--registry", w.reg_a, "--threads", "0")
    assert run.code == 2 and "--threads: thread count must be a whole number >= 1" in run.stderr
    monkeypatch.setenv("OCC_NUM_THREADS", "lots")
    run = invoke("attribute", w.a_test, "--registry", w.reg_a)
    assert run.code == 2 and "OCC_NUM_THREADS" in run.stderr


def test_device_cpu_gives_the_default_answers(w) -> None:
    plain = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--json")
    cpu = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--json", "--device", "cpu")
    assert cpu.code == 0 and cpu.stdout == plain.stdout
    run = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--device", "tpu")
    assert run.code == 2 and "unknown device 'tpu'" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_cuda_without_a_gpu_is_one_clear_error(w) -> None:
    run = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--device", "cuda")
    assert run.code == 2 and "--device cuda: torch sees no CUDA device" in run.stderr, run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cuda_matches_cpu(w, tiny_clip_dir, tmp_path, monkeypatch) -> None:
    from occ.backbones import load_backbone

    cpu, gpu = load_backbone(str(tiny_clip_dir)), load_backbone(str(tiny_clip_dir), device="cuda")
    pixels = cpu.preprocess([__import__("PIL.Image").Image.open(p).convert("RGB") for p in w.a_test.iterdir()])
    a, b = cpu.trunk(pixels, [1]), gpu.trunk(pixels, [1])
    assert b.cls.device.type == "cpu" and torch.allclose(a.cls, b.cls, atol=1e-4)
    assert torch.allclose(a.kv[1].float(), b.kv[1].float(), atol=1e-2)
    monkeypatch.setenv("OCC_CACHE_DIR", str(tmp_path / "fresh-cache"))  # the trunk really runs on the GPU
    run = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--json", "--device", "cuda")
    plain = invoke("attribute", w.a_test, "--registry", w.reg_ab, "--json")
    assert run.code == 0
    for x, y in zip(run.json(), plain.json()):
        assert x["path"] == y["path"] and all(abs(x["scores"][k] - y["scores"][k]) < 1e-3 for k in x["scores"])


def test_progress_bar_shows_done_total_and_rate_on_a_terminal_only() -> None:
    shown = io.StringIO()
    terminal = Console(file=shown, force_terminal=True, width=100)
    with ImageProgress("attributing", 3, console=terminal) as bar:
        for _ in range(3):
            bar.advance()
        terminal.print()  # flush the live display's last frame
    text = shown.getvalue()
    assert "3/3" in text and "img/s" in text and bar.done == 3
    hidden = io.StringIO()
    with ImageProgress("attributing", 3, console=Console(file=hidden, force_terminal=False)) as bar:
        bar.advance()
    assert hidden.getvalue() == ""

