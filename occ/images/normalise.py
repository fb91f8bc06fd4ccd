"""Turning a decoded Pillow image into what the backbone reads (see :mod:`occ.images`): upright by its
EXIF orientation, and any colour mode (16-bit, float, palette, alpha...) as 8-bit RGB, converted in
bounded blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from occ.images.files import image_error

TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation, or None when absent or unreadable (a broken EXIF never fails the image)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG)
        return int(value) if value is not None else None
    except Exception:
        return None


_BLOCK_ELEMENTS = 1 << 22  # rows are converted in blocks of about this many values to bound temporaries


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a 16-bit, 32-bit or float single-channel array to 0..255 without clipping its range away.

    * ``I;16*``: the full 16-bit range, v/257 rounded.
    * ``I``: the 16-bit rule when every value lies in 0..65535 (Pillow stores 16-bit PNM this way),
      else a linear stretch of [min(lowest, 0), highest] onto 0..255.
    * ``F``: values within 0..1 are scaled by 255, values within 0..255 kept, anything else stretched
      like ``I``. NaN counts as 0; infinities as the extreme finite values.
    """
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, _BLOCK_ELEMENTS // max(1, values.shape[1]))
    if mode.startswith("I;16"):
        for y in range(0, values.shape[0], rows):
            block = values[y : y + rows].astype(np.uint32)
            out[y : y + rows] = (block + 128) // 257
        return out
    if mode == "F":
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            out.fill(0)
            return out
        low, high = float(finite.min()), float(finite.max())
        if low >= 0.0 and high <= 1.0:
            offset, scale = 0.0, 255.0
        elif low >= 0.0 and high <= 255.0:
            offset, scale = 0.0, 1.0
        else:
            offset = min(low, 0.0)
            scale = 255.0 / (high - offset) if high > offset else 0.0
        for y in range(0, values.shape[0], rows):
            block = np.nan_to_num(values[y : y + rows].astype(np.float64), nan=0.0, posinf=high, neginf=low)
            out[y : y + rows] = np.clip(np.rint((block - offset) * scale), 0, 255)
        return out
    # "I": signed 32-bit
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 0xFFFF:
        for y in range(0, values.shape[0], rows):
            block = values[y : y + rows].astype(np.int64)
            out[y : y + rows] = (block + 128) // 257
        return out
    offset = min(low, 0)
    scale = 255.0 / (high - offset) if high > offset else 0.0
    for y in range(0, values.shape[0], rows):
        block = values[y : y + rows].astype(np.float64)
        out[y : y + rows] = np.clip(np.rint((block - offset) * scale), 0, 255)
    return out


def to_rgb(path: Path, image: Image.Image) -> Image.Image:
    """A new, independent 8-bit RGB image from a loaded one (alpha dropped, wide ranges scaled)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        gray = _to_uint8(np.asarray(image), mode)
        return Image.fromarray(gray).convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in image.info):
        # Through RGBA so the palette colours are kept as stored, whatever the transparency.
        return image.convert("RGBA").convert("RGB")
    try:
        # RGBA/LA drop alpha and keep the stored colour; L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX convert.
        return image.convert("RGB")
    except ValueError:
        raise image_error(path, f"unsupported colour mode {mode}") from None

