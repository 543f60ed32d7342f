"""``modeldepot.Client``: the SDK. The CLI is a thin layer over it."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..errors import ConnectionFailed, error_from_problem
from ..records import Alias, ApiKey, Model, ModelFile, NewApiKey, Page, Project, Workload
from . import transfer
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
        self.url = url.rstrip("/")
        self.parallel = max(1, parallel)
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
        return Project.from_json(self._json("POST", "/projects", json={"name": name, "tags": tags or []}))

    def list_projects(self, *, tag: str | None = None) -> list[Project]:
        params = {"tag": tag} if tag else None
        return [Project.from_json(p) for p in self._json("GET", "/projects", params=params)["items"]]

    def get_project(self, project_id: str) -> Project:
        return Project.from_json(self._json("GET", f"/projects/{transfer.quote_segment(project_id)}"))

    def rename_project(self, project_id: str, name: str) -> Project:
        return Project.from_json(
            self._json("PATCH", f"/projects/{transfer.quote_segment(project_id)}", json={"name": name})
        )

    def delete_project(self, project_id: str, *, force: bool = False) -> None:
        self._request(
            "DELETE", f"/projects/{transfer.quote_segment(project_id)}", params={"force": str(force).lower()}
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
        clean: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
        clean["limit"] = limit
        data = self._json("GET", "/models", params=clean)
        return Page(items=tuple(Model.from_json(m) for m in data["items"]), next_cursor=data["next_cursor"])

    def iter_models(self, **filters: Any) -> Iterator[Model]:
        """Every model matching the filters of :meth:`list_models`, page by page."""
        cursor = None
        while True:
            page = self.list_models(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_model(self, model_id: str) -> Model:
        return Model.from_json(self._json("GET", f"/models/{transfer.quote_segment(model_id)}"))

    def list_files(self, model_id: str) -> list[ModelFile]:
        return [
            ModelFile.from_json(f)
            for f in self._json("GET", f"/models/{transfer.quote_segment(model_id)}/files")["items"]
        ]

    # -- models: changing --------------------------------------------------------------------------

    def update_model(self, model_id: str, **changes: Any) -> Model:
        """Change ``name``, ``notes``, ``summary``, ``metadata``, ``dataset_ref`` or ``tags``."""
        body = {k: v for k, v in changes.items() if v is not None}
        return Model.from_json(self._json("PATCH", f"/models/{transfer.quote_segment(model_id)}", json=body))

    def rename_model(self, model_id: str, name: str) -> Model:
        return self.update_model(model_id, name=name)

    def add_tags(self, model_id: str, *tags: str) -> Model:
        return self.update_model(model_id, add_tags=list(tags))

    def remove_tags(self, model_id: str, *tags: str) -> Model:
        return self.update_model(model_id, remove_tags=list(tags))

    def delete_model(self, model_id: str) -> None:
        self._request("DELETE", f"/models/{transfer.quote_segment(model_id)}")

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
        meta = {
            "name": name,
            "type": type,
            "summary": summary,
            "notes": notes,
            "tags": tags or [],
            "metadata": metadata,
            "dataset_ref": dataset_ref,
        }
        return Uploader(self, progress or _NoProgress()).run(Path(path), project, meta)

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
        return Downloader(self, progress or _NoProgress()).run(model_id, Path(dest))

    def download_archive(
        self,
        model_id: str,
        dest: str | os.PathLike[str],
        *,
        format: str = "zip",
        progress: Progress | None = None,
    ) -> Path:
        """Save every file of a model as one zip or tar archive at ``dest``.

        The archive is written as ``DEST.part`` and renamed when complete; on any failure (the
        connection, or a local OSError such as a full disk, which names the file) the ``.part`` is
        removed: an archive download does not resume.
        """
        bar = progress or _NoProgress()
        target = Path(dest)
        if target.is_dir():  # before a byte is fetched
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        part = target.with_name(target.name + ".part")
        bar.start("downloading", self.get_model(model_id).size)
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
            os.replace(part, target)
        except BaseException:
            if opened:
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

    def set_alias(self, project: str, model_name: str, alias: str, model_id: str) -> Alias:
        path = f"/projects/{transfer.quote_segment(project)}/aliases/{transfer.quote_segment(model_name)}/{transfer.quote_segment(alias)}"
        return Alias.from_json(self._json("PUT", path, json={"model_id": model_id}))

    def get_alias(self, project: str, model_name: str, alias: str) -> Alias:
        path = f"/projects/{transfer.quote_segment(project)}/aliases/{transfer.quote_segment(model_name)}/{transfer.quote_segment(alias)}"
        return Alias.from_json(self._json("GET", path))

    def list_aliases(self, project: str) -> list[Alias]:
        return [
            Alias.from_json(a)
            for a in self._json("GET", f"/projects/{transfer.quote_segment(project)}/aliases")["items"]
        ]

    def delete_alias(self, project: str, model_name: str, alias: str) -> None:
        self._request(
            "DELETE",
            f"/projects/{transfer.quote_segment(project)}/aliases/{transfer.quote_segment(model_name)}/{transfer.quote_segment(alias)}",
        )

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
        params = {"project": project} if project else None
        return [ApiKey.from_json(k) for k in self._json("GET", "/keys", params=params)["items"]]

    def revoke_key(self, key_id: str) -> ApiKey:
        return ApiKey.from_json(self._json("DELETE", f"/keys/{transfer.quote_segment(key_id)}"))

    # -- workloads: the runs that make models (lineage) --------------------------------------------

    def start_workload(self, project: str, *, name: str, command: list[str], **fields: Any) -> Workload:
        """Record a workload that starts now (``running``). :meth:`workload`, :meth:`run` and
        ``modeldepot run`` call it for you; ``fields`` are those of ``POST /projects/{id}/workloads``."""
        body = {"name": name, "command": list(command), **fields}
        return Workload.from_json(
            self._json("POST", f"/projects/{transfer.quote_segment(project)}/workloads", json=body)
        )

    def update_workload(self, workload_id: str, **fields: Any) -> Workload:
        """Report how a workload ended (``state``, ``exit_code``, ``log``, ``summary``, ``series``,
        ``error``), or claim its model (``state="succeeded"``, ``model_id``)."""
        body = {k: v for k, v in fields.items() if v is not None}
        return Workload.from_json(
            self._json("PATCH", f"/workloads/{transfer.quote_segment(workload_id)}", json=body)
        )

    def get_workload(self, workload_id: str) -> Workload:
        return Workload.from_json(self._json("GET", f"/workloads/{transfer.quote_segment(workload_id)}"))

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
        clean: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
        clean["limit"] = limit
        data = self._json("GET", "/workloads", params=clean)
        return Page(
            items=tuple(Workload.from_json(w) for w in data["items"]), next_cursor=data["next_cursor"]
        )

    def iter_workloads(self, **filters: Any) -> Iterator[Workload]:
        """Every workload matching the filters of :meth:`list_workloads`, page by page."""
        cursor = None
        while True:
            page = self.list_workloads(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def workload_log(self, workload_id: str) -> str:
        """The captured output of a workload (its head and tail when it was long)."""
        return self._request("GET", f"/workloads/{transfer.quote_segment(workload_id)}/log").text

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
        return Run(self, project, name, **options)

    def log_model(self, path: str | os.PathLike[str], *, project: str, name: str, **options: Any) -> Model:
        """Upload a file or directory as a model made by this program, recorded as a workload.

        Example: ``client.log_model("model.onnx", project="pr…", name="resnet", summary={"accuracy": 0.93})``
        """
        return log_model(path, project=project, name=name, client=self, **options)

    def run(self, command: list[str], *, project: str, name: str, **options: Any) -> CommandResult:
        """Run a command as a workload (what ``modeldepot run`` does) and make a model of its output.

        The command writes its model files to ``$MODELDEPOT_MODEL_PATH``; see :func:`run_command`.
        """
        return run_command(self, command, project=project, name=name, **options)
