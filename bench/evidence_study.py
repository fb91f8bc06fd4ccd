"""Which CLIP evidence separates look-alike generators? Patch-token statistics, block bands, regression strength.

    OMP_NUM_THREADS=1 python bench/evidence_study.py --out bench/results/evidence_study.json

Issue 24 asks what patch-token statistics add to the CLS tokens of the middle blocks on the
content-matched draws. The embedded trunk is run here on every image the draws read (the normalised
devset images of ``generalise.CONTENT``'s groups, the shipped bank, and the laundered views of every
shot and bank image, ``occ.evidence.training_views``), keeping what the product's feature cache does not:
the mean and the standard deviation over the 196 patch tokens of blocks 4-10 (features written under
``bench/work/evidence_study``, never committed). The joint model (``occ.joint.JointModel`` with the
shipped settings: 256 directions, C = 0.1, floor 0, the low-level stream at weight 0.3) is then fitted on
rows made of one evidence candidate plus the low-level evidence, for the "many" and "few" draws of
``generalise.content_draw`` (3 seeds, 10 shots, shots x (image + 2 laundered views), the bank x the same
views as the non-target class, clean test images), with ``generalise.metrics``' definitions.

This is a feature-level study, not the product path: the candidates are not in the product, so they
cannot be enrolled. The ``shipped`` row is the product's evidence through the same code and reproduces
``bench/view_recipe.py``'s product-path figures on the same draws (see bench/README.md).

Candidates: ``shipped`` (CLS of blocks 4-10), ``+pmean`` / ``+pstd`` / ``+pmean+pstd`` (each block's
patch mean and/or std, scaled to unit length per block like the CLS tokens, concatenated), block bands
``cls[a-b]``, and the regression strength ``C=0.03`` / ``C=0.3`` on the shipped evidence. **Selection
rule** (written after the first run of the patch candidates, which printed every split; no candidate
passes it on imagen, so the t2icmp figures decided nothing): adopt a candidate if, on imagen (the mean
of its "many" and "few" splits), the protocol criterion (``generalise.criterion``) rises by >= 0.01 and
the verification AUC does not fall; then report it on t2icmp. Part ``openset`` adds, on the shipped
evidence, how the unknown images are rejected (threshold or radius) and the open-set AUROC of the
margin with a distance term ``margin - a * log(distance / radius)``.

``--protocol native`` (the evidence at native resolution): every image is also read as four 224-px
crops of its own pixels (a 2 x 2 grid, no resampling unless a side is under 224 px;
:func:`native_crops`) besides the shipped view (shortest side resized to 224, centre crop). Candidates
``crops`` (the crops' CLS evidence of blocks 4-10, averaged over the crops and rescaled to unit length)
and ``+crops`` (the shipped evidence and ``crops`` side by side). Splits: ``imagen many`` / ``imagen
few`` (the normalised files, 256 px, which are the generators' own pixels: selection) and ``t2icmp
native`` (the files as the generators saved them, 1024 px JPEG q75, photos in their own formats:
report). **Selection rule** (written before the run): adopt a crops candidate if on imagen (mean of
"many" and "few") the criterion rises by >= 0.01 and the verification AUC does not fall; t2icmp native
is reported either way and decides nothing. On the same draws, a decision candidate on the shipped
evidence: ``loso=F`` raises each source's threshold to the score that at most a share ``F`` of its
siblings' training rows reach when each sibling is scored by the model fitted without it
(:func:`sibling_thresholds`: an enrolled source meeting a look-alike that was never enrolled), for F in
0.5, 0.2, 0.1; ``drop=F`` the same without refits (:func:`dropped_sibling_thresholds`); the same rule
picks among them on imagen. ``+crops1`` / ``+crops2``: ``+crops`` from the first crop only (top left
of the grid) or the two on a diagonal, at 2 or 3 trunk passes an image instead of 5 (added after the
first run had adopted ``+crops``; rule fixed before their run: among the crop variants that pass the
rule, the one with the fewest crops whose imagen criterion is within 0.005 of the best).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

from occ.evidence import default_blocks, evidence, training_views  # noqa: E402
from occ.joint import ClassRows, JointModel, Stream  # noqa: E402
from occ.lowlevel import DIMS as LOW_DIMS  # noqa: E402
from occ.metrics import roc_auc  # noqa: E402
from occ.negatives import bank_paths  # noqa: E402
from occ.openset import JointSettings  # noqa: E402

WORK = G.ROOT / "bench" / "work" / "evidence_study"
PATCH_BLOCKS = list(range(4, 11))
PROTOCOLS = {
    "content": {"splits": {"imagen many": ("imagen", False), "imagen few": ("imagen", True),
                           "t2icmp many": ("t2icmp", False)},
                "candidates": ["shipped", "+pmean", "+pstd", "+pmean+pstd", "cls[1-11]", "cls[2-10]", "cls[4-12]",
                               "cls[0-12]", "C=0.03", "C=0.3"]},
    "native": {"splits": {"imagen many": ("imagen", False), "imagen few": ("imagen", True),
                          "t2icmp native": ("t2icmp", False)},
               "candidates": ["shipped", "crops", "+crops", "+crops1", "+crops2", "loso=0.5", "loso=0.2", "loso=0.1",
                              "drop=0.5", "drop=0.2", "drop=0.1"]},
}
SPLITS = PROTOCOLS["content"]["splits"]  # set by main, with WITH_CROPS and WORK
WITH_CROPS = False
CROP = 224  # the trunk's input side
VIEWS = training_views(0, 2)  # the shots' and the bank's views (enrollment and the bank use seed 0)


def _key(path, view) -> str:
    return hashlib.sha1(f"{path}|{view}".encode()).hexdigest()[:20]


def native_crops(image, side: int = CROP, grid: int = 2) -> list:
    """``grid`` x ``grid`` crops of ``side`` px of the image's own pixels, centred on a regular grid
    (clamped inside the image); an image with a side under ``side`` px is first resized up (bicubic)."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if min(w, h) < side:
        s = side / min(w, h)
        image = image.resize((max(side, round(w * s)), max(side, round(h * s))), Image.Resampling.BICUBIC)
        w, h = image.size
    out = []
    for i in range(grid):
        for j in range(grid):
            x = min(max(0, round((j + 0.5) * w / grid - side / 2)), w - side)
            y = min(max(0, round((i + 0.5) * h / grid - side / 2)), h - side)
            out.append(image.crop((x, y, x + side, y + side)))
    return out


