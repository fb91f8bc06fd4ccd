"""The ``lda`` verifier kind: a shared-covariance discriminant on multi-depth CLS evidence.

One source on its own is the two-class case of :class:`occ.joint.JointModel` (the source against its
non-target images): evidence vectors (:mod:`occ.evidence`), a projection on their principal
directions, a Ledoit-Wolf within-class covariance, and the discriminant margin as the raw score. Fitted
in closed form, so the training settings other than the seed do not apply. In a registry, attribution
and verification use the registry-wide joint model over every source (:mod:`occ.openset`); this head
is what a verifier made outside a registry scores with, and what ``occ sources show`` reports.
"""

from __future__ import annotations

import numpy as np
import torch

from occ.backbones.base import Backbone
from occ.evidence import default_blocks, evidence
from occ.heads import Head, StepProgress, TrunkBatch
from occ.joint import DEFAULT_DIMS, ClassRows, fit_geometry


class LdaHead(Head):
    kind = "lda"
    method = "lda"
    stores_evidence = True

    def __init__(self, blocks: tuple[int, ...], hidden_size: int, dims: int = DEFAULT_DIMS):
        super().__init__()
        feature_dim = len(blocks) * hidden_size
        self.register_buffer("blocks", torch.tensor(blocks))
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("weight", torch.zeros(feature_dim))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("dims", torch.tensor(dims))

    @classmethod
    def create(cls, backbone: Backbone, template, generator: torch.Generator) -> LdaHead:
        return cls(default_blocks(backbone.num_layers), backbone.hidden_size)

    def inputs(self, batch: TrunkBatch) -> list[torch.Tensor]:
        return [torch.from_numpy(evidence(batch.trunk.cls_array, self.blocks.tolist()))]

    def logits(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        z = (inputs[0].float() - self.mean) @ self.weight + self.bias
        return torch.stack([-z / 2, z / 2], dim=-1)

    @torch.no_grad()
    def fit(self, pos: TrunkBatch, neg: TrunkBatch, settings, *, neg_pixels=None,
            progress: StepProgress | None = None) -> None:
        xp, xn = self.inputs(pos)[0].numpy(), self.inputs(neg)[0].numpy()
        g = fit_geometry([ClassRows(xp, np.arange(len(xp))), ClassRows(xn, np.arange(len(xn)))],
                         int(self.dims), settings.seed)
        # margin = y.(c_s - c_0) - (|c_s|^2 - |c_0|^2)/2 with y = (x - mean) @ proj: one linear map
        cs, c0 = g.centres[0], g.centres[1]
        self.mean.copy_(torch.from_numpy(g.mean))
        self.weight.copy_(torch.from_numpy(g.proj @ (cs - c0)))
        self.bias.fill_(float(-0.5 * ((cs * cs).sum() - (c0 * c0).sum())))
        self.eval()
        if progress:
            progress(1, 1)

    def describe(self) -> str:
        b = self.blocks.tolist()
        return (f"shared-covariance discriminant on the CLS tokens of blocks {b[0]}-{b[-1]}, "
                f"{int(self.dims)} principal directions")
