"""The local store's parts: direct I/O, unaligned offsets, and hashing parts as they arrive.

The blob-store contract (test_blobstore.py) covers what every store does; this is what the local
store does on top: parts written around the page cache where the file system allows it (and through
it where it does not, or where an offset is not aligned), and a part hashed as it arrives when the
parts before it are in, with a fallback to reading back from disk whenever that could be wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldepot import directio
from modeldepot.blobs import LocalBlobStore
from modeldepot.errors import IntegrityError

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture(params=[True, False], ids=["direct", "page-cache"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalBlobStore:
    s = LocalBlobStore(tmp_path / "blobs")
    s.direct_io = request.param
    return s


def parts_of(data: bytes, part_size: int) -> list[tuple[int, int, bytes]]:
    return [(i // part_size + 1, i, data[i : i + part_size]) for i in range(0, len(data), part_size)]


def send(store: LocalBlobStore, via: str, staging_id: str, number: int, offset: int, chunk: bytes) -> None:
    """A part as the API hands it over (pieces) or as the data plane does (read from the socket into
    the store's buffers; a socket gives what it has, here at most 777 KiB + 3 at a time)."""
    if via == "chunks":
        store.write_part(staging_id, number, offset, len(chunk), pieces(chunk, 777 * 1024 + 3), None)
        return
    source = io.BytesIO(chunk)
    store.receive_part(
        staging_id, number, offset, len(chunk), lambda v: source.readinto(v[: 777 * 1024 + 3]), None
    )


@pytest.mark.parametrize("via", ["chunks", "readinto"])
@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled"])
@pytest.mark.parametrize(
    "part_size", [directio.CHUNK + 4 * MiB, MiB + 1000], ids=["aligned, a buffer and a half", "unaligned"]
)
def test_parts_in_any_order_and_at_any_offset_make_the_blob(
    store: LocalBlobStore, order: str, part_size: int, via: str
) -> None:
    data = os.urandom(3 * part_size + 4321)
    parts = parts_of(data, part_size)
    if order == "reversed":
        parts.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(parts)
    staging_id = store.begin_staging(len(data))
    for number, offset, chunk in parts:
        send(store, via, staging_id, number, offset, chunk)
    store.finish_staging(staging_id, sha(data), len(data))
    assert b"".join(store.read(sha(data))) == data
    assert store.staging_ids() == []


def test_finishing_while_parts_are_still_read_back_for_hashing(tmp_path: Path) -> None:
    """Finishing takes over from the thread that hashes parts from disk wherever it stopped (also in
    the middle of a part)."""
    store = LocalBlobStore(tmp_path / "blobs")
    for attempt in range(4):
        data = os.urandom(6 * 4 * MiB + attempt)
        staging_id = store.begin_staging(len(data))
        parts = parts_of(data, 4 * MiB)
        # The first part comes last: it is hashed as it arrives, and the thread then reads the rest back.
        for number, offset, chunk in [*parts[1:], parts[0]]:
            store.write_part(staging_id, number, offset, len(chunk), [chunk], None)
        store.finish_staging(staging_id, sha(data), len(data))
        assert b"".join(store.read(sha(data))) == data


def test_the_same_part_twice_at_once_is_judged_by_what_landed(store: LocalBlobStore) -> None:
    """A part sent again while its first copy is still arriving: the bytes on disk may be a mix of the
    two, so the hash of the first copy as it arrived must not count. Finishing goes by what is on
    disk: it publishes the blob only if those bytes are the blob's."""
    data = os.urandom(2 * MiB + 10)
    staging_id = store.begin_staging(len(data))
    (_, _, first), (_, offset, last) = parts_of(data, 2 * MiB)

    def first_copy() -> Iterator[bytes]:
        yield first[:MiB]
        # The second copy (wrong bytes) arrives whole meanwhile.
        store.write_part(staging_id, 1, 0, len(first), [os.urandom(len(first))], None)
        yield first[MiB:]

    store.write_part(staging_id, 1, 0, len(first), first_copy(), None)  # the first part: hashed as it comes
    store.write_part(staging_id, 2, offset, len(last), [last], None)
    landed = (store.root / "staging" / staging_id / "data").read_bytes()
    if landed == data:  # the first copy's bytes were all written after the second's
        store.finish_staging(staging_id, sha(data), len(data))
        assert b"".join(store.read(sha(data))) == data
    else:
        with pytest.raises(IntegrityError, match="discarded"):
            store.finish_staging(staging_id, sha(data), len(data))
        assert store.size(sha(data)) is None
    assert store.staging_ids() == []


def test_a_part_refused_on_the_way_leaves_the_running_hash_as_it_was(store: LocalBlobStore) -> None:
    data = os.urandom(2 * MiB + 10)
    staging_id = store.begin_staging(len(data))
    (_, _, first), (_, offset, last) = parts_of(data, 2 * MiB)
    with pytest.raises(IntegrityError, match="larger than"):
        store.write_part(staging_id, 1, 0, len(first), [first, b"x"], None)
    for short in (first[:100], first[: MiB + 5]):  # less than a block; whole blocks and a bit
        with pytest.raises(IntegrityError, match="expected"):
            store.write_part(staging_id, 1, 0, len(first), [short], None)
        with pytest.raises(IntegrityError, match="expected"):  # the body ends early
            store.receive_part(staging_id, 1, 0, len(first), io.BytesIO(short).readinto, None)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        store.write_part(staging_id, 1, 0, len(first), [first[:-1] + b"?"], sha(first))
    store.write_part(staging_id, 1, 0, len(first), pieces(first, 300_001), sha(first))
    store.write_part(staging_id, 2, offset, len(last), [last], None)
    store.finish_staging(staging_id, sha(data), len(data))
    assert b"".join(store.read(sha(data))) == data


@pytest.mark.parametrize("start,length", [(0, 10), (4095, 2), (4096, 4096), (5000, 9 * MiB), (0, 20 * MiB)])
def test_read_range_at_odd_boundaries(tmp_path: Path, start: int, length: int) -> None:
    data = os.urandom(9 * MiB + 5000)
    path = tmp_path / "f"
    path.write_bytes(data)
    got = b"".join(bytes(v) for v in directio.read_range(path, start, length))
    assert got == data[start : start + length]  # stops at the end of the file


def test_a_part_for_an_area_that_is_gone_leaves_nothing_behind(store: LocalBlobStore) -> None:
    staging_id = store.begin_staging(MiB)
    store.abort_staging(staging_id)
    for _ in range(3):
        with pytest.raises(IntegrityError, match="no longer exists"):
            store.write_part(staging_id, 1, 0, MiB, [b"x" * MiB], None)
    assert store._ahead == {} and store._write_locks == {}  # no state kept per request that failed


def _reads_back(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the reads of staged data from disk (finishing reads one, empty, past the end)."""
    calls: list[int] = []
    real = directio.read_range

    def counting(path: Path, start: int, length: int) -> Iterator[memoryview]:
        calls.append(length)
        return real(path, start, length)

    monkeypatch.setattr(directio, "read_range", counting)
    return calls


def test_parts_one_after_the_other_start_no_thread_that_would_keep_the_next_from_being_hashed(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part that ends with nothing after it on disk starts no hashing thread: while one ran, the next
    part (the client's next request) could not be hashed as it arrived, so it was read back, and the
    part after it too while that went on (seen here: parts 2-6 of a 2 GiB upload read back)."""
    reads = _reads_back(monkeypatch)
    data = os.urandom(4 * MiB + 5)
    staging_id = store.begin_staging(len(data))
    for number, offset, chunk in parts_of(data, MiB):
        store.write_part(staging_id, number, offset, len(chunk), [chunk], None)
        state = store._ahead[staging_id]
        assert not state.running and (state.next_part, state.hashed) == (number + 1, offset + len(chunk))
    store.finish_staging(staging_id, sha(data), len(data))
    assert b"".join(store.read(sha(data))) == data
    assert reads == [1]
