"""The composition root: builds stores, services and routes from one Settings object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from ..blobs import LocalBlobStore, open_blob_store
from ..config import Settings
from ..metadata import SqlMetadataStore
from ..services.container import Services
from ..services.models import Limits
from ..services.signing import UrlSigner
from . import problems
from .api import admin, aliases, keys, meta, models, projects, uploads, workloads
from .dataplane import RequestHost
from .gradient import router as gradient_router
from .limits import BodyLimit

log = logging.getLogger("modeldepot.server")

CLEANUP_INTERVAL_SECONDS = 60.0
DIRECT_TO_STORE_OVER = 4 * 1024 * 1024


def create_app(settings: Settings) -> FastAPI:
    """A ready-to-serve ASGI app. Migrates the database; creates no key (see ``Services.auth.bootstrap``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlMetadataStore(settings.resolved_database_url())
    store.migrate()
    blobs = open_blob_store(settings.resolved_blob_url())
    # Moving bytes into place holds the blob's row, as the garbage collector does when deleting.
    blobs.guard = store.publishing_blob
    blobs.guard_many = store.publishing_blobs
    services = Services.build(
        store,
        blobs,
        Limits(
            upload_expiry=timedelta(seconds=settings.upload_expiry_seconds),
            max_summary_bytes=settings.max_summary_bytes,
            max_metadata_bytes=settings.max_metadata_bytes,
            max_files=settings.max_files_per_model,
            # With an object store, every blob over 4 MiB goes there directly through presigned part
            # URLs; smaller ones come to the server many to a request (cheaper than a presign each).
            part_threshold=settings.upload_part_size
            if isinstance(blobs, LocalBlobStore)
            else min(settings.upload_part_size, DIRECT_TO_STORE_OVER),
            part_size=settings.upload_part_size,
            gc_grace=timedelta(seconds=settings.gc_grace_seconds),
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_cleanup_loop(services, float(settings.gc_interval_seconds)))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.close()

    app = FastAPI(
        title="modeldepot",
        version=__version__,
        description="A self-hosted model repository. Every call needs an API key (X-API-Key or Bearer).",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.store = store
    problems.install(app)
    for module in (meta, projects, uploads, models, aliases, keys, admin, workloads):
        app.include_router(module.router, prefix="/api/v1")
    # The Gradient CLI's routes live at the root: PAPERSPACE_CONFIG_HOST=http://HOST:PORT.
    app.state.url_signer = UrlSigner(settings.resolved_signing_secret())
    app.include_router(gradient_router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_json_bytes)
    app.add_middleware(RequestHost)  # for the data plane's URLs when it listens on every interface

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_at_the_usual_place() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


async def _cleanup_loop(services: Services, gc_interval: float) -> None:
    """Expired uploads every minute; the garbage collector every ``gc_interval`` seconds (0: never)."""
    since_gc = 0.0
    while True:
        try:
            if gc_interval and since_gc >= gc_interval:
                since_gc = 0.0
                report = await run_in_threadpool(services.maintenance.collect)
                if (
                    report.blobs_deleted
                    or report.uploads_expired
                    or report.orphan_stagings_removed
                    or report.temporary_files_removed
                ):
                    log.info(
                        "gc: %d blob(s), %d bytes reclaimed; %d expired upload(s), %d orphaned staging"
                        " area(s) and %d abandoned temporary file(s) removed",
                        report.blobs_deleted,
                        report.bytes_reclaimed,
                        report.uploads_expired,
                        report.orphan_stagings_removed,
                        report.temporary_files_removed,
                    )
            else:
                removed = await run_in_threadpool(services.uploads.abort_expired)
                if removed:
                    log.info("removed %d abandoned upload(s)", removed)
        except Exception:
            log.exception("storage cleanup failed")
        await asyncio.sleep(CLEANUP_INTERVAL_SECONDS)
        since_gc += CLEANUP_INTERVAL_SECONDS
