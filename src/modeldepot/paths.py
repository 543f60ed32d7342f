"""Stored file paths: one normal form, checked the same way on the client and on the server.

A stored path is a relative POSIX path of non-empty segments. Absolute paths, ``..`` and ``.``
segments, backslashes, drive letters, NUL and other control characters are refused; the check runs
both before and after URL decoding so that ``%2e%2e`` cannot sneak a ``..`` through.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

from .errors import InvalidInput

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255


def _check(path: str, original: str) -> None:
    def bad(why: str) -> InvalidInput:
        return InvalidInput(
            f"File path {original!r} is not allowed: {why}",
            hint="Use a relative path with '/' separators, without '..', '.', '\\' or control characters.",
        )

    if not path:
        raise bad("it is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise bad("it contains a NUL or control character")
    if "\\" in path:
        raise bad("it contains a backslash")
    if path.startswith("/"):
        raise bad("it is absolute")
    if len(path) >= 2 and path[1] == ":" and path[0].isalpha():
        raise bad("it starts with a drive letter")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise bad(f"it is longer than {MAX_PATH_BYTES} bytes")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise bad("it has an empty, '.' or '..' segment")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise bad(f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")


def normalize_path(path: str) -> str:
    """Return the stored form of ``path`` (NFC) or raise :class:`InvalidInput`."""
    if not isinstance(path, str):
        raise InvalidInput(f"File path must be a string, not {type(path).__name__}")
    _check(path, path)
    decoded = unquote(path)
    if decoded != path:
        _check(decoded, path)
    return unicodedata.normalize("NFC", path)
