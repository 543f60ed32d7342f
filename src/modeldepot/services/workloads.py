"""Workloads: recorded runs of a command (or a block of Python) whose output became a model.

A workload is the lineage of the model it makes: the command and its exit code, when it ran, where
(host, user, working directory, git commit and whether the tree was dirty), the environment variables
its user chose to keep, its metrics and the captured log. Its states::

    running ──► uploading ──► succeeded      (the model is uploaded, then claimed in one step)
       │            │
       └────────────┴──► failed | interrupted   (no model)

The client starts a workload before the command runs, reports how the command ended (with its log,
summary and series, all checked here before any model exists), uploads the output as a normal model
and finally claims that model: the model takes ``source='workload'``, the link and the series in the
same transaction that marks the workload succeeded. A failed or interrupted workload has no model.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from ..errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, project_not_found
from ..records import WORKLOAD_STATES, Page, Workload
from . import ids, validation
from .auth import Principal
from .models import Limits, ModelService, decode_cursor, encode_cursor, list_scope
from .ports import MetadataStore, ModelLink, WorkloadQuery

# The log is kept bounded by the client (its first and last part, see client/provenance.py); the
# server refuses anything longer than this, in characters.
MAX_LOG_CHARS = 1024 * 1024
MAX_SERIES = 100  # metrics with a series, per workload or model
MAX_POINTS = 10_000  # points per series (the SDK thins longer series to fit)
MAX_SERIES_BYTES = 4 * 1024 * 1024
MAX_COMMAND_CHARS = 64 * 1024
MAX_ENV = 200
MAX_ERROR_CHARS = 8 * 1024

OPEN_STATES = ("running", "uploading")
END_STATES = ("uploading", "succeeded", "failed", "interrupted")

_COMMIT = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")  # SHA-1 or SHA-256 object names
_COMMIT_PREFIX = re.compile(r"^[0-9a-f]{4,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")


# -- checks on what a client reports -------------------------------------------------------------------


def _finite_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def check_summary(value: Any, max_bytes: int) -> dict[str, Any]:
    """A JSON object of scalar metrics: numbers, strings, booleans or null."""
    checked = validation.json_object(value, "Summary", max_bytes)
    for key, item in checked.items():
        if item is not None and not isinstance(item, str | int | float | bool):
            raise InvalidInput(
                f"Summary value {key!r} is a {type(item).__name__}; summary values must be numbers, "
                "strings, booleans or null",
                hint='Put lists of numbers in the series instead, e.g. {"loss": [0.9, 0.5, 0.3]}.',
            )
    return checked


def check_series(value: Any) -> dict[str, dict[str, list[Any]]]:
    """Metric series: ``{"loss": {"steps": [0, 1, 2], "values": [0.9, 0.5, 0.3]}}``.

    Steps are non-negative integers in increasing order; values are finite numbers, or null where a
    value was not a number (a diverged loss).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(
            f"Series must be a JSON object, not {type(value).__name__}",
            hint='e.g. {"loss": {"steps": [0, 1, 2], "values": [0.9, 0.5, 0.3]}}',
        )
    if len(value) > MAX_SERIES:
        raise InvalidInput(f"{len(value)} series given; at most {MAX_SERIES} metrics may have one")
    out: dict[str, dict[str, list[Any]]] = {}
    for metric, points in value.items():
        validation.name(metric, "Metric name")
        if not isinstance(points, dict) or set(points) != {"steps", "values"}:
            raise InvalidInput(
                f"Series {metric!r} must be an object with the lists 'steps' and 'values'",
                hint='e.g. {"steps": [0, 1, 2], "values": [0.9, 0.5, 0.3]}',
            )
        steps, values = points["steps"], points["values"]
        if not isinstance(steps, list) or not isinstance(values, list) or len(steps) != len(values):
            raise InvalidInput(f"Series {metric!r} needs as many steps as values, both lists")
        if len(steps) > MAX_POINTS:
            raise InvalidInput(
                f"Series {metric!r} has {len(steps)} points; the limit is {MAX_POINTS}",
                hint="Log fewer points (the SDK thins long series by itself).",
            )
        previous = -1
        for step in steps:
            if not isinstance(step, int) or isinstance(step, bool) or step <= previous:
                raise InvalidInput(
                    f"Series {metric!r}: step {step!r} is not an integer above the one before ({previous})",
                    hint="Steps are non-negative integers in increasing order.",
                )
            previous = step
        for item in values:
            if item is not None and not _finite_number(item):
                raise InvalidInput(
                    f"Series {metric!r}: value {item!r} is not a finite number",
                    hint="Series values are numbers (or null for a value that was NaN or infinite).",
                )
        out[metric] = {"steps": list(steps), "values": list(values)}
    size = len(json.dumps(out))
    if size > MAX_SERIES_BYTES:
        raise PayloadTooLarge(f"The series are {size} bytes as JSON; the limit is {MAX_SERIES_BYTES}")
    return out


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or not all(isinstance(a, str) for a in value):
        raise InvalidInput(
            "The command must be a non-empty list of strings (the program and its arguments)",
            hint='e.g. ["python", "train.py", "--epochs", "10"]',
        )
    if any("\x00" in a for a in value):
        raise InvalidInput("The command contains a NUL character")
    if sum(len(a) for a in value) > MAX_COMMAND_CHARS:
        raise PayloadTooLarge(f"The command is longer than {MAX_COMMAND_CHARS} characters")
    return tuple(value)


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ENV:
        raise InvalidInput(f"The environment must be an object of at most {MAX_ENV} names and string values")
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise InvalidInput(f"{key!r} is not an environment variable name")
        validation.text(item, f"Environment variable {key}", 32 * 1024)
    return dict(value)


