"""The low-level evidence stream: statistics of an image's noise residual at its own resolution.

CLIP's CLS tokens of a downscaled centre crop mostly say *what* is drawn; generators that draw the same
subjects from the same prompts differ more in *how* the pixels were made (upsampling, denoising and
decoder artefacts), which a high-pass residual keeps. Following the noise-residual fingerprint
literature (see the reference notes), each image gets a fixed-length vector computed on the CPU with
numpy, from the decoded pixels before any resize:

* the image's centre window of at most :data:`WINDOW` x :data:`WINDOW` pixels (cropped before it is
  converted to an array, so a 20,000-pixel-wide image costs what a 512-pixel one does), mean of the
  three channels;
* its residual: the 4-neighbour Laplacian ``4 x(i, j) - x(i-1, j) - x(i+1, j) - x(i, j-1) - x(i, j+1)``;
* **co-occurrences**: the residual rounded to steps of :data:`STEP` grey levels and clipped to
  ``-T..T`` (``T`` = :data:`TRUNCATE`), then the histogram of each run of three neighbouring values,
  horizontally and vertically (2 x 5^3 = 250 bins), as square roots of frequencies;
* a **radial spectrum**: the log power of the residual's 2-D spectrum, averaged over 64 x 64 tiles and
  over 32 rings of spatial frequency (periodic upsampling artefacts show as peaks).

That is :data:`DIMS` = 282 numbers per image, deterministic (no randomness), cached beside the trunk's
features under :data:`VERSION`. The joint model (:mod:`occ.joint`) whitens them on its non-target
rows and weighs them beside the CLIP evidence; ``bench/generalise.py`` measures what they add.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

VERSION = "residual-v1"  # changes whenever the numbers below would (cache keys, stored evidence)
WINDOW = 512  # the largest centre window read, per side (native pixels)
TILE = 64  # spectrum tiles
RINGS = 32  # radial frequency bins
STEP = 2.0  # quantisation step of the residual, in grey levels
TRUNCATE = 2  # residual levels -T..T
DIMS = 2 * (2 * TRUNCATE + 1) ** 3 + RINGS
MIN_SIDE = TILE + 2  # smaller images give a vector of zeros (no tile fits)


def centre_window(image: Image.Image, window: int = WINDOW) -> np.ndarray:
    """(h, w) float32 grey levels (mean of R, G, B) of the centre ``window`` x ``window`` pixels."""
    w, h = image.size
    cw, ch = min(window, w), min(window, h)
    x, y = (w - cw) // 2, (h - ch) // 2
    crop = image.crop((x, y, x + cw, y + ch)).convert("RGB")
    return np.asarray(crop, dtype=np.float32).mean(-1)


def laplacian_residual(grey: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of ``grey`` on its interior: (h - 2, w - 2)."""
    c = grey[1:-1, 1:-1]
    return 4 * c - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]


def cooccurrences(horizontal: np.ndarray, vertical: np.ndarray | None = None, step: float = STEP,
                  truncate: int = TRUNCATE) -> np.ndarray:
    """Square roots of the frequencies of runs of three residuals rounded to steps of ``step`` and clipped
    to ``-truncate..truncate``: horizontal runs of ``horizontal``, vertical runs of ``vertical`` (the same
    residual by default)."""
    levels = 2 * truncate + 1
    out = []
    for residual, axis in ((horizontal, 1), (horizontal if vertical is None else vertical, 0)):
        z = (np.clip(np.round(residual / step), -truncate, truncate) + truncate).astype(np.int64)
        a, b, c = (z[:, :-2], z[:, 1:-1], z[:, 2:]) if axis == 1 else (z[:-2], z[1:-1], z[2:])
        h = np.bincount(((a * levels + b) * levels + c).ravel(), minlength=levels ** 3).astype(np.float64)
        out.append(np.sqrt(h / max(h.sum(), 1.0)))
    return np.concatenate(out)


def radial_spectrum(residual: np.ndarray) -> np.ndarray:
    """Log power of the residual's spectrum, averaged over ``TILE``-pixel tiles and ``RINGS`` rings."""
    rows, cols = residual.shape[0] // TILE, residual.shape[1] // TILE
    if rows == 0 or cols == 0:
        return np.zeros(RINGS)
    tiles = residual[:rows * TILE, :cols * TILE].reshape(rows, TILE, cols, TILE).swapaxes(1, 2)
    tiles = tiles.reshape(-1, TILE, TILE).astype(np.float64)
    tiles = tiles - tiles.mean((1, 2), keepdims=True)
    power = (np.abs(np.fft.fftshift(np.fft.fft2(tiles), axes=(1, 2))) ** 2).mean(0)
    yy, xx = np.indices(power.shape) - TILE // 2
    ring = np.minimum((np.sqrt(yy ** 2 + xx ** 2) / (TILE / 2) * RINGS).astype(np.int64), RINGS)
    sums = np.bincount(ring.ravel(), power.ravel(), RINGS + 1)
    counts = np.maximum(np.bincount(ring.ravel(), None, RINGS + 1), 1)
    return np.log(sums[:RINGS] / counts[:RINGS] + 1e-3)


def lowlevel_features(image: Image.Image) -> np.ndarray:
    """The (:data:`DIMS`,) float32 low-level evidence of one decoded image (see the module doc)."""
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        return np.zeros(DIMS, np.float32)
    residual = laplacian_residual(centre_window(image))
    return np.concatenate([cooccurrences(residual), radial_spectrum(residual)]).astype(np.float32)
