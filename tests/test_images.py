"""occ.images: finding image files and opening them safely. Every image is made in tmp_path at test time."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from occ import images
from occ.errors import ImageError
from occ.images import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    LoadedImage,
    display_path,
    is_image_signature,
    iter_images,
    iter_paths,
    load_image,
)
from occ.testing import imagegen, traced_peak

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def refused(path, **kwargs) -> ImageError:
    """Load ``path`` expecting an ImageError; check the message is one clean line naming the file."""
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    assert_clean(info.value, Path(os.fsdecode(path)).name)
    return info.value


def assert_clean(error: ImageError, name: str | None = None) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert message.isprintable(), message
    assert message == f"{error.path}: {error.reason}"
    if name is not None:
        assert display_path(name) in message


def pixels(loaded: LoadedImage) -> np.ndarray:
    return np.asarray(loaded.image)


def check_loaded(loaded: LoadedImage, path: Path) -> None:
    assert isinstance(loaded, LoadedImage)
    assert loaded.image.mode == "RGB"
    assert min(loaded.image.size) >= MIN_SIDE
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == path


# ---------------------------------------------------------------------------------------------------------
# Constants and helpers


def test_constants():
    assert MAX_PIXELS == 89_478_485
    assert MIN_SIDE == 32
    assert MAX_FILE_BYTES == 512 * 2**20


@pytest.mark.parametrize("ext", sorted(imagegen.sample_files()))
def test_signature_of_every_supported_format(ext):
    assert is_image_signature(imagegen.sample_files()[ext][:32])


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"hello, world\n",
        b"BMW is a car maker and this is text",
        b"P1 meeting notes: nothing to add",
        b"P6_final_report.txt",
        b"RIFF\x10\x00\x00\x00WAVEfmt ",
        b"\x89PNX\r\n\x1a\n",
        b"\x00" * 32,
        b'{"json": true}',
    ],
)
def test_signature_rejects_other_content(head):
    assert not is_image_signature(head)


def test_signature_accepts_pnm_and_tiff_byte_orders():
    assert is_image_signature(b"P6\n64 48\n255\n")
    assert is_image_signature(b"P5 64 48 65535\n")
    assert is_image_signature(b"II*\x00\x08\x00\x00\x00")
    assert is_image_signature(b"MM\x00*\x00\x00\x00\x08")
    assert is_image_signature(b"RIFF\x00\x00\x00\x00WEBPVP8 ")


def test_display_path():
    assert display_path("photos/a.png") == "photos/a.png"
    assert display_path(Path("photos") / "é 日本.png") == "photos/é 日本.png"
    assert display_path(b"bad\xffname.png") == "bad\\xffname.png"
    assert display_path("two\nlines\r.png") == "two\\x0alines\\x0d.png"
    assert display_path("tab\there\u2028.png") == "tab\\x09here\\u2028.png"
    assert display_path("bad\udcfe.png") == "bad\\xfe.png"  # str from a surrogate-escaped bytes name
    for shown in (display_path(b"\x1b[31mred\x07"), display_path("a\x00b\x7f")):
        assert shown.isprintable()


# ---------------------------------------------------------------------------------------------------------
# load_image: good files


@pytest.mark.parametrize("ext", sorted(imagegen.sample_files()))
def test_every_supported_format_loads(tmp_path, ext):
    path = write(tmp_path / f"img{ext}", imagegen.sample_files()[ext])
    loaded = load_image(path)
    check_loaded(loaded, path)
    assert loaded.image.size == (64, 48)
    assert loaded.original_size == (64, 48)
    assert loaded.format is not None


def test_lossless_png_is_exact_and_independent_of_the_file(tmp_path):
    source = imagegen.pattern_array(50, 40)
    path = write(tmp_path / "a.png", imagegen.encode(Image.fromarray(source), "PNG"))
    loaded = load_image(path)
    assert np.array_equal(pixels(loaded), source)
    assert loaded.format == "PNG"
    path.unlink()  # the decoded image must not depend on the file any more
    assert np.asarray(loaded.image.resize((10, 10))).shape == (10, 10, 3)


def test_sha256_is_of_the_file_bytes(tmp_path):
    data = imagegen.sample_files()[".jpg"]
    path = write(tmp_path / "a.jpg", data)
    assert load_image(path).sha256 == hashlib.sha256(data).hexdigest()
    again = write(tmp_path / "copy.png", data)  # same bytes, other name: same key
    assert load_image(again).sha256 == hashlib.sha256(data).hexdigest()


def test_content_decides_not_extension(tmp_path):
    path = write(tmp_path / "actually_jpeg.png", imagegen.sample_files()[".jpg"])
    loaded = load_image(path)
    assert loaded.format == "JPEG"
    check_loaded(loaded, path)


def test_accepts_str_bytes_and_pathlike(tmp_path):
    path = write(tmp_path / "a.png", imagegen.sample_files()[".png"])
    for form in (str(path), os.fsencode(path), path):
        assert load_image(form).path == path
    with pytest.raises(TypeError):
        load_image(None)
    with pytest.raises(TypeError):
        list(iter_paths([path, 3]))


# ---------------------------------------------------------------------------------------------------------
# load_image: refusals with a clear reason


def test_zero_byte_file(tmp_path):
    error = refused(write(tmp_path / "empty.png", b""))
    assert error.reason == "empty file"


def test_image_error_crosses_a_process_boundary(tmp_path):
    """A worker pool hands a failed file's error back pickled: it must come back whole, not fail itself."""
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    bad = write(tmp_path / "empty.png", b"")
    with ProcessPoolExecutor(1) as pool, pytest.raises(ImageError) as caught:
        pool.submit(load_image, bad).result()
    assert caught.value.path == str(bad) and caught.value.reason and str(bad) in str(caught.value)
    back = pickle.loads(pickle.dumps(caught.value))
    assert (back.path, back.reason, str(back)) == (caught.value.path, caught.value.reason, str(caught.value))


