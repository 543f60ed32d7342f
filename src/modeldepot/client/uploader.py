"""The client side of the native upload protocol: hash, send only what is missing, resume, commit.

Re-running an interrupted upload (same files, same metadata) resumes it: the client sends an
``upload_key`` (a digest of everything it uploads), the server hands back the same model with what is
still missing, and parts that already arrived are not sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
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
    PermissionDenied,
    ServerError,
    Unauthenticated,
)
from ..records import Model
from . import transfer

if TYPE_CHECKING:
    from .client import Client, Progress

# Blobs up to this size travel many to a request, in batches of up to BATCH_BYTES / BATCH_COUNT.
SMALL_BLOB = 4 * 1024 * 1024
BATCH_BYTES = 32 * 1024 * 1024
BATCH_COUNT = 250

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
        total = sum(local.stat().st_size for _, local in entries)
        self.bar.start("hashing", total)
        try:
            manifest = transfer.build_manifest(entries, self.bar.advance, cache=self.client.hash_cache())
        finally:
            self.bar.finish()
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f, _ in manifest]
        body = {**meta, "tags": sorted(meta.get("tags") or []), "files": files}
        body["upload_key"] = upload_key(project, body)
        local_of = {f.sha256: local for f, local in manifest}
        order = {f.sha256: i for i, (f, _) in reversed(list(enumerate(manifest)))}
        model_id: str | None = None
        try:
            for attempt in range(3):
                plan = self.client._json(
                    "POST", f"/projects/{transfer.quote_segment(project)}/models", json=body
                )
                model_id = plan["model"]["id"]
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
            if model_id is not None:
                # If this fails too, the server's cleanup of expired uploads removes the model later.
                with contextlib.suppress(ModeldepotError):
                    self.client.delete_model(model_id)
            raise

    def _send(self, missing: list[dict[str, Any]], local_of: dict[str, Path]) -> None:
        plans = []
        for item in missing:
            if "parts_url" in item:
                plans.append(
                    (item, self.client._json("POST", item["parts_url"]) | {"parts_url": item["parts_url"]})
                )
            else:
                plans.append((item, None))
        todo = 0
        for item, parts in plans:
            todo += (
                item["size"] if parts is None else sum(p["size"] for p in parts["parts"] if not p["received"])
            )
        self.bar.start("uploading", todo)
        try:
            with ThreadPoolExecutor(max_workers=self.client.parallel) as pool:
                futures: list[Future[None]] = []
                batch: list[dict[str, Any]] = []
                batch_bytes = 0
                for item, parts in plans:
                    local = local_of[item["sha256"]]
                    if parts is not None:
                        futures += self._put_parts(pool, parts, local)
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
                transfer.wait_all(futures)
        finally:
            self.bar.finish()

    def _put_whole(self, item: dict[str, Any], local: Path) -> None:
        size = int(item["size"])
        if local.stat().st_size != size:
            raise IntegrityError(
                f"{local} changed while it was being uploaded", hint="Upload it again when stable."
            )
        self.client.put_file(item["url"], local, 0, size, self.bar.advance)

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

    def _put_parts(self, pool: ThreadPoolExecutor, plan: dict[str, Any], local: Path) -> list[Future[None]]:
        todo = [p for p in plan["parts"] if not p["received"]]
        remaining = [len(todo)]
        lock = threading.Lock()

        def complete() -> None:
            self.client._request("POST", plan["complete_url"])

        def send(part: dict[str, Any]) -> None:
            offset, size = int(part["offset"]), int(part["size"])
            try:
                self.client.put_file(part["url"], local, offset, size, self.bar.advance)
            except (PermissionDenied, Unauthenticated):
                # A presigned URL that expired while earlier parts were sent: ask for a fresh one, once.
                fresh = self.client._json("POST", plan["parts_url"])
                url = next(p["url"] for p in fresh["parts"] if p["number"] == part["number"])
                self.client.put_file(url, local, offset, size)
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                complete()

        if not todo:
            return [pool.submit(complete)]
        return [pool.submit(send, part) for part in todo]
