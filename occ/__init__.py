"""occ: which generator made this image? Few-shot one-class verifiers on a frozen CLIP (OCC-CLIP).

The public API is imported lazily so that ``import occ`` (and ``occ --help``) stays fast::

    from occ import Registry, Attributor, Verifier, VerifierConfig, enroll, load_backbone
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Registry": "occ.registry",
    "Attributor": "occ.attribution",
    "Verifier": "occ.verifier",
    "VerifierConfig": "occ.config",
    "TrainSettings": "occ.training",
    "FeatureExtractor": "occ.features",
    "enroll": "occ.enrollment",
    "load_backbone": "occ.backbones",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'occ' has no attribute {name!r}")
