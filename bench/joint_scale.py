"""How the registry-wide joint model's refit and scoring grow with the number of sources.

    python bench/joint_scale.py --out bench/results/joint_scale.json

Every enrollment of an lda source refits the joint model over all sources (occ.openset.refit); this
times that fit (3-fold cross-validation + the final fit, what a refit does) and the scoring of 300
images, at 1, 10 and 100 sources of 10 images x 2 training views each, beside a non-target class of 379
bank images x 2 views, on evidence vectors of the embedded backbone's size (7 blocks x 768). The rows
are synthetic (Gaussian around per-class centres): the cost depends on the shapes, not on the pixels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from occ.joint import ClassRows, JointModel

D = 7 * 768


def rows(rng, n_images, views, centre):
    x = centre + rng.normal(0, 1, (n_images * views, D)).astype(np.float32)
    return ClassRows(x / np.linalg.norm(x, axis=1, keepdims=True), np.tile(np.arange(n_images), views))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    bank = rows(rng, 379, 2, rng.normal(0, 0.3, D).astype(np.float32))
    test = rng.normal(0, 1, (300, D)).astype(np.float32)
    out = []
    for k in args.sizes:
        sources = {f"s{i:03d}": rows(rng, 10, 2, rng.normal(0, 0.3, D).astype(np.float32)) for i in range(k)}
        t0 = time.perf_counter()
        model = JointModel().fit(sources, bank)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.decide(test)
        score = time.perf_counter() - t0
        out.append({"sources": k, "refit_seconds": round(fit, 2), "score_300_images_seconds": round(score, 3)})
        print(out[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": __doc__, "results": out}, indent=1))


if __name__ == "__main__":
    main()
