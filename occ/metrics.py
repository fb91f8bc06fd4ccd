"""Evaluation metrics for verifiers (one source vs the rest) and the open-set attributor.

Pure numpy, no other dependency: this module sits on the CLI's import path.

Conventions used by every function here:

* A higher score means "more likely the target source" (verifiers) or "more likely a known
  source" (attributor).  A sample is ACCEPTED when ``score >= threshold``.
* ``pos`` are the scores of samples that should be accepted (the target source / known
  samples), ``neg`` those that should be rejected (other sources / unknown samples).
* Score inputs may be lists, tuples or numpy arrays; they must be 1-D and finite (a NaN or an
  infinity raises ``ValueError`` naming the argument).  Results are plain Python ``float``.
* No AUC is ever "flipped": a scorer that ranks negatives above positives gets an AUC below 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "auroc_known_unknown",
    "bootstrap_ci",
    "closed_set_accuracy",
    "confusion_matrix",
    "open_set_summary",
    "oscr",
    "rates_at_threshold",
    "roc_auc",
    "roc_curve",
    "ScoreSummary",
    "threshold_at_far",
    "tnr_at_tpr",
    "tpr_at_far",
]


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


def _scores(x, name: str, *, allow_empty: bool = True) -> np.ndarray:
    """Return ``x`` as a 1-D float64 array of finite values, or raise ``ValueError``."""
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got a string")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of scores, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty; at least one score is needed")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf), "
            f"first at index {int(np.flatnonzero(bad)[0])}; scores must be finite"
        )
    return arr


def _labels(x, name: str) -> list:
    """Return ``x`` as a list of hashable labels (1-D), or raise ``ValueError``."""
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name}: expected a 1-D sequence of labels, got a single string")
    arr = np.asarray(x, dtype=object) if not isinstance(x, np.ndarray) else x
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of labels, got shape {arr.shape}")
    out = arr.tolist()
    for i, v in enumerate(out):
        try:
            hash(v)
        except TypeError:
            raise ValueError(f"{name}[{i}] is not a valid label: {v!r}") from None
    return out


def _rate(value, name: str, *, lo: float = 0.0, hi: float = np.inf, lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if np.isnan(v) or v < lo or (lo_open and v == lo) or v > hi:
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {left}{lo}, {hi}], got {value!r}")
    return v


def _same_length(a, b, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} have different lengths ({len(a)} vs {len(b)})")


# --------------------------------------------------------------------------------------------
# ROC
# --------------------------------------------------------------------------------------------


def _tallies(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (ascending) and how many pos / neg samples have each."""
    values, inverse = np.unique(np.concatenate([pos, neg]), return_inverse=True)
    inverse = inverse.reshape(-1)
    pos_counts = np.bincount(inverse[: pos.size], minlength=values.size).astype(np.int64)
    neg_counts = np.bincount(inverse[pos.size :], minlength=values.size).astype(np.int64)
    return values, pos_counts, neg_counts


def roc_auc(pos, neg) -> float:
    """Area under the ROC curve: P(score of a random positive > that of a random negative).

    Ties between a positive and a negative count 1/2.  Computed as the Mann-Whitney U
    statistic from the rank sum of the positives, with mid-ranks for tied groups, in
    O(n log n).  All sums are done in integers (ranks doubled), so the only rounding is the
    final division: the result is exact to float precision whatever the ties.

    Never flipped: 0.3 means the scorer is worse than chance, and it is reported as 0.3.
    Raises ``ValueError`` if either side is empty or holds a non-finite score.
    """
    pos = _scores(pos, "pos", allow_empty=False)
    neg = _scores(neg, "neg", allow_empty=False)
    _, pos_counts, neg_counts = _tallies(pos, neg)
    counts = pos_counts + neg_counts
    below = np.cumsum(counts) - counts  # samples strictly below each distinct value
    # mid-rank of a group (1-based) = below + (count + 1) / 2; doubled to stay integral
    twice_rank_sum = int(np.sum(pos_counts * (2 * below + counts + 1), dtype=np.int64))
    n_pos, n_neg = int(pos.size), int(neg.size)
    twice_u = twice_rank_sum - n_pos * (n_pos + 1)
    return twice_u / (2 * n_pos * n_neg)  # Python int / int: correctly rounded


