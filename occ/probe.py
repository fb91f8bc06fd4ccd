"""USIA-style probe verifier: a regularised logistic probe on the CLS token of one intermediate block.

Cioni et al. (USIA, ECCV-W 2024) found that the CLS token of intermediate blocks of a frozen CLIP ViT
carries more origin signal than the final embedding, and attribute with L2 logistic regression on it.
Here the block is picked by cross-validation over the training set (shots + non-target images), the
features are standardised with the training set's statistics, and the probe is a class-balanced L2
logistic regression. Nothing is learned inside the tower, so per-source work is one dot product.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from occ.backbones.base import Backbone
from occ.heads import Head, StepProgress, TrunkBatch
from occ.metrics import roc_auc

if TYPE_CHECKING:
    from occ.prompts import PromptTemplate
    from occ.training import TrainSettings

CV_FOLDS = 3
C = 1.0


def fit_balanced_logistic(x: np.ndarray, y: np.ndarray):
    """Class-balanced L2 logistic regression (C = 1): the probe, and the visual prompts' starting head."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(x, y)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sigma = x.mean(0), x.std(0) + 1e-6
    return (x - mu) / sigma, mu, sigma


def pick_block(cls: np.ndarray, y: np.ndarray, blocks, seed: int) -> int:
    """The block whose CLS token gives the best cross-validated AUC on the training set."""
    from sklearn.model_selection import StratifiedKFold

    k = int(max(2, min(CV_FOLDS, y.sum(), (1 - y).sum())))
    splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(cls[:, 0], y))
    best, best_auc = blocks[0], -1.0
    for block in blocks:
        scores = np.zeros(len(y))
        for train, test in splits:
            x, mu, sigma = _standardise(cls[train, block])
            scores[test] = fit_balanced_logistic(x, y[train]).decision_function((cls[test, block] - mu) / sigma)
        auc = roc_auc(scores[y == 1], scores[y == 0])
        if auc > best_auc:
            best, best_auc = block, auc
    return int(best)


class ProbeHead(Head):
    """Logistic probe on the standardised CLS token of one block; logits [non-target, target].

    Fitted in closed form (no training steps): the training settings other than the seed do not apply."""

    kind = "probe"
    method = "probe"

    def __init__(self, num_layers: int, hidden_size: int):
        super().__init__()
        self.num_layers = num_layers
        self.register_buffer("block", torch.tensor(num_layers // 2))
        self.register_buffer("mu", torch.zeros(hidden_size))
        self.register_buffer("sigma", torch.ones(hidden_size))
        self.register_buffer("weight", torch.zeros(hidden_size))
        self.register_buffer("bias", torch.zeros(()))

    @classmethod
    def create(cls, backbone: Backbone, template: PromptTemplate | None, generator: torch.Generator) -> ProbeHead:
        return cls(backbone.num_layers, backbone.hidden_size)

    def inputs(self, batch: TrunkBatch) -> list[torch.Tensor]:
        return [batch.trunk.cls]

    def logits(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self(inputs[0])

    @torch.no_grad()
    def fit(self, pos: TrunkBatch, neg: TrunkBatch, settings: TrainSettings, *,
            neg_pixels: torch.Tensor | None = None, progress: StepProgress | None = None) -> None:
        """Pick the block by cross-validated AUC on the CLS tokens of every hidden state, then fit the probe."""
        pos_cls, neg_cls = self.inputs(pos)[0], self.inputs(neg)[0]
        cls = torch.cat([pos_cls, neg_cls]).double().numpy()
        y = np.r_[np.ones(len(pos_cls)), np.zeros(len(neg_cls))]
        block = pick_block(cls, y, list(range(1, self.num_layers)), settings.seed)
        x, mu, sigma = _standardise(cls[:, block])
        model = fit_balanced_logistic(x, y)
        self.block.fill_(block)
        self.mu.copy_(torch.from_numpy(mu))
        self.sigma.copy_(torch.from_numpy(sigma))
        self.weight.copy_(torch.from_numpy(model.coef_[0]))
        self.bias.fill_(float(model.intercept_[0]))
        self.eval()
        if progress:
            progress(1, 1)

    def describe(self) -> str:
        return f"logistic probe on the CLS token of block {int(self.block)}"

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        x = (cls[:, int(self.block)].float() - self.mu) / self.sigma
        z = x @ self.weight + self.bias
        return torch.stack([-z / 2, z / 2], dim=-1)
