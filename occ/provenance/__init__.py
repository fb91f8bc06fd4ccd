"""Provenance evidence beside the pixels: what an image file's metadata says about where it came from,
and how far each piece of it can be trusted.

Four kinds of evidence are read, each into :class:`Evidence` items with a trust level:

* **C2PA** content credentials (the ``provenance`` extra: ``c2pa-python``): a signed manifest whose
  signature and content hashes the library verifies. ``signed-valid`` when they verify (and, when the
  user gives a trust list, the signing certificate chains to it), ``signed-invalid`` otherwise, with
  what failed (``assertion.dataHash.mismatch`` after an edit, ``signingCredential.expired``,
  ``signingCredential.untrusted``...).
* **XMP** packets: IPTC ``Iptc4xmpExt:DigitalSourceType`` (``trainedAlgorithmicMedia``...), the IPTC
  AI-system fields and ``xmp:CreatorTool``.
* **PNG text chunks**: the ``parameters`` chunk AUTOMATIC1111-style web UIs write (prompt, sampler,
  seed, model name and hash), ComfyUI's ``prompt`` / ``workflow`` graphs (JSON), a ``Software`` chunk.
* **EXIF**: ``Software``, camera make and model, dates, and AUTOMATIC1111 parameters in ``UserComment``.

Everything but C2PA is an ``unsigned-claim``: trivially written, forged or stripped. Metadata that
cannot be parsed becomes an ``unreadable`` item saying why; every parser is bounded in the bytes it
reads, the text it keeps and the depth it follows, so hostile metadata costs little time and memory.

Evidence never enters a pixel score or decision: :func:`disagreement` only compares the two and says
when they conflict. The module reads; it never prints.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from occ.errors import ImageError
from occ.images import display_path, is_image_signature, read_image_file
from occ.provenance.base import (
    DIGITAL_SOURCE_TYPES,
    NONE,
    PNG_SIGNATURE,
    SIGNED_INVALID,
    SIGNED_VALID,
    UNREADABLE,
    UNSIGNED,
    Evidence,
    Provenance,
    short,
)
from occ.provenance.credentials import C2paReader, c2pa_available, has_c2pa_marker, load_trust_list, require_c2pa
from occ.provenance.metadata import pillow_metadata, png, png_exif

__all__ = [
    "SIGNED_VALID",
    "SIGNED_INVALID",
    "UNSIGNED",
    "UNREADABLE",
    "NONE",
    "DIGITAL_SOURCE_TYPES",
    "Evidence",
    "Provenance",
    "Inspector",
    "c2pa_available",
    "disagreement",
    "load_trust_list",
]


class Inspector:
    """Reads the provenance evidence of image files. One per batch: it holds the user's trust list
    and the C2PA validation context.

    ``trust_pem``: PEM certificates (see :func:`load_trust_list`) a C2PA signer must chain to for its
    manifest to count as ``signed-valid``; without it a manifest whose signature and hashes verify is
    ``signed-valid`` with ``trusted`` None (its signer's name is then itself only a claim).
    """

    def __init__(self, trust_pem: str | None = None):
        if trust_pem is not None:
            require_c2pa()
        self.trust_pem = trust_pem
        self._c2pa = C2paReader(trust_pem)

    def inspect(self, path) -> Provenance:
        """The evidence in the file at ``path``; raises :class:`ImageError` when the file cannot be
        read or is not an image."""
        file = read_image_file(path)
        return self.inspect_bytes(file.data, file.path)

    def inspect_bytes(self, data: bytes, path) -> Provenance:
        """The evidence in ``data``, the bytes of the image file at ``path``."""
        if not is_image_signature(data):
            raise ImageError(display_path(path), "not an image (unrecognised content)")
        items: list[Evidence] = []
        if data.startswith(PNG_SIGNATURE):
            items, exif, has_c2pa = png(data)
            items += png_exif(exif) if exif is not None else []
        else:
            has_c2pa = has_c2pa_marker(data)
            if data.startswith((b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")) or data[8:12] == b"WEBP":
                items = pillow_metadata(data)
        if has_c2pa:
            item = self._c2pa.read(data)
            items[:0] = [item] if item is not None else []
        return Provenance(str(path), tuple(items))


# --------------------------------------------------------------------------------------------------------
# Metadata against pixels


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _matches(claimed: str, source: str) -> bool:
    a, b = _norm(claimed), _norm(source)
    return len(a) >= 3 and len(b) >= 3 and (a in b or b in a)


def disagreement(provenance: Provenance, pixel_source: str | None, candidates: Sequence[str]) -> str | None:
    """Say when the metadata and the pixel verdict conflict, else None.

    ``candidates`` are the sources the pixel decision was made over (all enrolled sources for
    attribute, the one source for verify) and ``pixel_source`` the one the pixels point to (None:
    unknown / rejected). Names are compared loosely (case and punctuation ignored, one contained in
    the other: "DALL-E 3" matches a source named "dalle3"). Conflicts:

    * the metadata names an enrolled source and the pixels point elsewhere (or nowhere);
    * the pixels point to a source and the metadata names a different generator;
    * the pixels point to a source and the metadata claims a camera capture.
    """
    said = "pixels say " + (f"'{pixel_source}'" if pixel_source else "none of the enrolled sources")
    readable = [i for i in provenance.items if i.trust != UNREADABLE]
    for item in readable:
        names = [item.claims[k] for k in ("generator", "model", "software") if k in item.claims]
        names += [item.signer] if item.signer else []
        matched = [c for c in candidates if any(_matches(n, c) for n in names)]
        if matched and pixel_source not in matched:
            return f"{item.source} ({item.trust}) names '{short(names[0])}', which matches source " \
                   f"'{matched[0]}'; {said}"
    if pixel_source is None:
        return None
    for item in readable:
        generator = item.claims.get("generator")
        if generator and not _matches(generator, pixel_source) and not any(
                _matches(item.claims[k], pixel_source) for k in ("model", "software") if k in item.claims):
            model = f" (model '{short(item.claims['model'])}')" if "model" in item.claims else ""
            return f"{item.source} ({item.trust}) names generator '{short(generator)}'{model}; {said}"
        if item.claims.get("source_kind") == "captured" or "camera" in item.claims:
            what = item.claims.get("camera") or item.claims.get("digital_source_type")
            return f"{item.source} ({item.trust}) claims a capture ({short(what)}); {said}"
    return None
