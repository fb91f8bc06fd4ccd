"""Learnable prompt tokens on a frozen CLIP.

Two kinds, both "learnable prompt tokens on a frozen CLIP", both saved the same way:

* :class:`TextPrompts` (OCC-CLIP proper, CoOp style) for backbones with a text tower: ``n_ctx``
  learnable context vectors shared by a non-target and a target class, the class word at the end;
  each class's prompt goes through the frozen text tower; logits = scale * cos(image, class text).
* :class:`VisualPrompts` for image-only towers: learnable tokens that join the CLS token inside
  chosen blocks of the frozen image tower. The patch tokens are the shared trunk's (they do not
  attend to the prompts), so only the CLS token and the few prompt tokens are recomputed per source:
  attribution over many sources stays cheap. The CLS readout of the middle of the tower, where the
  origin signal is, feeds a cosine head with one learnable vector per class.

Templates (context length, initial words, class words, visual blocks) are JSON files in the
top-level ``prompts/`` folder, installed with the package as ``occ.prompt_templates``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occ.backbones.base import Backbone, patch_keys_values
from occ.errors import UsageError
from occ.heads import PromptHead, TrunkBatch, split_heads, split_keys_values
from occ.probe import fit_balanced_logistic


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template, as stored in ``prompts/<name>.json``."""

    name: str
    kind: str  # "text" or "visual"
    description: str = ""
    # text prompts
    n_ctx: int | None = 16
    ctx_init: str | None = None
    init_std: float = 0.02
    class_words: dict = field(default_factory=lambda: {"nontarget": "real", "target": "fake"})
    # visual prompts
    n_tokens: int = 4
    first_block: float | int = 0.5  # int: block index; float: fraction of the tower's depth
    readout_block: float | int = 0.667
    readout_after: str = "block"  # or "attention": skip the last prompted block's MLP

    @classmethod
    def load(cls, name_or_path: str) -> PromptTemplate:
        path = Path(name_or_path)
        if path.suffix != ".json" or not path.is_file():
            found = [d / f"{name_or_path}.json" for d in template_dirs() if (d / f"{name_or_path}.json").is_file()]
            if not found or "/" in name_or_path:
                raise UsageError(
                    f"no prompt template named {name_or_path!r} (available: {', '.join(available_templates())})"
                )
            path = found[0]
        text = path.read_text()
        try:
            data = json.loads(text)
            template = cls(**data)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"prompt template {name_or_path!r} is invalid: {exc}") from None
        if template.kind not in ("text", "visual"):
            raise UsageError(f"prompt template {name_or_path!r}: kind must be 'text' or 'visual'")
        return template

    def to_dict(self) -> dict:
        return asdict(self)


def template_dirs() -> list[Path]:
    """Where templates are looked up: ``OCC_PROMPTS_DIR``, the installed copy of ``prompts/``
    (package ``occ.prompt_templates``), and ``prompts/`` beside the package in a source checkout."""
    dirs = []
    if os.environ.get("OCC_PROMPTS_DIR"):
        dirs.append(Path(os.environ["OCC_PROMPTS_DIR"]))
    try:
        dirs.append(Path(str(resources.files("occ.prompt_templates"))))
    except (ModuleNotFoundError, TypeError):
        pass
    dirs.append(Path(__file__).resolve().parent.parent / "prompts")
    return [d for d in dirs if d.is_dir()]


def available_templates() -> list[str]:
    return sorted({p.stem for d in template_dirs() for p in d.glob("*.json")})


def _block_index(spec: float | int, num_layers: int) -> int:
    if isinstance(spec, int):
        return spec
    return int(round(float(spec) * num_layers))


def _span(template: PromptTemplate, num_layers: int) -> tuple[int, int]:
    """(first prompted block, readout block) of a visual template on a ``num_layers``-block tower."""
    first, readout = _block_index(template.first_block, num_layers), _block_index(template.readout_block, num_layers)
    if not 0 <= first < readout <= num_layers:
        raise UsageError(f"visual prompt template {template.name!r}: need 0 <= first block ({first}) < readout "
                         f"block ({readout}) <= {num_layers}")
    return first, readout