def roc_curve(pos, neg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)``, one point per distinct score.

    ``thresholds`` runs from ``+inf`` (nothing accepted: the point (0, 0)) down through every
    distinct score of ``pos`` and ``neg`` in decreasing order; the last one is the smallest
    score, where everything is accepted: the point (1, 1).  Point ``i`` is
    ``fpr[i] = mean(neg >= thresholds[i])``, ``tpr[i] = mean(pos >= thresholds[i])``.
    All samples tied at a score move together, so the trapezoidal area under the curve
    equals :func:`roc_auc` (ties count 1/2).  Raises ``ValueError`` if either side is empty.
    """
    pos = _scores(pos, "pos", allow_empty=False)
    neg = _scores(neg, "neg", allow_empty=False)
    values, pos_counts, neg_counts = _tallies(pos, neg)
    tp = np.cumsum(pos_counts[::-1])
    fp = np.cumsum(neg_counts[::-1])
    tpr = np.concatenate([[0.0], tp / pos.size])
    fpr = np.concatenate([[0.0], fp / neg.size])
    thresholds = np.concatenate([[np.inf], values[::-1]])
    return fpr, tpr, thresholds


def rates_at_threshold(pos, neg, threshold) -> tuple[float, float]:
    """``(tpr, far)`` at ``threshold``: the fraction of ``pos`` and of ``neg`` with score >= threshold.

    ``far`` is the false-accept rate.  An empty side gives ``nan`` for its rate.  The threshold
    may be ``+inf`` / ``-inf`` (accept nothing / everything) but not NaN.
    """
    pos = _scores(pos, "pos")
    neg = _scores(neg, "neg")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if np.isnan(t):
        raise ValueError("threshold is NaN")
    tpr = float(np.count_nonzero(pos >= t) / pos.size) if pos.size else float("nan")
    far = float(np.count_nonzero(neg >= t) / neg.size) if neg.size else float("nan")
    return tpr, far


def threshold_at_far(neg, far) -> float:
    """The smallest threshold whose empirical false-accept rate on ``neg`` is at most ``far``.

    Conservative: with ``t = threshold_at_far(neg, far)``, ``mean(neg >= t) <= far`` always
    holds.  Candidates are the distinct values of ``neg`` and ``nextafter(max(neg), +inf)``
    (which accepts no negative, so some candidate always qualifies); the smallest qualifying
    candidate is returned, which maximises the true-accept rate of any positive set.

    * Ties: negatives tied at a value are accepted or rejected together.  With
      ``neg = [0, 1, 1, 1]`` and ``far = 0.5``, ``t = 1`` would accept 3/4 > 0.5, so the
      answer is ``nextafter(1, inf)`` (FAR 0), not a value "inside" the tie.
    * Tiny sets: the achievable FARs are multiples of ``1/len(neg)``.  With 10 negatives and
      ``far = 0.05`` only FAR 0 qualifies, so the threshold is just above the largest negative.
    * ``far >= 1`` returns ``-inf`` (accept everything); ``far = 0`` returns just above
      ``max(neg)``.  ``far < 0`` or NaN, or an empty ``neg``, raise ``ValueError``.
    """
    far = _rate(far, "far")
    if far >= 1.0:
        return float("-inf")
    neg = _scores(neg, "neg", allow_empty=False)
    values, counts = np.unique(neg, return_counts=True)  # ascending
    return _smallest_at_far(values, counts, far)


def _smallest_at_far(values: np.ndarray, counts: np.ndarray, far: float) -> float:
    """:func:`threshold_at_far` of distinct ascending ``values``, ``counts[i]`` negatives at ``values[i]``."""
    at_or_above = np.cumsum(counts[::-1])[::-1]  # number of negatives >= values[i]
    ok = at_or_above / int(at_or_above[0]) <= far  # same arithmetic as mean(neg >= t): exact comparison
    if ok.any():
        return float(values[int(np.argmax(ok))])  # ok is monotone False..True
    return float(np.nextafter(values[-1], np.inf))


def tpr_at_far(pos, neg, far) -> float:
    """True-accept rate on ``pos`` at the threshold ``threshold_at_far(neg, far)``.

    Because that threshold is conservative, the FAR actually achieved on ``neg`` may be below
    ``far`` (see :func:`threshold_at_far` for tiny sets).  Both sides must be non-empty.
    """
    pos = _scores(pos, "pos", allow_empty=False)
    t = threshold_at_far(neg, far)
    return float(np.count_nonzero(pos >= t) / pos.size)


def tnr_at_tpr(pos, neg, tpr: float = 0.95) -> float:
    """True-negative rate at the threshold that keeps a true-positive rate of at least ``tpr``.

    As USIA's TNR@TPR95: the threshold ``t`` is the largest value with
    ``mean(pos >= t) >= tpr`` (always one of the ``pos`` scores); the result is
    ``mean(neg < t)``.  Tied positives move together, so the achieved TPR may exceed ``tpr``.
    ``tpr`` must be in (0, 1]; both sides must be non-empty.
    """
    tpr = _rate(tpr, "tpr", lo=0.0, hi=1.0, lo_open=True)
    pos = _scores(pos, "pos", allow_empty=False)
    neg = _scores(neg, "neg", allow_empty=False)
    values, counts = np.unique(pos, return_counts=True)  # ascending
    at_or_above = np.cumsum(counts[::-1])[::-1]
    ok = at_or_above / pos.size >= tpr  # monotone True..False, ok[0] is True (rate 1)
    t = values[int(np.flatnonzero(ok)[-1])]
    return float(np.count_nonzero(neg < t) / neg.size)


# --------------------------------------------------------------------------------------------
# a bounded summary of many negative scores
# --------------------------------------------------------------------------------------------

SUMMARY_EXACT = 4096  # up to this many scores, a summary keeps them all
SUMMARY_TAIL = 2048  # past it, the largest scores it keeps exactly ...
SUMMARY_BINS = 256  # ... and the others in at most this many bins, each a small share (1-2 %) of the scores above it


@dataclass(frozen=True, eq=False)
class ScoreSummary:
    """A set of negative scores in bounded size: what a threshold, a false-accept rate and an AUC need.

    Up to :data:`SUMMARY_EXACT` scores (or when built directly from an array) it keeps every score, in
    the given order, and every figure below is that of the scores themselves. Past it
    (:meth:`of`), it keeps the largest ``tail`` scores exactly (fewer when the next one ties with them:
    a value is never split between the bins and the tail) and the others as at most ``bins`` bins, each
    as its largest score and how many scores it holds. A bin's count grows with its depth: it holds about
    ``ratio - 1`` times the scores above it, ``ratio = (len / tail) ** (1 / bins)`` (1.011 for 31,000
    scores, 1.024 for a million), so the error of a rate is a small share of the rate. It stores at most
    ``tail + 2 * bins`` numbers whatever the number of scores, and:

    * :meth:`rate_at` ``t`` is exact for ``t`` above the bins (:attr:`exact_above`); below, a bin whose
      largest score reaches ``t`` counts whole, so the rate is an upper bound, over by fewer than the
      count of the one bin ``t`` falls in (:meth:`rate_bounds` gives both ends);
    * :meth:`threshold_at_far` is exactly :func:`threshold_at_far` of all the scores for ``far <``
      :attr:`exact_far` (the tail's share); for a larger ``far`` it is never below the exact threshold,
      the rate it achieves on all the scores is still at most ``far``, and it falls short of the exact
      threshold's rate by fewer scores than the two bins at and below it hold (at most ``2 * max_bin``);
    * :meth:`auc` differs from :func:`roc_auc` on all the scores by at most ``max_bin / (2 * len)``
      (a positive inside a bin counts half of that bin below it).

    ``values`` (float64, read-only): the first ``len(counts)`` are the bins' largest scores, ascending,
    ``counts`` (int64) how many scores each stands for; the others are scores, one each (the tail, all
    above the bins). An exact summary has no bins.
    """

    values: np.ndarray
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self):
        values = _scores(self.values, "scores")
        counts = np.asarray(self.counts).reshape(-1)
        if counts.size and not np.issubdtype(counts.dtype, np.integer):
            raise ValueError("summary counts must be integers")
        counts = counts.astype(np.int64)
        nb = counts.size
        if nb > values.size or (counts < 1).any():
            raise ValueError("summary counts must be positive, one per bin")
        if nb and ((np.diff(values[:nb]) <= 0).any() or (values[nb:] <= values[nb - 1]).any()):
            raise ValueError("summary bins must be ascending and below every tail score")
        for name, arr in (("values", values), ("counts", counts)):
            if arr.flags.writeable:  # a copy of the caller's array, which it may change later
                arr = arr.copy()
                arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def of(cls, scores, exact: int = SUMMARY_EXACT, tail: int = SUMMARY_TAIL,
           bins: int = SUMMARY_BINS) -> ScoreSummary:
        """The summary of ``scores`` (an array, or a summary: an exact one is summarised, another kept)."""
        if isinstance(scores, ScoreSummary):
            if not scores.exact:
                return scores
            scores = scores.values
        s = _scores(scores, "scores")
        if s.size <= exact:
            return cls(s)
        if not (0 < tail < exact and bins > 0):
            raise ValueError("a summary needs 0 < tail < exact and bins > 0")
        s = np.sort(s)
        cut = int(np.searchsorted(s, s[s.size - tail - 1], side="right"))  # the tail: scores above s[-tail-1]
        starts = np.flatnonzero(np.r_[True, s[1:cut] != s[:cut - 1]])  # s is sorted: np.unique without a sort
        values, per_value = s[starts], np.diff(np.r_[starts, cut])
        above = s.size - (np.cumsum(per_value) - per_value)  # scores at or above each distinct value
        # bin k: the values with k / bins <= log(above / top) / log(n / top) < (k + 1) / bins, so a bin holds
        # about (ratio - 1) times the scores above it, ratio = (n / top) ** (1 / bins): a rate's error
        # stays a small share of the rate itself; a value is never split (its copies share ``above``)
        top = max(s.size - cut, 1)
        which = np.minimum((bins * np.log(above / top) / np.log(s.size / top)).astype(np.int64), bins - 1)
        starts = np.flatnonzero(np.r_[True, np.diff(which) != 0])
        ends = np.r_[starts[1:], values.size] - 1
        return cls(np.concatenate([values[ends], s[cut:]]), np.add.reduceat(per_value, starts))

    def __len__(self) -> int:
        """How many scores the summary stands for."""
        return int(self.counts.sum()) + self.values.size - self.counts.size

    def __eq__(self, other) -> bool:
        if not isinstance(other, ScoreSummary):
            return NotImplemented
        return np.array_equal(self.values, other.values) and np.array_equal(self.counts, other.counts)

    __hash__ = None  # compared by value: not hashable

    @property
    def exact(self) -> bool:
        """Whether every score is kept (no bins)."""
        return self.counts.size == 0

    @property
    def max_bin(self) -> int:
        """The most scores one bin stands for (0 when exact): the unit of the bounds above."""
        return int(self.counts.max()) if self.counts.size else 0

    @property
    def exact_above(self) -> float:
        """Rates at thresholds above this are exact (every threshold when the summary is exact)."""
        return float(self.values[self.counts.size - 1]) if self.counts.size else -np.inf

    @property
    def exact_far(self) -> float:
        """:meth:`threshold_at_far` is exact for ``far`` below this (every ``far`` when the summary is exact)."""
        return (self.values.size - self.counts.size) / len(self) if self.counts.size else 1.0

    def _weighted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct values ascending, how many scores each stands for, and whether it is a bin."""
        nb = self.counts.size
        tail, per_tail = np.unique(self.values[nb:], return_counts=True)
        return (np.concatenate([self.values[:nb], tail]), np.concatenate([self.counts, per_tail]),
                np.r_[np.ones(nb, bool), np.zeros(tail.size, bool)])

    def rate_at(self, threshold) -> float:
        """Share of the scores ``>= threshold`` (an upper bound at or below :attr:`exact_above`)."""
        if self.exact:
            return rates_at_threshold((), self.values, threshold)[1]
        t = float(threshold)
        if np.isnan(t):
            raise ValueError("threshold is NaN")
        nb = self.counts.size
        above = int(self.counts[self.values[:nb] >= t].sum()) + int(np.count_nonzero(self.values[nb:] >= t))
        return float(above / len(self))

    def rate_bounds(self, threshold) -> tuple[float, float]:
        """(lowest, highest) share of the scores ``>= threshold`` that the summary allows (equal when exact
        or above the bins): only the lowest bin whose largest score reaches the threshold is in doubt, and
        that largest score is at or above it."""
        high = self.rate_at(threshold)
        nb = self.counts.size
        reached = np.flatnonzero(self.values[:nb] >= float(threshold))
        doubt = int(self.counts[reached[0]]) - 1 if reached.size else 0
        return float((high * len(self) - doubt) / len(self)) if doubt else high, high

    def threshold_at_far(self, far) -> float:
        """:func:`threshold_at_far` of the scores (exact for ``far <`` :attr:`exact_far`, else conservative)."""
        if self.exact:
            return threshold_at_far(self.values, far)
        far = _rate(far, "far")
        if far >= 1.0:
            return float("-inf")
        values, counts, _ = self._weighted()
        return _smallest_at_far(values, counts, far)

    def auc(self, pos) -> float:
        """:func:`roc_auc` of ``pos`` against the scores (within ``max_bin / (2 * len)`` of it)."""
        if self.exact:
            return roc_auc(pos, self.values)
        pos = _scores(pos, "pos", allow_empty=False)
        values, counts, is_bin = self._weighted()
        below = np.r_[0, np.cumsum(counts)]  # scores at values[:i]
        lo = np.searchsorted(values, pos, side="left")
        hi = np.searchsorted(values, pos, side="right")
        # doubled, to stay integral: 2 x (scores below) + (scores tied), and half of a bin a positive lies in
        nxt = np.minimum(hi, values.size - 1)
        straddled = np.where((lo == hi) & (hi < values.size) & is_bin[nxt], counts[nxt], 0)
        twice = 2 * below[lo] + (below[hi] - below[lo]) + straddled
        return int(twice.sum(dtype=np.int64)) / (2 * pos.size * len(self))


# --------------------------------------------------------------------------------------------
# open set
# --------------------------------------------------------------------------------------------


def closed_set_accuracy(true_labels, predicted_labels) -> float:
    """Fraction of samples whose predicted label equals the true label.

    Meant for known samples only, with the prediction being the argmax among the known
    classes (rejection ignored): pass exactly those.  Raises ``ValueError`` if the inputs
    are empty or of different lengths.
    """
    true = _labels(true_labels, "true_labels")
    pred = _labels(predicted_labels, "predicted_labels")
    _same_length(true, pred, "true_labels", "predicted_labels")
    if not true:
        raise ValueError("true_labels is empty; accuracy is undefined")
    return sum(t == p for t, p in zip(true, pred, strict=True)) / len(true)


def oscr(known_scores, known_correct, unknown_scores) -> float:
    """Open-Set Classification Rate (Dhamija et al., 2018): area under CCR versus FPR.

    For a threshold ``t``:

    * CCR(t) = fraction of known samples that are correctly classified AND have score >= t;
    * FPR(t) = fraction of unknown samples with score >= t.

    ``t`` sweeps from ``+inf`` (the point (0, 0)) down through every distinct score of both
    sets to the smallest (the point (1, closed-set accuracy)); samples tied at a score move
    together.  The area is summed by trapezoids over FPR.  It is 1.0 when every known
    sample is correct and scores above every unknown one, 0.0 when no known sample is correct,
    and equals ``roc_auc(known_scores, unknown_scores)`` when every known sample is correct.
    ``known_correct`` is a 1-D boolean (or 0/1) sequence aligned with ``known_scores``.
    Raises ``ValueError`` if either score set is empty.
    """
    known = _scores(known_scores, "known_scores", allow_empty=False)
    unknown = _scores(unknown_scores, "unknown_scores", allow_empty=False)
    correct = np.asarray(known_correct)
    if correct.ndim != 1:
        raise ValueError(f"known_correct: expected a 1-D sequence, got shape {correct.shape}")
    _same_length(known, correct, "known_scores", "known_correct")
    if correct.dtype != np.bool_:
        if not np.isin(correct, [0, 1]).all():
            raise ValueError("known_correct must hold booleans or 0/1 values")
        correct = correct.astype(bool)
    values, correct_counts, unknown_counts = _tallies(known[correct], unknown)
    ccr = np.concatenate([[0.0], np.cumsum(correct_counts[::-1]) / known.size])
    fpr = np.concatenate([[0.0], np.cumsum(unknown_counts[::-1]) / unknown.size])
    return float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0))


