"""The ML core: every verifier kind through the common check, calibration, the training loop, the
configuration, attribution and enrollment, on the tiny random CLIP (conftest) and small image families."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from occ.calibration import Calibration
from occ.config import KINDS, VerifierConfig
from occ.errors import UsageError
from occ.heads import TrunkBatch
from occ.testing import tiny_clip
from occ.testing.checks import check_verifier_kind
from occ.training import TrainSettings, _schedule, objective, train
from occ.verifier import Verifier

FAST = TrainSettings(steps=12, batch_size=8)


def trunk_of(backbone, make, seeds, blocks=()):
    return backbone.trunk(backbone.preprocess([make(s) for s in seeds]), blocks)


@pytest.fixture(scope="module")
def families(tiny_backbone):
    """Warm noise (target) and cool gradients (other): train and held-out trunks with every block's kv."""
    blocks = range(tiny_backbone.num_layers)
    return {"pos": trunk_of(tiny_backbone, tiny_clip.noise_image, range(10), blocks),
            "neg": trunk_of(tiny_backbone, tiny_clip.gradient_image, range(10), blocks),
            "held_pos": trunk_of(tiny_backbone, tiny_clip.noise_image, range(100, 106), blocks),
            "held_neg": trunk_of(tiny_backbone, tiny_clip.gradient_image, range(100, 106), blocks)}


# -------------------------------------------------------------------------------------------------- kinds


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_passes_the_common_check(kind, tiny_backbone, other_backbone, families) -> None:
    config = VerifierConfig(kind=kind, settings=FAST if KINDS[kind].trains else TrainSettings())
    check_verifier_kind(config, tiny_backbone, families["pos"], families["neg"], families["held_pos"],
                        families["held_neg"], other_backbone)


def test_the_common_check_catches_a_kind_that_breaks_its_promise(tiny_backbone, families, monkeypatch) -> None:
    # A head whose saved state misses a tensor reloads with other scores: the check must say so.
    from occ.probe import ProbeHead

    real = ProbeHead.saved_tensors
    monkeypatch.setattr(ProbeHead, "saved_tensors", lambda self: {**real(self), "bias": torch.tensor(5.0)})
    with pytest.raises(AssertionError, match="probe"):
        check_verifier_kind(VerifierConfig(kind="probe"), tiny_backbone, families["pos"], families["neg"],
                            families["held_pos"], families["held_neg"])


# -------------------------------------------------------------------------------------------------- config


def test_config_from_options_maps_each_option_to_one_field(tiny_backbone, tiny_vision_backbone) -> None:
    config = VerifierConfig.from_options(method="prompt", backbone=tiny_backbone, loss="cvar-auc", sam=True,
                                         steps=7, seed=3, adversarial="feature", far=0.1, target_tpr=0.8)
    assert config.kind == "text" and config.template.name == "occ-clip"
    s = config.settings
    assert (s.loss, s.sam, s.steps, s.seed, s.adversarial) == ("cvar-auc", True, 7, 3, "feature")
    assert (config.far, config.target_tpr) == (0.1, 0.8)
    assert VerifierConfig.from_options(method="prompt", backbone=tiny_vision_backbone).kind == "visual"
    assert VerifierConfig.from_options(backbone=tiny_vision_backbone).kind == "lda"  # the default method
    assert VerifierConfig.from_options(method="prompt", template="visual-late", backbone=tiny_backbone).kind == "visual"
    assert VerifierConfig.from_options(method="probe").kind == "probe"
    called = []
    VerifierConfig.from_options(method="prompt", kind="visual", backbone=lambda: called.append(1))
    assert called == []  # the backbone is only loaded when the default kind depends on it


P = {"method": "prompt"}


@pytest.mark.parametrize("options", [
    {"method": "lora"}, {**P, "kind": "probe"}, {**P, "kind": "visual", "loss": "hinge"},
    {**P, "kind": "visual", "adversarial": "both"}, {**P, "kind": "visual", "bogus": 1},
    {"method": "probe", "sam": True}, {"method": "probe", "template": "occ-clip"},
    {**P, "kind": "text", "template": "visual-mid"}, {**P, "kind": "visual", "far": 0.0},
    # the default method (lda) takes no template, prompt kind or training steps; views only for lda
    {"template": "visual-late"}, {"kind": "visual"}, {"steps": 5}, {"views": -1}, {"method": "probe", "views": 1}])
