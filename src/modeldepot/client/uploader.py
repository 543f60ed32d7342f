"""The client side of the native upload protocol: hash, send only what is missing, resume, commit.

Re-running an interrupted upload (same files, same metadata) resumes it: the client sends an
``upload_key`` (a digest of everything it uploads), the server hands back the same model with what is
still missing, and parts that already arrived are not sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import (
    Conflict,
    ConnectionFailed,
    IntegrityError,
    ModeldepotError,
    NotFound,
    PermissionDenied,
    ServerError,
    Unauthenticated,
)
from ..records import Model, ModelFile
from . import transfer

if TYPE_CHECKING:
    from .client import Client, Progress

# Blobs up to this size travel many to a request, in batches of up to BATCH_BYTES / BATCH_COUNT.
SMALL_BLOB = 4 * 1024 * 1024
BATCH_BYTES = 32 * 1024 * 1024
BATCH_COUNT = 250

# Files larger than this whose digest is not cached have their parts sent while they are hashed
# (the server's default part threshold: smaller files go whole, after hashing).
SEND_WHILE_HASHING = 64 * 1024 * 1024

# Errors after which the half-made model is kept so that running the same upload again resumes it.
RESUMABLE = (ConnectionFailed, ServerError, KeyboardInterrupt)


def upload_key(project: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"project": project, **body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Uploader:
    def __init__(self, client: Client, progress: Progress):
        self.client = client
        self.bar = progress

    def run(self, path: Path, project: str, meta: dict[str, Any]) -> Model:
        entries = transfer.scan(path)
        stats = [local.stat() for _, local in entries]
        sizes = [st.st_size for st in stats]
        cache = self.client.hash_cache()
        # Large files not hashed before: their parts go out while they are hashed (the server keeps
        # them in staging areas the manifest then names); the rest is hashed first, then sent. So do
        # those whose area an earlier run, cut off before its manifest, left with some parts in it.
        early = [
            local
            for (_, local), st in zip(entries, stats, strict=True)
            if st.st_size > self.client.send_while_hashing
            and (
                cache is None or cache.get(st) is None or cache.area(st, self.client.url, project) is not None
            )
        ]
        ahead = _SendAhead(self, project, early) if early else None
        try:
            if ahead is not None and not ahead.start():
                ahead = None
            if ahead is not None:
                manifest = transfer.build_manifest(entries, cache=cache)
            else:
                self.bar.start("hashing", sum(sizes))
                try:
                    manifest = transfer.build_manifest(entries, self.bar.advance, cache=cache)
                finally:
                    self.bar.finish()
        except BaseException as exc:
            if ahead is not None:
                ahead.cancel(keep=isinstance(exc, RESUMABLE))
            raise
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f, _ in manifest]
        body = {**meta, "tags": sorted(meta.get("tags") or []), "files": files}
        body["upload_key"] = upload_key(project, body)
        local_of = {f.sha256: local for f, local in manifest}
        order = {f.sha256: i for i, (f, _) in reversed(list(enumerate(manifest)))}
        if ahead is not None:
            body["staged"] = ahead.named(manifest)
        model_id: str | None = None
        created = False  # whether this run made the model (not resumed one another run made)
        try:
            for attempt in range(3):
                try:
                    plan = self.client._json(
                        "POST", f"/projects/{transfer.quote_segment(project)}/models", json=body
                    )
                except BaseException as exc:
                    if ahead is not None:
                        ahead.cancel(keep=isinstance(exc, RESUMABLE))
                    raise
                model_id = plan["model"]["id"]
                created = created or not plan.get("resumed", False)
                if ahead is not None:
                    # Parts of content the server still needs go on; the others stop.
                    ahead.finish({m["sha256"] for m in plan["missing"]})
                    ahead = None
                missing = sorted(plan["missing"], key=lambda m: order.get(m["sha256"], 0))
                self._send(missing, local_of)
                try:
                    return Model.from_json(
                        self.client._json("POST", f"/models/{transfer.quote_segment(model_id)}/commit")
                    )
                except Conflict:
                    # Content the upload counted on went away meanwhile (collected): send it too.
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        except RESUMABLE as exc:
            if isinstance(exc, ModeldepotError):
                exc.hint = "Run the same upload again to resume it where it stopped."
            raise
        except BaseException:
            if model_id is not None and created:
                # Only a model this run made and that is still uploading: the same upload run twice
                # at once resumes one model, and the run that failed deleted the one the other had
                # just committed. If this fails too, the cleanup of expired uploads removes it later.
                with contextlib.suppress(ModeldepotError):
                    if self.client.get_model(model_id).state == "uploading":
                        self.client.delete_model(model_id)
            raise

    def _send(self, missing: list[dict[str, Any]], local_of: dict[str, Path]) -> None:
        plans = []
        for item in missing:
            if "parts_url" in item:
                try:
                    parts = self.client._json("POST", item["parts_url"])
                except Conflict as exc:
                    if exc.extra.get("received"):
                        continue  # the same upload, run elsewhere at once, sent it meanwhile
                    raise
                plans.append((item, parts | {"parts_url": item["parts_url"]}))
            else:
                plans.append((item, None))
        todo = 0
        for item, parts in plans:
            todo += (
                item["size"] if parts is None else sum(p["size"] for p in parts["parts"] if not p["received"])
            )
        if todo:  # no empty bar when everything arrived ahead (only completing is left)
            self.bar.start("uploading", todo)
        stop = threading.Event()  # set on failure or Ctrl-C: a blob's parts in order go no further
        try:
            with ThreadPoolExecutor(max_workers=self.client.parallel) as pool:
                futures: list[Future[None]] = []
                batch: list[dict[str, Any]] = []
                batch_bytes = 0
                for item, parts in plans:
                    local = local_of[item["sha256"]]
                    if parts is not None:
                        futures += self._put_parts(pool, parts, local, stop)
                    elif item["size"] <= SMALL_BLOB:
                        if batch and (batch_bytes + item["size"] > BATCH_BYTES or len(batch) >= BATCH_COUNT):
                            futures.append(pool.submit(self._put_batch, batch, local_of))
                            batch, batch_bytes = [], 0
                        batch.append(item)
                        batch_bytes += item["size"]
                    else:
                        futures.append(pool.submit(self._put_whole, item, local))
                if batch:
                    futures.append(pool.submit(self._put_batch, batch, local_of))
                try:
                    transfer.wait_all(futures)
                except BaseException:
                    stop.set()  # before the pool waits for what is running
                    raise
        finally:
            if todo:
                self.bar.finish()

    def _received_meanwhile(self, parts_url: str) -> bool:
        """Whether the server has the blob of these parts now, or within a moment (another run that
        finished the blob ticks it off right after it took the parts away); False also if the
        server cannot say."""
        for attempt in range(10):
            if attempt:
                time.sleep(0.25)
            try:
                self.client._json("POST", parts_url)
            except Conflict as exc:
                return bool(exc.extra.get("received"))
            except ModeldepotError:
                return False
        return False

    def _put_whole(self, item: dict[str, Any], local: Path) -> None:
        size = int(item["size"])
        if local.stat().st_size != size:
            raise IntegrityError(
                f"{local} changed while it was being uploaded", hint="Upload it again when stable."
            )
        try:
            self.client.put_file(item["url"], local, 0, size, self.bar.advance)
        except Conflict as exc:
            if not exc.extra.get("received"):
                raise  # else the same upload, run elsewhere at once, sent it meanwhile

    def _put_batch(self, items: list[dict[str, Any]], local_of: dict[str, Path]) -> None:
        def frames() -> Iterator[bytes]:
            for item in items:
                yield f"{item['sha256']} {item['size']}\n".encode()
                yield from transfer.read_chunks(local_of[item["sha256"]], int(item["size"]), self.bar.advance)

        length = sum(len(f"{i['sha256']} {i['size']}\n") + int(i["size"]) for i in items)
        model_url = items[0]["url"].rsplit("/", 1)[0]  # …/models/{id}/blobs
        self.client._request(
            "POST",
            model_url,
            content=frames(),
            headers={"Content-Length": str(length), "Content-Type": "application/x-modeldepot-blobs"},
            timeout=httpx.Timeout(None, connect=10.0),
        )

    def _put_parts(
        self, pool: ThreadPoolExecutor, plan: dict[str, Any], local: Path, stop: threading.Event
    ) -> list[Future[None]]:
        todo = [p for p in plan["parts"] if not p["received"]]
        remaining = [len(todo)]
        lock = threading.Lock()
        elsewhere = threading.Event()  # another run of the same upload finished this blob

        def complete() -> None:
            try:
                self.client._request("POST", plan["complete_url"])
            except IntegrityError as exc:  # the server's words name no file
                raise IntegrityError(
                    f"{local} changed while it was being uploaded, or was damaged on the way ({exc.detail})",
                    hint=exc.hint,
                ) from exc
            except ModeldepotError:
                if self._received_meanwhile(plan["parts_url"]):
                    return  # the same upload, run elsewhere at once, completed it
                raise

        def send(part: dict[str, Any]) -> None:
            offset, size = int(part["offset"]), int(part["size"])
            if elsewhere.is_set():
                return
            try:
                self.client.put_file(part["url"], local, offset, size, self.bar.advance)
            except (PermissionDenied, Unauthenticated):
                # A presigned URL that expired while earlier parts were sent: ask for a fresh one, once.
                fresh = self.client._json("POST", plan["parts_url"])
                url = next(p["url"] for p in fresh["parts"] if p["number"] == part["number"])
                self.client.put_file(url, local, offset, size)
            except ModeldepotError:
                # The same upload run elsewhere at once (another replica, say) sends the same parts,
                # and whichever completes the blob first takes the area away from the other.
                if self._received_meanwhile(plan["parts_url"]):
                    elsewhere.set()
                    return
                raise
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                complete()

        if not todo:
            return [pool.submit(complete)]
        if plan.get("in_order"):
            # The server hashes each part as it arrives when the parts before it are in: one after
            # the other, it reads none of them back (the other files' parts still go meanwhile).
            def send_all() -> None:
                for part in todo:
                    if stop.is_set() or elsewhere.is_set():
                        return  # the upload failed or was interrupted: run it again to go on
                    send(part)

            return [pool.submit(send_all)]
        return [pool.submit(send, part) for part in todo]


class _SendAhead:
    """Parts of large files sent while the files are still being hashed.

    Each file gets a staging area (``POST …/stagings``) and its parts go out on a pool of their own.
    Once the manifest is known the upload names the areas (``staged``): for content the server
    still needs, the parts keep going and the normal flow then finds them received; for content it
    already has, sending stops. Any failure here only means those parts are sent again later.

    Each area is remembered in the digest cache as soon as it is open, until the manifest names it:
    an upload cut off before that (Ctrl-C, a lost connection, a killed process) finds it again when
    run again, and sends only the parts that did not arrive.
    """

    def __init__(self, uploader: Uploader, project: str, files: list[Path]):
        self.client = uploader.client
        self.cache = uploader.client.hash_cache()
        self.bar = uploader.bar
        self.project = project
        self.files = files
        self.areas: dict[Path, dict[str, Any]] = {}
        self.stop: dict[Path, threading.Event] = {}
        self.futures: dict[Path, list[Future[None]]] = {}
        self.pool = ThreadPoolExecutor(max_workers=self.client.parallel)
        self.bar_started = False
        self.staged: dict[str, str] = {}

    def start(self) -> bool:
        """Open the staging areas and start sending; False if the server offers none (nothing sent)."""
        url = f"/projects/{transfer.quote_segment(self.project)}/stagings"
        total = arrived = 0
        for local in self.files:
            st = local.stat()
            try:
                area = self._resumed(st)
                if area is None:
                    area = self.client._json("POST", url, json={"size": st.st_size})
                    if self.cache is not None:
                        self.cache.put_area(st, self.client.url, self.project, area["id"])
            except (Unauthenticated, PermissionDenied):
                self.cancel()
                raise
            except ModeldepotError as exc:
                # E.g. a server without staging areas, or a bad project: the normal flow says why.
                self.cancel(keep=isinstance(exc, RESUMABLE))
                return False
            self.areas[local] = area
            total += st.st_size
            arrived += sum(int(p["size"]) for p in area["parts"] if p.get("received"))
        self.bar.start("uploading", total)
        self.bar_started = True
        if arrived:
            self.bar.advance(arrived)
        for local, area in self.areas.items():
            stop = self.stop[local] = threading.Event()
            parts = [p for p in area["parts"] if not p.get("received")]
            if area.get("in_order"):  # one after the other (see Uploader._put_parts)
                self.futures[local] = [self.pool.submit(self._send_all, local, parts, stop)]
            else:
                self.futures[local] = [self.pool.submit(self._send, local, part, stop) for part in parts]
        return True

    def _resumed(self, st: os.stat_result) -> dict[str, Any] | None:
        """The area an earlier run, cut off before its manifest, sent this file's parts into (with
        which of them arrived), if the server still has it for this key; else None."""
        if self.cache is None:
            return None
        found = self.cache.area(st, self.client.url, self.project)
        if found is None:
            return None
        staging_id, trusted = found
        url = f"/stagings/{transfer.quote_segment(staging_id)}"
        area = None
        try:
            if trusted:
                area = self.client._json("POST", f"{url}/parts")
            else:  # the file changed since (or just before): its parts there may be another's
                self.client._request("DELETE", url)
        except NotFound:
            pass  # expired, or taken over by the upload that then stopped: start afresh
        if area is None or int(area["size"]) != st.st_size:
            self.cache.forget_areas([staging_id])
            return None
        return area

    def _send(self, local: Path, part: dict[str, Any], stop: threading.Event) -> None:
        if stop.is_set():
            return
        try:
            self.client.put_file(part["url"], local, int(part["offset"]), int(part["size"]), self.bar.advance)
        except ModeldepotError:
            stop.set()  # the normal flow sends whatever did not arrive

    def _send_all(self, local: Path, parts: list[dict[str, Any]], stop: threading.Event) -> None:
        for part in parts:
            self._send(local, part, stop)

    def named(self, manifest: list[tuple[ModelFile, Path]]) -> dict[str, str]:
        """``{sha256: staging id}`` for the manifest; a second area for the same content is dropped."""
        staged: dict[str, str] = {}
        for f, local in manifest:
            area = self.areas.get(local)
            if area is not None and f.sha256 not in staged and f.size == int(area["size"]):
                staged[f.sha256] = area["id"]
        self.staged = staged
        return staged

    def finish(self, missing: set[str]) -> None:
        """Let the parts of still-missing content arrive; stop the others and wait for the pool."""
        needed = {sid for sha, sid in self.staged.items() if sha in missing}
        keep = {local for local, area in self.areas.items() if area["id"] in needed}
        for local in self.areas:
            if local not in keep:
                self.stop[local].set()
        try:
            for future in itertools.chain.from_iterable(self.futures.values()):
                future.result()
        finally:
            self._close(keep)
            # Named (the upload resumes them now) or dropped: nothing to find again.
            self._forget(list(self.areas))

    def cancel(self, keep: bool = False) -> None:
        """Stop sending (on failure, before the manifest named the areas) and drop every staging
        area; ``keep``: keep them and remember them, for the upload to resume when run again."""
        for stop in self.stop.values():
            stop.set()
        self._close(set(self.areas) if keep else set())
        if not keep:
            self._forget(list(self.areas))

    def _forget(self, files: list[Path]) -> None:
        if self.cache is not None:
            self.cache.forget_areas([self.areas[local]["id"] for local in files])

    def _close(self, keep: set[Path]) -> None:
        """Wait for the parts on their way, and drop the areas not kept."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.bar_started:
            self.bar.finish()
        for local, area in self.areas.items():
            if local not in keep:
                self._drop(area)

    def _drop(self, area: dict[str, Any]) -> None:
        # Gone already when the server dropped or adopted it; else it would only wait for its expiry.
        with contextlib.suppress(ModeldepotError):
            self.client._request("DELETE", area["url"])
