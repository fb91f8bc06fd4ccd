"""occ.provenance on real files made here: C2PA manifests signed with a throwaway certificate chain
(real c2pa-python, the 'provenance' extra, installed by README's test command and CI), XMP packets,
AUTOMATIC1111 / ComfyUI PNG text chunks, EXIF, and hostile metadata."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import c2pa  # noqa: F401  (the 'provenance' extra: these tests must run, never be skipped)
import pytest
from provenancekit import (
    A1111_PARAMETERS,
    c2pa_sign,
    comfy_prompt,
    comfy_workflow,
    created_manifest,
    exif_with,
    make_chain,
    png_with,
    replace_pixels,
    text_chunk,
    xmp_packet,
)

from occ import provenance as pv
from occ.errors import ImageError, UsageError
from occ.testing.imagegen import encode, pattern_image, png_chunk


@pytest.fixture(scope="module")
def chain():
    return make_chain()


def inspect(tmp_path: Path, data: bytes, name: str = "x.png", trust: str | None = None) -> pv.Provenance:
    path = tmp_path / name
    path.write_bytes(data)
    return pv.Inspector(trust).inspect(path)


def only(prov: pv.Provenance, source: str) -> pv.Evidence:
    found = [item for item in prov.items if item.source == source]
    assert len(found) == 1, prov
    return found[0]


# -- C2PA ------------------------------------------------------------------------------------------------


def test_signed_png_is_valid_and_names_generator_and_signer(tmp_path, chain):
    signed = c2pa_sign(encode(pattern_image(), "PNG"), "image/png", chain)
    prov = inspect(tmp_path, signed)
    item = only(prov, "c2pa")
    assert prov.level == pv.SIGNED_VALID and item.trust == pv.SIGNED_VALID
    assert item.signer == "Test Signer (Test Org)"
    assert item.trusted is None  # no trust list given: the signer's name is only a claim
    assert item.problems == ()
    assert item.claims["generator"] == "DALL-E 3"
    assert item.claims["software"] == "ChatGPT 1.0"
    assert item.claims["digital_source_type"] == "trainedAlgorithmicMedia"
    assert item.claims["source_kind"] == "generated"
    assert item.claims["action"] == "created"
    assert item.claims["when"] == "2026-11-30T10:00:00Z"
    row = prov.to_dict()
    assert row["level"] == "signed-valid" and row["items"][0]["signer"] == "Test Signer (Test Org)"
    json.dumps(row)  # JSON-ready


def test_trust_list_decides_trusted(tmp_path, chain):
    signed = c2pa_sign(encode(pattern_image(), "JPEG"), "image/jpeg", chain,
                       created_manifest("Firefly Image 3", "Adobe Firefly"))
    ours = tmp_path / "ours.pem"
    ours.write_bytes(chain.root_pem)
    item = only(inspect(tmp_path, signed, "a.jpg", pv.load_trust_list(ours)), "c2pa")
    assert (item.trust, item.trusted, item.problems) == (pv.SIGNED_VALID, True, ())
    assert item.claims["generator"] == "Firefly Image 3"

    theirs = tmp_path / "theirs.pem"
    theirs.write_bytes(make_chain(org="Other Org").root_pem)
    item = only(inspect(tmp_path, signed, "a.jpg", pv.load_trust_list(theirs)), "c2pa")
    assert item.trust == pv.SIGNED_INVALID and item.trusted is False
    assert any(p.startswith("signingCredential.untrusted") for p in item.problems)
    assert item.claims["generator"] == "Firefly Image 3"  # what it claims is still shown


def test_edited_after_signing_is_invalid(tmp_path, chain):
    signed = c2pa_sign(encode(pattern_image(seed=1), "PNG"), "image/png", chain)
    edited = replace_pixels(signed, pattern_image(seed=2))
    assert b"caBX" in edited and edited != signed
    ours = tmp_path / "ours.pem"
    ours.write_bytes(chain.root_pem)
    for trust in (None, pv.load_trust_list(ours)):
        item = only(inspect(tmp_path, edited, trust=trust), "c2pa")
        assert item.trust == pv.SIGNED_INVALID
        assert any(p.startswith("assertion.dataHash.mismatch") for p in item.problems), item.problems
        assert item.claims["generator"] == "DALL-E 3"


def test_expired_certificate_is_invalid(tmp_path):
    short = make_chain(leaf_seconds=2)
    signed = c2pa_sign(encode(pattern_image(), "JPEG"), "image/jpeg", short)
    assert only(inspect(tmp_path, signed, "a.jpg"), "c2pa").trust == pv.SIGNED_VALID  # still in date
    time.sleep(3.2)
    item = only(inspect(tmp_path, signed, "a.jpg"), "c2pa")
    assert item.trust == pv.SIGNED_INVALID
    assert any(p.startswith("signingCredential.expired") for p in item.problems), item.problems


def test_malformed_c2pa_box_is_unreadable_and_the_rest_is_read(tmp_path):
    jumbf = b"\x00\x00\x00\x40jumb" + b"\x00\x00\x00\x20jumdc2pa" + b"\xff" * 200
    for payload in (jumbf, b"garbage" * 1_000_000):
        data = png_with(png_chunk(b"caBX", payload), text_chunk("parameters", A1111_PARAMETERS))
        prov = inspect(tmp_path, data)
        item = only(prov, "c2pa")
        assert item.trust == pv.UNREADABLE and item.problems[0].startswith("cannot verify C2PA data")
        assert only(prov, "png-text").claims["model"] == "sd_xl_base_1.0"
        assert prov.level == pv.UNSIGNED


def test_remote_manifests_are_never_fetched(tmp_path, chain):
    """A file that points to its manifest on a server (a real one, on loopback): the URL is reported,
    nothing is requested, even when C2PA-looking bytes make occ hand the file to c2pa-python."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/manifest.c2pa"
        remote = c2pa_sign(encode(pattern_image(), "JPEG"), "image/jpeg", chain, remote_url=url)
        item = only(inspect(tmp_path, remote, "r.jpg"), "xmp")
        assert item.claims == {"remote_manifest": url}
        marked = remote[:2] + b"\xff\xfe\x00\x0bjumb c2pa" + remote[2:]  # a JPEG comment with the marker
        item = only(inspect(tmp_path, marked, "m.jpg"), "c2pa")
        assert item.trust == pv.UNREADABLE and "remote manifest" in item.problems[0]
        with pytest.raises(urllib.error.HTTPError):  # the server is live and counts what it gets
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/probe", timeout=10)
    finally:
        server.shutdown()
    assert hits == ["/probe"]


