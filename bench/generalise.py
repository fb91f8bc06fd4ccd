"""Generalisation protocol: design choices selected on validation generators, reported on others.

    python bench/generalise.py --protocol content --out bench/results/generalise_content.json
    python bench/generalise.py --protocol gan --no-prompt --out bench/results/generalise_gan.json
        [--seeds 3] [--shots 10] [--known 4]

What it does (every figure through the code path the CLI uses: ``occ.enrollment.enroll`` into a real
registry, ``occ.openset.refit``, ``occ.attribution.Attributor``):

* every devset image is normalised (bottom 3 % cropped, shortest side 256, lossless PNG, written under
  ``bench/work/norm``) so that size, format and watermark strips tell nothing;

**Content-matched splits** (``--protocol content``, the hard case: generators that draw the same
subjects). Two groups of four generators made from one prompt list each: ``imagen-*`` (latent
diffusion, DALL-E mini, GLID-3-XL, Disco Diffusion) and ``t2icmp-*`` (SDXL, PixArt-alpha, Playground v2,
Kandinsky 3). A draw (per group and seed) enrolls three of the four with ``--shots`` images each; the
fourth (a different one for each seed) and the group's real photos are the unknowns. Shots come from
the *same* prompts for every enrolled source ("many": prompts drawn at random, one image each where
possible), and test images only from prompts no shot used, so content says nothing about the source.
For ``imagen-*`` a second draw takes each source's shots from its largest prompt groups ("few": one to
three prompts, as a user's samples from one session often are). Photos: the ``imagen`` split reads
real-imagenet, real-kodak and real-sam, the ``t2icmp`` split real-dif, real-cnndet, real-skimage and
real-scenetext; false accepts are reported per kind of photo. Photos that are copies of a shipped bank
image are left out of every draw, since they are not unlike the bank (``bank_copies``; listed in the
results: 7 of real-skimage's 14 with the JPEG bank, none since the lossless rebuild refuses them). Roles rotate as for
the GAN-era folds: the joint model's log-odds (``occ.joint`` point 3: the discriminant, or the logistic regression at
C = 1 or 0.1) and the weight of the low-level stream (:mod:`occ.lowlevel`: none, 0.3 or 1) are
selected on one group ("many" draws) and reported on the other, with the native-resolution crops
(:func:`occ.evidence.native_crops`) on as shipped (chosen on the imagen draws by
``bench/evidence_study.py --protocol native``), beside their ablations (each choice undone: without the
crops is occ before them), the baselines below and discriminant margins on the main view's CLIP evidence
alone, all measured on the same draws. Every split is reported on its own, and the worst split beside the
mean. What each part of the evidence (the low-level stream, the main view, the crops) costs per image
is timed on its own.

**Native resolution** (``--protocol native``, report only, occ's shipped defaults): the ``t2icmp``
draws on the files as their generators saved them (1024 px JPEG q75 for all four, so size and format
tell nothing among them; the photos keep their own formats, so their false-accept rate there is not
comparable with the normalised splits). It shows what the normalisation's 4x downscale takes from
the low-level stream.

**GAN-era folds** (``--protocol gan``; most of their generators differ in content, so they say little
about look-alike generators and are reported as their own rows):
* the generators with enough images are split into two **folds** of disjoint generators, each with
  its own generators that are only ever unknowns and its own real photos (photos unlike the shipped
  bank). Roles rotate: choices are selected on fold A and reported on fold B, then the reverse. No
  figure reported for a fold played any part in choosing what is reported there;
* a draw (per fold and seed): ``--known`` sources of the fold are enrolled with ``--shots`` images
  each, drawn by prompt group (test images come from other prompts); the fold's other generators
  (including ones sharing prompts with the enrolled ones), its unknown-only generators and its real
  photos are the unknowns. Sources are enrolled in a random order;
* candidates: the joint model's log-odds, as for the content-matched splits. The other settings are
  occ's defaults (256 principal directions, TPR rule 0.90, threshold floor 0, two laundered views per
  training image), chosen by the grid over 64 / 128 / 256 directions, TPR 0.90 / 0.95, floor none / 0
  and 1 / 2 / 3 views that this protocol ran before (``bench/results/generalise.json``, issue 13; the
  reruns write ``generalise_content.json`` and ``generalise_gan.json``). Selection maximises open-set
  AUROC plus the mean of known-correct and unknown-rejected rates on the validation fold (or group);

Both kinds of split report, beside baselines measured on the same draws and features: logistic
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

from occ.joint import DEFAULT_DISCRIMINATIVE
from occ.openset import DEFAULT_CROPS, DEFAULT_LOW_WEIGHT

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


def native_devset(labels) -> dict[str, list[tuple[Path, str]]]:
    """label -> [(the devset file as its origin saved it, group)] for ``labels``."""
    out: dict[str, list[tuple[Path, str]]] = {}
    for row in csv.DictReader(open(DEVSET / "manifest.csv")):
        if row["label"] in labels:
            out.setdefault(row["label"], []).append((DEVSET / row["path"], row["group"]))
    return out


def _signature(path) -> np.ndarray:
    """A 32 x 32 grey thumbnail of the centre square, centred and scaled to unit length."""
    from PIL import Image

    im = Image.open(path).convert("L")
    w, h = im.size
    side = min(w, h)
    x, y = (w - side) // 2, (h - side) // 2
    a = np.asarray(im.crop((x, y, x + side, y + side)).resize((32, 32), Image.Resampling.BILINEAR), np.float64).ravel()
    a -= a.mean()
    return a / (np.linalg.norm(a) + 1e-9)


def bank_copies(labels, threshold=0.98) -> set[str]:
    """Devset photos (of ``labels``) that are copies of a shipped bank image (a bank that re-encodes some
    of scikit-image's sample photos, which the devset's real-skimage set also holds): not "unlike the bank",
    so the protocol leaves them out of the photos it reports. Compared on the devset's own files, and
    returned as those files and as their normalised copies (whose cropped bottom hides the likeness)."""
    from occ.negatives import bank_paths

    bank = np.stack([_signature(p) for p in bank_paths()])
    out = set()
    for row in csv.DictReader(open(DEVSET / "manifest.csv")):
        if row["label"] in labels and float((bank @ _signature(DEVSET / row["path"])).max()) > threshold:
            out |= {str(DEVSET / row["path"]), str(NORM / row["label"] / (Path(row["path"]).stem + ".png"))}
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


CONTENT = {
    "imagen": {"generators": ["imagen-disco", "imagen-dmin", "imagen-glid3", "imagen-ldif"],
               "real": ["real-imagenet", "real-kodak", "real-sam"], "few": True},
    "t2icmp": {"generators": ["t2icmp-kandinsky3", "t2icmp-pixart", "t2icmp-playground2", "t2icmp-sdxl"],
               "real": ["real-cnndet", "real-dif", "real-scenetext", "real-skimage"], "few": False},
}
EXCLUDED: set[str] = set()  # photos left out of every draw (bank_copies), set by main
DISCRIMINATIVE = (None, 1.0, 0.1)  # occ.joint point 3: the discriminant's margins, or LR at C = 1, 0.1
LOW_WEIGHTS = (None, 0.3, 1.0)  # the low-level stream's weight (occ.openset.JointSettings): off, 0.3, 1


def _shots_from(items, prompts, n, used: set) -> list:
    """Up to ``n`` images of ``items`` ((path, prompt) pairs), taken prompt by prompt in ``prompts``
    order; every prompt a shot came from is added to ``used``."""
    picked = []
    for g in prompts:
        if len(picked) >= n:
            break
        used.add(g)
        picked += [p for p, gg in items if gg == g][: n - len(picked)]
    return picked


def content_draw(data, group, seed, shots_n, few=False, real=None):
    """A content-matched draw (see the module doc): three of the group's generators enrolled, the
    fourth unknown; shots from prompts shared by every enrolled source ("many") or from each source's
    largest prompt groups ("few"); test images from prompts that no shot used. ``real``: the photo sets
    to decide, the group's own (``CONTENT``) by default."""
    rng = np.random.default_rng(seed)
    gens = CONTENT[group]["generators"]
    unknown = gens[seed % len(gens)]
    known = [g for g in gens if g != unknown]
    shots, used = {}, set()
    if few:
        for s in known:
            sizes: dict[str, int] = {}
            for _, g in data[s]:
                sizes[g] = sizes.get(g, 0) + 1
            tie = dict(zip(sizes, rng.random(len(sizes))))  # equal sizes in random order
            shots[s] = _shots_from(data[s], sorted(sizes, key=lambda g: (-sizes[g], tie[g])), shots_n, used)
    else:
        common = sorted(set.intersection(*({g for _, g in data[s]} for s in known)))
        prompts = rng.permutation(common).tolist()
        for s in known:
            shots[s] = _shots_from(data[s], prompts, shots_n, used)
    tests = {s: [p for p, g in data[s] if g not in used] for s in known}
    real_kind = {str(p): lab for lab in real or CONTENT[group]["real"] for p, _ in data[lab]
                 if str(p) not in EXCLUDED}
    return {"known": known, "order": rng.permutation(known).tolist(), "shots": shots, "tests": tests,
            "unknown_gen": [p for p, _ in data[unknown]], "real": [Path(p) for p in real_kind],
            "real_kind": real_kind, "unknown_name": unknown, "split": f"{group} {'few' if few else 'many'}"}


