"""Uploads: how a model's files get in, verified, resumable and deduplicated.

The native protocol (docs/architecture.md, "Uploads"):

1. :meth:`UploadService.start` takes the model's metadata and manifest (path, size, sha256) and
   answers with the blobs still to send. Content already stored counts as sent only when this key can
   read it in some model already, so knowing a digest never grants access to bytes. A client that
   sends an ``upload_key`` (a digest of what it is uploading) and is interrupted gets the same model
   back when it runs again, with what is still missing: that is how an upload resumes.
2. Small blobs are sent whole (:meth:`open_blob`); large ones in parts into a staging area of the
   blob store (:meth:`parts`, :meth:`write_part`, or straight to the object store through presigned
   URLs), in any order and several at a time; a part that arrived is never asked for again.
   :meth:`complete_blob` verifies size and sha256 of the whole and moves it into place.
3. :meth:`commit` checks that nothing is pending and every blob is stored, then marks the model
   ``ready`` in one statement.

The Gradient CLI's flow (a model first, its single file or ``model.zip`` later) is at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

from ..errors import Conflict, IntegrityError, InvalidInput, NotFound, PayloadTooLarge, project_not_found
from ..records import Model, ModelFile
from . import ids, validation
from .archives import ArchiveLimits, unpack_zip
from .auth import Principal
from .models import Limits, ModelService, check_manifest, detect_type
from .ports import BlobStore, BlobWriter, MetadataStore, NewModel, PendingBlob, Staging, UploadInProgress

log = logging.getLogger(__name__)

GRADIENT_METADATA_FILE = "gradient-model-metadata.json"
_MAX_METADATA_FILE = 1024 * 1024
# How long finishing a blob whose staging area was emptied or taken away waits for another run of
# the same upload, which finished it, to tick it off (it does so moments after publishing it).
_RECEIVED_ELSEWHERE_WAIT = 2.0


@dataclasses.dataclass(frozen=True)
class MissingBlob:
    sha256: str
    size: int
    in_parts: bool


@dataclasses.dataclass(frozen=True)
class UploadPlan:
    """The answer to starting (or resuming) an upload: the model and the blobs still to send."""

    model: Model
    missing: tuple[MissingBlob, ...]
    resumed: bool = False


@dataclasses.dataclass(frozen=True)
class Part:
    number: int  # from 1
    offset: int
    size: int
    received: bool
    url: str | None  # where to PUT it directly (object store), or None: send it to the server


@dataclasses.dataclass(frozen=True)
class PartPlan:
    sha256: str
    size: int
    part_size: int
    parts: tuple[Part, ...]
    in_order: bool  # send the parts one after the other (see BlobStore.parts_in_order)


@dataclasses.dataclass(frozen=True)
class StagedPlan:
    """A staging area opened before its content's sha256 is known, and where its parts go."""

    staging: Staging
    parts: tuple[Part, ...]
    in_order: bool  # send the parts one after the other (see BlobStore.parts_in_order)


# How many staging areas one key may hold open (not yet named by an upload) at once.
MAX_OPEN_STAGINGS = 64
MANIFEST_CACHE_ENTRIES = 400_000  # files of the manifests kept by receive_batch (about 60 MB at most)


