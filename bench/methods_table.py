"""The methods table (issue: the seeds' other methods): one row per method, view and shot count.

Reads results the other benchmarks wrote, on the same splits:

* mean ROC AUC over the devset targets, and mean fit seconds per verifier: ``bench/results/devset.json``
  (prompt, the default) and ``bench/results/methods/*.json`` (prompt + cvar-auc, prompt + SAM, probe),
  restricted to the seeds every method ran (the method runs use seed 0 only);
* open-set AUROC known-vs-unknown and OSCR: ``bench/results/openset.json``;
* fit seconds per verifier measured alone, one target, per method and K: ``bench/results/fit_times.json``
  (the fit times inside the runs above depend on what else ran beside them).

    python bench/methods_table.py      # writes bench/results/methods.json and methods.md
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FILES = {"prompt": RESULTS / "devset.json", "cvar-auc": RESULTS / "methods" / "prompt-cvar-auc.json",
         "sam": RESULTS / "methods" / "prompt-sam.json", "probe": RESULTS / "methods" / "probe.json"}


def main() -> None:
    runs = {m: json.loads(p.read_text())["runs"] for m, p in FILES.items() if p.exists()}
    seeds = set.intersection(*[{r["seed"] for r in rs} for rs in runs.values()])
    openset = json.loads((RESULTS / "openset.json").read_text())["runs"] if (RESULTS / "openset.json").exists() else []
    table = defaultdict(lambda: defaultdict(list))
    for method, rs in runs.items():
        for r in rs:
            if r["seed"] in seeds:
                key = (r["view"], r["shots"], method)
                table[key]["auc"].append(r["auc"])
                table[key]["fit_seconds"].append(r["fit_seconds"])
    for r in openset:
        key = (r["view"], r["shots"], r["method"])
        table[key]["openset_auroc"].append(r["auroc"])
        table[key]["oscr"].append(r["oscr"])
    clean = RESULTS / "fit_times.json"
    clean = json.loads(clean.read_text())["seconds"] if clean.exists() else {}
    rows = []
    for (view, shots, method), vals in sorted(table.items()):
        row = {"view": view, "shots": shots, "method": method}
        for k, v in vals.items():
            row[k] = round(float(np.mean(v)), 4)
            row[f"n_{k}"] = len(v)
        row["fit_seconds_alone"] = clean.get(f"{method} K={shots}")
        rows.append(row)
    (RESULTS / "methods.json").write_text(json.dumps({"seeds": sorted(seeds), "rows": rows}, indent=1))
    lines = ["# Methods on the devset (same splits)", "",
             f"Mean over the 6 targets, seed(s) {sorted(seeds)} for AUC and fit time; open-set figures averaged "
             "over the splits of `bench/openset.py`. n = number of runs behind each figure.", "",
             "| view | K | method | mean AUC (n) | open-set AUROC (n) | OSCR | fit s / verifier, alone |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['view']} | {r['shots']} | {r['method']} | {r.get('auc', '')} ({r.get('n_auc', 0)}) | "
                     f"{r.get('openset_auroc', '')} ({r.get('n_openset_auroc', 0)}) | {r.get('oscr', '')} | "
                     f"{r.get('fit_seconds_alone', '')} |")
    (RESULTS / "methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
