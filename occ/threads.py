"""How many threads the heavy libraries use: one number, applied to torch, onnxruntime and BLAS alike.

Each library keeps its own pool: torch's intra-op pool (OpenMP), onnxruntime's intra-op pool (which by
default *spins* between runs, burning a core while torch works) and the BLAS of numpy / scikit-learn.
Left alone, each sizes itself to every core, so one process runs several pools of that size; beside any
other load, threads that wait at a barrier for a descheduled sibling make a pass many times slower.

:func:`apply` sets the one count everywhere (``torch.set_num_threads``, the BLAS/OpenMP libraries
through threadpoolctl and, for libraries not loaded yet and child processes, the usual environment
variables); :func:`onnx_session_options` gives onnxruntime sessions the same count with spinning off.

The count is ``--threads N``, else ``OCC_NUM_THREADS``, else :func:`default_threads`: the cores this
process may run on, less those other processes keep busy, at least 1. Where the kernel tells (Linux's
``/proc``), "busy" is measured, not remembered: the CPU time those cores spent outside this process since
``occ.threads`` was imported (:func:`busy_elsewhere`; the imports before the count is needed take a
second or more, so the window costs nothing). The 1-minute load average, used where ``/proc`` is not
there, remembers the last minute: it counted a job that had just ended (on a 2-core machine, a 10-shot
``occ enroll`` run right after another took 1 thread and 16.7 s; with the count measured, 2 threads and
12.9-13.6 s) and missed one that had just started (two jobs started together each took every core).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import NamedTuple

from occ.errors import UsageError

ENV = "OCC_NUM_THREADS"
# Read by OpenMP, OpenBLAS, MKL, BLIS and Accelerate when they load (and by child processes).
_LIBRARY_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_applied: int | None = None


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class CpuSample(NamedTuple):
    """CPU time counters at one moment (clock ticks): per core, the time it was busy; this process's own."""

    at: float  # time.monotonic()
    pid: int  # the process whose own time ``own`` is (a forked child starts counting its own from 0)
    busy: dict[int, int]  # core -> ticks not idle (user, nice, system, irq, softirq, steal)
    own: int  # this process's user + system ticks, every thread


def cpu_sample() -> CpuSample | None:
    """The counters now, from ``/proc/stat`` and ``/proc/self/stat``; None where they cannot be read."""
    try:
        busy = {}
        for line in open("/proc/stat").read().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *fields = line.split()
                ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
                busy[int(name[3:])] = sum(ticks) - ticks[3] - ticks[4]
        stat = open("/proc/self/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        own = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (OSError, ValueError, IndexError):
        return None
    return CpuSample(time.monotonic(), os.getpid(), busy, own) if busy else None


_IMPORTED = cpu_sample()
MIN_WINDOW, MAX_WINDOW = 0.25, 10.0  # seconds (a window longer than MAX_WINDOW no longer says what is busy now)


def busy_between(start: CpuSample, end: CpuSample, cpus, ticks_per_second: float) -> float:
    """Cores among ``cpus`` kept busy by other processes between two samples: their busy time less
    this process's own, over the time between them."""
    elapsed = (end.at - start.at) * ticks_per_second
    if elapsed <= 0:
        return 0.0
    busy = sum(end.busy[c] - start.busy[c] for c in cpus if c in start.busy and c in end.busy)
    return max(0.0, (busy - (end.own - start.own)) / elapsed)


def busy_elsewhere(start: CpuSample | None = None) -> float | None:
    """Cores this process may run on that other processes kept busy since ``start`` (default: since
    ``occ.threads`` was imported in this process, or from now where that is more than :data:`MAX_WINDOW`
    seconds ago),
    over at least :data:`MIN_WINDOW` seconds (waiting out the rest); None where ``/proc`` cannot be read."""
    if start is None:
        start = _IMPORTED
        if start is None or start.pid != os.getpid() or time.monotonic() - start.at > MAX_WINDOW:
            start = cpu_sample()
    if start is None:
        return None
    time.sleep(max(0.0, MIN_WINDOW - (time.monotonic() - start.at)))
    end = cpu_sample()
    if end is None:
        return None
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = end.busy.keys()
    return busy_between(start, end, cpus, os.sysconf("SC_CLK_TCK"))


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Cores not kept busy by other processes: ``cpus`` (default :func:`usable_cpus`) minus ``load``, the
    cores others keep busy (default: :func:`busy_elsewhere`, else the 1-minute load average), rounded, at
    least 1."""
    cpus = usable_cpus() if cpus is None else cpus
    if load is None:
        load = busy_elsewhere()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cpus, cpus - math.floor(load + 0.5)))


def _parse(value, where: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"{where}: thread count must be a whole number >= 1, got {value!r}")
    return n


def resolve(threads: int | None = None) -> int:
    """The thread count to use: ``threads``, else ``OCC_NUM_THREADS``, else :func:`default_threads`."""
    if threads is not None:
        return _parse(threads, "--threads")
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        return _parse(env, ENV)
    return default_threads()


def apply(threads: int | None = None) -> int:
    """Resolve the thread count and apply it to torch, BLAS/OpenMP and future onnxruntime sessions.

    torch is configured only if it is already imported (importing it costs seconds); if it is imported
    later it reads ``OMP_NUM_THREADS``, which is set here. Returns the count.
    """
    global _applied
    n = resolve(threads)
    for name in _LIBRARY_ENV:
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # every BLAS / OpenMP library loaded by now, until changed again
    _applied = n
    return n


def current() -> int:
    """The count last applied, else the one :func:`resolve` gives now."""
    return _applied if _applied is not None else resolve()


def onnx_session_options(threads: int | None = None):
    """onnxruntime ``SessionOptions`` with ``threads`` (default :func:`current`) intra-op threads, one
    inter-op thread, sequential execution and no spinning (idle pool threads sleep instead of taking a
    core from torch or from other processes)."""
    import onnxruntime as ort

    n = current() if threads is None else _parse(threads, "threads")
    options = ort.SessionOptions()
    options.intra_op_num_threads = n
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options
