"""Safe unpacking of an uploaded zip archive into the blob store.

The Gradient CLI uploads a directory as one stored (uncompressed) zip named ``model.zip``. Its
entries become the model's files. Every entry path goes through :func:`modeldepot.paths.normalize_path`
(no absolute paths, no ``..``, no backslashes); symlinks, devices, encrypted entries and unsupported
compression methods are refused; the entry count, the total unpacked size and the compression ratio of
each entry are limited, and the sizes are counted on the bytes actually read, not taken from the
archive's headers. Each entry is streamed into the blob store and hashed on the way.
"""

from __future__ import annotations

import dataclasses
import stat
import zipfile
import zlib
from typing import BinaryIO

from ..errors import InvalidInput, PayloadTooLarge
from ..paths import normalize_path
from ..records import ModelFile
from .ports import BlobStore, BlobWriter

_CHUNK = 1024 * 1024
# Entries smaller than this are never refused for their compression ratio.
_RATIO_FLOOR = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 200_000
    max_unpacked_bytes: int = 1 << 40
    max_ratio: int = 200


def _bad(why: str) -> InvalidInput:
    return InvalidInput(
        f"The uploaded model.zip cannot be unpacked: {why}",
        hint="A directory upload arrives as model.zip; upload the directory again, or give a single "
        "file that is not a zip archive another name.",
    )


def _check_entry(info: zipfile.ZipInfo, limits: ArchiveLimits) -> str:
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise _bad(f"entry {info.filename!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG):
        raise _bad(f"entry {info.filename!r} is not a regular file")
    if info.flag_bits & 0x1:
        raise _bad(f"entry {info.filename!r} is encrypted")
    if info.file_size > _RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise _bad(
            f"entry {info.filename!r} expands {info.compress_size} bytes to {info.file_size}, "
            f"more than {limits.max_ratio} times"
        )
    try:
        return normalize_path(info.filename)
    except InvalidInput as exc:
        raise _bad(exc.detail) from None


def unpack_zip(archive: BinaryIO, blobs: BlobStore, limits: ArchiveLimits) -> list[ModelFile]:
    """Store every file of the zip ``archive`` (a seekable binary file) as a blob; return the files."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise _bad(f"it is not a valid zip archive ({exc})") from None
    with zf:
        entries = [info for info in zf.infolist() if not info.is_dir()]
        if not entries:
            raise _bad("it holds no files")
        if len(entries) > limits.max_entries:
            raise _bad(f"it holds {len(entries)} files; a model may hold at most {limits.max_entries}")
        paths = [_check_entry(info, limits) for info in entries]
        declared = sum(info.file_size for info in entries)
        if declared > limits.max_unpacked_bytes:
            raise PayloadTooLarge(
                f"The uploaded model.zip unpacks to {declared} bytes; the limit is {limits.max_unpacked_bytes}"
            )
        files: list[ModelFile] = []
        total = 0
        for info, path in zip(entries, paths, strict=True):
            writer = blobs.writer()
            try:
                size = _copy(zf, info, writer, limits.max_unpacked_bytes - total)
                sha256, _ = writer.commit_computed()
            except BaseException:
                writer.abort()
                raise
            total += size
            files.append(ModelFile(path=path, size=size, sha256=sha256))
        return files


def _copy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, writer: BlobWriter, budget: int) -> int:
    """Stream one entry into ``writer``; refuse it if it yields more than it declared or the budget."""
    size = 0
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > info.file_size or size > budget:
                    raise _bad(f"entry {info.filename!r} holds more bytes than its header declares")
                writer.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        raise _bad(f"entry {info.filename!r} is damaged or uses an unsupported method ({exc})") from None
    if size != info.file_size:
        raise _bad(f"entry {info.filename!r} holds {size} bytes, not the {info.file_size} it declares")
    return size
