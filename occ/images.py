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

import hashlib
import io
import os
import stat
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from occ.errors import ImageError, first_line, one_line
from occ.paths import _fspath_str, display_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "LoadedImage",
    "display_path",
    "is_image_signature",
    "iter_images",
    "iter_paths",
    "load_image",
]

MAX_PIXELS: int = 89_478_485
"""A declared width*height above this is refused before decoding (Pillow's own default warning level)."""

MIN_SIDE: int = 32
"""A shortest side below this is refused: CLIP would mostly see upsampling artefacts."""

MAX_FILE_BYTES: int = 512 * 2**20
"""Files larger than this are refused from their size alone, without reading them."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"}
)
"""Lower-case file extensions taken as images inside folders (content is sniffed for the rest)."""

# Pillow format names handed to Image.open(formats=...). Any other format is refused.
_ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")

# Pillow formats whose "accept" test is missing or too weak to name arbitrary bytes by.
_WEAKLY_SNIFFED_FORMATS = frozenset({"IM", "IMT", "IPTC", "MCIDAS", "PCD", "PCX", "SPIDER", "TGA"})

_SNIFF_BYTES = 32
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNM_WHITESPACE = b" \t\n\r\x0b\x0c"

_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

_CORRUPT = "truncated or corrupt image data"


@dataclass(frozen=True)
class LoadedImage:
    """One decoded image, ready for the backbone."""

    path: Path
    sha256: str  # hex sha256 of the file's bytes: content key for caches
    image: Image.Image  # RGB, upright (EXIF orientation applied), first frame, fully decoded
    original_size: tuple[int, int]  # (w, h) as stored, before EXIF rotation
    format: str | None  # Pillow's format name


# --------------------------------------------------------------------------------------------------------
# Messages


def _error(path, reason: str) -> ImageError:
    return ImageError(display_path(path), one_line(reason) or "unknown error")


def _as_path(path) -> Path:
    if isinstance(path, Path):
        return path
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"expected a path (str, bytes or os.PathLike), not {type(path).__name__}")
    return Path(_fspath_str(path))


# --------------------------------------------------------------------------------------------------------
# Content sniffing


def is_image_signature(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file, 32 are plenty) starts like a supported image.

    Recognises PNG, JPEG, GIF, WebP, BMP, TIFF (both byte orders, and BigTIFF) and binary PBM/PGM/PPM.
    """
    head = bytes(head[:_SNIFF_BYTES])
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head.startswith(_TIFF_MAGICS):
        return True
    if head[:2] == b"BM" and len(head) >= 18:
        # The byte after the file header gives the DIB header size; only a few values exist.
        return struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in (b"4", b"5", b"6"):
        return head[2] in _PNM_WHITESPACE
    return False


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


# --------------------------------------------------------------------------------------------------------
# Finding files


def _missing_reason(path: Path) -> str:
    return "broken symbolic link" if os.path.islink(path) else "no such file or folder"


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    # Opening a FIFO for reading would block until a writer appears; non-blocking changes nothing for
    # regular files, and anything that is not one is refused right after fstat.
    | getattr(os, "O_NONBLOCK", 0)
)


def _sniff_file(path: str) -> bool:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return is_image_signature(os.read(fd, _SNIFF_BYTES))
    except OSError:
        return False
    finally:
        os.close(fd)


def _list_folder(folder: str) -> list[os.DirEntry] | ImageError:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        return _error(folder, f"cannot read folder: {first_line(exc)}")


def _walk(root: Path, root_stat: os.stat_result) -> Iterator[Path | ImageError]:
    """Depth-first walk of one folder input; see :func:`iter_paths`."""
    listing = _list_folder(str(root))
    if isinstance(listing, ImageError):
        yield listing
        return
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack: list[Iterator[os.DirEntry]] = [iter(listing)]
    produced = False
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        name = entry.name
        if name.startswith("."):
            continue
        looks_like_image = _has_image_extension(name)
        try:
            is_dir = entry.is_dir()  # follows symlinks
            is_file = not is_dir and entry.is_file()
        except OSError as exc:
            if looks_like_image:
                produced = True
                yield _error(entry.path, f"cannot access: {first_line(exc)}")
            continue
        if is_dir:
            try:
                # Follows symlinks: a linked folder is identified by its target. (os.stat rather than
                # entry.stat(): on Windows the latter leaves st_ino and st_dev at zero.)
                st = os.stat(entry.path)
            except OSError as exc:
                produced = True
                yield _error(entry.path, f"cannot read folder: {first_line(exc)}")
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                continue
            visited.add(key)
            listing = _list_folder(entry.path)
            if isinstance(listing, ImageError):
                produced = True
                yield listing
            else:
                stack.append(iter(listing))
            continue
        if is_file:
            if looks_like_image or _sniff_file(entry.path):
                produced = True
                yield Path(entry.path)
            continue
        if looks_like_image:  # named like an image but neither a folder nor a regular file
            produced = True
            try:
                broken = entry.is_symlink() and not os.path.exists(entry.path)
            except OSError:
                broken = False
            yield _error(entry.path, "broken symbolic link" if broken else "not a regular file")
    if not produced:
        yield _error(root, "folder holds no images")


def iter_paths(inputs: Iterable[str | os.PathLike]) -> Iterator[Path | ImageError]:
    """Lazily turn user inputs (files and folders) into candidate image files, in a deterministic order.

    A file named explicitly is always yielded, image or not. A folder is walked depth-first with the
    entries of each folder sorted by name; hidden entries are skipped; symlinked folders are followed but
    no folder is entered twice within one input (folders are told apart by device and inode), so link
    loops end. The set of visited folders lives only while its input is walked, so memory does not grow
    with the number of inputs; naming the same folder twice walks it twice. Inside folders a file is
    yielded when its extension is an image extension or its first bytes look like an image. Problems
    are yielded as :class:`ImageError` values in place, and the walk goes on.
    """
    for item in inputs:
        path = _as_path(item)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            yield _error(path, _missing_reason(path))
            continue
        except ValueError:
            yield _error(path, "invalid path (contains a NUL character)")
            continue
        except OSError as exc:
            yield _error(path, f"cannot access: {first_line(exc)}")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, st)
        else:
            yield path


