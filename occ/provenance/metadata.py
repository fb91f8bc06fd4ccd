"""Unsigned provenance claims in an image file's metadata (see :mod:`occ.provenance`): XMP packets (IPTC
DigitalSourceType and AI-system fields, ``xmp:CreatorTool``), PNG text chunks (AUTOMATIC1111 parameters,
ComfyUI graphs, ``Software``) and EXIF, each parser bounded in the bytes it reads, the text it keeps and
the depth it follows."""

from __future__ import annotations

import io
import itertools
import json
import struct
import warnings
import zlib

from occ.provenance.base import (
    MAX_PROBLEMS,
    MAX_VALUE_CHARS,
    PNG_SIGNATURE,
    UNREADABLE,
    UNSIGNED,
    Evidence,
    Unreadable,
    clean,
    put,
    source_type,
)

# Bounds on what hostile metadata may cost.
MAX_XMP_BYTES = 2 * 2**20  # one XMP packet
MAX_XML_DEPTH = 64
MAX_TEXT_CHUNK_BYTES = 2**20  # one PNG text chunk, after decompression
MAX_TEXT_TOTAL_BYTES = 8 * 2**20  # all PNG text chunks of a file, after decompression
MAX_TEXT_CHUNKS = 64  # PNG text chunks examined per file (the rest are counted)
MAX_PNG_CHUNKS = 100_000  # PNG chunks walked per file
MAX_JSON_NODES = 5000  # ComfyUI graph nodes examined

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

_EXIF_TAGS = {0x0131: "software", 0x010F: "camera_make", 0x0110: "camera_model", 0x0132: "when",
              0x013B: "artist"}
_EXIF_IFD, _EXIF_DATETIME_ORIGINAL, _EXIF_USER_COMMENT, _TIFF_XMP = 0x8769, 0x9003, 0x9286, 700


# --------------------------------------------------------------------------------------------------------
# XMP


def _parse_xmp(packet: bytes) -> dict[str, str]:
    """The fields occ reports from one XMP packet. A DOCTYPE or entity declaration (never in XMP, the
    vehicle of entity-expansion attacks), nesting deeper than MAX_XML_DEPTH or a packet over
    MAX_XMP_BYTES is refused."""
    import xml.parsers.expat

    if len(packet) > MAX_XMP_BYTES:
        raise Unreadable(f"XMP packet too large ({len(packet)} bytes; the limit is {MAX_XMP_BYTES})")
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    values: dict[str, list[str]] = {}
    stack: list[str | None] = []  # per open element: the field it belongs to, if any
    sizes: dict[str, int] = {}

    def refuse(*_args):
        raise Unreadable("XMP packet declares a DOCTYPE or entities")

    def start(name, attrs):
        if len(stack) >= MAX_XML_DEPTH:
            raise Unreadable(f"XMP nested deeper than {MAX_XML_DEPTH} elements")
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
        raise Unreadable(f"XMP is not well-formed XML ({xml.parsers.expat.ErrorString(exc.code)}, "
                          f"line {exc.lineno})") from None
    claims: dict[str, str] = {}
    for key, parts in values.items():
        joined = " ".join(p.strip() for p in parts if p.strip())
        if key == "digital_source_type":
            source_type(claims, joined)
        else:
            put(claims, key, joined)
    if "generator_version" in claims:
        version = claims.pop("generator_version")
        if "generator" in claims:
            claims["generator"] = clean(f"{claims['generator']} {version}")
    return claims


