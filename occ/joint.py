"""The registry-wide open-set model: every enrolled source and the non-target data in one model.

Each class (every enrolled source, and one "non-target" class made of the real-photo bank and the
users' negatives) is a Gaussian in a whitened space with **one shared covariance** (linear
discriminant analysis, few-shot friendly: a source contributes only its mean; the covariance is pooled
over every class and shrunk with Ledoit-Wolf). Concretely:

1. evidence vectors (:mod:`occ.evidence`) are centred and projected on their top ``dims`` principal
   directions, fitted on all training rows. With a second **stream** (:class:`Stream`: the low-level
   evidence of :mod:`occ.lowlevel`, the last columns of each row), that stream is first whitened on
   the non-target rows to a few directions and weighed, so its variance neither vanishes beside the
   CLIP evidence nor swamps it; the composition is still one affine map of the row;
2. the within-class covariance of the projections is estimated (Ledoit-Wolf shrinkage) and whitened;
3. each source's **log-odds** against the non-target class in that space: by default from a
   multinomial logistic regression over every source and the non-target class, fitted on the whitened
   projections (class-balanced, L2 with ``C = discriminative``); with ``discriminative=None``, the
   discriminant margin ``(|y - c_0|^2 - |y - c_s|^2) / 2`` of the shared-covariance Gaussians. Either
   is a linear function of the evidence, so scoring 100 sources is one matrix product;
4. a source's **raw score** is its log-odds minus the largest log-odds of any *other* class (the
   non-target class counts 0): how far the source stands above its nearest competitor. A source that
   is not the best class has a negative score, so a threshold never lets two look-alike generators
   both claim an image; and a source is scored against its siblings, not only against real photos (on
   generators drawn from the same prompts, ``bench/generalise.py``'s content-matched splits, the
   margin against the non-target class alone ranked a source's images below a plain logistic
   regression on one block);
5. thresholds and 0..1 scores come from cross-validated raw scores (folds over images, every view of
   an image in the same fold, PCA, covariance and regression refitted per fold): for source ``s`` the
   held-out target rows are its own, the held-out non-target rows are those of the non-target class
   **and of every other source**, so each source is a non-target for every other
   (:class:`occ.calibration.Calibration`, the stricter of the FAR and TPR rules). Held-out rows
   include the laundered training views, so a threshold keeps its meaning on re-encoded copies (the
   views are fitted on too; with ``fit_views`` off, only scored: ``bench/view_fit.py`` measured that
   clean images are then named better and re-encoded ones rejected, so it is not the default);
6. the decision for an image: the source with the largest raw score is named if its score reaches
   its threshold and the image lies no farther from that source's centre than 99 % of the source's
   own held-out images; otherwise the answer is unknown. (Log-odds are linear, so they grow without
   bound for images far beyond a source; the radius stops that.) With ``min_margin`` set (0 by
   default: :data:`DEFAULT_MIN_MARGIN`), no threshold lies below it: a source is never named for an
   image where another class (the non-target class or another source) scores higher. The held-out
   non-target images are the shipped bank and the other sources, which are easier than real photos
   unlike the bank; a threshold chosen on them alone can fall below zero and then names a source for
   photos the model itself places on the real side (``bench/generalise.py`` selects this rule);
7. **large registries** (more than :data:`LARGE_SOURCES` sources): the regression over every source costs
   a pass over every row for every source at each of its iterations, four times per refit (95 of the 166
   s a refit of 1,000 sources took, ``bench/joint_scale.py``), and so do principal directions of every
   row refitted per fold (61 s). Past that size the fit is the scalable one: one basis (:func:`fit_basis`:
   the principal directions of the non-target rows and of each source's centre weighed by its rows, one
   row per source) serves the final fit and every fold, the log-odds are the discriminant margins, and
   per fold only the class centres and the pooled covariance are refitted, in the basis's coordinates.
   Every part is then one pass over the rows, and a change to one source is a full refit that costs
   seconds at 1,000 sources (13 s). Its decisions are those of the discriminant refitted on every fold
   within a tested tolerance (``tests/test_joint.py``); the regression's own are not kept (on
   ``bench/generalise.py``'s content-matched splits the discriminant is within a seed's spread of it).

The model is a function of the *set* of classes, not of the order in which sources were enrolled; the
fit is one truncated SVD, one covariance and one convex regression per fold (its optimum is unique,
and the classes are always taken in name order), so refitting a registry of 100 sources after an
enrollment costs seconds, not 99 trainings; past 100 sources, point 7.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from occ.calibration import DEFAULT_FAR, DEFAULT_TARGET_TPR, Calibration, platt_probability
from occ.metrics import ScoreSummary

DEFAULT_DIMS = 256  # principal directions (bench/generalise.py selects among 64, 128, 256)
DEFAULT_FOLDS = 3
RADIUS_QUANTILE = 0.99
DEFAULT_MIN_MARGIN: float | None = 0.0  # chosen on the protocol's validation folds (see the module doc)
# L2 strength of the discriminative log-odds (point 3); None: the discriminant margins. Chosen on the
# content-matched validation split of bench/generalise.py (imagen-*), among None, 1 and 0.1
DEFAULT_DISCRIMINATIVE: float | None = 0.1
# whether the laundered views of the training images are fitted on (True) or only scored held-out, for
# the thresholds (False); bench/view_fit.py measures both
DEFAULT_FIT_VIEWS = True
PROJECT_ROWS = 256  # evidence rows projected at once (Geometry.project)


@dataclass
class ClassRows:
    """Training rows of one class: evidence vectors and, per row, the image it was made from (rows of
    one image, its laundered views, share an id and always fall in the same cross-validation fold)."""

    features: np.ndarray  # (n, D)
    image_ids: np.ndarray  # (n,) int

    def __post_init__(self):
        self.features = np.asarray(self.features, dtype=np.float32)
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        if self.features.ndim != 2 or len(self.features) != len(self.image_ids):
            raise ValueError("class rows need (n, D) features and n image ids")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def n_images(self) -> int:
        return len(np.unique(self.image_ids))

    def first_rows(self) -> np.ndarray:
        """(n,) bool: the first row of each image (its own evidence; the laundered views follow it)."""
        first = np.zeros(len(self), bool)
        first[np.unique(self.image_ids, return_index=True)[1]] = True
        return first


@dataclass
class Geometry:
    """Centring, projection+whitening and class centres: scores are ``(x - mean) @ proj`` in y-space."""

    mean: np.ndarray  # (D,)
    proj: np.ndarray  # (D, d)
    centres: np.ndarray  # (K + 1, d); row K is the non-target class

    def project(self, x: np.ndarray) -> np.ndarray:
        """(N, d) whitened projections of evidence rows, computed in float64: float32 matrix products
        round differently with a batch's size and a row's place in it, and moved a cached image's score
        in its sixth decimal between a batch and another (``tests/test_cli_order.py``); in float64 a row's
        scores do not depend, to the digits reported, on the rows beside it."""
        x = np.asarray(x)
        out = np.empty((len(x), self.proj.shape[1]))
        for i in range(0, len(x), PROJECT_ROWS):  # float64 copies of a few rows at a time, not of all of them
            part = x[i:i + PROJECT_ROWS].astype(np.float64)
            part -= self.mean
            out[i:i + PROJECT_ROWS] = part @ self.proj64
        return out

    @cached_property
    def proj64(self) -> np.ndarray:
        """:attr:`proj` in float64 (made once per model)."""
        return self.proj.astype(np.float64)

    def margins(self, x: np.ndarray) -> np.ndarray:
        """(N, K) discriminant margins of each source against the non-target class."""
        y = self.project(x)
        c0 = self.centres[-1]
        cs = self.centres[:-1]
        # (|y-c0|^2 - |y-cs|^2)/2 = y.(cs - c0) - (|cs|^2 - |c0|^2)/2
        return y @ (cs - c0).T - 0.5 * ((cs * cs).sum(1) - (c0 * c0).sum())

    def distances(self, x: np.ndarray) -> np.ndarray:
        """(N, K) squared whitened distances to each source's centre."""
        return self.distances_of(self.project(x))

    def distances_of(self, y: np.ndarray) -> np.ndarray:
        """:meth:`distances` from projections ``y`` (:meth:`project`)."""
        cs = self.centres[:-1]
        return (y * y).sum(1, keepdims=True) - 2 * y @ cs.T + (cs * cs).sum(1)


