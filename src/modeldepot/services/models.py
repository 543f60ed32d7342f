"""Models: immutable sets of files plus the metadata a team needs to find, judge and use them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from ..errors import Conflict, InvalidInput, NotFound, project_not_found
from ..paths import normalize_path
from ..records import MODEL_STATES, Model, ModelFile, Page
from . import validation
from .auth import Principal
from .ports import BlobStore, MetadataStore, ModelQuery

_MAX_SIZE = 2**63 - 1  # sizes are stored as 64-bit integers


@dataclasses.dataclass(frozen=True)
class Limits:
    upload_expiry: timedelta = timedelta(hours=24)
    max_summary_bytes: int = 64 * 1024
    max_metadata_bytes: int = 1024 * 1024
    max_files: int = 200_000
    max_notes: int = 1024 * 1024
    # An uploaded zip (the Gradient CLI's directory upload) unpacks to at most this many bytes, and no
    # entry may expand more than this many times.
    max_unpacked_bytes: int = 1 << 40
    max_unpack_ratio: int = 200
    # Blobs larger than this are sent in parts of part_size (S3 needs parts of at least 5 MiB).
    part_threshold: int = 64 * 1024 * 1024
    part_size: int = 64 * 1024 * 1024
    # The collector leaves an unreferenced blob alone until it has been untouched this long.
    gc_grace: timedelta = timedelta(hours=1)


def detect_type(paths: Iterable[str]) -> str:
    """``.onnx`` → ONNX; ``saved_model.pb``, ``.h5``, ``.keras`` → Tensorflow; else Custom."""
    names = [p.rsplit("/", 1)[-1].lower() for p in paths]
    if any(n.endswith(".onnx") for n in names):
        return "ONNX"
    if any(n == "saved_model.pb" or n.endswith((".h5", ".keras")) for n in names):
        return "Tensorflow"
    return "Custom"


def check_manifest(files: Any, max_files: int) -> tuple[ModelFile, ...]:
    if not isinstance(files, list | tuple) or not files:
        raise InvalidInput(
            "A model needs at least one file", hint="Upload a file or a directory that is not empty."
        )
    if len(files) > max_files:
        raise InvalidInput(f"{len(files)} files given; a model may hold at most {max_files}")
    out: dict[str, ModelFile] = {}
    for entry in files:
        path: Any
        size: Any
        digest: Any
        if isinstance(entry, ModelFile):
            path, size, digest = entry.path, entry.size, entry.sha256
        elif isinstance(entry, dict):
            path, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        else:
            raise InvalidInput(f"Manifest entry {entry!r} is not an object with path, size and sha256")
        path = normalize_path(path)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_SIZE:
            raise InvalidInput(f"Size of {path!r} must be a non-negative integer below 2**63, not {size!r}")
        if path in out:
            raise InvalidInput(f"File path {path!r} appears twice in the manifest")
        out[path] = ModelFile(path=path, size=size, sha256=validation.sha256(digest))
    total = sum(f.size for f in out.values())
    if total > _MAX_SIZE:
        raise InvalidInput(f"The files add up to {total} bytes; the size of a model must stay below 2**63")
    dirs = {p.rsplit("/", 1)[0] for p in out if "/" in p}
    prefixes = {d for p in dirs for d in _parents(p)}
    clash = sorted(set(out) & prefixes)
    if clash:
        raise InvalidInput(f"{clash[0]!r} is both a file and a directory in the manifest")
    return tuple(sorted(out.values(), key=lambda f: f.path))


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def encode_cursor(seq: int | None) -> str | None:
    return None if seq is None else format(seq, "x")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        seq = int(cursor, 16)
    except ValueError:
        seq = -1
    if not 0 <= seq < 2**63 or encode_cursor(seq) != cursor:  # only what encode_cursor makes
        raise InvalidInput(f"Cursor {cursor!r} is not valid", hint="Pass the next_cursor of a previous page.")
    return seq


def list_scope(
    store: MetadataStore,
    principal: Principal,
    project_id: str | None,
    limit: int,
    state: str | None,
    states: Sequence[str],
    *,
    any_state: bool = False,
) -> tuple[str, ...] | None:
    """The projects a list covers (None: every one; empty: none), once its limit and state are checked.
    ``any_state``: the API takes ``any`` for every state (it passes None here), so the hint says so."""
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit must be between 1 and 1000, not {limit}")
    if state is not None and state not in states:
        choices = ", ".join((*states, "any") if any_state else states)
        raise InvalidInput(f"State {state!r} is not known", hint=f"Use one of: {choices}.")
    if project_id is None:
        return principal.visible_projects()
    principal.require(project_id, "viewer")
    if not store.project_exists(project_id):
        raise project_not_found(project_id)
    return (project_id,)


class ModelService:
    def __init__(self, store: MetadataStore, blobs: BlobStore, limits: Limits | None = None):
        self.store = store
        self.blobs = blobs
        self.limits = limits or Limits()

    # -- reading -----------------------------------------------------------------------------------

    def _with_location(self, model: Model) -> Model:
        return dataclasses.replace(model, storage_location=self.blobs.location())

    def _visible(self, principal: Principal, model_id: str, *, with_files: bool = False) -> Model:
        known = isinstance(model_id, str) and "\x00" not in model_id  # no id holds a NUL
        model = self.store.get_model(model_id, with_files=with_files) if known else None
        if model is None or not principal.can_see(model.project_id):
            raise NotFound(
                f"Model {model_id} not found", hint="`modeldepot models list` shows the models you can see."
            )
        return self._with_location(model)

    def get(self, principal: Principal, model_id: str, *, with_files: bool = True) -> Model:
        return self._visible(principal, model_id, with_files=with_files)

    def list_models(
        self,
        principal: Principal,
        *,
        project_id: str | None = None,
        tag: str | None = None,
        name: str | None = None,
        type: str | None = None,
        state: str | None = "ready",
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Model]:
        project_ids = list_scope(
            self.store, principal, project_id, limit, state, MODEL_STATES, any_state=True
        )
        if project_ids == ():
            return Page(items=(), next_cursor=None)
        query = ModelQuery(
            project_ids=project_ids,
            tag=tag,
            name=name,
            type=validation.model_type(type) if type is not None else None,
            state=state,
            before_seq=decode_cursor(cursor),
            limit=limit,
        )
        models, next_seq = self.store.list_models(query)
        return Page(items=tuple(self._with_location(m) for m in models), next_cursor=encode_cursor(next_seq))

    def files(self, principal: Principal, model_id: str) -> list[ModelFile]:
        model = self._visible(principal, model_id)
        return self.store.model_files(model.id)

    def files_at(self, principal: Principal, model_id: str, paths: Sequence[str]) -> dict[str, ModelFile]:
        """The files of the model at ``paths`` (those it has), by path: a batch of a download without
        reading the whole manifest each time."""
        model = self._visible(principal, model_id)
        return self.store.model_files_at(model.id, paths)

    def file(self, principal: Principal, model_id: str, path: str) -> ModelFile:
        model = self._visible(principal, model_id)
        if model.state != "ready":
            raise Conflict(f"Model {model_id} is {model.state}; its files can be read once it is ready")
        found = self.store.get_model_file(model.id, normalize_path(path))
        if found is None:
            raise NotFound(f"Model {model_id} has no file {path!r}")
        return found

    # -- changing ----------------------------------------------------------------------------------

    def update(self, principal: Principal, model_id: str, changes: dict[str, Any]) -> Model:
        """Change metadata (files are immutable). Every field is checked before anything is written."""
        model = self._visible(principal, model_id)
        principal.require(model.project_id, "editor")
        allowed = {"name", "notes", "summary", "metadata", "dataset_ref", "add_tags", "remove_tags", "tags"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise InvalidInput(
                f"Cannot change {', '.join(unknown)}", hint=f"Changeable: {', '.join(sorted(allowed))}."
            )
        fields: dict[str, Any] = {}
        if changes.get("notes") is not None:
            fields["notes"] = validation.text(changes["notes"], "Notes", self.limits.max_notes)
        if changes.get("summary") is not None:
            fields["summary"] = validation.json_object(
                changes["summary"], "Summary", self.limits.max_summary_bytes
            )
        if changes.get("metadata") is not None:
            fields["metadata"] = validation.json_object(
                changes["metadata"], "Metadata", self.limits.max_metadata_bytes
            )
        if changes.get("dataset_ref") is not None:
            fields["dataset_ref"] = validation.text(changes["dataset_ref"], "Dataset reference", 500) or None
        new_name = validation.model_name(changes["name"]) if changes.get("name") is not None else None
        new_tags: tuple[str, ...] | None = None
        if changes.get("tags") is not None:
            new_tags = validation.tags(changes["tags"])
        if changes.get("add_tags") or changes.get("remove_tags"):
            add = validation.tags(changes.get("add_tags") or [])
            remove = set(validation.tags(changes.get("remove_tags") or []))
            new_tags = tuple(
                sorted((set(new_tags if new_tags is not None else model.tags) | set(add)) - remove)
            )
            validation.tags(list(new_tags))
        if fields:
            self.store.update_model(model.id, **fields)
        if new_name is not None and new_name != model.name:
            self.store.rename_model(model.id, new_name)
        if new_tags is not None:
            self.store.set_model_tags(model.id, new_tags)
        return self.get(principal, model.id)

    def delete(self, principal: Principal, model_id: str) -> None:
        model = self._visible(principal, model_id)
        principal.require(model.project_id, "editor")
        if model.state == "uploading":
            # Parts that arrived for an upload nobody will finish: drop them with it.
            for pending in self.store.pending(model.id):
                if pending.staging_id is not None:
                    self.blobs.abort_staging(pending.staging_id)
        self.store.delete_model(model.id)

    def list_matching(
        self,
        principal: Principal,
        *,
        project_id: str | None = None,
        any_tags: Sequence[str] = (),
        name: str | None = None,
        type: str | None = None,
        limit: int | None = None,
    ) -> list[Model]:
        """Every ready model that matches (any of ``any_tags``), newest first; ``limit`` None: all."""
        found: dict[str, Model] = {}
        tags: list[str | None] = [*dict.fromkeys(any_tags)] or [None]
        for tag in tags:
            cursor: str | None = None
            while True:
                page = self.list_models(
                    principal, project_id=project_id, tag=tag, name=name, type=type, cursor=cursor, limit=1000
                )
                found.update((m.id, m) for m in page.items)
                cursor = page.next_cursor
                if cursor is None or (limit is not None and not any_tags and len(found) >= limit):
                    break
        models = sorted(found.values(), key=lambda m: (m.created_at, m.id), reverse=True)
        return models if limit is None else models[:limit]
