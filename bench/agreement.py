"""Do occ's engines agree with the int8 ONNX graph they come from? (issue: foundation)

On real photos (every 4th image of the shipped negative bank, 64 images): cosine between the image
embeddings of (a) the fp32 weights rebuilt from the int8 graph (torch) and (b) occ's default onnxruntime
engine, each against a bare onnxruntime session on the unmodified int8 graph.

    python bench/agreement.py --out bench/results/agreement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from occ.backbones import load_backbone
from occ.backbones.embedded import embedded_dir
from occ.images import load_image
from occ.negatives import bank_paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = bank_paths()[::4][:64]
    fp32, int8 = load_backbone(engine="torch-fp32"), load_backbone(engine="onnx-int8")
    pixels = fp32.preprocess([load_image(p).image for p in paths])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    bare = ort.InferenceSession(str(embedded_dir() / "clip_encoder.int8.onnx"), options,
                                providers=["CPUExecutionProvider"])
    reference = torch.from_numpy(np.concatenate(
        [bare.run(["image_embeds"], {"pixel_values": pixels[i:i + 1].numpy()})[0] for i in range(len(pixels))]))
    with torch.no_grad():
        rebuilt = torch.cat([fp32.trunk(pixels[i:i + 16]).embeds for i in range(0, len(pixels), 16)])
    engine = torch.cat([int8.trunk(pixels[i:i + 1]).embeds for i in range(len(pixels))])
    report = {"images": len(paths),
              "what": "cosine of image embeddings vs a bare onnxruntime session on the int8 graph"}
    for name, emb in (("fp32_rebuild", rebuilt), ("occ_onnx_int8_engine", engine)):
        cos = F.cosine_similarity(emb, reference, dim=-1)
        report[name] = {"median": round(cos.median().item(), 4), "min": round(cos.min().item(), 4)}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