def test_config_refuses_what_it_cannot_apply(options) -> None:
    with pytest.raises(UsageError):
        VerifierConfig.from_options(**options)


def test_config_round_trips_through_its_stored_form() -> None:
    config = VerifierConfig(kind="visual", template="visual-mid", settings=TrainSettings(seed=4), far=0.2,
                            target_tpr=0.7)
    assert VerifierConfig.from_dict(config.to_dict(), {"far": 0.2, "target_tpr": 0.7}) == config


# -------------------------------------------------------------------------------------------------- calibration


def test_threshold_obeys_the_stricter_of_both_rules() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(2, 1, 200), rng.normal(0, 1, 400)
    for far, tpr in ((0.05, 0.9), (0.3, 0.5), (0.01, 0.99)):
        cal = Calibration.fit(pos, neg, far, tpr)
        assert cal.achieved_far <= far + 1e-12 and cal.tpr <= tpr + 1e-12
        assert np.mean(neg >= cal.threshold) == pytest.approx(cal.achieved_far)
        assert np.mean(pos >= cal.threshold) == pytest.approx(cal.tpr)
    # the TPR rule binds when the non-target images are easy, the FAR rule when they are hard
    easy = Calibration.fit(pos, neg - 10, 0.05, 0.9)
    assert easy.tpr == pytest.approx(0.9)
    hard = Calibration.fit(pos, neg + 2, 0.05, 0.9)
    assert hard.achieved_far <= 0.05 and hard.tpr < 0.9


def test_calibrated_scores_are_monotone_probabilities_and_thresholds_move_with_far() -> None:
    rng = np.random.default_rng(1)
    cal = Calibration.fit(rng.normal(1, 1, 50), rng.normal(-1, 1, 80))
    raw = np.linspace(-6, 6, 101)
    p = cal.probability(raw)
    assert ((p >= 0) & (p <= 1)).all() and (np.diff(p) > 0).all()
    assert np.array_equal(cal.accept(raw), p >= cal.calibrated_threshold - 1e-12)
    looser = cal.with_far(0.5, 0.99)
    assert looser.threshold <= cal.threshold and np.array_equal(looser.pos_scores, cal.pos_scores)
    assert Calibration.from_dict(looser.to_dict()) == looser


def test_an_infinite_threshold_survives_json() -> None:
    cal = Calibration.fit([1.0, 2.0], [5.0, 6.0], far=0.01, target_tpr=0.5)  # targets below every non-target
    assert cal.threshold > 6.0 and cal.achieved_far == 0.0 and cal.tpr == 0.0
    stored = cal.to_dict()
    if math.isinf(cal.threshold):
        assert stored["threshold"] == "inf"
    assert Calibration.from_dict(stored).threshold == cal.threshold
    inf = Calibration(cal.pos_scores, cal.neg_scores, 0.01, 0.5, math.inf, cal.slope, cal.intercept)
    assert inf.to_dict()["threshold"] == "inf" and Calibration.from_dict(inf.to_dict()).threshold == math.inf
    assert inf.calibrated_threshold == 1.0 and not inf.accept([1e300]).any()


# -------------------------------------------------------------------------------------------------- training


def test_objectives_known_values() -> None:
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.0, 0.0], [3.0, 0.0]])
    y = torch.tensor([1, 0, 1, 0])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert objective(logits, y, "ce").item() == pytest.approx(ce.item())
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    z = logits[:, 1] - logits[:, 0]
    auc = torch.relu(1.0 - (z[y == 1].unsqueeze(1) - z[y == 0].unsqueeze(0))).pow(2).mean()
    assert objective(logits, y, "cvar-auc").item() == pytest.approx(0.5 * per.max().item() + 0.5 * auc.item())


def test_schedule_warms_up_then_decays_to_zero() -> None:
    values = [_schedule(s, 60, 10) for s in range(60)]
    assert values[0] < values[5] < values[9] <= 1.0
    assert values[10] == pytest.approx(1.0) and values[-1] < 0.01
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


