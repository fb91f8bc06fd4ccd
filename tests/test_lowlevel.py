"""The low-level evidence stream (occ.lowlevel), its cache, and its place in the joint model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from occ.evidence import LaunderedView
from occ.features import LOW_KEY, FeatureExtractor
from occ.joint import ClassRows, JointModel, Stream
from occ.lowlevel import DIMS, WINDOW, centre_window, lowlevel_features
from occ.testing import traced_peak


def _photo(seed: int, size=(300, 260)) -> Image.Image:
    """A smooth random field with fine noise: something like a photo's residual."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (size[1] // 8 + 1, size[0] // 8 + 1, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((size[0], size[1]), Image.Resampling.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8))


def _upsampled(seed: int, size=(300, 260)) -> Image.Image:
    """The same kind of content made at half resolution and upsampled 2x (a generator's artefact)."""
    half = _photo(seed, (size[0] // 2, size[1] // 2))
    return half.resize(size, Image.Resampling.NEAREST)


def test_features_are_deterministic_and_tell_images_apart():
    a, b = lowlevel_features(_photo(0)), lowlevel_features(_photo(0))
    assert a.shape == (DIMS,) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, lowlevel_features(_photo(1)))
    # a laundered training view is the same copy under the same seed, so its evidence is too
    view = LaunderedView(3, 0)
    np.testing.assert_array_equal(lowlevel_features(view.apply(_photo(2))), lowlevel_features(view.apply(_photo(2))))


def test_upsampling_artefacts_separate_from_photo_like_noise():
    photos = np.stack([lowlevel_features(_photo(s)) for s in range(6)])
    upsampled = np.stack([lowlevel_features(_upsampled(s)) for s in range(6)])
    # the two kinds lie farther apart than images of one kind
    within = np.mean([np.linalg.norm(photos[i] - photos[j]) for i in range(6) for j in range(i)])
    between = np.linalg.norm(photos.mean(0) - upsampled.mean(0))
    assert between > 3 * within


def test_a_very_wide_image_reads_only_its_centre_window():
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 20000, 3), dtype=np.uint8))
    features, peak = traced_peak(lambda: lowlevel_features(wide))
    assert peak < 40 * 2 ** 20, peak  # the whole image as float64 would be 144 MB
    w, h = wide.size
    x = (w - WINDOW) // 2
    np.testing.assert_array_equal(features, lowlevel_features(wide.crop((x, 0, x + WINDOW, h))))
    assert centre_window(wide).shape == (300, WINDOW)


def test_a_tiny_image_gives_zeros():
    assert not lowlevel_features(Image.new("RGB", (40, 40), (9, 9, 9))).any()


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        (_upsampled if i % 2 else _photo)(i, (180, 150)).save(path)
        paths.append(path)
    return paths


def test_cache_hit_equals_recompute_and_an_old_entry_gets_its_low_level_evidence(tiny_backbone, tmp_path,
                                                                                monkeypatch):
    paths = _images(tmp_path / "images", 5)
    root = tmp_path / "cache"
    first = FeatureExtractor(tiny_backbone, cache_root=root).load(paths)
    fresh = FeatureExtractor(tiny_backbone, cache=False).load(paths)
    again = FeatureExtractor(tiny_backbone, cache_root=root).load(paths)
    assert first.trunk.low.shape == (5, DIMS)
    np.testing.assert_array_equal(first.trunk.low, fresh.trunk.low)
    np.testing.assert_array_equal(first.trunk.low, again.trunk.low)
    from PIL import Image as PILImage

    np.testing.assert_array_equal(first.trunk.low[2], lowlevel_features(PILImage.open(paths[2]).convert("RGB")))
    # an entry written before the low-level stream existed: the evidence is computed, the trunk is not rerun
    entry = next(root.rglob("*.safetensors"))
    tensors = st_load(entry.read_bytes())
    del tensors[LOW_KEY]
    entry.write_bytes(st_save(tensors))
    calls = []
    original = tiny_backbone.trunk
    monkeypatch.setattr(tiny_backbone, "trunk", lambda *a, **k: calls.append(1) or original(*a, **k))
    healed = FeatureExtractor(tiny_backbone, cache_root=root).load(paths)
    assert calls == []
    np.testing.assert_array_equal(healed.trunk.low, first.trunk.low)
    assert LOW_KEY in st_load(entry.read_bytes())


def test_transformed_views_have_their_own_low_level_evidence(tiny_backbone, tmp_path):
    paths = _images(tmp_path / "images", 2)
    ex = FeatureExtractor(tiny_backbone, cache_root=tmp_path / "cache")
    plain, viewed = ex.load(paths), ex.load(paths, transform=LaunderedView(0, 0))
    assert not np.allclose(plain.trunk.low, viewed.trunk.low)


