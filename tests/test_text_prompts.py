"""OCC-CLIP proper on the tiny full CLIP: TextPrompts, and Verifier fits of both prompt kinds.

The families: target = warm noise textures (tiny_clip.noise_image), other = cool smooth gradients
(tiny_clip.gradient_image); features are the tiny backbone's own trunk outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from occ.backbones import load_backbone
from occ.config import VerifierConfig
from occ.errors import RegistryError, UsageError
from occ.prompts import PromptTemplate, TextPrompts
from occ.testing import tiny_clip
from occ.training import TrainSettings
from occ.verifier import Verifier

SETTINGS = TrainSettings(steps=15, batch_size=8)
N_TRAIN, N_HELD = 10, 8


def pooled(output) -> torch.Tensor:
    """transformers >= 5 returns a ModelOutput from get_*_features, older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_text_features(backbone, sentences: list[str], padding) -> torch.Tensor:
    """transformers' own text features of ``sentences`` (normalised), one sentence at a time or padded."""
    tok = backbone.tokenizer
    with torch.no_grad():
        if padding is None:
            rows = [pooled(backbone.text.get_text_features(input_ids=tok(s, return_tensors="pt")["input_ids"]))
                    for s in sentences]
            out = torch.cat(rows)
        else:
            ids = tok(sentences, padding=padding, max_length=tiny_clip.MAX_POSITIONS, return_tensors="pt")
            out = pooled(backbone.text.get_text_features(input_ids=ids["input_ids"]))
    return F.normalize(out, dim=-1)


def word_embeddings(backbone, text: str) -> torch.Tensor:
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return backbone.text.text_model.embeddings.token_embedding(torch.tensor(ids)).clone()


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert set(after) == set(before)
    changed = [k for k, v in after.items() if not torch.equal(v, before[k])]
    assert changed == [], f"backbone tensors changed: {changed[:5]}"
    assert all(not p.requires_grad for p in module.parameters())
    assert all(p.grad is None for p in module.parameters()), "gradients reached the backbone"


def trunk_of(backbone, make, seeds, blocks=()):
    return backbone.trunk(backbone.preprocess([make(s) for s in seeds]), blocks)


class Data:
    def __init__(self, backbone, blocks=()):
        self.pos = trunk_of(backbone, tiny_clip.noise_image, range(N_TRAIN), blocks)
        self.neg = trunk_of(backbone, tiny_clip.gradient_image, range(N_TRAIN), blocks)
        self.held_pos = trunk_of(backbone, tiny_clip.noise_image, range(100, 100 + N_HELD), blocks)
        self.held_neg = trunk_of(backbone, tiny_clip.gradient_image, range(100, 100 + N_HELD), blocks)


@pytest.fixture(scope="module")
def text_data(tiny_backbone) -> Data:
    return Data(tiny_backbone)


@pytest.fixture(scope="module")
def text_fit(tiny_backbone, text_data):
    """A text verifier fitted on the tiny CLIP, with the backbone's state from before the fit."""
    before = state_snapshot(tiny_backbone.text)
    verifier = Verifier(VerifierConfig(kind="text", settings=SETTINGS)).fit(tiny_backbone, text_data.pos, text_data.neg)
    return verifier, before


@pytest.fixture(scope="module")
def legacy_backbone(tmp_path_factory):
    """A tiny CLIP whose config has the legacy eos_token_id 2 (pooling at the largest token id)."""
    folder = tiny_clip.build_tiny_clip(tmp_path_factory.mktemp("legacy") / "legacy-clip", seed=2, legacy_eos=True)
    return load_backbone(str(folder))


# --------------------------------------------------------------------------------------------------
# The tiny tokenizer


def test_tiny_tokenizer_splits_the_prompt_sentences_into_words(tiny_backbone) -> None:
    tok = tiny_backbone.tokenizer
    for sentence, words in tiny_clip.SENTENCES.items():
        tokens = tok.convert_ids_to_tokens(tok(sentence, add_special_tokens=False)["input_ids"])
        assert tokens == [w + "</w>" for w in words], sentence
    ids = tok("x real.")["input_ids"]
    vocab = tok.get_vocab()
    assert ids[0] == vocab[tiny_clip.BOS] and ids[-1] == vocab[tiny_clip.EOS] == max(vocab.values())


