"""A procedural "toy generator": deterministic stand-ins for a generator's output, for the walk-through.

These are NOT images from a real AI model. No AI-generated images with a clear redistribution licence
could be found in the package registries this project uses, and the project must not ship the devset
it measures on, so the walk-through enrolls this toy source instead. Like a real generator, it has
a recognisable style and a fingerprint: each image is a landscape (sky gradient, a sun, layered
hills of summed sinusoids, speckled texture) rendered at 64 x 64, upsampled to 256 x 256, and given
a faint periodic 4-pixel pattern, the kind of grid trace that transposed convolutions leave in GAN
output. Image ``i`` depends only on ``i``.

    python examples/make_toy_images.py            # rewrites examples/images/toy/ and check/toy-*.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
N_ENROLL, N_CHECK = 8, 4
LOW, SIZE = 64, 256


def toy_image(index: int) -> Image.Image:
    rng = np.random.default_rng(1000 + index)
    y, x = np.mgrid[0:LOW, 0:LOW] / LOW
    sky_top, sky_bottom = rng.uniform(0.3, 1.0, 3), rng.uniform(0.5, 1.0, 3)
    img = sky_top[None, None] * (1 - y[..., None]) + sky_bottom[None, None] * y[..., None]
    cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.35), rng.uniform(0.05, 0.12)
    sun = np.clip(1 - np.hypot(x - cx, y - cy) / r, 0, 1)[..., None]
    img = img * (1 - sun) + rng.uniform(0.8, 1.0, 3)[None, None] * sun
    for layer in range(3):
        base = 0.45 + 0.15 * layer + rng.uniform(-0.05, 0.05)
        ridge = base + sum(rng.uniform(0.01, 0.06) * np.sin(2 * np.pi * (k + 1) * x[0] + rng.uniform(0, 6.3))
                           for k in range(4))
        colour = rng.uniform(0.05, 0.6, 3) * (1 - 0.25 * layer)
        mask = (y >= ridge[None, :])[..., None]
        img = np.where(mask, colour[None, None] * (0.85 + 0.3 * rng.random((LOW, LOW, 1))), img)
    big = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    arr = np.asarray(big, dtype=np.float64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    grid = 6.0 * (((yy % 4) < 2) ^ ((xx % 4) < 2))  # the toy generator's fingerprint
    return Image.fromarray(np.clip(arr + grid[..., None] - 3.0, 0, 255).astype(np.uint8))


def targets(root: Path = HERE / "images") -> list[tuple[int, Path]]:
    """(index, path) of every toy image the walk-through uses: 8 to enroll, 4 to check."""
    return ([(i, root / "toy" / f"toy-{i:02d}.png") for i in range(N_ENROLL)]
            + [(N_ENROLL + i, root / "check" / f"toy-{N_ENROLL + i:02d}.png") for i in range(N_CHECK)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE / "images", help="folder holding toy/ and check/")
    args = ap.parse_args()
    for index, path in targets(args.root):
        path.parent.mkdir(parents=True, exist_ok=True)
        toy_image(index).save(path, "PNG")
        print(path)


if __name__ == "__main__":
    main()
