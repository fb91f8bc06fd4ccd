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

import io
import itertools
import json
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from occ.errors import ImageError, UsageError
from occ.images import display_path, is_image_signature, read_image_file

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

SIGNED_VALID = "signed-valid"
SIGNED_INVALID = "signed-invalid"
UNSIGNED = "unsigned-claim"
UNREADABLE = "unreadable"
NONE = "none"
_LEVEL_ORDER = (SIGNED_VALID, SIGNED_INVALID, UNSIGNED, UNREADABLE)

# Bounds on what hostile metadata may cost.
MAX_XMP_BYTES = 2 * 2**20  # one XMP packet
MAX_XML_DEPTH = 64
MAX_TEXT_CHUNK_BYTES = 2**20  # one PNG text chunk, after decompression
MAX_TEXT_TOTAL_BYTES = 8 * 2**20  # all PNG text chunks of a file, after decompression
MAX_TEXT_CHUNKS = 64  # PNG text chunks examined per file (the rest are counted)
MAX_PNG_CHUNKS = 100_000  # PNG chunks walked per file
MAX_JSON_NODES = 5000  # ComfyUI graph nodes examined
MAX_VALUE_CHARS = 1000  # one reported value
MAX_PROBLEMS = 20  # failure codes reported per manifest

_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_XMP_BASIC = "http://ns.adobe.com/xap/1.0/"
_XMP_FIELDS = {
    (_IPTC_EXT, "DigitalSourceType"): "digital_source_type",
    (_IPTC_EXT, "AISystemUsed"): "generator",
    (_IPTC_EXT, "AISystemVersionUsed"): "generator_version",
    (_IPTC_EXT, "AIPromptInformation"): "prompt",
    (_XMP_BASIC, "CreatorTool"): "software",
    (_XMP_BASIC, "CreateDate"): "when",
    ("http://purl.org/dc/terms/", "provenance"): "remote_manifest",  # where a C2PA manifest is kept (never fetched)
}

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

_EXIF_TAGS = {0x0131: "software", 0x010F: "camera_make", 0x0110: "camera_model", 0x0132: "when",
              0x013B: "artist"}
_EXIF_IFD, _EXIF_DATETIME_ORIGINAL, _EXIF_USER_COMMENT, _TIFF_XMP = 0x8769, 0x9003, 0x9286, 700
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif",
         b"II*\x00": "image/tiff", b"MM\x00*": "image/tiff"}


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
        said = "; ".join(f"{k.replace('_', ' ')} {_short(self.claims[k])}" for k in keys if k in self.claims)
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
        return next((level for level in _LEVEL_ORDER if level in found), NONE)

    def to_dict(self) -> dict:
        return {"level": self.level, "items": [item.to_dict() for item in self.items]}

    def summary(self) -> str:
        """A few words for a table cell: the level and the most telling name."""
        if not self.items:
            return NONE
        best = next(item for item in sorted(self.items, key=lambda i: _LEVEL_ORDER.index(i.trust)))
        name = next((best.claims[k] for k in ("generator", "model", "software", "digital_source_type", "camera")
                     if k in best.claims), None)
        return f"{best.source} {best.trust}" + (f": {_short(name, 40)}" if name else "")


# --------------------------------------------------------------------------------------------------------
# Small helpers


