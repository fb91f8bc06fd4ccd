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

import json
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

from occ.evidence import DEFAULT_BLOCKS, DEFAULT_CROP_BLOCKS  # noqa: E402
from occ.openset import JointSettings  # noqa: E402

# "shipped": the band shipped when the study ran (the main view's); 2-8 is shipped since
BANDS = {"shipped (4-10)": DEFAULT_BLOCKS, "1-6": tuple(range(1, 7)), "2-8": tuple(range(2, 9)),
         "1-10": tuple(range(1, 11)), "6-12": tuple(range(6, 13))}


def main() -> None:
    ap = G.study_parser("block bands of the crops' evidence")
    args = ap.parse_args()
    norm, backbone, extractor = G.content_study()
    settings = {n: JointSettings(crop_blocks=b) for n, b in BANDS.items()}
    product = next(n for n, b in BANDS.items() if b == DEFAULT_CROP_BLOCKS)
    t0 = time.perf_counter()
    figures = partial(G.refit_figures, backbone=backbone, extractor=extractor, candidates=settings, product=product)
    per_split, summary = G.run_refit_study(G.refit_splits(norm), args.seeds, args.shots, figures)
    design, auc = G.design_mean(summary, "criterion"), G.design_mean(summary, "verification_auc")
    base = "shipped (4-10)"
    passing = [n for n in BANDS if n != base and design[n] >= design[base] + 0.01 and auc[n] >= auc[base]]
    G.print_summary(summary, ["verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct",
                              "unknown_rejected", "real_accepted", "criterion"])
    print("imagen criterion:", {n: round(v, 4) for n, v in design.items()}, "passing:", passing or "none")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "bands": {n: list(b) for n, b in BANDS.items()},
                                        "imagen_criterion": design, "imagen_verification_auc": auc,
                                        "passing": passing, "per_split": summary, "rows": per_split,
                                        "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
