"""The results of reading provenance (:mod:`occ.provenance`): the trust levels, :class:`Evidence` (one
piece of evidence) and :class:`Provenance` (all of one file's), and the bounded-text helpers every reader
(:mod:`~occ.provenance.metadata`, :mod:`~occ.provenance.credentials`) shares."""

from __future__ import annotations

from dataclasses import dataclass, field

SIGNED_VALID = "signed-valid"
SIGNED_INVALID = "signed-invalid"
UNSIGNED = "unsigned-claim"
UNREADABLE = "unreadable"
NONE = "none"
LEVEL_ORDER = (SIGNED_VALID, SIGNED_INVALID, UNSIGNED, UNREADABLE)

MAX_VALUE_CHARS = 1000  # one reported value
MAX_PROBLEMS = 20  # failure codes reported per manifest, unreadable chunks per file
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DIGITAL_SOURCE_TYPES: dict[str, str] = {
    # IPTC NewsCodes "digitalsourcetype" (cv.iptc.org/newscodes/digitalsourcetype/): term -> kind
    "digitalCapture": "captured",
    "computationalCapture": "captured",
    "negativeFilm": "captured",
    "positiveFilm": "captured",
    "print": "captured",
    "screenCapture": "captured",
    "compositeCapture": "captured",
    "humanEdits": "captured",
    "minorHumanEdits": "captured",  # retired term
    "trainedAlgorithmicMedia": "generated",
    "algorithmicMedia": "generated",
    "compositeWithTrainedAlgorithmicMedia": "ai-edited",
    "compositeSynthetic": "ai-edited",
    "algorithmicallyEnhanced": "ai-edited",
    "digitalCreation": "made-by-software",
    "digitalArt": "made-by-software",  # retired term
    "softwareImage": "made-by-software",  # retired term
    "dataDrivenMedia": "made-by-software",
    "virtualRecording": "made-by-software",
    "composite": "composite",
}
"""Each IPTC DigitalSourceType term and the kind of origin it claims: ``captured`` (a camera or
scanner, perhaps edited by hand), ``generated`` (an algorithm, a trained model for
``trainedAlgorithmicMedia``), ``ai-edited`` (captured or made, then changed by an algorithm),
``made-by-software`` (drawn, rendered or computed by people with software) or ``composite``."""

# --------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Evidence:
    """One piece of provenance evidence found in a file.

    ``claims`` holds what it says, as short strings under fixed keys: ``generator`` (the generative
    system named), ``software`` (a tool that wrote or edited the file), ``model``, ``model_hash``,
    ``action``, ``digital_source_type`` and its ``source_kind`` (see :data:`DIGITAL_SOURCE_TYPES`),
    ``when``, ``prompt``, ``sampler``, ``seed``, ``steps``, ``size``, ``camera``...
    """

    source: str  # "c2pa", "xmp", "png-text", "exif"
    trust: str  # SIGNED_VALID, SIGNED_INVALID, UNSIGNED or UNREADABLE
    claims: dict[str, str] = field(default_factory=dict)
    signer: str | None = None  # C2PA: the signing certificate's common name (organisation)
    trusted: bool | None = None  # C2PA: chains to the user's trust list; None when no list was given
    problems: tuple[str, ...] = ()  # what failed (signed-invalid), why it is unreadable, what was cut

    def to_dict(self) -> dict:
        out = {"source": self.source, "trust": self.trust, "claims": dict(self.claims)}
        if self.source == "c2pa" and self.trust != UNREADABLE:
            out["signer"] = self.signer
            out["trusted"] = self.trusted
        if self.problems:
            out["problems"] = list(self.problems)
        return out

    def describe(self) -> str:
        """One line for people: trust, the main claims, the signer or what failed."""
        keys = ("generator", "model", "software", "action", "digital_source_type", "camera", "when")
        said = "; ".join(f"{k.replace('_', ' ')} {short(self.claims[k])}" for k in keys if k in self.claims)
        parts = [f"{self.source} {self.trust}"] + ([said] if said else [])
        if self.source == "c2pa" and self.trust != UNREADABLE:
            trust = {True: "on the trust list", False: "not on the trust list",
                     None: "not checked against a trust list"}[self.trusted]
            parts.append(f"signer {self.signer or '?'} ({trust})")
        if self.problems:
            parts.append(", ".join(self.problems[:3]) + (" ..." if len(self.problems) > 3 else ""))
        return ": ".join(parts[:2]) + "".join(f"; {p}" for p in parts[2:])


@dataclass(frozen=True)
class Provenance:
    """All the evidence found in one file."""

    path: str
    items: tuple[Evidence, ...] = ()

    @property
    def level(self) -> str:
        """The strongest kind of evidence present: signed-valid > signed-invalid > unsigned-claim >
        unreadable > none."""
        found = {item.trust for item in self.items}
        return next((level for level in LEVEL_ORDER if level in found), NONE)

    def to_dict(self) -> dict:
        return {"level": self.level, "items": [item.to_dict() for item in self.items]}

    def summary(self) -> str:
        """A few words for a table cell: the level and the most telling name."""
        if not self.items:
            return NONE
        best = next(item for item in sorted(self.items, key=lambda i: LEVEL_ORDER.index(i.trust)))
        name = next((best.claims[k] for k in ("generator", "model", "software", "digital_source_type", "camera")
                     if k in best.claims), None)
        return f"{best.source} {best.trust}" + (f": {short(name, 40)}" if name else "")


# --------------------------------------------------------------------------------------------------------
# Small helpers


def clean(value, limit: int = MAX_VALUE_CHARS) -> str:
    """A value as one printable line of at most ``limit`` characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 2])
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def put(claims: dict, key: str, value) -> None:
    if value is None or key in claims:
        return
    text = clean(value)
    if text:
        claims[key] = text


def source_type(claims: dict, value) -> None:
    """Record an IPTC DigitalSourceType (a URI or a bare term) and the kind of origin it claims."""
    if value is None:
        return
    term = clean(value).rstrip("/").rsplit("/", 1)[-1]
    if not term:
        return
    put(claims, "digital_source_type", term)
    put(claims, "source_kind", DIGITAL_SOURCE_TYPES.get(term, "unknown"))


class Unreadable(Exception):
    """Metadata that cannot be parsed (the message says why)."""

