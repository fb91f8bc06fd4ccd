"""Generalisation protocol: design choices selected on validation generators, reported on others.

    python bench/generalise.py --out bench/results/generalise.json [--seeds 3] [--shots 10] [--known 4]

What it does (every figure through the code path the CLI uses: ``occ.enrollment.enroll`` into a real
registry, ``occ.openset.refit``, ``occ.attribution.Attributor``):

* every devset image is normalised (bottom 3 % cropped, shortest side 256, lossless PNG, written under
  ``bench/work/norm``) so that size, format and watermark strips tell nothing;
* the generators with enough images are split into two **folds** of disjoint generators, each with
  its own generators that are only ever unknowns and its own real photos (photos unlike the shipped
  bank). Roles rotate: choices are selected on fold A and reported on fold B, then the reverse. No
  figure reported for a fold played any part in choosing what is reported there;
* a draw (per fold and seed): ``--known`` sources of the fold are enrolled with ``--shots`` images
  each, drawn by prompt group (test images come from other prompts); the fold's other generators
  (including ones sharing prompts with the enrolled ones), its unknown-only generators and its real
  photos are the unknowns. Sources are enrolled in a random order;
* candidates: the joint model's principal directions (64 / 128 / 256), the TPR rule (0.90 / 0.95), the
  threshold floor (none / margin >= 0, ``occ.joint`` point 5) and the number of laundered training views
  per image (1 / 2 / 3, for the shots and the bank alike). Selection maximises open-set AUROC plus the
  mean of known-correct and unknown-rejected rates on the validation fold;
* reported on the other fold, beside baselines measured on the same draws and features: logistic
  regression (class-balanced, C=1, standardised) on the final embedding and on the best block's CLS
  token (picked by cross-validation on the training set, :func:`occ.probe.pick_block`), USIA's
  multi-class logistic regression over the known sources with max-softmax rejection (threshold at
  95 % of cross-validated known training images), and the previous default (visual prompts,
  ``--method prompt``) through the same registry path;
* order: the reported configuration is enrolled a second time in another random order; decisions and
  scores are compared;
* laundering: known test images re-encoded as JPEG 75 and resized by 0.5 (``occ eval --perturb``'s
  perturbations), accept rate on a source's own images beside clean.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEVSET = ROOT.parent / "shared" / "data" / "devset"
NORM = ROOT / "bench" / "work" / "norm"

FOLDS = {
    "A": {"enroll": ["imagen-ldif", "imagen-dmin", "cnndet-biggan", "cnndet-crn", "cnndet-cyclegan",
                     "cnndet-deepfake", "cnndet-gaugan", "sdcheat-sd15"],
          "unknown": ["dif-dalle2", "dif-glide", "dif-sd14"], "real": ["real-imagenet"]},
    "B": {"enroll": ["imagen-glid3", "imagen-disco", "cnndet-imle", "cnndet-san", "cnndet-seeingdark",
                     "cnndet-stargan", "cnndet-stylegan", "cpondoc-dalle2"],
          "unknown": ["dif-dallemini", "dif-mj", "dif-sd21"], "real": ["real-dif", "real-cnndet"]},
}
VIEWS = (1, 2, 3)  # laundered views per training image (the shots and the bank alike)
DIMS = (64, 128, 256)
TPRS = (0.90, 0.95)
MIN_MARGINS = (None, 0.0)  # the joint model's threshold floor (occ.joint, point 5): none, or margin >= 0


def normalise_devset() -> dict[str, list[tuple[Path, str]]]:
    """label -> [(normalised png, group)]."""
    from PIL import Image

    from occ.images import load_image

    out: dict[str, list[tuple[Path, str]]] = {}
    for row in csv.DictReader(open(DEVSET / "manifest.csv")):
        dest = NORM / row["label"] / (Path(row["path"]).stem + ".png")
        if not dest.exists():
            im = load_image(DEVSET / row["path"]).image
            w, h = im.size
            im = im.crop((0, 0, w, h - int(round(h * 0.03))))
            w, h = im.size
            s = 256 / min(w, h)
            dest.parent.mkdir(parents=True, exist_ok=True)
            im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.Resampling.BICUBIC).save(dest)
        if all(dest != p for p, _ in out.get(row["label"], [])):  # two files of one name, other extensions
            out.setdefault(row["label"], []).append((dest, row["group"]))
    return out


def split(items, rng, k):
    """``k`` shots drawn by prompt group; the test images come from the other groups (a label with one
    group, the GAN sets, is split by file)."""
    groups = sorted({g for _, g in items})
    if len(groups) == 1:
        order = rng.permutation(len(items))
        return [items[i][0] for i in order[:k]], [items[i][0] for i in order[k:]]
    shots, used = [], set()
    for g in rng.permutation(groups):
        if len(shots) >= k:
            break
        used.add(g)
        shots += [p for p, gg in items if gg == g][: k - len(shots)]
    return shots, [p for p, g in items if g not in used]


def draw(data, fold, seed, known_n, shots_n):
    rng = np.random.default_rng(seed)
    spec = FOLDS[fold]
    known = sorted(rng.choice(spec["enroll"], known_n, replace=False).tolist())
    shots, tests = {}, {}
    for s in known:
        shots[s], tests[s] = split(data[s], rng, shots_n)
    unknown_gen = [p for lab in spec["enroll"] + spec["unknown"] if lab not in known for p, _ in data[lab]]
    real = [p for lab in spec["real"] for p, _ in data[lab]]
    order = rng.permutation(known).tolist()
    return {"known": known, "order": order, "shots": shots, "tests": tests, "unknown_gen": unknown_gen, "real": real}


# -- the product path -------------------------------------------------------------------------------


def enroll_all(registry_dir, d, config_for, backbone, extractor, order=None):
    from occ.enrollment import enroll
    from occ.registry import Registry
    from occ.verifier import Verifier

    registry = Registry(registry_dir)
    t0 = time.perf_counter()
    for name in order or d["order"]:
        enroll(registry, name, d["shots"][name], backbone=backbone, verifier=Verifier(config_for(name)),
               extractor=extractor)
    return registry, time.perf_counter() - t0


def decisions(registry, backbone, extractor, paths, transform=None):
    from occ.attribution import Attributor

    att = Attributor.from_registry(registry, backbone, extractor=extractor)
    out = []
    for batch in extractor.stream(paths, att.blocks, transform=transform):
        out += att.decide(batch.trunk, [im.path for im in batch.images])
    return out


def metrics(d, dec):
    """Figures of one draw from the attributor's decisions on its test images (dict path -> Decision)."""
    from occ.metrics import roc_auc

    known = d["known"]
    kpaths = [(p, s) for s in known for p in d["tests"][s]]
    upaths, rpaths = d["unknown_gen"], set(map(str, d["real"]))
    allu = upaths + d["real"]
    conf = lambda x: max(x.raw[n] - x.raw_thresholds[n] for n in known)  # noqa: E731
    ver = []
    for s in known:
        pos = [dec[str(p)].raw[s] for p, t in kpaths if t == s]
        neg = [dec[str(p)].raw[s] for p, t in kpaths if t != s] + [dec[str(p)].raw[s] for p in allu]
        ver.append(roc_auc(pos, neg))
    ck = [conf(dec[str(p)]) for p, _ in kpaths]
    cu = [conf(dec[str(p)]) for p in allu]
    return {"verification_auc": float(np.mean(ver)), "open_set_auroc": roc_auc(ck, cu),
            "known_correct": float(np.mean([dec[str(p)].source == s for p, s in kpaths])),
            "unknown_rejected": float(np.mean([dec[str(p)].source is None for p in allu])),
            "unknown_generators_rejected": float(np.mean([dec[str(p)].source is None for p in upaths])),
            "real_accepted": float(np.mean([dec[str(p)].source is not None for p in allu if str(p) in rpaths]))}


