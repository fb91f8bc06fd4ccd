"""Visual prompts on the CLS path: the shortcut computation agrees with the full transformer block, the
light safetensors blocks equal transformers' layers, and only the prompts and the head learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occ.backbones.base import patch_keys_values
from occ.backbones.blocks import TowerConfig, load_block
from occ.config import VerifierConfig
from occ.heads import split_heads, split_keys_values
from occ.prompts import PromptTemplate, VisualPrompts, _cls_path_block
from occ.training import TrainSettings, objective
from occ.verifier import Verifier


@pytest.fixture(scope="module")
def hidden(tiny_vision_backbone):
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = tiny_vision_backbone.vision.vision_model(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states


@pytest.mark.parametrize("mlp", [True, False])
def test_cls_path_without_prompts_equals_the_full_block(tiny_vision_backbone, hidden, mlp) -> None:
    # With no prompt tokens, the CLS token attends to itself and the patches exactly as in the full
    # block: the CLS-path shortcut must reproduce the tower's own CLS output.
    layers = tiny_vision_backbone.vision.vision_model.encoder.layers
    for b, layer in enumerate(layers):
        with torch.no_grad():
            kv = patch_keys_values(layer, hidden[b])
            attn = layer.self_attn
            empty = torch.zeros(1, 0, hidden[b].shape[-1])
            cls, _ = _cls_path_block(layer, hidden[b][:, :1], empty, split_heads(kv[:, 0], attn),
                                     split_heads(kv[:, 1], attn), cls_only=True, mlp=mlp)
            if mlp:
                want = hidden[b + 1][:, 0]
            else:  # the residual stream right after the block's attention sublayer
                full = layer.self_attn(layer.layer_norm1(hidden[b]))[0]
                want = (hidden[b] + full)[:, 0]
        torch.testing.assert_close(cls[:, 0], want, rtol=1e-5, atol=1e-5)


def test_light_blocks_equal_transformers_layers(tiny_vision_backbone, tiny_vision_dir, hidden) -> None:
    config = TowerConfig.from_transformers(tiny_vision_backbone.vision.config)
    for b, layer in enumerate(tiny_vision_backbone.vision.vision_model.encoder.layers):
        light = load_block(tiny_vision_dir / "model.safetensors", b, config)
        x = hidden[b]
        with torch.no_grad():
            for name in ("layer_norm1", "layer_norm2"):
                torch.testing.assert_close(getattr(light, name)(x), getattr(layer, name)(x))
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                torch.testing.assert_close(getattr(light.self_attn, name)(x), getattr(layer.self_attn, name)(x))
            torch.testing.assert_close(light.mlp(x), layer.mlp(x), rtol=1e-5, atol=1e-6)
        assert (light.self_attn.num_heads, light.self_attn.head_dim) == (layer.self_attn.num_heads,
                                                                          layer.self_attn.head_dim)
        assert not any(p.requires_grad for p in light.parameters())


def test_shared_prompts_give_the_same_readout_as_per_image_prompts(tiny_vision_backbone, hidden) -> None:
    # The first prompted block projects the (image-independent) prompts once and broadcasts them; that
    # must equal running the same prompts copied for every image.
    template = PromptTemplate.load("visual-mid")
    head = VisualPrompts(tiny_vision_backbone, template, torch.Generator().manual_seed(1))
    kv = [split_keys_values(tiny_vision_backbone, b, patch_keys_values(tiny_vision_backbone.block(b), hidden[b]))
          for b in head.blocks]
    with torch.no_grad():
        shared = head.readout_features(hidden[head.first][:, 0], kv)
        n = hidden[0].shape[0]
        cls, prompts = hidden[head.first][:, :1], head.prompt.unsqueeze(0).expand(n, -1, -1).clone()
        for i, (b, (k, v)) in enumerate(zip(head.blocks, kv)):
            last = i == len(head.blocks) - 1
            cls, prompts = _cls_path_block(tiny_vision_backbone.block(b), cls, prompts, k, v, cls_only=last,
                                           mlp=not last or head.readout_after == "block")
    torch.testing.assert_close(shared, (cls[:, 0] - head.mu) / head.sigma, rtol=1e-5, atol=1e-5)


def test_losses_known_answers() -> None:
    # two targets, two non-targets; logits [non-target, target]
    logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 0.0], [0.0, -3.0]])
    y = torch.tensor([1, 1, 0, 0])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(objective(logits, y, "ce"), ce.mean())
    # CVaR at alpha 0.8 over 4 losses: the worst ceil(0.2 * 4) = 1 loss
    cvar = ce.max()
    # scores z = target - non-target: pos [2, -1], neg [0, -3]; pairwise differences pos - neg:
    # [2, 5, -1, 2] -> squared hinge with margin 1: [0, 0, 4, 0] -> mean 1
    torch.testing.assert_close(objective(logits, y, "cvar-auc"), 0.5 * cvar + 0.5 * torch.tensor(1.0))


@pytest.mark.parametrize("settings", [TrainSettings(steps=8, batch_size=8, loss="cvar-auc"),
                                      TrainSettings(steps=8, batch_size=8, sam=True),
                                      TrainSettings(steps=8, batch_size=8, adversarial="none")])
def test_training_options_fit_and_only_prompts_and_head_change(tiny_vision_backbone, settings) -> None:
    torch.manual_seed(0)
    blocks = Verifier(VerifierConfig(kind="visual")).kv_blocks(tiny_vision_backbone)
    warm = torch.rand(12, 3, 32, 32) * 0.5 + 0.5
    cool = -torch.rand(24, 3, 32, 32) * 0.5 - 0.5
    pos = tiny_vision_backbone.trunk(warm, blocks)
    neg = tiny_vision_backbone.trunk(cool, blocks)
    before = {k: v.clone() for k, v in tiny_vision_backbone.vision.state_dict().items()}
    verifier = Verifier(VerifierConfig(kind="visual", settings=settings))
    verifier.fit(tiny_vision_backbone, pos.select(range(8)), neg.select(range(16)))
    after = tiny_vision_backbone.vision.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    held_pos = verifier.decision_function(pos.select(range(8, 12)))
    held_neg = verifier.decision_function(neg.select(range(16, 24)))
    assert np.all(np.isfinite(held_pos)) and held_pos.min() > held_neg.max()
    tensors, meta = verifier.to_saved()
    assert meta["settings"]["loss"] == settings.loss and meta["settings"]["sam"] == settings.sam


def test_probe_verifier_picks_a_block_and_reloads(tiny_vision_backbone) -> None:
    torch.manual_seed(0)
    warm = torch.rand(12, 3, 32, 32) * 0.5 + 0.5
    cool = -torch.rand(24, 3, 32, 32) * 0.5 - 0.5
    pos, neg = tiny_vision_backbone.trunk(warm), tiny_vision_backbone.trunk(cool)
    verifier = Verifier(VerifierConfig(kind="probe"))
    verifier.fit(tiny_vision_backbone, pos.select(range(8)), neg.select(range(16)))
    assert 1 <= int(verifier.head_.block) < tiny_vision_backbone.num_layers
    held = verifier.decision_function(pos.select(range(8, 12)))
    assert held.min() > verifier.decision_function(neg.select(range(16, 24))).max()
    tensors, meta = verifier.to_saved()
    again = Verifier.from_saved(tiny_vision_backbone, tensors, meta)
    assert np.array_equal(again.decision_function(pos), verifier.decision_function(pos))
    assert verifier.kv_blocks(tiny_vision_backbone) == ()


def test_single_attention_prompts_score_from_shared_statistics(tiny_vision_backbone, hidden) -> None:
    # Prompts that meet the CLS token in one block read out after its attention are scored from the
    # CLS token's attention statistics, shared by every source: same scores as the full path, and the
    # statistics are computed once per batch for all verifiers.
    from occ.backbones.base import Trunk
    from occ.heads import TrunkBatch

    template = PromptTemplate.load("visual-mid-attn")
    heads = []
    for seed in (1, 2):
        head = VisualPrompts(tiny_vision_backbone, template, torch.Generator().manual_seed(seed))
        assert head.single_attention
        with torch.no_grad():
            head.prompt.mul_(40.0)  # large prompt scores exercise the softmax's rescaling
            head.weight.normal_(generator=torch.Generator().manual_seed(seed))
            head.mu.normal_()
        heads.append(head)
    b = heads[0].first
    kv = {b: patch_keys_values(tiny_vision_backbone.block(b), hidden[b]).half()}
    trunk = Trunk(torch.stack(hidden, 1)[:, :, 0], torch.zeros(3, 4), kv)
    batch = TrunkBatch(trunk, tiny_vision_backbone)
    for head in heads:
        fast = head.raw(batch)
        with torch.no_grad():
            logits = head.logits(head.inputs(TrunkBatch(trunk, tiny_vision_backbone)))
        torch.testing.assert_close(fast, logits[:, 1] - logits[:, 0], rtol=1e-4, atol=1e-4)
    # one shared computation per block for both heads
    assert batch.shared_blocks == {"keys_values": (b,), "cls_attention": (b,)}
    assert not VisualPrompts(tiny_vision_backbone, PromptTemplate.load("visual-mid")).single_attention


def test_folded_prompt_terms_are_kept_until_the_prompts_change(tiny_vision_backbone, hidden) -> None:
    # Scoring batch after batch reuses a source's projected prompt terms (issue 14: 100 sources on cached
    # images); a change to any learned tensor (training, load_state_dict) recomputes them.
    from occ.backbones.base import Trunk
    from occ.heads import TrunkBatch

    head = VisualPrompts(tiny_vision_backbone, PromptTemplate.load("visual-mid-attn"), torch.Generator().manual_seed(3))
    with torch.no_grad():
        head.weight.normal_(generator=torch.Generator().manual_seed(3))
    b = head.first
    trunk = Trunk(torch.stack(hidden, 1)[:, :, 0], torch.zeros(3, 4),
                  {b: patch_keys_values(tiny_vision_backbone.block(b), hidden[b]).half()})

    def raw():  # a new batch each time, as the attributor makes one per batch
        return head.raw(TrunkBatch(trunk, tiny_vision_backbone))

    def exact():
        with torch.no_grad():
            logits = head.logits(head.inputs(TrunkBatch(trunk, tiny_vision_backbone)))
        return logits[:, 1] - logits[:, 0]

    with torch.no_grad():
        first = raw()
        kept = head._folded()
        assert head._folded() is kept  # not recomputed
        torch.testing.assert_close(raw(), first)
        head.prompt.add_(torch.randn(head.prompt.shape, generator=torch.Generator().manual_seed(4)))
        assert head._folded() is not kept
        torch.testing.assert_close(raw(), exact(), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(raw(), first)
        state = {k: v.clone() for k, v in head.state_dict().items()}
        state["bias"] += 1.0
        head.load_state_dict(state)
        torch.testing.assert_close(raw(), exact(), rtol=1e-4, atol=1e-4)