def _clean(value, limit: int = MAX_VALUE_CHARS) -> str:
    """A value as one printable line of at most ``limit`` characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 2])
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _put(claims: dict, key: str, value) -> None:
    if value is None or key in claims:
        return
    text = _clean(value)
    if text:
        claims[key] = text


def _source_type(claims: dict, value) -> None:
    """Record an IPTC DigitalSourceType (a URI or a bare term) and the kind of origin it claims."""
    if value is None:
        return
    term = _clean(value).rstrip("/").rsplit("/", 1)[-1]
    if not term:
        return
    _put(claims, "digital_source_type", term)
    _put(claims, "source_kind", DIGITAL_SOURCE_TYPES.get(term, "unknown"))


class _Unreadable(Exception):
    """Metadata that cannot be parsed (the message says why)."""


# --------------------------------------------------------------------------------------------------------
# XMP


def _parse_xmp(packet: bytes) -> dict[str, str]:
    """The fields occ reports from one XMP packet. A DOCTYPE or entity declaration (never in XMP, the
    vehicle of entity-expansion attacks), nesting deeper than MAX_XML_DEPTH or a packet over
    MAX_XMP_BYTES is refused."""
    import xml.parsers.expat

    if len(packet) > MAX_XMP_BYTES:
        raise _Unreadable(f"XMP packet too large ({len(packet)} bytes; the limit is {MAX_XMP_BYTES})")
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    values: dict[str, list[str]] = {}
    stack: list[str | None] = []  # per open element: the field it belongs to, if any
    sizes: dict[str, int] = {}

    def refuse(*_args):
        raise _Unreadable("XMP packet declares a DOCTYPE or entities")

    def start(name, attrs):
        if len(stack) >= MAX_XML_DEPTH:
            raise _Unreadable(f"XMP nested deeper than {MAX_XML_DEPTH} elements")
        ns, _, local = name.rpartition(" ")
        inside = next((f for f in reversed(stack) if f is not None), None)
        stack.append(_XMP_FIELDS.get((ns, local), inside))
        for attr, value in attrs.items():  # rdf:Description's short form: fields as attributes
            ans, _, alocal = attr.rpartition(" ")
            key = _XMP_FIELDS.get((ans, alocal))
            if key and key not in values:
                values[key] = [value[:MAX_VALUE_CHARS]]

    def end(_name):
        stack.pop()

    def text(data):
        key = stack[-1] if stack else None
        if key is not None and sizes.get(key, 0) < MAX_VALUE_CHARS:
            values.setdefault(key, []).append(data)
            sizes[key] = sizes.get(key, 0) + len(data)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(packet, True)
    except xml.parsers.expat.ExpatError as exc:
        raise _Unreadable(f"XMP is not well-formed XML ({xml.parsers.expat.ErrorString(exc.code)}, "
                          f"line {exc.lineno})") from None
    claims: dict[str, str] = {}
    for key, parts in values.items():
        joined = " ".join(p.strip() for p in parts if p.strip())
        if key == "digital_source_type":
            _source_type(claims, joined)
        else:
            _put(claims, key, joined)
    if "generator_version" in claims:
        version = claims.pop("generator_version")
        if "generator" in claims:
            claims["generator"] = _clean(f"{claims['generator']} {version}")
    return claims


def _xmp_item(packet: bytes) -> Evidence | None:
    try:
        claims = _parse_xmp(packet)
    except _Unreadable as exc:
        return Evidence("xmp", UNREADABLE, problems=(str(exc),))
    return Evidence("xmp", UNSIGNED, claims) if claims else None


# --------------------------------------------------------------------------------------------------------
# AUTOMATIC1111 "parameters" and ComfyUI graphs


def _split_params(line: str) -> dict[str, str]:
    """'Steps: 20, Sampler: Euler a, Lora hashes: "a: 1, b: 2"' -> {key: value}; quoted values keep
    their commas."""
    out: dict[str, str] = {}
    pos, n = 0, len(line)
    while pos < n and len(out) < 200:
        colon = line.find(":", pos)
        if colon < 0:
            break
        key = line[pos:colon].strip()
        pos = colon + 1
        while pos < n and line[pos] == " ":
            pos += 1
        if pos < n and line[pos] == '"':
            close = pos + 1
            while close < n and line[close] != '"':
                close += 2 if line[close] == "\\" else 1
            value = line[pos + 1 : close]
            comma = line.find(",", close)
        else:
            comma = line.find(",", pos)
            value = line[pos : comma if comma >= 0 else n]
        out.setdefault(key, value.strip())
        if comma < 0:
            break
        pos = comma + 1
    return out


def _a1111_claims(text: str) -> dict[str, str] | None:
    """Claims from AUTOMATIC1111-style generation parameters (prompt lines, an optional
    "Negative prompt:" line, then "Steps: 20, Sampler: ..., Model hash: ..., Model: ..."), or None when
    the text has no such settings line."""
    lines = text.strip().split("\n")
    if not lines or not lines[-1].lstrip().startswith("Steps:"):
        return None
    params = _split_params(lines[-1])
    prompt_lines = []
    for line in lines[:-1]:
        if line.startswith("Negative prompt:"):
            break
        prompt_lines.append(line)
    claims: dict[str, str] = {}
    version = params.get("Version")
    _put(claims, "generator", "Stable Diffusion web UI" + (f" {version}" if version else ""))
    _put(claims, "model", params.get("Model"))
    _put(claims, "model_hash", params.get("Model hash"))
    _put(claims, "prompt", "\n".join(prompt_lines) or None)
    for key, name in (("Sampler", "sampler"), ("Seed", "seed"), ("Steps", "steps"), ("Size", "size"),
                      ("CFG scale", "cfg_scale")):
        _put(claims, name, params.get(key))
    return claims


_CHECKPOINT_INPUTS = ("ckpt_name", "unet_name")


def _comfy_claims(prompt_json: str | None, workflow_json: str | None) -> dict[str, str]:
    """Claims from ComfyUI's API-format ``prompt`` graph ({id: {"class_type", "inputs"}}), else from
    its UI-format ``workflow`` ({"nodes": [{"type", "widgets_values"}]})."""
    claims: dict[str, str] = {"generator": "ComfyUI"}
    models: list[str] = []
    graph = _load_json(prompt_json)
    if isinstance(graph, dict):
        nodes = {k: v for k, v in itertools.islice(graph.items(), MAX_JSON_NODES) if isinstance(v, dict)}
        for node in nodes.values():
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            models += [str(inputs[k]) for k in _CHECKPOINT_INPUTS if isinstance(inputs.get(k), str)]
            if "sampler_name" in inputs:
                _put(claims, "sampler", inputs.get("sampler_name"))
                seed = inputs.get("seed", inputs.get("noise_seed"))
                _put(claims, "seed", seed if isinstance(seed, (int, str)) else None)
                _put(claims, "steps", inputs.get("steps") if isinstance(inputs.get("steps"), int) else None)
                positive = inputs.get("positive")
                if isinstance(positive, list) and positive:  # a link: [node id, output index]
                    source = nodes.get(str(positive[0]), {}).get("inputs", {})
                    if isinstance(source, dict) and isinstance(source.get("text"), str):
                        _put(claims, "prompt", source["text"])
    else:
        workflow = _load_json(workflow_json)
        nodes = workflow.get("nodes") if isinstance(workflow, dict) else None
        for node in (nodes if isinstance(nodes, list) else [])[:MAX_JSON_NODES]:
            if not isinstance(node, dict) or not isinstance(node.get("widgets_values"), list):
                continue
            kind, widgets = str(node.get("type", "")), node["widgets_values"]
            if ("CheckpointLoader" in kind or kind == "UNETLoader") and widgets and isinstance(widgets[0], str):
                models.append(widgets[0])
    if models:
        _put(claims, "model", ", ".join(dict.fromkeys(models)))
    return claims


def _load_json(text: str | None):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        return None


def _generation_items(source: str, texts: dict[str, str]) -> list[Evidence]:
    """Items from generator text fields: PNG text chunks by keyword, or their EXIF equivalent."""
    items = []
    if "parameters" in texts:
        claims = _a1111_claims(texts["parameters"])
        items.append(Evidence(source, UNSIGNED, claims) if claims is not None else Evidence(
            source, UNREADABLE, problems=("'parameters' text has no settings line (not AUTOMATIC1111 format)",)))
    if "prompt" in texts or "workflow" in texts:
        if _load_json(texts.get("prompt")) is None and _load_json(texts.get("workflow")) is None:
            items.append(Evidence(source, UNREADABLE, problems=("ComfyUI 'prompt'/'workflow' text is not valid JSON",)))
        else:
            items.append(Evidence(source, UNSIGNED, _comfy_claims(texts.get("prompt"), texts.get("workflow"))))
    claims: dict[str, str] = {}
    _put(claims, "software", texts.get("Software"))
    _put(claims, "generator", texts.get("Source"))  # NovelAI: Software "NovelAI", Source the model
    if claims:
        items.append(Evidence(source, UNSIGNED, claims))
    return items


# --------------------------------------------------------------------------------------------------------
# PNG chunks


def _inflate(data: bytes, what: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_CHUNK_BYTES + 1)
    except zlib.error:
        raise _Unreadable(f"{what}: corrupt compressed text") from None
    if len(out) > MAX_TEXT_CHUNK_BYTES or inflater.unconsumed_tail:
        raise _Unreadable(f"{what}: text larger than {MAX_TEXT_CHUNK_BYTES} bytes once decompressed")
    return out


def _png_text(ctype: bytes, body: bytes) -> tuple[str, bytes, str]:
    """(keyword, text bytes, their encoding) of a tEXt, zTXt (Latin-1) or iTXt (UTF-8) chunk."""
    keyword, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(keyword) <= 79:
        raise _Unreadable(f"{ctype.decode()} chunk without a valid keyword")
    key = keyword.decode("latin-1")
    if ctype == b"tEXt":
        return key, rest, "latin-1"
    if ctype == b"zTXt":
        return key, _inflate(rest[1:], f"zTXt '{key}'"), "latin-1"
    if len(rest) < 2:
        raise _Unreadable(f"iTXt '{key}' chunk truncated")
    compressed, rest = rest[0], rest[2:]
    _lang, _, rest = rest.partition(b"\x00")
    _translated, _, raw = rest.partition(b"\x00")
    return key, _inflate(raw, f"iTXt '{key}'") if compressed else raw, "utf-8"


def _png(data: bytes) -> tuple[list[Evidence], bytes | None, bool]:
    """Evidence from a PNG's text chunks (and its XMP), its eXIf payload, and whether it has a C2PA
    (caBX) chunk. At most MAX_PNG_CHUNKS chunks are walked."""
    items: list[Evidence] = []
    texts: dict[str, str] = {}
    problems: list[str] = []
    exif, has_c2pa = None, False
    pos, chunks, seen, total = len(_PNG_SIGNATURE), 0, 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            problems.append("file truncated inside a chunk header")
            break
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            problems.append(f"more than {MAX_PNG_CHUNKS} chunks; the rest were not read")
            break
        length, ctype = struct.unpack_from(">I4s", data, pos)
        start, pos = pos + 8, pos + 12 + length
        if pos > len(data):
            problems.append(f"chunk {_clean(ctype.decode('latin-1'), 8)} truncated")
            break
        if ctype == b"IEND":
            break
        if ctype == b"caBX":
            has_c2pa = True
        elif ctype == b"eXIf" and exif is None:
            exif = data[start : start + length]
        if ctype not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        seen += 1
        if seen > MAX_TEXT_CHUNKS or total > MAX_TEXT_TOTAL_BYTES:
            continue
        is_xmp = data[start : start + 18] == b"XML:com.adobe.xmp\x00"
        if length > (MAX_XMP_BYTES if is_xmp else MAX_TEXT_CHUNK_BYTES):
            if is_xmp:
                items.append(Evidence("xmp", UNREADABLE, problems=(
                    f"XMP packet too large ({length} bytes; the limit is {MAX_XMP_BYTES})",)))
            else:
                problems.append(f"a {ctype.decode()} chunk of {length} bytes was not read "
                                f"(limit {MAX_TEXT_CHUNK_BYTES})")
            continue
        try:
            key, raw, encoding = _png_text(ctype, data[start : start + length])
        except _Unreadable as exc:
            problems.append(str(exc))
            continue
        total += len(raw)
        if is_xmp:  # the XML parser reads the bytes (and their encoding) itself
            item = _xmp_item(raw)
            items += [item] if item is not None else []
            continue
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            text = raw.decode(encoding, "replace")
            problems.append(f"iTXt '{_clean(key, 80)}' is not valid UTF-8 (undecodable bytes replaced)")
        texts.setdefault(key, text)
    if seen > MAX_TEXT_CHUNKS:
        problems.append(f"{seen} text chunks; only the first {MAX_TEXT_CHUNKS} were read")
    if total > MAX_TEXT_TOTAL_BYTES:
        problems.append(f"text chunks past {MAX_TEXT_TOTAL_BYTES} bytes were not read")
    items += _generation_items("png-text", texts)
    if problems:
        items.append(Evidence("png-text", UNREADABLE, problems=tuple(problems[:MAX_PROBLEMS])))
    return items, exif, has_c2pa


# --------------------------------------------------------------------------------------------------------
# EXIF (and XMP of the formats Pillow opens)


def _user_comment(raw) -> str | None:
    """EXIF UserComment: an 8-byte character-code prefix, then the text."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16", "replace")
        # No byte-order mark: guess from where the zero bytes of ASCII text fall.
        little = body[1::2].count(0) >= body[0::2].count(0)
        return body.decode("utf-16-le" if little else "utf-16-be", "replace")
    return body.decode("utf-8", "replace")


