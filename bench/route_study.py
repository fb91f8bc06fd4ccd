"""Clean images to a head fitted on clean rows, re-encoded ones to the shipped head? (issue 24)

    OMP_NUM_THREADS=1 python bench/route_study.py --out bench/results/route_study.json

``view_fit.py`` measured that the joint model fitted on each training image's own row only
(``JointSettings(fit_views=False)``) names clean images better than the shipped one, fitted on the
laundered copies too, and rejects nearly every re-encoded image; ``jpeg_matched.py`` that a fit on clean
and re-encoded rows together is as good on re-encoded images as a fit on re-encoded rows alone. So the
two heads are each best on one kind of image, and an image's kind can be read from its pixels:
``occ.lowlevel.jpeg_grid`` (JPEG's 8 x 8 grid) at or above ``JPEG_GRID_THRESHOLD``, or a shorter side
under the trunk's input (a downscaled copy), calls it re-encoded. Candidates, each deciding every test
image: ``shipped``, ``clean head`` (``fit_views`` off) and ``routed`` (the clean head for images the
detector calls clean, the shipped head for the others; each head's own thresholds). Splits: the
content-matched draws of ``bench/generalise.py``, imagen many and few (design) and t2icmp many and few
(report, deciding nothing), 3 seeds, 10 shots, sources enrolled with occ's defaults, the shipped
candidate checked against ``occ.attribution``; logistic regression on the best block and USIA measured on
every draw (``generalise.baselines``). Beside the clean figures: the sources' own images and the
photos after ``jpeg:75`` and ``resize:0.5``, and the share of images the detector routes to each head.

**Rule**, fixed before the first run: routing is worth building into the product if on the design splits
(mean of many and few) its criterion is >= 0.01 above shipped, verification AUC is not lower, photos
accepted (clean, and after each laundering) are not higher, own images accepted after ``jpeg:75`` and
after ``resize:0.5`` are each no more than 0.01 below shipped, and the detector sends >= 99 % of clean
test images to the clean head and >= 99 % of laundered ones to the shipped head.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

from occ.images import load_image  # noqa: E402
from occ.lowlevel import JPEG_GRID_THRESHOLD, jpeg_grid  # noqa: E402
from occ.openset import JointSettings, refit  # noqa: E402
from occ.perturb import parse_perturb_spec  # noqa: E402

LAUNDER = parse_perturb_spec("jpeg:75,resize:0.5")
HEADS = {"shipped": JointSettings(), "clean head": JointSettings(fit_views=False)}
FIGURES = ["verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct", "unknown_rejected",
           "real_accepted", "own_accept_clean", "own_accept_jpeg:75", "own_accept_resize:0.5",
           "real_accepted_jpeg:75", "real_accepted_resize:0.5", "routed_clean_to_clean",
           "routed_laundered_to_shipped", "criterion", "lr_best_block_verification_auc", "usia_open_set_auroc"]
_FLAGS: dict[tuple[str, str], bool] = {}  # (path, condition) -> re-encoded, over every draw


def reencoded(path, transform, side: int) -> bool:
    """What the router reads of one test image: JPEG traces, or a shorter side under ``side``."""
    key = (str(path), "clean" if transform is None else transform.label)
    if key not in _FLAGS:
        image = load_image(path).image
        image = image if transform is None else transform.apply(image)
        _FLAGS[key] = jpeg_grid(image) >= JPEG_GRID_THRESHOLD or min(image.size) < side
    return _FLAGS[key]


def figures(d, seed, backbone, extractor) -> dict[str, dict]:
    known = [p for s in d["known"] for p in d["tests"][s]]
    paths = known + d["unknown_gen"] + d["real"]
    side = backbone.preprocess.size
    conditions = {"clean": (None, paths)} | {t.label: (t, known + d["real"]) for t in LAUNDER}
    trunks = {c: extractor.load(ps, (), transform=t, crops=True).trunk for c, (t, ps) in conditions.items()}
    for c, (_, ps) in conditions.items():
        if len(trunks[c].cls_array) != len(ps):
            raise RuntimeError(f"some test images could not be read ({c})")
    flags = {c: {str(p): reencoded(p, t, side) for p in ps} for c, (t, ps) in conditions.items()}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="occ-route-") as tmp:
        registry, _ = G.enroll_defaults(Path(tmp) / "reg", d, seed, backbone, extractor)
        for name, settings in HEADS.items():
            model = refit(registry, backbone, extractor=extractor, settings=settings)
            rows[name] = {c: G.model_rows(model, trunks[c], ps) for c, (_, ps) in conditions.items()}
            if name == "shipped":  # the registry's stored model is the last one fitted: check before the next
                named = [rows[name]["clean"][str(p)].source for p in paths]
                G.check_against_product(registry, backbone, extractor, paths, named, "the shipped rows' decisions")
    rows["routed"] = {c: {p: rows["shipped" if flags[c][p] else "clean head"][c][p] for p in by}
                      for c, by in rows["shipped"].items()}
    real = set(map(str, d["real"]))
    base = G.baselines(d, extractor, seed)  # logistic regression and USIA on the same draw, beside every candidate
    out = {}
    for name, by in rows.items():
        fig = G.metrics(d, by["clean"]) | {"own_accept_clean": G.own_accept(d, by["clean"])}
        for t in LAUNDER:
            fig[f"own_accept_{t.label}"] = G.own_accept(d, by[t.label])
            fig[f"real_accepted_{t.label}"] = float(np.mean([by[t.label][p].source is not None for p in real]))
        fig["routed_clean_to_clean"] = float(np.mean([not f for f in flags["clean"].values()]))
        fig["routed_laundered_to_shipped"] = float(np.mean([f for t in LAUNDER for f in flags[t.label].values()]))
        out[name] = fig | base
    return out


def detector_table(norm: dict, per_set: int = 40) -> dict[str, dict[str, float]]:
    """Per set of the normalised devset (``norm``: :func:`generalise.normalise_devset`), ``jpeg_grid`` of
    ``per_set`` of its images (drawn with seed 0): the largest over the lossless images and the smallest over
    their copies at JPEG 95, 90, 75 and 60 (where ``JPEG_GRID_THRESHOLD`` was read: the non-content sets)."""
    qualities = parse_perturb_spec("jpeg:95,jpeg:90,jpeg:75,jpeg:60")
    rng = np.random.default_rng(0)
    out = {}
    for label in sorted(norm):
        files = sorted(p for p, _ in norm[label])
        files = [files[i] for i in rng.permutation(len(files))[:per_set]]
        images = [load_image(f).image for f in files]
        coded = [jpeg_grid(t.apply(im)) for im in images for t in qualities]
        out[label] = {"lossless_max": max(jpeg_grid(im) for im in images), "jpeg_min": min(coded)}
        print(f"{label:20s} lossless max {out[label]['lossless_max']:.3f}  JPEG 95-60 min {min(coded):.3f}", flush=True)
    return out


def main() -> None:
    ap = G.study_parser("clean images to a clean-fitted head, re-encoded ones to the shipped head")
    args = ap.parse_args()
    norm, backbone, extractor = G.content_study()
    t0 = time.perf_counter()
    detector = detector_table(norm)
    splits = {f"{g} {k}": (norm, g, k == "few") for g in ("imagen", "t2icmp") for k in ("many", "few")}
    per_split, summary = G.run_refit_study(splits, args.seeds, args.shots,
                                           lambda d, seed: figures(d, seed, backbone, extractor))
    G.print_summary(summary, FIGURES)
    keys = ("criterion", "verification_auc", "real_accepted", "real_accepted_jpeg:75", "real_accepted_resize:0.5",
            "own_accept_jpeg:75", "own_accept_resize:0.5", "routed_clean_to_clean", "routed_laundered_to_shipped")
    design = {k: G.design_mean(summary, k) for k in keys}
    b, r = ({k: v[n] for k, v in design.items()} for n in ("shipped", "routed"))
    passes = (r["criterion"] >= b["criterion"] + 0.01 and r["verification_auc"] >= b["verification_auc"]
              and all(r[k] <= b[k] for k in ("real_accepted", "real_accepted_jpeg:75", "real_accepted_resize:0.5"))
              and all(r[k] >= b[k] - 0.01 for k in ("own_accept_jpeg:75", "own_accept_resize:0.5"))
              and r["routed_clean_to_clean"] >= 0.99 and r["routed_laundered_to_shipped"] >= 0.99)
    print("design:", {k: {n: round(x, 4) for n, x in v.items()} for k, v in design.items()})
    print("routing passes:", passes)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "detector": detector, "design": design,
                                        "passes": passes,
                                        "per_split": summary, "rows": per_split,
                                        "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
