"""Build files with provenance metadata at test time: C2PA manifests signed with a throwaway
certificate chain (made here with ``cryptography``), XMP packets, the PNG text chunks AUTOMATIC1111 and
ComfyUI write, EXIF. Nothing binary is committed."""

from __future__ import annotations

import datetime
import io
import json
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

from occ.testing.imagegen import PNG_SIGNATURE, encode, pattern_image, png_chunk

IPTC_DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"


# -- certificates and C2PA signing ------------------------------------------------------------------------


@dataclass
class Chain:
    root_pem: bytes  # the trust anchor
    chain_pem: bytes  # leaf then intermediate: what the signer embeds
    key_pem: bytes  # the leaf's private key


def make_chain(leaf_name: str = "Test Signer", org: str = "Test Org", *, leaf_seconds: float | None = None) -> Chain:
    """Root CA -> intermediate CA -> signing leaf (ES256, e-mail protection EKU, as C2PA's certificate
    profile asks). ``leaf_seconds`` makes a leaf that expires that many seconds from now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])

    def cert(subject, key, issuer, issuer_key, ca, until):
        usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                     encipher_only=False, decipher_only=False)
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(until)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage),
                                  critical=True))
        if not ca:
            usages = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
            builder = builder.add_extension(usages, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    year = now + datetime.timedelta(days=365)
    root = cert(f"{org} Root CA", root_key, f"{org} Root CA", root_key, True, year)
    inter = cert(f"{org} Intermediate CA", inter_key, f"{org} Root CA", root_key, True, year)
    until = now + datetime.timedelta(seconds=leaf_seconds) if leaf_seconds is not None else year
    leaf = cert(leaf_name, leaf_key, f"{org} Intermediate CA", inter_key, False, until)
    pem = serialization.Encoding.PEM
    return Chain(root.public_bytes(pem), leaf.public_bytes(pem) + inter.public_bytes(pem),
                 leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def created_manifest(agent: str = "DALL-E 3", app: str = "ChatGPT",
                     source_type: str = "trainedAlgorithmicMedia") -> dict:
    """A manifest whose one action says ``agent`` created the image (``source_type`` from IPTC)."""
    return {"claim_generator_info": [{"name": app, "version": "1.0"}], "title": "image",
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": IPTC_DST + source_type,
                "softwareAgent": {"name": agent}, "when": "2026-11-30T10:00:00Z"}]}}]}


def c2pa_sign(data: bytes, mime: str, chain: Chain, manifest: dict | None = None,
              remote_url: str | None = None) -> bytes:
    """``data`` with a C2PA manifest signed by ``chain``'s leaf (real c2pa-python), embedded, or with
    ``remote_url`` only referenced from the file's XMP (the manifest itself is not kept)."""
    import c2pa

    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain.chain_pem, chain.key_pem, None))
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    builder = c2pa.Builder(manifest or created_manifest(), context=context)
    if remote_url is not None:
        builder.set_no_embed()
        builder.set_remote_url(remote_url)
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


# -- PNG chunks -------------------------------------------------------------------------------------------


def text_chunk(key: str, text: str | bytes, kind: str = "tEXt") -> bytes:
    """A tEXt (Latin-1), zTXt (compressed Latin-1) or iTXt (UTF-8; bytes are written as given) chunk."""
    keyword = key.encode("latin-1") + b"\x00"
    if kind == "tEXt":
        return png_chunk(b"tEXt", keyword + (text if isinstance(text, bytes) else text.encode("latin-1")))
    if kind == "zTXt":
        raw = text if isinstance(text, bytes) else text.encode("latin-1")
        return png_chunk(b"zTXt", keyword + b"\x00" + zlib.compress(raw))
    raw = text if isinstance(text, bytes) else text.encode("utf-8")
    return png_chunk(b"iTXt", keyword + b"\x00\x00" + b"\x00" + b"\x00" + raw)


