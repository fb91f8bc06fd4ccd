"""The store: :class:`Registry`, its reads (which never lock) and its crash-safe writes (see
:mod:`occ.registry` for the protocol), each followed by the refit of the registry's joint model
(:func:`occ.openset.after_change`: the store reads no verifier's keys, the joint model does)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import filelock

from occ.errors import OccError, RegistryError, UsageError, first_line
from occ.openset import after_change
from occ.paths import registry_dir
from occ.registry import files, schema
from occ.registry.archive import read_export, write_export
from occ.registry.files import (
    BadFile,
    Staging,
    atomic_write,
    fsync_dir,
    older_than,
    reap_staging,
    remove_tree,
    write_file,
)
from occ.registry.schema import (
    CHANGES_FILE,
    CHANGES_TMP_RE,
    CURRENT_FILE,
    EXPORT_SUFFIX,
    JOINT_PREFIX,
    JOINT_RE,
    JOINT_TMP_RE,
    LOCK_FILE,
    META_FILE,
    REGISTRY_FIELDS,
    REGISTRY_FILE,
    REGISTRY_FORMAT,
    ROOT_TMP_RE,
    SCHEMA_VERSION,
    SOURCES_DIR,
    STAGING_DIR,
    STAGING_RE,
    TENSOR_FILE,
    VERSION_RE,
    build_record,
    check_tensor_bytes,
    check_version,
    is_valid_name,
    loads_object,
    normalise_meta,
    parse_tensors,
    q,
    registry_error,
    serialise_tensors,
    usage_error,
    validate_name,
    verify_record,
)

if TYPE_CHECKING:
    import torch

    from occ.openset import RefitOptions

    Refit = RefitOptions | Literal[False] | None


def _fault_point(step: str) -> None:
    """Marks a named step of a write. A no-op; crash tests replace it to stop a writer at an exact step."""


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
            raise registry_error(f"cannot read registry {self.root}: {first_line(exc)}") from None
        return sorted(
            n for n in entries if is_valid_name(n) and os.path.isfile(self._sources / n / CURRENT_FILE)
        )

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not is_valid_name(name):
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

    def changes(self) -> str | None:
        """The random token in the registry's ``.changes`` file (None when there is none or it cannot be
        read): a new one after every committed write. One small read, where :meth:`versions` reads a file
        per source (80 ms at 1,000 sources), so a long-running reader can check it on every request and
        call :meth:`versions` only when it changed (and now and then all the same: a writer that crashed
        between its commit and the stamp leaves it as it was)."""
        try:
            return files.read_regular(self.root / CHANGES_FILE, 256).decode("ascii", errors="replace").strip()
        except (OSError, BadFile):
            return None

    def _stamp_changes(self) -> None:
        """Replace ``.changes`` with a new token (under the lock, after a commit). Never raises: the
        write it follows has happened, and readers also check :meth:`versions` now and then."""
        token = secrets.token_hex(16)
        with contextlib.suppress(OSError):
            atomic_write(self.root / CHANGES_FILE, (token + "\n").encode(), f"{CHANGES_FILE}.{token[:16]}.tmp")

    def info(self, name: str) -> SourceRecord:
        """The verified ``verifier.json`` of ``name`` (tensors are not read)."""
        return self._read(name, with_tensors=False).record

    def load(self, name: str, framework: str = "torch") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata of ``name``, both verified against their checksums. Which backbone the
        source needs is the verifier's business (:func:`occ.verifier.check_backbone`), not the store's.
        ``framework="numpy"``: the tensors as numpy arrays, without importing torch."""
        record, tensors = self.load_record(name, framework)
        return tensors, record.meta

    def load_record(self, name: str, framework: str = "torch") -> tuple[SourceRecord, dict[str, Any]]:
        """:meth:`load` with the whole record (version folder included), from one read of the source."""
        read = self._read(name, with_tensors=True)
        assert read.tensor_bytes is not None
        where = f"source {q(name)}: {read.record.path / TENSOR_FILE}"
        return read.record, parse_tensors(read.tensor_bytes, where, framework)

    def _read_registry_file(self) -> dict[str, Any] | None:
        path = self.root / REGISTRY_FILE
        try:
            data = files.read_regular(path, schema.MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise registry_error(f"registry {self.root} is not a folder") from None
        except BadFile as exc:
            raise registry_error(f"{path} is corrupt ({exc})") from None
        except OSError as exc:
            raise registry_error(f"cannot read {path}: {first_line(exc)}") from None
        try:
            obj = loads_object(data)
        except ValueError as exc:
            raise registry_error(f"{path} is corrupt ({exc})") from None
        if obj.get("format") != REGISTRY_FORMAT:
            raise registry_error(f"{path} is not an occ registry file (format {q(obj.get('format'))})")
        version = obj.get("schema_version")
        check_version(version, SCHEMA_VERSION,
                      f"{path} is corrupt (schema_version {q(version)} is not a positive integer)",
                      f"registry {self.root} was written by a newer occ (schema {{version}}, this occ reads up "
                      f"to {SCHEMA_VERSION}); upgrade occ")
        return obj

    def _read_current(self, name: str) -> str | None:
        """The committed version of ``name``, or None if it has none."""
        path = self._sources / name / CURRENT_FILE
        try:
            data = files.read_regular(path, 256)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except BadFile as exc:
            raise registry_error(f"source {q(name)}: {path} is corrupt ({exc})") from None
        except OSError as exc:
            raise registry_error(f"cannot read {path}: {first_line(exc)}") from None
        version = data.decode("ascii", errors="replace").strip()
        if not VERSION_RE.fullmatch(version):
            raise registry_error(f"source {q(name)}: {path} is corrupt (it does not name a version folder)")
        return version

    def _unknown(self, name: str) -> UsageError:
        message = f"no source named {q(name)} in registry {self.root}"
        try:
            similar = [n for n in self.names() if n.lower() == name.lower() and n != name]
        except OccError:
            similar = []
        if similar:
            message += f" (did you mean {q(similar[0])}?)"
        return usage_error(message)

    def _read(self, name: str, *, with_tensors: bool) -> _Read:
        validate_name(name)
        self._read_registry_file()
        for attempt in range(schema.READ_RETRIES):
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
                        tensor_bytes = files.read_regular(path, expected)
                    except BadFile as exc:
                        if exc.size is None:
                            raise registry_error(
                                f"source {q(name)}: {path} was modified or corrupted ({exc})"
                            ) from None
                        raise registry_error(
                            f"source {q(name)}: {path} has {exc.size} bytes but {META_FILE} records "
                            f"{expected} (truncated or modified)"
                        ) from None
                    check_tensor_bytes(tensor_bytes, record, f"source {q(name)}: {path}")
            except FileNotFoundError as exc:
                # A writer may have replaced the version between our reading CURRENT and the files.
                if self._read_current(name) == version:
                    missing = exc.filename or folder
                    raise registry_error(f"source {q(name)}: {missing} is missing") from None
                time.sleep(min(0.001 * 2**attempt, 0.05))
                continue
            except OSError as exc:
                raise registry_error(f"cannot read source {q(name)} in {folder}: {first_line(exc)}") from None
            return _Read(SourceRecord(name, version, folder, record), meta_bytes, tensor_bytes)
        raise registry_error(
            f"source {q(name)} in registry {self.root} kept changing while being read; try again"
        )

    def _read_meta(self, name: str, folder: Path) -> tuple[bytes, dict[str, Any]]:
        path = folder / META_FILE
        where = f"source {q(name)}: {path}"
        try:
            data = files.read_regular(path, schema.MAX_META_BYTES)
        except BadFile as exc:
            raise registry_error(f"{where} was modified or corrupted ({exc})") from None
        record = verify_record(data, where)
        stored = record["name"]
        if stored != name:
            if stored.lower() == name.lower():  # a case-insensitive filesystem found the other spelling
                raise self._unknown(name)
            raise registry_error(f"{where} was modified or corrupted (it belongs to source {q(stored)})")
        return data, record

    # ----------------------------------------------------------------- writing

    def save(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any],
        *,
        replace: bool = False,
        refit: Refit = None,
    ) -> SourceRecord:
        """Store a verifier as source ``name``. An existing name is refused unless ``replace`` is true.

        ``meta`` must be JSON-serialisable (no NaN or infinity); the registry's own fields
        (``schema_version``, ``name``, ``files``, ``checksum``) are set by the registry and overwrite any
        the caller passes. Tensors are stored as contiguous, dense CPU tensors (the caller's are not changed).

        ``refit``, here and in every write: how the joint model is refitted after the change
        (:class:`occ.openset.RefitOptions`; None: the defaults), or False for a caller that brings it in
        line itself (:func:`occ.sources.set_threshold`).
        """
        validate_name(name)
        if not replace and name in self:
            raise self._exists(name)
        plain = normalise_meta(name, meta)
        tensor_bytes = serialise_tensors(name, tensors)
        return self._commit(name, tensor_bytes, plain, replace=replace, refit=refit)

    def store(self, name: str, folder: str | os.PathLike[str], *, replace: bool = False,
              refit: Refit = None) -> SourceRecord:
        """Store the verifier folder ``folder`` (``verifier.json`` + ``verifier.safetensors``, as
        :meth:`occ.verifier.Verifier.save` writes it) as source ``name``, with the same checks as :meth:`save`.
        The registry reads neither file's keys: it checks the JSON is an object and the tensors parse."""
        folder = Path(folder)
        try:
            meta_bytes = files.read_regular(folder / META_FILE, schema.MAX_META_BYTES)
            tensor_bytes = files.read_regular(folder / TENSOR_FILE, schema.MAX_TENSOR_BYTES)
        except (OSError, BadFile) as exc:
            raise usage_error(f"cannot read verifier folder {folder}: {first_line(exc)}") from None
        try:
            meta = loads_object(meta_bytes)
        except ValueError as exc:
            raise usage_error(f"{folder / META_FILE} is not valid ({exc})") from None
        parse_tensors(tensor_bytes, str(folder / TENSOR_FILE))
        validate_name(name)
        if not replace and name in self:
            raise self._exists(name)
        return self._commit(name, tensor_bytes, normalise_meta(name, meta), replace=replace, refit=refit)

    def remove(self, name: str, *, refit: Refit = None) -> None:
        """Delete source ``name`` (UsageError if there is none), then refit the joint model without it."""
        validate_name(name)
        if name not in self:
            raise self._unknown(name)
        before = self._meta_or_none(name)
        try:
            with self._locked():
                self._read_registry_file()
                if not os.path.lexists(self._sources / name / CURRENT_FILE):
                    raise self._unknown(name)
                self._sweep(keep=None)
                self._staging.mkdir(exist_ok=True)
                trash = self._staging / f"trash-{secrets.token_hex(8)}"
                os.rename(self._sources / name, trash)  # atomic: readers see all of it or none
                fsync_dir(self._sources, strict=False)
                self._stamp_changes()
                remove_tree(trash)
        except OSError as exc:
            raise registry_error(
                f"cannot write registry {self.root}: {first_line(exc)} (removing source {q(name)})"
            ) from None
        self._changed(name, "removed", None if before is None else [before], refit)

    def export(self, name: str, dest: str | os.PathLike[str], *, replace: bool = False,
               decision: Mapping[str, Any] | None = None) -> Path:
        """Write source ``name`` to one zip file and return its path.

        ``dest`` is a file path, or an existing folder to write ``<name>.occ.zip`` into. An existing file
        is refused unless ``replace`` is true. The archive holds ``occ-export.json``, ``verifier.json`` and
        ``verifier.safetensors`` (stored uncompressed, byte for byte as in the registry, so the checksums
        travel with it). ``decision``: what decided the source in this registry
        (:meth:`occ.decisions.DecisionRecord.to_dict`, see :func:`occ.sources.export`), recorded in
        ``occ-export.json`` for whoever reads the archive; an import does not use it.
        """
        read = self._read(name, with_tensors=True)
        target = Path(dest)
        if target.is_dir():
            target = target / f"{name}{EXPORT_SUFFIX}"
        if os.path.lexists(target) and not replace:
            raise usage_error(f"{target} already exists; use --replace to overwrite it")
        write_export(target, name, read.meta_bytes, read.tensor_bytes, decision)
        return target

    def import_file(
        self, src: str | os.PathLike[str], *, as_name: str | None = None, replace: bool = False,
        refit: Refit = None, check: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> SourceRecord:
        """Add the source in export archive ``src`` (under ``as_name`` if given).

        The whole archive is validated in memory first; a bad or hostile archive writes nothing, and nor
        does one that ``check`` (called with the name and the archive's verifier record) raises for.
        """
        if as_name is not None:
            validate_name(as_name)
        exported_name, record, tensor_bytes = read_export(Path(src))
        name = as_name if as_name is not None else exported_name
        validate_name(name)
        if not replace and name in self:
            raise self._exists(name)
        plain = {k: v for k, v in record.items() if k not in REGISTRY_FIELDS}
        if check is not None:
            check(name, plain)
        return self._commit(name, tensor_bytes, plain, replace=replace, refit=refit)

    def check_new(self, name: str, *, replace: bool = False) -> None:
        """UsageError unless ``name`` is a valid source name that is free (or ``replace`` is true): what a
        caller checks before costly work whose result it will :meth:`save` (it is checked again then)."""
        validate_name(name)
        if not replace and name in self:
            raise self._exists(name)

    def _exists(self, name: str) -> UsageError:
        return usage_error(f"source {q(name)} already exists in {self.root}; use --replace to overwrite it")

    def joint_path(self, fingerprint: str) -> Path:
        """Where the joint model of the lda sources enrolled on the backbone ``fingerprint`` is stored (the
        layout's ``joint-<key>.safetensors``; what is in it is :mod:`occ.openset`'s)."""
        return self.root / f"{JOINT_PREFIX}{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}.safetensors"

    def joint_files(self) -> list[Path]:
        """The stored joint model files, sorted."""
        return sorted(self.root.glob(f"{JOINT_PREFIX}*.safetensors"))

    def write_joint(self, filename: str, data: bytes | None, *, versions: Mapping[str, str | None] | None = None
                    ) -> bool:
        """Replace the joint model file ``filename`` (``joint-<key>.safetensors``, see the layout) with
        ``data``, or remove it (``data`` None): holding the registry's lock, atomically, after sweeping what
        crashed writers left (a ``.joint-*.tmp`` included). With ``versions`` (:meth:`versions` read before
        the model was fitted), nothing is written when a source changed since: that change's own refit
        writes the model of the sources it saw. Returns whether it wrote."""
        if not JOINT_RE.fullmatch(filename):
            raise ValueError(f"not a joint model file name: {filename!r}")
        path = self.root / filename
        try:
            with self._locked():
                self._sweep(keep=None)
                if versions is not None and self.versions() != dict(versions):
                    return False
                if data is not None:
                    atomic_write(path, data, f".{filename}.{secrets.token_hex(8)}.tmp")
                elif os.path.lexists(path):
                    os.unlink(path)
                    fsync_dir(self.root, strict=False)
                self._stamp_changes()
                return True
        except OSError as exc:
            raise registry_error(
                f"cannot write registry {self.root}: {first_line(exc)} (writing its joint model)"
            ) from None

    def _meta_or_none(self, name: str) -> dict[str, Any] | None:
        """The current ``verifier.json`` of ``name``, None when there is none or it cannot be read."""
        try:
            return self.info(name).meta
        except OccError:
            return None

    def _changed(self, name: str, done: str, metas: list | None, refit: Refit) -> None:
        """After a committed change of source ``name`` (its ``verifier.json`` before and after in ``metas``,
        None where unknown): refit the joint model (:func:`occ.openset.after_change`). The change has
        happened: an error says so."""
        if refit is False:
            return
        try:
            after_change(self, metas, refit)
        except OccError as exc:
            kind = UsageError if isinstance(exc, UsageError) else RegistryError
            raise kind(f"source {q(name)} was {done}, but the registry's joint model could not be refitted: "
                       f"{first_line(exc)}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = filelock.FileLock(str(self.root / LOCK_FILE), timeout=schema.LOCK_TIMEOUT)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise registry_error(
                f"registry {self.root} is locked by another process (waited {schema.LOCK_TIMEOUT:g} s); try again"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _prepare_root(self) -> None:
        """Check that the root is (or may become) a registry, and create it."""
        if os.path.lexists(self.root) and not self.root.is_dir():
            raise registry_error(f"registry {self.root} is not a folder")
        if self._read_registry_file() is None and self.root.is_dir():
            foreign = sorted(
                e
                for e in os.listdir(self.root)
                if not e.startswith(".") and e not in (SOURCES_DIR, REGISTRY_FILE) and not JOINT_RE.fullmatch(e)
            )
            if foreign:
                raise usage_error(
                    f"{self.root} is not an occ registry (it holds {q(foreign[0])} and no {REGISTRY_FILE}); "
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
        atomic_write(self.root / REGISTRY_FILE, data, f".{REGISTRY_FILE}.{secrets.token_hex(8)}.tmp")

    def _commit(
        self, name: str, tensor_bytes: bytes, plain_meta: Mapping[str, Any], *, replace: bool, refit: Refit = False
    ) -> SourceRecord:
        """Write a new version of ``name`` (see the module docstring for the protocol), then refit the joint
        model (:meth:`_changed`)."""
        record, meta_bytes = build_record(name, plain_meta, tensor_bytes)
        before = self._meta_or_none(name) if replace and refit is not False else None
        committed = self._commit_version(name, tensor_bytes, meta_bytes, record, replace=replace)
        self._changed(name, "stored", [before, record], refit)
        return committed

    def _commit_version(
        self, name: str, tensor_bytes: bytes, meta_bytes: bytes, record: dict[str, Any], *, replace: bool
    ) -> SourceRecord:
        staging: Staging | None = None
        try:
            self._prepare_root()
            staging = Staging(self._staging)
            _fault_point("staging-created")
            write_file(staging.path / TENSOR_FILE, tensor_bytes)
            _fault_point("tensors-written")
            write_file(staging.path / META_FILE, meta_bytes)
            fsync_dir(staging.path)
            _fault_point("meta-written")
            with self._locked():
                _fault_point("locked")
                self._ensure_registry_file()
                self._sweep(keep=staging.ident)
                for existing in self.names():
                    if existing != name and existing.lower() == name.lower():
                        raise usage_error(
                            f"source {q(name)} differs only in letter case from existing source "
                            f"{q(existing)}; some systems cannot tell them apart, so choose another name"
                        )
                folder = self._sources / name
                if os.path.lexists(folder / CURRENT_FILE) and not replace:
                    raise self._exists(name)
                if not folder.is_dir():
                    self._sources.mkdir(exist_ok=True)
                    folder.mkdir()
                    fsync_dir(self._sources)
                version = self._new_version(folder)
                target = folder / version
                os.rename(staging.path, target)
                try:
                    fsync_dir(folder)
                    _fault_point("moved")
                    # Writes CURRENT under a temporary name, fsyncs it, then os.replace: the commit point.
                    tmp_name = f".{CURRENT_FILE}.{secrets.token_hex(8)}.tmp"
                    write_file(folder / tmp_name, (version + "\n").encode())
                    _fault_point("current-written")
                    try:
                        os.replace(folder / tmp_name, folder / CURRENT_FILE)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.unlink(folder / tmp_name)
                        raise
                except BaseException:
                    remove_tree(target)  # not committed: the previous version stays current
                    raise
                # Committed. Nothing below may raise: the write has happened.
                with contextlib.suppress(OSError):
                    fsync_dir(folder, strict=False)
                self._stamp_changes()
                _fault_point("current-replaced")
                self._drop_other_versions(folder, version)
                _fault_point("cleaned")
            return SourceRecord(name, version, target, record)
        except OSError as exc:
            raise registry_error(
                f"cannot write registry {self.root}: {first_line(exc)} (saving source {q(name)})"
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
        remove_tree(trash)

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
                # (written only under the lock: the one found now was left by a writer that died)
                if ROOT_TMP_RE.fullmatch(entry) or JOINT_TMP_RE.fullmatch(entry) or CHANGES_TMP_RE.fullmatch(entry):
                    remove_tree(self.root / entry)
        try:
            entries = os.listdir(self._staging)
        except OSError:
            entries = []
        idents = set()
        for entry in entries:
            if entry.startswith("trash-"):
                remove_tree(self._staging / entry)
                continue
            match = STAGING_RE.fullmatch(entry)
            if not match or match.group(1) == keep:
                continue
            if match.group(2) == ".pending":
                if older_than(self._staging / entry, schema.STALE_SECONDS, now):
                    remove_tree(self._staging / entry)
                continue
            idents.add(match.group(1))
        for ident in idents:
            reap_staging(self._staging, ident, now)
        try:
            sources = os.listdir(self._sources)
        except OSError:
            sources = []
        for entry in sources:
            folder = self._sources / entry
            if not is_valid_name(entry) or folder.is_symlink() or not folder.is_dir():
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