@dataclass(frozen=True)
class Stream:
    """The last ``columns`` of every evidence row as a second stream (point 1): whitened on the
    non-target rows to ``components`` directions, then scaled by ``weight / sqrt(components)``, so that
    the stream as a whole has the variance ``weight**2`` (a CLIP evidence vector has unit length)."""

    columns: int
    components: int = 64
    weight: float = 0.3

    def to_dict(self) -> dict:
        return {"columns": self.columns, "components": self.components, "weight": self.weight}


GRAM_ROWS = 2000  # up to this many training rows, principal directions come exactly from the Gram matrix


def _principal_directions(xc: np.ndarray, d: int, seed: int) -> np.ndarray:
    """(d, D) top principal directions of the centred rows ``xc``, with a fixed sign: exactly, from the
    eigenvectors of the Gram matrix, for registries of up to ``GRAM_ROWS`` training rows (evidence vectors
    have thousands of dimensions), else by a randomized SVD in float32: the decisions depend on the
    subspace alone (they are invariant to rotations within it), which float32 finds as float64 does
    (principal cosines 1.0000 at 300 sources, ``bench/joint_scale.py``'s rows) in less than half the time
    (``tests/test_joint.py`` checks the decisions against exact directions)."""
    if xc.shape[0] > GRAM_ROWS:
        from sklearn.utils.extmath import randomized_svd

        vt = randomized_svd(xc.astype(np.float32), d, random_state=seed)[2].astype(np.float64)
    elif xc.shape[0] <= xc.shape[1]:
        w, u = np.linalg.eigh(xc @ xc.T)
        top = np.argsort(w)[::-1][:d]
        vt = (u[:, top] / np.sqrt(np.maximum(w[top], 1e-12))).T @ xc
    else:
        w, v = np.linalg.eigh(xc.T @ xc)
        vt = v[:, np.argsort(w)[::-1][:d]].T
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    return vt * signs[:, None]