# --------------------------------------------------------------------------------------------------
# TextPrompts against transformers' text tower


@pytest.mark.parametrize("which", ["current-eos", "legacy-eos"])
@pytest.mark.parametrize("padding", [None, "max_length"])
def test_class_features_equal_clip_text_features(tiny_backbone, legacy_backbone, which, padding) -> None:
    # With the context set to the embeddings of the placeholder word "x", the prompts are the plain
    # sentences "x x ... x real." / "x x ... x fake.": TextPrompts must give exactly CLIP's text
    # features of those sentences (checks the causal mask, positions, final LN, EOS pooling, projection).
    backbone = tiny_backbone if which == "current-eos" else legacy_backbone
    template = PromptTemplate.load("occ-clip")
    prompts = TextPrompts(backbone, template, torch.Generator().manual_seed(0))
    assert prompts.n_ctx == template.n_ctx == 16
    with torch.no_grad():
        prompts.ctx.copy_(word_embeddings(backbone, "x").expand(prompts.n_ctx, -1))
        got = prompts.class_features()
    sentences = [" ".join(["X"] * 16) + " real.", " ".join(["X"] * 16) + " fake."]
    want = clip_text_features(backbone, sentences, padding)
    assert got.shape == (2, tiny_clip.PROJECTION)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3), "the class word made no difference"


@pytest.mark.parametrize("n_ctx", [28, 29, 30, 40])
def test_prompts_longer_than_the_text_tower_are_refused(tiny_backbone, n_ctx) -> None:
    # "<bos> x * n_ctx real . <eos>" is n_ctx + 4 tokens; the tiny tower takes 32. Truncating would drop
    # the "." (n_ctx 29), the class word, making both prompts alike (30), or fail obscurely (40).
    template = dataclasses.replace(PromptTemplate.load("occ-clip"), n_ctx=n_ctx)
    if n_ctx + 4 > tiny_clip.MAX_POSITIONS:
        with pytest.raises(UsageError) as exc:
            TextPrompts(tiny_backbone, template)
        assert "occ-clip" in str(exc.value) and str(tiny_clip.MAX_POSITIONS) in str(exc.value)
        return
    prompts = TextPrompts(tiny_backbone, template)  # exactly full: no padding at all
    with torch.no_grad():
        prompts.ctx.copy_(word_embeddings(tiny_backbone, "x").expand(n_ctx, -1))
        got = prompts.class_features()
    sentences = [" ".join(["X"] * n_ctx) + f" {w}." for w in ("real", "fake")]
    torch.testing.assert_close(got, clip_text_features(tiny_backbone, sentences, None), rtol=1e-5, atol=1e-5)


def test_class_features_depend_on_every_context_vector(tiny_backbone) -> None:
    prompts = TextPrompts(tiny_backbone, PromptTemplate.load("occ-clip"), torch.Generator().manual_seed(0))
    base = prompts.class_features().detach()
    # a random nudge: a constant added to every coordinate would vanish in the LayerNorms
    nudge = torch.randn(tiny_clip.WIDTH, generator=torch.Generator().manual_seed(1)) * 0.5
    for i in (0, 7, 15):
        with torch.no_grad():
            prompts.ctx[i] += nudge
        assert (prompts.class_features().detach() - base).abs().max() > 1e-3, f"ctx[{i}] is ignored"
        with torch.no_grad():
            prompts.ctx[i] -= nudge


