"""Is the JPEG-75 loss a mismatch between training and test, or lost evidence? (issue 24; a proxy)

    OMP_NUM_THREADS=2 python bench/jpeg_matched.py --groups imagen --out bench/results/jpeg_matched_imagen.json

The sources' own images after ``jpeg:75`` are accepted 17-26 points less often than clean ones
(``format_cue.py``, ``view_recipe.py``), whatever the laundered training views. Two readings: the model
meets re-encoded evidence it was not fitted on (a mismatch, which matched training would mend), or
re-encoding at 256 px removes the evidence that names a look-alike source (which nothing fitted on the
same evidence can bring back). A proxy tells them apart: per draw of ``bench/generalise.py``'s
content-matched protocol (many and few, 3 seeds, 10 shots, normalised images), one multinomial logistic
regression over the enrolled sources and the shipped bank (class-balanced, C = 0.1, standardised, on 256
principal directions of its training rows) on the product's CLIP evidence (``occ.openset.JointSettings``
rows: blocks 4-10 and the native-resolution crops, no low-level stream), fitted on the shots and bank
**clean**, **after** ``jpeg:75`` or **both**, and tested on every test image (known, unknown generator,
photos) clean or after ``jpeg:75``. Figures: closed-set accuracy, open-set AUROC of the best source's
log-odds against the bank, known images named (log-odds > 0 and right), photos accepted (log-odds > 0).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

FIGURES = ("closed_set_accuracy", "open_set_auroc", "known_named", "photos_accepted")
TRAIN = ("clean", "jpeg", "both")


def main() -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from occ.negatives import bank_paths
    from occ.openset import JointSettings
    from occ.perturb import parse_perturb_spec

    ap = G.study_parser("the JPEG-75 loss: mismatch or lost evidence (a proxy)")
    ap.add_argument("--groups", nargs="+", default=["imagen"], choices=sorted(G.CONTENT))
    ap.add_argument("--perturb", default="jpeg:75", help="the re-encoding (one occ.perturb item)")
    args = ap.parse_args()
    (t,) = parse_perturb_spec(args.perturb)
    norm, backbone, extractor = G.content_study()
    settings = JointSettings(low_weight=None).resolved(backbone)
    t0 = time.perf_counter()
    draws = [(f"{g} {'few' if few else 'many'}", seed, G.content_draw(norm, g, seed, args.shots, few=few))
             for g in args.groups for few in (False, True) for seed in range(args.seeds)]
    paths = set(map(str, bank_paths()))
    for _, _, d in draws:
        paths |= {str(p) for s in d["known"] for p in d["shots"][s] + d["tests"][s]}
        paths |= set(map(str, d["unknown_gen"] + d["real"]))
    rows = {}
    for cond, transform in (("clean", None), ("jpeg", t)):
        f = extractor.load(sorted(paths), (), transform=transform, crops=True)
        rows[cond] = dict(zip(map(str, (im.path for im in f.images)),
                              settings.rows(f.trunk.cls_array, None, f.trunk.crops)))
    both = set(rows["clean"]) & set(rows["jpeg"])  # read under both conditions
    bank = [p for p in map(str, bank_paths()) if p in both]
    per_split: dict = {}
    for split, seed, d in draws:
        train = [(str(p), i) for i, s in enumerate(d["known"]) for p in d["shots"][s] if str(p) in both]
        train += [(p, len(d["known"])) for p in bank]
        known = [(str(p), i) for i, s in enumerate(d["known"]) for p in d["tests"][s] if str(p) in both]
        unknown = [str(p) for p in d["unknown_gen"] if str(p) in both]
        photos = [str(p) for p in d["real"] if str(p) in both]
        test = [p for p, _ in known] + unknown + photos
        y, truth = np.array([i for _, i in train]), np.array([i for _, i in known])
        for name in TRAIN:
            conds = ["clean", "jpeg"] if name == "both" else [name]
            x = np.concatenate([np.stack([rows[c][p] for p, _ in train]) for c in conds])
            pca = PCA(256, random_state=0).fit(x)
            scale = StandardScaler().fit(pca.transform(x))
            lr = LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced")
            lr.fit(scale.transform(pca.transform(x)), np.tile(y, len(conds)))
            for cond in ("clean", "jpeg"):
                logp = lr.predict_log_proba(scale.transform(pca.transform(np.stack([rows[cond][p] for p in test]))))
                best, odds = logp[:, :-1].argmax(1), logp[:, :-1].max(1) - logp[:, -1]
                k = len(known)
                fig = {"closed_set_accuracy": float(np.mean(best[:k] == truth)),
                       "open_set_auroc": float(roc_auc_score([1] * k + [0] * (len(test) - k), odds)),
                       "known_named": float(np.mean((odds[:k] > 0) & (best[:k] == truth))),
                       "photos_accepted": float(np.mean(odds[k + len(unknown):] > 0))}
                key = f"train {name} / test {cond}"
                per_split.setdefault(split, {}).setdefault(key, []).append(fig | {"seed": seed})
        print(split, seed, f"{time.perf_counter() - t0:.0f} s", flush=True)
    summary = {s: {c: {k: {"mean": float(np.mean([r[k] for r in v])), "std": float(np.std([r[k] for r in v]))}
                       for k in FIGURES} for c, v in by.items()} for s, by in per_split.items()}
    for s, by in summary.items():
        print(s)
        for c, f in by.items():
            print(f"  {c:24s}", " / ".join(f"{f[k]['mean']:.3f} +- {f[k]['std']:.3f}" for k in FIGURES))
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "summary": summary, "rows": per_split,
                                        "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
