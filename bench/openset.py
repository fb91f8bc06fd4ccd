"""Open-set attribution on the devset, USIA's protocol in occ's terms (issue: the seeds' other methods).

USIA (Cioni et al.) evaluates open-set attribution with splits of known and unknown generators. Here,
per split (seeded): 3 of the devset's 6 large generator labels are *known* and enrolled (K shots each
from their training groups, non-target images = the shipped bank of real photos + the other known
sources' shots, exactly what `occ enroll` uses); everything else is *unknown*: the other 3 large
labels, every smaller generator label and all real photos. Test images: the known labels' held-out
groups + all unknown images. The attributor (`occ attribute`'s decision rule: best accepted source by
calibrated score, else unknown) reports closed-set accuracy (argmax over known sources, on known
images), accuracy of the full decision, the unknown rejection rate, AUROC known-vs-unknown and OSCR
(both on the maximum calibrated score), for each method:

* ``prompt``   visual prompt verifier (default), cross-entropy
* ``cvar-auc`` the same, with Santosh et al.'s CVaR + AUC loss
* ``sam``      the same, with sharpness-aware minimisation
* ``probe``    USIA-style logistic probe on an intermediate block's CLS token

    python bench/openset.py --views normalised native --shots 5 10 25 --splits 0 1 2 --out bench/results/openset.json

The same evaluation on your own folders: `occ eval ROOT` (see examples/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from occ.testing import devset as D

METHODS = {
    "prompt": {"kind": "visual", "settings": {}},
    "cvar-auc": {"kind": "visual", "settings": {"loss": "cvar-auc"}},
    "sam": {"kind": "visual", "settings": {"sam": True}},
    "probe": {"kind": "probe", "settings": {}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description="occ open-set benchmark on the devset")
    ap.add_argument("--devset", type=Path, default=D.DEVSET)
    ap.add_argument("--views", nargs="+", default=["normalised"], choices=["native", "normalised"])
    ap.add_argument("--shots", nargs="+", type=int, default=[10])
    ap.add_argument("--splits", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from occ.attribution import Attributor
    from occ.backbones import load_backbone
    from occ.backbones.base import Trunk
    from occ.config import VerifierConfig
    from occ.features import FeatureExtractor
    from occ.metrics import closed_set_accuracy, open_set_summary
    from occ.negatives import bank_paths
    from occ.verifier import Verifier

    rows = D.manifest(args.devset)
    labels = np.array([r["label"] for r in rows])
    counts = defaultdict(int)
    for r in rows:
        counts[r["label"]] += 1
    large = sorted(k for k, n in counts.items() if n >= D.MIN_IMAGES and not k.startswith("real-"))
    backbone = load_backbone()
    extractor = FeatureExtractor(backbone)
    blocks = Verifier().kv_blocks(backbone)
    bank = extractor.load(bank_paths(), blocks).trunk

    results = []
    for view in args.views:
        features = extractor.load(D.view_paths(rows, args.devset, view), blocks)
        trunk = features.trunk
        for shots_k in args.shots:
            for split in args.splits:
                rng = np.random.default_rng(1000 + split)
                known = sorted(rng.choice(large, size=3, replace=False).tolist())
                shots, test_idx = {}, []
                for label in known:
                    train, test_pos, _ = D.split(rows, label, shots_k, split)
                    shots[label] = train
                    test_idx.append(test_pos)
                unknown_idx = np.where(~np.isin(labels, known))[0]
                test = np.concatenate(test_idx + [unknown_idx])
                truth = [labels[i] if labels[i] in known else "unknown" for i in test]
                for method in args.methods:
                    spec = METHODS[method]
                    config = VerifierConfig(kind=spec["kind"]).with_settings(**spec["settings"], seed=split)
                    if args.steps and config.head_class.trains:
                        config = config.with_settings(steps=args.steps)
                    verifiers, fit_seconds = {}, []
                    for label in known:
                        others = [trunk.select(shots[o]) for o in known if o != label]
                        negatives = Trunk.concat([bank] + others)
                        verifier = Verifier(config)
                        start = time.perf_counter()
                        verifier.fit(backbone, trunk.select(shots[label]), negatives)
                        fit_seconds.append(time.perf_counter() - start)
                        verifiers[label] = verifier
                    attributor = Attributor(verifiers, backbone, extractor)
                    decisions = []
                    for i in range(0, len(test), 256):
                        chunk = test[i:i + 256]
                        decisions += attributor.decide(trunk.select(chunk), [rows[j]["path"] for j in chunk])
                    predicted = [d.source or "unknown" for d in decisions]
                    best = [max(d.scores.values()) for d in decisions]
                    argmax = [max(d.scores, key=d.scores.get) for d in decisions]
                    summary = open_set_summary(truth, predicted, best, known)
                    is_known = [t != "unknown" for t in truth]
                    summary["closed_set_accuracy_argmax"] = closed_set_accuracy(
                        [t for t, k in zip(truth, is_known) if k], [a for a, k in zip(argmax, is_known) if k])
                    entry = {"view": view, "split": split, "method": method, "known": known, "shots": shots_k,
                             "enroll_seconds_mean": round(float(np.mean(fit_seconds)), 2),
                             **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}}
                    results.append(entry)
                    print(json.dumps(entry), flush=True)
    table = defaultdict(lambda: defaultdict(list))
    keys = ["closed_set_accuracy_argmax", "closed_set_accuracy", "unknown_rejection_rate", "auroc", "oscr",
            "enroll_seconds_mean"]
    for r in results:
        for k in keys:
            table[f"{r['view']} / {r['shots']} / {r['method']}"][k].append(r[k])
    summary = {name: {k: round(float(np.mean(v)), 4) for k, v in vals.items()} for name, vals in table.items()}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"protocol": __doc__.split("    python")[0].strip(),
                                        "command": " ".join(sys.argv), "backbone": backbone.fingerprint,
                                        "summary": summary, "runs": results}, indent=1))
        lines = ["| view / shots / method | closed-set acc. (argmax) | decision acc. on known | unknown rejected | "
                 "AUROC known-vs-unknown | OSCR | fit s / source |", "|---|---|---|---|---|---|---|"]
        for name, v in summary.items():
            lines.append(f"| {name} | {v['closed_set_accuracy_argmax']} | {v['closed_set_accuracy']} | "
                         f"{v['unknown_rejection_rate']} | {v['auroc']} | {v['oscr']} | {v['enroll_seconds_mean']} |")
        args.out.with_suffix(".md").write_text(f"# occ open-set benchmark\n\n`{' '.join(sys.argv)}`\n\n"
                                               + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
