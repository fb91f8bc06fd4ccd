"""Devset benchmark for occ's verifiers (issue: verifiers).

Protocol, on ``../shared/data/devset`` (never copied into the repo):

* every generated label with >= 40 images is a target in turn;
* its groups (prompt families) are split 50/50 per seed: K shots come from the training groups, test
  positives are all images of the other groups (split by group, never by file);
* training negatives are what a user gets by default: the bank of real photos shipped with occ
  (nothing from the devset);
* test negatives are every other label (all generators, seen by no verifier) plus all real photos;
* two views: ``native`` files, and ``normalised`` (crop the bottom 3 %, shortest side 256 bicubic,
  lossless PNG re-save; written once under bench/work/);
* in the same run, on the same features and splits, two baselines: logistic regression on (a) the
  final image embedding and (b) the CLS token of the best intermediate block, the block picked by
  cross-validation on the training set only.

Reports ROC AUC per source and, for the verifier, TPR / false-accept rate at its calibrated threshold.

    python bench/devset.py --views normalised --shots 10 --seeds 0 1 2 --out bench/results/devset.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from occ.testing.devset import DEVSET, MIN_IMAGES, manifest, split, view_paths


def logistic_scores(x_train, y_train, x_test, c=1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    model.fit(scaler.transform(x_train), y_train)
    return model.decision_function(scaler.transform(x_test))


def best_block_by_cv(cls_train, y, folds=3, seed=0):
    """Pick the intermediate block whose CLS token gives the best cross-validated AUC on training data."""
    from sklearn.model_selection import StratifiedKFold

    from occ.metrics import roc_auc

    k = max(2, min(folds, int(y.sum()), int((1 - y).sum())))
    best, best_auc = None, -1.0
    for block in range(1, cls_train.shape[1] - 1):
        x = _unit(cls_train[:, block])
        scores = np.zeros(len(y))
        for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
            scores[te] = logistic_scores(x[tr], y[tr], x[te])
        auc = roc_auc(scores[y == 1], scores[y == 0])
        if auc > best_auc:
            best, best_auc = block, auc
    return best


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="occ devset benchmark")
    ap.add_argument("--devset", type=Path, default=DEVSET)
    ap.add_argument("--views", nargs="+", default=["native", "normalised"], choices=["native", "normalised"])
    ap.add_argument("--shots", nargs="+", type=int, default=[5, 10, 25])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--targets", nargs="*", default=None)
    ap.add_argument("--method", default="prompt", choices=["prompt", "probe"])
    ap.add_argument("--loss", default=None, choices=["ce", "cvar-auc"])
    ap.add_argument("--sam", action="store_true")
    ap.add_argument("--template", default=None, help="visual prompt template (default: the verifier's)")
    ap.add_argument("--adversarial", default=None, choices=["none", "feature", "pixel"])
    ap.add_argument("--eps", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--engine", default=None, choices=["onnx-int8", "torch-fp32"])
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from occ.backbones import load_backbone
    from occ.config import VerifierConfig
    from occ.features import FeatureExtractor
    from occ.metrics import rates_at_threshold, roc_auc
    from occ.negatives import bank_paths
    from occ.verifier import Verifier

    rows = manifest(args.devset)
    counts = defaultdict(int)
    for r in rows:
        counts[r["label"]] += 1
    targets = args.targets or sorted(
        label for label, n in counts.items() if n >= MIN_IMAGES and not label.startswith("real-")
    )
    backbone = load_backbone(engine=args.engine)
    extractor = FeatureExtractor(backbone)
    changes = {k: v for k, v in {"adversarial": args.adversarial, "steps": args.steps, "loss": args.loss,
                                 "batch_size": args.batch_size, "sam": args.sam or None}.items() if v is not None}
    if args.eps is not None:
        changes["eps"] = args.eps if args.eps == "mixed" else float(args.eps)
    # The image-only benchmark runs visual prompts (or the probe): the same config `occ enroll` builds
    # from --method/--kind/--template/--loss/--sam/--adversarial/--steps.
    config = VerifierConfig.from_options(method=args.method, kind="visual" if args.method == "prompt" else None,
                                         template=args.template, **changes)
    blocks = Verifier(config).kv_blocks(backbone)
    template_name = config.template.name if config.template else None
    print(f"backbone {backbone.fingerprint}; verifier {template_name} {config.settings}", flush=True)
    bank = extractor.load(bank_paths(), blocks)
    # pixel-space ADA perturbs the negatives' pixels (the bank's, decoded once)
    bank_pixels = extractor.pixels(bank.images) if config.settings.adversarial == "pixel" else None

    results = []
    for view in args.views:
        t0 = time.perf_counter()
        features = extractor.load(view_paths(rows, args.devset, view), blocks)
        if len(features) != len(rows):
            sys.exit(f"{view}: {len(rows) - len(features)} devset images could not be read")
        print(f"[{view}] features of {len(rows)} images in {time.perf_counter() - t0:.0f} s", flush=True)
        cls_all = features.trunk.cls.numpy()
        emb_all = features.trunk.embeds.numpy()
        bank_cls, bank_emb = bank.trunk.cls.numpy(), bank.trunk.embeds.numpy()
        for target in targets:
            for shots in args.shots:
                for seed in args.seeds:
                    train, test_pos, test_neg = split(rows, target, shots, seed)
                    test = np.concatenate([test_pos, test_neg])
                    npos = len(test_pos)
                    entry = {"view": view, "target": target, "shots": shots, "seed": seed,
                             "n_train": len(train), "n_test_pos": npos, "n_test_neg": len(test_neg)}
                    verifier = Verifier(config.with_settings(seed=seed))
                    t1 = time.perf_counter()
                    verifier.fit(backbone, features.trunk.select(train), bank.trunk, neg_pixels=bank_pixels)
                    entry["fit_seconds"] = round(time.perf_counter() - t1, 2)
                    raw = np.concatenate([verifier.decision_function(features.trunk.select(test[i:i + 256]))
                                          for i in range(0, len(test), 256)])
                    thr = verifier.calibration_.threshold
                    tpr, far = rates_at_threshold(raw[:npos], raw[npos:], thr)
                    entry.update(auc=roc_auc(raw[:npos], raw[npos:]), tpr=tpr, far=far,
                                 cv_auc=verifier.calibration_.auc)
                    if not args.no_baselines:
                        y = np.r_[np.ones(len(train)), np.zeros(len(bank_cls))]
                        x = _unit(np.r_[emb_all[train], bank_emb])
                        s = logistic_scores(x, y, _unit(emb_all[test]))
                        entry["auc_lr_embedding"] = roc_auc(s[:npos], s[npos:])
                        cls_train = np.r_[cls_all[train], bank_cls]
                        block = best_block_by_cv(cls_train, y, seed=seed)
                        s = logistic_scores(_unit(cls_train[:, block]), y, _unit(cls_all[test, block]))
                        entry.update(lr_block=int(block), auc_lr_block=roc_auc(s[:npos], s[npos:]))
                    results.append(entry)
                    print(json.dumps(entry), flush=True)
    summary = summarise(results)
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "protocol": __doc__.split("Reports")[0].strip(),
            "command": " ".join(sys.argv),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "torch_threads": torch.get_num_threads()},
            "backbone": backbone.fingerprint,
            "verifier": {"kind": config.kind, "template": template_name, "settings": config.settings.to_dict()},
            "summary": summary,
            "runs": results,
        }
        args.out.write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(markdown(report))


def summarise(results: list[dict]) -> dict:
    keys = ["auc", "tpr", "far", "auc_lr_embedding", "auc_lr_block", "fit_seconds"]
    table = defaultdict(lambda: defaultdict(list))
    for r in results:
        for k in keys:
            if k in r:
                table[(r["view"], r["shots"], r["target"])][k].append(r[k])
                table[(r["view"], r["shots"], "MEAN")][k].append(r[k])
    return {" / ".join(map(str, key)): {k: round(float(np.mean(v)), 4) for k, v in vals.items()}
            for key, vals in sorted(table.items())}


def markdown(report: dict) -> str:
    lines = [f"# occ devset benchmark\n\n`{report['command']}`\n\nBackbone: `{report['backbone']}`; "
             f"verifier: `{report['verifier']}`\n",
             "| view / shots / target | AUC (occ) | TPR @thr | FAR @thr | AUC LR embedding | AUC LR best block "
             "| fit s |",
             "|---|---|---|---|---|---|---|"]
    for key, v in report["summary"].items():
        lines.append(f"| {key} | {v.get('auc', '')} | {v.get('tpr', '')} | {v.get('far', '')} | "
                     f"{v.get('auc_lr_embedding', '')} | {v.get('auc_lr_block', '')} | {v.get('fit_seconds', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
