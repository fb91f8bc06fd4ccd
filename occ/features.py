"""Batched trunk passes with an on-disk feature cache.

Every image goes through the frozen trunk once, and its low-level evidence (:mod:`occ.lowlevel`) is
computed from the same decoded pixels; on request (``crops=True``) its native-resolution crops
(:func:`occ.evidence.native_crops`) go through the trunk too. What they return is stored under
``<cache>/features/<backbone key>/<sha[:2]>/<sha>.safetensors``, keyed by the sha256 of the image file's
bytes and the backbone fingerprint (which includes the preprocessing version). Files are written to a
temporary name and renamed into place, so concurrent processes never see a half-written entry (the
last writer wins, and every writer writes the same content). Tensors only, in safetensors: no pickle.
The cache is read and written as numpy arrays (``safetensors.numpy``), so features that are all cached
reach the verifiers without importing torch; torch is imported when the trunk has to run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from occ.backbones.base import Backbone, Trunk, empty_trunk
from occ.errors import ImageError, first_line
from occ.evidence import CROP_COUNT, CROPS_VERSION, native_crops
from occ.images import MAX_PIXELS, ImageFile, check_declared, decode_image, iter_paths, load_image, read_image_file
from occ.lowlevel import DIMS as LOW_DIMS
from occ.lowlevel import VERSION as LOW_VERSION
from occ.lowlevel import lowlevel_features
from occ.paths import cache_dir

if TYPE_CHECKING:
    import torch
    from PIL import Image

FEATURE_FORMAT = "occ-trunk-v2"
DEFAULT_BATCH = 16
LOW_KEY = f"low.{LOW_VERSION}"  # an entry's low-level evidence (entries written before it lack the key)
CROPS_KEY = f"crops.{CROPS_VERSION}"  # the native-resolution crops' CLS tokens (only where asked for once)


@dataclass(frozen=True)
class ImageRef:
    """Where an image came from and its content key."""

    path: Path
    sha256: str


@dataclass
class Features:
    """Images (in input order) and their trunk features (row i belongs to images[i])."""

    images: list[ImageRef]
    trunk: Trunk

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        return Features([im for p in parts for im in p.images], Trunk.concat([p.trunk for p in parts]))


class Transform(Protocol):
    """An image transform with a stable label (for cache keys), like :class:`occ.perturb.Perturbation`."""

    @property
    def label(self) -> str: ...

    def apply(self, image: Image.Image) -> Image.Image: ...


def derived_key(sha256: str, transform: Transform | None) -> str:
    """Cache key of an image: its content sha256, or for a transformed copy a hash of both."""
    if transform is None:
        return sha256
    return hashlib.sha256(f"{sha256}|{transform.label}".encode()).hexdigest()


class FeatureCache:
    """Trunk outputs on disk for one backbone."""

    def __init__(self, backbone: Backbone, root: str | os.PathLike | None = None):
        key = hashlib.sha256(f"{FEATURE_FORMAT}|{backbone.fingerprint}".encode()).hexdigest()[:24]
        # An explicit root is namespaced by backbone too: two backbones sharing a root never see each
        # other's features.
        self.root = (Path(root) if root else cache_dir() / "features") / key
        self.fingerprint = backbone.fingerprint
        self._shapes = {"cls": (backbone.num_layers + 1, backbone.hidden_size),
                        "embeds": (backbone.projection_dim,),
                        "kv": (2, backbone.num_patches, backbone.hidden_size), LOW_KEY: (LOW_DIMS,),
                        CROPS_KEY: (CROP_COUNT, backbone.num_layers + 1, backbone.hidden_size)}

    def _fits(self, name: str, tensor: np.ndarray) -> bool:
        """Whether a stored tensor has this backbone's shape and dtype (anything else is damage)."""
        kind = "kv" if name.startswith("kv.") else name
        dtype = np.float16 if kind in ("kv", CROPS_KEY) else np.float32
        return tensor.dtype == dtype and tuple(tensor.shape) == self._shapes.get(kind)

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.safetensors"

    def get(self, sha: str, blocks: tuple[int, ...]) -> Trunk | None:
        """The stored trunk output of ``sha`` with keys/values of ``blocks`` (None: recompute); its ``low``
        (``crops``) is None when the entry holds no (or damaged) low-level evidence (crops' CLS tokens),
        which is computed then alone."""
        path = self._path(sha)
        try:
            data = path.read_bytes()
            tensors = st_load(data)
        except (OSError, SafetensorError, ValueError):
            return None  # missing or damaged: recompute
        if not all(k in tensors and self._fits(k, tensors[k]) for k in ("cls", "embeds")):
            return None
        kv = {}
        for b in blocks:
            t = tensors.get(f"kv.{b}")
            if t is None or not self._fits(f"kv.{b}", t):
                return None
            kv[b] = t[None]
        low, crops = (tensors.get(k) for k in (LOW_KEY, CROPS_KEY))
        low = low[None] if low is not None and self._fits(LOW_KEY, low) else None
        crops = crops[None] if crops is not None and self._fits(CROPS_KEY, crops) else None
        return Trunk(tensors["cls"][None], tensors["embeds"][None], kv, low, crops)

    def put(self, sha: str, trunk: Trunk) -> None:
        """Store one image's trunk output (row 0 of ``trunk``), keeping key/value blocks (and crops' CLS
        tokens) already stored."""
        path = self._path(sha)
        tensors = {"cls": np.ascontiguousarray(trunk.cls_array[0]),
                   "embeds": np.ascontiguousarray(trunk.embeds_array[0])}
        try:
            old = st_load(path.read_bytes())
            kept = (k for k in old if k.startswith("kv.") or k == CROPS_KEY)
            tensors.update({k: old[k] for k in kept if self._fits(k, old[k])})
        except (OSError, SafetensorError, ValueError):
            pass
        for b, t in trunk.kv_arrays.items():
            tensors[f"kv.{b}"] = np.ascontiguousarray(t[0])
        if trunk.low is not None:
            tensors[LOW_KEY] = np.ascontiguousarray(trunk.low[0])
        if trunk.crops is not None:
            tensors[CROPS_KEY] = np.ascontiguousarray(trunk.crops[0], np.float16)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(tensors)}.tmp")
            tmp.write_bytes(st_save(tensors, metadata={"format": FEATURE_FORMAT, "backbone": self.fingerprint}))
            os.replace(tmp, path)
        except OSError:
            # A cache that cannot be written (read-only, full disk) only costs speed.
            try:
                tmp.unlink()
            except (OSError, UnboundLocalError):
                pass