@pytest.mark.parametrize("changes", [{}, {"loss": "cvar-auc"}, {"sam": True}, {"adversarial": "feature"}])
def test_training_lowers_the_loss_and_each_setting_changes_the_result(tiny_backbone, families, changes) -> None:
    # Text prompts start from random context vectors, so the loss has somewhere to go.
    config = VerifierConfig(kind="text")
    results = {}
    for name, settings in (("base", TrainSettings(steps=30, batch_size=8)),
                           ("changed", TrainSettings(steps=30, batch_size=8, **changes))):
        head = config.head_class.create(tiny_backbone, config.template, torch.Generator().manual_seed(0))
        pos, neg = TrunkBatch(families["pos"], tiny_backbone), TrunkBatch(families["neg"], tiny_backbone)
        losses = train(head, head.inputs(pos), head.inputs(neg), settings)
        results[name] = (losses, head.saved_tensors()["ctx"])
    losses = results["changed"][0]
    if "adversarial" not in changes:  # adversarial negatives move with the head: no monotone loss to expect
        assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    if changes:
        assert not torch.equal(results["base"][1], results["changed"][1]), f"{changes} changed nothing"


# -------------------------------------------------------------------------------------------------- attribution


def test_attribution_names_the_best_accepting_source_or_unknown(tiny_backbone, families) -> None:
    from occ.attribution import Attributor

    pos, neg = families["pos"], families["neg"]
    config = VerifierConfig(kind="probe")
    verifiers = {"noise": Verifier(config).fit(tiny_backbone, pos, neg),
                 "gradient": Verifier(config).fit(tiny_backbone, neg, pos)}
    attributor = Attributor(verifiers, tiny_backbone)
    held = families["held_pos"].select(range(3))
    decisions = attributor.decide(held, ["x", "y", "z"])
    for d in decisions:
        want = sorted((n for n in d.scores if d.scores[n] >= d.thresholds[n] - 1e-12), key=lambda n: -d.scores[n])
        assert d.accepted == want and d.source == (want[0] if want else None)
        assert set(d.raw) == {"noise", "gradient"}
    assert [d.source for d in decisions] == ["noise"] * 3
    # nothing accepts: raise every threshold out of reach
    for v in verifiers.values():
        v.calibration_ = dataclasses.replace(v.calibration_, threshold=math.inf)
    assert all(d.source is None and d.accepted == [] for d in attributor.decide(held, ["x", "y", "z"]))


# -------------------------------------------------------------------------------------------------- enrollment


def test_enroll_stores_what_it_fitted_and_uses_other_sources_as_negatives(tiny_backbone, tmp_path) -> None:
    from occ.enrollment import enroll
    from occ.registry import Registry

    def family(folder, make, seeds):
        folder.mkdir(parents=True)
        for s in seeds:
            make(s).save(folder / f"{s}.png")
        return folder

    noise = family(tmp_path / "noise", tiny_clip.noise_image, range(6))
    grad = family(tmp_path / "grad", tiny_clip.gradient_image, range(6))
    reg = Registry(tmp_path / "reg")
    config = VerifierConfig(kind="visual", settings=TrainSettings(steps=5, batch_size=8, seed=2))
    first = enroll(reg, "noise", [noise], backbone=tiny_backbone, verifier=Verifier(config), negatives=[grad],
                   use_bank=False, backbone_spec="tiny")
    assert first.negatives == {"--negatives": 6} and first.n_target == 6
    tensors, meta = reg.load("noise")
    assert meta["settings"]["seed"] == 2 and meta["backbone"]["spec"] == "tiny" and len(meta["training_images"]) == 6
    assert first.verifier.config == config and first.verifier.provenance["name"] == "noise"
    assert all(torch.equal(tensors[k], v) for k, v in first.verifier.to_saved()[0].items())
    second = enroll(reg, "grad", [grad], backbone=tiny_backbone, verifier=Verifier(config), use_bank=False)
    assert second.negatives == {"source noise": 6}  # the first source's images, from the feature cache
    with pytest.raises(UsageError, match="already exists"):
        enroll(reg, "grad", [grad], backbone=tiny_backbone, verifier=Verifier(config), use_bank=False)
