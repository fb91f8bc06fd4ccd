"""A tiny random CLIP, built at test time: nothing binary is committed.

:func:`build_tiny_clip` writes a ``save_pretrained`` folder (safetensors) holding a seeded random
``transformers.CLIPModel`` (text: width 32, 2 blocks; vision: width 32, 4 blocks, 32 px images, 8 px
patches; projections to 16), a working byte-level BPE ``CLIPTokenizer`` whose vocabulary covers the
sentences occ's text prompts build ("X X ... X real.", "a photo made by", ...), and a
``preprocessor_config.json`` (size 32, CLIP mean/std). :func:`build_tiny_vision` writes the image tower
alone (``CLIPVisionModelWithProjection``, same weights as the full model's image tower), no tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from occ.backbones.base import Backbone, Preprocessing, Trunk
from occ.features import FeatureExtractor

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Order matters for BPE ranks: "another" must be built before "this" claims the pair "t h".
WORDS = ("another", "real", "fake", "x", "a", "photo", "of", "made", "by", "this", "source")
# Sentences the tokenizer must split into exactly these words (plus the final ".").
SENTENCES = {
    "X X X X real.": ["x", "x", "x", "x", "real", "."],
    "x x fake.": ["x", "x", "fake", "."],
    "a photo made by": ["a", "photo", "made", "by"],
    "a photo of this source.": ["a", "photo", "of", "this", "source", "."],
    "X another source.": ["x", "another", "source", "."],
}

TEXT_LAYERS, VISION_LAYERS = 2, 4
WIDTH, PROJECTION, IMAGE_SIZE, PATCH, MAX_POSITIONS = 32, 16, 32, 8, 32


def vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Byte-level BPE vocabulary and merges: letters and '.', with and without ``</w>``, then each word
    of :data:`WORDS` built left to right, then the special tokens (EOS has the largest id, like CLIP)."""
    tokens: list[str] = []
    for ch in LETTERS + ".":
        tokens.append(ch)
    for ch in LETTERS + ".":
        tokens.append(ch + "</w>")
    merges: list[str] = []
    for word in WORDS:
        if len(word) == 1:
            continue  # "x</w>", "a</w>" are single characters already
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merge = f"{left} {right}"
            left = left + right
            if merge not in merges:
                merges.append(merge)
            if left not in tokens:
                tokens.append(left)
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer(folder: Path) -> int:
    """Write vocab.json, merges.txt and the tokenizer configs; return the vocabulary size."""
    vocab, merges = vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "model_max_length": MAX_POSITIONS,
        "do_lower_case": True,
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}))
    return len(vocab)


def write_preprocessor(folder: Path, size: int = IMAGE_SIZE, mean=CLIP_MEAN, std=CLIP_STD) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "do_convert_rgb": True,
    }))


def tiny_config(vocab_size: int, *, legacy_eos: bool = False):
    """CLIPConfig of the tiny model. ``legacy_eos``: eos_token_id 2, as in pre-2023 CLIP configs (the
    text tower then pools at the largest token id)."""
    from transformers import CLIPConfig

    eos_id = 2 if legacy_eos else vocab_size - 1
    text = dict(vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=TEXT_LAYERS,
                num_attention_heads=2, max_position_embeddings=MAX_POSITIONS, hidden_act="quick_gelu",
                projection_dim=PROJECTION, bos_token_id=vocab_size - 2, eos_token_id=eos_id,
                pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=VISION_LAYERS,
                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=PROJECTION,
                  hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION)


