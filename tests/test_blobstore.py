"""The blob store contract, run on every backend: a local directory (alone, and served by its data
plane, which signs URLs for it as S3 presigns them) and S3 (a real SeaweedFS).

Adding a backend is adding a parameter to ``blob_store``. Multi-part data keeps S3's rule (every part
but the last at least 5 MiB) and stays small, so the whole file runs in seconds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from modeldepot.blobs import LocalBlobStore, open_blob_store
from modeldepot.errors import IntegrityError, InvalidInput, ServerError
from modeldepot.server.dataplane import DataPlane
from modeldepot.server.listen import bind
from modeldepot.services.ports import BlobStore
from modeldepot.services.signing import UrlSigner

from .seaweed import seaweedfs  # noqa: F401  (the session's SeaweedFS)

if TYPE_CHECKING:
    from modeldepot.blobs.s3 import S3BlobStore

MiB = 1024 * 1024
PART = 5 * MiB + 123  # the smallest parts S3 takes, plus a little so nothing lines up by chance
WRITER_PART = 8 * MiB  # the part size of the S3 writer
EMPTY = hashlib.sha256(b"").hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    """Distinct bytes per seed, cheap to make."""
    return (hashlib.sha256(str(seed).encode()).digest() + os.urandom(32)) * (size // 64) + b"z" * (size % 64)


class RecordingGuard:
    """A publish guard that records each (sha256, size) it is taken with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, sha256: str, size: int) -> contextlib.AbstractContextManager[None]:
        self.calls.append((sha256, size))
        return contextlib.nullcontext()


