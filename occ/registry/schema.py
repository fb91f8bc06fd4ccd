"""The registry's on-disk schema: file names, format versions and size limits; source names; the
``verifier.json`` record (its checksum and file manifest, checked on every read); tensors to and from
safetensors bytes. Nothing here touches the file system."""

from __future__ import annotations

import errno
import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from occ.errors import RegistryError, UsageError, first_line, one_line

if TYPE_CHECKING:
    import torch


SCHEMA_VERSION = 1
REGISTRY_FORMAT = "occ-registry"
EXPORT_FORMAT = "occ-verifier-export"
EXPORT_FORMAT_VERSION = 1
EXPORT_SUFFIX = ".occ.zip"

REGISTRY_FILE = "registry.json"
LOCK_FILE = ".lock"
CHANGES_FILE = ".changes"  # a new token after every committed write: readers notice changes in one read
STAGING_DIR = ".staging"
SOURCES_DIR = "sources"
CURRENT_FILE = "CURRENT"
META_FILE = "verifier.json"
TENSOR_FILE = "verifier.safetensors"
EXPORT_MANIFEST = "occ-export.json"
EXPORT_MEMBERS = (EXPORT_MANIFEST, META_FILE, TENSOR_FILE)

# Module-level so that tests (and embedding applications) can tune them.
LOCK_TIMEOUT = 60.0  # seconds a writer waits for the registry lock
MAX_META_BYTES = 16 * 2**20  # verifier.json
MAX_TENSOR_BYTES = 256 * 2**20  # verifier.safetensors, on save and on import
MAX_MANIFEST_BYTES = 64 * 2**10  # occ-export.json, registry.json
MAX_EXPORT_MEMBERS = 5
MAX_CENTRAL_DIRECTORY_BYTES = 64 * 2**10
MAX_COMPRESSION_RATIO = 200  # only checked for members over RATIO_CHECK_MIN_BYTES
RATIO_CHECK_MIN_BYTES = 2**20
READ_RETRIES = 20  # how often a reader re-reads CURRENT when a writer replaced the version under it
STALE_SECONDS = 3600.0  # age after which an unlockable, unclaimed staging leftover is removed

REGISTRY_FIELDS = ("schema_version", "name", "files", "checksum")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)
VERSION_RE = re.compile(r"v[0-9a-f]{8,48}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
STAGING_RE = re.compile(r"([0-9a-f]{32})(\.lock|\.pending)?")
ROOT_TMP_RE = re.compile(r"\.registry\.json\.[0-9a-f]{16}\.tmp")
# <root>/joint-<key>.safetensors: the joint model of the lda sources of one backbone (occ.openset), and the
# temporary files it is written through (".joint-<key>.safetensors.<hex>.tmp"; any ".joint-*.tmp" is one)
JOINT_PREFIX = "joint-"
JOINT_RE = re.compile(r"joint-[0-9a-f]{16}\.safetensors")
JOINT_TMP_RE = re.compile(r"\.joint-[A-Za-z0-9._-]*\.tmp")
CHANGES_TMP_RE = re.compile(r"\.changes\.[0-9a-f]{16}\.tmp")
FSYNC_DIR_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR, errno.EACCES, errno.EPERM}
)


# --------------------------------------------------------------------------- messages


def q(value: object) -> str:
    """Quote a name for a message: 'name', with control characters escaped and long values cut."""
    if isinstance(value, str) and len(value) > 80:
        value = value[:77] + "..."
    return repr(value)


def check_version(version: object, newest: int, corrupt: str, newer: str) -> int:
    """A format version read from a file: an int from 1 to ``newest``. Otherwise RegistryError with
    ``corrupt`` (not a positive int) or ``newer`` (written by a newer occ; ``{version}`` is filled in)."""
    if type(version) is not int or version < 1:
        raise registry_error(corrupt)
    if version > newest:
        raise registry_error(newer.format(version=version))
    return version


def registry_error(message: str) -> RegistryError:
    return RegistryError(one_line(message))


def usage_error(message: str) -> UsageError:
    return UsageError(one_line(message))