def random_model(seed: int = 0, *, legacy_eos: bool = False):
    """A seeded random tiny ``CLIPModel`` (eval mode), without touching the global RNG state."""
    from transformers import CLIPModel

    vocab, _ = vocab_and_merges()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_config(len(vocab), legacy_eos=legacy_eos))
        # transformers initialises LayerNorms to (1, 0) and biases to 0; randomise them too, so that a
        # test mixing up two of them (pre/post LN, q/k biases...) cannot pass by accident.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def build_tiny_clip(folder: str | Path, seed: int = 0, *, legacy_eos: bool = False) -> Path:
    """Write the tiny full CLIP (model, tokenizer, preprocessor config) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    model = random_model(seed, legacy_eos=legacy_eos)
    model.save_pretrained(folder, safe_serialization=True)
    write_preprocessor(folder)
    return folder


def build_tiny_vision(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny image tower alone (the full model's vision weights), no tokenizer."""
    from transformers import CLIPVisionModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = random_model(seed)
    vision = CLIPVisionModelWithProjection(full.config.vision_config)
    state = {k: v for k, v in full.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    vision.load_state_dict(state, strict=True)
    vision.eval().save_pretrained(folder, safe_serialization=True)
    write_preprocessor(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Synthetic image families


def gradient_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """The "smooth" family: a linear gradient between two cool (blue) colours, random direction."""
    rng = np.random.default_rng(seed)
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((np.cos(angle) * xs / w + np.sin(angle) * ys / h + 1) / 2)[..., None]
    c0 = np.array([40, 90, 200]) + rng.uniform(-30, 30, 3)
    c1 = np.array([80, 160, 230]) + rng.uniform(-25, 25, 3)
    return Image.fromarray((c0 * (1 - t) + c1 * t).clip(0, 255).astype(np.uint8))


def noise_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """The "rough" family: per-pixel noise around a warm (red) colour.

    The families differ in texture and in colour: a random tiny CLIP hardly mixes patch contents into
    its CLS token, and colour is what survives that reliably enough for a few-shot test."""
    rng = np.random.default_rng(10_000 + seed)
    w, h = size
    base = np.array([200, 90, 60]) + rng.uniform(-30, 30, 3)
    return Image.fromarray((base + rng.normal(0, 50, (h, w, 3))).clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# A torch-only stand-in backbone and a subprocess worker (importable by multiprocessing's spawn)


def stub_backbone():
    """A backbone with the tiny CLIP's shapes whose trunk is a fixed random linear map of the pixels.

    It needs torch only (no transformers), so a spawned process starts in about a second."""
    class StubBackbone(Backbone):
        model_id = "stub"
        engine = "torch-fp32"
        weights_sha256 = "0" * 64
        num_layers = VISION_LAYERS
        hidden_size = WIDTH
        projection_dim = PROJECTION
        num_patches = (IMAGE_SIZE // PATCH) ** 2

        def __init__(self):
            self.preprocess = Preprocessing(size=IMAGE_SIZE)
            g = torch.Generator().manual_seed(0)
            d_in = 3 * IMAGE_SIZE * IMAGE_SIZE
            self._cls = torch.randn(d_in, (VISION_LAYERS + 1) * WIDTH, generator=g) / d_in**0.5
            self._embeds = torch.randn(d_in, PROJECTION, generator=g) / d_in**0.5
            self._tokens = torch.randn(d_in, self.num_patches * WIDTH, generator=g) / d_in**0.5

        def _trunk(self, pixel_values, blocks):
            x = pixel_values.flatten(1)
            n = x.shape[0]
            cls = (x @ self._cls).view(n, VISION_LAYERS + 1, WIDTH)
            tokens = {b: ((b + 1) * x @ self._tokens).view(n, self.num_patches, WIDTH).half() for b in blocks}
            return Trunk(cls, x @ self._embeds, tokens)

    return StubBackbone()


def extract_in_subprocess(paths: list[str], cache_root: str, rounds: list[list[int]], barrier,
                          out_path: str) -> None:
    """With the stub backbone, wait for the other workers, then extract ``paths`` into ``cache_root``
    once per entry of ``rounds`` (token blocks per round); save the last round's embeddings."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    backbone = stub_backbone()
    barrier.wait(timeout=120)
    feats = None
    for blocks in rounds:
        feats = FeatureExtractor(backbone, cache_root=cache_root, batch_size=2).load(paths, blocks=blocks)
    save_file({"embeds": feats.trunk.embeds.contiguous()}, out_path)