def draw(data, fold, seed, known_n, shots_n):
    rng = np.random.default_rng(seed)
    spec = FOLDS[fold]
    known = sorted(rng.choice(spec["enroll"], known_n, replace=False).tolist())
    shots, tests = {}, {}
    for s in known:
        shots[s], tests[s] = split(data[s], rng, shots_n)
    unknown_gen = [p for lab in spec["enroll"] + spec["unknown"] if lab not in known for p, _ in data[lab]]
    real = [p for lab in spec["real"] for p, _ in data[lab] if str(p) not in EXCLUDED]
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


def enroll_defaults(registry_dir, d, seed, backbone, extractor, views=None, order=None):
    """:func:`enroll_all` with the verifier users get (``lda``, ``views`` laundered copies: occ's default when
    None), seeded by the draw's seed."""
    from occ.config import VerifierConfig
    from occ.training import TrainSettings

    return enroll_all(registry_dir, d, lambda _name: VerifierConfig(kind="lda", views=views,
                                                                    settings=TrainSettings(seed=seed)),
                      backbone, extractor, order)


def decisions(registry, backbone, extractor, paths, transform=None):
    from occ.attribution import Attributor

    att = Attributor.from_registry(registry, backbone, extractor=extractor)
    out = []
    for batch in extractor.stream(paths, att.blocks, transform=transform, crops=att.crops):
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
            "closed_set_accuracy": float(np.mean([max(known, key=lambda n: dec[str(p)].raw[n]) == s
                                                  for p, s in kpaths])),
            **{f"real_accepted:{k}": v for k, v in photos_accepted_by_kind(d, dec).items()},
            "known_correct": float(np.mean([dec[str(p)].source == s for p, s in kpaths])),
            "unknown_rejected": float(np.mean([dec[str(p)].source is None for p in allu])),
            "unknown_generators_rejected": float(np.mean([dec[str(p)].source is None for p in upaths])),
            "real_accepted": float(np.mean([dec[str(p)].source is not None for p in allu if str(p) in rpaths]))}


