"""The training loop for prompt verifiers: balanced batches, seeds, adversarial augmentation of negatives.

Only the prompt tokens (and, for visual prompts, the two class vectors) learn; the backbone is frozen.
Each step draws half a batch of target images and half a batch of non-target images (with
replacement, from a seeded generator), so training time depends on ``steps`` and not on how many
negatives there are.

Adversarial data augmentation (ADA, OCC-CLIP): half of the non-target images of each batch are
replaced by one FGSM step on the cross-entropy, pushing them towards the target side, so the
non-target region widens around the target:

* ``"pixel"``: as in OCC-CLIP, in un-normalised pixel space, ``x' = clamp(x + eps * sign(grad), 0, 1)``
  with the gradient taken through the frozen image tower (torch fp32); the perturbed image's features
  then come from the backbone's trunk. Faithful and slow on a CPU (a backward pass through the tower
  per adversarial image).
* ``"feature"``: the same step applied to the verifier's own inputs (the frozen features it reads),
  ``f' = f + eps * std(f) * sign(grad)``, with ``std`` per input tensor over the batch. No extra pass
  through the tower, so it costs about one more forward/backward of the small head.
* ``"none"`` (default): on the devset (6 targets, K = 5/10/25, 3 seeds) the feature step changed mean
  AUC by -0.003 to -0.001 and only traded TPR for FAR at the threshold, so it is off unless asked for
  (see bench/README.md).
``eps="mixed"`` draws eps per batch from OCC-CLIP's set (0.03, 0.1, 0.5).

Objectives (see :func:`objective`): ``loss="ce"`` (OCC-CLIP's 2-way cross-entropy, default) or
``"cvar-auc"`` (Santosh et al.: CVaR at alpha 0.8 + pairwise AUC loss with margin, mixed 50/50);
``sam=True`` wraps the AdamW step in sharpness-aware minimisation (rho 0.05, as in the SAM paper).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from occ.errors import UsageError

if TYPE_CHECKING:
    from occ.heads import PromptHead

ADVERSARIAL_MODES = ("none", "feature", "pixel")
MIXED_EPS = (0.03, 0.1, 0.5)
LOSSES = ("ce", "cvar-auc")
CVAR_ALPHA = 0.8  # Santosh et al.: CVaR over the worst 20 % of per-image losses
AUC_MARGIN = 1.0
SAM_RHO = 0.05  # the SAM paper's default radius


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 60
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    adversarial: str = "none"
    eps: float | str = 0.05
    loss: str = "ce"
    sam: bool = False
    sam_rho: float = SAM_RHO
    seed: int = 0

    def __post_init__(self):
        if self.adversarial not in ADVERSARIAL_MODES:
            raise UsageError(f"adversarial mode must be one of {ADVERSARIAL_MODES}, got {self.adversarial!r}")
        if self.eps != "mixed" and not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise UsageError(f"eps must be a non-negative number or 'mixed', got {self.eps!r}")
        if self.loss not in LOSSES:
            raise UsageError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sam_rho <= 0:
            raise UsageError(f"SAM radius must be positive, got {self.sam_rho!r}")
        if self.steps < 1 or self.batch_size < 2:
            raise UsageError("steps must be >= 1 and batch size >= 2")

    def to_dict(self) -> dict:
        return asdict(self)


def _rows(inputs: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
    return [t[index] for t in inputs]


def _cat(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.cat([x, y]) for x, y in zip(a, b)]


def _draw_eps(settings: TrainSettings, generator: torch.Generator) -> float:
    if settings.eps == "mixed":
        return MIXED_EPS[int(torch.randint(len(MIXED_EPS), (1,), generator=generator))]
    return float(settings.eps)


def train(
    head: PromptHead,
    pos: list[torch.Tensor],
    neg: list[torch.Tensor],
    settings: TrainSettings,
    *,
    neg_pixels: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Optimise ``head``'s trainable parameters on its inputs ``pos`` and ``neg`` (lists of tensors whose
    first dimension indexes images, see :meth:`occ.heads.Head.inputs`). Returns the loss of every step."""
    if settings.adversarial == "pixel" and neg_pixels is None:
        raise ValueError("pixel-space adversarial augmentation needs the non-target images' pixels")
    generator = torch.Generator().manual_seed(settings.seed)
    params = [p for p in head.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    n_pos, n_neg = pos[0].shape[0], neg[0].shape[0]
    half = settings.batch_size // 2
    # Feature-space FGSM steps are scaled per input coordinate by the non-target set's spread.
    scales = [t.std(dim=0, keepdim=True) if n_neg > 1 else t.abs().mean() for t in neg]
    losses = []
    head.train()
    for step in range(settings.steps):
        lr = settings.lr * _schedule(step, settings.steps, settings.warmup_steps)
        for group in optimiser.param_groups:
            group["lr"] = lr
        pi = torch.randint(n_pos, (half,), generator=generator)
        ni = torch.randint(n_neg, (half,), generator=generator)
        batch_neg = _rows(neg, ni)
        if settings.adversarial != "none":
            n_adv = max(1, half // 2)
            eps = _draw_eps(settings, generator)
            adv_index = torch.arange(n_adv)
            if settings.adversarial == "feature":
                adv = _feature_fgsm(head, _rows(batch_neg, adv_index), eps, scales)
            else:
                adv = _pixel_fgsm(head, neg_pixels[ni[:n_adv]], eps)
            batch_neg = [torch.cat([a, t[n_adv:]]) for a, t in zip(adv, batch_neg)]
        x = _cat(_rows(pos, pi), batch_neg)
        y = torch.cat([torch.ones(half, dtype=torch.long), torch.zeros(half, dtype=torch.long)])
        optimiser.zero_grad(set_to_none=True)
        loss = objective(head.logits(x), y, settings.loss)
        loss.backward()
        if settings.sam:
            _sam_second_pass(head, params, x, y, settings)
        optimiser.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, settings.steps)
    head.eval()
    return losses


def objective(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """The training loss on (N, 2) logits.

    ``"ce"``: 2-way cross-entropy (OCC-CLIP). ``"cvar-auc"`` (Santosh et al.): 0.5 * CVaR at alpha 0.8
    of the per-image cross-entropy (the mean of the worst 20 %) + 0.5 * a pairwise squared-hinge AUC
    loss with margin 1 on the score ``logit(target) - logit(non-target)``.
    """
    per_image = F.cross_entropy(logits, y, reduction="none")
    if loss == "ce":
        return per_image.mean()
    k = max(1, math.ceil((1 - CVAR_ALPHA) * per_image.numel()))
    cvar = per_image.topk(k).values.mean()
    z = logits[:, 1] - logits[:, 0]
    diff = z[y == 1].unsqueeze(1) - z[y == 0].unsqueeze(0)
    auc = F.relu(AUC_MARGIN - diff).pow(2).mean() if diff.numel() else z.sum() * 0
    return 0.5 * cvar + 0.5 * auc


def _sam_second_pass(head: PromptHead, params, x, y, settings: TrainSettings) -> None:
    """Sharpness-aware minimisation (Foret et al., 2021): move the weights to the worst point within
    an L2 ball of radius rho along the current gradient, take the gradient there, move back; the base
    optimiser then steps with that gradient."""
    grads = [p.grad for p in params]
    norm = torch.norm(torch.stack([g.norm() for g in grads if g is not None]))
    scale = settings.sam_rho / (norm + 1e-12)
    moves = []
    with torch.no_grad():
        for p, g in zip(params, grads):
            e = g * scale if g is not None else torch.zeros_like(p)
            p.add_(e)
            moves.append(e)
    for p in params:
        p.grad = None
    objective(head.logits(x), y, settings.loss).backward()
    with torch.no_grad():
        for p, e in zip(params, moves):
            p.sub_(e)


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay (OCC-CLIP warms up, then follows a cosine schedule)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _feature_fgsm(head: PromptHead, inputs: list[torch.Tensor], eps: float,
                  scales: list[torch.Tensor]) -> list[torch.Tensor]:
    """One FGSM step on the non-target class's cross-entropy, in the head's input space."""
    x = [t.detach().clone().requires_grad_(True) for t in inputs]
    target = torch.zeros(x[0].shape[0], dtype=torch.long)
    loss = F.cross_entropy(head.logits(x), target)
    grads = torch.autograd.grad(loss, x)
    return [(t + eps * scale * g.sign()).detach() for t, g, scale in zip(x, grads, scales)]


def _pixel_fgsm(head: PromptHead, pixels: torch.Tensor, eps: float) -> list[torch.Tensor]:
    """OCC-CLIP's ADA: FGSM in [0, 1] pixel space through the frozen tower, then the trunk's features."""
    prep = head.preprocess
    unit = prep.to_unit(pixels).detach().requires_grad_(True)
    target = torch.zeros(pixels.shape[0], dtype=torch.long)
    loss = F.cross_entropy(head.logits(head.pixel_inputs(prep.from_unit(unit))), target)
    (grad,) = torch.autograd.grad(loss, unit)
    perturbed = (unit + eps * grad.sign()).clamp(0, 1).detach()
    return [t.detach() for t in head.trunk_inputs(prep.from_unit(perturbed))]