def _draws(data):
    return {split: [G.content_draw(data, grp, seed, 10, few=few) for seed in range(3)]
            for split, (grp, few) in SPLITS.items()}


def extract(data, draws, reverse: bool = False) -> int:
    """Run the trunk on every (image, view) the draws read that has no stored features yet."""
    from occ.backbones import load_backbone
    from occ.backbones.embedded.int8 import HIDDEN_OUTPUTS, open_session
    from occ.images import load_image
    from occ.lowlevel import lowlevel_features

    items = [(p, None) for grp in G.CONTENT.values() for lab in grp["generators"] + grp["real"] for p, _ in data[lab]]
    items += [(p, v) for p in bank_paths() for v in VIEWS]
    shots = sorted({p for ds in draws.values() for d in ds for s in d["known"] for p in d["shots"][s]})
    items += [(p, v) for p in shots for v in VIEWS[1:]]
    todo = [(p, v) for p, v in items if not (WORK / f"{_key(p, v and v.index)}.npz").exists()]
    if not todo:
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone()
    session = open_session(backbone._folder.parent, "cpu")
    if reverse:  # a second process working from the other end (see --extract-only)
        todo = todo[::-1]
    for n, (p, v) in enumerate(todo):
        dest = WORK / f"{_key(p, v and v.index)}.npz"
        if dest.exists():  # written by another process meanwhile
            continue
        image = load_image(p).image
        if v is not None:
            image = v.apply(image)
        crops = native_crops(image) if WITH_CROPS else []
        hidden = session.run(HIDDEN_OUTPUTS, {"pixel_values": backbone.preprocess([image, *crops]).numpy()})
        patches = np.stack([hidden[b][0, 1:] for b in PATCH_BLOCKS])
        extra = {"crops": np.stack([hidden[b][1:, 0] for b in PATCH_BLOCKS], 1).astype(np.float16)} if crops else {}
        tmp = dest.with_name(f"{dest.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, cls=np.stack([h[0, 0] for h in hidden]).astype(np.float16),
                 low=lowlevel_features(image).astype(np.float32),
                 pmean=patches.mean(1).astype(np.float16), pstd=patches.std(1).astype(np.float16), **extra)
        os.replace(tmp, dest)  # readers never see a partial entry
        if n % 500 == 0:
            print(f"extract {n}/{len(todo)}", flush=True)
    return len(todo)


_LOADED: dict[str, dict] = {}


def _load(path, view) -> dict:
    k = _key(path, view)
    if k not in _LOADED:
        with np.load(WORK / f"{k}.npz") as z:
            _LOADED[k] = {n: z[n].astype(np.float32) for n in z.files}
    return _LOADED[k]