def own_accept(d, dec):
    return float(np.mean([s in dec[str(p)].accepted for s in d["known"] for p in d["tests"][s]]))


# -- baselines on the same features -----------------------------------------------------------------


def baselines(d, extractor, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from occ.metrics import roc_auc
    from occ.negatives import bank_paths
    from occ.probe import pick_block

    def load(paths):
        f = extractor.load(paths)
        return f.trunk.cls.double().numpy(), f.trunk.embeds.double().numpy()

    known = d["known"]
    bank_cls, bank_emb = load(bank_paths())
    shots = {s: load(d["shots"][s]) for s in known}
    tests = {s: load(d["tests"][s]) for s in known}
    unk = load(d["unknown_gen"] + d["real"])

    def lr(x, y):
        mu, sd = x.mean(0), x.std(0) + 1e-6
        m = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000).fit((x - mu) / sd, y)
        return lambda z: m.decision_function((z - mu) / sd), m, mu, sd

    out = {}
    for kind in ("embedding", "best_block"):
        aucs = []
        for s in known:
            others = [o for o in known if o != s]
            if kind == "embedding":
                get = lambda t: t[1]  # noqa: E731
            else:
                cls = np.concatenate([shots[s][0], bank_cls] + [shots[o][0] for o in others])
                y = np.r_[np.ones(len(shots[s][0])), np.zeros(len(cls) - len(shots[s][0]))]
                block = pick_block(cls, y, list(range(1, cls.shape[1])), seed)
                get = lambda t, b=block: t[0][:, b]  # noqa: E731
            x = np.concatenate([get(shots[s]), get((bank_cls, bank_emb))] + [get(shots[o]) for o in others])
            y = np.r_[np.ones(len(shots[s][0])), np.zeros(len(x) - len(shots[s][0]))]
            f = lr(x, y)[0]
            pos = f(get(tests[s]))
            neg = np.concatenate([f(get(tests[o])) for o in others] + [f(get(unk))])
            aucs.append(roc_auc(pos, neg))
        out[f"lr_{kind}_verification_auc"] = float(np.mean(aucs))
    # USIA: multi-class LR over the known sources on the best block (picked over the known shots),
    # max-softmax rejection at 95 % of cross-validated known training images
    cls = np.concatenate([shots[s][0] for s in known])
    y = np.concatenate([np.full(len(shots[s][0]), i) for i, s in enumerate(known)])
    best, best_acc = 1, -1.0
    for b in range(1, cls.shape[1]):
        pred = np.zeros(len(y))
        for tr, te in StratifiedKFold(3, shuffle=True, random_state=seed).split(cls, y):
            pred[te] = lr(cls[tr, b], y[tr])[1].predict((cls[te, b] - cls[tr, b].mean(0)) / (cls[tr, b].std(0) + 1e-6))
        acc = float(np.mean(pred == y))
        if acc > best_acc:
            best, best_acc = b, acc
    conf_cv = np.zeros(len(y))
    for tr, te in StratifiedKFold(3, shuffle=True, random_state=seed).split(cls, y):
        _, m, mu, sd = lr(cls[tr, best], y[tr])
        conf_cv[te] = m.predict_proba((cls[te, best] - mu) / sd).max(1)
    tau = float(np.quantile(conf_cv, 0.05))
    _, m, mu, sd = lr(cls[:, best], y)
    pk = np.concatenate([m.predict_proba((tests[s][0][:, best] - mu) / sd) for s in known])
    yk = np.concatenate([np.full(len(tests[s][0]), i) for i, s in enumerate(known)])
    pu = m.predict_proba((unk[0][:, best] - mu) / sd)
    n_real = len(d["real"])
    out["usia_open_set_auroc"] = roc_auc(pk.max(1), pu.max(1))
    out["usia_known_correct"] = float(np.mean((pk.argmax(1) == yk) & (pk.max(1) >= tau)))
    out["usia_unknown_rejected"] = float(np.mean(pu.max(1) < tau))
    out["usia_real_accepted"] = float(np.mean(pu[len(pu) - n_real:].max(1) >= tau)) if n_real else float("nan")
    return out


