"""How a source decides an image, and why it does not.

* an ``lda`` source (the default kind) is decided by the registry's **joint model**
  (:mod:`occ.openset`, :class:`occ.joint.JointModel`): its threshold is the joint model's calibration for
  it, on its raw score (its log-odds lead over the best other class). It is named for an image when
  (1) that score reaches its threshold, (2) no other source scores higher, and (3) the image lies within
  its radius (no farther from its centre than 99 % of its own held-out images);
* a source of another kind (prompt tokens, probe) is decided by its **own** verifier's calibration: it
  accepts where (1) holds.

An image whose score alone reaches a source's threshold but that the source does not accept has a
reason (:func:`reason`): ``nearer to OTHER`` (2 fails) or ``outside SOURCE's range`` (3 fails).
"""

from __future__ import annotations


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