def auroc_known_unknown(known_scores, unknown_scores) -> float:
    """AUROC of known (positive) versus unknown (negative) samples: ``roc_auc(known, unknown)``."""
    return roc_auc(known_scores, unknown_scores)


def confusion_matrix(true_labels, predicted_labels, labels) -> np.ndarray:
    """Confusion counts: ``m[i, j]`` = number of samples with true ``labels[i]`` predicted ``labels[j]``.

    Rows are true labels, columns predicted labels, both in the order of ``labels`` (which may
    include "unknown").  A true or predicted label not in ``labels``, or a duplicate in
    ``labels``, raises ``ValueError``.  Returns an ``int64`` array of shape (k, k).
    """
    labels = _labels(labels, "labels")
    index: dict = {}
    for lab in labels:
        if lab in index:
            raise ValueError(f"labels lists {lab!r} more than once")
        index[lab] = len(index)
    true = _labels(true_labels, "true_labels")
    pred = _labels(predicted_labels, "predicted_labels")
    _same_length(true, pred, "true_labels", "predicted_labels")
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for name, seq in (("true_labels", true), ("predicted_labels", pred)):
        for i, lab in enumerate(seq):
            if lab not in index:
                raise ValueError(f"{name}[{i}] = {lab!r} is not one of labels {labels!r}")
    rows = np.fromiter((index[t] for t in true), dtype=np.intp, count=len(true))
    cols = np.fromiter((index[p] for p in pred), dtype=np.intp, count=len(pred))
    np.add.at(m, (rows, cols), 1)
    return m


