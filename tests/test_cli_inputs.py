"""Bad and odd inputs at the command line (issue 5): ``occ verify`` / ``occ attribute`` report each bad
file on one line naming it, go on with the batch and exit 1; odd but valid images (16-bit, CMYK,
palette with transparency, LA, animations, EXIF rotation) are processed.

The decoding rules themselves are tested in tests/test_images.py; this file checks what a user of the
CLI sees. Everything runs in-process on the tiny CLIP, except the 100,000-path run (peak memory of a
real process).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import clikit
import numpy as np
import pytest
from clikit import check_attribute_row, check_error_row, check_verify_row, invoke
from PIL import Image

from occ.images import display_path
from occ.testing import imagegen


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


def first_column(table: str) -> str:
    return "".join(line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│"))


def png(image: Image.Image, **params) -> bytes:
    return imagegen.encode(image, "PNG", **params)


def jpeg_bytes() -> bytes:
    return imagegen.encode(imagegen.pattern_image(64, 48), "JPEG", quality=90)


# name (bytes: may be non-UTF-8) -> (content, what the one-line reason must contain)
BAD = {
    "zero-byte": (b"empty.png", lambda: b"", "empty file"),
    "text-named-png": (b"text.png", lambda: b"just some text, not a picture\n" * 3, "not an image"),
    "binary-named-png": (b"binary.png", lambda: b"\x00\x13\x37" + np.random.default_rng(0).bytes(4000), ""),
    "truncated-png": (b"cut.png", lambda: png(imagegen.pattern_image())[:300], "truncated or corrupt"),
    "truncated-jpeg": (b"cut.jpg", lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated or corrupt"),
    "1x1": (b"dot.png", lambda: png(Image.new("RGB", (1, 1))), "image too small (1x1)"),
    "1xN": (b"line.png", lambda: png(Image.new("RGB", (1, 500))), "image too small (1x500)"),
    "Nx1": (b"bar.png", lambda: png(Image.new("RGB", (500, 1))), "image too small (500x1)"),
    "png-bomb": (b"bomb.png", lambda: imagegen.png_bomb(100_000, 100_000), "decompression bomb"),
    "gif-bomb": (b"bomb.gif", lambda: imagegen.gif_bomb(65_535, 65_535), "decompression bomb"),
    "webp-bomb": (b"bomb.webp", lambda: imagegen.webp_bomb(16_384, 16_384), "decompression bomb"),
    "jpeg-bomb": (b"bomb.jpg", lambda: imagegen.jpeg_with_size(jpeg_bytes(), 65_000, 65_000), "decompression bomb"),
    "bmp-bomb": (b"bomb.bmp", lambda: imagegen.bmp_bomb(100_000, 100_000), "decompression bomb"),
    "non-utf8-name": (b"caf\xe9-\xff.png", lambda: b"garbage", "not an image"),
    "newline-in-name": (b"two\nlines.png", lambda: b"garbage", "not an image"),
    "very-long-name": (b"L" * 246 + b".png", lambda: b"garbage", "not an image"),
    "markup-in-name": (b"[bold]x[red].png", lambda: b"garbage", "not an image"),
    "emoji-code-in-name": (b"a:cat:b.png", lambda: b"garbage", "not an image"),
    "unsupported-format": (b"icon.png", lambda: imagegen.encode(imagegen.pattern_image(), "ICO"),
                           "unsupported image format"),
}


def make_bad(folder: Path, case: str) -> tuple[bytes, str]:
    """Write the bad file of ``case`` into ``folder``; return its raw path and the reason's needle."""
    name, content, needle = BAD[case]
    raw = os.path.join(os.fsencode(folder), name)
    try:
        with open(raw, "wb") as handle:
            handle.write(content())
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take such names")
    return raw, needle


