"""The registry: the on-disk store of enrolled verifiers.

Layout (``root`` is :func:`occ.paths.registry_dir`)::

    <root>/
      registry.json                  {"format": "occ-registry", "schema_version": 1}, made by the first write
      .lock                          inter-process writer lock (filelock); readers never take it
      .staging/                      folders of writes in progress; readers ignore it
      sources/<name>/CURRENT         name of the committed version folder, replaced atomically
      sources/<name>/<version>/verifier.safetensors
      sources/<name>/<version>/verifier.json

Crash safety. A write builds its version folder under ``.staging/`` (files and folder fsynced), then,
holding the lock, moves it to ``sources/<name>/<version>`` (a rename on the same filesystem) and swaps
``CURRENT`` with ``os.replace``. Only after ``CURRENT`` names the new version is the old one deleted. A
process killed at any instant therefore leaves either the old version or the new one readable, never a mix;
a source whose first write was interrupted has no ``CURRENT``, is not listed, and is swept by the next
writer, as are abandoned staging folders and unreferenced version folders.

Concurrency. Writers build their staging folder without the registry lock (each holds a lock on its own
staging entry so that a concurrent writer's sweep can tell live staging from abandoned staging) and take
the registry lock only to commit, re-checking under it whether the name exists. Readers never lock: they
read ``CURRENT``, open that version, and if a concurrent writer removed it meanwhile they read ``CURRENT``
again and retry.

Integrity and trust. ``verifier.json`` carries a SHA-256 checksum of its own canonical JSON, plus the
SHA-256 and size of ``verifier.safetensors``; both are checked on every read. This is tamper-*evidence*
against accidental corruption and casual edits (a truncated copy, a flipped bit, a hand-edited threshold),
**not a security boundary**: anyone who can edit the files can recompute the checksums. What loading does
guarantee is that it never runs code from a file: tensors are parsed with ``safetensors`` from the very
bytes that were hashed (never ``torch.load`` or pickle), and imported archives are validated in memory
(member names and types, sizes, compression ratio, checksums, tensor format) before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import filelock

from occ.errors import OccError, RegistryError, UsageError
from occ.paths import registry_dir

if TYPE_CHECKING:
    import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "EXPORT_SUFFIX",
    "SCHEMA_VERSION",
    "Registry",
    "SourceRecord",
    "validate_name",
]

SCHEMA_VERSION = 1
REGISTRY_FORMAT = "occ-registry"
EXPORT_FORMAT = "occ-verifier-export"
EXPORT_FORMAT_VERSION = 1
EXPORT_SUFFIX = ".occ.zip"

REGISTRY_FILE = "registry.json"
LOCK_FILE = ".lock"
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

_REGISTRY_FIELDS = ("schema_version", "name", "files", "checksum")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)
_VERSION_RE = re.compile(r"v[0-9a-f]{8,48}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_STAGING_RE = re.compile(r"([0-9a-f]{32})(\.lock|\.pending)?")
_ROOT_TMP_RE = re.compile(r"\.registry\.json\.[0-9a-f]{16}\.tmp")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FSYNC_DIR_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR, errno.EACCES, errno.EPERM}
)


def _fault_point(step: str) -> None:
    """Marks a named step of a write. A no-op; crash tests replace it to stop a writer at an exact step."""


# --------------------------------------------------------------------------- messages


def _one_line(text: str) -> str:
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], str(text))


def _q(value: object) -> str:
    """Quote a name for a message: 'name', with control characters escaped and long values cut."""
    if isinstance(value, str) and len(value) > 80:
        value = value[:77] + "..."
    return repr(value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else type(exc).__name__
    return first[:200]


def _registry_error(message: str) -> RegistryError:
    return RegistryError(_one_line(message))


def _usage_error(message: str) -> UsageError:
    return UsageError(_one_line(message))


# --------------------------------------------------------------------------- names


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid source name, else raise :class:`UsageError` saying why.

    Valid: 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit, with no
    ``..``, no trailing ``.`` and no Windows device name (``con``, ``nul``, ``com1`` ...) before the first
    dot. Such a name is always a single, ordinary path component, so it cannot leave the registry folder.
    """
    if not isinstance(name, str):
        raise _usage_error(f"invalid source name {_q(name)}: it must be a string")
    bad = f"invalid source name {_q(name)}"
    if not name:
        raise _usage_error(f"{bad}: it is empty")
    if len(name) > 64:
        raise _usage_error(f"{bad}: it is longer than 64 characters")
    if name.strip(".") == "":
        raise _usage_error(f"{bad}: it consists only of dots")
    if ".." in name:
        raise _usage_error(f"{bad}: it contains '..'")
    if not (name[0].isascii() and name[0].isalnum()):
        raise _usage_error(f"{bad}: it must start with a letter or a digit")
    if not _NAME_RE.fullmatch(name):
        raise _usage_error(f"{bad}: only letters, digits, '.', '_' and '-' are allowed")
    if name.endswith("."):
        raise _usage_error(f"{bad}: it must not end with '.'")
    if name.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        raise _usage_error(f"{bad}: it is a reserved device name on Windows")
    return name