def _exif_items(exif) -> list[Evidence]:
    """Items from a Pillow ``Image.Exif``."""
    claims: dict[str, str] = {}
    for tag, key in _EXIF_TAGS.items():
        value = exif.get(tag)
        if isinstance(value, (str, bytes)):
            _put(claims, key, value.rstrip(b"\x00") if isinstance(value, bytes) else value.rstrip("\x00"))
    if "camera_model" in claims or "camera_make" in claims:
        make, model = claims.pop("camera_make", ""), claims.pop("camera_model", "")
        claims["camera"] = _clean(model if make and model.startswith(make) else f"{make} {model}")
    items = []
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # a broken sub-IFD leaves the main one
        sub = {}
    when = sub.get(_EXIF_DATETIME_ORIGINAL)
    if isinstance(when, str):
        claims["when"] = _clean(when)
    comment = _user_comment(sub.get(_EXIF_USER_COMMENT))
    if comment:
        items += _generation_items("exif", {"parameters": comment}) if "Steps:" in comment else []
    if claims:
        items.insert(0, Evidence("exif", UNSIGNED, claims))
    return items


def _png_exif(payload: bytes) -> list[Evidence]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = Image.Exif()
            exif.load(payload if payload.startswith(b"Exif") else b"Exif\x00\x00" + payload)
            return _exif_items(exif)
    except Exception as exc:  # Pillow fails in many ways on hostile EXIF
        return [Evidence("exif", UNREADABLE, problems=(f"cannot parse EXIF: {_clean(exc, 200)}",))]


