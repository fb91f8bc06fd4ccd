"""Open-set decision rules on the joint model's own outputs (issue 24: the open-set side).

    python bench/openset_rules.py --out bench/results/openset_rules.json
    python bench/openset_rules.py --groups imagen --report t2icmp --out bench/results/openset_rules.json

Question: on generators drawn from the same prompts, can the decision (which source is named, and when
the answer is unknown) take more of the known images and fewer photos and unknown generators from the
same fitted model, or does every rule trade one for the other? Draws, enrollment and the fit are those of
``bench/generalise.py --protocol content`` (its :func:`content_draw`, ``occ.enrollment.enroll`` into a
real registry, ``occ.openset.refit`` with occ's defaults). The shipped rule's names are checked against
``occ.attribution.Attributor``'s decisions for every image of every draw (the figures are those users get).

Candidates, each computed from the fitted model's outputs for the same test images:

* **shipped**: the best source by raw score (log-odds above every other class, the non-target class
  counting 0), if it reaches its threshold and lies within its radius (``occ.joint`` point 6);
* **gates** added to the shipped rule, each a further reason to answer unknown: a pooled detector
  (``det >= t``: a class-balanced logistic regression of every source's training rows against the
  non-target rows, on the model's whitened projections, at the model's L2 strength); the best source's
  log-odds against the non-target class alone (``odds >= m``); a tighter radius (``dist <= q``: a share
  of the squared radius); a margin above the threshold (``raw >= thr + m``);
* **two-stage**: the pooled detector decides generated or not (``det >= t``), the sources compete only
  with each other (the best source's log-odds above the next source's, ``sib >= m``), within its radius:
  the non-target class no longer competes per source.

Rule, fixed before the report group is run: a candidate replaces the shipped rule only if, on every
design split, it raises the mean of known-correct and unknown-rejected, accepts no more photos, and
lowers unknown-rejected by at most 0.01. The report group (``--report``) is run only to show what the
candidates do where nothing was chosen; no choice is made on it.
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


def outputs(d, seed, backbone, extractor) -> dict:
    """The fitted model's outputs for draw ``d``'s test images, and the pooled detector's scores."""
    from sklearn.linear_model import LogisticRegression

    from occ.openset import refit, training_rows

    kp = [(p, s) for s in d["known"] for p in d["tests"][s]]
    paths = [p for p, _ in kp] + d["unknown_gen"] + d["real"]
    with tempfile.TemporaryDirectory(prefix="occ-openset-rules-") as tmp:
        registry, _ = G.enroll_defaults(Path(tmp) / "reg", d, seed, backbone, extractor)
        model = refit(registry, backbone, extractor=extractor)
        sources, nontarget = training_rows(registry, backbone, extractor=extractor, settings=model.settings_)
        names = model.names_
        trunk = extractor.load(paths, (), crops=model.settings_.crops).trunk
        x = model.settings_.rows(trunk.cls_array, trunk.low, trunk.crops)
        dec = model.decide_arrays(x)
        G.check_against_product(registry, backbone, extractor, paths,
                                [names[i] if i >= 0 else None for i in dec.named], "the study's shipped rule")
    geometry = model.geometry_
    train = np.concatenate([geometry.project(c.features) for c in [sources[n] for n in names] + [nontarget]])
    label = np.r_[np.ones(sum(len(sources[n]) for n in names)), np.zeros(len(nontarget))]
    detector = LogisticRegression(C=model.discriminative or 1.0, class_weight="balanced", max_iter=3000)
    y = geometry.project(x)
    det = detector.fit(train, label).decision_function(y)
    rows = np.arange(len(x))
    return {"kind": np.array(["known"] * len(kp) + ["gen"] * len(d["unknown_gen"]) + ["photo"] * len(d["real"])),
            "truth": [s for _, s in kp] + [None] * (len(paths) - len(kp)), "names": names,
            "named": dec.named, "best": dec.best, "raw": dec.raw[rows, dec.best],
            "thr": np.array([model.calibrations_[names[i]].threshold for i in dec.best]),
            "odds": model.log_odds_(y), "within": dec.within, "det": det,
            "dist": geometry.distances_of(y)[rows, dec.best] / np.array([model.radii_[names[i]] for i in dec.best])}


def rates(o, named: np.ndarray) -> dict[str, float]:
    """Figures of one draw from a column per image (-1: unknown)."""
    kind = o["kind"]
    correct = np.array([n >= 0 and o["names"][n] == t for n, t in zip(named, o["truth"])])
    accepted = named >= 0
    return {"known_correct": float(correct[kind == "known"].mean()),
            "unknown_rejected": float(1 - accepted[kind != "known"].mean()),
            "unknown_generators_rejected": float(1 - accepted[kind == "gen"].mean()),
            "photos_accepted": float(accepted[kind == "photo"].mean())}


