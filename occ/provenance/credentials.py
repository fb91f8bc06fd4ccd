"""C2PA content credentials (see :mod:`occ.provenance`; the ``provenance`` extra: ``c2pa-python``, and
``cryptography`` for trust lists): a signed manifest whose signature and content hashes the library
verifies, never reaching the network."""

from __future__ import annotations

import io
import json
from pathlib import Path

from occ.errors import UsageError
from occ.paths import display_path
from occ.provenance.base import (
    DIGITAL_SOURCE_TYPES,
    MAX_PROBLEMS,
    SIGNED_INVALID,
    SIGNED_VALID,
    UNREADABLE,
    Evidence,
    clean,
    put,
    source_type,
)

_MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif",
         b"II*\x00": "image/tiff", b"MM\x00*": "image/tiff"}


# --------------------------------------------------------------------------------------------------------
# C2PA


def c2pa_available() -> bool:
    """Whether the ``provenance`` extra (c2pa-python) is installed."""
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def require_c2pa() -> None:
    if not c2pa_available():
        raise UsageError("a trust list needs C2PA support: pip install 'occ[provenance]'")


def has_c2pa_marker(data: bytes) -> bool:
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
        put(claims, "software", f"{info[0]['name']}" + (f" {version}" if isinstance(version, str) else ""))
    elif isinstance(manifest.get("claim_generator"), str):
        put(claims, "software", manifest["claim_generator"])
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
            source_type(claims, action.get("digitalSourceType"))
            put(claims, "generator" if kind in ("generated", "ai-edited") else "software", agent)
            put(claims, "when", action.get("when"))
        elif kind in ("generated", "ai-edited"):
            put(claims, "generator", agent)
    if actions:
        names = [str(a.get("action", "?")).removeprefix("c2pa.") for a in actions[:10]]
        put(claims, "action", ", ".join(dict.fromkeys(names)))
    sig = manifest.get("signature_info") if isinstance(manifest.get("signature_info"), dict) else {}
    put(claims, "signed_at", sig.get("time"))
    return claims


def load_trust_list(path) -> str:
    """The PEM certificates in the file at ``path`` (trust anchors for C2PA signers), checked to
    parse; raises :class:`UsageError` naming the file otherwise."""
    require_c2pa()
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


class C2paReader:
    """Verifies the C2PA manifest store of image files: one per batch (it holds the validation context,
    made on first use with the user's trust list ``trust_pem``, see :class:`occ.provenance.Inspector`)."""

    def __init__(self, trust_pem: str | None = None):
        self.trust_pem = trust_pem
        self._context = None

    def read(self, data: bytes) -> Evidence | None:
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
                   else clean(exc, 200))
            return Evidence("c2pa", UNREADABLE, problems=(f"cannot verify C2PA data: {why}",))
        return self._item(store, state)

    def _item(self, store: dict, state: str | None) -> Evidence:
        manifests = store.get("manifests") if isinstance(store.get("manifests"), dict) else {}
        manifest = manifests.get(store.get("active_manifest"))
        if not isinstance(manifest, dict):
            return Evidence("c2pa", UNREADABLE, problems=("C2PA manifest store without an active manifest",))
        sig = manifest.get("signature_info") if isinstance(manifest.get("signature_info"), dict) else {}
        name, org = sig.get("common_name"), sig.get("issuer")
        signer = clean(f"{name} ({org})" if name and org else name or org, 200) if (name or org) else None
        results = store.get("validation_results") if isinstance(store.get("validation_results"), dict) else {}
        active = results.get("activeManifest") if isinstance(results.get("activeManifest"), dict) else {}
        failures = active.get("failure")
        if not isinstance(failures, list):  # older stores: a flat validation_status list
            failures = store.get("validation_status") if isinstance(store.get("validation_status"), list) else []
        codes = [f for f in failures if isinstance(f, dict)]
        if self.trust_pem is None:  # no trust list given: "untrusted" says nothing
            codes = [f for f in codes if f.get("code") != "signingCredential.untrusted"]
        problems = tuple(clean(f"{f.get('code')}: {f.get('explanation', '')}".rstrip(": "), 200)
                         for f in codes[:MAX_PROBLEMS])
        trusted = None if self.trust_pem is None else state == "Trusted"
        valid = state in ("Valid", "Trusted") and not problems and trusted is not False
        if not valid and not problems:
            problems = (f"validation state {clean(state, 40)}",)
        return Evidence("c2pa", SIGNED_VALID if valid else SIGNED_INVALID, _c2pa_claims(manifest),
                        signer=signer, trusted=trusted, problems=problems)
