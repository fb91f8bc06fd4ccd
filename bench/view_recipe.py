"""Which laundered training views keep a source's own images accepted after JPEG 75 and a 0.5 resize?

    python bench/view_recipe.py --groups imagen --out bench/results/view_recipe_imagen.json      # select
    python bench/view_recipe.py --groups t2icmp --recipes v1 CHOSEN --out bench/results/view_recipe_t2icmp.json

Why: on the content-matched draws a source's own images are accepted 17-18 points less often after
``jpeg:75`` than clean (issue 24 asks for at most 10). Each training image (shots and bank) is also seen
through ``DEFAULT_VIEWS`` laundered copies (``occ.evidence.LaunderedView``); this bench swaps the recipe
of those copies and nothing else:

- ``v1``: the shipped recipe before this bench (resize x0.5-0.9 p 0.5, blur p 0.3, crop 75-100 %, flip,
  JPEG q60-95 p 0.8);
- ``strong``: the same chain, harder and more often (resize x0.4-0.9 p 0.7, JPEG q50-90 p 0.9);
- ``split``: the views have roles, so every training image has each kind of copy: view 0 is re-encoded
  (crop, flip, JPEG q50-90, no resize), view 1 is downscaled (x0.4-0.8, crop, flip, then JPEG q60-95
  p 0.5), later views follow ``v1``.

Per recipe, group and seed: the "many" draw of ``bench/generalise.py``'s content-matched protocol,
enrolled and decided through the product path with every other default; the logistic-regression and
USIA baselines on the same shots (they see no laundered views, so they do not move with the recipe).

**Selection rule, fixed before any run**: on the selection group (``imagen``), the recipe with the
smallest laundering gap (own images accepted clean minus the mean of ``jpeg:75`` and ``resize:0.5``)
among those whose protocol criterion (``generalise.criterion``) is no more than 0.02 below ``v1``'s;
it is then reported on the other group (``t2icmp``) against ``v1``, never chosen there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalise as G  # noqa: E402

import occ.evidence as evidence  # noqa: E402
import occ.openset as openset  # noqa: E402

RECIPES = ("v1", "strong", "split")
SHIPPED = evidence.LaunderedView  # the recipe of occ.evidence, kept before any swap


def _jpeg(image, quality):
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _resize(image, f):
    from PIL import Image

    w, h = image.size
    return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)


def _crop_flip(image, rng):
    from PIL import Image

    w, h = image.size
    c = rng.uniform(0.75, 1.0)
    cw, ch = max(8, int(w * c)), max(8, int(h * c))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((x, y, x + cw, y + ch))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def recipe_view(recipe: str):
    """A LaunderedView class applying ``recipe`` (its own cache label, so recipes never share features)."""
    if recipe == "v1":
        return SHIPPED

    class View(SHIPPED):
        @property
        def label(self) -> str:
            return f"launder-{recipe}:{self.seed}:{self.index}"

        def apply(self, image):
            from PIL import ImageFilter

            digest = hashlib.sha256(self.label.encode() + image.tobytes()).digest()
            rng = random.Random(int.from_bytes(digest[:8], "big"))
            image = image.convert("RGB")
            if recipe == "strong":
                if rng.random() < 0.7:
                    image = _resize(image, rng.uniform(0.4, 0.9))
                if rng.random() < 0.3:
                    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
                image = _crop_flip(image, rng)
                return _jpeg(image, rng.randint(50, 90)) if rng.random() < 0.9 else image
            if self.index == 0:
                return _jpeg(_crop_flip(image, rng), rng.randint(50, 90))
            if self.index == 1:
                image = _crop_flip(_resize(image, rng.uniform(0.4, 0.8)), rng)
                return _jpeg(image, rng.randint(60, 95)) if rng.random() < 0.5 else image
            return SHIPPED(self.seed, self.index).apply(image)

    return View


def use_recipe(recipe: str) -> None:
    evidence.LaunderedView = recipe_view(recipe)  # training_views reads the module's name at each call
    openset._BANK_ROWS.clear()  # the bank's view rows are kept per process


def gap(row: dict) -> float:
    return row["own_accept_clean"] - 0.5 * (row["own_accept_jpeg:75"] + row["own_accept_resize:0.5"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--groups", nargs="+", choices=("imagen", "t2icmp"), default=["imagen"])
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    args = ap.parse_args()
    data, backbone, extractor = G.content_study()
    rows = []
    for group in args.groups:
        for seed in range(args.seeds):
            draw = G.content_draw(data, group, seed, 10)
            base = G.baselines(draw, extractor, seed)
            for recipe in args.recipes:
                use_recipe(recipe)
                start = time.time()
                (row,) = G.run_candidates(draw, backbone, extractor, seed, *G._fixed(), launder=True)
                row.update(base, recipe=recipe, group=group, seed=seed, criterion=G.criterion(row))
                row["laundering_gap"] = gap(row)
                rows.append(row)
                print(group, seed, recipe, {k: round(row[k], 3) for k in (
                    "verification_auc", "open_set_auroc", "known_correct", "unknown_rejected", "real_accepted",
                    "own_accept_clean", "own_accept_jpeg:75", "own_accept_resize:0.5", "criterion")},
                    f"{time.time() - start:.0f} s", flush=True)
    evidence.LaunderedView = SHIPPED
    summary = {g: {r: G.summarise([x for x in rows if x["group"] == g and x["recipe"] == r]) for r in args.recipes}
               for g in args.groups}
    out = {"protocol": __doc__, "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
           "rows": rows}
    if "imagen" in args.groups and "v1" in args.recipes:
        s = summary["imagen"]
        ok = [r for r in args.recipes if s[r]["criterion"]["mean"] >= s["v1"]["criterion"]["mean"] - 0.02]
        out["selected_on_imagen"] = min(ok, key=lambda r: s[r]["laundering_gap"]["mean"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))
    for g in args.groups:
        for r, s in summary[g].items():
            print(g, r, G.mean_std(s, (
                "verification_auc", "open_set_auroc", "closed_set_accuracy", "known_correct", "unknown_rejected",
                "real_accepted", "own_accept_clean", "own_accept_jpeg:75", "own_accept_resize:0.5",
                "laundering_gap", "criterion", "lr_best_block_verification_auc", "usia_open_set_auroc")))
    print("selected:", out.get("selected_on_imagen"))


if __name__ == "__main__":
    main()