def _stream_map(x: np.ndarray, nontarget: np.ndarray, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """(mean, (columns, k) map) that whitens the stream's columns on the non-target rows (point 1)."""
    part = x[nontarget, -stream.columns:]
    mu = part.mean(0)
    _, sv, vt = np.linalg.svd(part - mu, full_matrices=False)
    k = int(min(stream.components, (sv > sv[0] * 1e-6).sum())) if len(sv) and sv[0] > 0 else 0
    scale = sv[:k] / np.sqrt(len(part))
    return mu, vt[:k].T / scale * (stream.weight / np.sqrt(max(k, 1)))


def fit_geometry(classes: Sequence[ClassRows], dims: int, seed: int, stream: Stream | None = None) -> Geometry:
    """Centring, projection, whitening and class centres of ``classes`` (the last is the non-target class)."""
    from sklearn.covariance import ledoit_wolf

    x = np.concatenate([c.features for c in classes]).astype(np.float64)
    y = np.concatenate([np.full(len(c), k) for k, c in enumerate(classes)])
    mean = x.mean(0)
    stream_map = None
    if stream is not None:  # x -> [first columns, whitened stream]: y below is linear in x all the same
        mu, stream_map = _stream_map(x, y == len(classes) - 1, stream)
        x = np.concatenate([x[:, :-stream.columns], (x[:, -stream.columns:] - mu) @ stream_map], 1)
    xc = x - x.mean(0)
    d = int(max(1, min(dims, xc.shape[0] - 1, xc.shape[1])))
    vt = _principal_directions(xc, d, seed)
    z = xc @ vt.T
    centres = np.stack([z[y == k].mean(0) for k in range(len(classes))])
    cov, _ = ledoit_wolf(z - centres[y], assume_centered=True)
    # whitening: W with W W^T = cov^-1 (Cholesky of the precision)
    precision = np.linalg.inv(cov)
    white = np.linalg.cholesky(precision)
    proj = vt.T @ white
    if stream_map is not None:  # (x_first - mean) @ proj[:a] + (x_stream - mean) @ map @ proj[a:]
        first = len(mean) - stream.columns
        proj = np.concatenate([proj[:first], stream_map @ proj[first:]])
    return Geometry(mean.astype(np.float32), proj.astype(np.float32), (centres @ white).astype(np.float32))


LARGE_SOURCES = 100  # above this many sources, the scalable fit of point 7 (bench/joint_scale.py)


@dataclass
class Basis:
    """The principal directions of a large registry (point 7): ``(x - mean) @ proj`` are a row's
    coordinates, shared by the final fit and every cross-validation fold."""

    mean: np.ndarray  # (D,)
    proj: np.ndarray  # (D, d)

    def project(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.proj


def fit_basis(classes: Sequence[ClassRows], dims: int, seed: int, stream: Stream | None = None) -> Basis:
    """The basis of point 7: the top principal directions of the scatter about the mean of every row,
    less the scatter of each source's rows about its own centre (the non-target rows, and each source's
    centre weighed by its number of rows); with a second stream, its columns whitened first as in
    :func:`fit_geometry`. Its input is one row per source beside the non-target rows, so it costs little
    at any registry size, and it is a function of the set of classes alone."""
    nontarget = classes[-1].features.astype(np.float64)
    centres = np.stack([c.features.mean(0, dtype=np.float64) for c in classes[:-1]])
    counts = np.array([len(c) for c in classes[:-1]], dtype=np.float64)
    mean = ((centres * counts[:, None]).sum(0) + nontarget.sum(0)) / (counts.sum() + len(nontarget))
    rows = np.concatenate([nontarget - mean, (centres - mean) * np.sqrt(counts)[:, None]])
    stream_map = None
    if stream is not None:  # the stream's affine map: its translation cancels in rows about the mean
        _, stream_map = _stream_map(nontarget, np.ones(len(nontarget), bool), stream)
        rows = np.concatenate([rows[:, :-stream.columns], rows[:, -stream.columns:] @ stream_map], 1)
    d = int(max(1, min(dims, rows.shape[0] - 1, rows.shape[1])))
    proj = _principal_directions(rows, d, seed).T
    if stream_map is not None:
        first = len(mean) - stream.columns
        proj = np.concatenate([proj[:first], stream_map @ proj[first:]])
    return Basis(mean.astype(np.float32), proj.astype(np.float32))


def _shared_whitening(coords: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(class centres, W) of per-class coordinates: W whitens the pooled within-class covariance
    (Ledoit-Wolf), ``W W^T = cov^-1``, as in :func:`fit_geometry`."""
    from sklearn.covariance import ledoit_wolf

    centres = np.stack([z.mean(0) for z in coords])
    cov, _ = ledoit_wolf(np.concatenate([z - c for z, c in zip(coords, centres)]), assume_centered=True)
    return centres, np.linalg.cholesky(np.linalg.inv(cov))


@dataclass
class LogOdds:
    """Each source's log-odds against the non-target class, a linear map of the whitened projections:
    ``y @ weight + bias`` (point 3 of the module doc)."""

    weight: np.ndarray  # (d, K)
    bias: np.ndarray  # (K,)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        return y @ self.weight + self.bias


def fit_log_odds(geometry: Geometry, classes: Sequence[ClassRows], discriminative: float | None,
                 start: tuple[Geometry, LogOdds] | None = None) -> LogOdds:
    """The log-odds of point 3: the discriminant's (``discriminative`` None) or a class-balanced
    multinomial logistic regression's with L2 strength ``C = discriminative``. ``start``: a model fitted
    on other rows (the final fit, for a cross-validation fold) that the regression starts from, mapped
    into this geometry: its optimum is unique, so only the iterate at which it stops (``tol``) moves, in
    fewer iterations (35 instead of 52 at 300 sources)."""
    cs, c0 = geometry.centres[:-1].astype(np.float64), geometry.centres[-1].astype(np.float64)
    if discriminative is None:
        return LogOdds((cs - c0).T.astype(np.float32), (-0.5 * ((cs * cs).sum(1) - (c0 * c0).sum())).astype(np.float32))
    from sklearn.linear_model import LogisticRegression

    y = np.concatenate([geometry.project(c.features) for c in classes]).astype(np.float64)
    label = np.concatenate([np.full(len(c), k) for k, c in enumerate(classes)])
    counts = np.bincount(label)
    weight = (len(label) / (len(counts) * counts))[label]  # every class weighs the same
    lr = LogisticRegression(C=float(discriminative), max_iter=3000, tol=1e-6, warm_start=start is not None)
    if start is not None:
        lr.coef_, lr.intercept_ = _start_from(start, classes, y)
    lr.fit(y, label, sample_weight=weight)
    coef, intercept = lr.coef_, lr.intercept_
    if len(classes) == 2:  # one (d,) vector: the log-odds of class 1 (the non-target class) against class 0
        coef, intercept = np.stack([np.zeros_like(coef[0]), coef[0]]), np.r_[0.0, intercept[0]]
    return LogOdds((coef[:-1] - coef[-1]).T.astype(np.float32), (intercept[:-1] - intercept[-1]).astype(np.float32))


def _start_from(start: tuple[Geometry, LogOdds], classes: Sequence[ClassRows], y: np.ndarray) -> tuple:
    """(coef, intercept) for :class:`LogisticRegression` in the space of the projections ``y`` of the
    rows of ``classes``: the least-squares fit of the logits the model ``start`` gives those rows, in the
    gauge of an L2 optimum (the logits of every class summing to 0 on each row)."""
    geometry, odds = start
    if odds.bias.shape != (len(classes) - 1,):
        raise ValueError(f"a start of {len(odds.bias)} sources for a regression over {len(classes) - 1} classes")
    logits = np.concatenate([odds(geometry.project(c.features)) for c in classes]).astype(np.float64)
    logits = np.concatenate([logits, np.zeros((len(logits), 1))], 1)
    logits -= logits.mean(1, keepdims=True)
    sol = np.linalg.lstsq(np.concatenate([y, np.ones((len(y), 1))], 1), logits, rcond=None)[0]  # (d + 1, K + 1)
    if len(classes) == 2:  # one vector: the logit of class 1 (the non-target class) against class 0
        sol = sol[:, 1:] - sol[:, :1]
    return np.ascontiguousarray(sol[:-1].T), sol[-1].copy()


def above_competitors(odds: np.ndarray) -> np.ndarray:
    """(N, K) raw scores from (N, K) log-odds against the non-target class (point 4): each source's
    log-odds minus the largest of every other class's, the non-target class counting 0."""
    full = np.concatenate([odds, np.zeros((len(odds), 1), odds.dtype)], 1)
    rows = np.arange(len(odds))
    top = full.argmax(1)  # the first of equal largest values, as a stable sort would rank it
    first = full[rows, top]
    full[rows, top] = -np.inf
    second = full.max(1)
    best_other = np.where(np.arange(odds.shape[1])[None] == top[:, None], second[:, None], first[:, None])
    return odds - best_other


def _folds(classes: Sequence[ClassRows], k: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Per class, a fold number for each row, by image."""
    out = []
    for c in classes:
        ids = np.unique(c.image_ids)
        fold_of = dict(zip(rng.permutation(ids).tolist(), [i % k for i in range(len(ids))]))
        out.append(np.array([fold_of[int(i)] for i in c.image_ids]))
    return out


@dataclass
class JointDecisions:
    """:meth:`JointModel.decide_arrays` of N rows over the K sources ``names`` (columns in that order)."""

    names: list[str]
    raw: np.ndarray  # (N, K) raw margins
    scores: np.ndarray  # (N, K) 0..1 scores
    accepts: np.ndarray  # (N, K) bool: the margin reaches the threshold and the row lies within the radius
    named: np.ndarray  # (N,) column of the named source (the largest margin, if it accepts), -1: unknown
    best: np.ndarray | None = None  # (N,) column of the largest margin (named when it accepts)
    within: np.ndarray | None = None  # (N, K) bool: the row lies within the source's radius


class JointModel:
    """Shared-covariance discriminant over the enrolled sources + a non-target class (see module doc).

    ``fit(sources, nontarget, far=..., target_tpr=...)``: ``sources`` maps names to :class:`ClassRows`;
    ``far``/``target_tpr`` are a number or a per-source mapping; ``scale_from``: the scalable fit (point 7)
    for more sources than this (None: never). Learned: ``names_``, ``scaled_``, ``geometry_``,
    ``calibrations_`` (one :class:`Calibration` per source, held-out scores kept: the non-target ones as a
    bounded summary).
    """

    def __init__(self, dims: int = DEFAULT_DIMS, folds: int = DEFAULT_FOLDS, seed: int = 0,
                 min_margin: float | None = DEFAULT_MIN_MARGIN, discriminative: float | None = DEFAULT_DISCRIMINATIVE,
                 stream: Stream | None = None, scale_from: int | None = LARGE_SOURCES,
                 fit_views: bool = DEFAULT_FIT_VIEWS):
        self.dims = int(dims)
        self.folds = int(folds)
        self.seed = int(seed)
        self.min_margin = None if min_margin is None else float(min_margin)
        self.discriminative = None if discriminative is None else float(discriminative)
        self.stream = stream
        self.scale_from = None if scale_from is None else int(scale_from)
        self.fit_views = bool(fit_views)

    def _floored(self, calibration: Calibration) -> Calibration:
        """``calibration`` with its threshold raised to ``min_margin`` where it lies below."""
        if self.min_margin is None or calibration.threshold >= self.min_margin:
            return calibration
        return replace(calibration, threshold=self.min_margin)

    def fit(self, sources: Mapping[str, ClassRows], nontarget: ClassRows,
            far: float | Mapping[str, float] = DEFAULT_FAR,
            target_tpr: float | Mapping[str, float] = DEFAULT_TARGET_TPR) -> JointModel:
        names = sorted(sources)
        if not names:
            raise ValueError("a joint model needs at least one source")
        classes = [sources[n] for n in names] + [nontarget]
        for name, c in zip(names + ["non-target"], classes):
            if c.n_images < 2:
                raise ValueError(f"class {name!r} needs rows from at least 2 images, has {c.n_images}")
        dims = [len(c.features[0]) for c in classes]
        if len(set(dims)) != 1:
            raise ValueError(f"evidence vectors of different lengths: {sorted(set(dims))}")
        rng = np.random.default_rng(self.seed)
        k = max(2, min(self.folds, min(c.n_images for c in classes)))
        fold_of = _folds(classes, k, rng)
        # the rows fitted on: every row, or with fit_views off each image's own (first) row; held-out
        # scores always cover every row, laundered views included
        fitted = [np.ones(len(c), bool) if self.fit_views else c.first_rows() for c in classes]
        self.scaled_ = self.scale_from is not None and len(names) > self.scale_from
        if self.scaled_:
            held, held_dist = self._fit_scaled(classes, fold_of, fitted, k)
        else:
            held, held_dist = self._fit_regression(classes, fold_of, fitted, k)
        self.names_ = names
        self.calibrations_ = {}
        for si, name in enumerate(names):
            pos = held[si][:, si]
            neg = np.concatenate([held[ci][:, si] for ci in range(len(classes)) if ci != si])
            self.calibrations_[name] = self._floored(Calibration.fit(pos, neg, _per(far, name), _per(target_tpr, name),
                                                                     bounded=True))
        # how far from its centre a source's own held-out images lie: an image farther than nearly all
        # of them is no image of that source, however its margin (a linear function) extrapolates
        self.radii_ = {n: float(np.quantile(held_dist[i], RADIUS_QUANTILE)) for i, n in enumerate(names)}
        self.n_rows_ = {n: len(c) for n, c in zip(names + ["non-target"], classes)}
        return self

    def _fit_regression(self, classes: Sequence[ClassRows], fold_of: list[np.ndarray], fitted: list[np.ndarray],
                        k: int):
        """Points 1-5: geometry and log-odds refitted on every fold, from the ``fitted`` rows of each class;
        (held-out raw scores per class, held-out distances of each source's rows to its centre)."""
        sources = classes[:-1]
        held = [np.zeros((len(c), len(sources))) for c in classes]
        held_dist = [np.zeros(len(c)) for c in sources]
        final = _fitted_rows(classes, fitted)
        self.geometry_ = fit_geometry(final, self.dims, self.seed, self.stream)
        self.log_odds_ = fit_log_odds(self.geometry_, final, self.discriminative)
        # a large registry's folds start their regressions from the final fit (fit_log_odds); a small one's
        # start cold, as they always did: their refit costs seconds, and their decisions stay as they were
        start = (self.geometry_, self.log_odds_) if sum(len(c) for c in final) > GRAM_ROWS else None
        for f in range(k):
            train = [ClassRows(c.features[(fo != f) & m], c.image_ids[(fo != f) & m])
                     for c, fo, m in zip(classes, fold_of, fitted)]
            geometry = fit_geometry(train, self.dims, self.seed, self.stream)
            odds = fit_log_odds(geometry, train, self.discriminative, start)
            for ci, (c, fo) in enumerate(zip(classes, fold_of)):
                if (fo == f).any():
                    held[ci][fo == f] = above_competitors(odds(geometry.project(c.features[fo == f])))
                    if ci < len(sources):
                        held_dist[ci][fo == f] = geometry.distances(c.features[fo == f])[:, ci]
        return held, held_dist

    def _fit_scaled(self, classes: Sequence[ClassRows], fold_of: list[np.ndarray], fitted: list[np.ndarray],
                    k: int):
        """Point 7: one basis (:func:`fit_basis`) for the final fit and every fold, the discriminant's
        margins, and per fold only the class centres and the pooled covariance refitted, from the ``fitted``
        rows; returns what :meth:`_fit_regression` does."""
        n_sources = len(classes) - 1
        basis = fit_basis(_fitted_rows(classes, fitted), self.dims, self.seed, self.stream)
        coords = [basis.project(c.features).astype(np.float64) for c in classes]
        centres, white = _shared_whitening([z[m] for z, m in zip(coords, fitted)])
        self.geometry_ = Geometry(basis.mean, (basis.proj.astype(np.float64) @ white).astype(np.float32),
                                  (centres @ white).astype(np.float32))
        self.log_odds_ = fit_log_odds(self.geometry_, classes, None)
        held = [np.zeros((len(c), n_sources)) for c in classes]
        held_dist = [np.zeros(len(c)) for c in classes[:-1]]
        for f in range(k):
            centres, white = _shared_whitening([z[(fo != f) & m] for z, fo, m in zip(coords, fold_of, fitted)])
            geometry = Geometry(basis.mean, basis.proj, (centres @ white).astype(np.float32))
            odds = fit_log_odds(geometry, classes, None)
            out = [fo == f for fo in fold_of]
            y = np.concatenate([z[o] for z, o in zip(coords, out)]) @ white  # every class's held-out rows at once
            raw, dist = above_competitors(odds(y)), geometry.distances_of(y)
            owner = np.concatenate([np.full(o.sum(), ci) for ci, o in enumerate(out)])
            for ci, o in enumerate(out):
                held[ci][o] = raw[owner == ci]
                if ci < n_sources:
                    held_dist[ci][o] = dist[owner == ci, ci]
        return held, held_dist

    # -- scoring ------------------------------------------------------------------------------------

    def margins(self, x: np.ndarray) -> np.ndarray:
        """(N, K) raw scores (point 4), one column per source in ``names_`` order."""
        return above_competitors(self.log_odds_(self.geometry_.project(x)))

    def decide_arrays(self, x: np.ndarray) -> JointDecisions:
        """The decisions for the rows of ``x`` as arrays (one column per source in ``names_`` order)."""
        y = self.geometry_.project(x)
        raw = above_competitors(self.log_odds_(y))
        names = self.names_
        cals = [self.calibrations_[n] for n in names]
        # every source's Calibration.probability and .accept at once (one source per column: a loop over
        # 1,000 sources cost more than the rest of a cached decision)
        slope, intercept, threshold = (np.array([getattr(c, k) for c in cals], dtype=np.float64)
                                       for k in ("slope", "intercept", "threshold"))
        scores = platt_probability(raw, slope, intercept)
        accepts = raw.astype(np.float64) >= threshold
        within = self.geometry_.distances_of(y) <= np.array([self.radii_[n] for n in names])
        accepts &= within
        rows = np.arange(len(raw))
        best = raw.argmax(1)  # the nearest source (the first of equal margins)
        named = np.where(accepts[rows, best], best, -1)
        return JointDecisions(list(names), raw, scores, accepts, named, best, within)

    def decide(self, x: np.ndarray) -> list[tuple[str | None, dict[str, float], dict[str, float], list[str]]]:
        """Per row: (named source or None, 0..1 score per source, raw margin per source, sources whose
        threshold the margin reaches and whose radius holds the row, best first). See :meth:`decide_arrays`."""
        d = self.decide_arrays(x)
        names = d.names
        order = np.argsort(-d.raw, axis=1, kind="stable")  # per row, sources by margin, ties in name order
        ranked = np.take_along_axis(d.accepts, order, 1)
        raw, scores = d.raw.tolist(), d.scores.tolist()
        return [(names[n] if n >= 0 else None, dict(zip(names, s)), dict(zip(names, r)),
                 [names[j] for j in o[a]])
                for n, s, r, o, a in zip(d.named.tolist(), scores, raw, order, ranked)]

    def set_threshold(self, name: str, far: float | None = None, target_tpr: float | None = None) -> Calibration:
        self.calibrations_[name] = self._floored(self.calibrations_[name].with_far(far, target_tpr))
        return self.calibrations_[name]

    # -- persistence --------------------------------------------------------------------------------

    def to_saved(self) -> tuple[dict[str, np.ndarray], dict]:
        """(tensors, JSON metadata). Each source's held-out scores go in the tensors (float64, so a stored
        model re-chooses exactly the thresholds an in-memory one does): the target scores, and the
        bounded summary of the non-target scores (:class:`occ.metrics.ScoreSummary`: values and bin
        counts). A source's non-target scores cover every other source's rows: kept whole, they grew
        with the square of the registry's size (245 MB at 1,000 sources, ``bench/joint_scale.py``)."""
        g = self.geometry_
        tensors = {"mean": g.mean, "proj": g.proj, "centres": g.centres,
                   "odds_weight": self.log_odds_.weight, "odds_bias": self.log_odds_.bias}
        calibrations = {}
        for n, c in self.calibrations_.items():
            tensors[_scores_key("pos", n)], tensors[_scores_key("neg", n)] = c.pos_scores, c.neg_scores.values
            tensors[_scores_key("neg_counts", n)] = c.neg_scores.counts
            calibrations[n] = c.to_dict(scores=False)
        meta = {"dims": self.dims, "folds": self.folds, "seed": self.seed, "min_margin": self.min_margin,
                "discriminative": self.discriminative, "stream": self.stream and self.stream.to_dict(),
                "scale_from": self.scale_from, "fit_views": self.fit_views, "scaled": self.scaled_,
                "names": list(self.names_),
                "calibrations": calibrations, "radii": dict(self.radii_),
                "n_rows": dict(self.n_rows_)}
        return tensors, meta

    @classmethod
    def from_saved(cls, tensors: Mapping[str, np.ndarray], meta: Mapping) -> JointModel:
        stream = Stream(**meta["stream"]) if meta.get("stream") else None
        model = cls(meta["dims"], meta["folds"], meta["seed"], meta["min_margin"], meta["discriminative"], stream,
                    meta.get("scale_from", LARGE_SOURCES), meta.get("fit_views", True))
        model.names_ = list(meta["names"])
        model.scaled_ = bool(meta.get("scaled", False))
        mean, proj, centres, weight, bias = (np.asarray(tensors[k], dtype=np.float32)
                                             for k in ("mean", "proj", "centres", "odds_weight", "odds_bias"))
        k, d = len(model.names_), centres.shape[1]
        if proj.shape != (len(mean), d) or centres.shape[0] != k + 1 or weight.shape != (d, k) or bias.shape != (k,):
            raise ValueError("joint model tensors do not fit together")
        model.geometry_ = Geometry(mean, proj, centres)
        model.log_odds_ = LogOdds(weight, bias)
        model.calibrations_ = {n: Calibration.from_dict(meta["calibrations"][n] | {
            "pos_scores": np.asarray(tensors[_scores_key("pos", n)], dtype=np.float64),
            "neg_scores": ScoreSummary(np.asarray(tensors[_scores_key("neg", n)], dtype=np.float64),
                                       np.asarray(tensors[_scores_key("neg_counts", n)]))}) for n in model.names_}
        model.radii_ = {n: float(meta["radii"][n]) for n in model.names_}
        model.n_rows_ = dict(meta.get("n_rows", {}))
        return model


def _fitted_rows(classes: Sequence[ClassRows], fitted: Sequence[np.ndarray]) -> list[ClassRows]:
    """Each class's ``fitted`` rows (the class itself where that is every row: no copy)."""
    return [c if m.all() else ClassRows(c.features[m], c.image_ids[m]) for c, m in zip(classes, fitted)]


def _scores_key(kind: str, name: str) -> str:
    """The tensor that holds source ``name``'s held-out ``pos`` scores, ``neg`` scores (the summary's
    values) or ``neg_counts`` (its bins' counts)."""
    return f"{kind}:{name}"


def _per(value: float | Mapping[str, float], name: str) -> float:
    return float(value[name]) if isinstance(value, Mapping) else float(value)
