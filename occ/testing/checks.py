"""The check every verifier kind must pass, in the spirit of scikit-learn's ``check_estimator``.

:func:`check_verifier_kind` fits a verifier of one kind (:data:`occ.config.KINDS`) on two separable
families of trunk features and checks what :class:`occ.verifier.Verifier` promises for any kind: the
head is built from the config, the backbone is untouched, held-out scores separate the families, the
same data and seed give the same fitted tensors, the fitted state survives ``save(folder)`` /
``load(folder, backbone)`` with bit-identical scores, a shared :class:`occ.heads.TrunkBatch` gives the
same scores as a private one, the threshold can be changed without a backbone, and a verifier is
refused on another backbone. A new kind is checked by adding it to the test that calls this.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch

from occ.backbones.base import Backbone, Trunk
from occ.config import KINDS, VerifierConfig
from occ.errors import RegistryError
from occ.heads import TrunkBatch
from occ.verifier import Verifier


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def check_verifier_kind(config: VerifierConfig, backbone: Backbone, pos: Trunk, neg: Trunk,
                        held_pos: Trunk, held_neg: Trunk, other_backbone: Backbone | None = None) -> Verifier:
    """Run every check on ``config``'s kind; raises AssertionError naming the first that fails. The trunk
    features must carry the keys/values of ``Verifier(config).kv_blocks(backbone)``. Returns the fitted
    verifier."""
    kind = config.kind
    assert KINDS[kind] is config.head_class, f"{kind}: not the registered class"
    towers = [m for m in (backbone.vision, getattr(backbone, "text", None)) if m is not None]
    before = [_state(m) for m in towers]

    verifier = Verifier(config).fit(backbone, pos, neg)
    assert isinstance(verifier.head_, KINDS[kind]), f"{kind}: fitted head is a {type(verifier.head_).__name__}"
    assert all(all(torch.equal(b[k], m.state_dict()[k]) for k in b) for b, m in zip(before, towers)), \
        f"{kind}: fitting changed the backbone"
    assert set(verifier.kv_blocks(backbone)) <= set(pos.kv), f"{kind}: reads blocks the trunk lacks"
    assert verifier.describe(), f"{kind}: describe() is empty"

    s_pos, s_neg = verifier.decision_function(held_pos), verifier.decision_function(held_neg)
    assert s_pos.shape == (len(held_pos),) and np.isfinite(s_pos).all() and np.isfinite(s_neg).all()
    assert s_pos.mean() > s_neg.mean(), f"{kind}: held-out target scores below non-target ones"
    scores = verifier.score(held_pos)
    assert ((scores >= 0) & (scores <= 1)).all(), f"{kind}: calibrated scores outside [0, 1]"
    assert np.array_equal(verifier.predict(held_pos), verifier.calibration_.accept(s_pos))

    again = Verifier(config).fit(backbone, pos, neg)
    a, b = verifier.to_saved()[0], again.to_saved()[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{kind}: fit is not deterministic"

    shared = TrunkBatch(held_pos, backbone)
    assert np.array_equal(verifier.decision_function(shared), s_pos), f"{kind}: shared batch changes scores"

    verifier.provenance = {"name": "check", "note": [1, 2, 3]}
    with tempfile.TemporaryDirectory() as folder:
        verifier.save(folder)
        loaded = Verifier.load(folder, backbone)
        for trunk, expected in ((held_pos, s_pos), (held_neg, s_neg)):
            assert np.array_equal(loaded.decision_function(trunk), expected), f"{kind}: reload changes scores"
        assert loaded.threshold == verifier.threshold and loaded.config == verifier.config
        assert loaded.provenance == verifier.provenance, f"{kind}: provenance lost"

        bare = Verifier.load(folder, None)  # no backbone: threshold changes only
        bare.set_threshold(far=0.5)
        tensors, meta = bare.to_saved()
        assert all(torch.equal(tensors[k], a[k]) for k in a) and tensors.keys() == a.keys()
        assert meta["calibration"]["far"] == 0.5 and bare.config.far == 0.5
        if other_backbone is not None:
            try:
                Verifier.load(folder, other_backbone)
            except RegistryError as exc:
                assert other_backbone.fingerprint in str(exc)
            else:
                raise AssertionError(f"{kind}: loaded on another backbone")
    return verifier
