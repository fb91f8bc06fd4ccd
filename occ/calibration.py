"""Thresholds and comparable scores from held-out scores.

A verifier's raw scores are only meaningful relative to that verifier. Calibration turns them into
something a user and the attributor can use:

* the **threshold** is chosen on scores the verifier did not train on (cross-validation over the
  shots, see :mod:`occ.verifier`). It is the stricter of two rules: the false-accept rate on held-out
  non-target images is at most ``far`` (default 5 %), and it accepts no more than ``target_tpr``
  (default 90 %) of held-out target images. The second rule matters: the non-target images at hand
  (real photos, other enrolled sources) are easier than what a verifier meets in the open (unseen
  generators, photos processed differently), so a threshold set on them alone sits far too low. On
  the devset, the non-target rule alone accepted 65-90 % of unseen real photos and other generators;
  requiring scores typical of the source's own held-out images brings that down by an order of
  magnitude for about 10 points of target recall;
* the **calibrated score** is a probability that the image comes from the source, with equal priors,
  from a logistic (Platt) fit on the same held-out scores. It is monotone in the raw score, so ranking
  and AUC are unchanged, and it lives on the same 0..1 scale for every source, so the attributor can
  compare sources;
* the held-out scores are kept with the verifier, so the threshold can be re-chosen at another FAR
  without retraining (:meth:`Calibration.with_far`). A joint model over many sources keeps, per source,
  the held-out scores of every other source's rows; it keeps them as a bounded
  :class:`occ.metrics.ScoreSummary` (``Calibration.fit(..., bounded=True)``): the threshold and the
  Platt map are still fitted on every score, and a re-chosen threshold is exact for FARs within the
  summary's exactly kept upper tail, conservative and within the bounds it states otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from occ import metrics
from occ.errors import UsageError
from occ.metrics import ScoreSummary

DEFAULT_FAR = 0.05
DEFAULT_TARGET_TPR = 0.90


@dataclass(frozen=True, eq=False)
class Calibration:
    """Held-out scores, the rules and the threshold they give, and the Platt map. The target scores are a
    read-only float64 array; the non-target scores a :class:`ScoreSummary` (given an array, an exact
    one: every score kept; :meth:`fit` with ``bounded`` keeps a bounded one)."""

    pos_scores: np.ndarray  # held-out raw scores of target images
    neg_scores: ScoreSummary  # held-out raw scores of non-target images (len(): how many)
    far: float
    target_tpr: float
    threshold: float  # on the raw scale: accept when raw >= threshold
    slope: float
    intercept: float

    def __post_init__(self):
        scores = np.asarray(self.pos_scores, dtype=np.float64).reshape(-1)
        if scores.flags.writeable:  # a copy of the caller's array, which it may change later
            scores = scores.copy()
            scores.setflags(write=False)
        object.__setattr__(self, "pos_scores", scores)
        if not isinstance(self.neg_scores, ScoreSummary):
            object.__setattr__(self, "neg_scores", ScoreSummary(np.asarray(self.neg_scores, np.float64).reshape(-1)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Calibration):
            return NotImplemented
        return (self.to_dict(scores=False) == other.to_dict(scores=False)
                and np.array_equal(self.pos_scores, other.pos_scores)
                and self.neg_scores == other.neg_scores)

    __hash__ = None  # compared by value, arrays included: not hashable

    @classmethod
    def fit(cls, pos_scores, neg_scores, far: float = DEFAULT_FAR,
            target_tpr: float = DEFAULT_TARGET_TPR, bounded: bool = False) -> Calibration:
        """The calibration of held-out scores; with ``bounded``, keeping :meth:`ScoreSummary.of` the
        non-target scores (the threshold and the Platt map are fitted on all of them all the same)."""
        pos = np.asarray(pos_scores, dtype=np.float64)
        neg = np.asarray(neg_scores, dtype=np.float64)
        if len(pos) == 0 or len(neg) == 0:
            raise ValueError("calibration needs held-out scores of both target and non-target images")
        check_far(far)
        check_tpr(target_tpr)
        slope, intercept = _platt(pos, neg)
        summary = ScoreSummary.of(neg) if bounded else ScoreSummary(neg)
        return cls(
            pos_scores=pos,
            neg_scores=summary,
            far=float(far),
            target_tpr=float(target_tpr),
            # the summary's threshold is the exact one where far lies within its exact tail (one sort less)
            threshold=choose_threshold(pos, summary if far < summary.exact_far else neg, far, target_tpr),
            slope=slope,
            intercept=intercept,
        )

    def with_far(self, far: float | None = None, target_tpr: float | None = None) -> Calibration:
        """The same calibration with the threshold re-chosen for other rates (no retraining): exactly as
        :meth:`fit` would on all the scores where the non-target scores are exact or ``far`` lies within
        their exact tail (:attr:`ScoreSummary.exact_far`), else conservatively (see :class:`ScoreSummary`)."""
        far = self.far if far is None else far
        target_tpr = self.target_tpr if target_tpr is None else target_tpr
        check_far(far)
        check_tpr(target_tpr)
        return Calibration(self.pos_scores, self.neg_scores, float(far), float(target_tpr),
                           choose_threshold(self.pos_scores, self.neg_scores, far, target_tpr),
                           self.slope, self.intercept)

    def probability(self, raw) -> np.ndarray:
        return platt_probability(raw, self.slope, self.intercept)

    @cached_property  # read for every source of every decision; the calibration never changes
    def calibrated_threshold(self) -> float:
        if math.isinf(self.threshold):
            return 0.0 if self.threshold < 0 else 1.0
        return float(self.probability(self.threshold))

    def accept(self, raw) -> np.ndarray:
        return accept_columns([self], np.asarray(raw, dtype=np.float64)[..., None])[..., 0]

    @property
    def tpr(self) -> float:
        """Share of held-out target images accepted at the threshold."""
        return metrics.rates_at_threshold(self.pos_scores, (), self.threshold)[0]

    @property
    def achieved_far(self) -> float:
        """Share of held-out non-target images accepted at the threshold (at most ``far``; from a bounded
        summary, exact above its bins and an upper bound below, see :meth:`ScoreSummary.rate_at`)."""
        return self.neg_scores.rate_at(self.threshold)

    @property
    def auc(self) -> float:
        """Held-out AUC (from a bounded summary, within the bound of :meth:`ScoreSummary.auc`)."""
        return self.neg_scores.auc(self.pos_scores)

    def to_dict(self, scores: bool = True) -> dict:
        """The calibration as JSON-ready values; without the held-out scores when ``scores`` is False (a
        caller that stores them as tensors: :meth:`ScoreSummary.values` and ``counts``; a bounded summary
        has no JSON form)."""
        out = {
            "far": self.far,
            "target_tpr": self.target_tpr,
            "threshold": _finite(self.threshold),
            "slope": self.slope,
            "intercept": self.intercept,
        }
        if scores:
            if not self.neg_scores.exact:
                raise ValueError("a bounded summary of held-out scores is stored as tensors, not as JSON")
            out.update(pos_scores=self.pos_scores.tolist(), neg_scores=self.neg_scores.values.tolist())
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        # The threshold may be stored as "inf" or "-inf" (JSON has no infinity): float() reads both forms.
        # The non-target scores: a JSON list, or a ScoreSummary (a caller that stores them as tensors).
        neg = data["neg_scores"]
        return cls(np.asarray(data["pos_scores"], dtype=np.float64),
                   neg if isinstance(neg, ScoreSummary) else np.asarray(neg, dtype=np.float64),
                   float(data["far"]), float(data["target_tpr"]), float(data["threshold"]), float(data["slope"]),
                   float(data["intercept"]))


def platt_probability(raw, slope, intercept) -> np.ndarray:
    """The Platt map of raw scores: ``slope`` and ``intercept`` are numbers, or arrays broadcast against
    ``raw`` (a joint model maps one column per source at once)."""
    slope, intercept = np.asarray(slope, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
    z = slope * np.asarray(raw, dtype=np.float64) + intercept
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def choose_threshold(pos, neg, far: float, target_tpr: float) -> float:
    """The stricter of: held-out FAR <= ``far``, and held-out TPR no higher than needed for ``target_tpr``.
    ``neg``: the non-target scores, or a :class:`ScoreSummary` of them."""
    by_far = (neg if isinstance(neg, ScoreSummary) else ScoreSummary(neg)).threshold_at_far(far)
    ranked = np.sort(np.asarray(pos, dtype=np.float64))[::-1]
    by_tpr = ranked[max(0, math.ceil(target_tpr * len(ranked)) - 1)]
    return float(max(by_far, by_tpr))


def check_far(far: float) -> None:
    if not (isinstance(far, (int, float)) and 0.0 < far < 1.0):
        raise UsageError(f"false-accept rate must be between 0 and 1 (exclusive), got {far!r}")


def check_tpr(tpr: float) -> None:
    if not (isinstance(tpr, (int, float)) and 0.0 < tpr <= 1.0):
        raise UsageError(f"target true-accept rate must be in (0, 1], got {tpr!r}")


def _finite(value: float):
    """JSON has no infinity: store the infinities as strings that float() reads back."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _platt(pos: np.ndarray, neg: np.ndarray, l2: float = 0.05, iters: int = 100) -> tuple[float, float]:
    """Logistic fit p(target | raw) with balanced classes, by Newton's method on a 2-parameter model.

    Raw scores are standardised first so the small ridge penalty is scale-free. The slope is kept
    positive: a verifier whose held-out scores are reversed gets a flat (uninformative) calibration
    rather than a flipped one.
    """
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w = np.where(y == 1, 0.5 / len(pos), 0.5 / len(neg))
    mean, std = x.mean(), x.std() or 1.0
    z = (x - mean) / std
    wz, wzz = w * z, w * z * z
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -500, 500)))
        r, h = p - y, p * (1 - p)
        g = np.array([wz @ r + l2 * a, w @ r])
        hz = wz @ h
        hess = np.array([[wzz @ h + l2, hz], [hz, w @ h + 1e-12]])
        step = np.linalg.solve(hess, g)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    a = max(a, 0.0)
    return float(a / std), float(b - a * mean / std)


def accept_columns(calibrations, raw: np.ndarray) -> np.ndarray:
    """``raw[:, c] >= calibrations[c].threshold`` for every column at once: the acceptance rule of
    :meth:`Calibration.accept`, vectorised over sources (a loop over 1,000 sources dominated a request)."""
    thresholds = np.fromiter((c.threshold for c in calibrations), dtype=np.float64, count=len(calibrations))
    return np.asarray(raw, dtype=np.float64) >= thresholds