class UploadService:
    def __init__(self, store: MetadataStore, blobs: BlobStore, models: ModelService, limits: Limits):
        self.store = store
        self.blobs = blobs
        self.models = models
        self.limits = limits
        # {sha256: size} of the manifests of recent uploads, for the batches of small blobs that check
        # each frame against them: loading a manifest of 10,000 files for each of its 40 batches cost
        # more than storing the files. A manifest never changes once written, so a copy stays true
        # (a model given files later is looked up again when a frame is not in the copy).
        self._manifests: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._manifests_lock = threading.Lock()

    # -- 1. start or resume ------------------------------------------------------------------------

    def start(
        self,
        principal: Principal,
        project_id: str,
        *,
        name: Any,
        files: Any,
        type: Any = None,
        summary: Any = None,
        notes: Any = None,
        tags: Any = None,
        metadata: Any = None,
        dataset_ref: Any = None,
        upload_key: Any = None,
        staged: Any = None,
        source: str = "upload",
    ) -> UploadPlan:
        """Create a model in state ``uploading`` from its manifest, or resume the one ``upload_key`` names.

        ``staged`` maps a sha256 of the manifest to a staging area this key opened with :meth:`stage`
        before it knew that sha256 (its parts may still be arriving): a blob still missing takes it
        over; one that is not needed (the content is stored already) is dropped.
        """
        principal.require(project_id, "editor")
        if not self.store.project_exists(project_id):
            raise project_not_found(project_id)
        key = validation.sha256(upload_key) if upload_key is not None else None
        manifest = check_manifest(files, self.limits.max_files)
        claimed = _staged_map(staged, len(manifest))
        if key is not None:
            earlier = self.store.find_upload(project_id, key, principal.user)
            if earlier is not None:
                resumed = self._resume(principal, project_id, earlier, manifest, claimed)
                if resumed is not None:
                    return resumed
                # The same key for other files (a client that makes its keys its own way): the
                # newest upload takes the key; the earlier one can no longer be resumed.
                self.store.release_upload_key(earlier)
        now = datetime.now(UTC)
        readable = self.store.visible_blobs(principal.visible_projects(), {f.sha256 for f in manifest})
        stored = self.store.stored_blobs(readable)
        missing: dict[str, int] = {}
        for f in manifest:
            if f.sha256 in stored:
                if stored[f.sha256] == f.size:
                    continue
                raise IntegrityError(
                    f"{f.path!r} is declared as {f.size} bytes, but its content (sha256 {f.sha256}) "
                    f"has {stored[f.sha256]} bytes",
                    hint="Hash the file again: it may have changed.",
                )
            missing.setdefault(f.sha256, f.size)
        new = self._new_model(
            principal,
            project_id,
            name=name,
            type=type,
            default_type=detect_type(f.path for f in manifest),
            summary=summary,
            notes=notes,
            tags=tags,
            metadata=metadata,
            dataset_ref=dataset_ref,
            source=source,
            created_at=now,
            expires_at=now + self.limits.upload_expiry,
            files=manifest,
            pending=tuple(missing.items()),
            upload_key=key,
        )
        try:
            model = self.store.create_model(new)
        except UploadInProgress as race:
            # The same upload started at the same instant (from another replica, say) made the
            # model first: this run resumes it, as if it had started a moment later.
            resumed = self._resume(principal, project_id, race.model_id, manifest, claimed)
            if resumed is None:
                raise Conflict(
                    "Another upload with this upload_key and other files started at the same time",
                    hint="Run the upload again, or send another upload_key.",
                ) from None
            return resumed
        self._adopt(principal, project_id, model.id, claimed)
        return UploadPlan(
            model=self.models.get(principal, model.id, with_files=False), missing=self._missing(model.id)
        )

    def _resume(
        self,
        principal: Principal,
        project_id: str,
        model_id: str,
        manifest: Sequence[ModelFile],
        claimed: dict[str, str],
    ) -> UploadPlan | None:
        """The plan that resumes this uploading model if it has exactly these files; else None."""
        model = self.models.get(principal, model_id, with_files=True)
        if {(f.path, f.size, f.sha256) for f in model.files or ()} != {
            (f.path, f.size, f.sha256) for f in manifest
        }:
            return None
        self.store.touch_blobs(f.sha256 for f in manifest)
        # A resumed upload is alive: it gets the full expiry again from now.
        self.store.update_model(model.id, expires_at=datetime.now(UTC) + self.limits.upload_expiry)
        self._adopt(principal, project_id, model.id, claimed)
        return UploadPlan(model=model, missing=self._missing(model.id), resumed=True)

    def _adopt(self, principal: Principal, project_id: str, model_id: str, claimed: dict[str, str]) -> None:
        """Give the model's missing blobs the staging areas the client filled for them; drop the rest.

        Only this key's own staging areas of this project are touched: naming anyone else's changes
        nothing.
        """
        if not claimed:
            return
        pending = {p.sha256: p for p in self.store.pending(model_id)}
        for sha256, staging_id in claimed.items():
            staging = self.store.get_staging(staging_id)
            if staging is None or staging.created_by != principal.user or staging.project_id != project_id:
                continue
            blob = pending.get(sha256)
            if (
                blob is not None
                and blob.staging_id is None
                and blob.size == staging.size
                and self.store.adopt_staging(model_id, sha256, staging)
            ):
                continue
            # Not needed (the content is stored already, or the blob has a staging area of its own).
            self._drop_staging(staging.id)

    def _drop_staging(self, staging_id: str) -> None:
        if self.store.delete_staging(staging_id):
            self.blobs.abort_staging(staging_id)

    # -- staging before the sha256 is known ------------------------------------------------------------

    def stage(self, principal: Principal, project_id: str, size: Any, *, url_ttl: int = 3600) -> StagedPlan:
        """Open a staging area for ``size`` bytes whose sha256 the client is still computing.

        The client sends parts while it hashes, then names the area in its manifest (``staged``).
        An area nobody names expires with the upload expiry.
        """
        principal.require(project_id, "editor")
        if not self.store.project_exists(project_id):
            raise project_not_found(project_id)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise InvalidInput(
                f"size must be a positive number of bytes, not {size!r}",
                hint="Give the size of the file you are about to send.",
            )
        if self.store.count_stagings(principal.user) >= MAX_OPEN_STAGINGS:
            raise Conflict(
                f"This key already has {MAX_OPEN_STAGINGS} staging areas that no upload has named",
                hint="Finish or cancel those uploads (DELETE …/stagings/{id}), or wait until they expire.",
            )
        staging_id = self.blobs.begin_staging(size)
        now = datetime.now(UTC)
        staging = Staging(
            id=staging_id,
            project_id=project_id,
            created_by=principal.user,
            size=size,
            part_size=self.limits.part_size,
            created_at=now,
            expires_at=now + self.limits.upload_expiry,
        )
        try:
            self.store.create_staging(staging)
        except BaseException:
            self.blobs.abort_staging(staging_id)
            raise
        return StagedPlan(
            staging=staging,
            parts=self._part_list(staging_id, size, staging.part_size, url_ttl, {}),
            in_order=self.blobs.parts_in_order,
        )

    def resume_staging(self, principal: Principal, staging_id: str, *, url_ttl: int = 3600) -> StagedPlan:
        """A staging area this key opened and no upload has named yet, with the parts that arrived:
        a client cut off while it sent parts ahead (before its manifest) goes on where it stopped. The
        area gets the full upload expiry again."""
        staging = self._own_staging(principal, staging_id)
        now = datetime.now(UTC)
        if staging.expires_at <= now:
            raise _no_staging(staging_id)  # the collector may be removing it right now
        expires_at = now + self.limits.upload_expiry
        if not self.store.renew_staging(staging_id, expires_at):
            raise _no_staging(staging_id)
        staging = dataclasses.replace(staging, expires_at=expires_at)
        received = self._received(staging_id, staging.size, staging.part_size)
        return StagedPlan(
            staging=staging,
            parts=self._part_list(staging_id, staging.size, staging.part_size, url_ttl, received),
            in_order=self.blobs.parts_in_order,
        )

    def _received(self, staging_id: str, size: int, part_size: int) -> dict[int, int]:
        """The parts of a staging area that arrived, by number: every one when the object store's
        upload was completed already (by a server that stopped before it published the blob; no part
        is listed then, and finishing again verifies and publishes the object)."""
        received = self.blobs.received_parts(staging_id)
        if not received and size and self.blobs.completed_size(staging_id) == size:
            return {number: part for number, _, part in _layout(size, part_size)}
        return received

    def _part_list(
        self, staging_id: str, size: int, part_size: int, url_ttl: int, received: dict[int, int]
    ) -> tuple[Part, ...]:
        """The parts of a staging area; those not received (in ``received`` at their full size) get
        a URL to send them to (None: PUT them to the API)."""
        parts = []
        for number, offset, part in _layout(size, part_size):
            done = received.get(number) == part
            url = (
                None
                if done
                else self.blobs.presign_part(staging_id, number, url_ttl, offset=offset, size=part)
            )
            parts.append(Part(number=number, offset=offset, size=part, received=done, url=url))
        return tuple(parts)

    def _own_staging(self, principal: Principal, staging_id: str) -> Staging:
        staging = self.store.get_staging(staging_id)
        if staging is None or staging.created_by != principal.user:
            raise _no_staging(staging_id)
        principal.require(staging.project_id, "editor")
        return staging

    def write_staged_part(
        self,
        principal: Principal,
        staging_id: str,
        number: int,
        chunks: Iterable[bytes],
        part_sha256: str | None = None,
    ) -> None:
        """Store one part of a staging area, sent through the server.

        Parts may still be on their way when an upload takes the area over; they land all the same.
        """
        staging = self.store.get_staging(staging_id)
        if staging is not None:
            if staging.created_by != principal.user:
                raise _no_staging(staging_id)
            principal.require(staging.project_id, "editor")
            total, part_size = staging.size, staging.part_size
        else:
            taken = self.store.pending_of_staging(staging_id)
            if taken is None or taken[1].part_size is None or not self._taken_by(principal, taken[0]):
                raise _no_staging(staging_id)
            total, part_size = taken[1].size, taken[1].part_size
        self._write_part(
            staging_id, total, part_size, number, chunks, part_sha256, f"staging area {staging_id}"
        )

    def _taken_by(self, principal: Principal, model_id: str) -> bool:
        """Whether the model is an upload of this key (so the area it took over is still its own)."""
        model = self.store.get_model(model_id)
        if model is None or model.state != "uploading" or model.created_by != principal.user:
            return False
        principal.require(model.project_id, "editor")
        return True

    def cancel_staging(self, principal: Principal, staging_id: str) -> None:
        """Drop a staging area no upload has named, with its parts."""
        self._drop_staging(self._own_staging(principal, staging_id).id)

    def _new_model(
        self,
        principal: Principal,
        project_id: str,
        *,
        name: Any,
        type: Any,
        default_type: str,
        summary: Any,
        notes: Any,
        tags: Any,
        metadata: Any,
        dataset_ref: Any,
        **rest: Any,
    ) -> NewModel:
        """A new model's record from user input, every field checked (the one place they are)."""
        return NewModel(
            id=ids.model_id(),
            project_id=project_id,
            name=validation.name(name, "Model name"),
            type=validation.model_type(type) if type not in (None, "") else default_type,
            summary=validation.json_object(summary, "Summary", self.limits.max_summary_bytes),
            notes=validation.text(notes, "Notes", self.limits.max_notes),
            tags=validation.tags(tags),
            metadata=validation.json_object(metadata, "Metadata", self.limits.max_metadata_bytes),
            dataset_ref=validation.text(dataset_ref, "Dataset reference", 500) or None,
            created_by=principal.user,
            **rest,
        )

    def _missing(self, model_id: str) -> tuple[MissingBlob, ...]:
        return tuple(
            MissingBlob(
                sha256=p.sha256,
                size=p.size,
                in_parts=p.size > self.limits.part_threshold or p.staging_id is not None,
            )
            for p in self.store.pending(model_id)
        )

    def _editable(self, principal: Principal, model_id: str) -> Model:
        """The model, if this key may change it (editor in its project)."""
        model = self.models.get(principal, model_id, with_files=False)
        principal.require(model.project_id, "editor")
        return model

    def _uploading(self, principal: Principal, model_id: str, model: Model | None = None) -> Model:
        """The model (``model`` if it was read already), if this key may change it and it is uploading."""
        model = model or self._editable(principal, model_id)
        if model.state != "uploading":
            raise Conflict(f"Model {model_id} is {model.state}, not uploading; its files cannot change")
        return model

    def _pending(self, principal: Principal, model_id: str, sha256: str) -> PendingBlob:
        found = self._pending_or_received(principal, model_id, sha256)
        if found is None:
            raise Conflict(
                f"Blob {sha256} of model {model_id} has already been received", extra={"received": True}
            )
        return found

    def _pending_or_received(self, principal: Principal, model_id: str, sha256: str) -> PendingBlob | None:
        """The blob of the model's manifest still to send, or None if it has been received (also
        when the model is ready: another run of the same upload may have committed it)."""
        model = self._editable(principal, model_id)
        digest = validation.sha256(sha256)
        if model.state == "ready" and digest in self.store.manifest_sizes(model.id):
            return None
        self._uploading(principal, model_id, model)
        found = self.store.get_pending(model.id, digest)
        if found is None and not any(f.sha256 == digest for f in self.store.model_files(model.id)):
            raise NotFound(f"Model {model_id} has no file with sha256 {digest} in its manifest")
        return found

    # -- 2. sending blobs --------------------------------------------------------------------------

    def open_blob(self, principal: Principal, model_id: str, sha256: str) -> tuple[BlobWriter, int]:
        """A writer for one whole blob of an uploading model, and the size it must have."""
        pending = self._pending(principal, model_id, sha256)
        return self.blobs.writer(), pending.size

    def blob_received(self, model_id: str, sha256: str) -> None:
        """Record that a blob of an upload arrived whole (after its writer committed)."""
        self.store.mark_received(model_id, sha256)

    def receive_batch(self, principal: Principal, model_id: str, body: Iterator[bytes]) -> int:
        """Many small blobs in one body: frames of ``<sha256 hex> <size>\\n<bytes>``, each verified.

        Blobs that arrived whole and intact are kept and ticked off even if another frame is bad.
        A ready model has every blob: another run of the same upload committed it meanwhile; the
        frames are read and dropped, and none counts as received.
        """
        model = self._editable(principal, model_id)
        if model.state == "ready":
            for _ in body:
                pass
            return 0
        self._uploading(principal, model_id, model)
        manifest = self._manifest(model.id)
        reader = _FrameReader(body)
        batch: list[tuple[BlobWriter, str, int]] = []
        current: BlobWriter | None = None
        try:
            while (header := reader.header()) is not None:
                digest, size = header
                if manifest.get(digest) != size and self._manifest(model.id, fresh=True).get(digest) != size:
                    raise InvalidInput(
                        f"Blob {digest} ({size} bytes) is not a pending blob of model {model_id}",
                        hint="Send only the blobs the upload plan lists as missing.",
                    )
                current = self.blobs.writer()
                for chunk in reader.body(size):
                    current.write(chunk)
                batch.append((current, digest, size))
                current = None
        finally:
            if current is not None:
                current.abort()  # cut off in the middle of its bytes
            # One commit for the whole batch (the local store fsyncs and indexes it in one pass).
            kept = self.blobs.commit_batch(batch)
            if kept:
                self.store.mark_received(model.id, *kept)
        kept_set = set(kept)
        corrupt = [digest for _, digest, _ in batch if digest not in kept_set]
        if corrupt:
            raise IntegrityError(
                f"{len(corrupt)} blob(s) arrived corrupted (sha256 mismatch), e.g. {corrupt[0]}; "
                f"they were discarded, the {len(kept)} others were kept",
                hint="The files changed or were corrupted in transit: upload again.",
            )
        return len(kept)

    def _manifest(self, model_id: str, *, fresh: bool = False) -> dict[str, int]:
        """{sha256: size} of the model's files, from the copy kept of recent uploads unless ``fresh``."""
        with self._manifests_lock:
            kept = None if fresh else self._manifests.get(model_id)
            if kept is not None:
                self._manifests.move_to_end(model_id)
                return kept
        sizes = self.store.manifest_sizes(model_id)
        with self._manifests_lock:
            self._manifests[model_id] = sizes
            self._manifests.move_to_end(model_id)
            total = sum(len(m) for m in self._manifests.values())
            while total > MANIFEST_CACHE_ENTRIES and len(self._manifests) > 1:
                total -= len(self._manifests.popitem(last=False)[1])
        return sizes

    def parts(self, principal: Principal, model_id: str, sha256: str, *, url_ttl: int = 3600) -> PartPlan:
        """The parts of a large blob and which of them arrived; opens the staging area on first use."""
        pending = self._pending(principal, model_id, sha256)
        staging_id, part_size = pending.staging_id, pending.part_size
        if staging_id is None or part_size is None:
            part_size = self.limits.part_size
            staging_id = self.blobs.begin_staging(pending.size)
            if not self.store.set_staging(model_id, pending.sha256, staging_id, part_size):
                # Another request opened one first: use that one.
                self.blobs.abort_staging(staging_id)
                return self.parts(principal, model_id, sha256, url_ttl=url_ttl)
        received = self._received(staging_id, pending.size, part_size)
        return PartPlan(
            sha256=pending.sha256,
            size=pending.size,
            part_size=part_size,
            parts=self._part_list(staging_id, pending.size, part_size, url_ttl, received),
            in_order=self.blobs.parts_in_order,
        )

    def write_part(
        self,
        principal: Principal,
        model_id: str,
        sha256: str,
        number: int,
        chunks: Iterable[bytes],
        part_sha256: str | None = None,
    ) -> None:
        """Store one part sent through the server (the local blob store's way)."""
        pending = self._pending(principal, model_id, sha256)
        if pending.staging_id is None or pending.part_size is None:
            raise Conflict("Ask for the part plan first (POST …/parts), then send the parts")
        self._write_part(
            pending.staging_id,
            pending.size,
            pending.part_size,
            number,
            chunks,
            part_sha256,
            f"blob {pending.sha256}",
        )

    def _write_part(
        self,
        staging_id: str,
        total: int,
        part_size: int,
        number: int,
        chunks: Iterable[bytes],
        part_sha256: str | None,
        what: str,
    ) -> None:
        layout = _layout(total, part_size)
        if not 1 <= number <= len(layout):
            raise InvalidInput(f"Part {number} does not exist: {what} has parts 1 to {len(layout)}")
        _, offset, size = layout[number - 1]
        digest = validation.sha256(part_sha256) if part_sha256 is not None else None
        self.blobs.write_part(staging_id, number, offset, size, chunks, digest)

    def complete_blob(self, principal: Principal, model_id: str, sha256: str) -> None:
        """All parts are in: verify the whole blob, move it into place, and tick it off.

        Completing a blob that was received already (by another run of the same upload) succeeds."""
        pending = self._pending_or_received(principal, model_id, sha256)
        if pending is None:
            return
        if pending.staging_id is None or pending.part_size is None:
            raise Conflict(f"No part of blob {pending.sha256} has been sent yet")
        received = self._received(pending.staging_id, pending.size, pending.part_size)
        absent = [n for n, _, size in _layout(pending.size, pending.part_size) if received.get(n) != size]
        # No part listed at all: the area may have been finished and removed by another run.
        if absent and not received and self._received_elsewhere(model_id, pending.sha256):
            return
        if absent:
            raise Conflict(
                f"{len(absent)} part(s) of blob {pending.sha256} have not arrived, e.g. part {absent[0]}",
                hint="Send them, then complete again.",
                extra={"missing_parts": absent[:1000]},
            )
        try:
            self.blobs.finish_staging(pending.staging_id, pending.sha256, pending.size)
        except IntegrityError:
            if self._received_elsewhere(model_id, pending.sha256):
                return
            # The staging area is gone with the bad bytes: the blob must be sent again from scratch.
            self.store.clear_staging(model_id, pending.sha256)
            raise
        self.store.mark_received(model_id, pending.sha256)

    def _received_elsewhere(self, model_id: str, sha256: str) -> bool:
        """Whether this model's blob is ticked off within a moment by another run of the same upload
        (on another replica, say) that finished the staging area this run found emptied or taken
        away: it ticks the blob off right after publishing it. Only that counts, not the content
        being stored at all, which could come from a project this run may not read."""
        deadline = time.monotonic() + _RECEIVED_ELSEWHERE_WAIT
        while self.store.get_pending(model_id, sha256) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- 3. commit ---------------------------------------------------------------------------------

    def commit(self, principal: Principal, model_id: str) -> Model:
        """Check every blob is received and stored with the right size, then mark the model ready.

        A model that is ready already is handed back as it is: the answer to an earlier commit may
        have been lost, or another run of the same upload committed it."""
        model = self._editable(principal, model_id)
        if model.state == "ready":
            return self.models.get(principal, model.id)
        self._uploading(principal, model_id, model)
        files = self.store.model_files(model.id)
        pending = {p.sha256 for p in self.store.pending(model.id)}
        stored = self.store.stored_blobs(f.sha256 for f in files)
        absent = [f for f in files if f.sha256 in pending or stored.get(f.sha256) != f.size]
        if absent:
            if not pending:
                # Stored content went away (collected) after the upload started: ask for it again.
                self.store.add_pending(model.id, [(f.sha256, f.size) for f in absent])
            raise Conflict(
                f"{len(absent)} file(s) of model {model_id} have not been uploaded yet, e.g. {absent[0].path!r}",
                hint="Upload the missing blobs, then commit again (re-running the upload does this).",
                extra={"missing": sorted({f.sha256 for f in absent})[:1000]},
            )
        metadata = dict(model.metadata)
        top = next((f for f in files if f.path == GRADIENT_METADATA_FILE), None)
        if top is not None and top.size <= _MAX_METADATA_FILE:
            metadata = {**self._read_json(top.sha256), **metadata}
        self.store.update_model(model.id, state="ready", expires_at=None, metadata=metadata)
        return self.models.get(principal, model.id)

    def _read_json(self, sha256: str) -> dict[str, Any]:
        try:
            value = json.loads(b"".join(self.blobs.read(sha256)))
        except ValueError:
            log.warning("ignoring %s: not valid JSON", GRADIENT_METADATA_FILE)
            return {}
        return value if isinstance(value, dict) else {}

    def abort_expired(self) -> int:
        """Remove uploads whose time ran out, with their staging areas. Their blobs stay for gc."""
        now = datetime.now(UTC)
        for staging_id in self.store.stagings_of_expired(now):
            self.blobs.abort_staging(staging_id)
        expired = self.store.expired_uploads(now)
        for model_id in expired:
            self.store.delete_model(model_id)
        for staging_id in self.store.expired_stagings(now):
            self._drop_staging(staging_id)
        return len(expired)

    # -- models created first and given their files later (the Gradient CLI's upload) ---------------

    def create_empty(
        self,
        principal: Principal,
        project_id: str,
        *,
        name: Any,
        type: Any = None,
        summary: Any = None,
        notes: Any = None,
        tags: Any = None,
        dataset_ref: Any = None,
        ready: bool = False,
    ) -> Model:
        """A model with no files yet: ``uploading`` until :meth:`receive_files`, or ``ready`` at once.

        ``ready`` is for models that only reference a dataset (``gradient models create --datasetRef``).
        Without a type the model is ``Custom``: the type is not detected later.
        """
        principal.require(project_id, "editor")
        if not self.store.project_exists(project_id):
            raise project_not_found(project_id)
        now = datetime.now(UTC)
        new = self._new_model(
            principal,
            project_id,
            name=name,
            type=type,
            default_type="Custom",
            summary=summary,
            notes=notes,
            tags=tags,
            metadata=None,
            dataset_ref=dataset_ref,
            source="dataset" if dataset_ref and ready else "upload",
            created_at=now,
            expires_at=None if ready else now + self.limits.upload_expiry,
            files=(),
            state="ready" if ready else "uploading",
        )
        model = self.store.create_model(new)
        return self.models.get(principal, model.id, with_files=False)

    def awaiting_files(self, principal: Principal, model_id: str) -> Model:
        """The model if it may still receive its files: uploading, with none yet, and the key an editor."""
        model = self.models.get(principal, model_id, with_files=False)
        principal.require(model.project_id, "editor")
        if model.state != "uploading" or model.file_count:
            raise Conflict(
                f"Model {model_id} is {model.state} and already has its files; an upload URL works only once",
                hint="Upload again to create a new model.",
            )
        return model

    def receive_files(self, principal: Principal, model_id: str, files: Sequence[ModelFile]) -> Model:
        """Give a model made by :meth:`create_empty` its files (already in the blob store); mark it ready."""
        model = self.awaiting_files(principal, model_id)
        manifest = check_manifest(list(files), self.limits.max_files)
        stored = self.store.stored_blobs(f.sha256 for f in manifest)
        for f in manifest:
            if stored.get(f.sha256) != f.size:
                raise IntegrityError(f"The content of {f.path!r} is not stored with {f.size} bytes")
        if not self.store.attach_files(model.id, manifest):
            raise Conflict(
                f"Model {model_id} already received its files; an upload URL works only once",
                hint="Upload again to create a new model.",
            )
        return self.commit(principal, model.id)

    def receive_zip(self, principal: Principal, model_id: str, archive: BinaryIO) -> Model:
        """Unpack a zip (seekable file) into the model's files; a bad archive marks the model failed."""
        self.awaiting_files(principal, model_id)
        limits = ArchiveLimits(
            max_entries=self.limits.max_files,
            max_unpacked_bytes=self.limits.max_unpacked_bytes,
            max_ratio=self.limits.max_unpack_ratio,
        )
        try:
            files = unpack_zip(archive, self.blobs, limits)
            return self.receive_files(principal, model_id, files)
        except (InvalidInput, PayloadTooLarge):
            self.store.update_model(model_id, state="failed")
            raise


