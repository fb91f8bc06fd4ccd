"""What decides each enrolled source: one :class:`DecisionRecord` per source, the one answer occ gives to
"what decides source S". Every surface reads it: ``occ sources`` (table and ``--json``), ``sources show``,
``sources set-threshold`` (read back), ``verify``/``attribute`` (the threshold of each row, through
:class:`occ.attribution.Attributor`), ``occ eval``, ``occ serve`` and ``occ export``.

How a source decides an image:

* an ``lda`` source (the default kind) is decided by the registry's **joint model**
  (:mod:`occ.openset`, :class:`occ.joint.JointModel`): its threshold is the joint model's calibration for
  it, on its raw score (its log-odds lead over the best other class). It is named for an image when
  (1) that score reaches its threshold, (2) no other source scores higher, and (3) the image lies within
  its radius (no farther from its centre than 99 % of its own held-out images). The calibration stored
  in the source's own ``verifier.json`` (from its own fit) decides nothing;
* a source of another kind (prompt tokens, probe) is decided by its **own** verifier's calibration: it
  accepts where (1) holds.

An image whose score alone reaches a source's threshold but that the source does not accept has a
reason (:func:`reason`): ``nearer to OTHER`` (2 fails) or ``outside SOURCE's range`` (3 fails).

:func:`record` is the rule, :func:`for_registry` the records of a registry without a backbone (the
stored joint model, when it matches the sources), and the attributor builds its own from the joint model
it decides with (stored, or fitted in memory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from occ.calibration import Calibration
from occ.errors import OccError, RegistryError
from occ.openset import decided_jointly, enrolled_on, fresh_stored

# A source is *weak* when it accepts less than this share of its own held-out images at its threshold
# (the held-out TPR of the calibration that decides it). Below one half it rejects more of its own images
# than it accepts: for a genuine image of the source "unknown" is then the likelier answer, so neither its
# accepts nor its rejects say much. A healthy source sits near its --tpr target (0.9 by default) and only
# falls this far when the --far rule (or, for lda, the joint model's zero-margin floor and spread check)
# had to lift the threshold far above it, i.e. when the negatives or the other sources look like it.
# Held-out noise does not reach it: a source that truly accepts 90 % of its images shows below 0.5 on 10
# held-out images with probability 0.00015 (binomial), on 5 with probability 0.009. A --tpr target below
# 0.5 makes a source weak by choice, and it is flagged as such.
WEAK_TPR = 0.5

JOINT = "joint"  # decided by the registry's joint model
OWN = "own"  # decided by the source's own verifier


@dataclass(frozen=True)
class DecisionRecord:
    """What decides one source. ``calibration`` is None when it cannot be known here: an lda source whose
    registry's stored joint model does not match its sources (an interrupted change; ``occ refit``)."""

    name: str
    kind: str
    decided_by: str  # JOINT or OWN
    calibration: Calibration | None
    radius: float | None = None  # the joint model's radius (squared whitened distance); None for OWN
    joint_version: str | None = None  # the joint model's version (a digest of what it was fitted on)

    @property
    def known(self) -> bool:
        return self.calibration is not None

    @property
    def threshold(self) -> float | None:
        """On the 0..1 (calibrated) scale of the scores."""
        return None if self.calibration is None else self.calibration.calibrated_threshold

    @property
    def threshold_raw(self) -> float | None:
        """On the raw scale: a score alone passes when its raw score is at least this."""
        return None if self.calibration is None else self.calibration.threshold

    @property
    def heldout_tpr(self) -> float | None:
        return None if self.calibration is None else self.calibration.tpr

    @property
    def heldout_far(self) -> float | None:
        return None if self.calibration is None else self.calibration.achieved_far

    @property
    def weak(self) -> bool | None:
        """Whether the source accepts less than :data:`WEAK_TPR` of its held-out images."""
        return None if self.calibration is None else is_weak(self.calibration)

    def describe(self) -> str:
        """Which model decides the source, in words."""
        if self.decided_by == OWN:
            return "its own verifier"
        if self.joint_version is None:
            return "the joint model (not stored for these sources: run `occ refit`)"
        return f"joint model {self.joint_version}"

    def to_dict(self) -> dict:
        """The record as JSON (every surface prints this form): figures rounded to 6 decimals, null where
        unknown or not finite."""
        cal = self.calibration
        return {"name": self.name, "kind": self.kind, "decided_by": self.decided_by,
                "joint_version": self.joint_version, "threshold": _round(self.threshold),
                "threshold_raw": _round(self.threshold_raw), "heldout_tpr": _round(self.heldout_tpr),
                "heldout_far": _round(self.heldout_far), "far": None if cal is None else cal.far,
                "target_tpr": None if cal is None else cal.target_tpr, "radius": _round(self.radius),
                "weak": self.weak}


def is_weak(cal: Calibration) -> bool:
    """Whether the source ``cal`` decides accepts less than :data:`WEAK_TPR` of its held-out images."""
    return cal.tpr < WEAK_TPR


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def record(name: str, kind: str, own: Calibration | None, joint=None) -> DecisionRecord:
    """The rule: a source the joint model ``joint`` was fitted on is decided by it (its calibration and
    radius for the source); any other, by its own calibration ``own``."""
    if joint is not None and name in joint.calibrations_:
        return DecisionRecord(name, kind, JOINT, joint.calibrations_[name], float(joint.radii_[name]),
                              getattr(joint, "version_", None))
    return DecisionRecord(name, kind, OWN, own)


def for_registry(registry, names: Sequence[str] | None = None) -> dict[str, DecisionRecord | OccError]:
    """The record of every source of ``registry`` (of ``names``), or the error that makes it unusable,
    read without a backbone: an lda source from the stored joint model of its backbone when that model
    matches the registry's sources (:func:`occ.openset.fresh_stored`), else unknown (see
    :class:`DecisionRecord`)."""
    models: dict = {}
    out: dict[str, DecisionRecord | OccError] = {}
    for name in registry.names() if names is None else names:
        try:
            meta = registry.info(name).meta
            kind = str(meta.get("kind", "?"))
            if not decided_jointly(meta):
                out[name] = record(name, kind, _own(name, meta))
                continue
            fingerprint = enrolled_on(meta) or ""
            if fingerprint not in models:
                models[fingerprint] = fresh_stored(registry, fingerprint)
            model = models[fingerprint]
            out[name] = record(name, kind, None, model) if model is not None else DecisionRecord(name, kind, JOINT,
                                                                                                    None)
        except OccError as exc:
            out[name] = exc
    return out


def for_source(registry, name: str) -> DecisionRecord:
    """The record of one source (:func:`for_registry`); raises the error that makes it unusable."""
    found = for_registry(registry, [name])[name]
    if isinstance(found, OccError):
        raise found
    return found


def _own(name: str, meta: dict) -> Calibration:
    try:
        return Calibration.from_dict(meta["calibration"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"source '{name}': its calibration cannot be read ({exc})") from None


def reason(name: str, reaches: bool, accepted: bool, best: str | None, within: bool) -> str | None:
    """Why source ``name`` does not accept an image whose score alone ``reaches`` its threshold: another
    source, ``best``, scored higher, or the image lies beyond ``name``'s radius (not ``within``). None
    when it accepts, or when the score does not reach the threshold (a plain rejection)."""
    if accepted or not reaches:
        return None
    if best is not None and best != name:
        return f"nearer to {best}"
    if not within:
        return f"outside {name}'s range"
    return None
