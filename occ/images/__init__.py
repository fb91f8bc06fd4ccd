"""Finding image files and opening them safely.

Everything here treats files as untrusted input. Each failure that concerns one file is reported as an
:class:`~occ.errors.ImageError` whose message is a single printable line naming the file and the reason,
so a batch can report it and go on. Nothing else escapes :func:`load_image`.

* :func:`iter_paths` turns files and folders named by the user into a lazy stream of candidate files.
* :func:`load_image` reads one file once, hashes those bytes, refuses oversized or tiny images from
  their header before any pixel is decoded, and returns an upright, fully decoded 8-bit RGB picture.
* :func:`iter_images` chains the two and yields errors instead of raising them.
"""


from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from occ.errors import ImageError
from occ.images.decode import MAX_PIXELS, MIN_SIDE, LoadedImage, check_declared, decode_image, load_image
from occ.images.files import (
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    ImageFile,
    is_image_signature,
    iter_paths,
    read_image_file,
)
from occ.paths import display_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "ImageFile",
    "LoadedImage",
    "check_declared",
    "decode_image",
    "display_path",
    "is_image_signature",
    "iter_images",
    "iter_paths",
    "load_image",
    "read_image_file",
]


def iter_images(
    inputs: Iterable[str | os.PathLike], *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE
) -> Iterator[LoadedImage | ImageError]:
    """:func:`iter_paths` then :func:`load_image`, yielding each failure as an :class:`ImageError` value
    so that one bad file does not stop a batch. Streams: one image is held at a time."""
    for item in iter_paths(inputs):
        if isinstance(item, ImageError):
            yield item
            continue
        try:
            yield load_image(item, max_pixels=max_pixels, min_side=min_side)
        except ImageError as exc:
            yield exc