# -- driver -----------------------------------------------------------------------------------------


def run_candidates(d, backbone, extractor, seed, views_list, dims_list, tprs, floors, with_prompt=False,
                   order_check=False, launder=False):
    from occ.config import VerifierConfig
    from occ.openset import JointSettings, refit
    from occ.perturb import parse_perturb_spec
    from occ.sources import set_threshold
    from occ.training import TrainSettings

    paths = [p for s in d["known"] for p in d["tests"][s]] + d["unknown_gen"] + d["real"]
    rows = []
    for views in views_list:
        with tempfile.TemporaryDirectory(prefix="occ-generalise-") as tmp:
            cfg = lambda _name, v=views: VerifierConfig(kind="lda", views=v, settings=TrainSettings(seed=seed))  # noqa: E731
            registry, t_enroll = enroll_all(Path(tmp) / "reg", d, cfg, backbone, extractor)
            for tpr in tprs:
                for name in d["known"]:
                    set_threshold(registry, name, target_tpr=tpr)
                for dims, floor in ((dims, floor) for dims in dims_list for floor in floors):
                    settings = JointSettings(dims=dims, seed=seed, min_margin=floor, bank_views=views)
                    refit(registry, backbone, extractor=extractor, settings=settings)
                    dec = {x.path: x for x in decisions(registry, backbone, extractor, paths)}
                    row = {"method": "lda", "views": views, "dims": dims, "target_tpr": tpr, "min_margin": floor,
                           **metrics(d, dec), "enroll_seconds": t_enroll}
                    if launder:
                        row["own_accept_clean"] = own_accept(d, dec)
                        kp = [p for s in d["known"] for p in d["tests"][s]]
                        for p in parse_perturb_spec("jpeg:75,resize:0.5"):
                            dp = {x.path: x for x in decisions(registry, backbone, extractor, kp, transform=p)}
                            row[f"own_accept_{p.label}"] = own_accept(d, dp)
                    if order_check:
                        with tempfile.TemporaryDirectory(prefix="occ-generalise-order-") as tmp2:
                            other = list(reversed(d["order"]))
                            reg2, _ = enroll_all(Path(tmp2) / "reg", d, cfg, backbone, extractor, order=other)
                            for name in d["known"]:
                                set_threshold(reg2, name, target_tpr=tpr)
                            refit(reg2, backbone, extractor=extractor, settings=settings)
                            dec2 = {x.path: x for x in decisions(reg2, backbone, extractor, paths)}
                        row["order_same_decision"] = float(np.mean([dec[k].source == dec2[k].source for k in dec]))
                        row["order_max_score_diff"] = float(max(abs(dec[k].scores[n] - dec2[k].scores[n])
                                                                for k in dec for n in d["known"]))
                    rows.append(row)
    if with_prompt:
        with tempfile.TemporaryDirectory(prefix="occ-generalise-prompt-") as tmp:
            cfg = lambda _name: VerifierConfig(kind="visual", settings=TrainSettings(seed=seed))  # noqa: E731
            registry, t_enroll = enroll_all(Path(tmp) / "reg", d, cfg, backbone, extractor)
            dec = {x.path: x for x in decisions(registry, backbone, extractor, paths)}
            rows.append({"method": "prompt (previous default)", **metrics(d, dec), "enroll_seconds": t_enroll})
    return rows


