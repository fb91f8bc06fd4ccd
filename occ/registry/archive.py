"""Export archives (``<name>.occ.zip``): writing one, and validating one completely in memory before
anything is imported (member names and types, sizes, compression ratio, checksums, tensor format)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occ.errors import first_line
from occ.registry import schema
from occ.registry.files import fsync_dir
from occ.registry.schema import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    EXPORT_MANIFEST,
    EXPORT_MEMBERS,
    META_FILE,
    TENSOR_FILE,
    check_tensor_bytes,
    check_version,
    is_valid_name,
    loads_object,
    parse_tensors,
    q,
    registry_error,
    usage_error,
    verify_record,
)

if TYPE_CHECKING:
    pass


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
    if entries > schema.MAX_EXPORT_MEMBERS or cd_size > schema.MAX_CENTRAL_DIRECTORY_BYTES:
        return f"it has {entries} members; an export has {len(EXPORT_MEMBERS)}"
    return None


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if info.orig_filename != name or "\\" in name or "\0" in name:
        return f"member {q(info.orig_filename)} has an unsafe name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/"):
        return f"member {q(name)} has an unsafe name: it points outside the archive"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"member {q(name)} is a symbolic link"
    if info.is_dir() or (stat.S_IFMT(mode) not in (0, stat.S_IFREG)):
        return f"member {q(name)} is not a regular file"
    if "/" in name:
        return f"member {q(name)} is in a folder; an export holds only {', '.join(EXPORT_MEMBERS)}"
    if info.flag_bits & 0x1:
        return f"member {q(name)} is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"member {q(name)} uses an unsupported compression method"
    return None


def _member_limit(name: str) -> int:
    """Largest size accepted for an export member (read at call time, so the limits can be tuned)."""
    if name == EXPORT_MANIFEST:
        return schema.MAX_MANIFEST_BYTES
    if name == META_FILE:
        return schema.MAX_META_BYTES
    return schema.MAX_TENSOR_BYTES


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
        reason = "the archive is damaged or truncated" if isinstance(exc, OSError) else first_line(exc)
        raise registry_error(
            f"{src} is not a valid occ export (member {q(info.filename)} cannot be read: {reason})"
        ) from None
    if len(data) != info.file_size or len(data) > limit:
        raise registry_error(
            f"{src} is not a safe occ export (member {q(info.filename)} does not hold the size it declares)"
        )
    return data


def read_export(src: Path) -> tuple[str, dict[str, Any], bytes]:
    """Validate an export archive completely, in memory.

    Returns the exported name, the verified verifier.json and the verified tensor bytes.
    """
    try:
        info = os.stat(src)
    except FileNotFoundError:
        raise usage_error(f"no such file: {src}") from None
    except OSError as exc:
        raise usage_error(f"cannot read {src}: {first_line(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise usage_error(f"{src} is not a file")
    largest = (schema.MAX_MANIFEST_BYTES + schema.MAX_META_BYTES + schema.MAX_TENSOR_BYTES
               + schema.MAX_CENTRAL_DIRECTORY_BYTES + 4096)
    if info.st_size > largest:
        raise registry_error(
            f"{src} is not an occ export (it has {info.st_size} bytes, more than any export)"
        )
    try:
        handle = open(src, "rb")  # noqa: SIM115 - closed below, after zipfile is done with it
    except OSError as exc:
        raise usage_error(f"cannot read {src}: {first_line(exc)}") from None
    with handle:
        problem = _zip_precheck(handle, info.st_size)
        if problem:
            raise registry_error(f"{src} is not an occ export ({problem})")
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise registry_error(f"{src} is not an occ export (not a zip archive: {first_line(exc)})") from None
        with archive:
            return _read_export_members(archive, src)


def _read_export_members(archive: zipfile.ZipFile, src: Path) -> tuple[str, dict[str, Any], bytes]:
    unsafe = f"{src} is not a safe occ export"
    infos = archive.infolist()
    if len(infos) > schema.MAX_EXPORT_MEMBERS:
        raise registry_error(f"{unsafe} (it has {len(infos)} members)")
    members: dict[str, zipfile.ZipInfo] = {}
    for entry in infos:
        problem = _member_problem(entry)
        if problem:
            raise registry_error(f"{unsafe} ({problem})")
        if entry.filename in members:
            raise registry_error(f"{unsafe} (member {q(entry.filename)} appears twice)")
        if entry.filename not in EXPORT_MEMBERS:
            raise registry_error(f"{unsafe} (unexpected member {q(entry.filename)})")
        members[entry.filename] = entry
    for expected in EXPORT_MEMBERS:
        if expected not in members:
            raise registry_error(f"{src} is not a complete occ export (member {q(expected)} is missing)")
    for entry in members.values():
        limit = _member_limit(entry.filename)
        if entry.file_size > limit:
            raise registry_error(
                f"{unsafe} (member {q(entry.filename)} declares {entry.file_size} bytes; "
                f"the limit is {limit})"
            )
        if entry.file_size > schema.RATIO_CHECK_MIN_BYTES and (
            entry.compress_size <= 0 or entry.file_size / entry.compress_size > schema.MAX_COMPRESSION_RATIO
        ):
            raise registry_error(
                f"{unsafe} (member {q(entry.filename)} is compressed more than {schema.MAX_COMPRESSION_RATIO}:1, "
                "like a zip bomb)"
            )

    manifest_bytes = _read_member(archive, members[EXPORT_MANIFEST], src)
    try:
        manifest = loads_object(manifest_bytes)
    except ValueError as exc:
        raise registry_error(f"{src}: {EXPORT_MANIFEST} is corrupt ({exc})") from None
    if manifest.get("format") != EXPORT_FORMAT:
        raise registry_error(
            f"{src} is not an occ export ({EXPORT_MANIFEST} has format {q(manifest.get('format'))})"
        )
    version = manifest.get("format_version")
    check_version(version, EXPORT_FORMAT_VERSION,
                  f"{src}: {EXPORT_MANIFEST} is corrupt (format_version {q(version)} is not valid)",
                  f"{src} was written by a newer occ (export format {{version}}, this occ reads up to "
                  f"{EXPORT_FORMAT_VERSION}); upgrade occ")
    exported_name = manifest.get("name")
    if not isinstance(exported_name, str) or not is_valid_name(exported_name):
        raise registry_error(f"{src}: {EXPORT_MANIFEST} names an invalid source {q(exported_name)}")

    record = verify_record(_read_member(archive, members[META_FILE], src), f"{src}: {META_FILE}")
    if record["name"] != exported_name:
        raise registry_error(
            f"{src}: {META_FILE} belongs to source {q(record['name'])} but {EXPORT_MANIFEST} names "
            f"{q(exported_name)}"
        )
    tensor_bytes = _read_member(archive, members[TENSOR_FILE], src)
    check_tensor_bytes(tensor_bytes, record, f"{src}: {TENSOR_FILE}")
    parse_tensors(tensor_bytes, f"{src}: {TENSOR_FILE}")
    return exported_name, record, tensor_bytes


def write_export(target: Path, name: str, meta_bytes: bytes, tensor_bytes: bytes,
                 decision: dict[str, Any] | None = None) -> None:
    """Write the export archive of source ``name`` to ``target`` (atomically: a temporary file, fsynced,
    then renamed). Members are stored uncompressed, byte for byte, so the checksums travel with them.
    ``decision`` (what decided the source where it was exported) goes into the manifest as it is."""
    manifest = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "name": name}
    if decision is not None:
        manifest["decision"] = dict(decision)
    members = [
        (EXPORT_MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()),
        (META_FILE, meta_bytes),
        (TENSOR_FILE, tensor_bytes),
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
        raise registry_error(f"cannot write export {target}: {first_line(exc)}") from None
    with contextlib.suppress(OSError):
        fsync_dir(target.parent, strict=False)
