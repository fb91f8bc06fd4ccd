"""Decoding an image file's bytes (see :mod:`occ.images`): the format from the content alone, the size
limits checked from the header before any pixel is decoded (:data:`MAX_PIXELS`, :data:`MIN_SIDE`), and
the result an upright, fully decoded 8-bit RGB picture (:mod:`~occ.images.normalise`)."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from occ.errors import ImageError
from occ.images.files import ImageFile, image_error, is_image_signature, read_image_file
from occ.images.normalise import TRANSPOSE_FOR_ORIENTATION, exif_orientation, to_rgb

MAX_PIXELS: int = 89_478_485
"""A declared width*height above this is refused before decoding (Pillow's own default warning level)."""

MIN_SIDE: int = 32
"""A shortest side below this is refused: CLIP would mostly see upsampling artefacts."""

# Pillow format names handed to Image.open(formats=...). Any other format is refused.
_ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")

# Pillow formats whose "accept" test is missing or too weak to name arbitrary bytes by.
_WEAKLY_SNIFFED_FORMATS = frozenset({"IM", "IMT", "IPTC", "MCIDAS", "PCD", "PCX", "SPIDER", "TGA"})

CORRUPT = "truncated or corrupt image data"


@dataclass(frozen=True)
class LoadedImage:
    """One decoded image, ready for the backbone."""

    path: Path
    sha256: str  # hex sha256 of the file's bytes: content key for caches
    image: Image.Image  # RGB, upright (EXIF orientation applied), first frame, fully decoded
    original_size: tuple[int, int]  # (w, h) as stored, before EXIF rotation
    format: str | None  # Pillow's format name


def _webp_declared_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header. Pillow's WebP decoder allocates the canvas when it opens the file,
    so the size has to be checked before Pillow sees it."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _unsupported_format_name(data: bytes) -> str | None:
    """Name a format Pillow knows but occ does not accept, by its magic bytes alone (nothing is parsed)."""
    Image.init()
    prefix = data[:16]
    for name, (_factory, accept) in list(Image.OPEN.items()):
        if name in _ALLOWED_FORMATS or name in _WEAKLY_SNIFFED_FORMATS or accept is None:
            continue
        try:
            verdict = accept(prefix)
        except Exception:  # a plugin's sniffing must never turn into a failure of ours
            continue
        if verdict and not isinstance(verdict, str):  # a str is a warning, not a match
            return name
    return None


def _bomb(path: Path, size: tuple[int, int] | None, max_pixels: int) -> ImageError:
    shown = f" {size[0]}x{size[1]}" if size else ""
    return image_error(
        path, f"declared size{shown} exceeds the {max_pixels}-pixel limit (possible decompression bomb)"
    )


def _too_small(path: Path, size: tuple[int, int], min_side: int) -> ImageError:
    return image_error(path, f"image too small ({size[0]}x{size[1]}); at least {min_side} px per side needed")


def _open_without_pillow_limit(data: bytes) -> Image.Image | None:
    """Identify ``data`` among the allowed formats like Image.open does, minus Pillow's global pixel
    limit, so that occ's own ``max_pixels`` decides (and the refusal can quote the declared size)."""
    Image.init()
    prefix = data[:16]
    for name in _ALLOWED_FORMATS:
        factory, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept else True
        if not verdict or isinstance(verdict, str):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    return None


def _open(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (no pixel is decoded here)."""
    declared = _webp_declared_size(data)
    if declared and declared[0] * declared[1] > max_pixels:
        raise _bomb(path, declared, max_pixels)
    try:
        return Image.open(io.BytesIO(data), formats=_ALLOWED_FORMATS)
    except UnidentifiedImageError:
        if is_image_signature(data):
            raise image_error(path, CORRUPT) from None
        other = _unsupported_format_name(data)
        if other:
            raise image_error(path, f"unsupported image format {other}") from None
        raise image_error(path, "not an image (unrecognised content)") from None
    except Image.DecompressionBombError:
        # Over twice Pillow's global limit. Parse the header again without that limit to learn the size.
        try:
            image = _open_without_pillow_limit(data)
        except Image.DecompressionBombError:
            image = None
        if image is None:
            raise _bomb(path, None, max_pixels) from None
        return image



def _check_header(path: Path, image: Image.Image, max_pixels: int, min_side: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise image_error(path, CORRUPT)
    if width * height > max_pixels:
        raise _bomb(path, (width, height), max_pixels)
    # Rotation by EXIF swaps the sides but keeps the shorter one: refuse tiny images before decoding.
    if min(width, height) < min_side:
        raise _too_small(path, (width, height), min_side)


def _decode(
    path: Path, data: bytes, max_pixels: int, min_side: int
) -> tuple[Image.Image, tuple[int, int], str | None]:
    image = _open(path, data, max_pixels)
    try:
        _check_header(path, image, max_pixels, min_side)
        if image.tell() != 0:
            image.seek(0)  # first frame of animations and multi-page files
        image.load()  # full decode: truncated data fails here
        original_size = image.size
        if original_size[0] * original_size[1] > max_pixels:
            raise _bomb(path, original_size, max_pixels)
        orientation = exif_orientation(image)
        rgb = to_rgb(path, image)
        fmt = image.format
    finally:
        image.close()
    method = TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    if min(rgb.size) < min_side:
        raise _too_small(path, rgb.size, min_side)
    return rgb, original_size, fmt


def decode_image(file: ImageFile, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> LoadedImage:
    """Decode the bytes of :func:`read_image_file`; raise :class:`ImageError` (and nothing else).

    The content decides the format, not the extension, and only PNG, JPEG, GIF, WebP, BMP, TIFF and PNM
    are accepted. The declared size is checked before decoding (``max_pixels``, ``min_side``). The result
    is the first frame, fully decoded, turned upright by its EXIF orientation, as 8-bit RGB.

    Pillow's warnings are silenced with ``warnings.catch_warnings`` while decoding; before Python 3.14
    that swaps the process-wide filter list, so warnings raised by other threads at that moment can be
    lost too.
    """
    path, data = file.path, file.data
    try:
        with warnings.catch_warnings():
            # Pillow warns about big images, odd EXIF, palette transparency...: every refusal is ours.
            warnings.simplefilter("ignore")
            image, original_size, fmt = _decode(path, data, max_pixels, min_side)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise _bomb(path, None, max_pixels) from None
    except MemoryError:
        raise image_error(path, "image too large to decode") from None
    except Exception as exc:
        raise image_error(path, CORRUPT) from exc
    return LoadedImage(path=path, sha256=file.sha256, image=image, original_size=original_size, format=fmt)


def check_declared(file: ImageFile, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> None:
    """Apply :func:`decode_image`'s header checks (format, ``max_pixels``, ``min_side``) without decoding
    a pixel; raise :class:`ImageError` like it would. For images whose features come from a cache, so
    that a limit refuses the same files whether or not they were seen before."""
    path, data = file.path, file.data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _open(path, data, max_pixels)
            try:
                _check_header(path, image, max_pixels, min_side)
            finally:
                image.close()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise _bomb(path, None, max_pixels) from None
    except Exception as exc:
        raise image_error(path, CORRUPT) from exc


def load_image(path, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> LoadedImage:
    """Read and decode one image file: :func:`read_image_file` then :func:`decode_image`.

    The sha256 is computed on the same bytes that are decoded. A ``path`` that is not a str, bytes or
    os.PathLike is a caller's bug and raises TypeError.
    """
    return decode_image(read_image_file(path), max_pixels=max_pixels, min_side=min_side)