def test_without_the_extra_c2pa_is_reported_unverified(tmp_path, chain):
    """With c2pa-python not importable (the extra not installed), a manifest is an unreadable item that
    says how to install it, and the other evidence is still read."""
    signed = c2pa_sign(png_with(text_chunk("Software", "NovelAI")), "image/png", chain)
    path = tmp_path / "s.png"
    path.write_bytes(signed)
    code = ("import sys, json; sys.modules['c2pa'] = None\n"
            "from occ import provenance as pv\n"
            "assert not pv.c2pa_available()\n"
            f"print(json.dumps(pv.Inspector().inspect({str(path)!r}).to_dict()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    row = json.loads(out.stdout)
    c2pa_items = [i for i in row["items"] if i["source"] == "c2pa"]
    assert c2pa_items[0]["trust"] == "unreadable" and "occ[provenance]" in c2pa_items[0]["problems"][0]
    assert {"source": "png-text", "trust": "unsigned-claim", "claims": {"software": "NovelAI"}} in row["items"]


def test_load_trust_list_refuses_bad_files(tmp_path, chain):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(UsageError, match="bad.pem: no PEM certificate"):
        pv.load_trust_list(bad)
    with pytest.raises(UsageError, match="missing.pem: cannot read trust list"):
        pv.load_trust_list(tmp_path / "missing.pem")
    two = tmp_path / "two.pem"
    two.write_bytes(chain.root_pem + make_chain(org="B").root_pem)
    assert pv.load_trust_list(two).count("BEGIN CERTIFICATE") == 2


# -- XMP -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("term", sorted(pv.DIGITAL_SOURCE_TYPES))
def test_every_digital_source_type(tmp_path, term):
    png = png_with(text_chunk("XML:com.adobe.xmp", xmp_packet(term), "iTXt"))
    jpg = encode(pattern_image(), "JPEG", xmp=xmp_packet(term, as_attribute=True))
    for data, name in ((png, "x.png"), (jpg, "x.jpg")):
        item = only(inspect(tmp_path, data, name), "xmp")
        assert item.trust == pv.UNSIGNED
        assert item.claims == {"digital_source_type": term, "source_kind": pv.DIGITAL_SOURCE_TYPES[term]}


def test_source_kinds_of_key_terms():
    kinds = pv.DIGITAL_SOURCE_TYPES
    assert kinds["trainedAlgorithmicMedia"] == "generated"
    assert kinds["compositeWithTrainedAlgorithmicMedia"] == "ai-edited"
    assert kinds["digitalCapture"] == kinds["computationalCapture"] == "captured"
    assert kinds["digitalCreation"] == "made-by-software"


def test_xmp_tools_and_unknown_terms(tmp_path):
    packet = xmp_packet("someFutureTerm", creator_tool="Adobe Photoshop 26.1", ai_system="Midjourney v7")
    item = only(inspect(tmp_path, encode(pattern_image(), "WEBP", xmp=packet), "x.webp"), "xmp")
    assert item.claims == {"digital_source_type": "someFutureTerm", "source_kind": "unknown",
                           "software": "Adobe Photoshop 26.1", "generator": "Midjourney v7"}


def test_xmp_in_tiff(tmp_path):
    from PIL import TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[700] = xmp_packet("compositeWithTrainedAlgorithmicMedia")  # XMLPacket
    tags.tagtype[700] = 1  # bytes
    item = only(inspect(tmp_path, encode(pattern_image(), "TIFF", tiffinfo=tags), "x.tif"), "xmp")
    assert item.claims == {"digital_source_type": "compositeWithTrainedAlgorithmicMedia", "source_kind": "ai-edited"}


def test_xmp_without_provenance_fields_is_no_evidence(tmp_path):
    prov = inspect(tmp_path, png_with(text_chunk("XML:com.adobe.xmp", xmp_packet(), "iTXt")))
    assert prov.items == () and prov.level == pv.NONE and prov.summary() == "none"


# -- PNG text chunks and EXIF ----------------------------------------------------------------------------


def test_automatic1111_parameters(tmp_path):
    item = only(inspect(tmp_path, png_with(text_chunk("parameters", A1111_PARAMETERS))), "png-text")
    assert item.trust == pv.UNSIGNED
    assert item.claims == {
        "generator": "Stable Diffusion web UI v1.10.1", "model": "sd_xl_base_1.0", "model_hash": "31e35c80fc",
        "prompt": "a lighthouse on a cliff at dawn, oil painting, highly detailed", "sampler": "DPM++ 2M",
        "seed": "1234567890", "steps": "28", "size": "832x1216", "cfg_scale": "7"}


def test_automatic1111_utf8_itxt_and_after_image_data(tmp_path):
    text = A1111_PARAMETERS.replace("a lighthouse", "灯台 a lighthouse")
    prov = inspect(tmp_path, png_with(after_idat=(text_chunk("parameters", text, "iTXt"),)))
    assert only(prov, "png-text").claims["prompt"].startswith("灯台 a lighthouse")


def test_comfyui_prompt_and_workflow(tmp_path):
    data = png_with(text_chunk("prompt", comfy_prompt()), text_chunk("workflow", comfy_workflow(), "zTXt"))
    item = only(inspect(tmp_path, data), "png-text")
    assert item.claims == {"generator": "ComfyUI", "sampler": "euler", "seed": "156680208700286", "steps": "20",
                           "prompt": "purple galaxy bottle", "model": "v1-5-pruned-emaonly.safetensors"}
    item = only(inspect(tmp_path, png_with(text_chunk("workflow", comfy_workflow()))), "png-text")
    assert item.claims == {"generator": "ComfyUI", "model": "v1-5-pruned-emaonly.safetensors"}


def test_exif_software_and_camera(tmp_path):
    exif = exif_with(software="Adobe Photoshop 25.0 (Windows)", make="Canon", model="Canon EOS R5")
    item = only(inspect(tmp_path, encode(pattern_image(), "JPEG", exif=exif), "x.jpg"), "exif")
    assert item.claims == {"software": "Adobe Photoshop 25.0 (Windows)", "camera": "Canon EOS R5"}
    item = only(inspect(tmp_path, encode(pattern_image(), "PNG", exif=exif_with(software="GIMP 2.10.38"))), "exif")
    assert (item.trust, item.claims) == (pv.UNSIGNED, {"software": "GIMP 2.10.38"})


def test_automatic1111_parameters_in_jpeg_user_comment(tmp_path):
    comment = b"UNICODE\x00" + A1111_PARAMETERS.encode("utf-16-be")  # as the web UI writes JPEG and WebP
    prov = inspect(tmp_path, encode(pattern_image(), "JPEG", exif=exif_with(user_comment=comment)), "x.jpg")
    assert only(prov, "exif").claims["model"] == "sd_xl_base_1.0"


def test_plain_image_and_bad_files(tmp_path):
    prov = inspect(tmp_path, encode(pattern_image(), "PNG"))
    assert (prov.items, prov.level) == ((), pv.NONE)
    with pytest.raises(ImageError, match="notes.txt: not an image"):
        inspect(tmp_path, b"hello, world", "notes.txt")
    with pytest.raises(ImageError, match="gone.png: no such file"):
        pv.Inspector().inspect(tmp_path / "gone.png")


def test_level_is_the_strongest_item():
    unsigned = pv.Evidence("exif", pv.UNSIGNED, {"software": "GIMP"})
    broken = pv.Evidence("xmp", pv.UNREADABLE, problems=("XMP is not well-formed XML",))
    invalid = pv.Evidence("c2pa", pv.SIGNED_INVALID, {"generator": "DALL-E 3"}, signer="S", problems=("x",))
    assert pv.Provenance("p", (broken,)).level == pv.UNREADABLE
    assert pv.Provenance("p", (broken, unsigned)).level == pv.UNSIGNED
    prov = pv.Provenance("p", (unsigned, invalid))
    assert prov.level == pv.SIGNED_INVALID and prov.summary() == "c2pa signed-invalid: DALL-E 3"


# -- hostile metadata ------------------------------------------------------------------------------------


def xmp_png(packet: bytes) -> bytes:
    return png_with(text_chunk("XML:com.adobe.xmp", packet, "iTXt"), text_chunk("Software", "Tool"))


@pytest.mark.parametrize("packet, reason", [
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b" " * (3 * 2**20) + b"</x:xmpmeta>", "XMP packet too large"),
    (b"<a>" * 100_000 + b"</a>" * 100_000, "XMP nested deeper than 64"),
    (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
     b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>&lol2;</x:xmpmeta>", "declares a DOCTYPE"),
    (b"<x:xmpmeta><unclosed></x:xmpmeta>", "not well-formed"),
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>\xff\xfe\xfa</x:xmpmeta>", "not well-formed"),
])
def test_hostile_xmp(tmp_path, packet, reason):
    prov = inspect(tmp_path, xmp_png(packet))
    item = only(prov, "xmp")
    assert item.trust == pv.UNREADABLE and reason in item.problems[0]
    assert any(i.claims == {"software": "Tool"} for i in prov.items)  # the rest is still read


def test_thousands_of_text_chunks(tmp_path):
    chunks = [text_chunk("parameters", A1111_PARAMETERS)] + [text_chunk(f"k{i}", "v" * 50) for i in range(5000)]
    prov = inspect(tmp_path, png_with(*chunks))
    assert [i.claims.get("model") for i in prov.items if i.trust == pv.UNSIGNED] == ["sd_xl_base_1.0"]
    broken = [i for i in prov.items if i.trust == pv.UNREADABLE]
    assert broken and "5001 text chunks; only the first 64 were read" in broken[0].problems


def test_compressed_text_bomb_and_truncated_chunk(tmp_path):
    bomb = png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"\x00" * (64 * 2**20), 9))
    prov = inspect(tmp_path, png_with(bomb))
    assert "larger than 1048576 bytes once decompressed" in only(prov, "png-text").problems[0]
    truncated = png_with(text_chunk("Software", "Tool"))[:-12] + b"\x00\x10\x00\x00tEXtabc"
    prov = inspect(tmp_path, truncated)
    assert any("truncated" in p for i in prov.items for p in i.problems)
    assert any(i.claims == {"software": "Tool"} for i in prov.items)


