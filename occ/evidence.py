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

**Native-resolution crops.** The trunk's view of an image is downscaled to 224 px, which keeps what is
drawn and loses most of how the pixels were made. Each image is also read through
:data:`CROP_COUNT` crops of its own pixels at the trunk's input size (no resampling): square windows
centred on the diagonal of a 2 x 2 grid (a quarter of the way in from the top left, and from the
bottom right), clamped inside the image. An image whose shorter side is under the input size gives
windows of that side, resized up to it; only the windows are ever resized, so a 20,000-pixel-wide image
costs what a small one does (:func:`native_crops`). Their CLS tokens go through the trunk beside the
main view's and are cached with it; their evidence (:func:`crop_evidence`: each crop's evidence vector,
of blocks 2-8, nearer the pixels than the main view's 4-10, averaged over the crops, scaled to unit length)
is joined to the main view's in the joint model (:class:`occ.openset.JointSettings`). Selected on the
content-matched validation generators (``bench/evidence_study.py --protocol native``: two crops passed
the rule fixed before the run, within 0.005 of four); it costs two more trunk passes an image. Their band
was chosen on the same validation draws by ``bench/crop_bands.py`` (blocks 2-8 raised the criterion by
0.019 over 4-10; 1-6, 1-10 and 6-12 did not pass).
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
# the blocks the native-resolution crops' evidence reads (bench/crop_bands.py: chosen among 1-6, 2-8, 4-10,
# 1-10 and 6-12 on the imagen draws)
DEFAULT_CROP_BLOCKS = (2, 3, 4, 5, 6, 7, 8)
DEFAULT_VIEWS = 2  # laundered copies per training image, besides the image itself (bench/generalise.py)
CROPS_VERSION = "diag2-v1"  # changes whenever native_crops would give other crops (cache keys, stored evidence)
CROP_CENTRES = (0.25, 0.75)  # each crop's centre, as a share of the width and of the height
CROP_COUNT = len(CROP_CENTRES)


def default_blocks(num_layers: int) -> tuple[int, ...]:
    """The evidence blocks of a ``num_layers``-block tower: blocks 4-10 of 12, the same band elsewhere."""
    if num_layers == 12:
        return DEFAULT_BLOCKS
    first, last = max(1, round(num_layers / 3)), max(1, round(num_layers * 5 / 6))
    return tuple(range(first, last + 1))


def default_crop_blocks(num_layers: int) -> tuple[int, ...]:
    """The blocks the native-resolution crops' evidence reads in a ``num_layers``-block tower: blocks 2-8
    of 12 (nearer the pixels than the main view's 4-10; ``bench/crop_bands.py``), the same band elsewhere."""
    if num_layers == 12:
        return DEFAULT_CROP_BLOCKS
    first = max(1, round(num_layers / 6))
    return tuple(range(first, max(first, round(num_layers * 2 / 3)) + 1))


def evidence(cls: np.ndarray, blocks: Sequence[int] = DEFAULT_BLOCKS) -> np.ndarray:
    """(N, L+1, D) CLS tokens of every hidden state -> (N, len(blocks) * D) float32 evidence vectors."""
    cls = np.asarray(cls, dtype=np.float32)
    parts = cls[:, list(blocks)]
    parts = parts / (np.linalg.norm(parts, axis=-1, keepdims=True) + 1e-8)
    return (parts.reshape(len(cls), -1) / np.sqrt(len(blocks))).astype(np.float32)


def crop_evidence(crops: np.ndarray, blocks: Sequence[int] = DEFAULT_CROP_BLOCKS) -> np.ndarray:
    """(N, K, L+1, D) CLS tokens of each image's K native-resolution crops -> (N, len(blocks) * D) float32:
    each crop's :func:`evidence`, averaged over the crops, scaled to unit length."""
    crops = np.asarray(crops, dtype=np.float32)
    n, k = crops.shape[:2]
    mean = evidence(crops.reshape(n * k, *crops.shape[2:]), blocks).reshape(n, k, -1).mean(1)
    return (mean / (np.linalg.norm(mean, axis=1, keepdims=True) + 1e-8)).astype(np.float32)


def native_crops(image: Image.Image, side: int) -> list[Image.Image]:
    """The :data:`CROP_COUNT` native-resolution crops of ``image`` (see the module docstring), RGB,
    ``side`` x ``side`` pixels each."""
    from PIL import Image

    w, h = image.size
    window = min(side, w, h)  # a smaller image: the largest square that fits, resized up to ``side``
    out = []
    for f in CROP_CENTRES:
        x = min(max(0, round(f * w - window / 2)), w - window)
        y = min(max(0, round(f * h - window / 2)), h - window)
        crop = image.crop((x, y, x + window, y + window))
        crop = crop.convert("RGB") if crop.mode != "RGB" else crop
        if window != side:
            crop = crop.resize((side, side), Image.Resampling.BICUBIC)
        out.append(crop)
    return out


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