def candidates() -> dict:
    """name -> function of a draw's outputs giving the named column per image (-1: unknown)."""
    def gate(keep):
        return lambda o: np.where(keep(o), o["named"], -1)

    def two_stage(t, m):
        def named(o):
            odds, rows = o["odds"], np.arange(len(o["odds"]))
            best = odds.argmax(1)
            rest = odds.copy()
            rest[rows, best] = -np.inf
            sib = odds[rows, best] - (rest.max(1) if odds.shape[1] > 1 else 0.0)
            return np.where((o["det"] >= t) & (sib >= m) & o["within"][rows, best], best, -1)
        return named

    out = {"shipped": lambda o: o["named"]}
    for t in (-1.0, 0.0, 1.0):
        out[f"gate det >= {t:g}"] = gate(lambda o, t=t: o["det"] >= t)
    for m in (0.5, 1.0, 2.0):
        out[f"gate odds >= {m:g}"] = gate(lambda o, m=m: o["odds"][np.arange(len(o["odds"])), o["best"]] >= m)
    for q in (0.8, 0.6):
        out[f"gate dist <= {q:g} radius"] = gate(lambda o, q=q: o["dist"] <= q)
    for m in (0.5, 1.0):
        out[f"gate raw >= thr + {m:g}"] = gate(lambda o, m=m: o["raw"] >= o["thr"] + m)
    for t in (-1.0, 0.0, 1.0):
        for m in (0.0, 0.5, 1.0, 2.0):
            out[f"two-stage det >= {t:g}, sib >= {m:g}"] = two_stage(t, m)
    return out


def passes(design: dict, name: str) -> bool:
    """The rule of the module doc, over every design split."""
    for split in design.values():
        new, old = split[name], split["shipped"]
        if not (new["balance"]["mean"] > old["balance"]["mean"]
                and new["photos_accepted"]["mean"] <= old["photos_accepted"]["mean"]
                and new["unknown_rejected"]["mean"] >= old["unknown_rejected"]["mean"] - 0.01):
            return False
    return True


def run(data, groups, seeds, shots, backbone, extractor) -> dict:
    by_split: dict[str, dict[str, list[dict]]] = {}
    for group in groups:
        for few in ([False, True] if G.CONTENT[group]["few"] else [False]):
            for seed in seeds:
                d = G.content_draw(data, group, seed, shots, few=few)
                o = outputs(d, seed, backbone, extractor)
                for name, rule in candidates().items():
                    r = rates(o, rule(o))
                    r["balance"] = 0.5 * (r["known_correct"] + r["unknown_rejected"])
                    by_split.setdefault(d["split"], {}).setdefault(name, []).append(r)
                print(f"{d['split']} seed {seed}: shipped {by_split[d['split']]['shipped'][-1]}", flush=True)
    return {split: {name: G.summarise(rows) for name, rows in cands.items()} for split, cands in by_split.items()}


def main() -> None:
    ap = G.study_parser("open-set decision rules on the joint model's outputs")
    ap.add_argument("--groups", nargs="+", default=["imagen"], help="design groups (CONTENT of generalise.py)")
    ap.add_argument("--report", nargs="*", default=[], help="groups run only to show the candidates there")
    args = ap.parse_args()
    data, backbone, extractor = G.content_study()
    t0 = time.perf_counter()
    seeds = list(range(args.seeds))
    design = run(data, args.groups, seeds, args.shots, backbone, extractor)
    chosen = [n for n in candidates() if n != "shipped" and passes(design, n)]
    report = run(data, args.report, seeds, args.shots, backbone, extractor) if args.report else {}
    out = {"command": " ".join(sys.argv), "rule": "raises known/unknown balance on every design split, photos not up, "
           "unknown rejected down by at most 0.01", "passing": chosen, "design": design, "report": report,
           "seconds": time.perf_counter() - t0}
    for title, part in (("design", design), ("report (nothing chosen here)", report)):
        for split, cands in part.items():
            print(f"{title}: {split}")
            for name, s in cands.items():
                print(f"  {name:32s} " + " ".join(f"{k} {v}" for k, v in G.mean_std(
                    s, ["known_correct", "unknown_rejected", "photos_accepted", "balance"]).items()))
    print("passing the rule:", chosen or "none")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
