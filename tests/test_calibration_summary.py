"""The bounded summary of held-out non-target scores (issue 26): a joint model over K sources keeps, per
source, a summary of the scores of every other source's rows, so what it stores grows with K, not K^2.
Exact where it says it is (the fit-time threshold, thresholds for FARs within the exact tail, rates above
the bins), within the bounds it states elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from occ import metrics
from occ.calibration import Calibration
from occ.joint import ClassRows, JointModel
from occ.metrics import SUMMARY_BINS, SUMMARY_EXACT, SUMMARY_TAIL, ScoreSummary

FARS = [1e-4, 0.001, 0.01, 0.03, 0.05, 0.0655, 0.08, 0.1, 0.2, 0.35, 0.5, 0.75, 0.9, 0.99]


def _negatives(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(0, 1, n)
    if kind == "ties":  # every value repeated (a coarse score): bins and tail must not split a value
        return np.round(rng.normal(0, 1, n), 2)
    return np.r_[rng.exponential(1, n // 2), -rng.exponential(5, n - n // 2)]  # skewed, two-sided


@pytest.mark.parametrize("kind", ["normal", "ties", "skewed"])
@pytest.mark.parametrize("n", [SUMMARY_EXACT + 1, 31_000, 200_000])
def test_summary_is_bounded_and_exact_where_it_says(kind, n):
    neg = _negatives(kind, n)
    summary = ScoreSummary.of(neg)
    assert len(summary) == n and not summary.exact
    assert summary.values.size <= SUMMARY_TAIL + SUMMARY_BINS and summary.counts.size <= SUMMARY_BINS
    assert summary.exact_far <= SUMMARY_TAIL / n
    for far in FARS:
        exact = metrics.threshold_at_far(neg, far)
        got = summary.threshold_at_far(far)
        achieved, best = np.mean(neg >= got), np.mean(neg >= exact)
        if far < summary.exact_far:
            assert got == exact, far
        else:  # conservative, and short of the exact threshold's rate by less than two bins
            assert got >= exact and achieved <= far
            assert best - achieved < 2 * summary.max_bin / n
        lo, hi = summary.rate_bounds(got)
        assert lo <= achieved <= hi and summary.rate_at(got) == hi
    for t in np.quantile(neg, [0.001, 0.1, 0.5, 0.9, 0.97, 0.999]).tolist() + [neg.max() + 1, neg.min() - 1]:
        rate = np.mean(neg >= t)
        lo, hi = summary.rate_bounds(t)
        assert lo <= rate <= hi
        if t > summary.exact_above:
            assert lo == hi == summary.rate_at(t) == rate
    rng = np.random.default_rng(1)
    for shift in (0.0, 1.0, 3.0):
        pos = rng.normal(shift, 1, 40)
        assert abs(summary.auc(pos) - metrics.roc_auc(pos, neg)) <= summary.max_bin / (2 * n)


def test_summary_bins_are_fine_where_thresholds_are_chosen():
    neg = _negatives("normal", 100_000)
    summary = ScoreSummary.of(neg)
    for far in (0.05, 0.1, 0.2, 0.5):  # past the exact tail (2 %): the rate lost is a small share of far
        assert np.mean(neg >= summary.threshold_at_far(far)) >= far * 0.95


def test_small_sets_are_kept_whole_in_their_order_and_a_summary_is_kept_as_it_is():
    neg = np.random.default_rng(0).normal(0, 1, SUMMARY_EXACT)
    small = ScoreSummary.of(neg)
    assert small.exact and np.array_equal(small.values, neg) and small.exact_far == 1.0
    for far in FARS:
        assert small.threshold_at_far(far) == metrics.threshold_at_far(neg, far)
    big = ScoreSummary.of(np.r_[neg, neg + 0.5])
    assert ScoreSummary.of(big) is big
    assert ScoreSummary(big.values, big.counts) == big and big != small


@pytest.mark.parametrize("values, counts", [
    ([1.0, 0.5, 2.0], [3, 1]),  # bins not ascending
    ([0.0, 1.0, 0.5], [3, 1]),  # a tail score below the bins
    ([0.0, 1.0, 2.0], [3, 0]),  # an empty bin
    ([0.0, 1.0], [1.5]),  # a count that is no integer
    ([0.0, np.nan], []),
])
def test_malformed_summary_is_refused(values, counts):
    with pytest.raises(ValueError):
        ScoreSummary(np.asarray(values), np.asarray(counts))


def test_calibration_fit_is_the_same_bounded_or_not_and_re_chooses_exactly_in_the_tail():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(2, 1, 30), rng.normal(0, 1, 31_000)
    full = Calibration.fit(pos, neg, far=0.1, target_tpr=1.0)  # the FAR rule decides
    bounded = Calibration.fit(pos, neg, far=0.1, target_tpr=1.0, bounded=True)
    assert not bounded.neg_scores.exact and full.neg_scores.exact and len(bounded.neg_scores) == len(neg)
    assert (bounded.threshold, bounded.slope, bounded.intercept) == (full.threshold, full.slope, full.intercept)
    assert bounded.tpr == full.tpr
    assert full.achieved_far <= bounded.achieved_far <= full.achieved_far + bounded.neg_scores.max_bin / len(neg)
    assert abs(bounded.auc - full.auc) <= bounded.neg_scores.max_bin / (2 * len(neg))
    for far in (0.001, 0.01, 0.05):  # within the exact tail (2,048 of 31,000: 6.6 %)
        assert bounded.with_far(far).threshold == full.with_far(far).threshold
        assert bounded.with_far(far).achieved_far == full.with_far(far).achieved_far
    with pytest.raises(ValueError):  # a bounded summary has no JSON form: it is stored as tensors
        bounded.to_dict()
    again = Calibration.from_dict(bounded.to_dict(scores=False) | {"pos_scores": bounded.pos_scores,
                                                                 "neg_scores": bounded.neg_scores})
    assert again == bounded and again != full


def test_verifier_calibration_keeps_its_json_form():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(2, 1, 20).tolist(), rng.normal(0, 1, 300).tolist()
    cal = Calibration.fit(pos, neg)
    data = cal.to_dict()
    assert data["neg_scores"] == neg and data["pos_scores"] == pos  # the lists, in their order
    assert Calibration.from_dict(data) == cal


# -- a joint model of many sources ----------------------------------------------------------------

D = 24


def _registry(k: int, seed: int = 0, bank_rows: int = 4200):
    """``k`` sources of 3 images x 2 views beside a non-target class of ``bank_rows`` rows: every source's
    held-out non-target scores number more than SUMMARY_EXACT."""
    rng = np.random.default_rng(seed)

    def rows(n_images, views, centre):
        x = centre + rng.normal(0, 1, (n_images * views, D))
        return ClassRows(x, np.tile(np.arange(n_images), views))

    bank = rows(bank_rows // 2, 2, rng.normal(0, 0.5, D))
    sources = {f"s{i:03d}": rows(3, 2, rng.normal(0, 1.5, D)) for i in range(k)}
    return sources, bank, rng


@pytest.fixture(scope="module")
def joint20():
    sources, bank, rng = _registry(20)
    return JointModel(dims=16).fit(sources, bank), sources, rng


def _score_bytes(model: JointModel) -> int:
    tensors, _ = model.to_saved()
    return sum(np.asarray(t).nbytes for n, t in tensors.items() if ":" in n)


def test_joint_model_round_trips_its_summaries(joint20):
    model, sources, rng = joint20
    assert all(not c.neg_scores.exact for c in model.calibrations_.values())
    tensors, meta = model.to_saved()
    again = JointModel.from_saved(tensors, meta)
    assert again.calibrations_ == model.calibrations_
    x = np.concatenate([rng.normal(0, 1.5, (40, D)), *(c.features[:2] for c in sources.values())])
    a, b = model.decide_arrays(x), again.decide_arrays(x)
    np.testing.assert_array_equal(a.named, b.named)
    np.testing.assert_array_equal(a.accepts, b.accepts)
    np.testing.assert_array_equal(a.scores, b.scores)
    for name in ("s000", "s007"):  # re-chosen in the stored model as in memory
        for far in (0.01, 0.3):
            assert again.set_threshold(name, far) == model.set_threshold(name, far)
        assert again.calibrations_[name].achieved_far <= 0.3


def test_joint_model_stored_scores_grow_linearly_in_sources(joint20):
    model20 = joint20[0]
    sources, bank, _ = _registry(60, seed=1)
    model60 = JointModel(dims=16).fit(sources, bank)
    per_source_cap = (SUMMARY_TAIL + 2 * SUMMARY_BINS) * 8 + 6 * 8  # the summary + 6 target scores
    b20, b60 = _score_bytes(model20), _score_bytes(model60)
    assert b20 <= 20 * per_source_cap and b60 <= 60 * per_source_cap
    # 3x the sources, 3x the bytes; kept whole, they grew by 3 x (bank + 60 x 6) / (bank + 20 x 6) = 3.17x
    whole20, whole60 = (sum(8 * (len(c.pos_scores) + len(c.neg_scores)) for c in m.calibrations_.values())
                        for m in (model20, model60))
    assert whole60 / whole20 > 3.15
    assert b60 / b20 < 3.01
