"""Does a peft LoRA on the prompted blocks help the visual prompt verifiers? (issue: verifiers, item 8)

peft has no visual prompt tuning for image towers (its prompt-tuning methods prepend tokens to a
language model's input embeddings), so occ's visual prompts are its own. Where peft does fit is a
stronger variant: LoRA adapters (``peft.inject_adapter_in_model``) on the frozen blocks that the prompt
tokens and the CLS token pass through. Only the CLS path uses the adapted weights; the patch tokens'
keys/values still come from the shared trunk, so the trunk stays shared across sources.

This script measures that variant against the plain prompts in one run, on the same splits as
``bench/devset.py`` (K shots, normalised view, default bank negatives), with the same training loop
and settings and no cross-validation (AUC only, both arms alike):

    python bench/lora.py --shots 10 --seeds 0 --rank 4 --out bench/results/lora.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from occ.testing import devset as D

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def shallow_clone(module: nn.Module) -> nn.Module:
    """A module tree like ``module`` whose parameters are the *same* tensors (no copy of the weights),
    so peft can wrap its layers without touching the shared backbone's modules."""
    clone = module.__class__.__new__(module.__class__)
    clone.__dict__ = dict(module.__dict__)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: shallow_clone(child) for name, child in module._modules.items()}
    return clone


def lora_head_class():
    from peft import LoraConfig, inject_adapter_in_model

    from occ.prompts import VisualPrompts, _cls_path_block

    class LoraVisualPrompts(VisualPrompts):
        def __init__(self, backbone, template, generator, rank: int):
            super().__init__(backbone, template, generator)
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=TARGET_MODULES)
            self.adapted = nn.ModuleList(
                [inject_adapter_in_model(config, shallow_clone(backbone.block(b))) for b in self.blocks])
            for name, p in self.adapted.named_parameters():
                p.requires_grad_("lora_" in name)

        def readout_features(self, cls_in, kv):
            cls = cls_in.float().unsqueeze(1)
            prompts = self.prompt.unsqueeze(0)
            last = len(self.blocks) - 1
            for i, (block, (k, v)) in enumerate(zip(self.adapted, kv)):
                cls, prompts = _cls_path_block(block, cls, prompts, k, v, cls_only=i == last,
                                               mlp=i < last or self.readout_after == "block")
            return (cls[:, 0] - self.mu) / self.sigma

    return LoraVisualPrompts


def fit_and_score(head, backbone, pos, neg, test, settings):
    """The verifiers' own fit (:meth:`occ.heads.PromptHead.fit`: initialisation + training loop), timed;
    then raw scores through the logits (the adapted blocks), never a shortcut that skips them."""
    from occ.heads import TrunkBatch

    start = time.perf_counter()
    head.fit(TrunkBatch(pos, backbone), TrunkBatch(neg, backbone), settings)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        raw = []
        for i in range(0, len(test), 256):
            batch = TrunkBatch(test.select(list(range(i, min(i + 256, len(test))))), backbone)
            logits = head.logits(head.inputs(batch))
            raw.append((logits[:, 1] - logits[:, 0]).numpy())
    return np.concatenate(raw), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--template", default="visual-mid")
    ap.add_argument("--targets", nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from occ.backbones import load_backbone
    from occ.features import FeatureExtractor
    from occ.metrics import roc_auc
    from occ.negatives import bank_paths
    from occ.prompts import PromptTemplate, VisualPrompts
    from occ.training import TrainSettings

    rows = D.manifest(D.DEVSET)
    targets = args.targets or sorted({r["label"] for r in rows if not r["label"].startswith("real-")
                                      and sum(x["label"] == r["label"] for x in rows) >= D.MIN_IMAGES})
    backbone = load_backbone()
    extractor = FeatureExtractor(backbone)
    template = PromptTemplate.load(args.template)
    blocks = VisualPrompts(backbone, template).blocks
    bank = extractor.load(bank_paths(), blocks).trunk
    features = extractor.load(D.view_paths(rows, D.DEVSET, "normalised"), blocks).trunk
    lora_cls = lora_head_class()
    runs = []
    for target in targets:
        for seed in args.seeds:
            train_idx, test_pos, test_neg = D.split(rows, target, args.shots, seed)
            test = features.select(list(np.concatenate([test_pos, test_neg])))
            settings = TrainSettings(seed=seed, **({"steps": args.steps} if args.steps else {}))
            entry = {"target": target, "seed": seed, "shots": args.shots}
            for arm in ("prompts", "prompts+lora"):
                generator = torch.Generator().manual_seed(seed)
                head = (VisualPrompts(backbone, template, generator) if arm == "prompts"
                        else lora_cls(backbone, template, generator, args.rank))
                raw, seconds = fit_and_score(head, backbone, features.select(list(train_idx)), bank, test, settings)
                trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
                entry[arm] = {"auc": roc_auc(raw[:len(test_pos)], raw[len(test_pos):]),
                              "train_seconds": round(seconds, 2), "trainable_parameters": trainable}
            runs.append(entry)
            print(json.dumps(entry), flush=True)
    summary = {arm: {k: round(float(np.mean([r[arm][k] for r in runs])), 4) for k in ("auc", "train_seconds")}
               for arm in ("prompts", "prompts+lora")}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "template": args.template,
                                        "rank": args.rank, "target_modules": TARGET_MODULES,
                                        "steps": args.steps or TrainSettings().steps, "summary": summary,
                                        "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
