"""How the registry-wide joint model's refit, scoring and stored size grow with the number of sources.

    python bench/joint_scale.py --out bench/results/joint_scale.json [--sizes 1 10 100 101 300 1000]

Every enrollment of an lda source refits the joint model over all sources (occ.openset.refit); this
times that fit (3-fold cross-validation + the final fit, what a refit does, with the shipped settings:
``occ.openset.JointSettings``' directions, regression strength, floor and low-level stream) and the
scoring of 300 images, at each size (past ``occ.joint.LARGE_SOURCES`` sources the scalable fit, point 7
of ``occ.joint``'s doc), for sources of 10 images x (the image + ``DEFAULT_VIEWS`` laundered
views) beside a non-target class of the shipped bank's size x the same views, on rows of the embedded
backbone's evidence (7 blocks x 768, then the low-level stream's columns). It also reports the bytes of
the stored model (``JointModel.to_saved``; each source keeps a bounded summary of its held-out non-target
scores, so it grows linearly with the registry; kept whole, they grew with its square).
The rows are synthetic (Gaussian around per-class centres): the cost depends on the shapes, not on the
pixels, and a fit's time is a lower bound of a refit's (which also reads every source's evidence).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from occ.evidence import DEFAULT_VIEWS
from occ.joint import ClassRows, JointModel
from occ.lowlevel import DIMS as LOW_DIMS
from occ.openset import JointSettings

D = 7 * 768 + LOW_DIMS
VIEWS = 1 + DEFAULT_VIEWS
BANK_IMAGES = 370


def rows(rng, n_images, views, centre):
    x = centre + rng.normal(0, 1, (n_images * views, D)).astype(np.float32)
    return ClassRows(x / np.linalg.norm(x, axis=1, keepdims=True), np.tile(np.arange(n_images), views))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    bank = rows(rng, BANK_IMAGES, VIEWS, rng.normal(0, 0.3, D).astype(np.float32))
    settings = JointSettings()
    test = rng.normal(0, 1, (300, D)).astype(np.float32)
    out = []
    for k in args.sizes:
        sources = {f"s{i:04d}": rows(rng, 10, VIEWS, rng.normal(0, 0.3, D).astype(np.float32)) for i in range(k)}
        t0 = time.perf_counter()
        model = JointModel(settings.dims, seed=settings.seed, min_margin=settings.min_margin,
                           discriminative=settings.discriminative, stream=settings.stream).fit(sources, bank)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.decide(test)
        score = time.perf_counter() - t0
        tensors, _ = model.to_saved()
        stored = sum(np.asarray(t).nbytes for t in tensors.values())
        scores = sum(np.asarray(t).nbytes for n, t in tensors.items() if ":" in n)
        out.append({"sources": k, "fit": "scalable" if model.scaled_ else "regression",
                    "refit_seconds": round(fit, 2), "score_300_images_seconds": round(score, 3),
                    "stored_tensor_mb": round(stored / 2 ** 20, 1),
                    "of_which_held_out_scores_mb": round(scores / 2 ** 20, 1)})
        print(out[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": __doc__, "results": out}, indent=1))


if __name__ == "__main__":
    main()