# --------------------------------------------------------------------------------------------------------
# Reading and decoding


def _read_bytes(path: Path) -> bytes:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise _error(path, _missing_reason(path)) from None
    except IsADirectoryError:
        raise _error(path, "is a folder") from None
    except PermissionError as exc:
        if os.path.isdir(path):  # Windows refuses to open folders this way
            raise _error(path, "is a folder") from None
        raise _error(path, f"cannot read file: {first_line(exc)}") from None
    except ValueError:
        raise _error(path, "invalid path (contains a NUL character)") from None
    except OSError as exc:
        raise _error(path, f"cannot read file: {first_line(exc)}") from None
    try:
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise _error(path, "is a folder")
            if not stat.S_ISREG(st.st_mode):
                raise _error(path, "not a regular file")
            if st.st_size > MAX_FILE_BYTES:
                raise _error(path, _too_large_file(st.st_size))
            # Ask for what stat announced (plus one byte to notice growth), never for the whole limit:
            # a buffered read(n) reserves n bytes up front.
            chunks = [handle.read(st.st_size + 1)]
            total = len(chunks[0])
            while total > st.st_size and total <= MAX_FILE_BYTES:  # the file grew while being read
                chunk = handle.read(min(1 << 20, MAX_FILE_BYTES + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise _error(path, _too_large_file(total))
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except ImageError:
        raise
    except MemoryError:
        raise _error(path, "cannot read file: out of memory") from None
    except OSError as exc:
        if isinstance(exc, IsADirectoryError):
            raise _error(path, "is a folder") from None
        raise _error(path, f"cannot read file: {first_line(exc)}") from exc


def _too_large_file(size: int) -> str:
    return f"file too large ({size} bytes; the limit is {MAX_FILE_BYTES} bytes)"


def _bomb(path: Path, size: tuple[int, int] | None, max_pixels: int) -> ImageError:
    shown = f" {size[0]}x{size[1]}" if size else ""
    return _error(
        path, f"declared size{shown} exceeds the {max_pixels}-pixel limit (possible decompression bomb)"
    )


def _too_small(path: Path, size: tuple[int, int], min_side: int) -> ImageError:
    return _error(path, f"image too small ({size[0]}x{size[1]}); at least {min_side} px per side needed")


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
            raise _error(path, _CORRUPT) from None
        other = _unsupported_format_name(data)
        if other:
            raise _error(path, f"unsupported image format {other}") from None
        raise _error(path, "not an image (unrecognised content)") from None
    except Image.DecompressionBombError:
        # Over twice Pillow's global limit. Parse the header again without that limit to learn the size.
        try:
            image = _open_without_pillow_limit(data)
        except Image.DecompressionBombError:
            image = None
        if image is None:
            raise _bomb(path, None, max_pixels) from None
        return image


def _orientation(image: Image.Image) -> int | None:
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


def _to_rgb(path: Path, image: Image.Image) -> Image.Image:
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
        raise _error(path, f"unsupported colour mode {mode}") from None


def _decode(
    path: Path, data: bytes, max_pixels: int, min_side: int
) -> tuple[Image.Image, tuple[int, int], str | None]:
    image = _open(path, data, max_pixels)
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise _error(path, _CORRUPT)
        if width * height > max_pixels:
            raise _bomb(path, (width, height), max_pixels)
        # Rotation by EXIF swaps the sides but keeps the shorter one: refuse tiny images before decoding.
        if min(width, height) < min_side:
            raise _too_small(path, (width, height), min_side)
        if image.tell() != 0:
            image.seek(0)  # first frame of animations and multi-page files
        image.load()  # full decode: truncated data fails here
        original_size = image.size
        if original_size[0] * original_size[1] > max_pixels:
            raise _bomb(path, original_size, max_pixels)
        orientation = _orientation(image)
        rgb = _to_rgb(path, image)
        fmt = image.format
    finally:
        image.close()
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    if min(rgb.size) < min_side:
        raise _too_small(path, rgb.size, min_side)
    return rgb, original_size, fmt


@dataclass(frozen=True)
class ImageFile:
    """An image file's bytes and their sha256, read once; decoding comes later (or never, on a cache hit)."""

    path: Path
    sha256: str
    data: bytes = field(repr=False)


def read_image_file(path) -> ImageFile:
    """Read a file's bytes once and hash them; raise :class:`ImageError` if it cannot be read or is empty."""
    path = _as_path(path)
    data = _read_bytes(path)
    if not data:
        raise _error(path, "empty file")
    return ImageFile(path=path, sha256=hashlib.sha256(data).hexdigest(), data=data)


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
        raise _error(path, "image too large to decode") from None
    except Exception as exc:
        raise _error(path, _CORRUPT) from exc
    return LoadedImage(path=path, sha256=file.sha256, image=image, original_size=original_size, format=fmt)


def load_image(path, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> LoadedImage:
    """Read and decode one image file: :func:`read_image_file` then :func:`decode_image`.

    The sha256 is computed on the same bytes that are decoded. A ``path`` that is not a str, bytes or
    os.PathLike is a caller's bug and raises TypeError.
    """
    return decode_image(read_image_file(path), max_pixels=max_pixels, min_side=min_side)


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
