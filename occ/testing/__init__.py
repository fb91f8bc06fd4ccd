"""Helpers for occ's tests and benchmarks (not used by the product): a tiny random CLIP built at run
time (:mod:`~occ.testing.tiny_clip`), image files of every odd kind (:mod:`~occ.testing.imagegen`), the
devset protocol the benchmarks share (:mod:`~occ.testing.devset`), and the common check every verifier
kind must pass (:func:`~occ.testing.checks.check_verifier_kind`, in the spirit of scikit-learn's
``check_estimator``), and :func:`traced_peak` for memory bounds."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def traced_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()``'s result and the peak of the Python memory (bytes) allocated while it ran."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