def criterion(means: dict) -> float:
    """What selection maximises: open-set AUROC plus the mean of known-correct and unknown-rejected."""
    return means["open_set_auroc"] + 0.5 * (means["known_correct"] + means["unknown_rejected"])


def shipped_default(report: dict) -> dict:
    """The configuration occ ships: the candidate with the best criterion averaged over both folds'
    validation grids. (Each fold's *reported* configuration was chosen on the other fold alone; the
    shipped one may use all the devset's generators, since no figure is reported for it as a whole.)"""
    grids = [{(g["views"], g["dims"], g["target_tpr"], g["min_margin"]): criterion(g) for g in r["validation_grid"]}
             for r in report["rotations"]]
    keys = set.intersection(*(set(g) for g in grids))
    pooled = {k: float(np.mean([g[k] for g in grids])) for k in keys}
    ranked = sorted(pooled, key=lambda k: -pooled[k])
    return {"rule": "best criterion averaged over both folds' validation grids",
            "chosen": dict(zip(("views", "dims", "target_tpr", "min_margin"), ranked[0])),
            "top": [{"views": k[0], "dims": k[1], "target_tpr": k[2], "min_margin": k[3],
                     "pooled_criterion": round(pooled[k], 4)} for k in ranked[:5]]}


def summarise(rows):
    keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
    return {k: {"mean": float(np.nanmean([r[k] for r in rows])), "std": float(np.nanstd([r[k] for r in rows]))}
            for k in keys}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--known", type=int, default=4)
    ap.add_argument("--no-prompt", action="store_true", help="skip the previous default (slow on a CPU)")
    args = ap.parse_args()

    from occ.backbones import load_backbone
    from occ.features import FeatureExtractor

    data = normalise_devset()
    backbone = load_backbone(None)
    extractor = FeatureExtractor(backbone)
    report = {"protocol": __doc__, "args": vars(args) | {"out": str(args.out)}, "rotations": []}
    for val, rep in (("A", "B"), ("B", "A")):
        t0 = time.perf_counter()
        val_rows = []
        for seed in range(args.seeds):
            d = draw(data, val, seed, args.known, args.shots)
            rows = run_candidates(d, backbone, extractor, seed, VIEWS, DIMS, TPRS, MIN_MARGINS)
            val_rows += [r | {"seed": seed} for r in rows]
            print(f"validation {val} seed {seed}: {len(rows)} candidates, "
                  f"best AUROC {max(r['open_set_auroc'] for r in rows):.3f}", flush=True)
        grid = {}
        for r in val_rows:
            grid.setdefault((r["views"], r["dims"], r["target_tpr"], r["min_margin"]), []).append(r)
        means = {k: {m: float(np.mean([r[m] for r in v])) for m in v[0] if isinstance(v[0][m], float)}
                 for k, v in grid.items()}
        chosen = max(means, key=lambda k: criterion(means[k]))
        views, dims, tpr, floor = chosen
        rep_rows, base_rows = [], []
        for seed in range(args.seeds):
            d = draw(data, rep, seed, args.known, args.shots)
            rows = run_candidates(d, backbone, extractor, seed, [views], [dims], [tpr], [floor],
                                  with_prompt=not args.no_prompt, order_check=True, launder=True)
            rep_rows += [r | {"seed": seed} for r in rows]
            base_rows.append(baselines(d, extractor, seed) | {"seed": seed})
            print(f"report {rep} seed {seed}: {rows[0]}", flush=True)
        by_method = {}
        for r in rep_rows:
            by_method.setdefault(r["method"], []).append(r)
        report["rotations"].append({
            "validation_fold": val, "report_fold": rep, "validation_grid": [
                {"views": k[0], "dims": k[1], "target_tpr": k[2], "min_margin": k[3], **v} for k, v in means.items()],
            "chosen": {"views": views, "dims": dims, "target_tpr": tpr, "min_margin": floor},
            "report_rows": rep_rows, "report_summary": {m: summarise(v) for m, v in by_method.items()},
            "baselines": base_rows, "baselines_summary": summarise(base_rows),
            "seconds": time.perf_counter() - t0})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, allow_nan=True))
    report["shipped_default"] = shipped_default(report)
    args.out.write_text(json.dumps(report, indent=1, allow_nan=True))
    print(json.dumps(report["shipped_default"], indent=1))
    print(json.dumps({r["report_fold"]: {"chosen": r["chosen"], "occ": r["report_summary"],
                                         "baselines": r["baselines_summary"]} for r in report["rotations"]}, indent=1))


if __name__ == "__main__":
    main()
