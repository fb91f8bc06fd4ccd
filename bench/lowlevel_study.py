"""What the low-level stream carries into the joint decision on look-alike generators (issue 24).

    python bench/lowlevel_study.py --out bench/results/lowlevel_<version>.json
    python bench/lowlevel_study.py --baseline bench/results/lowlevel_residual-v1.json --out ...

The stream's evidence (``occ.lowlevel``) is a property of the code, not a setting, so one run measures
the ``occ.lowlevel.VERSION`` it imports; a second run, from a checkout with another version, reads the
first one's file (``--baseline``) and applies the rule to both. Per version the joint model is refitted
with the shipped settings and with the stream weighed in differently: ``components 128`` (the stream
whitened to 128 directions of the non-target rows instead of ``occ.openset.LOW_COMPONENTS``), ``weight
0.6`` (twice the shipped weight) and ``no stream`` (CLIP evidence alone: what the stream adds). Splits:
the content-matched draws of ``bench/generalise.py`` (imagen many and few: design; t2icmp many and few:
report, deciding nothing), 3 seeds, 10 shots, sources enrolled with occ's defaults
(``generalise.refit_figures``, the shipped candidate checked against ``occ.attribution``).

**Rule**, fixed before the first fused run: a (version, candidate) other than the baseline version's
shipped rows is adopted if on the design splits (mean of many and few) its criterion is at least 0.01
above the baseline's shipped rows, its verification AUC is not lower and its photos accepted are not
higher; the best such criterion wins. The report splits are then read beside it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

from occ.joint import Stream  # noqa: E402
from occ.lowlevel import DIMS, VERSION  # noqa: E402
from occ.openset import JointSettings  # noqa: E402


@dataclass
class Components(JointSettings):
    """The shipped settings with the stream whitened to ``components`` directions."""

    components: int = 128

    @property
    def stream(self) -> Stream | None:
        return None if self.low_weight is None else Stream(DIMS, self.components, float(self.low_weight))


CANDIDATES = {"shipped": JointSettings(), "components 128": Components(components=128),
              "weight 0.6": JointSettings(low_weight=0.6), "no stream": JointSettings(low_weight=None)}
FIGURES = ["verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct", "unknown_rejected",
           "real_accepted", "criterion"]


def decide(summaries: dict[str, dict], baseline: str) -> dict:
    """The rule over ``summaries`` (version -> a run's per-split summary), against ``baseline``'s shipped rows."""
    keys = ("criterion", "verification_auc", "real_accepted")
    design = {f"{v} {n}": tuple(G.design_mean(s, k)[n] for k in keys) for v, s in summaries.items()
              for n in s["imagen many"]}
    base = design[f"{baseline} shipped"]
    passing = [k for k, (c, auc, photos) in design.items() if k != f"{baseline} shipped"
               and c >= base[0] + 0.01 and auc >= base[1] and photos <= base[2]]
    return {"design": {k: dict(zip(keys, v)) for k, v in design.items()},
            "passing": passing, "chosen": max(passing, key=lambda k: design[k][0]) if passing else None}


def main() -> None:
    ap = G.study_parser("the low-level stream on the content-matched draws")
    ap.add_argument("--baseline", type=Path, help="another version's output of this bench, to decide against")
    args = ap.parse_args()
    norm, backbone, extractor = G.content_study()
    t0 = time.perf_counter()
    splits = {f"{g} {k}": (norm, g, k == "few") for g in ("imagen", "t2icmp") for k in ("many", "few")}
    figures = partial(G.refit_figures, backbone=backbone, extractor=extractor, candidates=CANDIDATES, product="shipped")
    per_split, summary = G.run_refit_study(splits, args.seeds, args.shots, figures)
    G.print_summary(summary, FIGURES)
    out = {"command": " ".join(sys.argv), "version": VERSION, "dims": DIMS, "per_split": summary, "rows": per_split,
           "seconds": time.perf_counter() - t0}
    if args.baseline:
        base = json.loads(args.baseline.read_text())
        out["rule"] = decide({base["version"]: base["per_split"], VERSION: summary}, base["version"])
        print("design:", {k: {m: round(x, 4) for m, x in v.items()} for k, v in out["rule"]["design"].items()})
        print("passing:", out["rule"]["passing"] or "none", "chosen:", out["rule"]["chosen"])
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
