"""occ.features: batched trunk passes and the on-disk feature cache, on the tiny CLIP."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from occ.errors import ImageError
from occ.features import FEATURE_FORMAT, LOW_KEY, FeatureCache, FeatureExtractor, derived_key
from occ.images import load_image
from occ.testing import tiny_clip


def write_images(folder: Path, n: int, start: int = 0, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        make = tiny_clip.gradient_image if i % 2 else tiny_clip.noise_image
        path = folder / f"{prefix}{i:03d}.png"
        make(i).save(path)
        paths.append(path)
    return paths


def cache_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TrunkCounter:
    """Wraps ``backbone.trunk`` to count calls and images."""

    def __init__(self, backbone, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[int] = []
        self.blocks: list[tuple] = []
        original = backbone.trunk

        def counted(pixels, kv_blocks=()):
            self.calls.append(pixels.shape[0])
            self.blocks.append(tuple(kv_blocks))
            return original(pixels, kv_blocks)

        monkeypatch.setattr(backbone, "trunk", counted)

    @property
    def images(self) -> int:
        return sum(self.calls)


def direct(backbone, paths, blocks=()):
    """The trunk of each image on its own, without occ.features."""
    images = [load_image(p).image for p in paths]
    return backbone.trunk(backbone.preprocess(images), blocks)


def assert_trunk_equal(a, b) -> None:
    assert torch.equal(a.cls, b.cls)
    assert torch.equal(a.embeds, b.embeds)
    assert sorted(a.kv) == sorted(b.kv)
    for k in a.kv:
        assert torch.equal(a.kv[k], b.kv[k])


def assert_trunk_close(a, b) -> None:
    torch.testing.assert_close(a.cls, b.cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.embeds, b.embeds, rtol=1e-5, atol=1e-5)
    assert sorted(a.kv) == sorted(b.kv)
    for k in a.kv:
        torch.testing.assert_close(a.kv[k], b.kv[k], rtol=1e-3, atol=1e-3)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return write_images(tmp_path / "images", 6)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------------
# Cache hits and keys


def test_features_match_the_trunk(tiny_backbone, images, root) -> None:
    feats = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=4).load(images, blocks=[1])
    assert [im.path for im in feats.images] == images
    assert len(feats) == 6 and len(feats.trunk) == 6
    assert_trunk_close(feats.trunk, direct(tiny_backbone, images, [1]))


def test_cache_hit_is_identical_and_skips_the_trunk(tiny_backbone, images, root, monkeypatch) -> None:
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    first = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=4).load(images, blocks=[2])
    assert counter.calls == [4, 2]
    assert len(cache_files(root)) == 6
    second = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=4).load(images, blocks=[2])
    assert counter.calls == [4, 2], "a cache hit ran the trunk"
    assert_trunk_equal(first.trunk, second.trunk)
    assert [im.sha256 for im in second.images] == [sha(p) for p in images]


def test_partial_hits_run_only_the_missing_images(tiny_backbone, images, root, monkeypatch) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=8)
    extractor.load(images[::2])
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    feats = extractor.load(images)
    assert counter.calls == [3]
    assert_trunk_close(feats.trunk, direct(tiny_backbone, images))


def test_no_cache_never_writes(tiny_backbone, images, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OCC_CACHE_DIR", str(tmp_path / "occ-cache"))
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    extractor = FeatureExtractor(tiny_backbone, cache=False)
    a = extractor.load(images)
    b = extractor.load(images)
    assert counter.images == 12
    assert_trunk_equal(a.trunk, b.trunk)
    assert not (tmp_path / "occ-cache").exists() or not cache_files(tmp_path / "occ-cache")


def test_cache_key_is_the_content_sha(tiny_backbone, tmp_path, root, monkeypatch) -> None:
    folder = tmp_path / "same"
    folder.mkdir()
    original = write_images(tmp_path / "src", 1)[0]
    data = original.read_bytes()
    a, b = folder / "a.png", folder / "b.png"
    a.write_bytes(data)
    b.write_bytes(data)
    extractor = FeatureExtractor(tiny_backbone, cache_root=root)
    feats = extractor.load([a, b])
    files = cache_files(root)
    assert [f.name for f in files] == [f"{sha(a)}.safetensors"]
    assert files[0].parent.name == sha(a)[:2]
    assert torch.equal(feats.trunk.embeds[0], feats.trunk.embeds[1])

    counter = TrunkCounter(tiny_backbone, monkeypatch)
    renamed = folder / "c.png"
    a.rename(renamed)
    extractor.load([renamed])
    assert counter.calls == [], "a renamed file was recomputed"

    tiny_clip.gradient_image(7).save(b)  # new bytes under an old name
    changed = extractor.load([b])
    assert counter.calls == [1]
    assert len(cache_files(root)) == 2
    assert not torch.equal(changed.trunk.embeds[0], feats.trunk.embeds[1])
    assert_trunk_close(changed.trunk, direct(tiny_backbone, [b]))


def test_default_cache_location_is_per_backbone(tiny_backbone, tiny_vision_backbone, images, tmp_path,
                                                monkeypatch) -> None:
    monkeypatch.setenv("OCC_CACHE_DIR", str(tmp_path / "occ-cache"))
    FeatureExtractor(tiny_backbone).load(images[:2])
    FeatureExtractor(tiny_vision_backbone).load(images[:2])
    features = tmp_path / "occ-cache" / "features"
    folders = sorted(p for p in features.iterdir() if p.is_dir())
    assert len(folders) == 2, "two backbones share a feature cache folder"
    for folder in folders:
        assert len(cache_files(folder)) == 2


def test_explicit_cache_root_does_not_mix_backbones(tiny_backbone, other_backbone, images, root) -> None:
    # Two backbones with the same architecture, one cache root: each must get its own features.
    mine = FeatureExtractor(tiny_backbone, cache_root=root).load(images[:2])
    theirs = FeatureExtractor(other_backbone, cache_root=root).load(images[:2])
    assert not torch.allclose(mine.trunk.embeds, theirs.trunk.embeds)
    assert_trunk_close(theirs.trunk, direct(other_backbone, images[:2]))


class Flip:
    """A transform with a label, like occ.perturb.Perturbation."""

    def __init__(self, label: str = "flip"):
        self.label = label

    def apply(self, image):
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def test_transformed_images_have_their_own_cache_entries(tiny_backbone, images, root, monkeypatch) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=4)
    plain = extractor.load(images)
    flipped = extractor.load(images, transform=Flip())
    assert len(cache_files(root)) == 2 * len(images)
    want = tiny_backbone.trunk(tiny_backbone.preprocess(
        [load_image(p).image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in images]))
    assert_trunk_close(flipped.trunk, want)
    assert not torch.allclose(flipped.trunk.embeds, plain.trunk.embeds)
    assert [im.sha256 for im in flipped.images] == [derived_key(sha(p), Flip()) for p in images]
    assert all(derived_key(sha(p), Flip()) != sha(p) for p in images)
    assert derived_key(sha(images[0]), None) == sha(images[0])

    counter = TrunkCounter(tiny_backbone, monkeypatch)
    again = extractor.load(images, transform=Flip())
    assert counter.calls == []
    assert_trunk_equal(again.trunk, flipped.trunk)
    extractor.load(images[:1], transform=Flip("another-label"))
    assert counter.calls == [1], "another transform label must be another cache entry"


class FailsOnWide(Flip):
    """Fails (as a resize of a too-small image would) on images wider than tall."""

    def apply(self, image):
        if image.width > image.height:
            raise ValueError("height and width must be > 0")
        return super().apply(image)


def test_a_transform_that_fails_on_one_image_is_that_files_error(tiny_backbone, tmp_path, root) -> None:
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGB", (80, 40), (200, 10, 10)).save(wide)
    Image.new("RGB", (40, 80), (10, 200, 10)).save(tall)
    errors = []
    got = FeatureExtractor(tiny_backbone, cache_root=root).load([wide, tall], transform=FailsOnWide(),
                                                                  on_error=errors.append)
    assert [str(im.path) for im in got.images] == [str(tall)]
    assert len(errors) == 1 and errors[0].path == str(wide)
    assert "could not apply flip: height and width must be > 0" in str(errors[0])
    assert "\n" not in str(errors[0])


# --------------------------------------------------------------------------------------------------
# Token blocks


def test_extra_kv_blocks_are_computed_and_the_old_ones_kept(tiny_backbone, images, root,
                                                               monkeypatch) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=16)
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    extractor.load(images, blocks=[1])
    assert counter.blocks == [(1,)]
    keys = set(st_load(cache_files(root)[0].read_bytes()))
    assert keys == {"cls", "embeds", "kv.1", LOW_KEY}

    both = extractor.load(images, blocks=[3, 1])
    assert len(counter.calls) == 2, "missing block 3 did not trigger a recompute"
    assert sorted(both.trunk.kv) == [1, 3]
    for f in cache_files(root):
        assert set(st_load(f.read_bytes())) == {"cls", "embeds", "kv.1", "kv.3", LOW_KEY}

    for blocks in ([1], [3], [], [1, 3]):
        feats = extractor.load(images, blocks=blocks)
        assert sorted(feats.trunk.kv) == sorted(blocks)
    assert len(counter.calls) == 2, "a cached block was recomputed"
    assert_trunk_close(extractor.load(images, blocks=[1, 3]).trunk, direct(tiny_backbone, images, [1, 3]))


def test_rewriting_an_entry_for_another_block_keeps_the_stored_blocks(tiny_backbone, images, root) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root)
    extractor.load(images, blocks=[0, 2])
    # block 1 is missing, so the entries are recomputed for block 1 alone and rewritten: blocks 0 and 2
    # must survive the rewrite
    extractor.load(images, blocks=[1])
    for f in cache_files(root):
        assert set(st_load(f.read_bytes())) == {"cls", "embeds", "kv.0", "kv.1", "kv.2", LOW_KEY}


def test_empty_input(tiny_backbone, root) -> None:
    feats = FeatureExtractor(tiny_backbone, cache_root=root).load([], blocks=[2])
    assert len(feats) == 0
    assert feats.trunk.cls.shape == (0, 5, 32)
    assert feats.trunk.embeds.shape == (0, 16)
    assert feats.trunk.kv[2].shape == (0, 2, 16, 32) and feats.trunk.kv[2].dtype == torch.float16
    assert list(FeatureExtractor(tiny_backbone, cache_root=root).stream([])) == []


def test_cached_lookup_by_content_hash(tiny_backbone, images, root) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root)
    assert extractor.cached(sha(images[0])) is None
    feats = extractor.load(images[:2], blocks=[1])
    hit = extractor.cached(sha(images[1]), blocks=[1])
    assert hit is not None and len(hit) == 1
    assert torch.equal(hit.embeds[0], feats.trunk.embeds[1])
    assert extractor.cached(sha(images[1]), blocks=[2]) is None  # block 2 was never computed
    assert FeatureExtractor(tiny_backbone, cache=False).cached(sha(images[1])) is None


def test_a_cache_hit_does_not_decode_the_image(tiny_backbone, images, root, monkeypatch) -> None:
    import occ.features

    extractor = FeatureExtractor(tiny_backbone, cache_root=root)
    extractor.load(images)
    decoded = []
    original = occ.features.decode_image

    def counting(file, *args, **kwargs):
        decoded.append(file.path)
        return original(file, *args, **kwargs)

    monkeypatch.setattr(occ.features, "decode_image", counting)
    extractor.load(images)
    assert decoded == []


def test_a_cache_hit_is_held_to_the_extractors_size_limit(tiny_backbone, images, root) -> None:
    FeatureExtractor(tiny_backbone, cache_root=root).load(images[:2])  # both now cached
    small = images[0]
    with Image.open(small) as im:
        limit = im.width * im.height - 1
    errors: list[ImageError] = []
    feats = FeatureExtractor(tiny_backbone, cache_root=root, max_pixels=limit).load(images[:2],
                                                                                   on_error=errors.append)
    assert len(feats) == 0  # both images have the same size: a hit is refused like a miss would be
    assert len(errors) == 2 and all(f"exceeds the {limit}-pixel limit" in str(e) for e in errors)
    assert images[0].name in str(errors[0])
    kept = FeatureExtractor(tiny_backbone, cache_root=root, max_pixels=limit + 1).load(images[:2])
    assert len(kept) == 2


def test_pixels_are_the_preprocessed_images(tiny_backbone, images, root) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root)
    feats = extractor.load(images[:3])
    pixels = extractor.pixels(feats.images)
    want = tiny_backbone.preprocess([load_image(p).image for p in images[:3]])
    assert torch.equal(pixels, want)


# --------------------------------------------------------------------------------------------------
# Damage and unwritable caches


def _valid_entry_without_embeds(path: Path) -> bytes:
    tensors = st_load(path.read_bytes())
    del tensors["embeds"]
    return st_save(tensors)


def _entry_of_the_wrong_shape(path: Path) -> bytes:
    tensors = st_load(path.read_bytes())
    return st_save({k: torch.zeros(3, *v.shape) for k, v in tensors.items()})


DAMAGE = {
    "garbage": lambda p: b"\x00garbage" * 20,
    "empty": lambda p: b"",
    "truncated": lambda p: p.read_bytes()[: len(p.read_bytes()) // 2],
    "huge header length": lambda p: (2**62).to_bytes(8, "little") + p.read_bytes()[8:],
    "a pickle": lambda p: pickle.dumps({"cls": [1.0]}),
    "missing tensor": _valid_entry_without_embeds,
    "wrong shapes": _entry_of_the_wrong_shape,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_file_is_recomputed(tiny_backbone, images, root, monkeypatch, damage) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=8)
    clean = extractor.load(images, blocks=[1])
    victim = FeatureCache(tiny_backbone, root)._path(sha(images[2]))
    assert victim.is_file()
    victim.write_bytes(DAMAGE[damage](victim))
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    again = extractor.load(images, blocks=[1])
    assert counter.calls == [1], "only the damaged entry should be recomputed"
    assert_trunk_close(again.trunk, clean.trunk)
    assert set(st_load(victim.read_bytes())) == {"cls", "embeds", "kv.1", LOW_KEY}, "the entry was not repaired"


def test_a_folder_in_place_of_a_cache_file(tiny_backbone, images, root) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root)
    path = FeatureCache(tiny_backbone, root)._path(sha(images[0]))
    path.mkdir(parents=True)
    feats = extractor.load(images[:1])
    assert_trunk_close(feats.trunk, direct(tiny_backbone, images[:1]))


def test_cache_root_under_a_file_only_costs_speed(tiny_backbone, images, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    extractor = FeatureExtractor(tiny_backbone, cache_root=blocker / "cache")
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    a = extractor.load(images, blocks=[0])
    b = extractor.load(images, blocks=[0])
    assert counter.images == 12  # nothing could be cached
    assert_trunk_equal(a.trunk, b.trunk)
    assert_trunk_close(a.trunk, direct(tiny_backbone, images, [0]))


@pytest.mark.parametrize("failing", ["mkdir", "write_bytes", "replace"])
def test_unwritable_cache_only_costs_speed(tiny_backbone, images, root, monkeypatch, failing) -> None:
    import os

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied (test)")

    if failing == "replace":
        monkeypatch.setattr(os, "replace", denied)
    else:
        monkeypatch.setattr(Path, failing, denied)
    if failing == "mkdir":
        assert not root.exists()
    else:
        root.mkdir()
        for p in images:  # the shard folders exist, the files cannot be written
            (root / sha(p)[:2]).mkdir(exist_ok=True)
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    extractor = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=4)
    a = extractor.load(images)
    b = extractor.load(images)
    assert counter.images == 12
    assert_trunk_equal(a.trunk, b.trunk)
    monkeypatch.undo()
    leftovers = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert leftovers == [], f"files left in an unwritable cache: {leftovers}"


# --------------------------------------------------------------------------------------------------
# Streams and bad files


def test_bad_files_go_to_on_error_and_the_batch_goes_on(tiny_backbone, tmp_path, root) -> None:
    good = write_images(tmp_path / "in", 3)
    junk = tmp_path / "in" / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    empty = tmp_path / "in" / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "in" / "missing.png"
    inputs = [good[0], junk, good[1], missing, empty, good[2]]
    errors: list[ImageError] = []
    feats = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=2).load(inputs, on_error=errors.append)
    assert [im.path for im in feats.images] == good
    assert_trunk_close(feats.trunk, direct(tiny_backbone, good))
    assert sorted(Path(e.path).name for e in errors) == ["empty.jpg", "junk.png", "missing.png"]
    for e in errors:
        assert isinstance(e, ImageError)
        message = str(e)
        assert "\n" not in message and e.path in message and e.reason
    # without a handler, bad files are skipped silently
    again = FeatureExtractor(tiny_backbone, cache_root=root).load(inputs)
    assert len(again) == 3


def test_only_bad_files(tiny_backbone, tmp_path, root) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    errors = []
    feats = FeatureExtractor(tiny_backbone, cache_root=root).load([junk], blocks=[1], on_error=errors.append)
    assert len(feats) == 0 and len(errors) == 1
    assert feats.trunk.kv[1].shape[0] == 0


def test_stream_yields_in_input_order_in_batches(tiny_backbone, tmp_path, root) -> None:
    paths = write_images(tmp_path / "in", 7)
    shuffled = [paths[i] for i in (4, 0, 6, 2, 1, 5, 3)]
    extractor = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=3)
    extractor.load(paths[:2])  # some hits, some misses in the batches
    batches = list(extractor.stream(shuffled, blocks=[2]))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [im.path for b in batches for im in b.images] == shuffled
    for b in batches:
        assert len(b.trunk) == len(b.images)
        assert_trunk_close(b.trunk, direct(tiny_backbone, [im.path for im in b.images], [2]))


def test_stream_is_lazy(tiny_backbone, tmp_path, root) -> None:
    paths = write_images(tmp_path / "in", 4)
    seen = []

    def inputs():
        for p in paths:
            seen.append(p)
            yield p

    stream = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=2).stream(inputs())
    first = next(stream)
    assert [im.path for im in first.images] == paths[:2]
    assert len(seen) == 2, "the stream read ahead of the first batch"


def test_folder_input_in_name_order(tiny_backbone, tmp_path, root) -> None:
    folder = tmp_path / "in"
    paths = write_images(folder, 5)
    feats = FeatureExtractor(tiny_backbone, cache_root=root, batch_size=2).load([folder])
    assert [im.path.name for im in feats.images] == [p.name for p in paths]


# --------------------------------------------------------------------------------------------------
# Files on disk: safetensors only, concurrent writers


def test_cache_files_are_plain_safetensors(tiny_backbone, images, root, monkeypatch) -> None:
    extractor = FeatureExtractor(tiny_backbone, cache_root=root)
    first = extractor.load(images, blocks=[3])
    files = cache_files(root)
    assert len(files) == len(images)
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            meta = handle.metadata()
        assert meta["format"] == FEATURE_FORMAT and meta["backbone"] == tiny_backbone.fingerprint
        tensors = st_load(f.read_bytes())
        assert tensors["cls"].shape == (5, 32) and tensors["cls"].dtype == torch.float32
        assert tensors["embeds"].shape == (16,)
        assert tensors["kv.3"].shape == (2, 16, 32) and tensors["kv.3"].dtype == torch.float16
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*"))

    def refuse(*args, **kwargs):
        raise AssertionError("the feature cache unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    counter = TrunkCounter(tiny_backbone, monkeypatch)
    assert_trunk_equal(extractor.load(images, blocks=[3]).trunk, first.trunk)
    assert counter.calls == []


def test_concurrent_writers(tmp_path, root) -> None:
    # Two processes extract the same images into the same cache at the same time, rewriting entries
    # with more token blocks each round. Both must succeed with the right features, and every file left
    # must be a whole safetensors file (writes are atomic renames). The processes use a torch-only stub
    # backbone (tiny_clip.stub_backbone) so that spawning them stays cheap.
    images = write_images(tmp_path / "images", 12)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    rounds = [[1], [2], [1, 2]]
    outs = [tmp_path / f"out{i}.safetensors" for i in range(2)]
    workers = [ctx.Process(target=tiny_clip.extract_in_subprocess,
                           args=([str(p) for p in images], str(root), rounds, barrier, str(out)))
               for out in outs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    stub = tiny_clip.stub_backbone()
    want = direct(stub, images, [1, 2])
    for out in outs:
        torch.testing.assert_close(load_file(out)["embeds"], want.embeds, rtol=1e-5, atol=1e-5)
    files = cache_files(root)
    assert sorted(f.stem for f in files) == sorted(sha(p) for p in images)
    for f in files:
        keys = set(st_load(f.read_bytes()))  # raises if a file is not whole
        assert {"cls", "embeds"} <= keys <= {"cls", "embeds", "kv.1", "kv.2", LOW_KEY}
    assert not [p for p in root.rglob("*") if p.is_file() and p.suffix != ".safetensors"], "temporary files left"
    feats = FeatureExtractor(stub, cache_root=root).load(images, blocks=[1, 2])
    assert_trunk_close(feats.trunk, want)
