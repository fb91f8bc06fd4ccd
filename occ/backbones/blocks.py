"""Single CLIP encoder blocks loaded straight from safetensors, without importing transformers.

Per-source work (visual prompts) needs only a few blocks of the frozen image tower. Building them
from the saved weights keeps attribution from paying transformers' import time (seconds) when the
trunk's features are already cached. The modules mirror transformers' ``CLIPEncoderLayer`` attribute
names (``layer_norm1``, ``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp``) so either can be used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from occ.backbones.base import TowerConfig  # (defined without torch, beside the rest of the contract)


class _Attention(nn.Module):
    def __init__(self, config: TowerConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = d // config.num_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)


class _MLP(nn.Module):
    def __init__(self, config: TowerConfig):
        super().__init__()
        if config.hidden_act not in ("quick_gelu", "gelu"):
            raise ValueError(f"unsupported activation {config.hidden_act!r}")
        self.quick = config.hidden_act == "quick_gelu"
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.quick else nn.functional.gelu(x)
        return self.fc2(x)


class Block(nn.Module):
    """The weights of one CLIP encoder layer (the caller decides which tokens go through it)."""

    def __init__(self, config: TowerConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = _Attention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = _MLP(config)


def load_block(weights: Path, index: int, config: TowerConfig, prefix: str = "vision_model.encoder.layers") -> Block:
    """Block ``index`` of the tower saved in ``weights`` (a transformers-style safetensors file), frozen."""
    from safetensors import safe_open

    block = Block(config)
    names = {k: f"{prefix}.{index}.{k}" for k in block.state_dict()}
    with safe_open(str(weights), framework="pt") as f:
        state = {k: f.get_tensor(name) for k, name in names.items()}
    block.load_state_dict(state, strict=True)
    block.eval()
    for p in block.parameters():
        p.requires_grad_(False)
    return block

