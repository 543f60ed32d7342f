"""``modeldepot.Client``: the SDK. The CLI is a thin layer over it."""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from ..errors import ConnectionFailed, InvalidInput, error_from_problem
from ..records import Alias, ApiKey, Model, ModelFile, NewApiKey, Page, Project, Workload
from . import transfer
from .args import (
    check_model_fields,
    checked_id,
    filter_value,
    json_problem,
    local_path,
    positive_int,
    segment,
    server_url,
    tag_args,
    tags_list,
)
from .bulk import Bulk
from .command import CommandResult, run_command
from .downloader import Downloader
from .hashcache import HashCache
from .uploader import SEND_WHILE_HASHING, Uploader
from .workload import Run, log_model


class Progress(Protocol):
    """What uploads and downloads report to (the CLI passes a rich progress bar)."""

    def start(self, phase: str, total_bytes: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


class _NoProgress:
    def start(self, phase: str, total_bytes: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Client:
    """A connection to a modeldepot server.

    Example::

        client = Client("http://127.0.0.1:8750", api_key="md_…")
        project = client.create_project("vision")
        model = client.upload("model.onnx", project=project.id, name="squeezenet", summary={"accuracy": 0.71})
        client.download(model.id, "./out")

    ``url`` is the server's base URL (a trailing ``/api/v1`` is dropped); ``timeout`` is in seconds
    per socket operation (None: wait for ever); ``parallel`` is how many transfers run at once.
    Bad arguments raise :class:`modeldepot.InvalidInput` here, before anything is sent.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        parallel: int = 4,
        hash_cache: str | os.PathLike[str] | None = None,
    ):
        self.url = server_url(url)
        if api_key is not None and (not isinstance(api_key, str) or any(ord(c) < 32 for c in api_key)):
            raise InvalidInput(
                "The API key must be a string without line breaks or control characters",
                hint="Pass the key as `modeldepot keys create` printed it (md_…).",
            )
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise InvalidInput(
                f"timeout must be a positive number of seconds (or None), not {timeout!r}",
                hint="e.g. timeout=60.0",
            )
        self.parallel = positive_int(parallel, "parallel")
        if hash_cache is not None:
            hash_cache = local_path(hash_cache, "hash_cache")
        # Files larger than this, not hashed before, have their parts sent while they are hashed.
        self.send_while_hashing = SEND_WHILE_HASHING
        # Where to remember file digests between uploads (None: hash every file every time).
        self.hash_cache_path = Path(hash_cache) if hash_cache is not None else None
        self._hash_cache: HashCache | None = None
        headers = {"User-Agent": "modeldepot-sdk"}
        self._key_headers = {"X-API-Key": api_key} if api_key else {}
        headers.update(self._key_headers)
        self._bulk = Bulk(
            timeout=timeout
        )  # per socket operation: a stalled transfer fails, a long one does not
        self._http = httpx.Client(
            base_url=self.url + "/api/v1",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=self.parallel + 4),
        )

    def close(self) -> None:
        self._bulk.close()
        self._http.close()
        if self._hash_cache is not None:
            self._hash_cache.close()
            self._hash_cache = None

    def hash_cache(self) -> HashCache | None:
        if self._hash_cache is None and self.hash_cache_path is not None:
            self._hash_cache = HashCache(self.hash_cache_path)
        return self._hash_cache

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (TypeError, ValueError) as exc:
            # Raised while encoding the body, before anything is sent: name the value at fault.
            problem = json_problem(kwargs.get("json"), "")
            if problem is not None:
                raise problem from exc
            raise
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"Cannot reach modeldepot at {self.url}: {exc}",
                hint="Is the server running? Check the URL given to `modeldepot login`.",
            ) from exc
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise error_from_problem(response.status_code, body)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None

    # -- identity ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/health")
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/whoami")
        return result

    # -- projects ----------------------------------------------------------------------------------

    def create_project(self, name: str, *, tags: list[str] | None = None) -> Project:
        body = {"name": name, "tags": tags_list(tags)}
        return Project.from_json(self._json("POST", "/projects", json=body))

    def list_projects(self, *, tag: str | None = None) -> list[Project]:
        params = {"tag": filter_value(tag, "tag")} if tag else None
        return [Project.from_json(p) for p in self._json("GET", "/projects", params=params)["items"]]

    def get_project(self, project_id: str) -> Project:
        return Project.from_json(
            self._json("GET", f"/projects/{transfer.quote_segment(checked_id(project_id, 'Project id'))}")
        )

    def rename_project(self, project_id: str, name: str) -> Project:
        return Project.from_json(
            self._json(
                "PATCH",
                f"/projects/{transfer.quote_segment(checked_id(project_id, 'Project id'))}",
                json={"name": name},
            )
        )

    def delete_project(self, project_id: str, *, force: bool = False) -> None:
        self._request(
            "DELETE",
            f"/projects/{transfer.quote_segment(checked_id(project_id, 'Project id'))}",
            params={"force": str(force).lower()},
        )

    # -- models: reading ---------------------------------------------------------------------------

    def list_models(
        self,
        *,
        project: str | None = None,
        tag: str | None = None,
        name: str | None = None,
        type: str | None = None,
        state: str = "ready",
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Model]:
        """One page, newest first; pass ``page.next_cursor`` as ``cursor`` for the next."""
        params = {
            "project": project,
            "tag": tag,
            "name": name,
            "type": type,
            "state": state,
            "cursor": cursor,
        }
        clean: dict[str, Any] = {k: filter_value(v, k) for k, v in params.items() if v is not None}
        clean["limit"] = positive_int(limit, "limit")
        data = self._json("GET", "/models", params=clean)
        return Page(items=tuple(Model.from_json(m) for m in data["items"]), next_cursor=data["next_cursor"])

    def iter_models(self, *, cursor: str | None = None, **filters: Any) -> Iterator[Model]:
        """Every model matching the filters of :meth:`list_models`, page by page (from ``cursor``,
        a ``next_cursor`` of :meth:`list_models`, when given)."""
        while True:
            page = self.list_models(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_model(self, model_id: str) -> Model:
        return Model.from_json(
            self._json("GET", f"/models/{transfer.quote_segment(checked_id(model_id, 'Model id'))}")
        )

    def list_files(self, model_id: str) -> list[ModelFile]:
        return [
            ModelFile.from_json(f)
            for f in self._json(
                "GET", f"/models/{transfer.quote_segment(checked_id(model_id, 'Model id'))}/files"
            )["items"]
        ]

    # -- models: changing --------------------------------------------------------------------------

    def update_model(self, model_id: str, **changes: Any) -> Model:
        """Change ``name``, ``notes``, ``summary``, ``metadata``, ``dataset_ref`` or ``tags``."""
        path = f"/models/{transfer.quote_segment(checked_id(model_id, 'Model id'))}"
        body = {k: v for k, v in changes.items() if v is not None}
        check_model_fields(body)
        return Model.from_json(self._json("PATCH", path, json=body))

    def rename_model(self, model_id: str, name: str) -> Model:
        return self.update_model(model_id, name=name)

    def add_tags(self, model_id: str, *tags: str) -> Model:
        """``client.add_tags("mo…", "cnn", "small")``"""
        return self.update_model(model_id, add_tags=tag_args(tags))

    def remove_tags(self, model_id: str, *tags: str) -> Model:
        """``client.remove_tags("mo…", "cnn", "small")``"""
        return self.update_model(model_id, remove_tags=tag_args(tags))

    def delete_model(self, model_id: str) -> None:
        self._request("DELETE", f"/models/{transfer.quote_segment(checked_id(model_id, 'Model id'))}")

    # -- models: transfers -------------------------------------------------------------------------

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        project: str,
        name: str,
        type: str | None = None,
        summary: dict[str, Any] | None = None,
        notes: str | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        dataset_ref: str | None = None,
        progress: Progress | None = None,
    ) -> Model:
        """Upload a file or a directory as a new model and return it once it is ``ready``.

        Files are hashed (large ones not hashed before while their parts already go out); only
        content the server lacks is sent, large files in parts several at a time; the model becomes
        visible when every byte is verified. If the upload is cut off
        (network, server restart, Ctrl-C), calling ``upload`` again with the same arguments resumes
        it; on other failures the half-made model is removed if this call made it (one it resumed
        may be another run's: it is left to finish, or to expire with the upload expiry).
        """
        source = local_path(path, "The path to upload")
        meta = {
            "name": name,
            "type": type,
            "summary": summary,
            "notes": notes,
            "tags": tags_list(tags),
            "metadata": metadata,
            "dataset_ref": dataset_ref,
        }
        check_model_fields(meta)
        return Uploader(self, progress or _NoProgress()).run(source, checked_id(project, "Project id"), meta)

    def put_file(
        self, url: str, path: Path, offset: int, size: int, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """PUT part of a local file to a URL the server handed out: itself (with the key), its data
        plane or an object store (presigned: without the key)."""
        headers = self._key_headers if url.startswith(self.url + "/") else {}
        self._bulk.put_file(url, path, offset, size, headers, on_bytes)

    def get_into(
        self,
        url: str,
        sink: Callable[[memoryview], None],
        headers: dict[str, str] | None = None,
        *,
        on_start: Callable[[int], None] | None = None,
        into: memoryview | None = None,
    ) -> int:
        """GET a URL the server handed out, feeding the body to ``sink``; the HTTP status.

        With ``into``, the body is read straight into it (see ``Bulk.get_into``). A redirect (to a
        presigned URL) is followed once, without the key.
        """
        own = url.startswith(self.url + "/")
        sent = {**(self._key_headers if own else {}), **(headers or {})}
        status, response = self._bulk.get_into(url, sink, sent, on_start, into)
        location = response.getheader("Location")
        if status in (302, 303, 307) and location:
            status, _ = self._bulk.get_into(location, sink, headers or {}, on_start, into)
        return status

    def download(
        self, model_id: str, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> list[Path]:
        """Download every file of a model under ``dest``; each is verified against its sha256.

        A file is written as ``NAME.part`` and renamed only once its hash matches; files already
        present with the right hash are kept; an interrupted download resumes when run again.
        """
        target = local_path(dest, "The destination directory")
        return Downloader(self, progress or _NoProgress()).run(checked_id(model_id, "Model id"), target)

    def download_archive(
        self,
        model_id: str,
        dest: str | os.PathLike[str] | IO[bytes],
        *,
        format: str = "zip",
        progress: Progress | None = None,
    ) -> Path | None:
        """Save every file of a model as one zip or tar archive at ``dest``; return that path.

        The archive is written as ``DEST.part`` (its folder made if missing) and renamed when
        complete; on any failure (the connection, or a local OSError such as a full disk, which names
        the file) the ``.part`` is removed: an archive download does not resume.

        ``dest`` may also be a binary file object open for writing (e.g. ``sys.stdout.buffer``):
        the archive is written to it as it arrives, and None is returned. If the download fails
        part way, what was written stays written: the caller must discard it.
        """
        model_id = checked_id(model_id, "Model id")
        if format not in ("zip", "tar"):
            raise InvalidInput(f"Archive format {format!r} is not known", hint="Use 'zip' or 'tar'.")
        stream: IO[bytes] | None = None
        if hasattr(dest, "write") and not isinstance(dest, str | os.PathLike):
            stream = dest
            target = None
        else:
            target = local_path(dest, "The archive's destination")
            if target.is_dir():  # before a byte is fetched
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        bar = progress or _NoProgress()
        bar.start("downloading", self.get_model(model_id).size)
        part = target.with_name(target.name + ".part") if target is not None else None
        opened = False
        try:
            try:
                with self._http.stream(
                    "GET",
                    f"/models/{transfer.quote_segment(model_id)}/archive",
                    params={"format": format},
                    timeout=httpx.Timeout(None, connect=10.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        self._raise_for(response)
                    if part is None:
                        assert stream is not None
                        for chunk in response.iter_bytes(transfer.CHUNK):
                            stream.write(chunk)
                            bar.advance(len(chunk))
                        stream.flush()
                    else:
                        # As `download` does; an error names the folder, not the .part file.
                        part.parent.mkdir(parents=True, exist_ok=True)
                        with transfer.naming(part), part.open("wb") as out:
                            opened = True
                            for chunk in response.iter_bytes(transfer.CHUNK):
                                out.write(chunk)
                                bar.advance(len(chunk))
            except httpx.TransportError as exc:
                raise ConnectionFailed(
                    f"Download of the archive was cut off: {exc}",
                    # The server also cuts an archive off when a stored file fails its check.
                    hint="Run it again. If it is cut off again, a stored file may be damaged: "
                    "`modeldepot models download` names the damaged files, and an administrator can "
                    "check with `modeldepot fsck`.",
                ) from exc
            if part is not None and target is not None:
                os.replace(part, target)
        except BaseException:
            if opened and part is not None:
                part.unlink(missing_ok=True)
            raise
        finally:
            bar.finish()
        return target

    # -- storage maintenance (global admin) --------------------------------------------------------

    def gc(self, *, dry_run: bool = False, grace_seconds: int | None = None) -> dict[str, Any]:
        """Reclaim blobs no model needs and remove expired uploads; ``dry_run`` only reports."""
        result: dict[str, Any] = self._json(
            "POST", "/admin/gc", json={"dry_run": dry_run, "grace_seconds": grace_seconds}
        )
        return result

    def fsck(self, *, repair: bool = False) -> dict[str, Any]:
        """Re-hash every stored blob on the server; ``ok`` is False if any is missing or corrupt, and
        ``affected`` lists the model files with that content. ``repair``: forget the damaged blobs, so
        that uploading the same content again restores it for every model naming it."""
        result: dict[str, Any] = self._json(
            "POST", "/admin/fsck", json={"repair": repair}, timeout=httpx.Timeout(None, connect=10.0)
        )
        return result

    def _raise_for(self, response: httpx.Response) -> None:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_from_problem(response.status_code, body)

    # -- aliases -----------------------------------------------------------------------------------

    @staticmethod
    def _alias_path(project: str, model_name: str, alias: str) -> str:
        return (
            f"/projects/{transfer.quote_segment(checked_id(project, 'Project id'))}/aliases/"
            f"{transfer.quote_segment(segment(model_name, 'Model name'))}/"
            f"{transfer.quote_segment(segment(alias, 'Alias'))}"
        )

    def set_alias(self, project: str, model_name: str, alias: str, model_id: str) -> Alias:
        path = self._alias_path(project, model_name, alias)
        return Alias.from_json(self._json("PUT", path, json={"model_id": checked_id(model_id, "Model id")}))

    def get_alias(self, project: str, model_name: str, alias: str) -> Alias:
        return Alias.from_json(self._json("GET", self._alias_path(project, model_name, alias)))

    def list_aliases(self, project: str) -> list[Alias]:
        path = f"/projects/{transfer.quote_segment(checked_id(project, 'Project id'))}/aliases"
        return [Alias.from_json(a) for a in self._json("GET", path)["items"]]

    def delete_alias(self, project: str, model_name: str, alias: str) -> None:
        self._request("DELETE", self._alias_path(project, model_name, alias))

    # -- API keys ----------------------------------------------------------------------------------

    def create_key(
        self,
        *,
        project: str | None = None,
        role: str | None = None,
        admin: bool = False,
        name: str = "",
        user: str | None = None,
    ) -> NewApiKey:
        body = {"project": project, "role": role, "admin": admin, "name": name, "user": user}
        data = self._json("POST", "/keys", json=body)
        return NewApiKey(key=ApiKey.from_json(data["key"]), secret=data["secret"])

    def list_keys(self, *, project: str | None = None) -> list[ApiKey]:
        params = {"project": filter_value(project, "project")} if project else None
        return [ApiKey.from_json(k) for k in self._json("GET", "/keys", params=params)["items"]]

    def revoke_key(self, key_id: str) -> ApiKey:
        return ApiKey.from_json(
            self._json("DELETE", f"/keys/{transfer.quote_segment(checked_id(key_id, 'Key id'))}")
        )

    # -- workloads: the runs that make models (lineage) --------------------------------------------

    def start_workload(self, project: str, *, name: str, command: list[str], **fields: Any) -> Workload:
        """Record a workload that starts now (``running``). :meth:`workload`, :meth:`run` and
        ``modeldepot run`` call it for you; ``fields`` are those of ``POST /projects/{id}/workloads``."""
        path = f"/projects/{transfer.quote_segment(checked_id(project, 'Project id'))}/workloads"
        check_model_fields(fields)
        body = {"name": name, "command": list(command), **fields}
        return Workload.from_json(self._json("POST", path, json=body))

    def update_workload(self, workload_id: str, **fields: Any) -> Workload:
        """Report how a workload ended (``state``, ``exit_code``, ``log``, ``summary``, ``series``,
        ``error``), or claim its model (``state="succeeded"``, ``model_id``)."""
        path = f"/workloads/{transfer.quote_segment(checked_id(workload_id, 'Workload id'))}"
        body = {k: v for k, v in fields.items() if v is not None}
        if "model_id" in body:
            checked_id(body["model_id"], "Model id")
        return Workload.from_json(self._json("PATCH", path, json=body))

    def get_workload(self, workload_id: str) -> Workload:
        return Workload.from_json(
            self._json("GET", f"/workloads/{transfer.quote_segment(checked_id(workload_id, 'Workload id'))}")
        )

    def list_workloads(
        self,
        *,
        project: str | None = None,
        commit: str | None = None,
        state: str | None = None,
        name: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Workload]:
        """One page, newest first. ``commit`` (4+ hex digits of a git commit) finds the runs of that
        commit; each names the model it made (``model_id``)."""
        params = {"project": project, "commit": commit, "state": state, "name": name, "cursor": cursor}
        clean: dict[str, Any] = {k: filter_value(v, k) for k, v in params.items() if v is not None}
        clean["limit"] = positive_int(limit, "limit")
        data = self._json("GET", "/workloads", params=clean)
        return Page(
            items=tuple(Workload.from_json(w) for w in data["items"]), next_cursor=data["next_cursor"]
        )

    def iter_workloads(self, *, cursor: str | None = None, **filters: Any) -> Iterator[Workload]:
        """Every workload matching the filters of :meth:`list_workloads`, page by page (from
        ``cursor``, when given)."""
        while True:
            page = self.list_workloads(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def workload_log(self, workload_id: str) -> str:
        """The captured output of a workload (its head and tail when it was long)."""
        path = f"/workloads/{transfer.quote_segment(checked_id(workload_id, 'Workload id'))}/log"
        return self._request("GET", path).text

    def workload(self, project: str, name: str, **options: Any) -> Run:
        """Record a block of Python as a workload and make a model of the files it saves.

        Example::

            with client.workload(project="pr…", name="resnet", type="ONNX") as run:
                for epoch in range(10):
                    run.log_metrics({"loss": train_one_epoch()}, step=epoch)
                run.save("model.onnx")
            print(run.model.id, run.workload.id)

        ``options``: ``type``, ``tags``, ``notes``, ``metadata``, ``dataset_ref``, ``env_keep``,
        ``capture_output``, ``command``, ``progress``; see :class:`modeldepot.Run`.
        """
        checked_id(project, "Project id")
        check_model_fields(options)
        return Run(self, project, name, **options)

    def log_model(self, path: str | os.PathLike[str], *, project: str, name: str, **options: Any) -> Model:
        """Upload a file or directory as a model made by this program, recorded as a workload.

        Example: ``client.log_model("model.onnx", project="pr…", name="resnet", summary={"accuracy": 0.93})``
        """
        local_path(path, "The path to upload")
        checked_id(project, "Project id")
        check_model_fields(options)
        return log_model(path, project=project, name=name, client=self, **options)

    def run(self, command: list[str], *, project: str, name: str, **options: Any) -> CommandResult:
        """Run a command as a workload (what ``modeldepot run`` does) and make a model of its output.

        The command writes its model files to ``$MODELDEPOT_MODEL_PATH``; see :func:`run_command`.
        """
        checked_id(project, "Project id")
        check_model_fields(options)
        return run_command(self, command, project=project, name=name, **options)