def check_batch(w, inputs: list, bad_shown: str, needle: str, goods: list[Path]) -> None:
    """verify (JSON and table) and attribute (JSON) over ``inputs``: exit 1, one error naming the bad
    file, every good file processed."""
    run = invoke("verify", *inputs, "--source", "a", "--registry", w.reg_a, "--json")
    assert run.code == 1, run
    rows = run.json()
    errors = [r for r in rows if "error" in r]
    assert len(errors) == 1, rows
    check_error_row(errors[0])
    assert errors[0]["path"].endswith(bad_shown), (errors[0], bad_shown)
    assert needle in errors[0]["error"], errors[0]
    decisions = [r for r in rows if "error" not in r]
    assert [r["path"] for r in decisions] == [str(g) for g in goods]
    for row in decisions:
        check_verify_row(row, "a")
    assert run.err_lines == []

    table = invoke("verify", *inputs, "--source", "a", "--registry", w.reg_a)
    assert table.code == 1, table
    assert len(table.err_lines) == 1, table  # one line, whatever the path's length or characters
    line = table.err_lines[0]
    assert line.startswith("skipped ") and bad_shown in line and needle in line, line
    shown = first_column(table.stdout)
    assert all(str(g) in shown for g in goods), table.stdout

    attribute = invoke("attribute", *inputs, "--registry", w.reg_ab, "--json")
    assert attribute.code == 1, attribute
    rows = attribute.json()
    assert len(rows) == len(goods) + 1
    for row in rows:
        if "error" in row:
            assert row["path"].endswith(bad_shown) and needle in row["error"]
        else:
            check_attribute_row(row, ["a", "b"])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_is_one_error_and_the_batch_goes_on(w, tmp_path, case) -> None:
    goods = [w.good(0), w.good(1)]
    raw, needle = make_bad(tmp_path, case)
    shown = display_path(raw)
    assert "\n" not in shown
    check_batch(w, [goods[0], os.fsdecode(raw), goods[1]], os.path.basename(shown), needle, goods)

    # The same file met inside a folder (between two good images, in name order).
    folder = tmp_path / "folder"
    folder.mkdir()
    os.rename(raw, os.path.join(os.fsencode(folder), os.path.basename(raw)))
    first, last = folder / "!first.png", folder / "~last.png"
    first.write_bytes(goods[0].read_bytes())
    last.write_bytes(goods[1].read_bytes())
    check_batch(w, [folder], os.path.basename(shown), needle, [first, last])


def test_decompression_bombs_are_refused_quickly_in_bounded_memory(w, tmp_path) -> None:
    bombs = [make_bad(tmp_path, case)[0] for case in BAD if case.endswith("-bomb")]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    run = invoke("verify", w.good(), tmp_path, "--source", "a", "--registry", w.reg_a, "--json")
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert run.code == 1, run
    rows = run.json()
    assert sum("decompression bomb" in r.get("error", "") for r in rows) == len(bombs) == 5
    assert elapsed < 10, elapsed
    assert grown_mib < 100, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_missing_and_markup_paths(w, tmp_path) -> None:
    """Paths given on the command line that do not exist, including ones rich would take for markup."""
    for missing in (tmp_path / "gone.png", tmp_path / "x[" / "[/yellow]y.png", tmp_path / "[bold]z.png"):
        check_batch(w, [w.good(0), missing, w.good(1)], str(missing), "no such file or folder",
                    [w.good(0), w.good(1)])


