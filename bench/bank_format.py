"""Does the default bank's file format move what occ decides? The shipped (lossless) bank against the
same photos as the JPEG q90 files an earlier commit shipped, on the content-matched draws.

    python bench/bank_format.py --out bench/results/bank_format.json [--seeds 3] [--old-ref 9c10ddc]
    python bench/bank_format.py --candidate DIR --candidate-label NAME --out OUT.json

The second form compares the shipped bank with a candidate bank in a folder (with its own
PROVENANCE.csv, as ``tools/build_negative_bank.py --out DIR`` writes it) instead of the old JPEG one,
the same way: bench/README.md, "Artwork in the bank".

Why: a bank that was all JPEG q90, beside generated shots that are mostly lossless, taught the joint
model that JPEG traces mean "photo" (``bench/format_cue.py``), so photos whose traces a downscale had
removed were named as generators. Per bank, group (``imagen``, ``t2icmp``) and seed: the "many" draw of
``bench/generalise.py``'s content-matched protocol (10 shots per enrolled source, test images from
other prompts), enrolled and decided through the product path (``occ.enrollment.enroll``,
``occ.openset.refit``, ``occ.attribution.Attributor``) with occ's shipped defaults; only the files the
non-target bank is read from differ (``occ.negatives.BANK_DIR``). Both banks hold the same photos: the
old one is cut to the files the shipped one keeps (by their path in their package), and the photos
left out of every draw as copies of a bank image are those of either bank, for both.
Reported per bank and group: mean and spread over seeds of the protocol's figures, photos accepted per
kind, own images accepted clean and after ``jpeg:75`` / ``resize:0.5``, and the protocol's selection
criterion (open-set AUROC plus the mean of known-correct and unknown-rejected), with the baselines of
``generalise.py`` (logistic regression on the final embedding and on the best block, USIA) fitted on the
same shots and the same bank.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402
from bank import old_bank  # noqa: E402

import occ.negatives as negatives  # noqa: E402

OLD_REF = "9c10ddc"  # the last commit whose bank was JPEG q90
GROUPS = ("imagen", "t2icmp")


def provenance_keys(folder: Path) -> set[str]:
    with (folder / "PROVENANCE.csv").open(newline="") as f:
        return {r["path_in_package"] for r in csv.DictReader(f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--old-ref", default=OLD_REF, help="git commit holding the JPEG q90 bank")
    ap.add_argument("--candidate", type=Path, help="compare the shipped bank with this folder instead")
    ap.add_argument("--candidate-label", default="candidate", help="the candidate's name in the results")
    args = ap.parse_args()
    from occ.backbones import load_backbone
    from occ.features import FeatureExtractor

    shipped = negatives.BANK_DIR
    data = G.normalise_devset()
    backbone = load_backbone(None)
    extractor = FeatureExtractor(backbone)
    rows = []
    with tempfile.TemporaryDirectory(prefix="occ-bank-format-") as tmp:
        if args.candidate:
            banks = {"shipped": shipped, args.candidate_label: args.candidate}
            whole = args.candidate
        else:
            old = old_bank(args.old_ref, Path(tmp) / "cut", provenance_keys(shipped))
            banks = {"jpeg-q90 (old)": old, "lossless (shipped)": shipped}
            whole = old_bank(args.old_ref, Path(tmp) / "whole")
        # photos that are copies of an image of either bank (the whole old one): left out for both banks
        for folder in (whole, shipped):
            G.use_bank(folder)
            G.exclude_content_bank_copies()
        for group in GROUPS:
            for seed in range(args.seeds):
                draw = G.content_draw(data, group, seed, 10)
                for label, folder in banks.items():
                    G.use_bank(folder)
                    start = time.time()
                    (row,) = G.run_candidates(draw, backbone, extractor, seed, *G._fixed(), launder=True)
                    row.update(bank=label, group=group, seed=seed, criterion=G.criterion(row),
                               bank_images=len(negatives.bank_paths()))
                    row.update(G.baselines(draw, extractor, seed))  # they read the same bank
                    rows.append(row)
                    print(group, seed, label, {k: round(row[k], 3) for k in (
                        "verification_auc", "open_set_auroc", "known_correct", "unknown_rejected",
                        "real_accepted", "criterion")}, f"{time.time() - start:.0f} s", flush=True)
        G.use_bank(shipped)
    summary = {group: {label: G.summarise([r for r in rows if r["group"] == group and r["bank"] == label])
                       for label in banks} for group in GROUPS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": __doc__, "args": {k: str(v) for k, v in vars(args).items()},
                                    "photos_left_out_as_bank_copies": sorted(G.EXCLUDED),
                                    "summary": summary, "rows": rows}, indent=1, default=float))
    for group in GROUPS:
        for label, s in summary[group].items():
            print(group, label, G.mean_std(s, (
                "verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct",
                "unknown_rejected", "real_accepted", "own_accept_clean", "own_accept_jpeg:75", "criterion",
                "lr_best_block_verification_auc", "usia_open_set_auroc")))


if __name__ == "__main__":
    main()
