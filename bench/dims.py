"""How many principal directions should the joint model keep for look-alike generators?

    OMP_NUM_THREADS=1 python bench/dims.py --out bench/results/dims.json [--seeds 3] [--dims 128 256 512]

Why: the joint model (``occ.joint``) projects the evidence (CLS tokens of blocks 4-10, 5,376 values, plus
the low-level stream) on ``DEFAULT_DIMS`` = 256 principal directions before its discriminant and
regression. That number was chosen on the GAN-era folds (``generalise.py``'s grid over 64 / 128 / 256,
issue 13), where content separates the sources; directions that separate generators drawing the same
subjects may be weaker ones the projection drops. Per group and seed: the "many" draw of
``generalise.py``'s content-matched protocol (10 shots per enrolled source, test images from other
prompts), enrolled once through the product path (``occ.enrollment.enroll``) with occ's defaults, then
refitted (``occ.openset.refit``) at each ``--dims`` and decided by ``occ.attribution.Attributor``; the
baselines of ``generalise.py`` on the same draw.

**Selection rule, fixed before the run**: on ``imagen`` (selection), adopt the value with the highest
protocol criterion (``generalise.criterion``) if it beats 256's by >= 0.01 with no loss of mean
verification AUC; ``t2icmp`` is reported either way and decides nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

from occ.joint import DEFAULT_DIMS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dims", type=int, nargs="+", default=[128, DEFAULT_DIMS, 512])
    ap.add_argument("--groups", nargs="+", choices=("imagen", "t2icmp"), default=["imagen", "t2icmp"])
    args = ap.parse_args()
    if DEFAULT_DIMS not in args.dims:
        ap.error(f"--dims must include the shipped {DEFAULT_DIMS}, the rule's reference")
    data, backbone, extractor = G.content_study()
    views, _, tprs, floors = G._fixed()
    rows = []
    for group in args.groups:
        for seed in range(args.seeds):
            draw = G.content_draw(data, group, seed, 10)
            base = G.baselines(draw, extractor, seed)
            start = time.time()
            for row in G.run_candidates(draw, backbone, extractor, seed, views, args.dims, tprs, floors):
                row.update(base, group=group, seed=seed, criterion=G.criterion(row))
                rows.append(row)
                print(group, seed, row["dims"], {k: round(row[k], 3) for k in (
                    "verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct",
                    "unknown_rejected", "real_accepted", "criterion")}, flush=True)
            print(f"{group} seed {seed}: {time.time() - start:.0f} s", flush=True)
    summary = {g: {str(d): G.summarise([r for r in rows if r["group"] == g and r["dims"] == d]) for d in args.dims}
               for g in args.groups}
    out = {"protocol": __doc__, "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "rows": rows}
    if "imagen" in args.groups:
        s = summary["imagen"]
        ref = s[str(DEFAULT_DIMS)]
        best = max(args.dims, key=lambda d: s[str(d)]["criterion"]["mean"])
        passes = (best != DEFAULT_DIMS
                  and s[str(best)]["criterion"]["mean"] >= ref["criterion"]["mean"] + 0.01
                  and s[str(best)]["verification_auc"]["mean"] >= ref["verification_auc"]["mean"])
        out["selected_on_imagen"] = best if passes else DEFAULT_DIMS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))
    for g in args.groups:
        for d, s in summary[g].items():
            print(g, d, G.mean_std(s, (
                "verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct", "unknown_rejected",
                "unknown_generators_rejected", "real_accepted", "criterion", "lr_best_block_verification_auc",
                "usia_open_set_auroc", "usia_closed_set_accuracy")))
    print("selected:", out.get("selected_on_imagen"))


if __name__ == "__main__":
    main()