def _is_valid_name(name: object) -> bool:
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


def _loads_object(data: bytes) -> dict[str, Any]:
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
        raise ValueError(f"it is not valid JSON: {_reason(exc)}") from None
    if not isinstance(obj, dict):
        raise ValueError("it is not a JSON object")
    return obj


def _verify_record(data: bytes, where: str) -> dict[str, Any]:
    """Parse and check a verifier.json: schema, checksum, file manifest. ``where`` names it in messages."""
    broken = f"{where} was modified or corrupted"
    if len(data) > MAX_META_BYTES:
        raise _registry_error(f"{broken} (it is larger than {MAX_META_BYTES} bytes)")
    try:
        record = _loads_object(data)
    except ValueError as exc:
        raise _registry_error(f"{broken} ({exc})") from None
    # The schema comes before the checksum: a newer occ may checksum differently, and "upgrade occ" is the
    # message that helps there.
    if "schema_version" not in record:
        raise _registry_error(f"{broken} (schema_version is missing)")
    schema = record["schema_version"]
    if type(schema) is not int or schema < 1:
        raise _registry_error(f"{broken} (schema_version {_q(schema)} is not a positive integer)")
    if schema > SCHEMA_VERSION:
        raise _registry_error(
            f"{where} was written by a newer occ (schema {schema}, this occ reads up to {SCHEMA_VERSION}); "
            "upgrade occ"
        )
    checksum = record.get("checksum")
    if not isinstance(checksum, str):
        raise _registry_error(f"{broken} (checksum missing)")
    try:
        expected = _checksum(record)
    except (ValueError, TypeError, RecursionError):
        expected = None
    if checksum != expected:
        raise _registry_error(f"{broken} (checksum mismatch)")
    name = record.get("name")
    if not isinstance(name, str) or not _is_valid_name(name):
        raise _registry_error(f"{broken} (source name {_q(name)} is not valid)")
    files = record.get("files")
    if not isinstance(files, dict) or set(files) != {TENSOR_FILE}:
        raise _registry_error(f"{broken} (files must list exactly {TENSOR_FILE})")
    entry = files[TENSOR_FILE]
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("sha256"), str)
        or not _SHA256_RE.fullmatch(entry["sha256"])
        or type(entry.get("bytes")) is not int
        or entry["bytes"] < 0
    ):
        raise _registry_error(f"{broken} (the entry for {TENSOR_FILE} needs a sha256 and a byte count)")
    return record


def _check_tensor_bytes(data: bytes, record: Mapping[str, Any], where: str) -> None:
    entry = record["files"][TENSOR_FILE]
    if len(data) != entry["bytes"]:
        raise _registry_error(
            f"{where} has {len(data)} bytes but {META_FILE} records {entry['bytes']} (truncated or modified)"
        )
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _registry_error(f"{where} was modified or corrupted (sha256 mismatch)")


