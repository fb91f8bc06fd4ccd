"""Property tests: whatever the bytes, load_image returns a usable RGB image or raises ImageError.

Real files of every supported format are made here and then damaged: bytes flipped, cut, inserted,
deleted, repeated; PNG chunks are also damaged with their CRCs fixed up so the decoder itself is reached.
"""

from __future__ import annotations

import hashlib
import os
import struct
import unicodedata
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from occ.errors import ImageError
from occ.images import LoadedImage, display_path, is_image_signature, load_image
from occ.testing import imagegen

# Fuzzed headers may declare big sizes; a lower limit keeps each example fast while still exercising
# both sides of the size check.
FUZZ_MAX_PIXELS = 1 << 20

# OCC_FUZZ_EXAMPLES raises the number of examples for a longer local campaign.
FUZZ = settings(
    max_examples=int(os.environ.get("OCC_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seed_files() -> dict[str, bytes]:
    image = imagegen.pattern_image(64, 48)
    seeds = {f"plain{ext}": data for ext, data in imagegen.sample_files().items()}
    seeds.update(
        {
            "progressive.jpg": imagegen.encode(image, "JPEG", progressive=True),
            "cmyk.jpg": imagegen.encode(image.convert("CMYK"), "JPEG"),
            "exif.jpg": imagegen.encode(image, "JPEG", exif=imagegen.exif_orientation(6)),
            "palette_alpha.png": imagegen.encode(image.convert("P"), "PNG", transparency=3),
            "gray16.png": imagegen.png_16bit(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20),
            "rgb16.png": imagegen.png_16bit(np.full((40, 40, 3), 40000, dtype=np.uint16)),
            "rgba.png": imagegen.encode(image.convert("RGBA"), "PNG"),
            "anim.gif": imagegen.animated("GIF", [(255, 0, 0), (0, 0, 255)]),
            "anim.webp": imagegen.animated("WEBP", [(255, 0, 0), (0, 0, 255)]),
            "anim.png": imagegen.animated("PNG", [(255, 0, 0), (0, 0, 255)]),
            "lossless.webp": imagegen.encode(image, "WEBP", lossless=True),
            "lzw.tif": imagegen.encode(image, "TIFF", compression="tiff_lzw"),
            "float.tif": imagegen.encode(Image.fromarray(np.full((40, 40), 0.25, np.float32)), "TIFF"),
            "rle.bmp": imagegen.encode(image.convert("P"), "BMP"),
            "gray.pgm": imagegen.encode(image.convert("L"), "PPM"),
        }
    )
    return seeds


SEEDS = _seed_files()
SEED_NAMES = sorted(SEEDS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def check_outcome(folder, data: bytes, name: str = "fuzz.png") -> LoadedImage | ImageError:
    """The invariant: a LoadedImage that is really usable, or an ImageError with a clean message."""
    path = folder / name
    path.write_bytes(data)
    try:
        loaded = load_image(path, max_pixels=FUZZ_MAX_PIXELS)
    except ImageError as error:
        message = str(error)
        assert "\n" not in message and message.isprintable()
        assert display_path(name) in message
        assert error.reason
        return error
    assert isinstance(loaded, LoadedImage)
    assert loaded.image.mode == "RGB"
    width, height = loaded.image.size
    assert min(width, height) >= 32
    assert width * height <= FUZZ_MAX_PIXELS
    assert loaded.image.size in (loaded.original_size, loaded.original_size[::-1])
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert np.asarray(loaded.image).shape == (height, width, 3)  # really decoded
    return loaded


# ---------------------------------------------------------------------------------------------------------
# Strategies


_SIGNATURES = [
    b"",
    imagegen.PNG_SIGNATURE,
    b"\xff\xd8\xff",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"P6\n",
    b"P5 64 48 65535\n",
]


@st.composite
def mutation_ops(draw, max_ops: int = 4):
    """A list of edits; positions are taken modulo the length of the data when applied."""
    ops = []
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "repeat"]))
        position = draw(st.integers(0, 1 << 20))
        if kind == "flip":
            ops.append((kind, position, draw(st.integers(1, 255))))
        elif kind == "set":
            ops.append((kind, position, draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))))
        elif kind == "truncate":
            ops.append((kind, position, 0))
        elif kind == "insert":
            ops.append((kind, position, draw(st.binary(min_size=1, max_size=64))))
        else:
            ops.append((kind, position, draw(st.integers(1, 256))))
    return ops


