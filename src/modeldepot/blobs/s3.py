"""Blobs in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph): ``<prefix>/sha256/ab/cd/<hash>``.

Selected by ``s3://BUCKET/PREFIX?endpoint=URL&region=NAME&addressing=path|virtual``; credentials come
from boto3's default chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).

Nothing is kept in memory between calls, so any number of stateless replicas can share a bucket and
survive restarts. Bytes never reach a final key unverified: they go to a temporary key first (a
multipart upload), are checked against the size and sha256 they were announced with, and are then
published under ``guard`` (content smaller than one part is checked in memory and sent in one PUT
with its Content-MD5). A staging id is ``<24 hex><UploadId in base32>``: the first part names the
staging key ``<prefix>/staging/<24 hex>``, the second is the S3 multipart upload, so every replica
can serve every staging without a lookup.

Publishing a blob of ``pointer_min_size`` (64 MiB) or more does not copy it: S3 cannot rename, and
a server-side copy moved about 170 MB/s on SeaweedFS here, 70% of the time the upload itself took. The
verified object stays where it was uploaded and the blob's key gets an empty *pointer* object whose
metadata names it (``x-amz-meta-md-blob``) and gives its size (``x-amz-meta-md-size``). Readers follow
the pointer (a GET of the blob's key answers with that metadata, so small blobs cost nothing extra);
deleting the blob deletes both. A completed staging object that no pointer names is an orphan: gc
removes it (see :meth:`S3BlobStore.orphan_stagings`), and :meth:`S3BlobStore.abort_staging` leaves a
completed object alone unless it is named by its bare id, as only the orphan listing names them,
because under its full id it may already be a published blob's bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import secrets
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ..errors import Conflict, IntegrityError, InvalidInput, ServerError, StorageFull
from ..services.ports import BlobWriter

try:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
except ModuleNotFoundError:  # pragma: no cover - depends on the installed extras
    raise ModuleNotFoundError(
        "The s3:// blob store needs boto3: install `modeldepot[s3]`", name="boto3"
    ) from None

log = logging.getLogger("modeldepot.blobs.s3")

PublishGuard = Callable[[str, int], AbstractContextManager[None]]

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # parts the writer sends; grows after every 1,000 parts (S3 allows 10,000)
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4  # 5 TiB
COPY_THRESHOLD = 5 * 1024**3  # CopyObject copies up to 5 GiB in one request; above, a multipart copy
# Staged blobs from this size up are published by a pointer, not a copy (see the module docstring).
# Lowering it later is safe; raising it would make presign_get sign some old pointers' keys unresolved.
POINTER_MIN_SIZE = 64 * MiB
_POINTS_TO = "md-blob"  # x-amz-meta-md-blob: the key holding a pointer's bytes
_POINTER_SIZE = "md-size"  # x-amz-meta-md-size: their size
READ_RANGE = 16 * MiB  # finishing a staging reads the object back in ranges of this size…
READ_AHEAD = 4  # …this many at a time
SPOOL_SIZE = 16 * MiB  # a part sent through the server stays in memory up to this size
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_RANDOM_LEN = 24
_MISSING = {"404", "NoSuchKey", "NotFound"}
_FULL = {"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage"}
_INTEGRITY_HINT = "The file changed or was corrupted in transit: upload it again."


def _no_guard(sha256: str, size: int) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    """Turn an object store's "no room" answers into :class:`StorageFull`."""
    try:
        yield
    except ClientError as exc:
        if _code(exc) in _FULL:
            raise StorageFull(
                f"The object store refused the bytes: {_code(exc)}",
                hint="Free space (or raise the quota) of the blob store's bucket.",
            ) from exc
        raise