def open_set_summary(
    true_labels,
    predicted_labels,
    max_scores,
    known_labels,
    unknown_label: str = "unknown",
) -> dict:
    """Headline open-set figures for an attributor run, with the counts behind them.

    Inputs, one entry per sample: ``true_labels`` (the real source; a sample is *known-truth*
    when its true label is in ``known_labels``, otherwise *unknown-truth*, whatever its
    name), ``predicted_labels`` (the attributor's decision: a name from ``known_labels`` or
    ``unknown_label``; anything else raises ``ValueError``) and ``max_scores`` (the
    attributor's confidence that the sample is known, e.g. the best verifier score; higher =
    more likely known).  ``unknown_label`` must not be one of ``known_labels``.

    Returned keys:

    * ``n_known`` / ``n_unknown``: numbers of known-truth / unknown-truth samples.
    * ``n_known_correct``: known-truth samples whose decision is their true source.
    * ``n_known_rejected``: known-truth samples decided ``unknown_label``.
    * ``n_unknown_rejected``: unknown-truth samples decided ``unknown_label``.
    * ``closed_set_accuracy`` = n_known_correct / n_known: accuracy of the attributor's actual
      decision on known-truth samples.  A known sample rejected as unknown counts as wrong
      (the argmax among known sources, ignoring rejection, is not available here).
    * ``known_rejection_rate`` = n_known_rejected / n_known (false rejections).
    * ``unknown_rejection_rate`` = n_unknown_rejected / n_unknown: how often unknown-truth
      samples are correctly refused.
    * ``auroc`` = roc_auc(max_scores of known-truth, max_scores of unknown-truth).
    * ``oscr`` = oscr(max_scores of known-truth, predicted == true, max_scores of unknown-truth).

    A rate whose set is empty is ``nan`` (``auroc`` and ``oscr`` need both sets).
    """
    true = _labels(true_labels, "true_labels")
    pred = _labels(predicted_labels, "predicted_labels")
    scores = _scores(max_scores, "max_scores")
    if isinstance(known_labels, (set, frozenset)) or type(known_labels).__name__ == "dict_keys":
        known_labels = list(known_labels)
    known = _labels(known_labels, "known_labels")
    known_set = set(known)
    _same_length(true, pred, "true_labels", "predicted_labels")
    _same_length(true, scores, "true_labels", "max_scores")
    if unknown_label in known_set:
        raise ValueError(f"unknown_label {unknown_label!r} is also one of known_labels")
    allowed = known_set | {unknown_label}
    for i, p in enumerate(pred):
        if p not in allowed:
            raise ValueError(f"predicted_labels[{i}] = {p!r} is neither a known label nor {unknown_label!r}")

    is_known = np.fromiter((t in known_set for t in true), dtype=bool, count=len(true))
    correct = np.fromiter((t == p for t, p in zip(true, pred, strict=True)), dtype=bool, count=len(true))
    rejected = np.fromiter((p == unknown_label for p in pred), dtype=bool, count=len(pred))

    n_known = int(is_known.sum())
    n_unknown = len(true) - n_known
    n_known_correct = int((correct & is_known).sum())
    n_known_rejected = int((rejected & is_known).sum())
    n_unknown_rejected = int((rejected & ~is_known).sum())
    nan = float("nan")

    def ratio(a: int, b: int) -> float:
        return a / b if b else nan

    both = n_known > 0 and n_unknown > 0
    known_scores, unknown_scores = scores[is_known], scores[~is_known]
    return {
        "closed_set_accuracy": ratio(n_known_correct, n_known),
        "known_rejection_rate": ratio(n_known_rejected, n_known),
        "unknown_rejection_rate": ratio(n_unknown_rejected, n_unknown),
        "auroc": roc_auc(known_scores, unknown_scores) if both else nan,
        "oscr": oscr(known_scores, correct[is_known], unknown_scores) if both else nan,
        "n_known": n_known,
        "n_unknown": n_unknown,
        "n_known_correct": n_known_correct,
        "n_known_rejected": n_known_rejected,
        "n_unknown_rejected": n_unknown_rejected,
    }