def _transformed(f: ImageFile, image: Image.Image, transform: Transform) -> Image.Image:
    """``transform`` applied to one decoded image; a failure is that file's error, not the batch's."""
    try:
        return transform.apply(image)
    except (OSError, ValueError, MemoryError) as exc:
        reason = first_line(exc)
        raise ImageError(f.path, f"could not apply {transform.label}: {reason}") from None


class FeatureExtractor:
    """Runs the trunk over images in batches, reading and filling the cache.

    Files are read and hashed first; only those not in the cache are decoded and passed through the
    trunk, so a second pass over the same images costs little more than reading them.
    """

    def __init__(self, backbone: Backbone, *, cache: bool = True, batch_size: int = DEFAULT_BATCH,
                 cache_root: str | os.PathLike | None = None, max_pixels: int = MAX_PIXELS):
        self.backbone = backbone
        self.cache = FeatureCache(backbone, cache_root) if cache else None
        self.batch_size = max(1, int(batch_size))
        self.max_pixels = int(max_pixels)  # larger declared images are refused before decoding

    def _batch(self, files: list[ImageFile], blocks: tuple[int, ...],
               on_error: Callable[[ImageError], None] | None, transform: Transform | None,
               crops: bool = False) -> Features | None:
        keys = [derived_key(f.sha256, transform) for f in files]
        rows: list[Trunk | None] = [self.cache.get(k, blocks) if self.cache else None for k in keys]
        decoded: dict[int, Image.Image] = {}
        for i, f in enumerate(files):
            cached = rows[i] is not None and rows[i].low is not None and (not crops or rows[i].crops is not None)
            try:
                if cached:  # a cached image is held to this extractor's limits like a new one
                    check_declared(f, max_pixels=self.max_pixels)
                    continue
                image = decode_image(f, max_pixels=self.max_pixels).image  # what is missing is computed
                if transform is not None:
                    image = _transformed(f, image, transform)
            except ImageError as exc:
                if on_error:
                    on_error(exc)
                rows[i] = None
                continue
            decoded[i] = image
        if decoded:
            order = [i for i in decoded if rows[i] is None]
            if order:
                out = self.backbone.trunk(self.backbone.preprocess([decoded[i] for i in order]), blocks)
                for j, i in enumerate(order):
                    rows[i] = out.select([j])
            if crops and (need := [i for i in decoded if rows[i].crops is None]):
                side = self.backbone.preprocess.size
                views = [c for i in need for c in native_crops(decoded[i], side)]
                cls = self.backbone.trunk(self.backbone.preprocess(views)).cls_array.astype(np.float16)
                for j, i in enumerate(need):
                    rows[i].crops = cls[j * CROP_COUNT:(j + 1) * CROP_COUNT][None]
            for i, image in decoded.items():
                if rows[i].low is None:  # (a cached entry that lacked only the crops keeps its own)
                    rows[i].low = lowlevel_features(image)[None]
                if self.cache:
                    self.cache.put(keys[i], rows[i])
        kept = [i for i, r in enumerate(rows) if r is not None]
        if not kept:
            return None
        if not crops:
            for i in kept:
                rows[i].crops = None  # what was not asked for is not handed on (one shape per batch)
        return Features([ImageRef(files[i].path, keys[i]) for i in kept], Trunk.concat([rows[i] for i in kept]))

    def stream(self, inputs: Iterable, blocks: Sequence[int] = (),
               on_error: Callable[[ImageError], None] | None = None,
               transform: Transform | None = None, crops: bool = False) -> Iterator[Features]:
        """Features of the images under ``inputs`` (files and folders), batch by batch, in input order.

        Memory is bounded by the batch size. Bad files are passed to ``on_error`` as a one-line
        :class:`ImageError` and skipped. With ``transform`` (e.g. a :class:`occ.perturb.Perturbation`),
        each image is transformed before the trunk; the cache then keys on the file's sha256 plus the
        transform's label (see :func:`derived_key`). With ``crops``, the trunk's output holds the CLS
        tokens of each image's native-resolution crops too (``Trunk.crops``).
        """
        blocks = tuple(sorted(set(blocks)))
        batch: list[ImageFile] = []
        for item in iter_paths(inputs):
            if not isinstance(item, ImageError):
                try:
                    batch.append(read_image_file(item))
                except ImageError as exc:
                    item = exc
            if isinstance(item, ImageError):
                if on_error:
                    on_error(item)
                continue
            if len(batch) == self.batch_size:
                if (features := self._batch(batch, blocks, on_error, transform, crops)) is not None:
                    yield features
                batch = []
        if batch and (features := self._batch(batch, blocks, on_error, transform, crops)) is not None:
            yield features

    def from_files(self, files: Sequence[ImageFile], blocks: Sequence[int] = (),
                   on_error: Callable[[ImageError], None] | None = None, crops: bool = False) -> Iterator[Features]:
        """Like :meth:`stream` for images whose bytes are already read (uploads, remote reads): the
        cache keys on their sha256 and errors name their ``path``."""
        blocks = tuple(sorted(set(blocks)))
        for start in range(0, len(files), self.batch_size):
            if (features := self._batch(list(files[start:start + self.batch_size]), blocks, on_error,
                                        None, crops)) is not None:
                yield features

    def load(self, inputs: Iterable, blocks: Sequence[int] = (),
             on_error: Callable[[ImageError], None] | None = None, transform: Transform | None = None,
             on_progress: Callable[[int], None] | None = None, crops: bool = False) -> Features:
        """All images under ``inputs`` with their features (for enrollment-sized sets). ``on_progress``
        is called after each batch with the number of inputs dealt with so far (read or failed)."""
        done = 0

        def failed(exc: ImageError) -> None:
            nonlocal done
            done += 1
            if on_error:
                on_error(exc)

        parts = []
        for part in self.stream(inputs, blocks, failed, transform, crops):
            parts.append(part)
            done += len(part.images)
            if on_progress:
                on_progress(done)
        if not parts:
            return Features([], empty_trunk(self.backbone, tuple(sorted(set(blocks))), crops))
        return Features.concat(parts)

    def cached(self, sha256: str, blocks: Sequence[int] = ()) -> Trunk | None:
        """Trunk features of an image already in the cache, by content hash (None if absent)."""
        return self.cache.get(sha256, tuple(sorted(set(blocks)))) if self.cache else None

    def pixels(self, images: Sequence[ImageRef]) -> torch.Tensor:
        """Preprocessed pixels of images (read and decoded again), for pixel-space augmentation."""
        return self.backbone.preprocess([load_image(im.path).image for im in images])
