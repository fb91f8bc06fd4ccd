"""Where occ keeps things on disk: the user cache (weights, features) and the registry; how a path is
shown in messages and tables (:func:`display_path`, everywhere); and the one helper that hashes a file.

Both are per-user folders by default and can be moved with environment variables:
``OCC_CACHE_DIR`` for the cache and ``OCC_REGISTRY`` for the enrolled sources.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

from occ.errors import escape_char

APP_NAME = "occ"


def cache_dir() -> Path:
    """Root of occ's cache (rebuilt weights, feature cache). ``OCC_CACHE_DIR`` overrides it."""
    env = os.environ.get("OCC_CACHE_DIR")
    return Path(env).expanduser() if env else Path(user_cache_dir(APP_NAME))


def registry_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Registry folder: the explicit argument, else ``OCC_REGISTRY``, else a per-user data folder."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("OCC_REGISTRY")
    return Path(env).expanduser() if env else Path(user_data_dir(APP_NAME)) / "registry"


def sha256_file(path: str | os.PathLike[str], digest=None, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks. With ``digest`` (a hashlib object) the file's bytes
    are added to it instead, and its hex digest so far is returned (hashing several files as one)."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fspath_str(path) -> str:
    """A path-like (str, bytes, os.PathLike) as str; undecodable bytes become lone surrogates."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        try:
            return os.fsdecode(path)
        except UnicodeDecodeError:  # Windows decodes bytes strictly; keep the bytes visible anyway
            return path.decode("utf-8", "surrogateescape")
    return str(path)


def display_path(path) -> str:
    """``path`` as one printable line.

    Bytes that do not decode in the file system encoding are shown as ``\\xNN``; control characters, line
    separators and other invisible characters are escaped the same way (``\\n`` shows as ``\\x0a``).
    Ordinary spaces, including non-ASCII ones, are kept.
    """
    text = _fspath_str(path)
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or unicodedata.category(ch) == "Zs" else escape_char(ch) for ch in text
    )