@pytest.fixture(params=["local", "local+dataplane", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """An empty store, with a recording guard; each S3 test gets a prefix of its own, and publishes
    every staged blob by a pointer (as it does from 64 MiB up)."""
    if request.param.startswith("local"):
        store = LocalBlobStore(tmp_path / "blobs")
        store.guard = RecordingGuard()
        if request.param == "local":
            yield store
            return
        sock = bind("127.0.0.1", 0)
        plane = DataPlane(store, UrlSigner(b"k" * 32), sock, f"http://127.0.0.1:{sock.getsockname()[1]}")
        store.presigner = plane
        plane.start()
        try:
            yield store
        finally:
            plane.stop()
    else:
        yield from _s3_store(request.getfixturevalue("seaweedfs"), pointer_min_size=0)


@pytest.fixture
def s3_store(request: pytest.FixtureRequest) -> Iterator[S3BlobStore]:
    """For what only S3 has to say (its part size rule, its two-step publish)."""
    yield from _s3_store(request.getfixturevalue("seaweedfs"))


def _s3_store(session_url: str, pointer_min_size: int | None = None) -> Iterator[S3BlobStore]:
    parts = urlsplit(session_url)
    url = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{secrets.token_hex(6)}"))
    store = open_blob_store(url)
    assert not isinstance(store, LocalBlobStore)
    store.guard = RecordingGuard()
    if pointer_min_size is not None:
        store.pointer_min_size = pointer_min_size
    try:
        yield store
    finally:
        store.close()


def guard_calls(store: BlobStore) -> list[tuple[str, int]]:
    assert isinstance(store.guard, RecordingGuard)
    return store.guard.calls


def is_s3(store: BlobStore) -> bool:
    return store.location().startswith("s3://")


def leftovers(store: BlobStore) -> list[str]:
    """Whatever the store holds besides published blobs: temporary files, objects, open uploads."""
    if isinstance(store, LocalBlobStore):
        temporary = (p for p in (store.root / "tmp").rglob("*") if not p.is_dir())  # tmp/t<n>/… files
        return sorted(str(p) for p in temporary) + store.staging_ids()
    s3 = store.client
    bucket, prefix = store.bucket, store.key("")
    published = store._pointed_keys()  # the bytes of blobs published by a pointer
    found = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if not item["Key"].startswith(prefix + "sha256/")
        and item["Key"] not in published
        and item["Key"] != store.key("store-id")  # the marker naming the database that uses it
    ]
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return found + [u["Key"] for u in uploads]


def put(store: BlobStore, data: bytes, chunk: int = 256 * 1024) -> str:
    writer = store.writer()
    for i in range(0, len(data), chunk):
        writer.write(data[i : i + chunk])
    digest = sha(data)
    writer.commit(digest, len(data))
    return digest


def read_all(store: BlobStore, digest: str, **kwargs: int | None) -> bytes:
    return b"".join(store.read(digest, **kwargs))


def send_part(store: BlobStore, staging_id: str, number: int, offset: int, data: bytes) -> None:
    """A client's PUT to the presigned part URL, or through the server where the store has none."""
    url = store.presign_part(staging_id, number, 600, offset=offset, size=len(data))
    if url is None:
        store.write_part(staging_id, number, offset, len(data), [data], sha(data))
        return
    response = httpx.put(url, content=data, timeout=60)
    assert response.status_code in (200, 204), response.text


# -- the writer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, WRITER_PART + 4097], ids=["one-put", "multipart"])
def test_writer_round_trip(blob_store: BlobStore, size: int) -> None:
    data = blob(size)
    digest = put(blob_store, data)
    assert blob_store.size(digest) == size
    assert read_all(blob_store, digest) == data
    assert list(blob_store.iter_blobs()) == [(digest, size)]
    assert guard_calls(blob_store) == [(digest, size)]
    assert leftovers(blob_store) == []
    path = blob_store.local_path(digest)
    assert (path is None) == is_s3(blob_store)
    assert path is None or path.read_bytes() == data


@pytest.mark.parametrize("wrong", ["sha256", "size"])
@pytest.mark.parametrize("size", [1000, WRITER_PART + 1], ids=["one-put", "multipart"])
def test_commit_with_wrong_digest_stores_nothing(blob_store: BlobStore, wrong: str, size: int) -> None:
    data = blob(size)
    writer = blob_store.writer()
    for i in range(0, size, MiB):
        writer.write(data[i : i + MiB])
    expected = (sha(b"other"), size) if wrong == "sha256" else (sha(data), size + 1)
    with pytest.raises(IntegrityError, match="were discarded"):
        writer.commit(*expected)
    assert blob_store.size(sha(data)) is None
    assert blob_store.size(expected[0]) is None
    assert list(blob_store.iter_blobs()) == []
    assert leftovers(blob_store) == []
    assert guard_calls(blob_store) == []


def test_commit_batch_keeps_the_good_and_discards_the_bad(blob_store: BlobStore) -> None:
    datas = [blob(1000 + i, seed=i) for i in range(5)] + [b""]
    batch = []
    for i, data in enumerate(datas):
        writer = blob_store.writer()
        writer.write(data)
        wrong = i == 2
        batch.append((writer, sha(b"other" if wrong else data), len(data)))
    many: list[list[tuple[str, int]]] = []
    blob_store.guard_many = lambda blobs: many.append(list(blobs)) or contextlib.nullcontext()  # type: ignore[func-returns-value]
    kept = blob_store.commit_batch(batch)
    assert kept == [sha(d) for i, d in enumerate(datas) if i != 2]
    for i, data in enumerate(datas):
        if i != 2:
            assert read_all(blob_store, sha(data)) == data
    assert blob_store.size(sha(b"other")) is None
    assert blob_store.commit_batch([]) == []
    # One guard for the whole batch (not one per blob), on every backend.
    assert [sorted(call) for call in many if call] == [
        sorted((sha(d), len(d)) for i, d in enumerate(datas) if i != 2)
    ]
    assert guard_calls(blob_store) == []
    assert leftovers(blob_store) == []


def test_abort_discards_the_bytes(blob_store: BlobStore) -> None:
    writer = blob_store.writer()
    writer.write(blob(WRITER_PART + 10))
    writer.abort()
    writer.abort()  # twice is harmless
    assert list(blob_store.iter_blobs()) == []
    assert leftovers(blob_store) == []


def test_commit_computed(blob_store: BlobStore) -> None:
    writer = blob_store.writer()
    writer.write(b"hello ")
    writer.write(b"world")
    assert writer.commit_computed() == (sha(b"hello world"), 11)
    assert read_all(blob_store, sha(b"hello world")) == b"hello world"
    assert guard_calls(blob_store) == [(sha(b"hello world"), 11)]


def test_zero_byte_blob(blob_store: BlobStore) -> None:
    writer = blob_store.writer()
    writer.commit(EMPTY, 0)
    assert blob_store.size(EMPTY) == 0
    assert read_all(blob_store, EMPTY) == b""
    assert read_all(blob_store, EMPTY, start=0, end=0) == b""
    assert read_all(blob_store, EMPTY, start=0, end=10) == b""
    assert read_all(blob_store, EMPTY, start=3) == b""
    assert list(blob_store.iter_blobs()) == [(EMPTY, 0)]
    assert guard_calls(blob_store) == [(EMPTY, 0)]


@pytest.mark.parametrize("size", [100, WRITER_PART + 7], ids=["one-put", "multipart"])
def test_identical_content_twice(blob_store: BlobStore, size: int) -> None:
    data = blob(size)
    assert put(blob_store, data) == put(blob_store, data) == sha(data)
    assert list(blob_store.iter_blobs()) == [(sha(data), size)]
    assert read_all(blob_store, sha(data)) == data
    assert guard_calls(blob_store) == [(sha(data), size)] * 2
    assert leftovers(blob_store) == []


# -- reading ---------------------------------------------------------------------------------------


def test_read_ranges(blob_store: BlobStore) -> None:
    data = blob(WRITER_PART + 4097)  # two parts in S3: part boundaries are worth a look
    digest = put(blob_store, data, chunk=MiB)
    size = len(data)
    ranges = [
        (0, None),
        (1, None),
        (size - 1, None),
        (size, None),
        (size + 5, None),
        (0, size),
        (0, size + 100),
        (1, size - 1),
        (size - 1, size),
        (size - 1, size + 10),
        (size, size + 10),
        (0, 1),
        (0, 0),
        (5, 5),
        (7, 3),
        (999, 2001),
        (WRITER_PART - 1, WRITER_PART + 1),
        (WRITER_PART, None),
        (WRITER_PART - 3000, None),
    ]
    for start, end in ranges:
        chunks = list(blob_store.read(digest, chunk_size=1000, start=start, end=end))
        assert b"".join(chunks) == data[start:end], (start, end)
        assert all(0 < len(c) <= 1000 for c in chunks), (start, end)
    assert read_all(blob_store, digest, chunk_size=3 * MiB) == data


def test_read_a_missing_blob(blob_store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        read_all(blob_store, sha(b"absent"))
    with pytest.raises(FileNotFoundError):
        read_all(blob_store, sha(b"absent"), start=10, end=20)


def test_size_delete_and_iter_blobs(blob_store: BlobStore) -> None:
    stored = {put(blob_store, blob(n, seed=n)): n for n in (10, 2000, 70_000)}
    assert sorted(blob_store.iter_blobs()) == sorted(stored.items())
    assert list(blob_store.iter_blobs()) == sorted(blob_store.iter_blobs())
    gone = next(iter(stored))
    blob_store.delete(gone)
    blob_store.delete(gone)  # deleting what is not there is fine
    assert blob_store.size(gone) is None
    assert sorted(blob_store.iter_blobs()) == sorted((k, v) for k, v in stored.items() if k != gone)
    assert blob_store.size(sha(b"never stored")) is None


def test_location(blob_store: BlobStore) -> None:
    assert blob_store.location().startswith("s3://" if is_s3(blob_store) else "file:///")


def test_presign_get(blob_store: BlobStore) -> None:
    data = blob(50_000)
    digest = put(blob_store, data)
    url = blob_store.presign_get(digest, 600, "weights ünïcode.bin")
    if isinstance(blob_store, LocalBlobStore) and blob_store.presigner is None:
        assert url is None  # the API serves local blobs itself
        return
    assert url is not None
    with httpx.Client(timeout=30) as http:
        whole = http.get(url)
        assert whole.status_code == 200
        assert whole.content == data
        disposition = whole.headers["content-disposition"]
        assert disposition.startswith("attachment;")
        assert "weights" in disposition
        part = http.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == data[100:200]
        assert part.headers["etag"].strip('"') in (digest, hashlib.md5(data).hexdigest())
        tampered = (
            url.replace("X-Amz-Signature=", "X-Amz-Signature=0") if is_s3(blob_store) else url[:-3] + "AAA"
        )
        assert http.get(tampered).status_code == 403


# -- staging: blobs that arrive in parts --------------------------------------------------------------


def _parts(data: bytes) -> list[tuple[int, int, bytes]]:
    """(number, offset, bytes) of ``data`` cut into PART-sized parts."""
    return [(i // PART + 1, i, data[i : i + PART]) for i in range(0, len(data), PART)]


@pytest.mark.parametrize("via", ["server", "presigned"])
def test_staging_out_of_order(blob_store: BlobStore, via: str) -> None:
    data = blob(2 * PART + 1000)
    staging_id = blob_store.begin_staging(len(data))
    assert staging_id in blob_store.staging_ids()
    assert blob_store.received_parts(staging_id) == {}
    parts = _parts(data)
    for number, offset, chunk in reversed(parts):
        if via == "server":
            blob_store.write_part(staging_id, number, offset, len(chunk), [chunk[:1000], chunk[1000:]], None)
        else:
            send_part(blob_store, staging_id, number, offset, chunk)
    assert blob_store.received_parts(staging_id) == {n: len(c) for n, _, c in parts}
    blob_store.finish_staging(staging_id, sha(data), len(data))
    assert blob_store.size(sha(data)) == len(data)
    assert read_all(blob_store, sha(data)) == data
    assert read_all(blob_store, sha(data), start=PART - 2, end=PART + 2) == data[PART - 2 : PART + 2]
    assert guard_calls(blob_store) == [(sha(data), len(data))]
    assert staging_id not in blob_store.staging_ids()
    assert leftovers(blob_store) == []


def _sizes_seen_by_the_guard(store: BlobStore, data: bytes) -> list[int | None]:
    """Stage and finish ``data``; what ``size`` said of it each time the publish guard was taken."""
    staging_id = store.begin_staging(len(data))
    for number, offset, chunk in _parts(data):
        send_part(store, staging_id, number, offset, chunk)
    seen: list[int | None] = []

    def guard(sha256: str, size: int) -> contextlib.AbstractContextManager[None]:
        seen.append(store.size(sha256))
        return contextlib.nullcontext()

    store.guard = guard
    store.finish_staging(staging_id, sha(data), len(data))
    assert read_all(store, sha(data)) == data and leftovers(store) == []
    return seen


def test_the_publish_guard_is_held_only_for_an_instant(blob_store: BlobStore) -> None:
    """The guard (SQLite's write lock, in the server) is held while a blob is put in place: a rename
    (local) or one small PUT of a pointer (S3); never across the bytes."""
    assert _sizes_seen_by_the_guard(blob_store, blob(PART + 10)) == [None]


def test_s3_a_blob_below_the_pointer_size_is_copied_outside_the_guard(s3_store: S3BlobStore) -> None:
    """Below ``pointer_min_size`` a staged blob is copied to its own key; the copy runs before the
    guard, which then only checks the result."""
    data = blob(PART + 10)
    assert len(data) < s3_store.pointer_min_size
    assert _sizes_seen_by_the_guard(s3_store, data) == [len(data)]
    assert s3_store._resolve(sha(data)) == (s3_store._blob_key(sha(data)), len(data))  # no pointer


def _published_by_pointer(store: S3BlobStore, data: bytes) -> tuple[str, str]:
    """Stage ``data`` and finish it with every blob a pointer; (staging id, key of its bytes)."""
    store.pointer_min_size = 0
    staging_id = store.begin_staging(len(data))
    for number, offset, chunk in _parts(data):
        send_part(store, staging_id, number, offset, chunk)
    store.finish_staging(staging_id, sha(data), len(data))
    found = store._resolve(sha(data))
    assert found is not None and found[1] == len(data)
    assert found[0] == store._staging(staging_id)[0]  # the bytes stayed where they were uploaded
    return staging_id, found[0]


def test_s3_a_pointer_is_read_listed_signed_and_deleted_as_its_blob(s3_store: S3BlobStore) -> None:
    data = blob(2 * PART + 7)
    _, key = _published_by_pointer(s3_store, data)
    digest = sha(data)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=s3_store._blob_key(digest))
    assert head["ContentLength"] == 0 and head["Metadata"] == {"md-blob": key, "md-size": str(len(data))}
    assert s3_store.size(digest) == len(data)
    assert list(s3_store.iter_blobs()) == [(digest, len(data))]
    for start, end in [(0, None), (0, 1), (PART - 1, PART + 1), (len(data) - 1, None), (5, 5)]:
        assert read_all(s3_store, digest, start=start, end=end) == data[start:end]
    assert read_all(s3_store, digest, start=len(data) + 10) == b""  # past the end: no bytes, as a file
    for size in (None, len(data)):
        url = s3_store.presign_get(digest, 60, "model.bin", size)
        assert url is not None
        got = httpx.get(url, headers={"Range": f"bytes={PART - 3}-{PART + 2}"})
        assert got.status_code == 206 and got.content == data[PART - 3 : PART + 3]
    s3_store.delete(digest)
    assert s3_store.size(digest) is None and list(s3_store.iter_blobs()) == []
    assert leftovers(s3_store) == []  # the bytes went with the pointer
    with pytest.raises(FileNotFoundError):
        read_all(s3_store, digest)


def test_s3_a_pointers_bytes_are_not_an_orphan_and_outlive_their_staging_id(s3_store: S3BlobStore) -> None:
    """gc removes completed staging objects that nothing names, but a published blob's bytes are
    named by its pointer; aborting the staging under its full id (a model deleted meanwhile, say)
    leaves them too, and finishing again is harmless."""
    data = blob(PART + 10)
    staging_id, key = _published_by_pointer(s3_store, data)
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert s3_store.orphan_stagings(set(), later) == [] and s3_store.staging_ids() == []
    s3_store.abort_staging(staging_id)
    s3_store.finish_staging(staging_id, sha(data), len(data))
    assert s3_store._resolve(sha(data)) == (key, len(data))
    assert read_all(s3_store, sha(data)) == data and leftovers(s3_store) == []


def test_s3_the_same_content_published_twice_keeps_the_first_bytes(s3_store: S3BlobStore) -> None:
    data = blob(PART + 10)
    _, first = _published_by_pointer(s3_store, data)
    second = s3_store.begin_staging(len(data))
    for number, offset, chunk in _parts(data):
        send_part(s3_store, second, number, offset, chunk)
    s3_store.finish_staging(second, sha(data), len(data))
    assert s3_store._resolve(sha(data)) == (first, len(data))
    assert read_all(s3_store, sha(data)) == data
    assert leftovers(s3_store) == []  # the second upload's object was deleted


def test_s3_a_pointer_outside_the_store_is_refused(s3_store: S3BlobStore) -> None:
    digest = sha(b"elsewhere")
    s3_store.client.put_object(
        Bucket=s3_store.bucket,
        Key=s3_store._blob_key(digest),
        Body=b"",
        Metadata={"md-blob": "another/bucket/key", "md-size": "9"},
    )
    with pytest.raises(ServerError, match="outside this store"):
        s3_store.size(digest)


def test_resent_part_replaces_the_first(blob_store: BlobStore) -> None:
    data = blob(PART + 10)
    staging_id = blob_store.begin_staging(len(data))
    (_, _, first), (_, offset, last) = _parts(data)
    send_part(blob_store, staging_id, 1, 0, blob(PART, seed=99))  # corrupted on the first try
    send_part(blob_store, staging_id, 2, offset, last)
    send_part(blob_store, staging_id, 1, 0, first)
    assert blob_store.received_parts(staging_id) == {1: PART, 2: 10}
    blob_store.finish_staging(staging_id, sha(data), len(data))
    assert read_all(blob_store, sha(data)) == data


@pytest.mark.parametrize("meanwhile", ["finished", "aborted"])
def test_a_part_still_arriving_when_its_area_is_finished_or_removed_is_refused(
    blob_store: BlobStore, meanwhile: str
) -> None:
    """A part sent again (or late) is cut off once its area is finished or removed: none of its bytes
    lands in the published blob, and it leaves nothing behind."""
    data = blob(PART + 10)
    staging_id = blob_store.begin_staging(len(data))
    for number, offset, chunk in _parts(data):
        send_part(blob_store, staging_id, number, offset, chunk)

    def late() -> Iterator[bytes]:
        # The part has opened the area by now; the area is done with before its first byte comes.
        if meanwhile == "finished":
            blob_store.finish_staging(staging_id, sha(data), len(data))
        else:
            blob_store.abort_staging(staging_id)
        yield b"x" * PART

    with pytest.raises(IntegrityError, match="no longer exists"):
        blob_store.write_part(staging_id, 1, 0, PART, late(), None)
    if meanwhile == "finished":
        assert read_all(blob_store, sha(data)) == data
    else:
        assert blob_store.size(sha(data)) is None
    assert blob_store.staging_ids() == [] and leftovers(blob_store) == []


def test_a_bad_part_is_refused(blob_store: BlobStore) -> None:
    data = blob(PART + 10)
    staging_id = blob_store.begin_staging(len(data))
    (_, _, first), (_, offset, last) = _parts(data)
    with pytest.raises(IntegrityError, match="has 9 bytes, expected 10"):
        blob_store.write_part(staging_id, 2, offset, 10, [last[:9]], None)
    with pytest.raises(IntegrityError, match="larger than"):
        blob_store.write_part(staging_id, 2, offset, 10, [last, b"x"], None)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        blob_store.write_part(staging_id, 2, offset, 10, [last], sha(b"something else"))
    assert 2 not in blob_store.received_parts(staging_id)
    blob_store.write_part(staging_id, 2, offset, 10, [last], sha(last))
    blob_store.write_part(staging_id, 1, 0, PART, [first], sha(first))
    blob_store.finish_staging(staging_id, sha(data), len(data))
    assert read_all(blob_store, sha(data)) == data


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_finish_with_a_wrong_digest_publishes_nothing(blob_store: BlobStore, wrong: str) -> None:
    data = blob(PART + 10)
    staging_id = blob_store.begin_staging(len(data))
    for number, offset, chunk in _parts(data):
        send_part(blob_store, staging_id, number, offset, chunk)
    digest, size = (sha(b"other"), len(data)) if wrong == "sha256" else (sha(data), len(data) + 1)
    with pytest.raises(IntegrityError, match="were discarded"):
        blob_store.finish_staging(staging_id, digest, size)
    assert blob_store.size(digest) is None
    assert blob_store.size(sha(data)) is None
    assert list(blob_store.iter_blobs()) == []
    assert blob_store.staging_ids() == []
    assert leftovers(blob_store) == []
    assert guard_calls(blob_store) == []


def test_staging_small_blobs(blob_store: BlobStore) -> None:
    staging_id = blob_store.begin_staging(0)
    blob_store.finish_staging(staging_id, EMPTY, 0)
    assert blob_store.size(EMPTY) == 0
    one = b"a single small part"
    staging_id = blob_store.begin_staging(len(one))
    send_part(blob_store, staging_id, 1, 0, one)
    blob_store.finish_staging(staging_id, sha(one), len(one))
    assert read_all(blob_store, sha(one)) == one
    assert guard_calls(blob_store) == [(EMPTY, 0), (sha(one), len(one))]
    assert blob_store.staging_ids() == []
    assert leftovers(blob_store) == []


def test_abort_staging(blob_store: BlobStore) -> None:
    kept = blob_store.begin_staging(100)
    staging_id = blob_store.begin_staging(PART + 10)
    assert sorted(blob_store.staging_ids()) == sorted([kept, staging_id])
    send_part(blob_store, staging_id, 1, 0, blob(PART))
    blob_store.abort_staging(staging_id)
    blob_store.abort_staging(staging_id)  # twice is harmless
    assert blob_store.staging_ids() == [kept]
    assert blob_store.received_parts(staging_id) == {}
    blob_store.abort_staging(kept)
    assert leftovers(blob_store) == []
    assert list(blob_store.iter_blobs()) == []


def test_orphan_stagings_are_the_unknown_ones_idle_since_the_cutoff(blob_store: BlobStore) -> None:
    known = blob_store.begin_staging(PART + 10)
    orphan = blob_store.begin_staging(PART + 10)
    send_part(blob_store, orphan, 1, 0, blob(PART))
    later = datetime.now(UTC) + timedelta(minutes=5)  # everything is idle "since" a cutoff ahead
    assert blob_store.orphan_stagings({known}, later) == [orphan]
    assert blob_store.orphan_stagings({known, orphan}, later) == []
    assert blob_store.orphan_stagings({known}, datetime.now(UTC) - timedelta(minutes=5)) == []  # too young
    for staging_id in (known, orphan):
        blob_store.abort_staging(staging_id)
    assert leftovers(blob_store) == []


def _staged_and_completed(store: S3BlobStore, data: bytes) -> str:
    """A staging area of ``data`` whose multipart upload was completed, as by a replica that then
    stopped before it published; its id."""
    staging_id = store.begin_staging(len(data))
    for number, offset, chunk in _parts(data):
        send_part(store, staging_id, number, offset, chunk)
    key, upload_id = store._staging(staging_id)
    assert upload_id is not None
    parts = store._parts(key, upload_id) or []
    store.complete_upload(key, upload_id, [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts])
    return staging_id


def test_s3_a_completed_but_unpublished_staging_is_named_by_its_full_id(s3_store: S3BlobStore) -> None:
    """A crash between completing the multipart upload and publishing leaves an object under the
    bare random part of the id; the full id the metadata holds still names it."""
    staging_id = _staged_and_completed(s3_store, blob(PART + 10))
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert s3_store.orphan_stagings({staging_id}, later) == []
    (bare,) = s3_store.orphan_stagings(set(), later)
    assert staging_id.startswith(bare)
    s3_store.abort_staging(bare)
    assert leftovers(s3_store) == []


def test_s3_parts_below_the_minimum_are_refused_clearly(s3_store: S3BlobStore) -> None:
    blob_store = s3_store
    data = blob(2000)
    staging_id = blob_store.begin_staging(len(data))
    send_part(blob_store, staging_id, 1, 0, data[:1000])
    send_part(blob_store, staging_id, 2, 1000, data[1000:])
    with pytest.raises(InvalidInput, match="at least 5242880 bytes"):
        blob_store.finish_staging(staging_id, sha(data), len(data))
    assert blob_store.received_parts(staging_id) == {1: 1000, 2: 1000}  # kept: nothing was lost
    with pytest.raises(InvalidInput, match="1 to 10000"):
        blob_store.presign_part(staging_id, 0, 60, offset=0, size=1)
    blob_store.abort_staging(staging_id)


def test_s3_finish_resumes_after_a_stop_between_complete_and_publish(s3_store: S3BlobStore) -> None:
    blob_store = s3_store
    data = blob(PART + 10)
    staging_id = blob_store.begin_staging(len(data))
    for number, offset, chunk in _parts(data):
        send_part(blob_store, staging_id, number, offset, chunk)
    s3, bucket = blob_store.client, blob_store.bucket
    key, upload_id = blob_store._staging(staging_id)
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    s3.complete_multipart_upload(  # what a replica did before it stopped
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]},
    )
    assert blob_store.staging_ids() == [staging_id[:24]]  # still found, to be cleaned up if abandoned
    blob_store.finish_staging(staging_id, sha(data), len(data))
    assert read_all(blob_store, sha(data)) == data
    assert leftovers(blob_store) == []
    with pytest.raises(IntegrityError, match="no longer exists"):
        blob_store.finish_staging(staging_id, sha(data), len(data))


# -- choosing a store by URL -----------------------------------------------------------------------


def test_open_blob_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_blob_store((tmp_path / "b").as_uri()), LocalBlobStore)
    with pytest.raises(ValueError, match="use file:///PATH or s3://"):
        open_blob_store("ftp://example/blobs")
    for bad in (
        "s3://bucket/p?endpoint=http://127.0.0.1:1&colour=blue",
        "s3://bucket/p?addressing=sideways",
        "s3://bucket/p?endpoint=ftp://127.0.0.1",
        "s3://key:secret@bucket/p",
        "s3:///no-bucket",
    ):
        with pytest.raises(ValueError):
            open_blob_store(bad)
    store = open_blob_store(
        "s3://bucket/some/prefix/?endpoint=http://127.0.0.1:1&region=eu-west-1&addressing=path"
    )
    try:
        assert store.location() == "s3://bucket/some/prefix"
        assert store.local_path(EMPTY) is None
    finally:
        store.close()


