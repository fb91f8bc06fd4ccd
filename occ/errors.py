"""Exceptions occ raises. Each message is one line that names the file (or thing) and the reason."""

from __future__ import annotations


class OccError(Exception):
    """Base class for every error occ reports to a user."""


class ImageError(OccError):
    """A file could not be read as an image; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # rebuilt from its two fields: the default would call __init__ with the message alone, so the
        # error could not cross a process boundary (a worker pool's or Ray's) without failing itself
        return type(self), (self.path, self.reason)


class BackboneError(OccError):
    """The backbone could not be found, fetched, verified or loaded."""


class RegistryError(OccError):
    """The registry or a verifier in it is missing, invalid or cannot be written."""


class UsageError(OccError):
    """The request itself is wrong (unknown source, bad option, empty registry)."""


def escape_char(ch: str) -> str:
    """One unprintable character as ``\\xNN`` / ``\\uNNNN`` / ``\\UNNNNNNNN`` (an undecodable file-name
    byte, held as a lone surrogate, as the byte it was)."""
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def one_line(text: object) -> str:
    """``text`` as one line for a message: runs of whitespace (newlines included) become one space, other
    unprintable characters are escaped (:func:`escape_char`), so a message never spans or garbles lines."""
    return " ".join("".join(ch if ch.isprintable() else escape_char(ch) for ch in word) for word in str(text).split())


def first_line(exc: BaseException) -> str:
    """The reason an exception gives, on one line: an OS error's ``strerror``, else the first non-empty
    line of its message (at most 200 characters), else its type name."""
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return one_line(lines[0][:200]) if lines else type(exc).__name__
