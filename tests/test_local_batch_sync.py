"""LocalBlobStore.commit_batch puts a large batch on disk with syncfs(2), a small one (or one where
there is no syncfs) with one fsync per file: every path keeps the good blobs, byte for byte, and
discards the bad ones. A real store on tmp_path throughout; only libc's syncfs is wrapped, to count
its calls (or replaced, to play a system without it or a failing disk)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import sys
from pathlib import Path

import pytest

from modeldepot.blobs import LocalBlobStore, local
from modeldepot.errors import StorageFull
from modeldepot.services.ports import BlobWriter

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
BAD = 3  # the index of the corrupt blob in each batch


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs(count: int) -> list[bytes]:
    """Distinct small blobs of 4-64 KiB, one of them empty."""
    return [b""] + [os.urandom(4096 + (i * 7919) % (60 * 1024)) for i in range(1, count)]


def build_batch(store: LocalBlobStore, datas: list[bytes]) -> list[tuple[BlobWriter, str, int]]:
    """Each blob written, announced with its sha256, but for blob BAD (announced with a wrong one)."""
    batch: list[tuple[BlobWriter, str, int]] = []
    for i, data in enumerate(datas):
        writer = store.writer()
        writer.write(data)
        batch.append((writer, sha(b"other" if i == BAD else data), len(data)))
    return batch


def assert_kept_the_good(store: LocalBlobStore, datas: list[bytes], kept: list[str]) -> None:
    good = [data for i, data in enumerate(datas) if i != BAD]
    assert kept == [sha(data) for data in good]
    for data in good:
        path = store.local_path(sha(data))
        assert path is not None and path.read_bytes() == data
        assert b"".join(store.read(sha(data))) == data
    assert store.size(sha(b"other")) is None
    assert {(sha(d), len(d)) for d in good} <= set(store.iter_blobs())
    assert [p for p in (store.root / "tmp").rglob("*") if p.is_file()] == []  # no temporary file left


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


class Counts:
    def __init__(self) -> None:
        self.syncfs = 0
        self.fdatasync = 0
        self.fsync = 0


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    """Count the calls of libc's syncfs (wrapped, still called) and of os.fsync / os.fdatasync."""
    found = Counts()
    real_syncfs = local._libc_syncfs()
    if real_syncfs is not None:

        def counting_syncfs(fd: int) -> int:
            found.syncfs += 1
            return real_syncfs(fd)

        monkeypatch.setattr(local, "_syncfs_func", counting_syncfs)
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def counting_fsync(fd: int) -> None:
        found.fsync += 1
        real_fsync(fd)

    def counting_fdatasync(fd: int) -> None:
        found.fdatasync += 1
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    return found


def fake_syncfs(monkeypatch: pytest.MonkeyPatch, code: int) -> list[int]:
    """Replace libc's syncfs with one that fails with errno ``code``, as the ctypes function would;
    the list it returns grows by one per call."""
    calls: list[int] = []

    def failing(fd: int) -> int:
        calls.append(fd)
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(local, "_syncfs_looked_up", True)
    monkeypatch.setattr(local, "_syncfs_func", failing)
    return calls


@linux_only
def test_a_large_batch_is_put_on_disk_with_syncfs(store: LocalBlobStore, counts: Counts) -> None:
    assert local._libc_syncfs() is not None  # resolved from libc
    datas = blobs(local.SYNCFS_MIN_BLOBS + 9)
    batch = build_batch(store, datas)
    at_guard: list[tuple[int, int]] = []

    def guard_many(many: object) -> contextlib.AbstractContextManager[None]:
        at_guard.append((counts.syncfs, counts.fdatasync))
        return contextlib.nullcontext()

    store.guard_many = guard_many
    kept = store.commit_batch(batch)
    assert_kept_the_good(store, datas, kept)
    # Every file on disk (one syncfs, then each checked) before the renames; one more syncfs after.
    assert at_guard == [(1, len(datas) - 1)]
    assert (counts.syncfs, counts.fdatasync, counts.fsync) == (2, len(datas) - 1, 0)


@linux_only
def test_a_small_batch_keeps_one_fsync_per_file(store: LocalBlobStore, counts: Counts) -> None:
    datas = blobs(local.SYNCFS_MIN_BLOBS)  # one good blob fewer than the threshold
    kept = store.commit_batch(build_batch(store, datas))
    assert_kept_the_good(store, datas, kept)
    assert counts.syncfs == 0
    assert counts.fdatasync == 0
    assert counts.fsync >= len(datas) - 1  # each file, then each folder a blob moved into


def test_without_syncfs_a_large_batch_is_fsynced_file_by_file(
    store: LocalBlobStore, counts: Counts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "_syncfs_looked_up", True)
    monkeypatch.setattr(local, "_syncfs_func", None)  # not Linux, or a libc without it
    datas = blobs(local.SYNCFS_MIN_BLOBS * 2)
    kept = store.commit_batch(build_batch(store, datas))
    assert_kept_the_good(store, datas, kept)
    assert (counts.syncfs, counts.fdatasync) == (0, 0)
    assert counts.fsync >= len(datas) - 1


def test_a_kernel_without_syncfs_falls_back_and_is_not_asked_again(
    store: LocalBlobStore, counts: Counts, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_syncfs(monkeypatch, errno.ENOSYS)
    datas = blobs(local.SYNCFS_MIN_BLOBS * 2)
    kept = store.commit_batch(build_batch(store, datas))
    assert_kept_the_good(store, datas, kept)
    assert local._syncfs_func is None  # ENOSYS: the per-file path from now on
    assert counts.fdatasync == 0
    assert counts.fsync >= len(datas) - 1
    more = blobs(local.SYNCFS_MIN_BLOBS * 2)
    assert_kept_the_good(store, more, store.commit_batch(build_batch(store, more)))
    assert len(calls) == 1


def test_a_failing_syncfs_publishes_nothing_and_leaves_nothing(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_syncfs(monkeypatch, errno.EIO)
    datas = blobs(local.SYNCFS_MIN_BLOBS + 1)  # as many good ones as the threshold
    guarded: list[object] = []
    store.guard_many = lambda many: guarded.append(many) or contextlib.nullcontext()  # type: ignore[func-returns-value]
    with pytest.raises(OSError) as raised:
        store.commit_batch(build_batch(store, datas))
    assert raised.value.errno == errno.EIO
    assert len(calls) == 1
    assert guarded == []  # nothing moved into place
    assert list(store.iter_blobs()) == []
    assert [p for p in (store.root / "tmp").rglob("*") if p.is_file()] == []
    assert local._syncfs_func is not None  # an I/O error is not a missing syncfs


def test_a_full_disk_met_on_writeback_is_storage_full(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4 allocates blocks when it writes pages back: ENOSPC can come from the sync, not the write."""
    fake_syncfs(monkeypatch, errno.ENOSPC)
    with pytest.raises(StorageFull, match="disk is full"):
        store.commit_batch(build_batch(store, blobs(local.SYNCFS_MIN_BLOBS + 1)))
    assert list(store.iter_blobs()) == []
    assert [p for p in (store.root / "tmp").rglob("*") if p.is_file()] == []