def test_ctx_init_words_template(tiny_backbone) -> None:
    template = PromptTemplate.load("occ-clip-words")
    assert template.ctx_init == "a photo made by"
    prompts = TextPrompts(tiny_backbone, template)
    assert prompts.n_ctx == 4
    assert torch.equal(prompts.ctx.detach(), word_embeddings(tiny_backbone, "a photo made by"))
    # the initial prompts are the sentences themselves
    want = clip_text_features(tiny_backbone, ["a photo made by another source.", "a photo made by this source."],
                              None)
    torch.testing.assert_close(prompts.class_features().detach(), want, rtol=1e-5, atol=1e-5)


def test_only_the_context_is_trainable(tiny_backbone) -> None:
    prompts = TextPrompts(tiny_backbone, PromptTemplate.load("occ-clip"), torch.Generator().manual_seed(0))
    assert [n for n, p in prompts.named_parameters() if p.requires_grad] == ["ctx"]
    assert list(prompts.state_dict()) == ["ctx"]
    backbone_ids = {id(p) for p in tiny_backbone.text.parameters()}
    assert not backbone_ids & {id(p) for p in prompts.parameters()}
    # gradients of the logits reach the context
    logits = prompts(torch.randn(3, tiny_clip.PROJECTION))
    assert logits.shape == (3, 2)
    logits[:, 1].sum().backward()
    assert prompts.ctx.grad is not None and prompts.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.text.parameters())


def test_context_init_is_seeded(tiny_backbone) -> None:
    template = PromptTemplate.load("occ-clip")
    a = TextPrompts(tiny_backbone, template, torch.Generator().manual_seed(5)).ctx
    b = TextPrompts(tiny_backbone, template, torch.Generator().manual_seed(5)).ctx
    c = TextPrompts(tiny_backbone, template, torch.Generator().manual_seed(6)).ctx
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.std().item() == pytest.approx(template.init_std, rel=0.2)


def test_text_prompts_need_a_text_tower(tiny_vision_backbone) -> None:
    with pytest.raises(UsageError, match="text tower"):
        TextPrompts(tiny_vision_backbone, PromptTemplate.load("occ-clip"))


# --------------------------------------------------------------------------------------------------
# Verifier(VerifierConfig(kind="text"))


def test_text_fit_leaves_the_backbone_untouched(tiny_backbone, text_fit) -> None:
    verifier, before = text_fit
    assert_state_unchanged(tiny_backbone.text, before)
    assert not tiny_backbone.text.training


def test_text_fit_learns_the_context(tiny_backbone, text_fit) -> None:
    verifier, _ = text_fit
    initial = TextPrompts(tiny_backbone, PromptTemplate.load("occ-clip"),
                          torch.Generator().manual_seed(SETTINGS.seed)).ctx
    assert not torch.equal(verifier.head_.ctx.detach(), initial.detach()), "the context did not move"


def test_text_verifier_separates_the_families(tiny_backbone, text_fit, text_data) -> None:
    verifier, _ = text_fit
    pos = verifier.decision_function(text_data.held_pos)
    neg = verifier.decision_function(text_data.held_neg)
    assert pos.min() > neg.max(), f"held-out target {np.round(pos, 3)} vs other {np.round(neg, 3)}"
    # training made the difference, not the random start
    untrained = TextPrompts(tiny_backbone, PromptTemplate.load("occ-clip"),
                            torch.Generator().manual_seed(SETTINGS.seed))
    with torch.no_grad():
        lp, ln = untrained(text_data.held_pos.embeds), untrained(text_data.held_neg.embeds)
    margin_before = ((lp[:, 1] - lp[:, 0]).mean() - (ln[:, 1] - ln[:, 0]).mean()).item()
    assert pos.mean() - neg.mean() > margin_before + 0.1
    scores = verifier.score(text_data.held_pos)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert verifier.score(text_data.held_pos).mean() > verifier.score(text_data.held_neg).mean()


def test_text_saved_tensors_hold_only_the_context(text_fit, tiny_backbone) -> None:
    verifier, _ = text_fit
    tensors, meta = verifier.to_saved()
    assert list(tensors) == ["ctx"]
    assert tensors["ctx"].shape == (16, tiny_clip.WIDTH)
    assert meta["backbone_fingerprint"] == tiny_backbone.fingerprint
    assert meta["kind"] == "text"
    total = sum(t.numel() for t in tensors.values())
    assert total == 16 * tiny_clip.WIDTH, "backbone weights leaked into the saved verifier"