def photos_accepted_by_kind(d, dec) -> dict[str, float]:
    """Per kind of photo (``d["real_kind"]``), the rate of its photos named as some source."""
    by_kind: dict[str, list[bool]] = {}
    for p, kind in d.get("real_kind", {}).items():
        by_kind.setdefault(kind, []).append(dec[p].source is not None)
    return {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}


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
    out["usia_closed_set_accuracy"] = float(np.mean(pk.argmax(1) == yk))
    out["usia_known_correct"] = float(np.mean((pk.argmax(1) == yk) & (pk.max(1) >= tau)))
    out["usia_unknown_rejected"] = float(np.mean(pu.max(1) < tau))
    out["usia_real_accepted"] = float(np.mean(pu[len(pu) - n_real:].max(1) >= tau)) if n_real else float("nan")
    return out


# -- driver -----------------------------------------------------------------------------------------


def run_candidates(d, backbone, extractor, seed, views_list, dims_list, tprs, floors, with_prompt=False,
                   order_check=False, launder=False,
                   candidates=((DEFAULT_DISCRIMINATIVE, DEFAULT_LOW_WEIGHT, DEFAULT_CROPS),)):
    """Rows of figures of draw ``d`` through the product path, one per setting; ``candidates`` are
    (log-odds, low-level weight, crops) triples of :class:`occ.openset.JointSettings`."""
    from occ.config import VerifierConfig
    from occ.openset import JointSettings, refit
    from occ.perturb import parse_perturb_spec
    from occ.sources import set_threshold
    from occ.training import TrainSettings

    paths = [p for s in d["known"] for p in d["tests"][s]] + d["unknown_gen"] + d["real"]
    rows = []
    for views in views_list:
        with tempfile.TemporaryDirectory(prefix="occ-generalise-") as tmp:
            registry, t_enroll = enroll_defaults(Path(tmp) / "reg", d, seed, backbone, extractor, views)
            for tpr in tprs:
                for name in d["known"]:
                    set_threshold(registry, name, target_tpr=tpr)
                for dims, floor, (disc, low, crops) in ((a, b, c) for a in dims_list for b in floors
                                                        for c in candidates):
                    settings = JointSettings(dims=dims, seed=seed, min_margin=floor, bank_views=views,
                                             discriminative=disc, low_weight=low, crops=crops)
                    refit(registry, backbone, extractor=extractor, settings=settings)
                    dec = {x.path: x for x in decisions(registry, backbone, extractor, paths)}
                    row = {"method": "lda", "views": views, "dims": dims, "target_tpr": tpr, "min_margin": floor,
                           "discriminative": disc, "low_weight": low, "crops": crops, **metrics(d, dec),
                           "enroll_seconds": t_enroll}
                    if launder:
                        row["own_accept_clean"] = own_accept(d, dec)
                        kp = [p for s in d["known"] for p in d["tests"][s]]
                        for p in parse_perturb_spec("jpeg:75,resize:0.5"):
                            dp = {x.path: x for x in decisions(registry, backbone, extractor, kp, transform=p)}
                            row[f"own_accept_{p.label}"] = own_accept(d, dp)
                    if order_check:
                        with tempfile.TemporaryDirectory(prefix="occ-generalise-order-") as tmp2:
                            other = list(reversed(d["order"]))
                            reg2, _ = enroll_defaults(Path(tmp2) / "reg", d, seed, backbone, extractor, views,
                                                      order=other)
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


