"""modeldepot: a self-hosted model repository for machine-learning teams.

The public SDK::

    import modeldepot
    client = modeldepot.Client("http://127.0.0.1:8750", api_key="md_…")
    model = client.upload("./resnet/", project="pr…", name="resnet", summary={"accuracy": 0.93})

    # or register a model straight from a training run, with its lineage (a workload):
    with modeldepot.workload(project="pr…", name="resnet", type="ONNX") as run:
        run.log_metrics({"loss": 0.3}, step=1)
        run.save("model.onnx")
    modeldepot.log_model("model.onnx", project="pr…", name="resnet", summary={"accuracy": 0.93})
"""

from ._version import __version__
from .client import Client
from .client.command import CommandResult
from .client.outcome import RunInterrupted
from .client.workload import Run, log_model, workload
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
from .records import Alias, ApiKey, Model, ModelFile, NewApiKey, Page, Project, Workload

__all__ = [
    "Alias",
    "ApiKey",
    "Client",
    "CommandResult",
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
    "Run",
    "RunInterrupted",
    "ServerError",
    "StorageFull",
    "Unauthenticated",
    "Workload",
    "__version__",
    "log_model",
    "workload",
]