def rows(feats: list[dict], candidate: str) -> np.ndarray:
    """Evidence rows of ``candidate``, then the low-level evidence (the joint model's second stream)."""
    blocks = default_blocks(12)
    if candidate.startswith("cls["):
        a, b = candidate[4:-1].split("-")
        blocks = tuple(range(int(a), int(b) + 1))
    parts = [evidence(np.stack([f["cls"] for f in feats]), blocks)]
    for stat in ("pmean", "pstd"):
        if f"+{stat}" in candidate:
            parts.append(evidence(np.stack([f[stat] for f in feats]), tuple(range(len(PATCH_BLOCKS)))))
    if "crops" in candidate:
        crops = np.stack([f["crops"] for f in feats])  # (N, crops, blocks 4-10, D)
        if candidate.endswith(("crops1", "crops2")):  # fewer crops: the first, or the two on a diagonal
            crops = crops[:, [0] if candidate.endswith("1") else [0, 3]]
        n, k = crops.shape[:2]
        mean = evidence(crops.reshape(n * k, *crops.shape[2:]), tuple(range(len(PATCH_BLOCKS)))).reshape(n, k, -1)
        mean = mean.mean(1)
        mean /= np.linalg.norm(mean, axis=1, keepdims=True) + 1e-8
        parts = [mean] if candidate.startswith("crops") else parts + [mean]
    x = np.concatenate(parts, 1) / np.sqrt(len(parts))
    return np.concatenate([x, np.stack([f["low"] for f in feats])], 1).astype(np.float32)


def _class_rows(paths, candidate) -> ClassRows:
    feats = [_load(p, v and v.index) for v in VIEWS for p in paths]
    return ClassRows(rows(feats, candidate), np.tile(np.arange(len(paths)), len(VIEWS)))


def _model(c):
    settings = JointSettings()
    return JointModel(settings.dims, seed=settings.seed, min_margin=settings.min_margin, discriminative=c,
                      stream=Stream(LOW_DIMS, 64, settings.low_weight))


def sibling_thresholds(classes: dict, bank: ClassRows, c, far: float) -> dict[str, float]:
    """Per source, the raw score that at most ``far`` of its siblings' training rows reach, each sibling
    scored by the model fitted without it (every other source and the bank): how an enrolled source
    scores a look-alike generator that was never enrolled."""
    scores: dict[str, list] = {s: [] for s in classes}
    for left in classes:
        rest = {s: r for s, r in classes.items() if s != left}
        if not rest:
            continue
        model = _model(c).fit(rest, bank)
        raw = model.decide_arrays(classes[left].features).raw
        for j, s in enumerate(model.names_):
            scores[s].append(raw[:, j])
    return {s: float(np.quantile(np.concatenate(v), 1 - far, method="higher")) for s, v in scores.items() if v}


def dropped_sibling_thresholds(model: JointModel, classes: dict, far: float) -> dict[str, float]:
    """:func:`sibling_thresholds` without refits: each sibling's rows scored by the fitted model with the
    sibling's own column left out of the competitors (its training rows shaped the others' log-odds)."""
    from occ.joint import above_competitors

    names = model.names_
    scores: dict[str, list] = {s: [] for s in names}
    for j, left in enumerate(names):
        keep = [k for k in range(len(names)) if k != j]
        odds = model.log_odds_(model.geometry_.project(classes[left].features))[:, keep]
        raw = above_competitors(odds)
        for col, k in enumerate(keep):
            scores[names[k]].append(raw[:, col])
    return {s: float(np.quantile(np.concatenate(v), 1 - far, method="higher")) for s, v in scores.items() if v}


def fit_and_decide(d, candidate):
    """(model, decisions, test rows, number of known and unknown-generator rows) of one draw."""
    settings = JointSettings()
    c = float(candidate[2:]) if candidate.startswith("C=") else settings.discriminative
    known = sorted(d["known"])
    model = _model(c)
    classes = {s: _class_rows(d["shots"][s], candidate) for s in known}
    bank = _class_rows(list(bank_paths()), candidate)
    model.fit(classes, bank)
    if candidate.startswith(("loso=", "drop=")):  # thresholds no lower than the siblings' quantile
        far = float(candidate[5:])
        sib = (sibling_thresholds(classes, bank, c, far) if candidate.startswith("loso=")
               else dropped_sibling_thresholds(model, classes, far))
        for s, t in sib.items():
            cal = model.calibrations_[s]
            model.calibrations_[s] = dataclasses.replace(cal, threshold=max(cal.threshold, t))
    kpaths = [(p, s) for s in known for p in d["tests"][s]]
    paths = [p for p, _ in kpaths] + list(d["unknown_gen"]) + list(d["real"])
    x = rows([_load(p, None) for p in paths], candidate)
    truth = np.array([model.names_.index(s) for _, s in kpaths])
    return model, model.decide_arrays(x), x, truth, len(d["unknown_gen"])