def test_text_save_and_reload_gives_identical_scores(text_fit, tiny_backbone, text_data) -> None:
    verifier, _ = text_fit
    tensors, meta = verifier.to_saved()
    tensors = st_load(st_save(tensors))  # as the registry stores them
    again = Verifier.from_saved(tiny_backbone, tensors, meta, name="noise")
    held = [text_data.held_pos, text_data.held_neg]
    for trunk in held:
        assert np.array_equal(again.decision_function(trunk), verifier.decision_function(trunk))
        assert np.array_equal(again.score(trunk), verifier.score(trunk))
        assert np.array_equal(again.predict(trunk), verifier.predict(trunk))
    assert again.threshold == verifier.threshold


def test_reload_on_another_backbone_is_refused(text_fit, other_backbone, tiny_vision_backbone) -> None:
    verifier, _ = text_fit
    tensors, meta = verifier.to_saved()
    for other in (other_backbone, tiny_vision_backbone):
        with pytest.raises(RegistryError) as exc:
            Verifier.from_saved(other, tensors, meta, name="noise")
        message = str(exc.value)
        assert "\n" not in message and "noise" in message
        assert meta["backbone_fingerprint"] in message and other.fingerprint in message


def test_reload_with_extra_or_missing_tensors_is_refused(text_fit, tiny_backbone) -> None:
    verifier, _ = text_fit
    tensors, meta = verifier.to_saved()
    smuggled = dict(tensors)
    smuggled["text_projection.weight"] = torch.zeros(16, 32)
    with pytest.raises(RegistryError):
        Verifier.from_saved(tiny_backbone, smuggled, meta)
    with pytest.raises(RegistryError):
        Verifier.from_saved(tiny_backbone, {}, meta)
    with pytest.raises(RegistryError):
        Verifier.from_saved(tiny_backbone, {"ctx": torch.zeros(4, 32)}, meta)


def test_same_data_and_seed_give_identical_saved_tensors(tiny_backbone, text_fit, text_data) -> None:
    verifier, _ = text_fit
    again = Verifier(VerifierConfig(kind="text", settings=SETTINGS)).fit(tiny_backbone, text_data.pos, text_data.neg)
    a, meta_a = verifier.to_saved()
    b, meta_b = again.to_saved()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta_a["calibration"] == meta_b["calibration"]
    other_seed = Verifier(VerifierConfig(kind="text", settings=TrainSettings(steps=15, batch_size=8, seed=1)))
    c, _ = other_seed.fit(tiny_backbone, text_data.pos, text_data.neg).to_saved()
    assert not torch.equal(a["ctx"], c["ctx"])


def test_words_template_fit(tiny_backbone, text_data) -> None:
    verifier = Verifier(VerifierConfig(kind="text", template="occ-clip-words", settings=SETTINGS))
    verifier.fit(tiny_backbone, text_data.pos, text_data.neg)
    tensors, meta = verifier.to_saved()
    assert tensors["ctx"].shape == (4, tiny_clip.WIDTH)
    assert meta["template"]["name"] == "occ-clip-words"
    again = Verifier.from_saved(tiny_backbone, tensors, meta)
    assert np.array_equal(again.decision_function(text_data.held_pos), verifier.decision_function(text_data.held_pos))


def test_pixel_space_adversarial_fit(tiny_backbone, text_data) -> None:
    # OCC-CLIP's own ADA: FGSM in pixel space through the frozen image tower
    neg_pixels = tiny_backbone.preprocess([tiny_clip.gradient_image(s) for s in range(N_TRAIN)])
    before = state_snapshot(tiny_backbone.text)
    settings = TrainSettings(steps=6, batch_size=8, adversarial="pixel", eps=0.03)
    verifier = Verifier(VerifierConfig(kind="text", settings=settings, folds=2))
    verifier.fit(tiny_backbone, text_data.pos, text_data.neg, neg_pixels=neg_pixels)
    assert_state_unchanged(tiny_backbone.text, before)
    assert np.isfinite(verifier.decision_function(text_data.held_pos)).all()