def png_with(*chunks: bytes, after_idat: tuple[bytes, ...] = (), image: Image.Image | None = None) -> bytes:
    """A real PNG with extra chunks inserted after IHDR (and optionally after the image data)."""
    data = encode(image or pattern_image(64, 48), "PNG")
    ihdr_end = len(PNG_SIGNATURE) + 25
    iend = data.rindex(b"IEND") - 4
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:iend] + b"".join(after_idat) + data[iend:]


def replace_pixels(png: bytes, image: Image.Image) -> bytes:
    """``png`` with its image data (IDAT) replaced by ``image``'s, every other chunk (metadata, C2PA
    manifest) kept in place: an edit after signing."""
    fresh = encode(image, "PNG")
    new_idat = b"".join(_chunks(fresh, b"IDAT"))
    out, pos, done = [png[:8]], 8, False
    while pos < len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        end = pos + 12 + length
        if kind == b"IDAT":
            if not done:
                out.append(new_idat)
                done = True
        else:
            out.append(png[pos:end])
        pos = end
    return b"".join(out)


def _chunks(png: bytes, kind: bytes) -> list[bytes]:
    found, pos = [], 8
    while pos < len(png):
        length, k = struct.unpack_from(">I4s", png, pos)
        if k == kind:
            found.append(png[pos : pos + 12 + length])
        pos += 12 + length
    return found


# -- XMP, generator metadata, EXIF ------------------------------------------------------------------------


def xmp_packet(source_type: str | None = None, *, creator_tool: str | None = None, ai_system: str | None = None,
               as_attribute: bool = False) -> bytes:
    """An XMP packet as Adobe and IPTC tools write it: DigitalSourceType as an element (or, with
    ``as_attribute``, in rdf:Description's short form)."""
    attrs, elems = [], []
    if source_type is not None:
        value = IPTC_DST + source_type
        if as_attribute:
            attrs.append(f'Iptc4xmpExt:DigitalSourceType="{value}"')
        else:
            elems.append(f"<Iptc4xmpExt:DigitalSourceType>{value}</Iptc4xmpExt:DigitalSourceType>")
    if creator_tool is not None:
        elems.append(f"<xmp:CreatorTool>{creator_tool}</xmp:CreatorTool>")
    if ai_system is not None:
        elems.append(f"<Iptc4xmpExt:AISystemUsed>{ai_system}</Iptc4xmpExt:AISystemUsed>")
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" {" ".join(attrs)}>{"".join(elems)}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode()


A1111_PARAMETERS = (
    "a lighthouse on a cliff at dawn, oil painting, highly detailed\n"
    "Negative prompt: blurry, lowres, watermark\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 832x1216, "
    'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "detail: 62a5f0a1, style: 0c1f4b2e", '
    "Version: v1.10.1"
)
"""Generation parameters as AUTOMATIC1111's web UI writes them (PNG text chunk "parameters")."""


def comfy_prompt() -> str:
    """ComfyUI's API-format graph (PNG text chunk "prompt"): node id -> class_type and inputs, links as
    [node id, output index]."""
    return json.dumps({
        "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
                                                    "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                    "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "purple galaxy bottle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    })


def comfy_workflow() -> str:
    """ComfyUI's UI-format graph (PNG text chunk "workflow"): nodes with widget values."""
    return json.dumps({"last_node_id": 9, "last_link_id": 9, "version": 0.4, "links": [], "groups": [],
                       "nodes": [
                           {"id": 4, "type": "CheckpointLoaderSimple", "pos": [26, 474], "size": [315, 98],
                            "widgets_values": ["v1-5-pruned-emaonly.safetensors"]},
                           {"id": 3, "type": "KSampler", "pos": [863, 186], "size": [315, 262],
                            "widgets_values": [156680208700286, "randomize", 20, 8, "euler", "normal", 1]},
                       ]})


def exif_with(software: str | None = None, make: str | None = None, model: str | None = None,
              user_comment: bytes | None = None) -> Image.Exif:
    """A Pillow Exif with Software / Make / Model (IFD0) and UserComment (Exif IFD) as given."""
    exif = Image.Exif()
    for tag, value in ((0x0131, software), (0x010F, make), (0x0110, model)):
        if value is not None:
            exif[tag] = value
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = user_comment
    return exif