def _pillow_metadata(data: bytes) -> list[Evidence]:
    """EXIF and XMP of a JPEG, WebP or TIFF file through Pillow's header parsing (no pixel is decoded)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=("JPEG", "WEBP", "TIFF"))
            exif = image.getexif()
            xmp = image.info.get("xmp") or exif.get(_TIFF_XMP)
            items = _exif_items(exif)
    except Exception as exc:  # Pillow fails in many ways on hostile headers
        return [Evidence("exif", UNREADABLE, problems=(f"cannot parse metadata: {_clean(exc, 200)}",))]
    if isinstance(xmp, (bytes, str)):
        item = _xmp_item(xmp if isinstance(xmp, bytes) else xmp.encode("utf-8"))
        if item is not None:
            items.insert(0, item)
    return items


# --------------------------------------------------------------------------------------------------------
# C2PA


def c2pa_available() -> bool:
    """Whether the ``provenance`` extra (c2pa-python) is installed."""
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def _require_c2pa() -> None:
    if not c2pa_available():
        raise UsageError("a trust list needs C2PA support: pip install 'occ[provenance]'")


def _has_c2pa_marker(data: bytes) -> bool:
    """Whether a non-PNG file may hold a C2PA manifest store: a JUMBF superbox ("jumb") labelled
    "c2pa", so both byte strings appear (PNG files say so with a caBX chunk)."""
    return b"jumb" in data and b"c2pa" in data


def _c2pa_settings(trust_pem: str | None) -> dict:
    # Never reach the network: no remote manifests, no OCSP. The trust list is the user's, alone.
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True}}
    if trust_pem is not None:
        settings["trust"] = {"trust_anchors": trust_pem}
    return settings


def _c2pa_claims(manifest: dict) -> dict[str, str]:
    claims: dict[str, str] = {}
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("name"):
        version = info[0].get("version")
        _put(claims, "software", f"{info[0]['name']}" + (f" {version}" if isinstance(version, str) else ""))
    elif isinstance(manifest.get("claim_generator"), str):
        _put(claims, "software", manifest["claim_generator"])
    actions = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data") if isinstance(assertion.get("data"), dict) else {}
        actions += [a for a in data.get("actions") or [] if isinstance(a, dict)]
    for action in actions[:50]:
        agent = action.get("softwareAgent")
        agent = agent.get("name") if isinstance(agent, dict) else agent
        kind = DIGITAL_SOURCE_TYPES.get(str(action.get("digitalSourceType", "")).rsplit("/", 1)[-1])
        if action.get("action") in ("c2pa.created", "c2pa.opened"):
            _source_type(claims, action.get("digitalSourceType"))
            _put(claims, "generator" if kind in ("generated", "ai-edited") else "software", agent)
            _put(claims, "when", action.get("when"))
        elif kind in ("generated", "ai-edited"):
            _put(claims, "generator", agent)
    if actions:
        names = [str(a.get("action", "?")).removeprefix("c2pa.") for a in actions[:10]]
        _put(claims, "action", ", ".join(dict.fromkeys(names)))
    sig = manifest.get("signature_info") if isinstance(manifest.get("signature_info"), dict) else {}
    _put(claims, "signed_at", sig.get("time"))
    return claims


class Inspector:
    """Reads the provenance evidence of image files. One per batch: it holds the user's trust list
    and the C2PA validation context.

    ``trust_pem``: PEM certificates (see :func:`load_trust_list`) a C2PA signer must chain to for its
    manifest to count as ``signed-valid``; without it a manifest whose signature and hashes verify is
    ``signed-valid`` with ``trusted`` None (its signer's name is then itself only a claim).
    """

    def __init__(self, trust_pem: str | None = None):
        if trust_pem is not None:
            _require_c2pa()
        self.trust_pem = trust_pem
        self._context = None

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
        if data.startswith(_PNG_SIGNATURE):
            items, exif, has_c2pa = _png(data)
            items += _png_exif(exif) if exif is not None else []
        else:
            has_c2pa = _has_c2pa_marker(data)
            if data.startswith((b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")) or data[8:12] == b"WEBP":
                items = _pillow_metadata(data)
        if has_c2pa:
            item = self._c2pa(data)
            items[:0] = [item] if item is not None else []
        return Provenance(str(path), tuple(items))

    def _c2pa(self, data: bytes) -> Evidence | None:
        try:
            import c2pa
        except ImportError:
            return Evidence("c2pa", UNREADABLE, problems=(
                "C2PA data present but not verified: install the 'provenance' extra (pip install "
                "'occ[provenance]')",))
        if self._context is None:
            self._context = c2pa.Context.from_dict(_c2pa_settings(self.trust_pem))
        mime = next((m for magic, m in _MIME.items() if data.startswith(magic)), None)
        if mime is None and data[:4] == b"RIFF":
            mime = "image/webp"
        try:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context=self._context)
            if reader is None:  # the marker bytes were a coincidence
                return None
            with reader:
                store = json.loads(reader.json())
                state = reader.get_validation_state()
        except Exception as exc:  # c2pa.C2paError and anything else the native parser raises on hostile data
            why = ("the manifest is a remote manifest, which occ never fetches" if "remote manifest" in str(exc)
                   else _clean(exc, 200))
            return Evidence("c2pa", UNREADABLE, problems=(f"cannot verify C2PA data: {why}",))
        return self._c2pa_item(store, state)

    def _c2pa_item(self, store: dict, state: str | None) -> Evidence:
        manifests = store.get("manifests") if isinstance(store.get("manifests"), dict) else {}
        manifest = manifests.get(store.get("active_manifest"))
        if not isinstance(manifest, dict):
            return Evidence("c2pa", UNREADABLE, problems=("C2PA manifest store without an active manifest",))
        sig = manifest.get("signature_info") if isinstance(manifest.get("signature_info"), dict) else {}
        name, org = sig.get("common_name"), sig.get("issuer")
        signer = _clean(f"{name} ({org})" if name and org else name or org, 200) if (name or org) else None
        results = store.get("validation_results") if isinstance(store.get("validation_results"), dict) else {}
        active = results.get("activeManifest") if isinstance(results.get("activeManifest"), dict) else {}
        failures = active.get("failure")
        if not isinstance(failures, list):  # older stores: a flat validation_status list
            failures = store.get("validation_status") if isinstance(store.get("validation_status"), list) else []
        codes = [f for f in failures if isinstance(f, dict)]
        if self.trust_pem is None:  # no trust list given: "untrusted" says nothing
            codes = [f for f in codes if f.get("code") != "signingCredential.untrusted"]
        problems = tuple(_clean(f"{f.get('code')}: {f.get('explanation', '')}".rstrip(": "), 200)
                         for f in codes[:MAX_PROBLEMS])
        trusted = None if self.trust_pem is None else state == "Trusted"
        valid = state in ("Valid", "Trusted") and not problems and trusted is not False
        if not valid and not problems:
            problems = (f"validation state {_clean(state, 40)}",)
        return Evidence("c2pa", SIGNED_VALID if valid else SIGNED_INVALID, _c2pa_claims(manifest),
                        signer=signer, trusted=trusted, problems=problems)


def load_trust_list(path) -> str:
    """The PEM certificates in the file at ``path`` (trust anchors for C2PA signers), checked to
    parse; raises :class:`UsageError` naming the file otherwise."""
    _require_c2pa()
    from cryptography import x509  # part of the 'provenance' extra

    shown = display_path(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{shown}: cannot read trust list: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise UsageError(f"{shown}: no PEM certificate found (a trust list is one or more "
                         "'-----BEGIN CERTIFICATE-----' blocks)")
    return "".join(c.public_bytes(_pem_encoding()).decode("ascii") for c in certs)


def _pem_encoding():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


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
            return f"{item.source} ({item.trust}) names '{_short(names[0])}', which matches source " \
                   f"'{matched[0]}'; {said}"
    if pixel_source is None:
        return None
    for item in readable:
        generator = item.claims.get("generator")
        if generator and not _matches(generator, pixel_source) and not any(
                _matches(item.claims[k], pixel_source) for k in ("model", "software") if k in item.claims):
            model = f" (model '{_short(item.claims['model'])}')" if "model" in item.claims else ""
            return f"{item.source} ({item.trust}) names generator '{_short(generator)}'{model}; {said}"
        if item.claims.get("source_kind") == "captured" or "camera" in item.claims:
            what = item.claims.get("camera") or item.claims.get("digital_source_type")
            return f"{item.source} ({item.trust}) claims a capture ({_short(what)}); {said}"
    return None