def _put(store: LocalBlobStore, data: bytes) -> str:
    writer = store.writer()
    writer.write(data)
    return writer.commit_computed()[0]


def test_a_new_local_store_keeps_one_folder_level_and_says_so(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    digest = _put(store, b"new")
    assert (tmp_path / "blobs" / "LAYOUT").read_text() == "sha256/ab/<sha256>\n"
    assert store.local_path(digest) == tmp_path / "blobs" / "sha256" / digest[:2] / digest
    assert list(store.iter_blobs()) == [(digest, 3)]
    assert LocalBlobStore(tmp_path / "blobs").local_path(digest) is not None  # the next start agrees


def test_a_store_from_before_the_layout_file_keeps_two_levels(tmp_path: Path) -> None:
    old = hashlib.sha256(b"old").hexdigest()
    legacy = tmp_path / "blobs" / "sha256" / old[:2] / old[2:4] / old
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"old")
    store = LocalBlobStore(tmp_path / "blobs")
    assert store.layout == "sha256/ab/cd/<sha256>"
    assert b"".join(store.read(old)) == b"old" and store.size(old) == 3
    new = _put(store, b"newer")
    assert store.local_path(new) == tmp_path / "blobs" / "sha256" / new[:2] / new[2:4] / new
    assert sorted(store.iter_blobs()) == sorted([(old, 3), (new, 5)])
    assert (tmp_path / "blobs" / "LAYOUT").read_text() == "sha256/ab/cd/<sha256>\n"