def test_text_named_png(tmp_path):
    error = refused(write(tmp_path / "notes.png", b"just some text\nnot an image\n"))
    assert error.reason == "not an image (unrecognised content)"


def test_random_binary_named_png(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    error = refused(write(tmp_path / "noise.png", data))
    assert error.reason in {"not an image (unrecognised content)", "truncated or corrupt image data"}
    assert error.reason.startswith("not an image")  # this seed does not start with any known signature


def test_known_but_unsupported_format_is_named(tmp_path):
    data = imagegen.encode(imagegen.pattern_image(64, 64), "ICO")
    error = refused(write(tmp_path / "favicon.png", data))
    assert error.reason == "unsupported image format ICO"


@pytest.mark.parametrize(
    "data",
    [
        imagegen.PNG_SIGNATURE + b"garbage" * 10,
        imagegen.PNG_SIGNATURE + imagegen.png_chunk(b"IEND", b""),  # Pillow: "not a PNG file"
        b"BM" + bytes(12) + (40).to_bytes(4, "little") + bytes(40),
        b"GIF89a" + bytes(3),
    ],
)
def test_image_signature_with_garbage_is_corrupt_not_unknown(tmp_path, data):
    assert is_image_signature(data[:32]) or data.startswith(b"GIF")
    error = refused(write(tmp_path / "x.png", data))
    assert error.reason == "truncated or corrupt image data"


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file(tmp_path, ext):
    data = imagegen.encode(imagegen.pattern_image(96, 96), "PNG" if ext == ".png" else "JPEG")
    error = refused(write(tmp_path / f"cut{ext}", data[: len(data) // 2]))
    assert error.reason == "truncated or corrupt image data"


def test_jpeg_missing_only_its_end_marker_is_truncated(tmp_path):
    data = imagegen.encode(imagegen.pattern_image(64, 64), "JPEG")
    assert data.endswith(b"\xff\xd9")
    assert refused(write(tmp_path / "cut.jpg", data[:-2])).reason == "truncated or corrupt image data"


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1), (31, 64), (64, 31)])
def test_too_small(tmp_path, size):
    path = write(tmp_path / "t.png", imagegen.encode(Image.new("RGB", size, "red"), "PNG"))
    error = refused(path)
    assert error.reason == f"image too small ({size[0]}x{size[1]}); at least 32 px per side needed"


def test_tiny_side_refused_from_the_header_before_decoding(tmp_path):
    # The header declares 10x100000 and no pixel data follows: decoding would report truncation.
    error = refused(write(tmp_path / "strip.png", imagegen.png_bomb(10, 100_000)))
    assert error.reason == "image too small (10x100000); at least 32 px per side needed"


def test_min_side_is_a_parameter(tmp_path):
    path = write(tmp_path / "t.png", imagegen.encode(Image.new("RGB", (40, 40)), "PNG"))
    assert load_image(path).image.size == (40, 40)
    assert "at least 64 px" in refused(path, min_side=64).reason
    one = write(tmp_path / "one.png", imagegen.encode(Image.new("RGB", (1, 1)), "PNG"))
    assert load_image(one, min_side=1).image.size == (1, 1)


def test_exactly_min_side_is_accepted(tmp_path):
    path = write(tmp_path / "t.png", imagegen.encode(Image.new("RGB", (32, 1000)), "PNG"))
    assert load_image(path).image.size == (32, 1000)


def test_folder_is_refused(tmp_path):
    assert refused(tmp_path).reason == "is a folder"


def test_missing_file(tmp_path):
    assert refused(tmp_path / "gone.png").reason == "no such file or folder"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert refused(fifo).reason == "not a regular file"


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    path = write(tmp_path / "secret.png", imagegen.sample_files()[".png"])
    real_open = os.open

    def deny(target, *args, **kwargs):
        if os.fspath(target) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    error = refused(path)
    assert error.reason == f"cannot read file: {os.strerror(errno.EACCES)}"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_chmod(tmp_path):
    path = write(tmp_path / "secret.png", imagegen.sample_files()[".png"])
    path.chmod(0)
    try:
        assert refused(path).reason.startswith("cannot read file: ")
    finally:
        path.chmod(0o644)


def test_read_error_is_reported(tmp_path, monkeypatch):
    path = write(tmp_path / "flaky.png", imagegen.sample_files()[".png"])
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def fileno(self):
            return self.handle.fileno()

        def read(self, *args):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Failing(real_fdopen(fd, *a, **k)))
    assert refused(path).reason == f"cannot read file: {os.strerror(errno.EIO)}"