# --------------------------------------------------------------------------- names


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid source name, else raise :class:`UsageError` saying why.

    Valid: 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit, with no
    ``..``, no trailing ``.`` and no Windows device name (``con``, ``nul``, ``com1`` ...) before the first
    dot. Such a name is always a single, ordinary path component, so it cannot leave the registry folder.
    """
    if not isinstance(name, str):
        raise usage_error(f"invalid source name {q(name)}: it must be a string")
    bad = f"invalid source name {q(name)}"
    if not name:
        raise usage_error(f"{bad}: it is empty")
    if len(name) > 64:
        raise usage_error(f"{bad}: it is longer than 64 characters")
    if name.strip(".") == "":
        raise usage_error(f"{bad}: it consists only of dots")
    if ".." in name:
        raise usage_error(f"{bad}: it contains '..'")
    if not (name[0].isascii() and name[0].isalnum()):
        raise usage_error(f"{bad}: it must start with a letter or a digit")
    if not _NAME_RE.fullmatch(name):
        raise usage_error(f"{bad}: only letters, digits, '.', '_' and '-' are allowed")
    if name.endswith("."):
        raise usage_error(f"{bad}: it must not end with '.'")
    if name.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        raise usage_error(f"{bad}: it is a reserved device name on Windows")
    return name


def is_valid_name(name: object) -> bool:
    try:
        validate_name(name)  # type: ignore[arg-type]
    except UsageError:
        return False
    return True


# --------------------------------------------------------------------------- JSON records


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _checksum(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``record`` without its ``checksum`` key."""
    return hashlib.sha256(_canonical_json({k: v for k, v in record.items() if k != "checksum"})).hexdigest()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