def test_invalid_utf8_and_invalid_json(tmp_path):
    bad_utf8 = text_chunk("parameters", A1111_PARAMETERS.encode().replace(b"lighthouse", b"light\xff\xfehouse"), "iTXt")
    read, marked = inspect(tmp_path, png_with(bad_utf8)).items
    assert read.trust == pv.UNSIGNED and read.claims["prompt"].startswith("a light\ufffd\ufffdhouse")
    assert marked.trust == pv.UNREADABLE and "'parameters' is not valid UTF-8" in marked.problems[0]
    for text in ("{not json", "[" * 200_000):
        item = only(inspect(tmp_path, png_with(text_chunk("prompt", text))), "png-text")
        assert item.trust == pv.UNREADABLE and "not valid JSON" in item.problems[0]


def test_garbage_exif_is_unreadable_or_empty_never_a_crash(tmp_path):
    for payload in (b"MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x01" * 64, b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"):
        prov = inspect(tmp_path, png_with(png_chunk(b"eXIf", payload)))
        assert all(i.trust == pv.UNREADABLE for i in prov.items)


# -- metadata against pixels -----------------------------------------------------------------------------


def claim(source="png-text", **claims) -> pv.Provenance:
    return pv.Provenance("p", (pv.Evidence(source, pv.UNSIGNED, claims),))


def test_disagreement_in_attribution():
    sources = ["dalle3", "midjourney", "sdxl"]
    said = claim("c2pa", generator="DALL-E 3")
    assert pv.disagreement(said, "dalle3", sources) is None
    assert "matches source 'dalle3'; pixels say 'midjourney'" in pv.disagreement(said, "midjourney", sources)
    assert "pixels say none of the enrolled sources" in pv.disagreement(claim(generator="Midjourney"), None, sources)
    # a generator occ has no verifier for: consistent with unknown, not with an enrolled source
    assert pv.disagreement(claim(generator="Firefly Image 3"), None, sources) is None
    assert "names generator 'Firefly Image 3'" in pv.disagreement(claim(generator="Firefly Image 3"), "sdxl", sources)
    # the model name carries the match: AUTOMATIC1111 output of an SDXL checkpoint
    a1111 = claim(generator="Stable Diffusion web UI v1.10.1", model="sd_xl_base_1.0")
    assert pv.disagreement(a1111, "sdxl", sources) is None
    # a camera or a capture source type against a generator verdict
    assert "claims a capture (Canon EOS R5)" in pv.disagreement(claim("exif", camera="Canon EOS R5"), "sdxl", sources)
    captured = claim("xmp", digital_source_type="digitalCapture", source_kind="captured")
    assert pv.disagreement(captured, None, sources) is None and pv.disagreement(captured, "sdxl", sources)
    # an editor's name is not a generator claim
    assert pv.disagreement(claim("exif", software="GIMP 2.10"), "sdxl", sources) is None


def test_disagreement_in_verification_and_unreadable_items():
    said = claim(generator="Midjourney v6")
    assert pv.disagreement(said, "midjourney", ["midjourney"]) is None  # accepted
    assert pv.disagreement(said, None, ["midjourney"])  # rejected although the metadata names it
    assert pv.disagreement(said, "dalle3", ["dalle3"])  # accepted as another source
    broken = pv.Provenance("p", (pv.Evidence("xmp", pv.UNREADABLE, problems=("x",)),))
    assert pv.disagreement(broken, "dalle3", ["dalle3"]) is None