def apply_ops(data: bytes, ops) -> bytes:
    buffer = bytearray(data)
    for kind, position, arg in ops:
        if not buffer:
            break
        at = position % len(buffer)
        if kind == "flip":
            buffer[at] ^= arg
        elif kind == "set":
            buffer[at] = arg
        elif kind == "truncate":
            del buffer[at:]
        elif kind == "insert":
            buffer[at:at] = arg
        elif kind == "delete":
            del buffer[at : at + arg]
        elif kind == "repeat":
            buffer[at:at] = buffer[at : at + arg]
    return bytes(buffer)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], len(imagegen.PNG_SIGNATURE)
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def png_rebuild(chunks) -> bytes:
    return imagegen.PNG_SIGNATURE + b"".join(imagegen.png_chunk(kind, payload) for kind, payload in chunks)


# ---------------------------------------------------------------------------------------------------------
# Properties


@FUZZ
@given(prefix=st.sampled_from(_SIGNATURES), body=st.binary(max_size=4096))
def test_random_bytes(workdir, prefix, body):
    check_outcome(workdir, prefix + body)


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), ops=mutation_ops())
def test_mutated_real_files(workdir, name, ops):
    check_outcome(workdir, apply_ops(SEEDS[name], ops), name="fuzz" + os.path.splitext(name)[1])


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), cut=st.floats(0.0, 1.0))
def test_truncated_real_files(workdir, name, cut):
    data = SEEDS[name]
    outcome = check_outcome(workdir, data[: int(len(data) * cut)])
    if cut == 0.0:
        assert isinstance(outcome, ImageError) and outcome.reason == "empty file"


@FUZZ
@given(
    name=st.sampled_from([n for n in SEED_NAMES if n.endswith(".png")]),
    which=st.integers(0, 1 << 10),
    ops=mutation_ops(max_ops=3),
    recompress=st.booleans(),
)
def test_png_with_valid_crcs(workdir, name, which, ops, recompress):
    """Damage one chunk's payload and fix its CRC, so Pillow's PNG reader and zlib decoder see it."""
    chunks = png_chunks(SEEDS[name])
    index = which % len(chunks)
    kind, payload = chunks[index]
    if kind == b"IDAT" and recompress:  # damage the filtered scanlines rather than the zlib stream
        try:
            payload = zlib.compress(apply_ops(zlib.decompress(payload), ops))
        except zlib.error:  # an APNG's first IDAT may not be a complete stream on its own
            payload = apply_ops(payload, ops)
    else:
        payload = apply_ops(payload, ops) if payload else payload
    chunks[index] = (kind, payload)
    check_outcome(workdir, png_rebuild(chunks))


@FUZZ
@given(width=st.integers(0, 1 << 17), height=st.integers(0, 1 << 17), fmt=st.sampled_from("PGBW"))
def test_declared_sizes(workdir, width, height, fmt):
    """Headers declaring any size, with no real pixel data: refused cleanly, never decoded big."""
    if fmt == "P":
        data = imagegen.png_bomb(width, height)
    elif fmt == "G":
        data = imagegen.gif_bomb(min(width, 65535), min(height, 65535))
    elif fmt == "B":
        data = imagegen.bmp_bomb(min(width, 2**31 - 1), min(height, 2**31 - 1))
    else:
        data = imagegen.webp_bomb(max(1, min(width, 1 << 24)), max(1, min(height, 1 << 24)))
    check_outcome(workdir, data)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(), st.binary()))
def test_display_path_is_one_printable_line(value):
    shown = display_path(value)
    assert all(ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in shown)
    assert not any(ch in shown for ch in "\n\r\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
    shown.encode("utf-8")  # no lone surrogates left


@settings(max_examples=300, deadline=None)
@given(head=st.binary(max_size=64))
def test_signature_never_raises(head):
    assert is_image_signature(head) in (True, False)
