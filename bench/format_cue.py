"""Is JPEG a "photo" cue? The shipped bank is JPEG (quality 90, ``tools/build_negative_bank.py``).

    python bench/format_cue.py --out bench/results/format_cue.json [--seeds 3]

On the content-matched draws of ``bench/generalise.py`` (``imagen-*`` and ``t2icmp-*``, 10 shots,
occ's shipped defaults, the product path: ``occ.enrollment.enroll``, the registry's refit,
``occ.attribution.Attributor``), the test images of the enrolled sources and the photos unlike the bank
are scored clean and after each of ``occ eval --perturb``'s ``jpeg:90``, ``jpeg:75`` and ``resize:0.5``.
Reported per draw: the rate at which a source's own images are accepted, and the rate at which photos
(per kind) are named as some source. If JPEG carries "photo", a JPEG copy of a generated image is
rejected more often and a JPEG copy of a photo is accepted less often, the more so at the bank's own
quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

SPECS = ("jpeg:90", "jpeg:75", "resize:0.5")


def photo_rates(d, dec) -> dict:
    return {"all": float(np.mean([dec[str(p)].source is not None for p in d["real"]])),
            **G.photos_accepted_by_kind(d, dec)}


def mean_std(values) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shots", type=int, default=10)
    args = ap.parse_args()

    from occ.perturb import parse_perturb_spec

    data, backbone, extractor = G.content_study()
    rows = []

    def save(**extra):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"protocol": __doc__, "args": vars(args) | {"out": str(args.out)},
                                        "rows": rows, **extra}, indent=1))

    for group in ("imagen", "t2icmp"):
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            d = G.content_draw(data, group, seed, args.shots)
            known = [p for s in d["known"] for p in d["tests"][s]]
            with tempfile.TemporaryDirectory(prefix="occ-format-cue-") as tmp:
                registry, _ = G.enroll_defaults(Path(tmp) / "reg", d, seed, backbone, extractor)
                row = {"split": d["split"], "seed": seed, "known": d["known"]}
                for spec in (None, *SPECS):
                    transform = None if spec is None else parse_perturb_spec(spec)[0]
                    dec = {x.path: x for x in G.decisions(registry, backbone, extractor, known + d["real"], transform)}
                    row[spec or "clean"] = {"own_accept": G.own_accept(d, dec), "photos_accepted": photo_rates(d, dec)}
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("split", "seed")} | {
                k: {"own": round(row[k]["own_accept"], 3), "photos": round(row[k]["photos_accepted"]["all"], 3)}
                for k in ("clean", *SPECS)}), flush=True)
            save()
    summary = {}
    for split in sorted({r["split"] for r in rows}):
        rs = [r for r in rows if r["split"] == split]
        summary[split] = {k: {"own_accept": mean_std([r[k]["own_accept"] for r in rs]),
                              "photos_accepted": {kind: mean_std([r[k]["photos_accepted"][kind] for r in rs])
                                                  for kind in rs[0][k]["photos_accepted"]}}
                          for k in ("clean", *SPECS)}
    save(summary=summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