def _commit(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _COMMIT.match(value.lower()):
        raise InvalidInput(
            f"Git commit {value!r} is not a full commit id",
            hint="Send the 40 (or 64) hexadecimal characters of `git rev-parse HEAD`.",
        )
    return value.lower()


def _exit_code(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**31) <= value < 2**31:
        raise InvalidInput(f"Exit code {value!r} is not an integer")
    return value


class WorkloadService:
    def __init__(self, store: MetadataStore, models: ModelService, limits: Limits | None = None):
        self.store = store
        self.models = models
        self.limits = limits or Limits()

    # -- reading -----------------------------------------------------------------------------------

    def get(self, principal: Principal, workload_id: str) -> Workload:
        known = isinstance(workload_id, str) and "\x00" not in workload_id
        workload = self.store.get_workload(workload_id) if known else None
        if workload is None or not principal.can_see(workload.project_id):
            raise NotFound(
                f"Workload {workload_id} not found",
                hint="`modeldepot workloads list` shows the workloads you can see.",
            )
        return workload

    def log(self, principal: Principal, workload_id: str) -> str:
        workload = self.get(principal, workload_id)
        return self.store.workload_log(workload.id) or ""

    def list_workloads(
        self,
        principal: Principal,
        *,
        project_id: str | None = None,
        commit: str | None = None,
        state: str | None = None,
        name: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Workload]:
        """Newest first. ``commit`` is a prefix (4 or more hex digits) of the git commit they ran at."""
        if commit is not None and not _COMMIT_PREFIX.match(commit.lower()):
            raise InvalidInput(
                f"Commit {commit!r} is not a commit id or a prefix of one",
                hint="Give 4 to 64 hexadecimal characters, e.g. the short id from `git log --oneline`.",
            )
        project_ids = list_scope(self.store, principal, project_id, limit, state, WORKLOAD_STATES)
        if project_ids == ():
            return Page(items=(), next_cursor=None)
        query = WorkloadQuery(
            project_ids=project_ids,
            commit=commit.lower() if commit is not None else None,
            state=state,
            name=name,
            before_seq=decode_cursor(cursor),
            limit=limit,
        )
        items, next_seq = self.store.list_workloads(query)
        return Page(items=tuple(items), next_cursor=encode_cursor(next_seq))

    # -- changing ----------------------------------------------------------------------------------

    def start(
        self,
        principal: Principal,
        project_id: str,
        *,
        name: Any,
        command: Any,
        working_dir: Any = None,
        host: Any = None,
        user: Any = None,
        git_commit: Any = None,
        git_branch: Any = None,
        git_dirty: Any = None,
        env: Any = None,
        dataset_ref: Any = None,
        type: Any = None,
        tags: Any = None,
        notes: Any = None,
        metadata: Any = None,
    ) -> Workload:
        """Record a workload that starts now, in state ``running``.

        ``type``, ``tags``, ``notes`` and ``metadata`` are what the model will be uploaded with: they
        are checked now, with an upload's rules, so that a typo fails before the training and not
        after it. They are not kept here (the model keeps them).
        """
        principal.require(project_id, "editor")
        if not self.store.project_exists(project_id):
            raise project_not_found(project_id)
        if type not in (None, ""):
            validation.model_type(type)
        validation.tags(tags)
        validation.text(notes, "Notes", self.limits.max_notes)
        validation.json_object(metadata, "Metadata", self.limits.max_metadata_bytes)
        if git_dirty is not None and not isinstance(git_dirty, bool):
            raise InvalidInput("git_dirty must be true, false or null")
        workload = Workload(
            id=ids.workload_id(),
            project_id=project_id,
            name=validation.name(name, "Model name"),
            state="running",
            command=_command(command),
            working_dir=validation.text(working_dir, "Working directory", 4096) or None,
            exit_code=None,
            started_at=datetime.now(UTC),
            ended_at=None,
            duration_seconds=None,
            host=validation.text(host, "Host", 255),
            user=validation.text(user, "User", 200),
            created_by=principal.user,
            git_commit=_commit(git_commit),
            git_branch=validation.text(git_branch, "Git branch", 255) or None,
            git_dirty=git_dirty,
            env=_env(env),
            summary={},
            series={},
            error=None,
            dataset_ref=validation.text(dataset_ref, "Dataset reference", 500) or None,
            log_bytes=0,
        )
        self.store.create_workload(workload, "")
        return self.get(principal, workload.id)

    def update(
        self,
        principal: Principal,
        workload_id: str,
        *,
        state: Any = None,
        exit_code: Any = None,
        log: Any = None,
        log_bytes: Any = None,
        summary: Any = None,
        series: Any = None,
        error: Any = None,
        model_id: Any = None,
    ) -> Workload:
        """Report how a running workload ended, or claim the model of an uploading one.

        Every field is checked before anything is written; a finished workload no longer changes.
        """
        workload = self.get(principal, workload_id)
        principal.require(workload.project_id, "editor")
        if workload.state not in OPEN_STATES:
            raise Conflict(
                f"Workload {workload.id} is {workload.state}; a finished workload does not change",
                hint="Run the command again: a re-run is a new workload.",
            )
        if state is not None and state not in END_STATES:
            raise InvalidInput(
                f"A workload cannot be set to {state!r}", hint=f"Use one of: {', '.join(END_STATES)}."
            )
        if state == "uploading" and workload.state == "uploading":
            raise Conflict(f"Workload {workload.id} is already uploading")
        fields: dict[str, Any] = {}
        code = _exit_code(exit_code)
        if code is not None:
            if workload.state != "running":
                raise Conflict(f"Workload {workload.id} already reported how its command ended")
            fields["exit_code"] = code
        if state in ("uploading", "succeeded") and code not in (None, 0):
            raise InvalidInput(
                f"A command that exited with {code} did not succeed: report the workload as failed"
            )
        if log_bytes is not None and (
            not isinstance(log_bytes, int) or isinstance(log_bytes, bool) or not 0 <= log_bytes < 2**63
        ):
            raise InvalidInput(f"log_bytes must be a non-negative integer, not {log_bytes!r}")
        if log is not None:
            text = validation.text(log, "Log", MAX_LOG_CHARS)
            fields["log"] = text
            fields["log_bytes"] = len(text.encode()) if log_bytes is None else log_bytes
        if summary is not None:
            fields["summary"] = check_summary(summary, self.limits.max_summary_bytes)
        checked_series = check_series(series) if series is not None else None
        if checked_series is not None:
            fields["series"] = checked_series
        if error is not None:
            fields["error"] = validation.text(error, "Error", MAX_ERROR_CHARS) or None
        link = None
        if state == "succeeded":
            model = self._claimable(principal, workload, model_id)
            link = ModelLink(
                model_id=model, series=workload.series if checked_series is None else checked_series
            )
        elif model_id is not None:
            raise InvalidInput("A model is given only with state 'succeeded'")
        if state is not None:
            fields["state"] = state
            if workload.state == "running":
                fields["ended_at"] = datetime.now(UTC)
        if not fields:
            raise InvalidInput(
                "Nothing to change", hint="Give a state, an exit code, a log, metrics or an error."
            )
        if not self.store.update_workload(workload.id, (workload.state,), fields, link):
            raise Conflict(
                f"Workload {workload.id} (or its model) changed while this request ran",
                hint="Look at it again with `modeldepot workloads show`.",
            )
        return self.get(principal, workload.id)

    def _claimable(self, principal: Principal, workload: Workload, model_id: Any) -> str:
        """The id of the model this workload may claim: ready, unclaimed, same project and user, newer."""
        if workload.state != "uploading":
            raise Conflict(
                f"Workload {workload.id} is {workload.state}; report it as uploading before it claims a model"
            )
        if not isinstance(model_id, str) or not model_id:
            raise InvalidInput("A succeeded workload needs the id of the model it made (model_id)")
        model = self.models.get(principal, model_id, with_files=False)
        if model.project_id != workload.project_id:
            raise InvalidInput(
                f"Model {model.id} is in project {model.project_id}, workload {workload.id} in "
                f"{workload.project_id}"
            )
        if model.state != "ready":
            raise Conflict(f"Model {model.id} is {model.state}; a workload claims a ready model")
        if model.workload_id is not None:
            raise Conflict(f"Model {model.id} was already made by workload {model.workload_id}")
        if model.created_by != workload.created_by or model.created_at < workload.started_at:
            raise InvalidInput(
                f"Model {model.id} was not uploaded by this workload's user after it started",
                hint="A workload claims the model its own run uploaded.",
            )
        return model.id