def _parse_tensors(data: bytes, where: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as safetensors_load

    try:
        return safetensors_load(data)
    except Exception as exc:  # the parser raises its own error types; any of them means "not valid"
        raise _registry_error(f"{where} is not a valid safetensors file ({_reason(exc)})") from None


def _normalise_meta(name: str, meta: object) -> dict[str, Any]:
    """The JSON form of the caller's metadata, without the registry's own fields."""
    if not isinstance(meta, Mapping):
        raise _usage_error(f"metadata for source {_q(name)} must be a dict, not {type(meta).__name__}")
    try:
        text = json.dumps(dict(meta), allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        plain = json.loads(text)
    except RecursionError:
        raise _usage_error(f"metadata for source {_q(name)} is nested too deeply") from None
    except TypeError as exc:
        raise _usage_error(
            f"metadata for source {_q(name)} is not JSON-serialisable: {_reason(exc)}"
        ) from None
    except ValueError as exc:
        reason = _reason(exc)
        if "Out of range float" in reason:
            reason = "it contains NaN or infinity, which JSON cannot represent"
        raise _usage_error(f"metadata for source {_q(name)} is not valid JSON: {reason}") from None
    for key in _REGISTRY_FIELDS:
        plain.pop(key, None)
    return plain


def _build_record(name: str, plain_meta: Mapping[str, Any], tensor_bytes: bytes) -> tuple[dict, bytes]:
    record = dict(plain_meta)
    record["schema_version"] = SCHEMA_VERSION
    record["name"] = name
    record["files"] = {
        TENSOR_FILE: {"sha256": hashlib.sha256(tensor_bytes).hexdigest(), "bytes": len(tensor_bytes)}
    }
    record["checksum"] = _checksum(record)
    data = (json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()
    if len(data) > MAX_META_BYTES:
        raise _usage_error(f"metadata for source {_q(name)} is larger than {MAX_META_BYTES} bytes")
    return record, data


def _serialise_tensors(name: str, tensors: object) -> bytes:
    import torch
    from safetensors.torch import save as safetensors_save

    if not isinstance(tensors, Mapping):
        raise _usage_error(f"tensors for source {_q(name)} must be a dict of name -> tensor")
    prepared: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    total = 0
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise _usage_error(f"tensor names for source {_q(name)} must be strings, got {_q(key)}")
        if not isinstance(value, torch.Tensor):
            raise _usage_error(
                f"tensor {_q(key)} of source {_q(name)} is a {type(value).__name__}, not a torch.Tensor"
            )
        if value.layout != torch.strided:
            raise _usage_error(f"tensor {_q(key)} of source {_q(name)} is sparse; store it dense")
        try:
            tensor = value.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
            pointer = tensor.untyped_storage().data_ptr()
            if pointer and pointer in storages:  # safetensors refuses tensors that share memory
                tensor = tensor.clone()
                pointer = tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError) as exc:
            raise _usage_error(
                f"tensor {_q(key)} of source {_q(name)} cannot be stored: {_reason(exc)}"
            ) from None
        storages.add(pointer)
        total += tensor.numel() * tensor.element_size()
        prepared[key] = tensor
    if total > MAX_TENSOR_BYTES:
        raise _usage_error(
            f"tensors of source {_q(name)} take {total} bytes; a verifier may take at most {MAX_TENSOR_BYTES}"
        )
    try:
        return safetensors_save(prepared)
    except Exception as exc:  # dtype the format cannot hold, and the like
        raise _usage_error(f"tensors of source {_q(name)} cannot be stored: {_reason(exc)}") from None


# --------------------------------------------------------------------------- files


class _BadFile(Exception):
    """A file that exists but is not a regular file of acceptable size (the message says which)."""

    def __init__(self, reason: str, size: int | None = None) -> None:
        super().__init__(reason)
        self.size = size  # set when the file is a regular file, just too big


def _read_regular(path: Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes (FIFOs, devices and bigger files are refused)."""
    flags = (
        os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    )
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _BadFile("it is not a regular file")
        if info.st_size > limit:
            raise _BadFile(f"it has {info.st_size} bytes, more than the {limit} expected", info.st_size)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _BadFile(f"it has more than the {limit} bytes expected", len(data))
    return data


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data`` fully and fsync it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[: 1 << 24])
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path, *, strict: bool = True) -> None:
    """Make a folder's entries durable. Filesystems that cannot fsync folders are tolerated."""
    if os.name == "nt":  # pragma: no cover - folders cannot be opened on Windows
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if strict and exc.errno not in _FSYNC_DIR_UNSUPPORTED:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if strict and exc.errno not in _FSYNC_DIR_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, tmp_name: str) -> None:
    """Replace ``path`` with ``data`` atomically. After ``os.replace`` nothing raises: the write happened."""
    tmp = path.with_name(tmp_name)
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        _fsync_dir(path.parent, strict=False)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _try_flock(fd: int) -> bool | None:
    """Non-blocking exclusive flock: True if taken, False if another process holds it, None if unsupported."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def _older_than(path: Path, seconds: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime > seconds
    except OSError:
        return True


class _Staging:
    """A private folder ``.staging/<id>/`` in which one write builds its version folder.

    The writer holds an flock on ``.staging/<id>.lock`` for as long as the folder may exist. The lock file
    is created under a temporary name, locked, then renamed into place, so a visible ``<id>.lock`` is
    always locked while its writer lives, and the kernel drops the lock when the writer dies (kill -9
    included). A sweeping writer that can take the lock therefore knows the entry is abandoned.
    """

    def __init__(self, parent: Path) -> None:
        self.ident = secrets.token_hex(16)
        self.path = parent / self.ident
        self.lock_path = parent / f"{self.ident}.lock"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        if fcntl is None:  # pragma: no cover - Windows: no flock; the sweep falls back on age
            self._fd: int | None = os.open(self.lock_path, flags, 0o644)
        else:
            pending = parent / f"{self.ident}.pending"
            fd = os.open(pending, flags, 0o644)
            try:
                _try_flock(fd)  # a file nobody else has seen: this cannot be contended
                os.rename(pending, self.lock_path)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(pending)
                raise
            self._fd = fd
        try:
            os.mkdir(self.path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove what is left of the folder, then the lock file, then release the lock (best effort)."""
        if self._fd is None:
            return
        if os.path.lexists(self.path):
            _remove_tree(self.path)
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def _reap_staging(parent: Path, ident: str, now: float) -> None:
    """Remove staging entry ``ident`` if its writer is gone."""
    folder = parent / ident
    lock_path = parent / f"{ident}.lock"
    try:
        fd: int | None = os.open(lock_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        fd = None
    except OSError:
        return
    try:
        if fd is not None:
            taken = _try_flock(fd)
            if taken is False:
                return  # a live writer
            if taken is None and not _older_than(lock_path, STALE_SECONDS, now):
                return
        elif not _older_than(folder, STALE_SECONDS, now):
            return  # never made by this module's protocol; leave young ones alone
        if os.path.lexists(folder):
            _remove_tree(folder)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
    finally:
        if fd is not None:
            os.close(fd)


# --------------------------------------------------------------------------- export archives

_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"


def _zip_precheck(handle: Any, size: int) -> str | None:
    """Look at a zip's end record before :mod:`zipfile` does; say why it is unacceptable, or None.

    This bounds the work ``zipfile`` does when it reads the central directory (a hostile archive could
    otherwise list millions of entries).
    """
    if size < _EOCD.size:
        return "it is not a zip archive"
    tail_len = min(size, _EOCD.size + 65536)  # the window zipfile searches
    handle.seek(size - tail_len)
    tail = handle.read(tail_len)
    if tail[-_EOCD.size : -_EOCD.size + 4] == _EOCD_SIGNATURE and tail[-2:] == b"\0\0":
        index = len(tail) - _EOCD.size  # the way zipfile finds it: no archive comment
    else:
        index = tail.rfind(_EOCD_SIGNATURE)
        if index < 0 or len(tail) - index < _EOCD.size:
            return "it is not a zip archive"
    _, disk, cd_disk, disk_entries, entries, cd_size, _, _ = _EOCD.unpack_from(tail, index)
    position = size - tail_len + index
    if position >= 20:
        handle.seek(position - 20)
        if handle.read(4) == _ZIP64_LOCATOR_SIGNATURE:
            return "it uses ZIP64, which occ exports never need"
    if disk != 0 or cd_disk != 0 or disk_entries != entries:
        return "it is a multi-part zip archive"
    if entries > MAX_EXPORT_MEMBERS or cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        return f"it has {entries} members; an export has {len(EXPORT_MEMBERS)}"
    return None


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if info.orig_filename != name or "\\" in name or "\0" in name:
        return f"member {_q(info.orig_filename)} has an unsafe name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/"):
        return f"member {_q(name)} has an unsafe name: it points outside the archive"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"member {_q(name)} is a symbolic link"
    if info.is_dir() or (stat.S_IFMT(mode) not in (0, stat.S_IFREG)):
        return f"member {_q(name)} is not a regular file"
    if "/" in name:
        return f"member {_q(name)} is in a folder; an export holds only {', '.join(EXPORT_MEMBERS)}"
    if info.flag_bits & 0x1:
        return f"member {_q(name)} is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"member {_q(name)} uses an unsupported compression method"
    return None


def _member_limit(name: str) -> int:
    """Largest size accepted for an export member (read at call time, so the limits can be tuned)."""
    if name == EXPORT_MANIFEST:
        return MAX_MANIFEST_BYTES
    if name == META_FILE:
        return MAX_META_BYTES
    return MAX_TENSOR_BYTES


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, src: Path) -> bytes:
    limit = _member_limit(info.filename)
    try:
        with archive.open(info) as handle:
            data = handle.read(min(limit, info.file_size) + 1)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        reason = "the archive is damaged or truncated" if isinstance(exc, OSError) else _reason(exc)
        raise _registry_error(
            f"{src} is not a valid occ export (member {_q(info.filename)} cannot be read: {reason})"
        ) from None
    if len(data) != info.file_size or len(data) > limit:
        raise _registry_error(
            f"{src} is not a safe occ export (member {_q(info.filename)} does not hold the size it declares)"
        )
    return data


def _read_export(src: Path) -> tuple[str, dict[str, Any], bytes]:
    """Validate an export archive completely, in memory.

    Returns the exported name, the verified verifier.json and the verified tensor bytes.
    """
    try:
        info = os.stat(src)
    except FileNotFoundError:
        raise _usage_error(f"no such file: {src}") from None
    except OSError as exc:
        raise _usage_error(f"cannot read {src}: {_reason(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _usage_error(f"{src} is not a file")
    largest = MAX_MANIFEST_BYTES + MAX_META_BYTES + MAX_TENSOR_BYTES + MAX_CENTRAL_DIRECTORY_BYTES + 4096
    if info.st_size > largest:
        raise _registry_error(
            f"{src} is not an occ export (it has {info.st_size} bytes, more than any export)"
        )
    try:
        handle = open(src, "rb")  # noqa: SIM115 - closed below, after zipfile is done with it
    except OSError as exc:
        raise _usage_error(f"cannot read {src}: {_reason(exc)}") from None
    with handle:
        problem = _zip_precheck(handle, info.st_size)
        if problem:
            raise _registry_error(f"{src} is not an occ export ({problem})")
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise _registry_error(f"{src} is not an occ export (not a zip archive: {_reason(exc)})") from None
        with archive:
            return _read_export_members(archive, src)


def _read_export_members(archive: zipfile.ZipFile, src: Path) -> tuple[str, dict[str, Any], bytes]:
    unsafe = f"{src} is not a safe occ export"
    infos = archive.infolist()
    if len(infos) > MAX_EXPORT_MEMBERS:
        raise _registry_error(f"{unsafe} (it has {len(infos)} members)")
    members: dict[str, zipfile.ZipInfo] = {}
    for entry in infos:
        problem = _member_problem(entry)
        if problem:
            raise _registry_error(f"{unsafe} ({problem})")
        if entry.filename in members:
            raise _registry_error(f"{unsafe} (member {_q(entry.filename)} appears twice)")
        if entry.filename not in EXPORT_MEMBERS:
            raise _registry_error(f"{unsafe} (unexpected member {_q(entry.filename)})")
        members[entry.filename] = entry
    for expected in EXPORT_MEMBERS:
        if expected not in members:
            raise _registry_error(f"{src} is not a complete occ export (member {_q(expected)} is missing)")
    for entry in members.values():
        limit = _member_limit(entry.filename)
        if entry.file_size > limit:
            raise _registry_error(
                f"{unsafe} (member {_q(entry.filename)} declares {entry.file_size} bytes; "
                f"the limit is {limit})"
            )
        if entry.file_size > RATIO_CHECK_MIN_BYTES and (
            entry.compress_size <= 0 or entry.file_size / entry.compress_size > MAX_COMPRESSION_RATIO
        ):
            raise _registry_error(
                f"{unsafe} (member {_q(entry.filename)} is compressed more than {MAX_COMPRESSION_RATIO}:1, "
                "like a zip bomb)"
            )

    manifest_bytes = _read_member(archive, members[EXPORT_MANIFEST], src)
    try:
        manifest = _loads_object(manifest_bytes)
    except ValueError as exc:
        raise _registry_error(f"{src}: {EXPORT_MANIFEST} is corrupt ({exc})") from None
    if manifest.get("format") != EXPORT_FORMAT:
        raise _registry_error(
            f"{src} is not an occ export ({EXPORT_MANIFEST} has format {_q(manifest.get('format'))})"
        )
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise _registry_error(
            f"{src}: {EXPORT_MANIFEST} is corrupt (format_version {_q(version)} is not valid)"
        )
    if version > EXPORT_FORMAT_VERSION:
        raise _registry_error(
            f"{src} was written by a newer occ (export format {version}, this occ reads up to "
            f"{EXPORT_FORMAT_VERSION}); upgrade occ"
        )
    exported_name = manifest.get("name")
    if not isinstance(exported_name, str) or not _is_valid_name(exported_name):
        raise _registry_error(f"{src}: {EXPORT_MANIFEST} names an invalid source {_q(exported_name)}")

    record = _verify_record(_read_member(archive, members[META_FILE], src), f"{src}: {META_FILE}")
    if record["name"] != exported_name:
        raise _registry_error(
            f"{src}: {META_FILE} belongs to source {_q(record['name'])} but {EXPORT_MANIFEST} names "
            f"{_q(exported_name)}"
        )
    tensor_bytes = _read_member(archive, members[TENSOR_FILE], src)
    _check_tensor_bytes(tensor_bytes, record, f"{src}: {TENSOR_FILE}")
    _parse_tensors(tensor_bytes, f"{src}: {TENSOR_FILE}")
    return exported_name, record, tensor_bytes


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class SourceRecord:
    """One committed source: its name, version folder and verified ``verifier.json`` (registry fields too)."""

    name: str
    version: str
    path: Path
    meta: dict[str, Any]


class _Read(NamedTuple):
    record: SourceRecord
    meta_bytes: bytes
    tensor_bytes: bytes | None


class Registry:
    """The store of enrolled sources under ``root`` (see the module docstring for layout and guarantees)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root: Path = Path(registry_dir(root)).absolute()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    @property
    def _sources(self) -> Path:
        return self.root / SOURCES_DIR

    @property
    def _staging(self) -> Path:
        return self.root / STAGING_DIR

    # ----------------------------------------------------------------- reading (never locks)

    def names(self) -> list[str]:
        """Committed sources, sorted. Cheap: lists folders and checks for ``CURRENT``; reads no tensors."""
        self._read_registry_file()
        try:
            entries = os.listdir(self._sources)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _registry_error(f"cannot read registry {self.root}: {_reason(exc)}") from None
        return sorted(
            n for n in entries if _is_valid_name(n) and os.path.isfile(self._sources / n / CURRENT_FILE)
        )

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not _is_valid_name(name):
            return False
        return name in self.names()  # exact, even on case-insensitive filesystems

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def versions(self) -> dict[str, str | None]:
        """The committed version of every source, ``{name: version}`` (None where ``CURRENT`` cannot be
        read). Cheap (no verifier file is read), so a long-running reader can notice that a source was
        enrolled, replaced or removed by another process."""
        out: dict[str, str | None] = {}
        for name in self.names():
            try:
                out[name] = self._read_current(name)
            except OccError:
                out[name] = None
        return out

    def info(self, name: str) -> SourceRecord:
        """The verified ``verifier.json`` of ``name`` (tensors are not read)."""
        return self._read(name, with_tensors=False).record

    def load(
        self, name: str, expected_fingerprint: str | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata of ``name``, both verified against their checksums.

        With ``expected_fingerprint``, the source must have been enrolled on that backbone.
        """
        read = self._read(name, with_tensors=True)
        record = read.record
        if expected_fingerprint is not None:
            theirs = record.meta.get("backbone_fingerprint")
            if theirs != expected_fingerprint:
                shown = theirs if isinstance(theirs, str) else "(unknown)"
                raise _registry_error(
                    f"source {_q(name)} was enrolled on backbone {shown}; the backbone in use is "
                    f"{expected_fingerprint}; re-enroll it or select that backbone"
                )
        assert read.tensor_bytes is not None
        tensors = _parse_tensors(read.tensor_bytes, f"source {_q(name)}: {record.path / TENSOR_FILE}")
        return tensors, record.meta

    def _read_registry_file(self) -> dict[str, Any] | None:
        path = self.root / REGISTRY_FILE
        try:
            data = _read_regular(path, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise _registry_error(f"registry {self.root} is not a folder") from None
        except _BadFile as exc:
            raise _registry_error(f"{path} is corrupt ({exc})") from None
        except OSError as exc:
            raise _registry_error(f"cannot read {path}: {_reason(exc)}") from None
        try:
            obj = _loads_object(data)
        except ValueError as exc:
            raise _registry_error(f"{path} is corrupt ({exc})") from None
        if obj.get("format") != REGISTRY_FORMAT:
            raise _registry_error(f"{path} is not an occ registry file (format {_q(obj.get('format'))})")
        schema = obj.get("schema_version")
        if type(schema) is not int or schema < 1:
            raise _registry_error(
                f"{path} is corrupt (schema_version {_q(schema)} is not a positive integer)"
            )
        if schema > SCHEMA_VERSION:
            raise _registry_error(
                f"registry {self.root} was written by a newer occ (schema {schema}, this occ reads up to "
                f"{SCHEMA_VERSION}); upgrade occ"
            )
        return obj

    def _read_current(self, name: str) -> str | None:
        """The committed version of ``name``, or None if it has none."""
        path = self._sources / name / CURRENT_FILE
        try:
            data = _read_regular(path, 256)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except _BadFile as exc:
            raise _registry_error(f"source {_q(name)}: {path} is corrupt ({exc})") from None
        except OSError as exc:
            raise _registry_error(f"cannot read {path}: {_reason(exc)}") from None
        version = data.decode("ascii", errors="replace").strip()
        if not _VERSION_RE.fullmatch(version):
            raise _registry_error(f"source {_q(name)}: {path} is corrupt (it does not name a version folder)")
        return version

    def _unknown(self, name: str) -> UsageError:
        message = f"no source named {_q(name)} in registry {self.root}"
        try:
            similar = [n for n in self.names() if n.lower() == name.lower() and n != name]
        except OccError:
            similar = []
        if similar:
            message += f" (did you mean {_q(similar[0])}?)"
        return _usage_error(message)

    def _read(self, name: str, *, with_tensors: bool) -> _Read:
        validate_name(name)
        self._read_registry_file()
        for attempt in range(READ_RETRIES):
            version = self._read_current(name)
            if version is None:
                raise self._unknown(name)
            folder = self._sources / name / version
            try:
                meta_bytes, record = self._read_meta(name, folder)
                tensor_bytes = None
                if with_tensors:
                    path = folder / TENSOR_FILE
                    expected = record["files"][TENSOR_FILE]["bytes"]
                    try:
                        tensor_bytes = _read_regular(path, expected)
                    except _BadFile as exc:
                        if exc.size is None:
                            raise _registry_error(
                                f"source {_q(name)}: {path} was modified or corrupted ({exc})"
                            ) from None
                        raise _registry_error(
                            f"source {_q(name)}: {path} has {exc.size} bytes but {META_FILE} records "
                            f"{expected} (truncated or modified)"
                        ) from None
                    _check_tensor_bytes(tensor_bytes, record, f"source {_q(name)}: {path}")
            except FileNotFoundError as exc:
                # A writer may have replaced the version between our reading CURRENT and the files.
                if self._read_current(name) == version:
                    missing = exc.filename or folder
                    raise _registry_error(f"source {_q(name)}: {missing} is missing") from None
                time.sleep(min(0.001 * 2**attempt, 0.05))
                continue
            except OSError as exc:
                raise _registry_error(f"cannot read source {_q(name)} in {folder}: {_reason(exc)}") from None
            return _Read(SourceRecord(name, version, folder, record), meta_bytes, tensor_bytes)
        raise _registry_error(
            f"source {_q(name)} in registry {self.root} kept changing while being read; try again"
        )

    def _read_meta(self, name: str, folder: Path) -> tuple[bytes, dict[str, Any]]:
        path = folder / META_FILE
        where = f"source {_q(name)}: {path}"
        try:
            data = _read_regular(path, MAX_META_BYTES)
        except _BadFile as exc:
            raise _registry_error(f"{where} was modified or corrupted ({exc})") from None
        record = _verify_record(data, where)
        stored = record["name"]
        if stored != name:
            if stored.lower() == name.lower():  # a case-insensitive filesystem found the other spelling
                raise self._unknown(name)
            raise _registry_error(f"{where} was modified or corrupted (it belongs to source {_q(stored)})")
        return data, record

    # ----------------------------------------------------------------- writing

    def save(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any],
        *,
        replace: bool = False,
    ) -> SourceRecord:
        """Store a verifier as source ``name``. An existing name is refused unless ``replace`` is true.

        ``meta`` must be JSON-serialisable (no NaN or infinity); the registry's own fields
        (``schema_version``, ``name``, ``files``, ``checksum``) are set by the registry and overwrite any
        the caller passes. Tensors are stored as contiguous, dense CPU tensors (the caller's are not changed).
        """
        validate_name(name)
        if not replace and name in self:
            raise self._exists(name)
        plain = _normalise_meta(name, meta)
        tensor_bytes = _serialise_tensors(name, tensors)
        return self._commit(name, tensor_bytes, plain, replace=replace)

    def remove(self, name: str) -> None:
        """Delete source ``name`` (UsageError if there is none)."""
        validate_name(name)
        if name not in self:
            raise self._unknown(name)
        try:
            with self._locked():
                self._read_registry_file()
                if not os.path.lexists(self._sources / name / CURRENT_FILE):
                    raise self._unknown(name)
                self._sweep(keep=None)
                self._staging.mkdir(exist_ok=True)
                trash = self._staging / f"trash-{secrets.token_hex(8)}"
                os.rename(self._sources / name, trash)  # atomic: readers see all of it or none
                _fsync_dir(self._sources, strict=False)
                _remove_tree(trash)
        except OSError as exc:
            raise _registry_error(
                f"cannot write registry {self.root}: {_reason(exc)} (removing source {_q(name)})"
            ) from None

    def export(self, name: str, dest: str | os.PathLike[str], *, replace: bool = False) -> Path:
        """Write source ``name`` to one zip file and return its path.

        ``dest`` is a file path, or an existing folder to write ``<name>.occ.zip`` into. An existing file
        is refused unless ``replace`` is true. The archive holds ``occ-export.json``, ``verifier.json`` and
        ``verifier.safetensors`` (stored uncompressed, byte for byte as in the registry, so the checksums
        travel with it).
        """
        read = self._read(name, with_tensors=True)
        target = Path(dest)
        if target.is_dir():
            target = target / f"{name}{EXPORT_SUFFIX}"
        if os.path.lexists(target) and not replace:
            raise _usage_error(f"{target} already exists; use --replace to overwrite it")
        manifest = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "name": name}
        members = [
            (EXPORT_MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()),
            (META_FILE, read.meta_bytes),
            (TENSOR_FILE, read.tensor_bytes),
        ]
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            try:
                with open(tmp, "xb") as handle:
                    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
                        for member, data in members:
                            entry = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
                            entry.external_attr = (stat.S_IFREG | 0o644) << 16
                            entry.compress_type = zipfile.ZIP_STORED
                            archive.writestr(entry, data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise _registry_error(f"cannot write export {target}: {_reason(exc)}") from None
        with contextlib.suppress(OSError):
            _fsync_dir(target.parent, strict=False)
        return target

    def import_file(
        self, src: str | os.PathLike[str], *, as_name: str | None = None, replace: bool = False
    ) -> SourceRecord:
        """Add the source in export archive ``src`` (under ``as_name`` if given).

        The whole archive is validated in memory first; a bad or hostile archive writes nothing.
        """
        if as_name is not None:
            validate_name(as_name)
        exported_name, record, tensor_bytes = _read_export(Path(src))
        name = as_name if as_name is not None else exported_name
        validate_name(name)
        if not replace and name in self:
            raise self._exists(name)
        plain = {k: v for k, v in record.items() if k not in _REGISTRY_FIELDS}
        return self._commit(name, tensor_bytes, plain, replace=replace)

    def _exists(self, name: str) -> UsageError:
        return _usage_error(f"source {_q(name)} already exists in {self.root}; use --replace to overwrite it")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = filelock.FileLock(str(self.root / LOCK_FILE), timeout=LOCK_TIMEOUT)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise _registry_error(
                f"registry {self.root} is locked by another process (waited {LOCK_TIMEOUT:g} s); try again"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _prepare_root(self) -> None:
        """Check that the root is (or may become) a registry, and create it."""
        if os.path.lexists(self.root) and not self.root.is_dir():
            raise _registry_error(f"registry {self.root} is not a folder")
        if self._read_registry_file() is None and self.root.is_dir():
            foreign = sorted(
                e
                for e in os.listdir(self.root)
                if not e.startswith(".") and e not in (SOURCES_DIR, REGISTRY_FILE)
            )
            if foreign:
                raise _usage_error(
                    f"{self.root} is not an occ registry (it holds {_q(foreign[0])} and no {REGISTRY_FILE}); "
                    "choose an empty or new folder"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(exist_ok=True)

    def _ensure_registry_file(self) -> None:
        if self._read_registry_file() is not None:
            return
        data = (
            json.dumps({"format": REGISTRY_FORMAT, "schema_version": SCHEMA_VERSION}, indent=2) + "\n"
        ).encode()
        _atomic_write(self.root / REGISTRY_FILE, data, f".{REGISTRY_FILE}.{secrets.token_hex(8)}.tmp")

    def _commit(
        self, name: str, tensor_bytes: bytes, plain_meta: Mapping[str, Any], *, replace: bool
    ) -> SourceRecord:
        """Write a new version of ``name`` (see the module docstring for the protocol)."""
        record, meta_bytes = _build_record(name, plain_meta, tensor_bytes)
        staging: _Staging | None = None
        try:
            self._prepare_root()
            staging = _Staging(self._staging)
            _fault_point("staging-created")
            _write_file(staging.path / TENSOR_FILE, tensor_bytes)
            _fault_point("tensors-written")
            _write_file(staging.path / META_FILE, meta_bytes)
            _fsync_dir(staging.path)
            _fault_point("meta-written")
            with self._locked():
                _fault_point("locked")
                self._ensure_registry_file()
                self._sweep(keep=staging.ident)
                for existing in self.names():
                    if existing != name and existing.lower() == name.lower():
                        raise _usage_error(
                            f"source {_q(name)} differs only in letter case from existing source "
                            f"{_q(existing)}; some systems cannot tell them apart, so choose another name"
                        )
                folder = self._sources / name
                if os.path.lexists(folder / CURRENT_FILE) and not replace:
                    raise self._exists(name)
                if not folder.is_dir():
                    self._sources.mkdir(exist_ok=True)
                    folder.mkdir()
                    _fsync_dir(self._sources)
                version = self._new_version(folder)
                target = folder / version
                os.rename(staging.path, target)
                try:
                    _fsync_dir(folder)
                    _fault_point("moved")
                    # Writes CURRENT under a temporary name, fsyncs it, then os.replace: the commit point.
                    tmp_name = f".{CURRENT_FILE}.{secrets.token_hex(8)}.tmp"
                    _write_file(folder / tmp_name, (version + "\n").encode())
                    _fault_point("current-written")
                    try:
                        os.replace(folder / tmp_name, folder / CURRENT_FILE)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.unlink(folder / tmp_name)
                        raise
                except BaseException:
                    _remove_tree(target)  # not committed: the previous version stays current
                    raise
                # Committed. Nothing below may raise: the write has happened.
                with contextlib.suppress(OSError):
                    _fsync_dir(folder, strict=False)
                _fault_point("current-replaced")
                self._drop_other_versions(folder, version)
                _fault_point("cleaned")
            return SourceRecord(name, version, target, record)
        except OSError as exc:
            raise _registry_error(
                f"cannot write registry {self.root}: {_reason(exc)} (saving source {_q(name)})"
            ) from None
        finally:
            if staging is not None:
                staging.close()

    @staticmethod
    def _new_version(folder: Path) -> str:
        while True:
            version = f"v{time.time_ns():016x}{secrets.token_hex(4)}"
            if not os.path.lexists(folder / version):
                return version

    # ----------------------------------------------------------------- sweeping (writers, under the lock)

    def _discard(self, path: Path) -> None:
        """Make ``path`` vanish atomically (rename into .staging), then delete it. Best effort."""
        trash = self._staging / f"trash-{secrets.token_hex(8)}"
        try:
            os.rename(path, trash)
        except OSError:
            trash = path
        _remove_tree(trash)

    def _drop_other_versions(self, folder: Path, keep: str) -> None:
        try:
            entries = os.listdir(folder)
        except OSError:
            return
        for entry in entries:
            if entry not in (CURRENT_FILE, keep):
                self._discard(folder / entry)

    def _sweep(self, keep: str | None) -> None:
        """Remove what crashed or failed writers left behind. Must hold the lock. Never raises."""
        now = time.time()
        with contextlib.suppress(OSError):
            for entry in os.listdir(self.root):
                if _ROOT_TMP_RE.fullmatch(entry):
                    _remove_tree(self.root / entry)
        try:
            entries = os.listdir(self._staging)
        except OSError:
            entries = []
        idents = set()
        for entry in entries:
            if entry.startswith("trash-"):
                _remove_tree(self._staging / entry)
                continue
            match = _STAGING_RE.fullmatch(entry)
            if not match or match.group(1) == keep:
                continue
            if match.group(2) == ".pending":
                if _older_than(self._staging / entry, STALE_SECONDS, now):
                    _remove_tree(self._staging / entry)
                continue
            idents.add(match.group(1))
        for ident in idents:
            _reap_staging(self._staging, ident, now)
        try:
            sources = os.listdir(self._sources)
        except OSError:
            sources = []
        for entry in sources:
            folder = self._sources / entry
            if not _is_valid_name(entry) or folder.is_symlink() or not folder.is_dir():
                continue
            if not os.path.lexists(folder / CURRENT_FILE):
                self._discard(folder)  # a first write that never committed
                continue
            try:
                version = self._read_current(entry)
            except RegistryError:
                continue  # damaged: leave it for the user to inspect
            if version is not None and (folder / version).is_dir():
                self._drop_other_versions(folder, version)