def test_oversized_file_refused_without_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as handle:  # sparse: takes no disk space
        handle.write(imagegen.PNG_SIGNATURE)
        handle.truncate(MAX_FILE_BYTES + 1)
    error, peak = traced_peak(lambda: refused(path))
    assert error.reason == f"file too large ({MAX_FILE_BYTES + 1} bytes; the limit is {MAX_FILE_BYTES} bytes)"
    assert peak < 5 * 2**20


def test_file_limit_is_read_at_call_time(tmp_path, monkeypatch):
    path = write(tmp_path / "a.png", imagegen.sample_files()[".png"])
    monkeypatch.setattr(images.files, "MAX_FILE_BYTES", 100)  # read by its owner at call time
    assert refused(path).reason.startswith("file too large (")


def test_memory_error_becomes_image_error(tmp_path, monkeypatch):
    path = write(tmp_path / "a.png", imagegen.sample_files()[".png"])

    def exhausted(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)
    assert refused(path).reason == "image too large to decode"


def test_unexpected_decoder_exception_becomes_image_error(tmp_path, monkeypatch):
    path = write(tmp_path / "a.png", imagegen.sample_files()[".png"])

    def broken(self):
        raise RuntimeError("decoder bug\nwith two lines")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    error = refused(path)
    assert error.reason == "truncated or corrupt image data"
    assert isinstance(error.__cause__, RuntimeError)


# ---------------------------------------------------------------------------------------------------------
# Decompression bombs: refused from the header, fast and in bounded memory