def test_an_unknown_layout_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "LAYOUT").write_text("sha512/a/b/c\n")
    with pytest.raises(ValueError, match="LAYOUT says the blob layout is 'sha512/a/b/c'"):
        LocalBlobStore(tmp_path / "blobs")


@pytest.mark.parametrize("announced", ["right", "shorter", "longer"])
def test_s3_finishing_reads_the_object_back_in_ranges(
    s3_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch, announced: str
) -> None:
    """A completed object is read back a few ranges at a time; a byte more or less than announced
    (an object completed by an earlier attempt, here) fails the check like a wrong byte."""
    monkeypatch.setattr("modeldepot.blobs.s3.READ_RANGE", MiB + 1)
    data = blob(2 * PART + 7)
    staging_id = _staged_and_completed(s3_store, data)
    size = {"right": len(data), "shorter": len(data) - 1, "longer": len(data) + 1}[announced]
    if announced == "right":
        s3_store.finish_staging(staging_id, sha(data), size)
        assert read_all(s3_store, sha(data)) == data
    else:
        with pytest.raises(IntegrityError, match="were discarded"):
            s3_store.finish_staging(staging_id, sha(data), size)
        assert s3_store.size(sha(data)) is None
    assert leftovers(s3_store) == []


def test_local_a_short_write_is_written_again_and_never_counted_as_stored(tmp_path: Path) -> None:
    """A write that the disk cuts short (a nearly full disk does; here a file size limit, in a process
    of its own) is written again, which fails; the bytes that did not land are never stored under
    the blob's sha256. Before, the short write was counted whole: after more room, the next writes
    landed and a file with a hole in it was published as the blob (found with a full tmpfs)."""
    script = textwrap.dedent(
        """
        import hashlib, resource, signal, sys
        from modeldepot.blobs import LocalBlobStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        store = LocalBlobStore(sys.argv[1])
        writer = store.writer()
        chunks = [b"a" * 1_000_000, b"b" * 1_000_000, b"c" * 1_000_000]
        writer.write(chunks[0])
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, resource.RLIM_INFINITY))
        try:
            writer.write(chunks[1])  # 500,000 bytes land
        except OSError as exc:
            print("refused", exc.errno)
            sys.exit(0)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        writer.write(chunks[2])  # room again, as when another upload's bytes are freed
        print("stored", writer.commit_computed()[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "blobs")], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["refused", str(errno.EFBIG)], done.stdout + done.stderr
    store = LocalBlobStore(tmp_path / "blobs")
    assert list(store.iter_blobs()) == []
    assert [p for p in (tmp_path / "blobs" / "tmp").rglob("*") if p.is_file()] == []


def test_local_blobs_are_readable_by_the_server_alone_however_they_arrived(tmp_path: Path) -> None:
    """Whole blobs were 0600 and blobs from parts 0644 (readable by every user of the machine)."""
    store = LocalBlobStore(tmp_path / "blobs")
    whole = blob(1000, seed=1)
    writer = store.writer()
    writer.write(whole)
    writer.commit(sha(whole), len(whole))
    parted = blob(2 * PART + 1000, seed=2)
    staging_id = store.begin_staging(len(parted))
    for number, offset, chunk in _parts(parted):
        store.write_part(staging_id, number, offset, len(chunk), [chunk], None)
    store.finish_staging(staging_id, sha(parted), len(parted))
    for data in (whole, parted):
        path = store.local_path(sha(data))
        assert path is not None and path.stat().st_mode & 0o777 == 0o600


def test_what_a_killed_writer_left_is_found_once_idle_and_removed(blob_store: BlobStore) -> None:
    """A writer through the server (a whole blob; with S3 a multipart upload under tmp/) whose server
    was killed leaves its bytes behind for good; the collector asks for them here. A published blob's
    bytes (with S3, the tmp/ object a pointer names) are never among them."""
    kept = blob(WRITER_PART + 100, seed=5)
    writer = blob_store.writer()
    writer.write(kept)
    writer.commit(sha(kept), len(kept))
    left = blob_store.writer()
    left.write(blob(WRITER_PART + 100, seed=6))  # and then its server died
    assert blob_store.orphan_temporaries(datetime.now(UTC) - timedelta(minutes=5)) == []  # too young
    later = datetime.now(UTC) + timedelta(minutes=5)
    (name,) = blob_store.orphan_temporaries(later)
    blob_store.remove_temporary(name)
    assert blob_store.orphan_temporaries(later) == [] and leftovers(blob_store) == []
    assert read_all(blob_store, sha(kept)) == kept
    with pytest.raises(ValueError, match="bad temporary file name"):
        blob_store.remove_temporary("../staging/x")
    left.abort()  # the object in this process: its file handle (nothing is left to remove)


def test_the_marker_naming_the_database_round_trips_and_is_no_blob(blob_store: BlobStore) -> None:
    assert blob_store.read_marker() is None
    blob_store.write_marker("bs0123456789abcdef")
    blob_store.write_marker("bsfedcba9876543210")  # replaced whole
    assert blob_store.read_marker() == "bsfedcba9876543210"
    assert blob_store.marker_location().endswith("store-id")
    assert list(blob_store.iter_blobs()) == []
    assert blob_store.staging_ids() == []
    assert leftovers(blob_store) == []