def _two_streams(seed: int, low_signal: bool):
    """Two sources identical in their first columns (unit total variance, like CLIP evidence vectors of
    unit length); they differ only in the stream columns."""
    rng = np.random.default_rng(seed)
    d, c, n = 24, 16, 30
    s = 1 / np.sqrt(d)
    low_a, low_b = rng.normal(0, 1, c), rng.normal(0, 1, c)
    if not low_signal:
        low_b = low_a

    def rows(low_centre, m):
        return np.concatenate([rng.normal(0, s, (m, d)), low_centre + rng.normal(0, 0.3, (m, c))], 1)

    sources = {"a": ClassRows(rows(low_a, n), np.arange(n)), "b": ClassRows(rows(low_b, n), np.arange(n))}
    nontarget = ClassRows(np.concatenate([rng.normal(0, s, (150, d)), rng.normal(0, 1, (150, c))], 1), np.arange(150))
    test = {"a": rows(low_a, 40), "b": rows(low_b, 40)}
    return sources, nontarget, test, c


def test_the_joint_model_separates_sources_by_the_stream_alone():
    sources, nontarget, test, c = _two_streams(0, low_signal=True)
    model = JointModel(dims=32, stream=Stream(c, components=c, weight=0.5)).fit(sources, nontarget)
    named = {k: [d[0] for d in model.decide(x)] for k, x in test.items()}
    assert np.mean([n == "a" for n in named["a"]]) > 0.8 and np.mean([n == "b" for n in named["b"]]) > 0.8
    again = JointModel.from_saved(*model.to_saved())
    assert again.stream == model.stream
    np.testing.assert_array_equal(model.margins(test["a"]), again.margins(test["a"]))
    # the stream's weight is applied: another weight, other scores
    other = JointModel(dims=32, stream=Stream(c, components=c, weight=0.05)).fit(sources, nontarget)
    # without the stream, the two sources cannot be told apart
    blind = JointModel(dims=32).fit({k: ClassRows(v.features[:, :-c], v.image_ids) for k, v in sources.items()},
                                    ClassRows(nontarget.features[:, :-c], nontarget.image_ids))
    blind_named = [d[0] for d in blind.decide(test["a"][:, :-c])]
    assert np.mean([n == "a" for n in blind_named]) < 0.6
    assert not np.allclose(model.margins(test["a"]), other.margins(test["a"]))


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_the_stream_map_is_one_affine_map_of_the_row(weight):
    """The geometry with a stream equals whitening the stream first and fitting on the result."""
    from occ.joint import _stream_map, fit_geometry

    sources, nontarget, test, c = _two_streams(1, low_signal=True)
    classes = [sources["a"], sources["b"], nontarget]
    stream = Stream(c, components=8, weight=weight)
    g = fit_geometry(classes, 20, 0, stream)
    x_all = np.concatenate([k.features for k in classes]).astype(np.float64)
    is_nt = np.r_[np.zeros(60, bool), np.ones(150, bool)]
    mu, m = _stream_map(x_all, is_nt, stream)

    def mapped(x):
        x = np.asarray(x, dtype=np.float64)
        return np.concatenate([x[:, :-c], (x[:, -c:] - mu) @ m], 1)

    plain = fit_geometry([ClassRows(mapped(k.features), k.image_ids) for k in classes], 20, 0)
    np.testing.assert_allclose(np.abs(g.project(test["a"])), np.abs(plain.project(mapped(test["a"]))),
                               rtol=1e-3, atol=1e-3)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    from occ.perturb import Perturbation

    return Perturbation("jpeg", quality).apply(image)


def test_jpeg_grid_tells_decoded_jpegs_from_lossless_images_wherever_the_grid_lies():
    from occ.lowlevel import JPEG_GRID_THRESHOLD, jpeg_grid

    for seed in range(3):
        clean = _photo(seed)
        assert jpeg_grid(clean) == jpeg_grid(_photo(seed)) < JPEG_GRID_THRESHOLD
        assert jpeg_grid(_upsampled(seed)) < JPEG_GRID_THRESHOLD  # repeated pixels raise several offsets alike: no JPEG
        for quality in (95, 75, 60):
            coded = _jpeg(clean, quality)
            assert jpeg_grid(coded) >= JPEG_GRID_THRESHOLD, (seed, quality)
            # a crop moves the grid off the origin: the trace is read at whichever offset it lies
            assert jpeg_grid(coded.crop((3, 5, 280, 250))) >= JPEG_GRID_THRESHOLD, (seed, quality)
        # a downscale after JPEG wipes the grid, and the trace with it
        assert jpeg_grid(_jpeg(clean, 75).resize((150, 130), Image.Resampling.BICUBIC)) < JPEG_GRID_THRESHOLD


def test_jpeg_grid_reads_only_a_centre_window_and_a_tiny_image_gives_zero():
    from occ.lowlevel import GRID_WINDOW, jpeg_grid

    wide = _jpeg(_photo(4, (4000, 300)), 75)
    value, peak = traced_peak(lambda: jpeg_grid(wide))
    assert peak < 20 * 2 ** 20, peak  # the whole image's DCT at 64 offsets would be gigabytes
    w, h = wide.size
    side = GRID_WINDOW + 8
    x = (w - side) // 2
    assert value == jpeg_grid(wide.crop((x, 0, x + side, h)))
    assert jpeg_grid(Image.new("RGB", (15, 200))) == 0.0
