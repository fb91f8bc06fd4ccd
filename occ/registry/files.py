"""File-system primitives of the registry: bounded reads of regular files, fsynced writes, atomic
replacement, tree removal, and the per-writer staging folders with their liveness locks."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from occ.registry import schema
from occ.registry.schema import FSYNC_DIR_UNSUPPORTED

if TYPE_CHECKING:
    pass

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- files


class BadFile(Exception):
    """A file that exists but is not a regular file of acceptable size (the message says which)."""

    def __init__(self, reason: str, size: int | None = None) -> None:
        super().__init__(reason)
        self.size = size  # set when the file is a regular file, just too big


def read_regular(path: Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes (FIFOs, devices and bigger files are refused)."""
    flags = (
        os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    )
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BadFile("it is not a regular file")
        if info.st_size > limit:
            raise BadFile(f"it has {info.st_size} bytes, more than the {limit} expected", info.st_size)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BadFile(f"it has more than the {limit} bytes expected", len(data))
    return data


def write_file(path: Path, data: bytes) -> None:
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


def fsync_dir(path: Path, *, strict: bool = True) -> None:
    """Make a folder's entries durable. Filesystems that cannot fsync folders are tolerated."""
    if os.name == "nt":  # pragma: no cover - folders cannot be opened on Windows
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if strict and exc.errno not in FSYNC_DIR_UNSUPPORTED:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if strict and exc.errno not in FSYNC_DIR_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, tmp_name: str) -> None:
    """Replace ``path`` with ``data`` atomically. After ``os.replace`` nothing raises: the write happened."""
    tmp = path.with_name(tmp_name)
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        fsync_dir(path.parent, strict=False)


def remove_tree(path: Path) -> None:
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


def older_than(path: Path, seconds: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime > seconds
    except OSError:
        return True


class Staging:
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
            remove_tree(self.path)
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def reap_staging(parent: Path, ident: str, now: float) -> None:
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
            if taken is None and not older_than(lock_path, schema.STALE_SECONDS, now):
                return
        elif not older_than(folder, schema.STALE_SECONDS, now):
            return  # never made by this module's protocol; leave young ones alone
        if os.path.lexists(folder):
            remove_tree(folder)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
    finally:
        if fd is not None:
            os.close(fd)
