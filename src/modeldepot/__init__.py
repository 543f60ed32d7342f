"""modeldepot: a self-hosted model repository for machine-learning teams.

The public SDK::

    import modeldepot
    client = modeldepot.Client("http://127.0.0.1:8750", api_key="md_…")
    model = client.upload("./resnet/", project="pr…", name="resnet", summary={"accuracy": 0.93})
"""

from ._version import __version__
from .client import Client
from .errors import (
    Conflict,
    ConnectionFailed,
    IntegrityError,
    InvalidInput,
    ModeldepotError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServerError,
    StorageFull,
    Unauthenticated,
)
from .records import Alias, ApiKey, Model, ModelFile, NewApiKey, Page, Project

__all__ = [
    "Alias",
    "ApiKey",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "IntegrityError",
    "InvalidInput",
    "Model",
    "ModelFile",
    "ModeldepotError",
    "NewApiKey",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PermissionDenied",
    "Project",
    "ServerError",
    "StorageFull",
    "Unauthenticated",
    "__version__",
]