def _xmp_item(packet: bytes) -> Evidence | None:
    try:
        claims = _parse_xmp(packet)
    except Unreadable as exc:
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
    put(claims, "generator", "Stable Diffusion web UI" + (f" {version}" if version else ""))
    put(claims, "model", params.get("Model"))
    put(claims, "model_hash", params.get("Model hash"))
    put(claims, "prompt", "\n".join(prompt_lines) or None)
    for key, name in (("Sampler", "sampler"), ("Seed", "seed"), ("Steps", "steps"), ("Size", "size"),
                      ("CFG scale", "cfg_scale")):
        put(claims, name, params.get(key))
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
                put(claims, "sampler", inputs.get("sampler_name"))
                seed = inputs.get("seed", inputs.get("noise_seed"))
                put(claims, "seed", seed if isinstance(seed, (int, str)) else None)
                put(claims, "steps", inputs.get("steps") if isinstance(inputs.get("steps"), int) else None)
                positive = inputs.get("positive")
                if isinstance(positive, list) and positive:  # a link: [node id, output index]
                    source = nodes.get(str(positive[0]), {}).get("inputs", {})
                    if isinstance(source, dict) and isinstance(source.get("text"), str):
                        put(claims, "prompt", source["text"])
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
        put(claims, "model", ", ".join(dict.fromkeys(models)))
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
    put(claims, "software", texts.get("Software"))
    put(claims, "generator", texts.get("Source"))  # NovelAI: Software "NovelAI", Source the model
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
        raise Unreadable(f"{what}: corrupt compressed text") from None
    if len(out) > MAX_TEXT_CHUNK_BYTES or inflater.unconsumed_tail:
        raise Unreadable(f"{what}: text larger than {MAX_TEXT_CHUNK_BYTES} bytes once decompressed")
    return out


def _png_text(ctype: bytes, body: bytes) -> tuple[str, bytes, str]:
    """(keyword, text bytes, their encoding) of a tEXt, zTXt (Latin-1) or iTXt (UTF-8) chunk."""
    keyword, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(keyword) <= 79:
        raise Unreadable(f"{ctype.decode()} chunk without a valid keyword")
    key = keyword.decode("latin-1")
    if ctype == b"tEXt":
        return key, rest, "latin-1"
    if ctype == b"zTXt":
        return key, _inflate(rest[1:], f"zTXt '{key}'"), "latin-1"
    if len(rest) < 2:
        raise Unreadable(f"iTXt '{key}' chunk truncated")
    compressed, rest = rest[0], rest[2:]
    _lang, _, rest = rest.partition(b"\x00")
    _translated, _, raw = rest.partition(b"\x00")
    return key, _inflate(raw, f"iTXt '{key}'") if compressed else raw, "utf-8"


def png(data: bytes) -> tuple[list[Evidence], bytes | None, bool]:
    """Evidence from a PNG's text chunks (and its XMP), its eXIf payload, and whether it has a C2PA
    (caBX) chunk. At most MAX_PNG_CHUNKS chunks are walked."""
    items: list[Evidence] = []
    texts: dict[str, str] = {}
    problems: list[str] = []
    exif, has_c2pa = None, False
    pos, chunks, seen, total = len(PNG_SIGNATURE), 0, 0, 0
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
            problems.append(f"chunk {clean(ctype.decode('latin-1'), 8)} truncated")
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
        except Unreadable as exc:
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
            problems.append(f"iTXt '{clean(key, 80)}' is not valid UTF-8 (undecodable bytes replaced)")
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
            put(claims, key, value.rstrip(b"\x00") if isinstance(value, bytes) else value.rstrip("\x00"))
    if "camera_model" in claims or "camera_make" in claims:
        make, model = claims.pop("camera_make", ""), claims.pop("camera_model", "")
        claims["camera"] = clean(model if make and model.startswith(make) else f"{make} {model}")
    items = []
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # a broken sub-IFD leaves the main one
        sub = {}
    when = sub.get(_EXIF_DATETIME_ORIGINAL)
    if isinstance(when, str):
        claims["when"] = clean(when)
    comment = _user_comment(sub.get(_EXIF_USER_COMMENT))
    if comment:
        items += _generation_items("exif", {"parameters": comment}) if "Steps:" in comment else []
    if claims:
        items.insert(0, Evidence("exif", UNSIGNED, claims))
    return items


def png_exif(payload: bytes) -> list[Evidence]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = Image.Exif()
            exif.load(payload if payload.startswith(b"Exif") else b"Exif\x00\x00" + payload)
            return _exif_items(exif)
    except Exception as exc:  # Pillow fails in many ways on hostile EXIF
        return [Evidence("exif", UNREADABLE, problems=(f"cannot parse EXIF: {clean(exc, 200)}",))]


def pillow_metadata(data: bytes) -> list[Evidence]:
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
        return [Evidence("exif", UNREADABLE, problems=(f"cannot parse metadata: {clean(exc, 200)}",))]
    if isinstance(xmp, (bytes, str)):
        item = _xmp_item(xmp if isinstance(xmp, bytes) else xmp.encode("utf-8"))
        if item is not None:
            items.insert(0, item)
    return items

