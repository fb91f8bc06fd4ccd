"""Which blocks should the native-resolution crops' evidence read? (issue 24)

    python bench/crop_bands.py --out bench/results/crop_bands.json

The crops (``occ.evidence.native_crops``) are read for how the pixels were made, not for what is drawn;
the main view's band (blocks 4-10) was chosen for the main view. Lower blocks are nearer the pixels, so
the crops may carry the generator better there. The product's feature cache keeps the crops' CLS tokens
of every block, so each band is a different evidence row of the same cached trunk outputs: the
candidates differ only in the blocks :func:`occ.evidence.crop_evidence` reads for the crops.

Per draw (``generalise.content_draw``, 3 seeds, 10 shots; the sources enrolled once through
``occ.enrollment.enroll`` into a real registry), each candidate refits the joint model through
``occ.openset.refit`` with the shipped settings and the candidate's rows, and decides the draw's test
images with that model (``JointModel.decide_arrays`` on the same rows: what ``occ.attribution`` does;
the names of the band occ ships, ``occ.evidence.DEFAULT_CROP_BLOCKS``, are checked against the
Attributor's). Figures are
``generalise.metrics``'. (When the study ran, the crops read the main view's band, 4-10, the ``shipped``
row; it chose 2-8, shipped since.)

Splits: ``imagen many`` / ``imagen few`` (normalised files: selection), ``t2icmp many`` (normalised) and
``t2icmp native`` (the 1024-px files as saved): report. **Rule**, fixed before the run: adopt a band if
on imagen (mean of many and few) the protocol criterion (``generalise.criterion``) rises by >= 0.01 over
the shipped band and the verification AUC does not fall; the t2icmp splits are reported either way and
decide nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

from occ.evidence import DEFAULT_BLOCKS, DEFAULT_CROP_BLOCKS  # noqa: E402
from occ.openset import JointSettings  # noqa: E402

# "shipped": the band shipped when the study ran (the main view's); 2-8 is shipped since
BANDS = {"shipped (4-10)": DEFAULT_BLOCKS, "1-6": tuple(range(1, 7)), "2-8": tuple(range(2, 9)),
         "1-10": tuple(range(1, 11)), "6-12": tuple(range(6, 13))}


def draw_figures(d, seed, backbone, extractor) -> dict[str, dict]:
    from occ.openset import refit

    paths = [p for s in d["known"] for p in d["tests"][s]] + d["unknown_gen"] + d["real"]
    trunk = extractor.load(paths, (), crops=True).trunk
    out = {}
    with tempfile.TemporaryDirectory(prefix="occ-crop-bands-") as tmp:
        registry, _ = G.enroll_defaults(Path(tmp) / "reg", d, seed, backbone, extractor)
        for name, band in BANDS.items():
            settings = JointSettings(crop_blocks=band)
            model = refit(registry, backbone, extractor=extractor, settings=settings)
            dec = model.decide_arrays(model.settings_.rows(trunk.cls_array, trunk.low, trunk.crops))
            thr = {n: model.calibrations_[n].threshold for n in dec.names}
            rows = {str(p): SimpleNamespace(raw=dict(zip(dec.names, dec.raw[i].tolist())), raw_thresholds=thr,
                                            source=dec.names[dec.named[i]] if dec.named[i] >= 0 else None)
                    for i, p in enumerate(paths)}
            if band == DEFAULT_CROP_BLOCKS:
                G.check_against_product(registry, backbone, extractor, paths,
                                        [rows[str(p)].source for p in paths], "the shipped band's decisions")
            out[name] = G.metrics(d, rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="block bands of the crops' evidence")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    norm, backbone, extractor = G.content_study()
    native = G.native_devset(G.CONTENT["t2icmp"]["generators"] + G.CONTENT["t2icmp"]["real"])
    splits = {"imagen many": (norm, "imagen", False), "imagen few": (norm, "imagen", True),
              "t2icmp many": (norm, "t2icmp", False), "t2icmp native": (native, "t2icmp", False)}
    t0 = time.perf_counter()
    per_split: dict[str, dict[str, list]] = {}
    for split, (data, group, few) in splits.items():
        for seed in range(args.seeds):
            d = G.content_draw(data, group, seed, args.shots, few=few)
            for name, fig in draw_figures(d, seed, backbone, extractor).items():
                per_split.setdefault(split, {}).setdefault(name, []).append(fig | {"criterion": G.criterion(fig)})
            print(split, seed, {n: round(v[-1]["criterion"], 3) for n, v in per_split[split].items()}, flush=True)
    summary = {sp: {n: G.summarise(v) for n, v in c.items()} for sp, c in per_split.items()}
    design = {n: np.mean([summary[sp][n]["criterion"]["mean"] for sp in ("imagen many", "imagen few")]) for n in BANDS}
    auc = {n: np.mean([summary[sp][n]["verification_auc"]["mean"] for sp in ("imagen many", "imagen few")])
           for n in BANDS}
    base = "shipped (4-10)"
    passing = [n for n in BANDS if n != base and design[n] >= design[base] + 0.01 and auc[n] >= auc[base]]
    keys = ["verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct", "unknown_rejected",
            "real_accepted", "criterion"]
    for sp, cands in summary.items():
        print(sp)
        for n, s in cands.items():
            print(f"  {n:16s} " + " ".join(f"{k} {v}" for k, v in G.mean_std(s, keys).items()))
    print("imagen criterion:", {n: round(v, 4) for n, v in design.items()}, "passing:", passing or "none")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "bands": {n: list(b) for n, b in BANDS.items()},
                                        "imagen_criterion": design, "imagen_verification_auc": auc,
                                        "passing": passing, "per_split": summary, "rows": per_split,
                                        "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
