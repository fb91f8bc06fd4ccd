"""Image files as untrusted input (see :mod:`occ.images`): finding them (:func:`iter_paths`, folders
walked, content sniffed: :func:`is_image_signature`) and reading each one once, bounded in size
(:func:`read_image_file`). No pixel is decoded here, and Pillow is not imported."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from occ.errors import ImageError, first_line, one_line
from occ.paths import _fspath_str, display_path

MAX_FILE_BYTES: int = 512 * 2**20
"""Files larger than this are refused from their size alone, without reading them."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"}
)
"""Lower-case file extensions taken as images inside folders (content is sniffed for the rest)."""

SNIFF_BYTES = 32
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNM_WHITESPACE = b" \t\n\r\x0b\x0c"


# --------------------------------------------------------------------------------------------------------
# Messages


def image_error(path, reason: str) -> ImageError:
    return ImageError(display_path(path), one_line(reason) or "unknown error")


def as_path(path) -> Path:
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
    head = bytes(head[:SNIFF_BYTES])
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

# --------------------------------------------------------------------------------------------------------
# Finding files


def missing_reason(path: Path) -> str:
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
        return is_image_signature(os.read(fd, SNIFF_BYTES))
    except OSError:
        return False
    finally:
        os.close(fd)


def _list_folder(folder: str) -> list[os.DirEntry] | ImageError:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        return image_error(folder, f"cannot read folder: {first_line(exc)}")


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
                yield image_error(entry.path, f"cannot access: {first_line(exc)}")
            continue
        if is_dir:
            try:
                # Follows symlinks: a linked folder is identified by its target. (os.stat rather than
                # entry.stat(): on Windows the latter leaves st_ino and st_dev at zero.)
                st = os.stat(entry.path)
            except OSError as exc:
                produced = True
                yield image_error(entry.path, f"cannot read folder: {first_line(exc)}")
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
            yield image_error(entry.path, "broken symbolic link" if broken else "not a regular file")
    if not produced:
        yield image_error(root, "folder holds no images")


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
        path = as_path(item)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            yield image_error(path, missing_reason(path))
            continue
        except ValueError:
            yield image_error(path, "invalid path (contains a NUL character)")
            continue
        except OSError as exc:
            yield image_error(path, f"cannot access: {first_line(exc)}")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, st)
        else:
            yield path


# --------------------------------------------------------------------------------------------------------
# Reading


def _read_bytes(path: Path) -> bytes:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise image_error(path, missing_reason(path)) from None
    except IsADirectoryError:
        raise image_error(path, "is a folder") from None
    except PermissionError as exc:
        if os.path.isdir(path):  # Windows refuses to open folders this way
            raise image_error(path, "is a folder") from None
        raise image_error(path, f"cannot read file: {first_line(exc)}") from None
    except ValueError:
        raise image_error(path, "invalid path (contains a NUL character)") from None
    except OSError as exc:
        raise image_error(path, f"cannot read file: {first_line(exc)}") from None
    try:
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise image_error(path, "is a folder")
            if not stat.S_ISREG(st.st_mode):
                raise image_error(path, "not a regular file")
            if st.st_size > MAX_FILE_BYTES:
                raise image_error(path, _too_large_file(st.st_size))
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
                raise image_error(path, _too_large_file(total))
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except ImageError:
        raise
    except MemoryError:
        raise image_error(path, "cannot read file: out of memory") from None
    except OSError as exc:
        if isinstance(exc, IsADirectoryError):
            raise image_error(path, "is a folder") from None
        raise image_error(path, f"cannot read file: {first_line(exc)}") from exc


def _too_large_file(size: int) -> str:
    return f"file too large ({size} bytes; the limit is {MAX_FILE_BYTES} bytes)"



@dataclass(frozen=True)
class ImageFile:
    """An image file's bytes and their sha256, read once; decoding comes later (or never, on a cache hit)."""

    path: Path
    sha256: str
    data: bytes = field(repr=False)


def read_image_file(path) -> ImageFile:
    """Read a file's bytes once and hash them; raise :class:`ImageError` if it cannot be read or is empty."""
    path = as_path(path)
    data = _read_bytes(path)
    if not data:
        raise image_error(path, "empty file")
    return ImageFile(path=path, sha256=hashlib.sha256(data).hexdigest(), data=data)

