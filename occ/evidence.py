"""Origin evidence of an image, read from the frozen trunk, and the training views that widen it.

**Evidence vector.** The CLS token of the middle blocks of the frozen tower, each block's token scaled
to unit length, concatenated, and scaled by ``1/sqrt(number of blocks)`` (so the whole vector has unit
length). USIA and RINE (see the reference notes) found that intermediate blocks carry more origin
signal than the final embedding and that blocks carry different signals; on the project's validation
generators, blocks 4-10 of ViT-B/16 beat one block, all blocks, the final embedding, and the same
blocks with patch-token means added (``bench/generalise.py``). It is computed once per image from the
trunk output every verifier shares, so its cost does not grow with the number of sources.

**Training views.** Images met in the wild have been re-encoded, resized, blurred and cropped. Each
training image (a source's shots, the negatives) is also seen through ``views`` laundered copies:
a random chain of resize (x0.5-0.9, p 0.5), Gaussian blur (sigma 0.3-1.2, p 0.3), crop (75-100 % of
each side) with a horizontal flip (p 0.5), then JPEG at quality 60-95 (p 0.8). The chain is drawn
from a generator seeded by the view's label and the image's pixels, so the same image, seed and view
index always give the same copy (and the feature cache can key on it).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_BLOCKS = (4, 5, 6, 7, 8, 9, 10)  # of a 12-block tower; other depths: the same band, scaled
DEFAULT_VIEWS = 2  # laundered copies per training image, besides the image itself (bench/generalise.py)


def default_blocks(num_layers: int) -> tuple[int, ...]:
    """The evidence blocks of a ``num_layers``-block tower: blocks 4-10 of 12, the same band elsewhere."""
    if num_layers == 12:
        return DEFAULT_BLOCKS
    first, last = max(1, round(num_layers / 3)), max(1, round(num_layers * 5 / 6))
    return tuple(range(first, last + 1))


def evidence(cls: np.ndarray, blocks: Sequence[int] = DEFAULT_BLOCKS) -> np.ndarray:
    """(N, L+1, D) CLS tokens of every hidden state -> (N, len(blocks) * D) float32 evidence vectors."""
    cls = np.asarray(cls, dtype=np.float32)
    parts = cls[:, list(blocks)]
    parts = parts / (np.linalg.norm(parts, axis=-1, keepdims=True) + 1e-8)
    return (parts.reshape(len(cls), -1) / np.sqrt(len(blocks))).astype(np.float32)


@dataclass(frozen=True)
class LaunderedView:
    """One laundered training view (see the module docstring); a transform for the feature extractor."""

    seed: int
    index: int

    @property
    def label(self) -> str:
        return f"launder-v1:{self.seed}:{self.index}"

    def apply(self, image: Image.Image) -> Image.Image:
        from PIL import Image, ImageFilter

        digest = hashlib.sha256(self.label.encode() + image.tobytes()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        image = image.convert("RGB")
        if rng.random() < 0.5:
            f = rng.uniform(0.5, 0.9)
            w, h = image.size
            image = image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
        w, h = image.size
        c = rng.uniform(0.75, 1.0)
        cw, ch = max(8, int(w * c)), max(8, int(h * c))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.8:
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=rng.randint(60, 95))
            buf.seek(0)
            image = Image.open(buf).convert("RGB")
        return image


def training_views(seed: int, views: int) -> list[LaunderedView | None]:
    """The views of each training image: the image itself (None) and ``views`` laundered copies."""
    return [None] + [LaunderedView(seed, i) for i in range(int(views))]