# --------------------------------------------------------------------------------------------
# uncertainty
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    pos,
    neg,
    metric: Callable[[np.ndarray, np.ndarray], float] = roc_auc,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` confidence interval of ``metric(pos, neg)``.

    Each of the ``n`` replicates resamples ``pos`` and ``neg`` separately, with replacement
    and at their original sizes, from ``numpy.random.default_rng(seed)``: the same inputs and
    seed give the same interval.  ``lo`` / ``hi`` are the ``alpha/2`` and ``1 - alpha/2``
    quantiles (linear interpolation) of the replicates, so the coverage is ``1 - alpha``.
    ``metric`` receives float arrays; bind extra arguments with a lambda, e.g.
    ``lambda p, q: tpr_at_far(p, q, 0.01)``.  A NaN replicate makes the bounds NaN.
    """
    pos = _scores(pos, "pos", allow_empty=False)
    neg = _scores(neg, "neg", allow_empty=False)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    alpha = _rate(alpha, "alpha", lo=0.0, hi=1.0, lo_open=True)
    if alpha >= 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    stats = np.empty(int(n), dtype=np.float64)
    for i in range(int(n)):
        p = pos[rng.integers(0, pos.size, size=pos.size)]
        q = neg[rng.integers(0, neg.size, size=neg.size)]
        stats[i] = metric(p, q)
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)