BOMBS = {
    "png_100000x100000": (".png", lambda: imagegen.png_bomb(100_000, 100_000), (100_000, 100_000)),
    "png_10000x10000": (".png", lambda: imagegen.png_bomb(10_000, 10_000), (10_000, 10_000)),
    "gif_65535x65535": (".gif", lambda: imagegen.gif_bomb(65_535, 65_535), (65_535, 65_535)),
    "gif_10000x9000": (".gif", lambda: imagegen.gif_bomb(10_000, 9_000), (10_000, 9_000)),
    "bmp_100000x100000": (".bmp", lambda: imagegen.bmp_bomb(100_000, 100_000), (100_000, 100_000)),
    "webp_16384x16384": (".webp", lambda: imagegen.webp_bomb(16_384, 16_384), (16_384, 16_384)),
    "webp_10000x10000": (".webp", lambda: imagegen.webp_bomb(10_000, 10_000), (10_000, 10_000)),
    "jpeg_65000x65000": (
        ".jpg",
        lambda: imagegen.jpeg_with_size(imagegen.sample_files()[".jpg"], 65_000, 65_000),
        (65_000, 65_000),
    ),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decompression_bomb_refused_in_bounded_memory(tmp_path, name):
    ext, make, (width, height) = BOMBS[name]
    path = write(tmp_path / f"big{ext}", make())
    error, peak = traced_peak(lambda: refused(path))
    assert error.reason == (
        f"declared size {width}x{height} exceeds the 89478485-pixel limit (possible decompression bomb)"
    )
    assert str(error) == f"{path}: {error.reason}"
    assert peak < 50 * 2**20


def test_bomb_check_uses_max_pixels_argument(tmp_path):
    path = write(tmp_path / "a.png", imagegen.sample_files()[".png"])  # 64x48 = 3072 pixels
    error = refused(path, max_pixels=3071)
    assert error.reason == "declared size 64x48 exceeds the 3071-pixel limit (possible decompression bomb)"
    assert load_image(path, max_pixels=3072).image.size == (64, 48)


def test_pillow_globals_untouched(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for name in sorted(BOMBS):
        ext, make, _ = BOMBS[name]
        refused(write(tmp_path / f"{name}{ext}", make()))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_bombs_do_not_raise_resident_memory(tmp_path):
    """tracemalloc does not see Pillow's C allocations: watch the process's peak RSS in a fresh process."""
    for name in sorted(BOMBS):
        ext, make, _ = BOMBS[name]
        write(tmp_path / f"{name}{ext}", make())
    script = textwrap.dedent(
        """
        import resource, sys
        from pathlib import Path
        from occ.errors import ImageError
        from occ.images import load_image
        files = sorted(Path(sys.argv[1]).iterdir())
        warm = Path(sys.argv[2])
        load_image(warm)  # import every plugin and numpy paths first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in files:
            try:
                load_image(path)
            except ImageError as error:
                assert "decompression bomb" in error.reason, error
            else:
                raise AssertionError(path)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024)
        """
    )
    warm = write(tmp_path.parent / f"{tmp_path.name}_warm.png", imagegen.sample_files()[".png"])
    pythonpath = [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(warm)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) < 50  # MiB of peak resident growth


# ---------------------------------------------------------------------------------------------------------
# Pixel formats


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    path = write(tmp_path / "g16.png", imagegen.png_16bit(np.full((40, 40), 1000, dtype=np.uint16)))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I;16")  # what the test is about: Pillow would clip this to white
    loaded = load_image(path)
    values = pixels(loaded)
    assert values.shape == (40, 40, 3)
    assert np.all(np.abs(values.astype(float) - 1000 / 257) <= 0.5)


def test_16bit_gray_gradient_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (40, 1))
    loaded = load_image(write(tmp_path / "ramp.png", imagegen.png_16bit(ramp)))
    row = pixels(loaded)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)
    assert np.all(np.abs(row - ramp[0] / 257) <= 0.5)


def test_16bit_rgb_png(tmp_path):
    values = np.zeros((40, 48, 3), dtype=np.uint16)
    values[...] = (1000, 30000, 65535)
    loaded = load_image(write(tmp_path / "rgb16.png", imagegen.png_16bit(values)))
    got = pixels(loaded)[5, 5].astype(float)
    assert np.all(np.abs(got - np.array([1000, 30000, 65535]) / 257) <= 1), got


