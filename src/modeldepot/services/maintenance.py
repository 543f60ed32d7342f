"""Keeping storage honest: the garbage collector (reclaims blobs no model needs) and fsck (verifies them).

The collector deletes a blob only when no model file and no upload in progress names it and nobody
has touched it for a grace period; the deletion happens while the blob's row is held, and publishing
takes the same row, so a blob being uploaded again at that instant cannot be lost (see
``metadata/blob_rows.py``). Starting an upload touches every blob its manifest names.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

from ..errors import Conflict
from . import ids
from .ports import BlobStore, MetadataStore
from .uploads import UploadService

# A staging area the metadata does not know is an orphan (a crash came between opening it and
# recording it) once it has been idle this long; younger ones may be about to be recorded. So is a
# temporary file of a whole-blob write (a crash came while it was received).
ORPHAN_STAGING_AGE = timedelta(hours=1)
# The fact that names the blob store a metadata database uses, and how many of the blobs indexed last
# must be in a store whose marker is missing for it to count as this database's.
BLOB_STORE_ID = "blob_store_id"
BLOB_STORE_MARKED = "blob_store_marked"
PAIRING_SAMPLE = 5


@dataclasses.dataclass(frozen=True)
class GcReport:
    dry_run: bool
    blobs_deleted: int
    bytes_reclaimed: int
    uploads_expired: int
    orphan_stagings_removed: int = 0
    temporary_files_removed: int = 0


@dataclasses.dataclass(frozen=True)
class AffectedFile:
    """A model file whose content is missing or corrupt in the blob store."""

    model_id: str
    path: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class FsckReport:
    blobs_checked: int
    bytes_checked: int
    missing: tuple[str, ...]  # indexed, but the blob store does not have them
    corrupt: tuple[str, ...]  # stored bytes whose size or sha256 is wrong
    unindexed: tuple[str, ...]  # in the blob store, unknown to the index (the collector ignores them)
    # The files of models whose content is missing or corrupt, or (forgotten by a repair and not sent
    # again since) not stored at all.
    affected: tuple[AffectedFile, ...] = ()
    forgotten: int = 0  # with repair: damaged blobs dropped from the index (and their bytes deleted)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.affected)


class Maintenance:
    def __init__(self, store: MetadataStore, blobs: BlobStore, uploads: UploadService, grace: timedelta):
        # Callers check that only a global admin runs these.
        self.store = store
        self.blobs = blobs
        self.uploads = uploads
        self.grace = grace

    def check_pairing(self) -> None:
        """At start: stop (Conflict) unless the blob store is the one this metadata database uses.

        Each names the other: the database keeps an id (``blob_store_id``) that a marker in the store
        repeats. A server pointed at another database's store would sweep that database's uploads in
        flight as orphans; one pointed at another (or an empty) store would find every file gone, and
        `fsck --repair` would then forget them.

        A store is marked only when it can be this database's: the blobs the database indexed last
        are in it, or the database has none and the store holds none either. Once the marker is
        written the database records that (``blob_store_marked``): a store without the marker is
        then refused, unless those blobs are in it (a deleted marker is written again). The marker
        is read before the database's id, and a replica writes the marker only after the id is
        recorded, so replicas starting together never see a marker their database does not name.
        """
        theirs = self.blobs.read_marker()
        ours = self.store.get_fact(BLOB_STORE_ID)
        if ours is not None and ours == theirs:
            self.store.set_fact_once(BLOB_STORE_MARKED, "yes")  # a start cut off before recording it
            return
        where, marker = self.blobs.location(), self.blobs.marker_location()
        settings = "Check --blob-url and --database-url (MODELDEPOT_BLOB_URL, MODELDEPOT_DATABASE_URL)"
        if theirs is not None:
            if ours is not None:
                detail = f"its marker ({marker}) names {theirs}, this database's store is {ours}"
            else:
                detail = f"its marker ({marker}) names {theirs}, which this database never recorded"
            raise Conflict(
                f"The blob store at {where} belongs to another metadata database: {detail}",
                hint=f"{settings}: each replica needs the same pair. If this store really is this "
                "database's (e.g. a database restored from a backup older than the marker), delete "
                "the marker and start again.",
            )
        recent = self.store.recent_blobs(PAIRING_SAMPLE)
        if recent:
            if not any(self.blobs.size(sha) == size for sha, size in recent):
                raise Conflict(
                    f"None of the {len(recent)} blobs this metadata database indexed last is in the "
                    f"blob store at {where}: it is not this database's store",
                    hint=f"{settings}, or run `modeldepot fsck` against the right store.",
                )
        elif ours is not None and self.store.get_fact(BLOB_STORE_MARKED):
            raise Conflict(
                f"The blob store at {where} has no marker, though this metadata database marked its "
                f"store: it is another store, or its marker was deleted",
                hint=f"{settings}. If it is this database's store, write {ours} into {marker}.",
            )
        elif self.blobs.has_blobs():
            raise Conflict(
                f"The blob store at {where} holds content, and this metadata database has none: it "
                "is another database's store",
                hint=f"{settings}, or give this database a store of its own.",
            )
        agreed = self.store.set_fact_once(BLOB_STORE_ID, ours or ids.store_id())
        self.blobs.write_marker(agreed)
        self.store.set_fact_once(BLOB_STORE_MARKED, "yes")

    def collect(self, *, dry_run: bool = False, grace: timedelta | None = None) -> GcReport:
        """Remove expired uploads, orphaned staging areas and temporary files, then every unreferenced
        blob untouched for ``grace``."""
        now = datetime.now(UTC)
        cutoff = now - (self.grace if grace is None else grace)
        expired = len(self.store.expired_uploads(now)) if dry_run else self.uploads.abort_expired()
        orphans = self.blobs.orphan_stagings(self.store.all_staging_ids(), now - ORPHAN_STAGING_AGE)
        temporaries = self.blobs.orphan_temporaries(now - ORPHAN_STAGING_AGE)
        if not dry_run:
            for staging_id in orphans:
                self.blobs.abort_staging(staging_id)
            for name in temporaries:
                self.blobs.remove_temporary(name)
        deleted = reclaimed = 0
        seen: set[str] = set()
        while True:
            batch = [(sha, size) for sha, size in self.store.gc_candidates(cutoff, 1000) if sha not in seen]
            if not batch:
                break
            for sha, size in batch:
                seen.add(sha)
                if dry_run:
                    deleted, reclaimed = deleted + 1, reclaimed + size
                    continue
                with self.store.collecting_blob(sha, cutoff) as gone:
                    if gone:
                        self.blobs.delete(sha)
                        deleted, reclaimed = deleted + 1, reclaimed + size
        return GcReport(
            dry_run=dry_run,
            blobs_deleted=deleted,
            bytes_reclaimed=reclaimed,
            uploads_expired=expired,
            orphan_stagings_removed=len(orphans),
            temporary_files_removed=len(temporaries),
        )

    def fsck(self, *, repair: bool = False) -> FsckReport:
        """Re-hash every indexed blob; report what is missing, corrupt, or stored but not indexed, and
        which model files have the missing or corrupt content (or, after a repair, none at all).

        A blob found damaged counts only if its index row is still the one read at the start: one
        the collector removed meanwhile is not missing, and one published again meanwhile is fine.

        ``repair``: forget each missing or corrupt blob (its index row, and its damaged bytes), so
        that the next upload of that content sends it again, which restores it for every model that
        names it. Without that, an upload finds the content "stored" and sends nothing. Refused when
        most of the index is missing: the blob store is then likely not the one the index describes
        (a wrong --blob-url), and forgetting would empty the index.
        """
        missing, corrupt = [], []
        checked = checked_bytes = 0
        indexed: dict[str, datetime] = {}  # sha256 -> when last touched, as the index said
        for sha, size, touched in self.store.blob_index():
            indexed[sha] = touched
            have = self.blobs.size(sha)
            if have is None:
                missing.append(sha)
                continue
            digest = hashlib.sha256()
            try:
                for chunk in self.blobs.read(sha, 4 * 1024 * 1024):
                    digest.update(chunk)
            except FileNotFoundError:  # gone meanwhile, or an S3 pointer whose bytes are gone
                missing.append(sha)
                continue
            checked, checked_bytes = checked + 1, checked_bytes + have
            if have != size or digest.hexdigest() != sha:
                corrupt.append(sha)
        now = self.store.blob_touches(missing + corrupt)
        missing = [sha for sha in missing if now.get(sha) == indexed[sha]]
        corrupt = [sha for sha in corrupt if now.get(sha) == indexed[sha]]
        stray = [sha for sha, _ in self.blobs.iter_blobs() if sha not in indexed]
        published = self.store.blob_touches(stray)  # since the index was read
        unindexed = [sha for sha in stray if sha not in published]
        damaged = missing + corrupt
        if repair and len(missing) >= 10 and len(missing) * 2 >= len(indexed):
            raise Conflict(
                f"{len(missing)} of the {len(indexed)} blobs the index names are missing from "
                f"{self.blobs.location()}: it may not be the blob store this database belongs to; "
                "nothing was forgotten",
                hint="Check the server's --blob-url (MODELDEPOT_BLOB_URL); `modeldepot fsck` without "
                "--repair lists what is missing.",
            )
        forgotten: set[str] = set()
        if repair:
            for sha in damaged:
                # Under the row: no upload publishes this content again meanwhile.
                with self.store.forgetting_blob(sha, indexed[sha]) as gone:
                    if gone:
                        self.blobs.delete(sha)
                        forgotten.add(sha)
        # Files of forgotten content are found again as having none (unless it was sent again since).
        named = self.store.files_naming([sha for sha in damaged if sha not in forgotten])
        affected = tuple(AffectedFile(*row) for row in sorted({*named, *self.store.unbacked_files()}))
        return FsckReport(
            blobs_checked=checked,
            bytes_checked=checked_bytes,
            missing=tuple(missing),
            corrupt=tuple(corrupt),
            unindexed=tuple(unindexed),
            affected=affected,
            forgotten=len(forgotten),
        )
