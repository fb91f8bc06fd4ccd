"""Noise-residual descriptors on their own, on the content-matched draws (issue 24; numpy only, no CLIP).

    python bench/lowlevel_descriptors.py --out bench/results/lowlevel_descriptors.json

What could the low-level stream carry if it read more than the Laplacian's co-occurrences? Each
candidate is the shipped ``occ.lowlevel`` vector (``residual-v1``: co-occurrences of the 4-neighbour
Laplacian, radial spectrum) joined by co-occurrences of another residual of the same centre window (the
rich-model residuals of steganalysis): first differences (``d1``), second differences (``d2``), third
differences (``d3``) along each run's direction, or the 3x3 "square" residual (``sq``), each quantised
at step ``q`` and clipped to -2..2 (``T3``: -3..3; ``T1``: -1..1). Per draw of ``bench/generalise.py``'s
content-matched protocol (``many`` and ``few``, 3 seeds, 10 shots, normalised images), one multinomial
logistic regression over the enrolled sources and the shipped bank (class-balanced, C = 0.1, features
standardised), as the joint model's regression is but on this evidence alone. Figures: closed-set
accuracy among the enrolled sources, and the open-set AUROC of the largest source probability (known
test images against the unknown generator's and the photos).

The design group is imagen (``--groups imagen``, every candidate); the candidate with the best mean of
closed-set accuracy and AUROC over its many and few splits is then read on t2icmp (``--groups t2icmp
--candidates v1 CHOSEN``), and measured inside the joint model by ``lowlevel_study.py`` with
``patches/residual-v3.diff``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

from occ import lowlevel as L  # noqa: E402

CANDIDATES = ["v1", "v1+d1 q1", "v1+d1 q2", "v1+d1 q4", "v1+d2 q1", "v1+d2 q2", "v1+d2 q4", "v1+sq q1", "v1+sq q2",
              "v1+sq q4", "v1+d3 q2", "v1+d3 q4", "v1+d1 q2 T3", "v1+d1 q1 T1", "v1+d1 q2+d2 q2", "v1+d1 q1+d2 q2",
              "d1 q2+d2 q2+sq q2"]


def describe(path) -> dict[str, np.ndarray] | None:
    """Every descriptor of one image (None: too small for the shipped stream)."""
    from occ.images import load_image

    image = load_image(path).image
    if min(image.size) < L.MIN_SIDE:
        return None
    g = L.centre_window(image).astype(np.float64)
    d1 = (g[:, 1:] - g[:, :-1], g[1:] - g[:-1])
    d2 = (g[:, :-2] - 2 * g[:, 1:-1] + g[:, 2:], g[:-2] - 2 * g[1:-1] + g[2:])
    d3 = (-g[:, :-3] + 3 * g[:, 1:-2] - 3 * g[:, 2:-1] + g[:, 3:], -g[:-3] + 3 * g[1:-2] - 3 * g[2:-1] + g[3:])
    sq = (-g[:-2, :-2] + 2 * g[:-2, 1:-1] - g[:-2, 2:] + 2 * g[1:-1, :-2] - 4 * g[1:-1, 1:-1] + 2 * g[1:-1, 2:]
          - g[2:, :-2] + 2 * g[2:, 1:-1] - g[2:, 2:]) / 4
    out = {"v1": L.lowlevel_features(image).astype(np.float64)}
    for q in (1.0, 2.0, 4.0):
        for name, (h, v) in (("d1", d1), ("d2", d2), ("d3", d3), ("sq", (sq, sq))):
            out[f"{name} q{q:g}"] = L.cooccurrences(h, v, step=q, truncate=2)
    out["d1 q2 T3"] = L.cooccurrences(*d1, step=2.0, truncate=3)
    out["d1 q1 T1"] = L.cooccurrences(*d1, step=1.0, truncate=1)
    return out


def figures(d, feats, bank, parts) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    def vec(ps):
        return np.stack([np.concatenate([feats[str(p)][k] for k in parts]) for p in ps if feats[str(p)] is not None])

    x = np.concatenate([vec(d["shots"][s]) for s in d["known"]] + [vec(bank)])
    y = np.concatenate([np.full(len(vec(d["shots"][s])), i) for i, s in enumerate(d["known"])] +
                       [np.full(len(vec(bank)), len(d["known"]))])
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced").fit(scaler.transform(x), y)

    def best(ps):
        return lr.predict_proba(scaler.transform(vec(ps)))[:, :-1]

    known = [best(d["tests"][s]) for s in d["known"]]
    closed = float(np.mean(np.concatenate([k.argmax(1) == i for i, k in enumerate(known)])))
    pos, neg = np.concatenate([k.max(1) for k in known]), best(d["unknown_gen"] + d["real"]).max(1)
    auroc = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    return {"closed_set_accuracy": closed, "open_set_auroc": float(auroc)}


def main() -> None:
    ap = argparse.ArgumentParser(description="noise-residual descriptors on their own")
    ap.add_argument("--groups", nargs="+", choices=("imagen", "t2icmp"), default=["imagen"])
    ap.add_argument("--candidates", nargs="+", default=CANDIDATES)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from occ.negatives import bank_paths

    norm = G.normalise_devset()
    G.exclude_content_bank_copies()
    t0 = time.perf_counter()
    draws = {(f"{g} {'few' if few else 'many'}", seed): G.content_draw(norm, g, seed, 10, few=few)
             for g in args.groups for few in (False, True) for seed in range(args.seeds)}
    paths = {str(p) for p in bank_paths()}
    for d in draws.values():
        paths |= {str(p) for s in d["known"] for p in d["shots"][s] + d["tests"][s]}
        paths |= {str(p) for p in d["unknown_gen"] + d["real"]}
    paths = sorted(paths)
    with ProcessPoolExecutor(2) as pool:
        feats = dict(zip(paths, pool.map(describe, paths, chunksize=16)))
    bank = [p for p in bank_paths() if feats[str(p)] is not None]
    rows: dict[str, dict[str, list]] = {}
    for name in args.candidates:
        for (split, _seed), d in draws.items():
            rows.setdefault(name, {}).setdefault(split, []).append(figures(d, feats, bank, name.split("+")))
        print(f"{name:20s}", " | ".join(f"{sp}: " + " / ".join(f"{np.mean([r[k] for r in v]):.3f}" for k in
                                                               ("closed_set_accuracy", "open_set_auroc"))
                                        for sp, v in rows[name].items()), flush=True)
    summary = {n: {sp: G.summarise(v) for sp, v in c.items()} for n, c in rows.items()}
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "images": len(paths), "summary": summary,
                                        "rows": rows, "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