def figures(d, candidate) -> dict:
    model, dec, _, truth, nu = fit_and_decide(d, candidate)
    nk, raw = len(truth), dec.raw
    thr = np.array([model.calibrations_[n].threshold for n in dec.names])
    ver = [roc_auc(raw[:nk][truth == j, j], np.concatenate([raw[:nk][truth != j, j], raw[nk:, j]]))
           for j in range(len(dec.names))]
    conf = (raw - thr).max(1)
    named = dec.named
    return {"verification_auc": float(np.mean(ver)), "open_set_auroc": roc_auc(conf[:nk], conf[nk:]),
            "closed_set_accuracy": float(np.mean(raw[:nk].argmax(1) == truth)),
            "known_correct": float(np.mean(named[:nk] == truth)),
            "unknown_rejected": float(np.mean(named[nk:] == -1)),
            "unknown_generators_rejected": float(np.mean(named[nk:nk + nu] == -1)),
            "real_accepted": float(np.mean(named[nk + nu:] != -1))}


def openset(d) -> dict:
    model, dec, x, truth, nu = fit_and_decide(d, "shipped")
    nk, raw = len(truth), dec.raw
    thr = np.array([model.calibrations_[n].threshold for n in dec.names])
    radius = np.array([model.radii_[n] for n in dec.names])
    rows_ = np.arange(len(raw))
    best = raw.argmax(1)
    rel = model.geometry_.distances(x)[rows_, best] / radius[best]
    below = raw[rows_, best] < thr[best]
    conf = (raw - thr).max(1)
    out = {"auroc_margin": roc_auc(conf[:nk], conf[nk:]), "auroc_distance": roc_auc(-rel[:nk], -rel[nk:]),
           "auroc_margin_unknown_generator_only": roc_auc(conf[:nk], conf[nk:nk + nu]),
           "unknown_generator_below_threshold": float(below[nk:nk + nu].mean()),
           "unknown_generator_outside_radius": float((rel > 1)[nk:nk + nu].mean()),
           "known_below_threshold": float(below[:nk].mean()), "known_outside_radius": float((rel > 1)[:nk].mean())}
    for a in (0.5, 1.0, 2.0, 4.0):
        c2 = conf - a * np.log(np.maximum(rel, 1e-12))
        out[f"auroc_margin_minus_{a:g}_log_distance"] = roc_auc(c2[:nk], c2[nk:])
    return out


def _mean_std(res: list[dict]) -> dict:
    return {k: {"mean": float(np.mean([r[k] for r in res])), "std": float(np.std([r[k] for r in res]))}
            for k in res[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="content")
    ap.add_argument("--candidates", nargs="+", help="default: the protocol's")
    ap.add_argument("--extract-only", choices=("forward", "reverse"),
                    help="only run the trunk over what is not stored yet (a second process can take the other end)")
    args = ap.parse_args()
    global SPLITS, WITH_CROPS, WORK
    SPLITS, WITH_CROPS = PROTOCOLS[args.protocol]["splits"], args.protocol == "native"
    if WITH_CROPS:  # entries with the crops' tokens, apart from the content protocol's
        WORK = WORK / "native"
    data = G.normalise_devset()
    if WITH_CROPS:  # t2icmp as the generators saved it; imagen's normalised files are its own pixels
        data |= G.native_devset(G.CONTENT["t2icmp"]["generators"] + G.CONTENT["t2icmp"]["real"])
    G.EXCLUDED |= G.bank_copies([lab for grp in G.CONTENT.values() for lab in grp["real"]])
    draws = _draws(data)
    extracted = extract(data, draws, reverse=args.extract_only == "reverse")
    if args.extract_only:
        return
    out = {"protocol": __doc__, "protocol_name": args.protocol, "extracted_now": extracted, "candidates": {},
           "openset": {}}
    for split, ds in draws.items():
        for cand in args.candidates or PROTOCOLS[args.protocol]["candidates"]:
            res = [figures(d, cand) for d in ds]
            out["candidates"][f"{split} | {cand}"] = {"by_seed": res, **_mean_std(res)}
            m = {k: v["mean"] for k, v in _mean_std(res).items()}
            print(f"{split:12s} {cand:12s} criterion {G.criterion(m):.3f} "
                  + " ".join(f"{k}={v:.3f}" for k, v in m.items()), flush=True)
        res = [openset(d) for d in ds]
        out["openset"][split] = {"by_seed": res, **_mean_std(res)}
        print(split, {k: round(v["mean"], 3) for k, v in _mean_std(res).items()}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