def summarise(rows):
    keys = sorted({k for r in rows for k in r if isinstance(r[k], float)})
    return {k: {"mean": float(np.nanmean([r.get(k, np.nan) for r in rows])),
                "std": float(np.nanstd([r.get(k, np.nan) for r in rows]))} for k in keys}


def mean_std(summary: dict, keys) -> dict[str, str]:
    """``keys`` of a :func:`summarise` result as 'mean+-std' strings, for a run's closing lines."""
    return {k: f"{summary[k]['mean']:.3f}+-{summary[k]['std']:.3f}" for k in keys}


def check_against_product(registry, backbone, extractor, paths, named, what: str) -> None:
    """Raise unless ``named`` (a source or None per path) is what ``occ.attribution`` decides for ``paths``:
    a study's figures for the shipped rule are then those users get."""
    product = {x.path: x.source for x in decisions(registry, backbone, extractor, paths)}
    if [product[str(p)] for p in paths] != list(named):
        raise AssertionError(f"{what} differs from occ.attribution's decisions")


def study_parser(description: str) -> argparse.ArgumentParser:
    """The options of every study of the content-matched draws: ``--seeds``, ``--shots``, ``--out``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--out", type=Path)
    return ap


def content_study():
    """What a study of the content-matched splits starts from: the normalised devset, occ's default
    backbone and a feature extractor over it, with the bank's copies left out of every draw."""
    from occ.backbones import load_backbone
    from occ.features import FeatureExtractor

    data = normalise_devset()
    backbone = load_backbone(None)
    exclude_content_bank_copies()
    return data, backbone, FeatureExtractor(backbone)


def model_rows(model, trunk, paths) -> dict:
    """path -> what ``occ.attribution`` reports of it (raw scores, thresholds, the source named, the sources
    that accept it), from the joint ``model``'s decisions on the rows of ``trunk`` (the trunk outputs of
    ``paths``): what :func:`metrics` and :func:`own_accept` read, for a model refitted with settings the
    product does not ship."""
    from types import SimpleNamespace

    dec = model.decide_arrays(model.settings_.rows(trunk.cls_array, trunk.low, trunk.crops))
    thr = {n: model.calibrations_[n].threshold for n in dec.names}
    return {str(p): SimpleNamespace(raw=dict(zip(dec.names, dec.raw[i].tolist())), raw_thresholds=thr,
                                    source=dec.names[dec.named[i]] if dec.named[i] >= 0 else None,
                                    accepted=[n for n, a in zip(dec.names, dec.accepts[i]) if a])
            for i, p in enumerate(paths)}


def refit_splits(norm) -> dict[str, tuple]:
    """The splits of the refit studies (``crop_bands.py``, ``crop_weight.py``): imagen many and few
    (selection), t2icmp normalised and at its own 1024 px (report); name -> (data, group, few)."""
    native = native_devset(CONTENT["t2icmp"]["generators"] + CONTENT["t2icmp"]["real"])
    return {"imagen many": (norm, "imagen", False), "imagen few": (norm, "imagen", True),
            "t2icmp many": (norm, "t2icmp", False), "t2icmp native": (native, "t2icmp", False)}


def run_refit_study(splits: dict, seeds: int, shots: int, figures) -> tuple[dict, dict]:
    """(rows, summary) per split and candidate: ``figures(draw, seed)`` gives each candidate's
    :func:`metrics` of one draw; the criterion is added to each. A split is (data, group, few) or
    (data, group, few, photo sets) (:func:`content_draw`'s ``real``)."""
    per_split: dict[str, dict[str, list]] = {}
    for split, (data, group, few, *real) in splits.items():
        for seed in range(seeds):
            d = content_draw(data, group, seed, shots, few=few, real=real[0] if real else None)
            for name, fig in figures(d, seed).items():
                per_split.setdefault(split, {}).setdefault(name, []).append(fig | {"criterion": criterion(fig)})
            print(split, seed, {n: round(v[-1]["criterion"], 3) for n, v in per_split[split].items()}, flush=True)
    return per_split, {sp: {n: summarise(v) for n, v in c.items()} for sp, c in per_split.items()}


def print_summary(summary: dict, keys) -> None:
    """Each split's candidates with the mean +- std of ``keys``."""
    for sp, cands in summary.items():
        print(sp)
        for n, c in cands.items():
            print(f"  {n:16s} " + " ".join(f"{k} {v}" for k, v in mean_std(c, keys).items()))


def design_mean(summary: dict, key: str) -> dict[str, float]:
    """candidate -> the mean of ``key`` over the imagen splits of a refit study's summary."""
    design = ("imagen many", "imagen few")
    return {n: float(np.mean([summary[sp][n][key]["mean"] for sp in design])) for n in summary[design[0]]}


def use_bank(folder: Path) -> None:
    """Read the non-target bank from ``folder`` (a folder with its own PROVENANCE.csv) from now on."""
    import occ.negatives as negatives
    import occ.openset as openset

    negatives.BANK_DIR = folder
    openset._BANK_ROWS.clear()  # the bank's rows are kept per process: read the new files