def loads_object(data: bytes) -> dict[str, Any]:
    """Parse ``data`` as a UTF-8 JSON object; ValueError with a one-line reason otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"it is not valid JSON: {first_line(exc)}") from None
    if not isinstance(obj, dict):
        raise ValueError("it is not a JSON object")
    return obj


def verify_record(data: bytes, where: str) -> dict[str, Any]:
    """Parse and check a verifier.json: schema, checksum, file manifest. ``where`` names it in messages."""
    broken = f"{where} was modified or corrupted"
    if len(data) > MAX_META_BYTES:
        raise registry_error(f"{broken} (it is larger than {MAX_META_BYTES} bytes)")
    try:
        record = loads_object(data)
    except ValueError as exc:
        raise registry_error(f"{broken} ({exc})") from None
    # The schema comes before the checksum: a newer occ may checksum differently, and "upgrade occ" is the
    # message that helps there.
    if "schema_version" not in record:
        raise registry_error(f"{broken} (schema_version is missing)")
    schema = record["schema_version"]
    if type(schema) is not int or schema < 1:
        raise registry_error(f"{broken} (schema_version {q(schema)} is not a positive integer)")
    if schema > SCHEMA_VERSION:
        raise registry_error(
            f"{where} was written by a newer occ (schema {schema}, this occ reads up to {SCHEMA_VERSION}); "
            "upgrade occ"
        )
    checksum = record.get("checksum")
    if not isinstance(checksum, str):
        raise registry_error(f"{broken} (checksum missing)")
    try:
        expected = _checksum(record)
    except (ValueError, TypeError, RecursionError):
        expected = None
    if checksum != expected:
        raise registry_error(f"{broken} (checksum mismatch)")
    name = record.get("name")
    if not isinstance(name, str) or not is_valid_name(name):
        raise registry_error(f"{broken} (source name {q(name)} is not valid)")
    files = record.get("files")
    if not isinstance(files, dict) or set(files) != {TENSOR_FILE}:
        raise registry_error(f"{broken} (files must list exactly {TENSOR_FILE})")
    entry = files[TENSOR_FILE]
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("sha256"), str)
        or not _SHA256_RE.fullmatch(entry["sha256"])
        or type(entry.get("bytes")) is not int
        or entry["bytes"] < 0
    ):
        raise registry_error(f"{broken} (the entry for {TENSOR_FILE} needs a sha256 and a byte count)")
    return record


def check_tensor_bytes(data: bytes, record: Mapping[str, Any], where: str) -> None:
    entry = record["files"][TENSOR_FILE]
    if len(data) != entry["bytes"]:
        raise registry_error(
            f"{where} has {len(data)} bytes but {META_FILE} records {entry['bytes']} (truncated or modified)"
        )
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise registry_error(f"{where} was modified or corrupted (sha256 mismatch)")


def parse_tensors(data: bytes, where: str, framework: str = "torch") -> dict[str, torch.Tensor] | dict[str, Any]:
    """The tensors of a safetensors file: torch tensors, or with ``framework="numpy"`` numpy arrays (no
    torch import)."""
    if framework == "numpy":
        from safetensors.numpy import load as safetensors_load
    elif framework == "torch":
        from safetensors.torch import load as safetensors_load
    else:
        raise ValueError(f"unknown tensor framework {framework!r}; choose torch or numpy")
    try:
        return safetensors_load(data)
    except Exception as exc:  # the parser raises its own error types; any of them means "not valid"
        raise registry_error(f"{where} is not a valid safetensors file ({first_line(exc)})") from None


def normalise_meta(name: str, meta: object) -> dict[str, Any]:
    """The JSON form of the caller's metadata, without the registry's own fields."""
    if not isinstance(meta, Mapping):
        raise usage_error(f"metadata for source {q(name)} must be a dict, not {type(meta).__name__}")
    try:
        text = json.dumps(dict(meta), allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        plain = json.loads(text)
    except RecursionError:
        raise usage_error(f"metadata for source {q(name)} is nested too deeply") from None
    except TypeError as exc:
        raise usage_error(
            f"metadata for source {q(name)} is not JSON-serialisable: {first_line(exc)}"
        ) from None
    except ValueError as exc:
        reason = first_line(exc)
        if "Out of range float" in reason:
            reason = "it contains NaN or infinity, which JSON cannot represent"
        raise usage_error(f"metadata for source {q(name)} is not valid JSON: {reason}") from None
    for key in REGISTRY_FIELDS:
        plain.pop(key, None)
    return plain


def build_record(name: str, plain_meta: Mapping[str, Any], tensor_bytes: bytes) -> tuple[dict, bytes]:
    record = dict(plain_meta)
    record["schema_version"] = SCHEMA_VERSION
    record["name"] = name
    record["files"] = {
        TENSOR_FILE: {"sha256": hashlib.sha256(tensor_bytes).hexdigest(), "bytes": len(tensor_bytes)}
    }
    record["checksum"] = _checksum(record)
    data = (json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()
    if len(data) > MAX_META_BYTES:
        raise usage_error(f"metadata for source {q(name)} is larger than {MAX_META_BYTES} bytes")
    return record, data


def serialise_tensors(name: str, tensors: object) -> bytes:
    import torch
    from safetensors.torch import save as safetensors_save

    if not isinstance(tensors, Mapping):
        raise usage_error(f"tensors for source {q(name)} must be a dict of name -> tensor")
    prepared: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    total = 0
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise usage_error(f"tensor names for source {q(name)} must be strings, got {q(key)}")
        if not isinstance(value, torch.Tensor):
            raise usage_error(
                f"tensor {q(key)} of source {q(name)} is a {type(value).__name__}, not a torch.Tensor"
            )
        if value.layout != torch.strided:
            raise usage_error(f"tensor {q(key)} of source {q(name)} is sparse; store it dense")
        try:
            tensor = value.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
            pointer = tensor.untyped_storage().data_ptr()
            if pointer and pointer in storages:  # safetensors refuses tensors that share memory
                tensor = tensor.clone()
                pointer = tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError) as exc:
            raise usage_error(
                f"tensor {q(key)} of source {q(name)} cannot be stored: {first_line(exc)}"
            ) from None
        storages.add(pointer)
        total += tensor.numel() * tensor.element_size()
        prepared[key] = tensor
    if total > MAX_TENSOR_BYTES:
        raise usage_error(
            f"tensors of source {q(name)} take {total} bytes; a verifier may take at most {MAX_TENSOR_BYTES}"
        )
    try:
        return safetensors_save(prepared)
    except Exception as exc:  # dtype the format cannot hold, and the like
        raise usage_error(f"tensors of source {q(name)} cannot be stored: {first_line(exc)}") from None
