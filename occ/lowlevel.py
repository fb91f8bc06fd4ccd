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

**JPEG traces** (:func:`jpeg_grid`): JPEG quantises the 2-D DCT of 8 x 8 blocks on a fixed grid, so on
that grid, and only there, most high-frequency coefficients of a decoded JPEG sit near zero. Over the
centre window of at most :data:`GRID_WINDOW` pixels, for each of the 64 grid offsets, the share of
high-frequency coefficients (``u + v >= 5``) under 0.5 in magnitude; the trace is the best offset's share
minus the second best's. Any crop keeps one offset aligned; content that is smooth everywhere raises
every offset alike, and an image upscaled by repeating pixels (2x, 4x) raises several offsets alike, so
neither leaves a trace. ``bench/route_study.py`` reads it on the devset.
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
BLOCK = 8  # JPEG's DCT block side
GRID_WINDOW = 256  # the largest centre window jpeg_grid reads, per side (native pixels)
# jpeg_grid at and above which an image carries JPEG traces: about the midpoint between the largest trace of
# the normalised (lossless) images, 0.015, and the smallest of their JPEG 95-60 copies, 0.025, over 40 images
# of each of the devset's GAN-era, dif, cpondoc and sdcheat sets (bench/route_study.py's detector table; the
# look-alike groups and the photo sets decided nothing)
JPEG_GRID_THRESHOLD = 0.02


def _centre_crop(image: Image.Image, window: int) -> Image.Image:
    """The centre ``window`` x ``window`` pixels of ``image`` (fewer along a shorter side), cut before any
    conversion to an array."""
    w, h = image.size
    cw, ch = min(window, w), min(window, h)
    x, y = (w - cw) // 2, (h - ch) // 2
    return image.crop((x, y, x + cw, y + ch))


def centre_window(image: Image.Image, window: int = WINDOW) -> np.ndarray:
    """(h, w) float32 grey levels (mean of R, G, B) of the centre ``window`` x ``window`` pixels."""
    return np.asarray(_centre_crop(image, window).convert("RGB"), dtype=np.float32).mean(-1)


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


def _dct_matrix(n: int = BLOCK) -> np.ndarray:
    """The orthonormal (n, n) DCT-II matrix."""
    k = np.arange(n)
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None] + 1) * k[:, None] / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix()
_HIGH = np.add.outer(np.arange(BLOCK), np.arange(BLOCK)) >= 5  # the high-frequency coefficients


def jpeg_grid(image: Image.Image) -> float:
    """How strongly an 8 x 8 JPEG grid shows in ``image`` (see the module doc): ~0 for an image never
    JPEG-encoded, ~0.03-0.5 for a decoded JPEG; reads at most ``GRID_WINDOW + 8`` pixels per side."""
    if min(image.size) < 2 * BLOCK:
        return 0.0  # too small to hold a grid at every offset
    luma = np.asarray(_centre_crop(image, GRID_WINDOW + BLOCK).convert("L"), dtype=np.float64) - 128.0
    shares = np.empty((BLOCK, BLOCK))
    for dy in range(BLOCK):
        for dx in range(BLOCK):
            part = luma[dy:, dx:]
            rows, cols = part.shape[0] // BLOCK, part.shape[1] // BLOCK
            blocks = part[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2)
            coefficients = _DCT @ blocks.reshape(-1, BLOCK, BLOCK) @ _DCT.T
            shares[dy, dx] = np.mean(np.abs(coefficients[:, _HIGH]) < 0.5)
    best, second = np.sort(shares.ravel())[-2:][::-1]
    return float(best - second)