class TextPrompts(PromptHead):
    """OCC-CLIP's prompt learner: shared context vectors + class word, through the frozen text tower."""

    kind = "text"
    template_kind = "text"
    default_template = "occ-clip"

    def __init__(self, backbone: Backbone, template: PromptTemplate, generator: torch.Generator | None = None):
        super().__init__()
        if not backbone.has_text:
            raise UsageError(
                f"backbone {backbone.model_id} has no text tower (or no tokenizer): text prompts need a "
                "full CLIP; use a visual prompt template instead"
            )
        self.backbone = backbone
        text = backbone.text.text_model
        tokenizer = backbone.tokenizer
        embedding = text.embeddings.token_embedding
        width = embedding.embedding_dim
        if template.ctx_init:
            init_ids = tokenizer(template.ctx_init, add_special_tokens=False)["input_ids"]
            n_ctx = len(init_ids)
            with torch.no_grad():
                ctx = embedding(torch.tensor(init_ids)).clone()
        else:
            n_ctx = int(template.n_ctx or 16)
            ctx = torch.randn(n_ctx, width, generator=generator) * template.init_std
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx)
        words = [template.class_words["nontarget"], template.class_words["target"]]
        # "X X ... X <class>." : the X placeholders are replaced by the learned context vectors.
        sentences = [" ".join(["X"] * n_ctx) + f" {w}." for w in words]
        max_len = text.embeddings.position_embedding.num_embeddings
        # Truncation would silently drop the class word (both prompts alike) or the end token.
        longest = max(len(ids) for ids in tokenizer(sentences)["input_ids"])
        if longest > max_len:
            raise UsageError(
                f"prompt template {template.name!r}: {n_ctx} context tokens and the class words make prompts "
                f"of {longest} tokens; this text tower takes at most {max_len}"
            )
        enc = tokenizer(sentences, padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt")
        ids = enc["input_ids"]
        with torch.no_grad():
            token_embeds = embedding(ids)
        self.register_buffer("prefix", token_embeds[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", token_embeds[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("eos_index", _eos_positions(ids, text.config), persistent=False)
        self.template_name = template.name

    @classmethod
    def create(cls, backbone: Backbone, template: PromptTemplate | None, generator: torch.Generator) -> TextPrompts:
        return cls(backbone, template, generator)

    def inputs(self, batch: TrunkBatch) -> list[torch.Tensor]:
        return [batch.trunk.embeds.float()]

    def logits(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self(inputs[0])

    def pixel_inputs(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return [self.backbone.hidden_states(pixels)[1]]

    def trunk_inputs(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self.inputs(TrunkBatch(self.backbone.trunk(pixels), self.backbone))

    def describe(self) -> str:
        return f"text prompts ({self.n_ctx} context tokens), template {self.template_name}"

    def class_features(self) -> torch.Tensor:
        """(2, P) L2-normalised text features of the non-target and target prompts."""
        text = self.backbone.text.text_model
        ctx = self.ctx.unsqueeze(0).expand(2, -1, -1)
        x = torch.cat([self.prefix, ctx, self.suffix], dim=1)
        positions = torch.arange(x.shape[1]).unsqueeze(0)
        x = x + text.embeddings.position_embedding(positions)
        length = x.shape[1]
        mask = torch.full((length, length), float("-inf")).triu(1).view(1, 1, length, length)
        for layer in text.encoder.layers:
            x = layer(x, mask)
            x = x[0] if isinstance(x, tuple) else x
        x = text.final_layer_norm(x)
        pooled = x[torch.arange(2), self.eos_index]
        return F.normalize(self.backbone.text.text_projection(pooled), dim=-1)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2): [non-target, target] = scale * cos(image embedding, class text feature)."""
        image = F.normalize(image_embeds.float(), dim=-1)
        return self.backbone.logit_scale * image @ self.class_features().T


def _eos_positions(ids: torch.Tensor, config) -> torch.Tensor:
    eos = getattr(config, "eos_token_id", None)
    if eos is None or eos == 2:  # legacy CLIP configs: the EOS token has the largest id
        return ids.argmax(dim=-1)
    return (ids == eos).int().argmax(dim=-1)


class VisualPrompts(PromptHead):
    """Learnable prompt tokens inside the frozen image tower, on the CLS path.

    From block ``first`` on, ``n_tokens`` prompt tokens join the CLS token. Only these few tokens are
    recomputed per source: they attend to the shared trunk's patch tokens (keys and values from the
    frozen block weights, computed once per image for all sources) and to each other; the patch
    tokens do not attend to the prompts, so the trunk stays shared. In the last prompted block only the
    CLS token is read, after the whole block (``readout_after="block"``) or right after its attention
    (``"attention"``, the cheapest: no per-source MLP at all).

    The CLS readout is standardised with the training set's statistics (fixed at the start) and scored
    by a linear head; the head starts as the logistic regression that separates the training set's
    initial readouts, then prompts and head train together.
    """

    kind = "visual"
    template_kind = "visual"
    default_template = "visual-mid-attn"

    def __init__(self, backbone: Backbone, template: PromptTemplate, generator: torch.Generator | None = None):
        super().__init__()
        self.first, self.readout = _span(template, backbone.num_layers)
        if template.readout_after not in ("block", "attention"):
            raise UsageError(f"visual prompt template {template.name!r}: readout_after must be 'block' or "
                             "'attention'")
        self.template_name = template.name
        self.readout_after = template.readout_after
        self.backbone = backbone
        d = backbone.hidden_size
        self.n_tokens = int(template.n_tokens)
        self.prompt = nn.Parameter(torch.randn(self.n_tokens, d, generator=generator) * template.init_std)
        self.weight = nn.Parameter(torch.zeros(d))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("mu", torch.zeros(d))
        self.register_buffer("sigma", torch.ones(d))

    @classmethod
    def create(cls, backbone: Backbone, template: PromptTemplate | None, generator: torch.Generator) -> VisualPrompts:
        return cls(backbone, template, generator)

    @classmethod
    def needed_blocks(cls, backbone: Backbone, template: PromptTemplate | None) -> tuple[int, ...]:
        first, readout = _span(template, backbone.num_layers)
        return tuple(range(first, readout))

    @property
    def blocks(self) -> tuple[int, ...]:
        """Blocks whose patch keys/values the trunk must provide."""
        return tuple(range(self.first, self.readout))

    def inputs(self, batch: TrunkBatch) -> list[torch.Tensor]:
        """[CLS token entering block ``first``, then keys and values of each prompted block]."""
        with torch.no_grad():
            pairs = [batch.keys_values(b) for b in self.blocks]
        return [batch.trunk.cls[:, self.first].float()] + [t for kv in pairs for t in kv]

    def logits(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self(inputs[0], list(zip(inputs[1::2], inputs[2::2])))

    def raw(self, batch: TrunkBatch) -> torch.Tensor:
        if not self.single_attention:
            return super().raw(batch)
        # One block read out after its attention: the CLS token's attention over the patches is shared.
        return self.raw_from_stats(batch.trunk.cls[:, self.first], batch.cls_attention(self.first))

    def pixel_inputs(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden, _ = self.backbone.hidden_states(pixels)
        kv = [split_keys_values(self.backbone, b, patch_keys_values(self.backbone.block(b), hidden[b]))
              for b in self.blocks]
        return [hidden[self.first][:, 0]] + [t for pair in kv for t in pair]

    def trunk_inputs(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self.inputs(TrunkBatch(self.backbone.trunk(pixels, self.blocks), self.backbone))

    def start(self, pos: list[torch.Tensor], neg: list[torch.Tensor]) -> None:
        self.initialise(pos[0], neg[0], list(zip(pos[1::2], pos[2::2])), list(zip(neg[1::2], neg[2::2])))

    def describe(self) -> str:
        return (f"visual prompts ({self.n_tokens} tokens in blocks {self.first}-{self.readout - 1}, read out after "
                f"the {self.readout_after}), template {self.template_name}")

    def readout_features(self, cls_in: torch.Tensor, kv) -> torch.Tensor:
        """CLS token after the prompted blocks, standardised: (N, D). ``kv``: per block, (keys, values)."""
        cls = cls_in.float().unsqueeze(1)
        prompts = self.prompt.unsqueeze(0)  # (1, P, D) until a block makes them depend on the image
        last = len(self.blocks) - 1
        for i, (b, (k, v)) in enumerate(zip(self.blocks, kv)):
            cls, prompts = _cls_path_block(self.backbone.block(b), cls, prompts, k, v, cls_only=i == last,
                                           mlp=i < last or self.readout_after == "block")
        return (cls[:, 0] - self.mu) / self.sigma

    @property
    def single_attention(self) -> bool:
        """True when the prompts meet the CLS token in one block, read out right after its attention.
        The CLS token's query and its attention over the patch tokens are then the same for every
        source, so scoring can share them (:func:`occ.heads.cls_attention_stats`, :meth:`raw_from_stats`)."""
        return len(self.blocks) == 1 and self.readout_after == "attention"

    def raw_from_stats(self, cls_in: torch.Tensor, stats) -> torch.Tensor:
        """Raw scores (N,) of :attr:`single_attention` prompts from the source-independent attention
        statistics of :func:`occ.heads.cls_attention_stats`. The readout ``cls + out_proj(attention)`` meets only
        the linear head, so the head is folded through ``out_proj`` onto each attention head's output:
        per image and source, the P prompt keys are scored and mixed in and the rest is dot products,
        nothing that grows with the number of patch tokens or needs a matrix product per image."""
        q, m, z, u = stats
        k, w, w_heads, v_out, offset = self._folded()
        s = torch.einsum("nhd,hpd->nhp", q, k)
        top = torch.maximum(m, s.amax(-1))
        shrink, e = (m - top).exp(), (s - top.unsqueeze(-1)).exp()
        numerator = shrink * torch.einsum("nhd,hd->nh", u, w_heads) + (e * v_out).sum(-1)
        attended = (numerator / (shrink * z + e.sum(-1))).sum(-1)
        return cls_in.float() @ w + attended + offset

    def _folded(self):
        """What :meth:`raw_from_stats` needs of this source alone: the prompt keys (H, P, D/H), the head
        on the un-standardised readout (D) and folded onto each attention head (H, D/H), what each
        prompt's value adds to the score (H, P) and the constant term. Outside autograd they are kept
        until a learned tensor changes (its version counter moves), so scoring batch after batch does
        not re-project the prompts every time."""
        tensors = (self.prompt, self.weight, self.bias, self.mu, self.sigma)
        key = tuple((id(t), t._version) for t in tensors)
        memo = self.__dict__.get("_folded_memo")
        if memo is not None and memo[0] == key:
            return memo[1]
        layer = self.backbone.block(self.first)
        attn = layer.self_attn
        h = layer.layer_norm1(self.prompt.unsqueeze(0))
        k, v = split_heads(attn.k_proj(h), attn)[0], split_heads(attn.v_proj(h), attn)[0]  # (H, P, D/H)
        w = self.weight / self.sigma
        w_heads = (attn.out_proj.weight.T @ w).view(attn.num_heads, attn.head_dim)
        v_out = torch.einsum("hpd,hd->hp", v, w_heads)
        folded = (k, w, w_heads, v_out, (attn.out_proj.bias - self.mu) @ w + self.bias)
        if not torch.is_grad_enabled():
            self.__dict__["_folded_memo"] = (key, folded)
        return folded

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        z = feats @ self.weight + self.bias
        return torch.stack([-z / 2, z / 2], dim=-1)

    def forward(self, cls_in: torch.Tensor, kv) -> torch.Tensor:
        """Logits (N, 2): [non-target, target]."""
        return self.logits_from_features(self.readout_features(cls_in, kv))

    @torch.no_grad()
    def initialise(self, pos_cls, neg_cls, pos_kv, neg_kv) -> None:
        """Data-dependent start: prompts near the mean incoming CLS token (plus the seeded noise drawn
        at construction, scaled per coordinate), features standardised with the training set's
        statistics, head = balanced L2 logistic regression on the standardised initial readouts."""
        cls_in = torch.cat([pos_cls, neg_cls]).float()
        self.prompt.copy_(cls_in.mean(0) + self.prompt * cls_in.std(0))
        feats = torch.cat([self.readout_features(pos_cls, pos_kv), self.readout_features(neg_cls, neg_kv)])
        self.mu.copy_(feats.mean(0))
        self.sigma.copy_(feats.std(0).clamp_min(1e-6))
        standard = ((feats - self.mu) / self.sigma).double().numpy()
        labels = np.r_[np.ones(pos_cls.shape[0]), np.zeros(neg_cls.shape[0])]
        model = fit_balanced_logistic(standard, labels)
        self.weight.copy_(torch.from_numpy(model.coef_[0]).float())
        self.bias.fill_(float(model.intercept_[0]))


def _cls_path_block(layer, cls: torch.Tensor, prompts: torch.Tensor, k_patch: torch.Tensor, v_patch: torch.Tensor,
                    *, cls_only: bool = False, mlp: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frozen CLIP block for the CLS token (N, 1, D) and the prompt tokens (1 or N, P, D); the patch
    tokens' keys/values are given. Prompts shared by every image (shape (1, P, D)) are projected once.
    ``cls_only`` skips the prompts' own outputs (they are still attended to); ``mlp=False`` stops after
    the attention sublayer. Returns the new (cls, prompts)."""
    attn = layer.self_attn
    n = cls.shape[0]
    h_cls, h_prompt = layer.layer_norm1(cls), layer.layer_norm1(prompts)
    k_own = torch.cat([split_heads(attn.k_proj(h_cls), attn),
                       split_heads(attn.k_proj(h_prompt), attn).expand(n, -1, -1, -1)], 2)
    v_own = torch.cat([split_heads(attn.v_proj(h_cls), attn),
                       split_heads(attn.v_proj(h_prompt), attn).expand(n, -1, -1, -1)], 2)
    if cls_only:
        x, h = cls, h_cls
    else:
        x = torch.cat([cls, prompts.expand(n, -1, -1)], dim=1)
        h = torch.cat([h_cls, h_prompt.expand(n, -1, -1)], dim=1)
    q = split_heads(attn.q_proj(h), attn) * attn.scale
    scores = torch.cat([q @ k_patch.transpose(-1, -2), q @ k_own.transpose(-1, -2)], dim=-1)
    weights = scores.softmax(dim=-1)
    n_patch = k_patch.shape[2]
    out = weights[..., :n_patch] @ v_patch + weights[..., n_patch:] @ v_own
    t = out.shape[2]
    x = x + attn.out_proj(out.transpose(1, 2).reshape(n, t, -1))
    if mlp:
        x = x + layer.mlp(layer.layer_norm2(x))
    return x[:, :1], (None if cls_only else x[:, 1:])
