"""Build test images at test time: nothing binary is committed.

Pillow encodes the ordinary files; the odd ones (16-bit RGB PNG, headers that declare huge sizes) are
written byte by byte here.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pattern_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An asymmetric (height, width, 3) uint8 picture: every flip or rotation of it differs."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[..., 0] = (xs * 255) // max(1, width - 1)
    out[..., 1] = (ys * 255) // max(1, height - 1)
    out[..., 2] = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    return out


def pattern_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(pattern_array(width, height, seed))


def family_folders(root: Path, makers: dict[str, Callable[..., Image.Image]], train: int, test: int,
                   **params) -> dict[str, tuple[Path, Path]]:
    """``root/NAME/train`` and ``root/NAME/test`` for each image family: ``train`` PNGs made with seeds
    0.., ``test`` with seeds 100.. (``makers[NAME](seed, **params)``). Returns NAME -> (train, test)."""
    out = {}
    for name, make in makers.items():
        folders = root / name / "train", root / name / "test"
        for folder, seeds in zip(folders, (range(train), range(100, 100 + test))):
            folder.mkdir(parents=True)
            for s in seeds:
                make(s, **params).save(folder / f"{s}.png")
        out[name] = folders
    return out


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def sample_files(width: int = 64, height: int = 48) -> dict[str, bytes]:
    """One small valid file per supported format, keyed by a file extension."""
    image = pattern_image(width, height)
    return {
        ".png": encode(image, "PNG"),
        ".jpg": encode(image, "JPEG", quality=90),
        ".gif": encode(image.convert("P"), "GIF"),
        ".webp": encode(image, "WEBP", quality=80),
        ".bmp": encode(image, "BMP"),
        ".tif": encode(image, "TIFF"),
        ".ppm": encode(image, "PPM"),
    }


def animated(fmt: str, colours, size=(48, 40)) -> bytes:
    """A multi-frame file (GIF, WEBP or PNG = APNG) with one flat frame per colour."""
    frames = [Image.new("RGB", size, colour) for colour in colours]
    params = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)


# ---------------------------------------------------------------------------------------------------------
# Hand-made PNG


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_from_chunks(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_16bit(values: np.ndarray) -> bytes:
    """A 16-bit PNG from an (h, w) gray or (h, w, 3) RGB array of integers 0..65535, written with zlib."""
    values = np.asarray(values)
    if values.ndim == 2:
        colour_type = 0
    elif values.ndim == 3 and values.shape[2] == 3:
        colour_type = 2
    else:
        raise ValueError("expected (h, w) or (h, w, 3)")
    big_endian = values.astype(">u2")
    rows = b"".join(b"\x00" + big_endian[y].tobytes() for y in range(values.shape[0]))  # filter 0 per row
    return png_from_chunks(values.shape[1], values.shape[0], 16, colour_type, zlib.compress(rows))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header (correct CRCs) declaring width x height RGB, with only a few bytes of data."""
    return png_from_chunks(width, height, 8, 2, zlib.compress(b"\x00" * 64))


# ---------------------------------------------------------------------------------------------------------
# Other headers that declare huge sizes


def gif_bomb(width: int, height: int) -> bytes:
    """GIF89a whose logical screen and only frame are width x height (max 65535), with a 1-pixel LZW body."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # global palette of 2 colours
    palette = b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    body = b"\x02\x02\x44\x01\x00"  # LZW min code size 2, one sub-block, terminator
    return header + palette + descriptor + body + b"\x3b"


def bmp_bomb(width: int, height: int) -> bytes:
    """BMP with a BITMAPINFOHEADER declaring width x height at 24 bits, and no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    file_header = b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info))
    return file_header + info


def webp_bomb(width: int, height: int) -> bytes:
    """Extended (VP8X) WebP declaring a width x height canvas (max 16384 per side), no image data."""
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A copy of a baseline JPEG whose SOF0 marker declares width x height (max 65535)."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()