def test_unreadable_file(w, tmp_path, monkeypatch) -> None:
    path = tmp_path / "secret.png"
    path.write_bytes(w.good(2).read_bytes())
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root reads anything: refuse the open instead
        real = os.open

        def deny(target, *args, **kwargs):
            if os.fspath(target) == os.fspath(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(target))
            return real(target, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    else:
        path.chmod(0)
    try:
        check_batch(w, [w.good(0), path, w.good(1)], str(path), "Permission denied", [w.good(0), w.good(1)])
    finally:
        path.chmod(0o644)


def test_fifo_and_broken_link_do_not_block_or_stop_the_batch(w, tmp_path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    check_batch(w, [w.good(0), fifo, w.good(1)], str(fifo), "not a regular file", [w.good(0), w.good(1)])
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "ok.png").write_bytes(w.good(0).read_bytes())
    check_batch(w, [folder], str(folder / "dangling.png"), "broken symbolic link", [folder / "ok.png"])


def test_empty_folder_is_one_error(w, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    check_batch(w, [w.good(0), empty, w.good(1)], str(empty), "folder holds no images", [w.good(0), w.good(1)])
    only = invoke("verify", empty, "--source", "a", "--registry", w.reg_a, "--json")
    assert only.code == 1 and only.json() == [{"path": str(empty), "error": "folder holds no images"}]


def test_symlink_loops_end_and_each_image_is_scored_once(w, tmp_path) -> None:
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(w.good(0).read_bytes())
    (root / "sub" / "b.png").write_bytes(w.good(1).read_bytes())
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "sub", target_is_directory=True)
    start = time.perf_counter()
    run = invoke("verify", root, "--source", "a", "--registry", w.reg_a, "--json")
    assert time.perf_counter() - start < 20
    assert run.code == 0, run
    paths = [r["path"] for r in run.json()]
    assert sorted(Path(p).name for p in paths) == ["a.png", "b.png"]


# -------------------------------------------------------------------------------------------------- odd but valid


def odd_images() -> dict[str, bytes]:
    base = imagegen.pattern_image(64, 48)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "rgb16.png": imagegen.png_16bit(imagegen.pattern_array(64, 48).astype(np.uint16) * 257),
        "gray16.png": imagegen.png_16bit((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)),
        "cmyk.jpg": imagegen.encode(base.convert("CMYK"), "JPEG", quality=90),
        "palette-transparent.png": png(palette, transparency=0),
        "la.png": png(base.convert("LA")),
        "rgba.png": png(base.convert("RGBA")),
        "gray.png": png(base.convert("L")),
        "bilevel.png": png(base.convert("1")),
        "animated.gif": imagegen.animated("GIF", [(255, 0, 0), (0, 0, 255)]),
        "animated.webp": imagegen.animated("WEBP", [(255, 0, 0), (0, 0, 255)]),
        "animated.png": imagegen.animated("PNG", [(255, 0, 0), (0, 0, 255)]),
        "jpeg-named.png": jpeg_bytes(),
        "image.bmp": imagegen.encode(base, "BMP"),
        "image.tif": imagegen.encode(base, "TIFF"),
        "image.ppm": imagegen.encode(base, "PPM"),
    }


def test_odd_but_valid_images_are_processed(w, tmp_path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    files = odd_images()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    run = invoke("verify", folder, "--source", "a", "--registry", w.reg_a, "--json")
    assert run.code == 0, run
    rows = run.json()
    assert sorted(Path(r["path"]).name for r in rows) == sorted(files)
    for row in rows:
        check_verify_row(row, "a")
    run = invoke("attribute", folder, "--registry", w.reg_ab)
    assert run.code == 0 and run.err_lines == [], run


# Stored pixels for each EXIF orientation of an upright picture (what a camera writes).
STORED = {
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1, :],
    5: lambda u: u.transpose(1, 0, 2),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: u[::-1, ::-1].transpose(1, 0, 2),
    8: lambda u: np.rot90(u, -1),
}


