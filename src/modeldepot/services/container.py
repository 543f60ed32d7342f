"""All services of one server, wired to one metadata store and one blob store."""

from __future__ import annotations

import dataclasses

from .aliases import AliasService
from .auth import AuthService
from .maintenance import Maintenance
from .models import Limits, ModelService
from .ports import BlobStore, MetadataStore
from .projects import ProjectService
from .uploads import UploadService
from .workloads import WorkloadService


@dataclasses.dataclass
class Services:
    auth: AuthService
    projects: ProjectService
    models: ModelService
    uploads: UploadService
    aliases: AliasService
    maintenance: Maintenance
    workloads: WorkloadService

    @classmethod
    def build(cls, store: MetadataStore, blobs: BlobStore, limits: Limits | None = None) -> Services:
        limits = limits or Limits()
        models = ModelService(store, blobs, limits)
        uploads = UploadService(store, blobs, models, limits)
        return cls(
            auth=AuthService(store),
            projects=ProjectService(store),
            models=models,
            uploads=uploads,
            aliases=AliasService(store, models),
            maintenance=Maintenance(store, blobs, uploads, limits.gc_grace),
            workloads=WorkloadService(store, models, limits),
        )