def _no_staging(staging_id: str) -> NotFound:
    return NotFound(
        f"Staging area {staging_id} not found",
        hint="It expired or was cancelled, or the upload that took it over has finished with it.",
    )


def _staged_map(staged: Any, limit: int) -> dict[str, str]:
    """``{sha256: staging id}`` from user input, checked."""
    if staged is None:
        return {}
    if not isinstance(staged, dict) or len(staged) > limit:
        raise InvalidInput(
            "staged must map sha256 digests of the manifest to staging area ids",
            hint="Name at most one staging area per file.",
        )
    checked = {}
    for sha256, staging_id in staged.items():
        if not isinstance(staging_id, str) or not 0 < len(staging_id) <= 200:
            raise InvalidInput(f"staged[{sha256!r}] must be the id of a staging area")
        checked[validation.sha256(sha256)] = staging_id
    return checked


def _layout(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(number, offset, size) of each part of a blob; an empty blob has one empty part."""
    count = max(1, math.ceil(size / part_size))
    return [(n, (n - 1) * part_size, min(part_size, size - (n - 1) * part_size)) for n in range(1, count + 1)]


class _FrameReader:
    """Reads ``<64 hex> <decimal size>\\n`` headers and the bytes that follow from a chunk stream.

    It keeps a position in the current chunk rather than cutting the chunk after each frame: a
    chunk of 4 MiB holds hundreds of small blobs, and cutting would copy the rest of it each time.
    """

    MAX_HEADER = 64 + 1 + 20 + 1

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = b""
        self._pos = 0

    def _available(self) -> int:
        return len(self._buffer) - self._pos

    def _fill(self, n: int) -> bool:
        while self._available() < n:
            try:
                more = next(self._chunks)
            except StopIteration:
                return False
            self._buffer = self._buffer[self._pos :] + more
            self._pos = 0
        return True

    def header(self) -> tuple[str, int] | None:
        self._fill(self.MAX_HEADER)
        if not self._available():
            return None
        end = self._buffer.find(b"\n", self._pos, self._pos + self.MAX_HEADER)
        line = self._buffer[self._pos : end if end >= 0 else self._pos + self.MAX_HEADER]
        digest, _, size = line.decode("ascii", "replace").partition(" ")
        if end < 0 or not size.isdigit():
            raise InvalidInput("The batch body is malformed: expected '<sha256> <size>\\n' before each blob")
        self._pos = end + 1
        return validation.sha256(digest), int(size)

    def body(self, size: int) -> Iterator[bytes]:
        left = size
        while left:
            if not self._available() and not self._fill(1):
                raise IntegrityError(f"The batch body ended {left} bytes before the end of a blob")
            take = min(left, self._available())
            piece = self._buffer[self._pos : self._pos + take]
            self._pos += take
            left -= take
            yield piece
