"""How the default bank's variety moves false accepts of real photos unlike it (issue 13, point 6).

Per bank (the old 261-photo bank from git, the current one) and seed: a fresh registry; each of the
``--labels`` devset generators is enrolled in turn with ``occ.enrollment.enroll`` and the default
verifier (K shots from half of its groups, split by group as in ``devset.py``), the bank given as its
non-target folder (what ``occ enroll NAME SHOTS --no-default-negatives --negatives BANK`` does; the
registry's earlier sources are negatives as usual). Then ``occ.attribution.Attributor`` over the
registry decides every devset real photo (real-imagenet, real-dif, real-cnndet: none is in either bank)
and every held-out image of the enrolled labels. Reported per bank (mean and range over seeds):

* ``real_accepted``: share of real photos attributed to some source (per real label too);
* per source: TPR on its own held-out images at its stored threshold, and ROC AUC (raw scores) of its
  held-out images against the real photos and against everything else held out, so a bank that only
  moves thresholds (TPR and false accepts down together, AUC flat) shows as such.

    python bench/bank.py --out bench/results/bank.json
    python bench/bank.py --banks new:photo+document --seeds 1 --out bench/results/bank-no-screenshots.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devset as D  # noqa: E402
from generalise import write_provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OLD_REF = "8b34029"  # the last commit with the 261-photo bank
REALS = ("real-imagenet", "real-dif", "real-cnndet")


def old_bank(ref: str, work: Path, keep: set[str] | None = None) -> Path:
    """The bank of commit ``ref`` in ``work`` (git archive; the work tree does not move), cut to the files
    whose path in their package is in ``keep`` (None: all): a folder with its own PROVENANCE.csv."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "occ/data/negatives"], check=True,
                             capture_output=True).stdout
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    folder = work / "occ" / "data" / "negatives"
    if keep is not None:
        with (folder / "PROVENANCE.csv").open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, [r for r in reader if r["path_in_package"] in keep]
        write_provenance(folder, fields, rows)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description="false accepts of real photos: old vs new default bank")
    ap.add_argument("--devset", type=Path, default=D.DEVSET)
    ap.add_argument("--labels", nargs="+", default=["cpondoc-dalle2", "imagen-ldif", "imagen-dmin", "sdcheat-sd15"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--view", default="normalised", choices=["native", "normalised"])
    ap.add_argument("--old-ref", default=OLD_REF, help="git commit holding the old bank")
    ap.add_argument("--banks", nargs="+", default=["old", "new"],
                    help="old, new, or new:KIND+KIND (the current bank's files of those kinds, e.g. new:photo)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from occ.attribution import Attributor
    from occ.backbones import load_backbone
    from occ.enrollment import enroll
    from occ.features import FeatureExtractor
    from occ.metrics import roc_auc
    from occ.negatives import BANK_DIR
    from occ.registry import Registry

    rows = D.manifest(args.devset)
    keep = [i for i, r in enumerate(rows) if r["label"] in set(args.labels) | set(REALS)]
    rows = [rows[i] for i in keep]
    labels = np.array([r["label"] for r in rows])
    paths = D.view_paths(rows, args.devset, args.view)
    backbone = load_backbone()
    extractor = FeatureExtractor(backbone)
    tmp = Path(tempfile.mkdtemp(prefix="occ-bank-bench-"))
    banks = {}
    for spec in args.banks:
        if spec == "old":
            banks[spec] = old_bank(args.old_ref, tmp)
        elif spec == "new":
            banks[spec] = BANK_DIR
        elif spec.startswith("new:"):
            kinds = set(spec[4:].split("+"))
            with (BANK_DIR / "PROVENANCE.csv").open() as f:
                files = [r["file"] for r in csv.DictReader(f) if r["kind"] in kinds]
            banks[spec] = tmp / spec.replace(":", "-").replace("+", "-")
            banks[spec].mkdir()
            for name in files:
                shutil.copyfile(BANK_DIR / name, banks[spec] / name)
        else:
            raise SystemExit(f"--banks: unknown bank {spec!r}")
    bank_sizes = {name: len(list(d.glob("*.jpg"))) for name, d in banks.items()}
    real_idx = np.where(np.isin(labels, REALS))[0]

    runs = []
    for seed in args.seeds:
        splits = {label: D.split(rows, label, args.shots, seed)[:2] for label in args.labels}
        held_out = np.concatenate([test for _, test in splits.values()])
        test = np.concatenate([held_out, real_idx])
        for bank_name, bank_dir in banks.items():
            registry = Registry(tmp / f"reg-{len(runs)}")
            start = time.perf_counter()
            for label in args.labels:
                train, _ = splits[label]
                enroll(registry, label, [paths[i] for i in train], backbone=backbone, extractor=extractor,
                       negatives=[bank_dir], use_bank=False)
            enroll_s = time.perf_counter() - start
            attributor = Attributor.from_registry(registry, backbone, extractor=extractor)
            decisions = []
            for i in range(0, len(test), 256):
                chunk = test[i:i + 256]
                feats = extractor.load([paths[j] for j in chunk], attributor.blocks)
                decisions += attributor.decide(feats.trunk, [paths[j] for j in chunk])
            by_idx = dict(zip(test.tolist(), decisions))
            reals = [by_idx[i] for i in real_idx]
            entry = {"seed": seed, "bank": bank_name, "enroll_seconds": round(enroll_s, 1),
                     "real_accepted": round(float(np.mean([d.source is not None for d in reals])), 4),
                     "real_accepted_by_label": {
                         r: round(float(np.mean([by_idx[i].source is not None for i in real_idx
                                                 if labels[i] == r])), 4) for r in REALS},
                     "sources": {}}
            for label in args.labels:
                own = splits[label][1]
                raw_own = np.array([by_idx[i].raw[label] for i in own])
                raw_real = np.array([by_idx[i].raw[label] for i in real_idx])
                raw_rest = np.array([by_idx[i].raw[label] for i in test if labels[i] != label])
                entry["sources"][label] = {
                    "n_held_out": len(own),
                    "tpr": round(float(np.mean([label in by_idx[i].accepted for i in own])), 4),
                    "real_accepted": round(float(np.mean([label in d.accepted for d in reals])), 4),
                    "auc_vs_real": round(roc_auc(raw_own, raw_real), 4),
                    "auc_vs_all": round(roc_auc(raw_own, raw_rest), 4),
                }
            runs.append(entry)
            print(json.dumps(entry), flush=True)

    def agg(values):
        v = np.asarray(values, dtype=float)
        return {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}

    summary = {}
    for bank_name in banks:
        rs = [r for r in runs if r["bank"] == bank_name]
        summary[bank_name] = {
            "bank_images": bank_sizes[bank_name],
            "real_accepted": agg([r["real_accepted"] for r in rs]),
            "real_accepted_by_label": {k: agg([r["real_accepted_by_label"][k] for r in rs]) for k in REALS},
            "tpr_mean": agg([np.mean([s["tpr"] for s in r["sources"].values()]) for r in rs]),
            "auc_vs_real_mean": agg([np.mean([s["auc_vs_real"] for s in r["sources"].values()]) for r in rs]),
            "auc_vs_all_mean": agg([np.mean([s["auc_vs_all"] for s in r["sources"].values()]) for r in rs]),
            "per_source": {label: {k: agg([r["sources"][label][k] for r in rs])
                                   for k in ("tpr", "real_accepted", "auc_vs_real", "auc_vs_all")}
                           for label in args.labels},
        }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "protocol": __doc__.split("    python")[0].strip(), "command": " ".join(sys.argv),
            "backbone": backbone.fingerprint, "view": args.view, "shots": args.shots, "labels": args.labels,
            "old_ref": args.old_ref, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
