"""Fit seconds per verifier for each method, measured alone (issue: the seeds' other methods).

One target (sdcheat-sd15), normalised view, seed 0, K = 5, 10, 25, the default negative bank (261
photos), features already cached: the training cost of each method without what else runs on the
machine (the fit times inside the devset runs depend on that).

    python bench/fit_times.py     # writes bench/results/fit_times.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from occ.testing import devset as D


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options; -h says what it does
    from occ.backbones import load_backbone
    from occ.config import VerifierConfig
    from occ.features import FeatureExtractor
    from occ.negatives import bank_paths
    from occ.verifier import Verifier

    backbone = load_backbone()
    extractor = FeatureExtractor(backbone)
    rows = D.manifest(D.DEVSET)
    methods = {"prompt": VerifierConfig(), "cvar-auc": VerifierConfig().with_settings(loss="cvar-auc"),
               "sam": VerifierConfig().with_settings(sam=True), "probe": VerifierConfig(kind="probe")}
    blocks = Verifier().kv_blocks(backbone)
    bank = extractor.load(bank_paths(), blocks).trunk
    features = extractor.load(D.view_paths(rows, D.DEVSET, "normalised"), blocks).trunk
    seconds = {}
    for shots in (5, 10, 25):
        train, _, _ = D.split(rows, "sdcheat-sd15", shots, 0)
        for name, config in methods.items():
            start = time.perf_counter()
            Verifier(config.with_settings(seed=0)).fit(backbone, features.select(list(train)), bank)
            seconds[f"{name} K={shots}"] = round(time.perf_counter() - start, 2)
            print(name, shots, seconds[f"{name} K={shots}"], flush=True)
    out = Path(__file__).resolve().parent / "results" / "fit_times.json"
    what = __doc__.split("\n\n")[1].replace("\n", " ")
    out.write_text(json.dumps({"what": what, "command": "python bench/fit_times.py", "target": "sdcheat-sd15",
                               "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
