"""Thread counts (issue 14): one number for torch, onnxruntime and BLAS (:mod:`occ.threads`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from threadpoolctl import threadpool_info

from occ import threads
from occ.errors import UsageError


@pytest.fixture
def restore():
    yield
    threads.apply(int(os.environ["OCC_NUM_THREADS"]))  # conftest's count for the rest of the session


def test_default_leaves_cores_that_others_keep_busy() -> None:
    assert threads.default_threads(cpus=4, load=0.0) == 4
    assert threads.default_threads(cpus=4, load=1.2) == 3
    assert threads.default_threads(cpus=4, load=1.6) == 2
    assert threads.default_threads(cpus=2, load=7.0) == 1  # never below one
    assert 1 <= threads.default_threads() <= threads.usable_cpus()


def test_busy_cores_are_others_time_less_this_process_own() -> None:
    start = threads.CpuSample(10.0, 1, {0: 1000, 1: 2000, 2: 0}, own=50)
    end = threads.CpuSample(11.0, 1, {0: 1090, 1: 2060, 2: 100}, own=110)  # 1 s at 100 ticks/s
    # cores 0 and 1 were busy 150 ticks, 60 of them this process's: 0.9 of a core kept busy by others;
    # core 2 is not one this process may run on
    assert threads.busy_between(start, end, {0, 1}, 100) == pytest.approx(0.9)
    assert threads.busy_between(start, end, {0, 1, 2}, 100) == pytest.approx(1.9)
    assert threads.busy_between(start, end._replace(own=300), {0, 1}, 100) == 0.0  # never below 0
    assert threads.default_threads(cpus=2, load=threads.busy_between(start, end, {0, 1}, 100)) == 1


@pytest.mark.skipif(threads.cpu_sample() is None, reason="no /proc/stat")
def test_a_busy_process_beside_this_one_is_measured_at_once() -> None:
    """What the 1-minute load average shows only after a minute: a process that just started to keep a
    core busy takes that core out of the default count."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter has started and spins
        start = threads.cpu_sample()
        time.sleep(0.5)
        busy = threads.busy_elsewhere(start)
    finally:
        child.kill()
        child.wait()
    assert busy is not None and busy >= 0.6, busy  # one core busy (and whatever else this machine runs)
    assert threads.default_threads(cpus=threads.usable_cpus(), load=busy) <= max(1, threads.usable_cpus() - 1)


def test_resolve_option_then_environment_then_default(monkeypatch) -> None:
    monkeypatch.setenv("OCC_NUM_THREADS", "3")
    assert threads.resolve(5) == 5
    assert threads.resolve() == 3
    monkeypatch.delenv("OCC_NUM_THREADS")
    assert threads.resolve() == threads.default_threads()
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("OCC_NUM_THREADS", bad)
        with pytest.raises(UsageError, match="OCC_NUM_THREADS: thread count must be"):
            threads.resolve()
    with pytest.raises(UsageError, match="--threads"):
        threads.resolve(0)


def test_apply_sets_torch_blas_and_the_environment(restore) -> None:
    assert threads.apply(3) == 3
    assert torch.get_num_threads() == 3
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["MKL_NUM_THREADS"] == "3"
    pools = threadpool_info()
    assert pools and all(p["num_threads"] == 3 for p in pools), pools
    assert threads.current() == 3
    threads.apply(1)
    assert torch.get_num_threads() == 1 and all(p["num_threads"] == 1 for p in threadpool_info())


def test_onnx_options_take_the_count_and_never_spin(restore) -> None:
    threads.apply(2)
    options = threads.onnx_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert threads.onnx_session_options(4).intra_op_num_threads == 4