def test_16bit_pgm(tmp_path):
    body = np.full((40, 40), 1000, dtype=">u2").tobytes()
    loaded = load_image(write(tmp_path / "g16.pgm", b"P5 40 40 65535\n" + body))
    assert np.all(np.abs(pixels(loaded).astype(float) - 1000 / 257) <= 0.5)


def test_16bit_tiff(tmp_path):
    image = Image.fromarray(np.full((40, 40), 51400, dtype=np.uint16))
    loaded = load_image(write(tmp_path / "g16.tif", imagegen.encode(image, "TIFF")))
    assert np.all(pixels(loaded) == 200)


def test_32bit_integer_tiff_is_stretched(tmp_path):
    values = np.zeros((40, 40), dtype=np.int32)
    values[:, 20:] = 100_000  # beyond 16 bits
    loaded = load_image(write(tmp_path / "i32.tif", imagegen.encode(Image.fromarray(values), "TIFF")))
    assert np.all(pixels(loaded)[:, :20] == 0) and np.all(pixels(loaded)[:, 20:] == 255)


def test_float_tiff(tmp_path):
    values = np.full((40, 40), 0.5, dtype=np.float32)
    values[0, 0] = np.nan
    loaded = load_image(write(tmp_path / "f.tif", imagegen.encode(Image.fromarray(values), "TIFF")))
    assert pixels(loaded)[5, 5, 0] == 128
    assert pixels(loaded)[0, 0, 0] == 0


def test_cmyk_jpeg(tmp_path):
    image = Image.new("RGB", (48, 40), (255, 0, 0)).convert("CMYK")
    path = write(tmp_path / "cmyk.jpg", imagegen.encode(image, "JPEG", quality=95))
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    got = pixels(load_image(path))[10, 10].astype(int)
    assert np.all(np.abs(got - [255, 0, 0]) <= 8), got