# folds of the shipped bank by package: what a model fitted without a fold accepts of it is a design-side
# measure of photos unlike the bank (the content groups' own photos are accepted 0-0.5 % on imagen)
BANK_HOLDOUTS = ("gcompris-qt-data", "gimp-help-en", "opencv-doc", "other packages")


def write_provenance(folder: Path, fields, rows) -> None:
    """Make ``folder``'s PROVENANCE.csv list ``rows`` alone (the bank's files are the ones it lists)."""
    with (folder / "PROVENANCE.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def bank_holdouts(work: Path) -> dict[str, tuple[Path, list[Path]]]:
    """Per fold of :data:`BANK_HOLDOUTS`: (a bank folder in ``work`` holding the shipped bank less that
    fold's files, the fold's files in the shipped bank). Copies keep their bytes, so the feature cache
    serves them."""
    import shutil

    import occ.negatives as negatives

    shipped = negatives.BANK_DIR
    with (shipped / "PROVENANCE.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    named = set(BANK_HOLDOUTS[:-1])
    out = {}
    for fold in BANK_HOLDOUTS:
        held = [r for r in rows if (r["package"] == fold if fold in named else r["package"] not in named)]
        if not held:
            raise ValueError(f"the bank holds no file of fold {fold!r}")
        folder = work / fold.replace(" ", "-")
        folder.mkdir(parents=True)
        kept = [r for r in rows if r not in held]
        for r in kept:
            shutil.copyfile(shipped / r["file"], folder / r["file"])
        write_provenance(folder, fields, kept)
        out[fold] = (folder, sorted(shipped / r["file"] for r in held))
    return out


def held_out_bank_accepts(registry, backbone, extractor, candidates: dict, holdouts: dict) -> dict[str, dict]:
    """candidate -> {fold: share of the fold's bank images a source is named for}, by the joint model of
    ``registry`` refitted with each candidate's :class:`occ.openset.JointSettings` on the bank less the
    fold (:func:`bank_holdouts`). The shipped bank is read again afterwards; the registry's stored model
    is the last one fitted."""
    import occ.negatives as negatives
    from occ.openset import refit

    shipped = negatives.BANK_DIR
    out: dict[str, dict] = {name: {} for name in candidates}
    try:
        for fold, (folder, files) in holdouts.items():
            use_bank(folder)
            trunk = extractor.load(files, (), crops=True).trunk
            for name, settings in candidates.items():
                rows = model_rows(refit(registry, backbone, extractor=extractor, settings=settings), trunk, files)
                out[name][fold] = float(np.mean([r.source is not None for r in rows.values()]))
    finally:
        use_bank(shipped)
    return out


def refit_figures(d, seed, backbone, extractor, candidates: dict, product: str, holdouts=None,
                  launder: bool = False) -> dict[str, dict]:
    """candidate -> :func:`metrics` of draw ``d``: its sources enrolled with occ's defaults, the joint model
    refitted with each candidate's :class:`occ.openset.JointSettings` and deciding the test images; the
    ``product`` candidate's names are checked against ``occ.attribution``'s. With ``holdouts``
    (:func:`bank_holdouts`), each candidate also gets ``held_out_bank_accepted`` (mean over the folds); with
    ``launder``, ``own_accept_clean`` and ``own_accept_<perturbation>`` for ``jpeg:75`` and ``resize:0.5``
    (what :func:`own_accept` reads of the product's decisions)."""
    from occ.openset import refit
    from occ.perturb import parse_perturb_spec

    known = [p for s in d["known"] for p in d["tests"][s]]
    paths = known + d["unknown_gen"] + d["real"]
    trunk = extractor.load(paths, (), crops=True).trunk
    laundered = {}  # the sources' own test images after each perturbation
    for t in parse_perturb_spec("jpeg:75,resize:0.5") if launder else ():
        laundered[t.label] = extractor.load(known, (), transform=t, crops=True).trunk
        if len(laundered[t.label].cls_array) != len(known):
            raise RuntimeError(f"some of the sources' test images could not be read through {t.label}")
    out = {}
    with tempfile.TemporaryDirectory(prefix="occ-refit-") as tmp:
        registry, _ = enroll_defaults(Path(tmp) / "reg", d, seed, backbone, extractor)
        for name, settings in candidates.items():
            model = refit(registry, backbone, extractor=extractor, settings=settings)
            rows = model_rows(model, trunk, paths)
            if name == product:
                check_against_product(registry, backbone, extractor, paths, [rows[str(p)].source for p in paths],
                                      f"the {product} rows' decisions")
            out[name] = metrics(d, rows)
            if launder:
                out[name]["own_accept_clean"] = own_accept(d, rows)
            for label, t in laundered.items():
                out[name][f"own_accept_{label}"] = own_accept(d, model_rows(model, t, known))
        if holdouts is not None:
            for name, folds in held_out_bank_accepts(registry, backbone, extractor, candidates, holdouts).items():
                out[name] |= {f"held_out_bank_accepted:{f}": v for f, v in folds.items()}
                out[name]["held_out_bank_accepted"] = float(np.mean(list(folds.values())))
    return out


def exclude_content_bank_copies() -> None:
    """Leave out of every content-matched draw the photos that copy an image of the bank in use
    (:func:`bank_copies` of the content groups' photo sets, added to :data:`EXCLUDED`)."""
    EXCLUDED.update(bank_copies(sorted({lab for c in CONTENT.values() for lab in c["real"]})))


HIGHER = ("verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct", "unknown_rejected",
          "unknown_generators_rejected")


def worst(by_split: dict) -> dict:
    """Per figure, the worst split's mean (lowest, or highest for the rate of real photos accepted)."""
    out = {}
    for k in HIGHER + ("real_accepted",):
        vals = {s: v[k]["mean"] for s, v in by_split.items() if k in v}
        if vals:
            pick = max if k == "real_accepted" else min
            split = pick(vals, key=vals.get)
            out[k] = {"split": split, "mean": vals[split]}
    return out


def _fixed():
    """The settings every candidate shares: occ's defaults (views, directions, TPR rule, floor)."""
    from occ.evidence import DEFAULT_VIEWS
    from occ.joint import DEFAULT_DIMS, DEFAULT_MIN_MARGIN

    return [DEFAULT_VIEWS], [DEFAULT_DIMS], [0.9], [DEFAULT_MIN_MARGIN]


def rotation(val_draws, rep_draws, backbone, extractor, with_prompt):
    """Select the joint model's log-odds (:data:`DISCRIMINATIVE`) and low-level weight
    (:data:`LOW_WEIGHTS`) on ``val_draws``, with the native-resolution crops as shipped (chosen on the
    imagen draws by ``bench/evidence_study.py``); report the choice on ``rep_draws`` (:func:`report_on`)."""
    fixed = _fixed()
    grid_keys = [(c, w, DEFAULT_CROPS) for c in DISCRIMINATIVE for w in LOW_WEIGHTS]
    t0 = time.perf_counter()
    val_rows = []
    for seed, d in val_draws:
        rows = run_candidates(d, backbone, extractor, seed, *fixed, candidates=grid_keys)
        val_rows += [r | {"seed": seed, "split": d["split"]} for r in rows]
        print(f"validation {d['split']} seed {seed}: " + ", ".join(
            f"{r['discriminative']}/{r['low_weight']}: AUROC {r['open_set_auroc']:.3f} ver {r['verification_auc']:.3f}"
            for r in rows), flush=True)
    grid = {}
    for r in val_rows:
        grid.setdefault((r["discriminative"], r["low_weight"], r["crops"]), []).append(r)
    means = {k: summarise(v) for k, v in grid.items()}
    chosen = max(means, key=lambda k: criterion({m: v["mean"] for m, v in means[k].items()}))
    return {"validation_splits": sorted({d["split"] for _, d in val_draws}),
            "validation_grid": [{**v, "discriminative": k[0], "low_weight": k[1], "crops": k[2]}
                                for k, v in means.items()],
            **report_on(rep_draws, chosen, backbone, extractor, with_prompt), "seconds": time.perf_counter() - t0}


def report_on(rep_draws, chosen, backbone, extractor, with_prompt):
    """``chosen`` (log-odds, low-level weight, crops) on ``rep_draws``, per split, beside its ablations
    (each choice undone: without the crops is the default before them), discriminant margins on the main
    view's CLIP evidence alone (the default before the regression and the stream) and the baselines, all
    on the same draws."""
    fixed = _fixed()
    methods = {"occ (chosen)": chosen, "without the native-resolution crops": (chosen[0], chosen[1], False),
               "without the low-level stream": (chosen[0], None, chosen[2]),
               "without the regression (discriminant margins)": (None, chosen[1], chosen[2]),
               "discriminant margins, main view's CLIP evidence only": (None, None, False)}
    seen, ablations = {chosen}, {}
    for m, key in list(methods.items())[1:]:
        if key not in seen:
            seen.add(key)
            ablations[m] = key
    rep_rows, base_rows = [], []
    for seed, d in rep_draws:
        tag = {"seed": seed, "split": d["split"]}
        rows = run_candidates(d, backbone, extractor, seed, *fixed, candidates=[chosen], order_check=True,
                              launder=True, with_prompt=with_prompt)
        rows[0]["method"] = "occ (chosen)"
        for m, key in ablations.items():
            rows.append(run_candidates(d, backbone, extractor, seed, *fixed, candidates=[key], launder=True)[0]
                        | {"method": m})
        rep_rows += [r | tag for r in rows]
        base_rows.append(baselines(d, extractor, seed) | tag)
        print(f"report {d['split']} seed {seed}: " + "; ".join(
            f"{r['method']}: ver {r['verification_auc']:.3f} AUROC {r['open_set_auroc']:.3f} "
            f"closed {r['closed_set_accuracy']:.3f} photos {r['real_accepted']:.3f}" for r in rows) +
            f"; LR best block {base_rows[-1]['lr_best_block_verification_auc']:.3f}, "
            f"USIA AUROC {base_rows[-1]['usia_open_set_auroc']:.3f}", flush=True)
    splits = sorted({r["split"] for r in rep_rows})
    per_split = {}
    for sp in splits:
        by_method = {}
        for r in rep_rows:
            if r["split"] == sp:
                by_method.setdefault(r["method"], []).append(r)
        per_split[sp] = {"occ": {m: summarise(v) for m, v in by_method.items()},
                         "baselines": summarise([b for b in base_rows if b["split"] == sp])}
    return {"report_splits": splits,
            "chosen": {"discriminative": chosen[0], "low_weight": chosen[1], "crops": chosen[2]},
            "report_rows": rep_rows, "baselines": base_rows, "per_split": per_split,
            "worst_split": worst({sp: v["occ"]["occ (chosen)"] for sp, v in per_split.items()})}


def shipped_default(report: dict) -> dict:
    """What occ ships: the candidate with the best criterion averaged over every content-matched
    validation grid (each group's *reported* figures used the choice made on the other group alone; no
    figure is reported for the pooled choice as a whole)."""
    def key(g):  # (a file written before the grid's keys were kept unsummarised holds them as summaries)
        return tuple(None if v is None else round(float(v), 6) for v in
                     (g[k]["mean"] if isinstance(g[k], dict) else g[k] for k in ("discriminative", "low_weight")))

    grids = [{key(g): criterion({k: v["mean"] for k, v in g.items() if isinstance(v, dict)})
              for g in r["validation_grid"]} for r in report["rotations"] if r["kind"] == "content-matched"]
    keys = set.intersection(*(set(g) for g in grids))
    pooled = {k: float(np.mean([g[k] for g in grids])) for k in keys}
    ranked = sorted(pooled, key=lambda k: -pooled[k])
    return {"rule": "best criterion averaged over the content-matched validation grids",
            "chosen": {"discriminative": ranked[0][0], "low_weight": ranked[0][1]},
            "ranked": [{"discriminative": k[0], "low_weight": k[1], "pooled_criterion": round(pooled[k], 4)}
                       for k in ranked]}


def evidence_cost(data, backbone, n=32) -> dict:
    """Seconds per image (decoded image in memory, this process's threads, batches of 16) of each part of
    the evidence, at 256 px and at the devset's native 1024 px: the low-level evidence, the main view
    through the trunk, and the native-resolution crops through it (cropping included)."""
    from PIL import Image

    from occ.evidence import native_crops
    from occ.lowlevel import lowlevel_features

    side = backbone.preprocess.size
    parts = {"low-level": lambda ims: [lowlevel_features(im) for im in ims],
             "main view (trunk)": lambda ims: backbone.trunk(backbone.preprocess(ims)),
             "crops (trunk)": lambda ims: backbone.trunk(backbone.preprocess(
                 [c for im in ims for c in native_crops(im, side)]))}
    out = {}
    for label, paths in (("normalised 256 px", [p for p, _ in data["t2icmp-sdxl"][:n]]),
                         ("native 1024 px", sorted((DEVSET / "generated" / "t2icmp-sdxl").iterdir())[:n])):
        images = [Image.open(p).convert("RGB") for p in paths]
        parts["main view (trunk)"](images[:2])  # warm-up
        out[label] = {}
        for part, run in parts.items():
            t0 = time.perf_counter()
            for i in range(0, len(images), 16):
                run(images[i:i + 16])
            out[label][part] = (time.perf_counter() - t0) / len(images)
    return out


TABLE_ROWS = (("verification AUC", "verification_auc", "lr_best_block_verification_auc", "LR best block"),
              ("open-set AUROC", "open_set_auroc", "usia_open_set_auroc", "USIA"),
              ("closed-set accuracy", "closed_set_accuracy", "usia_closed_set_accuracy", "USIA"),
              ("known named correctly", "known_correct", "usia_known_correct", "USIA"),
              ("unknown images rejected", "unknown_rejected", "usia_unknown_rejected", "USIA"),
              ("unknown generator rejected", "unknown_generators_rejected", None, None),
              ("real photos accepted", "real_accepted", "usia_real_accepted", "USIA"),
              ("own accept clean / jpeg:75 / resize:0.5", "own_accept_clean", None, None))


def table(report: dict) -> str:
    """Markdown tables of a results file: per report split, occ's methods beside the baselines."""
    out = []

    def cell(summary, key):
        v = summary.get(key)
        return "" if v is None else f"{v['mean']:.3f} +- {v['std']:.3f}"

    for rot in report["rotations"]:
        chosen = ", ".join(f"{k} {v}" for k, v in rot["chosen"].items())
        for sp, r in rot["per_split"].items():
            methods = list(r["occ"])
            out.append(f"\n**{sp}** (chosen on {', '.join(rot['validation_splits'])}: {chosen})\n")
            out.append("| | " + " | ".join(methods) + " | baseline |")
            out.append("|---" * (len(methods) + 2) + "|")
            for label, key, base, base_name in TABLE_ROWS:
                if key == "own_accept_clean":
                    cells = [" / ".join(f"{r['occ'][m][k]['mean']:.3f}" for k in
                                        ("own_accept_clean", "own_accept_jpeg:75", "own_accept_resize:0.5")
                                        if k in r["occ"][m]) for m in methods]
                else:
                    cells = [cell(r["occ"][m], key) for m in methods]
                b = f"{base_name} {cell(r['baselines'], base)}" if base else ""
                if key == "verification_auc":
                    b += f"; LR embedding {cell(r['baselines'], 'lr_embedding_verification_auc')}"
                out.append(f"| {label} | " + " | ".join(cells) + f" | {b} |")
            kinds = sorted(k for k in r["occ"]["occ (chosen)"] if k.startswith("real_accepted:"))
            if kinds:
                out.append("| photos accepted per kind (chosen) | " + ", ".join(
                    f"{k.split(':', 1)[1]} {r['occ']['occ (chosen)'][k]['mean']:.3f}" for k in kinds)
                           + " |" * (len(methods) + 1))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, help="print the markdown tables of a results file and exit")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--known", type=int, default=4, help="sources enrolled per GAN-era draw")
    ap.add_argument("--protocol", nargs="+", choices=("content", "gan", "native"), default=["content", "gan"],
                    help="native: the t2icmp-* split at the generators' own 1024 px (no selection: occ's defaults)")
    ap.add_argument("--no-prompt", action="store_true", help="skip the previous default (slow on a CPU)")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if args.out is None:
        ap.error("--out is required")

    from occ.backbones import load_backbone
    from occ.features import FeatureExtractor

    data = normalise_devset()
    photo_labels = sorted({lab for c in CONTENT.values() for lab in c["real"]} | {lab for f in FOLDS.values()
                                                                                 for lab in f["real"]})
    EXCLUDED.update(bank_copies(photo_labels))
    if "native" in args.protocol:
        native = native_devset(CONTENT["t2icmp"]["generators"] + CONTENT["t2icmp"]["real"])
    backbone = load_backbone(None)
    extractor = FeatureExtractor(backbone)
    report = {"protocol": __doc__, "args": vars(args) | {"out": str(args.out)}, "rotations": [],
              "evidence_seconds_per_image": evidence_cost(data, backbone),
              "photos_left_out_as_bank_copies": sorted(EXCLUDED)}
    print("evidence, seconds per image:", report["evidence_seconds_per_image"], flush=True)
    seeds = range(args.seeds)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, allow_nan=True))

    if "content" in args.protocol:
        for val, rep in (("imagen", "t2icmp"), ("t2icmp", "imagen")):
            val_draws = [(s, content_draw(data, val, s, args.shots)) for s in seeds]
            rep_draws = [(s, content_draw(data, rep, s, args.shots)) for s in seeds]
            if CONTENT[rep]["few"]:
                rep_draws += [(s, content_draw(data, rep, s, args.shots, few=True)) for s in seeds]
            report["rotations"].append({"kind": "content-matched", "validation": val, "report": rep,
                                        **rotation(val_draws, rep_draws, backbone, extractor, not args.no_prompt)})
            save()
    if "native" in args.protocol:
        rep_draws = [(s, content_draw(native, "t2icmp", s, args.shots) | {"split": "t2icmp native"}) for s in seeds]
        report["rotations"].append({"kind": "native", "validation": None, "report": "t2icmp native",
                                    "validation_splits": ["none: occ's defaults"],
                                    **report_on(rep_draws, (DEFAULT_DISCRIMINATIVE, DEFAULT_LOW_WEIGHT, DEFAULT_CROPS),
                                                backbone, extractor, not args.no_prompt)})
        save()
    if "gan" in args.protocol:
        for val, rep in (("A", "B"), ("B", "A")):
            val_draws = [(s, draw(data, val, s, args.known, args.shots) | {"split": f"GAN-era {val}"}) for s in seeds]
            rep_draws = [(s, draw(data, rep, s, args.known, args.shots) | {"split": f"GAN-era {rep}"}) for s in seeds]
            report["rotations"].append({"kind": "gan-era", "validation": val, "report": rep,
                                        **rotation(val_draws, rep_draws, backbone, extractor, not args.no_prompt)})
            save()
    content = {sp: v for r in report["rotations"] if r["kind"] == "content-matched" for sp, v in r["per_split"].items()}
    if content:
        report["content_matched_worst_split"] = worst({sp: v["occ"]["occ (chosen)"] for sp, v in content.items()})
        report["shipped_default"] = shipped_default(report)
        print(json.dumps(report["shipped_default"], indent=1))
    save()
    print(json.dumps({sp: {"occ": {m: {k: round(x["mean"], 3) for k, x in v.items()} for m, v in r["occ"].items()},
                           "baselines": {k: round(x["mean"], 3) for k, x in r["baselines"].items()}}
                      for rot in report["rotations"] for sp, r in rot["per_split"].items()}, indent=1))


if __name__ == "__main__":
    main()