def test_text_kind_on_an_image_only_tower_is_refused(tiny_vision_backbone) -> None:
    data = Data(tiny_vision_backbone)
    with pytest.raises(UsageError, match="text tower"):
        Verifier(VerifierConfig(kind="text", settings=SETTINGS)).fit(tiny_vision_backbone, data.pos, data.neg)


# --------------------------------------------------------------------------------------------------
# Verifier(VerifierConfig(kind="visual")) on the image-only tower


@pytest.fixture(scope="module")
def visual_fit(tiny_vision_backbone):
    verifier = Verifier(VerifierConfig(kind="visual", settings=SETTINGS))
    blocks = verifier.kv_blocks(tiny_vision_backbone)
    data = Data(tiny_vision_backbone, blocks)
    before = state_snapshot(tiny_vision_backbone.vision)
    verifier.fit(tiny_vision_backbone, data.pos, data.neg)
    return verifier, data, before


def test_visual_blocks_from_the_template(tiny_vision_backbone, visual_fit) -> None:
    verifier, _, _ = visual_fit
    # the default visual-mid-attn: first block round(0.5833 * 4) = 2, readout round(0.6667 * 4) = 3
    assert verifier.kv_blocks(tiny_vision_backbone) == (2,)
    assert (verifier.head_.first, verifier.head_.readout) == (2, 3)


def test_visual_fit(tiny_vision_backbone, visual_fit) -> None:
    verifier, data, before = visual_fit
    assert_state_unchanged(tiny_vision_backbone.vision, before)
    pos = verifier.decision_function(data.held_pos)
    neg = verifier.decision_function(data.held_neg)
    assert pos.min() > neg.max(), f"held-out target {np.round(pos, 3)} vs other {np.round(neg, 3)}"


def test_visual_save_and_reload_gives_identical_scores(tiny_vision_backbone, visual_fit) -> None:
    verifier, data, _ = visual_fit
    tensors, meta = verifier.to_saved()
    assert set(tensors) == {"prompt", "weight", "bias", "mu", "sigma"}
    assert tensors["prompt"].shape == (4, tiny_clip.WIDTH)  # visual-mid-attn: 4 prompt tokens
    assert sum(t.numel() for t in tensors.values()) == (4 + 1 + 1 + 1) * tiny_clip.WIDTH + 1
    again = Verifier.from_saved(tiny_vision_backbone, st_load(st_save(tensors)), meta)
    for trunk in (data.held_pos, data.held_neg):
        assert np.array_equal(again.decision_function(trunk), verifier.decision_function(trunk))
        assert np.array_equal(again.score(trunk), verifier.score(trunk))


def test_visual_fit_is_deterministic(tiny_vision_backbone, visual_fit) -> None:
    verifier, data, _ = visual_fit
    again = Verifier(VerifierConfig(kind="visual", settings=SETTINGS)).fit(tiny_vision_backbone, data.pos, data.neg)
    a, _ = verifier.to_saved()
    b, _ = again.to_saved()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_visual_verifier_on_the_full_clip_refused_for_the_vision_only_one(tiny_backbone, visual_fit) -> None:
    # same image tower weights, other backbone fingerprint: refused all the same
    verifier, _, _ = visual_fit
    tensors, meta = verifier.to_saved()
    with pytest.raises(RegistryError) as exc:
        Verifier.from_saved(tiny_backbone, tensors, meta)
    assert tiny_backbone.fingerprint in str(exc.value)


def test_tiny_dirs_are_distinct(tiny_clip_dir: Path, tiny_vision_dir: Path) -> None:
    assert (tiny_clip_dir / "vocab.json").is_file() and not (tiny_vision_dir / "vocab.json").exists()