def test_palette_png_with_transparency_keeps_colours(tmp_path):
    image = Image.new("P", (48, 40), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.paste(1, (24, 0, 48, 40))
    path = write(tmp_path / "p.png", imagegen.encode(image, "PNG", transparency=0))
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    values = pixels(load_image(path))
    assert tuple(values[0, 0]) == (10, 20, 30)  # fully transparent, colour still as stored
    assert tuple(values[0, 30]) == (200, 100, 50)


def test_la_png(tmp_path):
    path = write(tmp_path / "la.png", imagegen.encode(Image.new("LA", (48, 40), (100, 0)), "PNG"))
    assert tuple(pixels(load_image(path))[3, 3]) == (100, 100, 100)


def test_rgba_png_drops_alpha_keeps_colour(tmp_path):
    image = Image.new("RGBA", (48, 40), (10, 20, 30, 0))
    image.paste((200, 100, 50, 128), (0, 0, 10, 10))
    values = pixels(load_image(write(tmp_path / "rgba.png", imagegen.encode(image, "PNG"))))
    assert tuple(values[20, 20]) == (10, 20, 30)
    assert tuple(values[5, 5]) == (200, 100, 50)


def test_bilevel_and_gray(tmp_path):
    one = write(tmp_path / "1.png", imagegen.encode(Image.new("1", (40, 40), 1), "PNG"))
    gray = write(tmp_path / "l.png", imagegen.encode(Image.new("L", (40, 40), 77), "PNG"))
    assert np.all(pixels(load_image(one)) == 255)
    assert np.all(pixels(load_image(gray)) == 77)


@pytest.mark.parametrize("fmt, ext", [("GIF", ".gif"), ("WEBP", ".webp"), ("PNG", ".png")])
def test_animation_gives_first_frame(tmp_path, fmt, ext):
    path = write(tmp_path / f"anim{ext}", imagegen.animated(fmt, [(255, 0, 0), (0, 0, 255)]))
    with Image.open(path) as raw:
        assert raw.n_frames == 2
    values = pixels(load_image(path))
    assert np.all(values == np.array([255, 0, 0], dtype=np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_upright_pixels(tmp_path, orientation):
    upright = imagegen.pattern_array(40, 64)  # portrait, 40 wide
    # What a camera stores for each EXIF orientation, written with numpy (independent of Pillow's table).
    stored = {
        1: upright,
        2: upright[:, ::-1],
        3: upright[::-1, ::-1],
        4: upright[::-1, :],
        5: upright.transpose(1, 0, 2),
        6: np.rot90(upright, 1),  # 6: the viewer turns it 90 degrees clockwise
        7: upright[::-1, ::-1].transpose(1, 0, 2),
        8: np.rot90(upright, -1),
    }[orientation]
    stored = np.ascontiguousarray(stored)
    exif = imagegen.exif_orientation(orientation)
    path = write(tmp_path / f"o{orientation}.png", imagegen.encode(Image.fromarray(stored), "PNG", exif=exif))
    loaded = load_image(path)
    assert loaded.original_size == (stored.shape[1], stored.shape[0])
    assert np.array_equal(pixels(loaded), upright)


def test_exif_orientation_in_jpeg_rotates(tmp_path):
    stored = np.ascontiguousarray(np.rot90(imagegen.pattern_array(40, 64), 1))
    jpeg = imagegen.encode(Image.fromarray(stored), "JPEG", exif=imagegen.exif_orientation(6))
    loaded = load_image(write(tmp_path / "r.jpg", jpeg))
    assert loaded.original_size == (64, 40)
    assert loaded.image.size == (40, 64)


@pytest.mark.parametrize(
    "exif", [b"Exif\x00\x00garbage", b"II*\x00\xff\xff\xff\x7f", imagegen.exif_orientation(9)]
)
def test_broken_exif_keeps_image_unrotated(tmp_path, exif):
    source = imagegen.pattern_array(40, 64)
    path = write(tmp_path / "e.png", imagegen.encode(Image.fromarray(source), "PNG", exif=exif))
    assert np.array_equal(pixels(load_image(path)), source)


def test_rotated_small_side_checked_after_rotation(tmp_path):
    stored = Image.new("RGB", (20, 64))
    path = write(tmp_path / "s.png", imagegen.encode(stored, "PNG", exif=imagegen.exif_orientation(6)))
    assert refused(path).reason.startswith("image too small (")


# ---------------------------------------------------------------------------------------------------------
# File names


def test_non_utf8_name_gives_printable_one_line_message(tmp_path):
    raw_name = b"bad\xff\nname.png"
    raw_path = os.path.join(os.fsencode(tmp_path), raw_name)
    try:
        with open(raw_path, "wb") as handle:
            handle.write(b"not an image at all")
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take such names")
    for target in (raw_path, os.fsdecode(raw_path)):
        with pytest.raises(ImageError) as info:
            load_image(target)
        message = str(info.value)
        assert message.isprintable() and "\n" not in message
        assert message.endswith("bad\\xff\\x0aname.png: not an image (unrecognised content)")
    [found] = list(iter_paths([tmp_path]))
    assert isinstance(found, Path)
    assert "\\xff" in str(next(iter_images([tmp_path])))


def test_non_utf8_name_of_a_good_image_loads(tmp_path):
    raw_path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    try:
        with open(raw_path, "wb") as handle:
            handle.write(imagegen.sample_files()[".png"])
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take such names")
    [loaded] = list(iter_images([tmp_path]))
    assert isinstance(loaded, LoadedImage)
    assert os.fsencode(loaded.path) == raw_path


def test_long_file_name(tmp_path):
    name = "a" * 246 + ".png"
    assert len(name) == 250
    path = write(tmp_path / name, imagegen.sample_files()[".png"])
    check_loaded(load_image(path), path)
    assert list(iter_paths([tmp_path])) == [path]
    bad = write(tmp_path / ("b" * 246 + ".png"), b"text")
    assert_clean(refused(bad), bad.name)


# ---------------------------------------------------------------------------------------------------------
# iter_paths


def make_tree(root: Path) -> None:
    files = imagegen.sample_files()
    write(root / "b.png", files[".png"])
    write(root / "a.jpg", files[".jpg"])
    write(root / "c.gif", files[".gif"])
    write(root / "b_dir" / "z.webp", files[".webp"])
    write(root / "b_dir" / "deeper" / "y.BMP", files[".bmp"])
    write(root / "b_dir" / "x.tiff", files[".tif"])
    write(root / "README.txt", b"hello")
    write(root / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write(root / ".hidden.png", files[".png"])
    write(root / ".cache" / "d.png", files[".png"])
    write(root / "no_extension", files[".png"])  # found by its content
    write(root / "photo.JPEG", files[".jpg"])


def test_walk_is_sorted_depth_first_and_skips_non_images(tmp_path):
    make_tree(tmp_path)
    got = list(iter_paths([tmp_path]))
    assert got == [
        tmp_path / "a.jpg",
        tmp_path / "b.png",
        tmp_path / "b_dir" / "deeper" / "y.BMP",
        tmp_path / "b_dir" / "x.tiff",
        tmp_path / "b_dir" / "z.webp",
        tmp_path / "c.gif",
        tmp_path / "no_extension",
        tmp_path / "photo.JPEG",
    ]
    assert list(iter_paths([tmp_path])) == got  # deterministic


def test_relative_inputs_stay_relative(tmp_path, monkeypatch):
    make_tree(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    got = list(iter_paths(["photos"]))
    assert got[0] == Path("photos/a.jpg")
    assert all(not path.is_absolute() for path in got)


def test_explicit_files_always_yielded_in_order(tmp_path):
    text = write(tmp_path / "notes.txt", b"hello")
    hidden = write(tmp_path / ".x.png", imagegen.sample_files()[".png"])
    image = write(tmp_path / "a.png", imagegen.sample_files()[".png"])
    assert list(iter_paths([text, str(hidden), image, image])) == [text, hidden, image, image]
    assert refused(text).reason == "not an image (unrecognised content)"


def test_missing_input(tmp_path):
    [error] = list(iter_paths([tmp_path / "nope"]))
    assert isinstance(error, ImageError)
    assert error.reason == "no such file or folder"
    assert_clean(error, "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "texts" / "README.txt", b"hello")
    write(tmp_path / "texts" / ".hidden.png", imagegen.sample_files()[".png"])
    errors = list(iter_paths([tmp_path / "empty", tmp_path / "texts"]))
    assert [type(e) for e in errors] == [ImageError, ImageError]
    assert [e.reason for e in errors] == ["folder holds no images"] * 2
    assert errors[0].path == str(tmp_path / "empty")


def test_text_named_png_in_folder_is_yielded_then_fails(tmp_path):
    write(tmp_path / "fake.png", b"this is text")
    write(tmp_path / "notes.txt", b"this is text")
    assert list(iter_paths([tmp_path])) == [tmp_path / "fake.png"]
    [error] = list(iter_images([tmp_path]))
    assert isinstance(error, ImageError)
    assert error.reason == "not an image (unrecognised content)"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_terminates_and_yields_each_file_once(tmp_path):
    files = imagegen.sample_files()
    root = tmp_path / "root"
    write(root / "a.png", files[".png"])
    write(root / "sub" / "b.png", files[".png"])
    try:
        os.symlink(root, root / "sub" / "loop")  # back to the top
        os.symlink(root / "sub", root / "link_to_sub")  # the same folder under two names
        os.symlink(root / "sub", root / "sub" / "self")
    except OSError:
        pytest.skip("cannot make symlinks here")
    got = list(iter_paths([root]))
    assert all(isinstance(p, Path) for p in got)
    real_files = [(root / "a.png").resolve(), (root / "sub" / "b.png").resolve()]
    assert sorted(p.resolve() for p in got) == sorted(real_files)
    assert got == [root / "a.png", root / "link_to_sub" / "b.png"]  # sorted: the link comes before "sub"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_broken_symlinks(tmp_path):
    try:
        os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
        os.symlink(tmp_path / "gone.txt", tmp_path / "dangling.txt")
    except OSError:
        pytest.skip("cannot make symlinks here")
    write(tmp_path / "ok.png", imagegen.sample_files()[".png"])
    got = list(iter_paths([tmp_path]))
    assert len(got) == 2
    assert isinstance(got[0], ImageError) and got[0].reason == "broken symbolic link"
    assert got[0].path == str(tmp_path / "dangling.png")
    assert got[1] == tmp_path / "ok.png"
    [explicit] = list(iter_paths([tmp_path / "dangling.txt"]))
    assert isinstance(explicit, ImageError) and explicit.reason == "broken symbolic link"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifos_in_folders_are_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # would block if sniffed with a plain open()
    os.mkfifo(tmp_path / "pipe.png")
    write(tmp_path / "ok.png", imagegen.sample_files()[".png"])
    got = list(iter_paths([tmp_path]))
    assert got[0] == tmp_path / "ok.png"
    assert isinstance(got[1], ImageError) and got[1].reason == "not a regular file"
    assert len(got) == 2


def test_unreadable_subfolder_is_reported_and_walk_goes_on(tmp_path, monkeypatch):
    files = imagegen.sample_files()
    write(tmp_path / "a_locked" / "x.png", files[".png"])
    write(tmp_path / "b.png", files[".png"])
    locked = str(tmp_path / "a_locked")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    got = list(iter_paths([tmp_path]))
    assert isinstance(got[0], ImageError)
    assert got[0].reason == f"cannot read folder: {os.strerror(errno.EACCES)}"
    assert got[0].path == locked
    assert got[1:] == [tmp_path / "b.png"]
    [only] = list(iter_paths([locked]))
    assert isinstance(only, ImageError) and only.reason.startswith("cannot read folder: ")


def test_iter_paths_is_lazy_on_an_infinite_input(tmp_path):
    image = write(tmp_path / "a.png", imagegen.sample_files()[".png"])
    first = list(itertools.islice(iter_paths(itertools.repeat(image)), 10))
    assert first == [image] * 10
    missing = (tmp_path / f"missing{i}.png" for i in itertools.count())
    errors = list(itertools.islice(iter_paths(missing), 10))
    assert [e.reason for e in errors] == ["no such file or folder"] * 10
    assert errors[9].path.endswith("missing9.png")


def test_iter_paths_does_not_read_ahead(tmp_path):
    image = write(tmp_path / "a.png", imagegen.sample_files()[".png"])
    pulled = []

    def inputs():
        for i in itertools.count():
            pulled.append(i)
            yield image

    stream = iter_paths(inputs())
    next(stream)
    next(stream)
    assert pulled == [0, 1]


# ---------------------------------------------------------------------------------------------------------
# iter_images


def test_iter_images_goes_on_past_bad_files(tmp_path):
    files = imagegen.sample_files()
    write(tmp_path / "1_good.png", files[".png"])
    write(tmp_path / "2_empty.png", b"")
    write(tmp_path / "3_good.jpg", files[".jpg"])
    write(tmp_path / "4_text.png", b"text")
    write(tmp_path / "5_cut.png", files[".png"][:100])
    write(tmp_path / "6_tiny.png", imagegen.encode(Image.new("RGB", (8, 8)), "PNG"))
    write(tmp_path / "7_good.gif", files[".gif"])
    write(tmp_path / "8_readme.txt", b"skipped")
    got = list(iter_images([tmp_path, tmp_path / "missing"]))
    kinds = ["ok" if isinstance(item, LoadedImage) else "error" for item in got]
    assert kinds == ["ok", "error", "ok", "error", "error", "error", "ok", "error"]
    for item in got:
        if isinstance(item, ImageError):
            assert_clean(item)
        else:
            check_loaded(item, item.path)
    assert [e.reason for e in got if isinstance(e, ImageError)] == [
        "empty file",
        "not an image (unrecognised content)",
        "truncated or corrupt image data",
        "image too small (8x8); at least 32 px per side needed",
        "no such file or folder",
    ]


def test_iter_images_passes_limits(tmp_path):
    write(tmp_path / "a.png", imagegen.sample_files()[".png"])
    [error] = list(iter_images([tmp_path], max_pixels=100))
    assert "100-pixel limit" in error.reason
    [error] = list(iter_images([tmp_path], min_side=100))
    assert "at least 100 px" in error.reason


def test_iter_images_streams(tmp_path):
    image = write(tmp_path / "a.png", imagegen.sample_files()[".png"])
    stream = iter_images(itertools.repeat(image))
    first = list(itertools.islice(stream, 5))
    assert all(isinstance(item, LoadedImage) for item in first)
    assert len({item.sha256 for item in first}) == 1