def _gone(staging_id: str) -> IntegrityError:
    return IntegrityError(f"Upload staging area {staging_id} no longer exists")


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _attachment(filename: str) -> str:
    """A Content-Disposition that names the file, with an ASCII fallback (RFC 6266)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename) or "download"
    value = f'attachment; filename="{fallback}"'
    quoted = quote(filename, safe="")
    return value if quoted == filename else f"{value}; filename*=UTF-8''{quoted}"


def _staging_id(random: str, upload_id: str) -> str:
    """A staging id: the random part of its key, then its multipart UploadId in lowercase base32."""
    return random + base64.b32encode(upload_id.encode()).decode().rstrip("=").lower()


def _check_part_number(number: int) -> None:
    if not 1 <= number <= MAX_PARTS:
        raise InvalidInput(
            f"Part number {number} is out of range: an S3 blob store takes parts 1 to {MAX_PARTS}"
        )


def _too_small(number: int | None, size: int | None) -> InvalidInput:
    which = "A part is too small" if number is None else f"Part {number} is too small ({size} bytes)"
    return InvalidInput(
        f"{which}: in an S3 blob store every part but the last needs at least "
        f"{MIN_PART_SIZE} bytes (5 MiB); the parts received are kept",
        hint="Send the blob again in parts of 8 MiB or more (only the last may be smaller), or in one part.",
    )


# The object under the prefix that names the metadata database using the store (see marker_location).
MARKER = "store-id"


class S3BlobWriter:
    """Streams written bytes into a multipart upload on ``<prefix>/tmp/upload-<random>``.

    Content smaller than one part is kept in memory and stored with a single PUT on commit.
    """

    def __init__(self, store: S3BlobStore):
        self._store = store
        self._key = store.key("tmp", f"upload-{secrets.token_hex(12)}")
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False
        self._staged = False  # whether anything may exist at self._key
        self.size = 0

    def _part_size(self) -> int:
        return PART_SIZE * (1 + len(self._parts) // 1000)

    def _send_part(self, length: int) -> None:
        store = self._store
        if self._upload_id is None:
            self._upload_id = store.create_upload(self._key)
            self._staged = True
        data = bytes(self._buffer[:length])
        del self._buffer[:length]
        number = len(self._parts) + 1
        with _writing():
            answer = store.client.upload_part(
                Bucket=store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_md5(data),
            )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def write(self, chunk: bytes) -> None:
        if self._done:
            raise ValueError("write to a blob writer that was committed or aborted")
        self._hash.update(chunk)
        self.size += len(chunk)
        self._buffer += chunk
        try:
            while len(self._buffer) >= self._part_size():
                self._send_part(self._part_size())
        except BaseException:
            self._discard()
            raise

    @property
    def in_memory(self) -> bool:
        """Whether all the bytes are still here (smaller than one part): committing is one PUT."""
        return self._upload_id is None

    def check(self, expected_sha256: str, expected_size: int) -> None:
        """Raise (and discard the bytes) unless they are the blob announced."""
        digest = self._hash.hexdigest()
        if digest != expected_sha256 or self.size != expected_size:
            self._discard()
            raise IntegrityError(
                f"Received {self.size} bytes with sha256 {digest}, expected {expected_size} bytes "
                f"with sha256 {expected_sha256}; the bytes were discarded",
                hint=_INTEGRITY_HINT,
            )

    def put_checked(self) -> None:
        """PUT checked in-memory bytes to their final key; the caller holds the publish guard."""
        self._done = True
        data, self._buffer = bytes(self._buffer), bytearray()
        self._store.put_object(self._hash.hexdigest(), data)

    def commit(self, expected_sha256: str, expected_size: int) -> None:
        self.check(expected_sha256, expected_size)
        digest = expected_sha256
        self._done = True
        try:
            if self._upload_id is None:  # smaller than one part: one PUT, straight to its final key
                data, self._buffer = bytes(self._buffer), bytearray()
                self._store.put_blob(digest, data)
                return
            if self._buffer:
                self._send_part(len(self._buffer))
            self._store.complete_upload(self._key, self._upload_id, self._parts)
            self._upload_id = None
            self._store.publish(self._key, digest, self.size)
            self._staged = False
        except BaseException:
            self._discard()
            raise

    def commit_computed(self) -> tuple[str, int]:
        """Keep the bytes under the sha256 computed while they were written; return (sha256, size)."""
        digest, size = self._hash.hexdigest(), self.size
        self.commit(digest, size)
        return digest, size

    def _discard(self) -> None:
        """Clean up on the way out of an error, without hiding that error behind another."""
        try:
            self.abort()
        except Exception:  # an upload left behind is removed by the bucket's lifecycle rule
            log.warning("could not clean up %s in %s", self._key, self._store.location(), exc_info=True)

    def abort(self) -> None:
        self._done = True
        self._buffer = bytearray()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._store.abort_upload(self._key, upload_id)
        if self._staged:  # the upload was completed but not published
            self._staged = False
            self._store.delete_key(self._key)


class S3BlobStore:
    """Blobs in ``bucket`` under ``prefix``; see the module docstring for the layout."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing: str | None = None,
        guard: PublishGuard = _no_guard,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Held while a blob is copied into place; the server sets it to the metadata store's row lock
        # so that the garbage collector can never delete a blob in the instant it is re-published.
        self.guard = guard
        self.guard_many: Callable[[Sequence[tuple[str, int]]], AbstractContextManager[None]] = (
            lambda blobs: contextlib.nullcontext()  # unused: commit_batch commits one by one
        )
        self.presign_min_size = 0  # every download goes straight to the store
        self.parts_in_order = False  # the store takes parts in parallel; finishing reads them back
        config = Config(
            signature_version="s3v4",
            # Most self-hosted stores answer only on their endpoint's host name: path style there.
            s3={"addressing_style": addressing or ("path" if endpoint_url else "auto")},
            retries={"mode": "standard", "max_attempts": 5},
            # An endpoint that drops connections fails within half a minute, retries included,
            # not five (60 s each by default). Reads keep the default 60 s: a large multipart
            # upload's completion may take a while on some stores.
            connect_timeout=5,
            max_pool_connections=32,
            # Checksums only where S3 requires them: the newer default (CRC trailers on every upload)
            # is not understood by every S3-compatible store. We send Content-MD5 and verify sha256.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self.pointer_min_size = POINTER_MIN_SIZE
        self._copy_config = TransferConfig(
            multipart_threshold=COPY_THRESHOLD, multipart_chunksize=512 * MiB, max_concurrency=8
        )

    @classmethod
    def from_url(cls, url: str, guard: PublishGuard = _no_guard) -> S3BlobStore:
        """``s3://BUCKET/PREFIX?endpoint=URL&region=NAME&addressing=path|virtual``."""
        usage = "use s3://BUCKET/PREFIX?endpoint=URL&region=NAME&addressing=path|virtual"
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
            raise ValueError(
                f"Unsupported blob URL {url!r}: {usage} (credentials come from AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or another source of boto3's default chain, never from the URL)"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"endpoint", "region", "addressing"})
        if unknown or any(len(v) != 1 for v in query.values()):
            raise ValueError(
                f"Unsupported parameter(s) {', '.join(unknown) or 'repeated'} in {url!r}: {usage}"
            )
        endpoint = query.get("endpoint", [None])[0] or None
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ValueError(f"The endpoint of {url!r} must be an http:// or https:// URL")
        addressing = query.get("addressing", [None])[0] or None
        if addressing not in (None, "path", "virtual"):
            raise ValueError(f"addressing={addressing} in {url!r}: use addressing=path or addressing=virtual")
        return cls(
            parts.netloc,
            parts.path,
            endpoint_url=endpoint,
            region=query.get("region", [None])[0] or None,
            addressing=addressing,
            guard=guard,
        )

    def close(self) -> None:
        self.client.close()

    def check(self) -> None:
        """Raise ServerError saying what is wrong unless the bucket is there and takes these
        credentials (``modeldepot serve`` asks once at start, so a wrong setting fails there and not
        with the first upload)."""
        where = f"bucket {self.bucket!r} at {self.client.meta.endpoint_url}"
        settings = "Check --blob-url (MODELDEPOT_BLOB_URL) and the AWS_* credentials the server runs with."
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ServerError(
                f"No credentials for the object store ({where})",
                hint="Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or another source boto3 reads).",
            ) from None
        except ClientError as exc:
            code = _code(exc)
            if code in ("404", "NoSuchBucket"):
                raise ServerError(
                    f"The object store has no {where}", hint=f"Create the bucket first. {settings}"
                ) from None
            if code in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                raise ServerError(
                    f"The object store refused these credentials for {where} ({code})", hint=settings
                ) from None
            raise ServerError(f"The object store answered {code} for {where}", hint=settings) from None
        except BotoCoreError as exc:
            raise ServerError(f"Cannot reach the object store for {where}: {exc}", hint=settings) from None

    # -- keys and small helpers shared with the writer ------------------------------------------------

    def marker_location(self) -> str:
        return f"s3://{self.bucket}/{self.key(MARKER)}"

    def read_marker(self) -> str | None:
        try:
            answer = self._get(self.key(MARKER), 0, None)
        except FileNotFoundError:
            return None
        if answer is None:
            return None
        with contextlib.closing(answer["Body"]) as body:
            return body.read().decode("utf-8", "replace").strip() or None

    def write_marker(self, value: str) -> None:
        self._put(self.key(MARKER), (value + "\n").encode(), "text/plain")

    def key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts) if self.prefix else parts)

    def _blob_key(self, sha256: str) -> str:
        return self.key("sha256", sha256[:2], sha256[2:4], sha256)

    def _pointer(self, answer: dict[str, Any]) -> tuple[str, int] | None:
        """(key, size) that a HEAD or GET answer of a pointer object names; None for a plain object."""
        meta = answer.get("Metadata") or {}
        target, size = meta.get(_POINTS_TO), meta.get(_POINTER_SIZE)
        if target is None or size is None:
            return None
        if not str(target).startswith((self.key("staging") + "/", self.key("tmp") + "/")):
            raise ServerError(f"A blob pointer in {self.location()} names {target!r}, outside this store")
        return str(target), int(size)

    def _head(self, key: str) -> dict[str, Any] | None:
        """The HEAD answer of the object at ``key``; None if there is none."""
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return head

    def _resolve(self, sha256: str) -> tuple[str, int] | None:
        """(key of its bytes, size) of blob ``sha256``, following a pointer; None if there is none."""
        final = self._blob_key(sha256)
        head = self._head(final)
        if head is None:
            return None
        return self._pointer(head) or (final, int(head["ContentLength"]))

    def has_blobs(self) -> bool:
        """Whether any object is stored under ``sha256/`` (one listing of one key)."""
        answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key("sha256") + "/", MaxKeys=1)
        return bool(answer.get("Contents"))

    def _blob_objects(self) -> Iterator[tuple[str, str, int]]:
        """(sha256, key of its bytes, size) of every stored blob, in key order. Only pointers (and the
        empty blob) are empty objects under ``sha256/``, so only those are asked for their metadata."""
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.key("sha256") + "/"):
            for item in page.get("Contents", []):
                key = str(item["Key"])
                name = key.rsplit("/", 1)[-1]
                if len(name) != 64:
                    continue
                found = self._resolve(name) if int(item["Size"]) == 0 else (key, int(item["Size"]))
                if found is not None:
                    yield name, *found

    def _pointed_keys(self) -> set[str]:
        """The keys that pointers name."""
        return {key for sha256, key, _ in self._blob_objects() if key != self._blob_key(sha256)}

    def create_upload(self, key: str) -> str:
        with _writing():
            answer = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType="application/octet-stream"
            )
        return str(answer["UploadId"])

    def complete_upload(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        with _writing():
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": sorted(parts, key=lambda p: int(p["PartNumber"]))},
            )

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) not in {"NoSuchUpload", *_MISSING}:
                raise

    def delete_key(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def put_blob(self, sha256: str, data: bytes) -> None:
        """Store verified in-memory bytes as blob ``sha256`` (under the publish guard)."""
        with self.guard(sha256, len(data)):
            self.put_object(sha256, data)

    def put_object(self, sha256: str, data: bytes) -> None:
        """PUT verified bytes to blob ``sha256``'s key; the caller holds the publish guard."""
        self._put(self._blob_key(sha256), data)

    def _put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """One PUT of ``data`` to ``key``, checked by the store against its MD5."""
        with _writing():
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentMD5=_md5(data), ContentType=content_type
            )

    def publish(self, key: str, sha256: str, size: int) -> None:
        """Make the verified object at ``key`` blob ``sha256``.

        Content-addressed: a blob already there with this size is these bytes, and is kept (``key``
        is then deleted). Otherwise a blob of ``pointer_min_size`` or more gets a pointer to ``key``,
        written under the publish guard (one small PUT); a smaller one is copied into place. The copy
        runs outside the guard (with SQLite the guard holds the metadata store's write lock); under
        the guard it is then checked that the blob is in place, which the garbage collector cannot
        undo once the guard has touched its row.
        """
        if size >= self.pointer_min_size:
            with self.guard(sha256, size):
                found = self._resolve(sha256)
                if found is None or found[1] != size:
                    self._put_pointer(sha256, key, size)
                    return
            if found[0] != key:  # published before (by another upload, or by this one: keep it then)
                self.delete_key(key)
            return
        final = self._blob_key(sha256)
        for _ in range(3):
            if self.size(sha256) != size:
                try:
                    with _writing():
                        self.client.copy(
                            {"Bucket": self.bucket, "Key": key}, self.bucket, final, Config=self._copy_config
                        )
                except ClientError:
                    # Copied into place by another server meanwhile (the same upload finished on two
                    # replicas at once: SeaweedFS fails copies to one key at the same time)?
                    if self.size(sha256) != size:
                        raise
            with self.guard(sha256, size):
                if self.size(sha256) == size:
                    break
            # Collected between the copy and the guard (a grace period shorter than the copy): again.
        else:
            raise ServerError(
                f"Blob {sha256} was collected each time it was copied into place",
                hint="Run the upload again; keep gc's grace period longer than an upload takes.",
            )
        self.delete_key(key)

    def _put_pointer(self, sha256: str, key: str, size: int) -> None:
        with _writing():
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._blob_key(sha256),
                Body=b"",
                ContentType="application/octet-stream",
                Metadata={_POINTS_TO: key, _POINTER_SIZE: str(size)},
            )

    # -- the BlobStore interface -----------------------------------------------------------------------

    def size(self, sha256: str) -> int | None:
        found = self._resolve(sha256)
        return None if found is None else found[1]

    def commit_batch(self, batch: Sequence[tuple[BlobWriter, str, int]]) -> list[str]:
        """Commit the writers several at a time (boto3's client is thread-safe); the sha256 of those
        kept (the others failed their check and were discarded).

        Blobs small enough to be held in memory (all of a batch, in practice) are PUT under one
        publish guard for the batch; a guard per blob, taken by each PUT in turn, held the metadata
        store's write lock (SQLite) across every request and so sent them one at a time.
        """
        checked: list[tuple[S3BlobWriter, str, int]] = []
        for writer, sha256, size in batch:
            assert isinstance(writer, S3BlobWriter)
            try:
                writer.check(sha256, size)
            except IntegrityError:
                continue
            checked.append((writer, sha256, size))
        small = [item for item in checked if item[0].in_memory]
        large = [item for item in checked if not item[0].in_memory]
        with ThreadPoolExecutor(max_workers=8) as pool:
            if small:
                try:
                    with self.guard_many([(sha256, size) for _, sha256, size in small]):
                        list(pool.map(lambda item: item[0].put_checked(), small))
                except BaseException:
                    for writer, _, _ in small:
                        writer.abort()
                    raise
            list(pool.map(lambda item: item[0].commit(item[1], item[2]), large))
        return [sha256 for _, sha256, _ in checked]

    def writer(self) -> S3BlobWriter:
        return S3BlobWriter(self)

    def local_path(self, sha256: str) -> Path | None:
        return None

    def read(
        self, sha256: str, chunk_size: int = 1024 * 1024, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The blob's bytes from ``start`` up to (not including) ``end``."""
        if end is not None and end <= start:
            if self.size(sha256) is None:
                raise FileNotFoundError(f"no blob {sha256} in {self.location()}")
            return
        final = self._blob_key(sha256)
        answer = self._get(final, start, end)
        if answer is None:  # no bytes in that range: of a plain object, or of a pointer's empty body
            found = self._resolve(sha256)
            if found is None:
                raise FileNotFoundError(f"no blob {sha256} in {self.location()}")
            if found[0] != final:
                answer = self._get(found[0], start, end)
        elif (pointer := self._pointer(answer)) is not None:
            answer["Body"].close()
            answer = self._get(pointer[0], start, end)
        if answer is None:
            return
        body = answer["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def _get(self, key: str, start: int, end: int | None) -> dict[str, Any] | None:
        """GET ``key`` from ``start`` up to ``end``; None when no byte is in that range."""
        extra: dict[str, str] = {}
        if start > 0 or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer: dict[str, Any] = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(f"no object {key} in {self.location()}") from None
            if _code(exc) == "InvalidRange":  # starts at or past the end: no bytes, as from a file
                return None
            raise
        return answer

    def delete(self, sha256: str) -> None:
        """Delete the blob; for a pointer, the pointer first, then the bytes it names."""
        found = self._resolve(sha256)
        final = self._blob_key(sha256)
        self.delete_key(final)
        if found is not None and found[0] != final:
            self.delete_key(found[0])

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        """Every stored blob as (sha256, size), in key order."""
        for sha256, _, size in self._blob_objects():
            yield sha256, size

    def presign_get(self, sha256: str, expires_in: int, filename: str, size: int | None = None) -> str | None:
        """A presigned GET of the blob's bytes. Given its ``size``, a blob too small to be a pointer
        is signed without a request; a larger one is looked up first, to sign the key it points to."""
        key = self._blob_key(sha256)
        if size is None or size >= self.pointer_min_size:
            found = self._resolve(sha256)
            key = key if found is None else found[0]
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": _attachment(filename),
                "ResponseContentType": "application/octet-stream",
            },
            ExpiresIn=expires_in,
        )
        return url

    # -- staging: blobs that arrive in parts -------------------------------------------------------------

    def _staging(self, staging_id: str) -> tuple[str, str | None]:
        """The staging key and the multipart UploadId (None once the upload was completed)."""
        random, encoded = staging_id[:_RANDOM_LEN], staging_id[_RANDOM_LEN:]
        try:
            if len(random) != _RANDOM_LEN or not staging_id.isalnum():
                raise ValueError
            int(random, 16)
            padded = encoded.upper() + "=" * (-len(encoded) % 8)
            upload_id = base64.b32decode(padded).decode() if encoded else None
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ValueError(f"bad staging id {staging_id!r}") from None
        return self.key("staging", random), upload_id

    def begin_staging(self, size: int) -> str:
        if not 0 <= size <= MAX_OBJECT_SIZE:
            raise InvalidInput(f"A blob of {size} bytes cannot be stored: S3 objects hold up to 5 TiB")
        random = secrets.token_hex(_RANDOM_LEN // 2)
        return _staging_id(random, self.create_upload(self.key("staging", random)))

    def presign_part(
        self, staging_id: str, number: int, expires_in: int, *, offset: int = 0, size: int = 0
    ) -> str | None:
        key, upload_id = self._staging(staging_id)
        if upload_id is None:
            raise _gone(staging_id)
        _check_part_number(number)
        url: str = self.client.generate_presigned_url(
            "upload_part",
            Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
            ExpiresIn=expires_in,
        )
        return url

    def write_part(
        self,
        staging_id: str,
        number: int,
        offset: int,
        size: int,
        chunks: Iterable[bytes],
        sha256: str | None,
    ) -> None:
        """Upload part ``number`` (its place follows from its number: ``offset`` is not needed here).

        The part is checked whole before it is sent, so a bad one never replaces a good one.
        """
        key, upload_id = self._staging(staging_id)
        if upload_id is None:
            raise _gone(staging_id)
        _check_part_number(number)
        digest, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        got = 0
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_SIZE) as spool:
            for chunk in chunks:
                if got + len(chunk) > size:
                    raise IntegrityError(f"Part {number} is larger than its {size} bytes")
                spool.write(chunk)
                digest.update(chunk)
                md5.update(chunk)
                got += len(chunk)
            if got != size:
                raise IntegrityError(f"Part {number} has {got} bytes, expected {size}; send it again")
            if sha256 is not None and digest.hexdigest() != sha256:
                raise IntegrityError(f"Part {number} arrived corrupted (sha256 mismatch); send it again")
            spool.seek(0)
            try:
                with _writing():
                    self.client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=spool,
                        ContentLength=size,
                        ContentMD5=base64.b64encode(md5.digest()).decode(),
                    )
            except ClientError as exc:
                if _code(exc) == "NoSuchUpload":
                    raise _gone(staging_id) from None
                raise

    def _parts(self, key: str, upload_id: str) -> list[dict[str, Any]] | None:
        """The parts received so far, or None when the upload is no longer open."""
        parts: list[dict[str, Any]] = []
        try:
            for page in self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            ):
                parts.extend(page.get("Parts", []))
        except ClientError as exc:
            if _code(exc) in {"NoSuchUpload", *_MISSING}:
                return None
            raise
        return parts

    def received_parts(self, staging_id: str) -> dict[int, int]:
        key, upload_id = self._staging(staging_id)
        parts = self._parts(key, upload_id) if upload_id is not None else None
        return {int(p["PartNumber"]): int(p["Size"]) for p in parts or []}

    def completed_size(self, staging_id: str) -> int | None:
        """The size of the object a staging area's upload was completed into, when it was (by a
        server that stopped before it published the blob: finishing again verifies and publishes
        it); None while the upload is open (the object exists only once it is completed) or when
        there is nothing."""
        head = self._head(self._staging(staging_id)[0])
        return None if head is None else int(head["ContentLength"])

    def finish_staging(self, staging_id: str, sha256: str, size: int) -> None:
        """Complete the upload, hash the object it made; if it is the blob announced, publish it."""
        key, upload_id = self._staging(staging_id)
        parts = self._parts(key, upload_id) if upload_id is not None else None
        if parts is not None and upload_id is not None:
            self._complete_staging(staging_id, key, upload_id, parts, sha256, size)
            if size == 0:
                return
        # The upload is complete (now, or by an earlier attempt that stopped before publishing).
        try:
            digest, got = self._hash_object(key, size)
        except FileNotFoundError:
            raise _gone(staging_id) from None
        if got != size or digest.hexdigest() != sha256:
            self.delete_key(key)
            raise IntegrityError(
                f"The parts add up to {got} bytes with sha256 {digest.hexdigest()}, expected {size} bytes "
                f"with sha256 {sha256}; they were discarded",
                hint=_INTEGRITY_HINT,
            )
        self.publish(key, sha256, size)

    def _hash_object(self, key: str, size: int) -> tuple[Any, int]:
        """(sha256, bytes read) of the object at ``key``, announced as ``size`` bytes long.

        Read in ranges a few at a time and hashed in order: one GET stream from SeaweedFS moved about
        300-470 MB/s here, four at once about 450-650 MB/s. At most READ_AHEAD + 1 ranges are held.
        """
        digest = hashlib.sha256()
        got = 0
        ranges: list[tuple[int, int] | None]
        if size <= READ_RANGE:
            ranges = [None]  # one plain GET: also tells a longer object from one of the size announced
        else:
            ranges = [(start, min(start + READ_RANGE, size)) for start in range(0, size, READ_RANGE)]
            ranges.append((size, size + 1))  # past the announced end: must be empty

        def fetch(span: tuple[int, int] | None) -> bytes:
            answer = self._get(key, *(span or (0, None)))
            if answer is None:
                return b""
            with contextlib.closing(answer["Body"]) as body:
                data: bytes = body.read()
            return data

        with ThreadPoolExecutor(max_workers=READ_AHEAD) as pool:
            waiting: deque[Future[bytes]] = deque()
            todo = iter(ranges)
            try:
                for span in todo:
                    waiting.append(pool.submit(fetch, span))
                    if len(waiting) > READ_AHEAD:
                        break
                while waiting:
                    data = waiting.popleft().result()
                    digest.update(data)
                    got += len(data)
                    span = next(todo, None)
                    if span is not None:
                        waiting.append(pool.submit(fetch, span))
            finally:
                for future in waiting:
                    future.cancel()
        return digest, got

    def _complete_staging(
        self, staging_id: str, key: str, upload_id: str, parts: list[dict[str, Any]], sha256: str, size: int
    ) -> None:
        sizes = {int(p["PartNumber"]): int(p["Size"]) for p in parts}
        got = sum(sizes.values())
        numbers = sorted(sizes)
        if 0 < got < size and (
            numbers != list(range(1, len(numbers) + 1)) or sizes[numbers[-1]] == max(sizes.values())
        ):
            # A part is missing (a gap, or no short last part), though every part was listed a moment
            # ago (the caller checked): it is being sent again now (the same upload run elsewhere at
            # once), and the store hides it until it is in whole.
            raise Conflict(
                f"{size - got} bytes of the parts of blob {sha256} are being sent again",
                hint="Complete the blob again once they are in.",
            )
        if got != size or (got == 0 and sha256 != EMPTY_SHA256):
            self.abort_upload(key, upload_id)
            raise IntegrityError(
                f"The parts add up to {got} bytes{f' with sha256 {EMPTY_SHA256}' if got == 0 else ''}, "
                f"expected {size} bytes with sha256 {sha256}; they were discarded",
                hint=_INTEGRITY_HINT,
            )
        if got == 0:  # S3 cannot complete an upload without bytes: store the empty blob directly
            self.abort_upload(key, upload_id)
            self.put_blob(sha256, b"")
            return
        small = next((n for n in numbers[:-1] if sizes[n] < MIN_PART_SIZE), None)
        if small is not None:
            raise _too_small(small, sizes[small])
        try:
            self.complete_upload(
                key, upload_id, [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
            )
        except ClientError as exc:
            if _code(exc) == "EntityTooSmall":  # a store with a larger minimum than S3's
                raise _too_small(None, None) from None
            if _code(exc) != "NoSuchUpload":  # completed meanwhile by another attempt: verify that
                raise

    def abort_staging(self, staging_id: str) -> None:
        """Abort the staging's multipart upload. Once completed, its object may be a published blob's
        bytes (a pointer names it), so it is deleted only when named by its bare id, as the orphan
        listing names the completed objects that no pointer names."""
        key, upload_id = self._staging(staging_id)
        if upload_id is not None:
            self.abort_upload(key, upload_id)
        else:
            self.delete_key(key)

    def _stagings(self) -> Iterator[tuple[str, datetime]]:
        """(staging id, when it began) of open multipart uploads under ``staging/``, and (by their bare
        random id) of completed staging objects that were never published (that no pointer names)."""
        prefix = self.key("staging") + "/"
        for page in self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for upload in page.get("Uploads", []):
                yield (
                    _staging_id(str(upload["Key"])[len(prefix) :], str(upload["UploadId"])),
                    upload["Initiated"],
                )
        pointed: set[str] | None = None
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if pointed is None:
                    pointed = self._pointed_keys()
                if item["Key"] not in pointed:  # not a published blob's bytes
                    yield str(item["Key"])[len(prefix) :], item["LastModified"]

    def orphan_stagings(self, known: set[str], cutoff: datetime) -> list[str]:
        """Staging uploads and objects that no id in ``known`` names, begun before ``cutoff`` (left by a
        crash between opening a staging area and recording it)."""
        named = {staging_id[:_RANDOM_LEN] for staging_id in known}
        return sorted(
            i
            for i, began in self._stagings()
            if i[:_RANDOM_LEN] not in named and began < cutoff and len(i) >= _RANDOM_LEN and i.isalnum()
        )

    def staging_ids(self) -> list[str]:
        """Open stagings, and (by their bare 24-hex id) completed ones that were never published."""
        return sorted(i for i, _ in self._stagings() if len(i) >= _RANDOM_LEN and i.isalnum())

    def orphan_temporaries(self, cutoff: datetime) -> list[str]:
        """What writers through the server (``tmp/upload-*``) left when their server was killed, last
        written before ``cutoff``: open multipart uploads (named ``upload-…?upload=ID``; the time of
        their last part counts, so a long upload still going is not one) and completed objects that
        no pointer names (a live writer publishes its object within moments of completing it)."""
        prefix = self.key("tmp") + "/"
        found = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                key, upload_id = str(upload["Key"]), str(upload["UploadId"])
                if upload["Initiated"] >= cutoff:
                    continue
                try:
                    parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except ClientError as exc:
                    if _code(exc) in {"NoSuchUpload", *_MISSING}:
                        continue  # completed or aborted meanwhile
                    raise
                if all(p["LastModified"] < cutoff for p in parts.get("Parts", [])):
                    found.append(f"{key[len(prefix) :]}?upload={upload_id}")
        pointed: set[str] | None = None
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["LastModified"] >= cutoff:
                    continue
                if pointed is None:
                    pointed = self._pointed_keys()
                if item["Key"] not in pointed:
                    found.append(str(item["Key"])[len(prefix) :])
        return sorted(found)

    def remove_temporary(self, name: str) -> None:
        rest, _, upload_id = name.partition("?upload=")
        if not rest.startswith("upload-") or "/" in rest:
            raise ValueError(f"bad temporary file name {name!r}")
        if upload_id:
            self.abort_upload(self.key("tmp", rest), upload_id)
        else:
            self.delete_key(self.key("tmp", rest))
