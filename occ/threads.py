"""How many threads the heavy libraries use: one number, applied to torch, onnxruntime and BLAS alike.

Each library keeps its own pool: torch's intra-op pool (OpenMP), onnxruntime's intra-op pool (which by
default *spins* between runs, burning a core while torch works) and the BLAS of numpy / scikit-learn.
Left alone, each sizes itself to every core, so one process runs several pools of that size; beside any
other load, threads that wait at a barrier for a descheduled sibling make a pass many times slower.

:func:`apply` sets the one count everywhere (``torch.set_num_threads``, the BLAS/OpenMP libraries
through threadpoolctl and, for libraries not loaded yet and child processes, the usual environment
variables); :func:`onnx_session_options` gives onnxruntime sessions the same count with spinning off.

The count is ``--threads N``, else ``OCC_NUM_THREADS``, else :func:`default_threads`: the cores this
process may run on, less those other processes keep busy (the 1-minute load average), at least 1.
"""

from __future__ import annotations

import math
import os
import sys

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


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Cores not kept busy by other processes: ``cpus`` (default :func:`usable_cpus`) minus the
    1-minute load average (default: the system's), rounded, at least 1."""
    cpus = usable_cpus() if cpus is None else cpus
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