def test_exif_rotated_images_score_like_the_upright_copy(w, tmp_path) -> None:
    upright = imagegen.pattern_array(40, 64, seed=3)
    paths = [tmp_path / "upright.png"]
    Image.fromarray(upright).save(paths[0])
    bare = []
    for orientation, store in STORED.items():
        stored = Image.fromarray(np.ascontiguousarray(store(upright)))
        path = tmp_path / f"exif{orientation}.png"
        path.write_bytes(png(stored, exif=imagegen.exif_orientation(orientation)))
        paths.append(path)
        bare.append(tmp_path / f"bare{orientation}.png")
        stored.save(bare[-1])  # the same pixels without the EXIF tag
    run = invoke("verify", *paths, *bare, "--source", "a", "--registry", w.reg_a, "--json")
    assert run.code == 0, run
    rows = {Path(r["path"]).name: r["score"] for r in run.json()}
    reference = rows["upright.png"]
    for orientation in STORED:
        assert abs(rows[f"exif{orientation}.png"] - reference) <= 1e-6, (orientation, rows)
    # Without the tag the pixels are rotated or flipped for real: the scores must move (else this test
    # could not tell a rotation that was applied from one that was ignored).
    assert any(abs(rows[f"bare{o}.png"] - reference) > 1e-6 for o in STORED), rows
    attribute = invoke("attribute", *paths, "--registry", w.reg_ab, "--json").json()
    scores = [r["scores"] for r in attribute]
    assert all(abs(s[k] - scores[0][k]) <= 1e-6 for s in scores for k in s)


def test_good_image_with_a_non_utf8_name(w, tmp_path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    try:
        with open(raw, "wb") as handle:
            handle.write(w.good(0).read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take such names")
    path = os.fsdecode(raw)
    run = invoke("verify", path, "--source", "a", "--registry", w.reg_a, "--json")
    assert run.code == 0, run
    [row] = run.json()
    assert os.fsencode(row["path"]) == raw  # the JSON path maps back to the file's bytes
    table = invoke("verify", path, "--source", "a", "--registry", w.reg_a)  # a strict UTF-8 stdout
    assert table.code == 0, table
    assert display_path(raw) in first_column(table.stdout)
    table = invoke("attribute", path, "--registry", w.reg_ab)
    assert table.code == 0 and display_path(raw) in first_column(table.stdout), table


# -------------------------------------------------------------------------------------------------- many paths

PEAK_RSS = r"""
import atexit, resource, sys
atexit.register(lambda: sys.stderr.write(f"MAXRSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n"))
sys.argv = ["occ", *sys.argv[1:]]
from occ.cli import main
main()
"""


def peak_rss_of_run(w, folder: Path, out: Path) -> tuple[int, float, int]:
    start = time.perf_counter()
    with open(out, "w") as handle:
        result = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, "verify", str(folder), "--source", "a", "--registry", str(w.reg_a),
             "--json"], stdout=handle, stderr=subprocess.PIPE, text=True, env=clikit.subprocess_env(),
            timeout=300, check=False)
    elapsed = time.perf_counter() - start
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("MAXRSS_KIB ")]
    count = 0
    with open(out) as handle:
        for text in handle:
            row = json.loads(text)
            assert row["error"] == "empty file", row
            count += 1
    return int(line.split()[1]), elapsed, count


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux")
def test_100k_paths_stream_in_bounded_memory(w, tmp_path) -> None:
    """100,000 empty files named .png: every one reported, quickly, and peak memory barely above 10,000."""
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, n in ((small, 10_000), (large, 100_000)):
        folder.mkdir()
        for i in range(n):
            open(folder / f"{i:06d}.png", "wb").close()
    rss_small, t_small, n_small = peak_rss_of_run(w, small, tmp_path / "small.jsonl")
    rss_large, t_large, n_large = peak_rss_of_run(w, large, tmp_path / "large.jsonl")
    assert (n_small, n_large) == (10_000, 100_000)
    grown_mib = (rss_large - rss_small) / 1024
    print(f"peak RSS 10k: {rss_small / 1024:.0f} MiB ({t_small:.1f} s), 100k: {rss_large / 1024:.0f} MiB "
          f"({t_large:.1f} s), growth {grown_mib:.1f} MiB")
    # Streaming: 90,000 more paths may cost the folder listing (names), not per-path results.
    assert grown_mib < 40, f"peak RSS grew by {grown_mib:.0f} MiB for 90,000 more paths"
    assert t_large < 120
