"""The real, unmodified `gradient` 2.0.6 CLI and its Python SDK against a real modeldepot server.

The CLI lives in its own venv (``make gradient-venv``: .venv-gradient). Each test runs the
``gradient`` binary with a fresh HOME (so ~/.paperspace/config.json is its own) and a fresh TMPDIR
(the CLI zips a directory to $TMPDIR/model.zip). Most tests use SQLite only; the file round trip
runs on SQLite and PostgreSQL. The upload URL's rules (one use, expiry, signature, no API key) are
checked with raw HTTP, as a client other than the CLI would see them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from modeldepot import Client

from .conftest import RunningServer, write_tree

ROOT = Path(__file__).resolve().parent.parent
GRADIENT_VENV = ROOT / ".venv-gradient"
GRADIENT = GRADIENT_VENV / "bin" / "gradient"
GRADIENT_PYTHON = GRADIENT_VENV / "bin" / "python"

if not GRADIENT.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{GRADIENT} is missing: the test target builds it (make gradient-venv)")
    pytest.skip("the gradient CLI is not installed: run `make gradient-venv`", allow_module_level=True)

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Halo spinner frames and progress bars that the CLI writes even when its output is not a terminal.
_NOISE = re.compile(r"^(?:[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]|\s*\d+% \(|N/A%|Waiting for data|Uploading model|Creating )")


class Gradient:
    """Runs the real ``gradient`` binary against one server, with its own HOME and TMPDIR."""

    def __init__(self, server: RunningServer, home: Path, api_key: str | None):
        self.server = server
        self.home = home
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
            "PAPERSPACE_CONFIG_HOST": server.url,
        }
        if api_key is not None:
            self.env["PAPERSPACE_API_KEY"] = api_key

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[str, str]:
        """(stdout, stderr) without spinner noise; fails on a non-zero exit or a traceback."""
        done = subprocess.run(
            [str(GRADIENT), *args],
            env=env or self.env,
            cwd=cwd or self.home,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out, err = _clean(done.stdout), _clean(done.stderr)
        assert done.returncode == 0, f"gradient {' '.join(args)} exited {done.returncode}:\n{out}\n{err}"
        assert "Traceback" not in err, err
        return out, err

    def ok(self, *args: str) -> str:
        out, err = self.run(*args)
        assert err == "", f"gradient {' '.join(args)} printed to stderr: {err}"
        return out

    def error(self, *args: str) -> str:
        """The one-line error a failing command prints (the CLI exits 0 on server errors)."""
        _, err = self.run(*args)
        assert err and "\n" not in err, f"expected one error line from gradient {' '.join(args)}: {err!r}"
        return err

    def table(self, *args: str) -> dict[str, str]:
        """A `details` table as {row name: value}."""
        rows = {}
        for line in self.ok(*args).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 2 and not line.startswith("+"):
                rows[cells[0]] = cells[1]
        return rows

    def column(self, *args: str, name: str = "ID") -> list[str]:
        """One column of a `list` table, top to bottom."""
        lines = [line for line in self.ok(*args).splitlines() if line.startswith("|")]
        if not lines:
            return []
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        at = header.index(name)
        return [[c.strip() for c in line.strip("|").split("|")][at] for line in lines[1:]]


def _clean(text: str) -> str:
    lines = []
    for raw in _ANSI.sub("", text).replace("\r", "\n").splitlines():
        line = raw.rstrip()
        if line and not _NOISE.match(line.strip()):
            lines.append(line)
    return "\n".join(lines)


@pytest.fixture
def gradient(server: RunningServer, tmp_path: Path) -> Gradient:
    return Gradient(server, tmp_path / "home", server.admin_key)


def _uploaded_id(out: str) -> str:
    found = re.search(r"Model (?:uploaded|created) with ID: (mo[0-9a-z]+)", out)
    assert found, out
    return found.group(1)


def _upload(path: Path, *options: str) -> tuple[str, ...]:
    """Arguments of ``gradient models upload PATH`` (name and type defaulted; later options win)."""
    return ("models", "upload", str(path), "--name", "m", "--modelType", "Custom", *options)


def _project_id(out: str) -> str:
    found = re.search(r"Project created with ID: (pr[0-9a-z]+)", out)
    assert found, out
    return found.group(1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


# -- API key ------------------------------------------------------------------------------------------


@sqlite_only
def test_api_key_from_option_environment_and_config_file(server: RunningServer, tmp_path: Path) -> None:
    g = Gradient(server, tmp_path / "home", api_key=None)
    assert g.error("models", "list") == "Failed to fetch data: No API key was sent"
    assert g.error("models", "list", "--apiKey", "md_wrong") == "Failed to fetch data: Invalid API key"
    assert "No data found" in g.ok("models", "list", "--apiKey", server.admin_key)

    saved = g.ok("apiKey", server.admin_key)
    assert "Successfully added your API Key" in saved
    config = json.loads((g.home / ".paperspace" / "config.json").read_text())
    assert config == {"apiKey": server.admin_key}
    assert "No data found" in g.ok("models", "list")

    with_env = {**g.env, "PAPERSPACE_API_KEY": "md_wrong_key_in_env"}
    _, err = g.run("models", "list", env=with_env)
    assert err == "Failed to fetch data: Invalid API key"  # the environment wins over the file


# -- projects ------------------------------------------------------------------------------------------


@sqlite_only
def test_projects_create_list_details_tags_delete(gradient: Gradient, admin: Client) -> None:
    out = gradient.ok("projects", "create", "--name", "vision", "--tag", "b", "--tags", "a, c")
    project = _project_id(out)
    assert f"/admin/projects/{project}" in out  # /teams/namespace answered with the key's user
    other = _project_id(gradient.ok("projects", "create", "--name", "nlp", "--repositoryUrl", "https://x/y"))

    assert gradient.column("projects", "list") == [other, project]
    assert gradient.column("projects", "list", "--tag", "a", "--tag", "zzz") == [project]
    details = gradient.table("projects", "details", "--id", project)
    assert details["Name"] == "vision" and details["Tags"] == "a, b, c"
    assert gradient.table("projects", "details", "--id", other)["Repository url"] == "https://x/y"

    assert gradient.ok("projects", "tags", "add", "--id", project, "--tag", "d") == "Tags added to project"
    assert gradient.ok("projects", "tags", "remove", "--id", project, "--tags", "a,b") == (
        "Tags removed from project"
    )
    assert admin.get_project(project).tags == ("c", "d")  # one project, seen by both clients

    assert gradient.ok("projects", "delete", "--id", other) == "Project deleted"
    assert [p.id for p in admin.list_projects()] == [project]
    assert gradient.error("projects", "details", "--id", "prnosuch1") == (
        "Failed to fetch data: Project prnosuch1 not found"
    )
    assert gradient.error("projects", "delete", "--id", "prnosuch1") == (
        "Failed to delete resource: Project prnosuch1 not found"
    )


# -- models: one file, on both databases ----------------------------------------------------------------


def test_upload_a_file_with_everything_then_list_details_download_tag_delete(
    gradient: Gradient, admin: Client, project: str, tmp_path: Path
) -> None:
    src = gradient.home / "fx"  # the CLI runs in its HOME: the path is relative, as a user types it
    src.mkdir()
    (src / "model.onnx").write_bytes(os.urandom(5000))
    out = gradient.ok(
        "models", "upload", "fx/model.onnx", "--name", "resnet", "--modelType", "onnx",
        "--projectId", project, "--modelSummary", '{"acc": 0.9, "loss": 0.1}', "--notes", "first try",
        "--tag", "b", "--tags", "a,c",
    )  # fmt: skip
    model_id = _uploaded_id(out)

    # An ordinary model: the native SDK sees everything the CLI sent.
    native = admin.get_model(model_id)
    assert (native.name, native.type, native.project_id, native.state) == ("resnet", "ONNX", project, "ready")
    assert native.summary == {"acc": 0.9, "loss": 0.1} and native.notes == "first try"
    assert native.tags == ("a", "b", "c")
    assert [(f.path, f.size) for f in native.files or ()] == [("model.onnx", 5000)]

    details = gradient.table("models", "details", "--id", model_id)
    assert details["Name"] == "resnet" and details["Project ID"] == project
    assert details["Model Type"] == "ONNX" and details["Tags"] == "a, b, c"
    assert details["Deployment State"] == "Stopped"
    assert details["URL"] == f"{gradient.server.url}/api/v1/models/{model_id}/files"

    # A model uploaded with the native SDK is listed by the CLI, and filters run on the server.
    other = admin.upload(src / "model.onnx", project=admin.create_project("other").id, name="n", tags=["z"])
    assert gradient.column("models", "list") == [other.id, model_id]
    assert gradient.column("models", "list", "--projectId", project) == [model_id]
    assert gradient.column("models", "list", "--tag", "z", "--tag", "a") == [other.id, model_id]
    assert gradient.column("models", "list", "--tag", "nope") == []
    assert gradient.column("models", "list", "--projectId", project, "--tag", "z") == []

    out = gradient.ok("models", "download", "--id", model_id, "--destinationDir", "dl")
    assert out == "Downloading: model.onnx"
    assert (gradient.home / "dl" / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()

    assert gradient.ok("models", "tags", "add", "--id", model_id, "--tag", "d") == "Tags added to ml model"
    assert gradient.ok("models", "tags", "remove", "--id", model_id, "--tags", "a,b") == (
        "Tags removed from ml model"
    )
    assert admin.get_model(model_id).tags == ("c", "d")
    assert gradient.table("models", "details", "--id", model_id)["Tags"] == "c, d"

    assert gradient.ok("models", "delete", "--id", model_id) == "Model deleted"
    assert [m.id for m in admin.iter_models()] == [other.id]
    assert gradient.error("models", "details", "--id", model_id) == (
        f"Failed to fetch data: Model {model_id} not found"
    )


# -- models: a directory ----------------------------------------------------------------------------------


@sqlite_only
def test_downloading_a_model_still_uploading_saves_nothing(
    gradient: Gradient, server: RunningServer, project: str
) -> None:
    """`gradient models download` saves whatever each file's URL answers, status unseen: the files
    of a model still uploading were its 409 error bodies, and the command ended as if it worked."""
    digest = hashlib.sha256(b"weights").hexdigest()
    with server.http() as http:
        plan = http.post(
            f"/projects/{project}/models",
            json={"name": "half", "files": [{"path": "w.onnx", "size": 7, "sha256": digest}]},
        ).json()
    model_id = plan["model"]["id"]
    assert gradient.error("models", "download", "--id", model_id, "--destinationDir", "out") == (
        f"Failed to fetch data: Model {model_id} is uploading; its files can be downloaded once it is ready"
    )
    assert not (gradient.home / "out").exists()


def test_upload_a_directory_and_download_it_byte_identical(
    gradient: Gradient, admin: Client, project: str, tmp_path: Path
) -> None:
    src = write_tree(
        tmp_path / "run 1",
        {
            "saved_model.pb": os.urandom(3000),
            "variables/variables.index": os.urandom(100),
            "variables/deep/er/shard 0.bin": os.urandom(70_000),
            "ünïcödé/naïve weights.bin": os.urandom(10),
            "empty.txt": b"",
            "gradient-model-metadata.json": json.dumps({"framework": "tf"}).encode(),
            ".git/HEAD": b"ref: refs/heads/main\n",
        },
    )
    (src / "empty dir").mkdir()
    big = src / "big" / "weights.bin"
    big.parent.mkdir()
    with big.open("wb") as f:
        block = os.urandom(1 << 20)
        for i in range(256):  # 256 MiB, not all alike
            f.write(block[i:] + block[:i])

    model_id = _uploaded_id(gradient.ok(*_upload(src, "--modelType", "Tensorflow", "--projectId", project)))
    model = admin.get_model(model_id)
    assert model.state == "ready" and model.type == "Tensorflow"
    assert model.metadata == {"framework": "tf"}  # gradient-model-metadata.json was read in

    gradient.ok("models", "download", "--id", model_id, "--destinationDir", "out")
    expected = {p: h for p, h in _tree(src).items() if not p.startswith(".git/")}  # the CLI leaves .git out
    assert _tree(gradient.home / "out") == expected
    assert {f.path for f in model.files or ()} == set(expected)


@sqlite_only
def test_models_create_with_a_dataset_ref_needs_no_upload(
    gradient: Gradient, admin: Client, project: str
) -> None:
    out = gradient.ok(
        "models", "create", "--name", "ds-model", "--modelType", "custom", "--datasetRef", "dsabc123:latest",
        "--projectId", project, "--modelSummary", '{"acc": 1}', "--notes", "n", "--tag", "ds",
    )  # fmt: skip
    model = admin.get_model(_uploaded_id(out))
    assert (model.state, model.type, model.source) == ("ready", "Custom", "dataset")
    assert model.dataset_ref == "dsabc123:latest"
    assert model.summary == {"acc": 1} and model.tags == ("ds",) and model.files == ()
    assert gradient.column("models", "list", "--tag", "ds") == [model.id]


@sqlite_only
def test_upload_without_a_project_goes_to_the_default_project(
    gradient: Gradient, admin: Client, tmp_path: Path
) -> None:
    (tmp_path / "w.bin").write_bytes(b"w")
    first = _uploaded_id(gradient.ok(*_upload(tmp_path / "w.bin")))
    second = _uploaded_id(gradient.ok(*_upload(tmp_path / "w.bin")))
    default = [p for p in admin.list_projects() if p.name == "default"]
    assert len(default) == 1
    assert {admin.get_model(first).project_id, admin.get_model(second).project_id} == {default[0].id}
    assert admin.get_model(second).version == 2


# -- errors ----------------------------------------------------------------------------------------------


@sqlite_only
def test_errors_are_one_clear_line(
    gradient: Gradient, server: RunningServer, admin: Client, tmp_path: Path
) -> None:
    project = admin.create_project("p").id
    (tmp_path / "m.bin").write_bytes(b"m")
    model_id = _uploaded_id(gradient.ok(*_upload(tmp_path / "m.bin", "--projectId", project)))
    missing = "monosuchmodel12"
    not_found = f"Model {missing} not found"
    assert gradient.error("models", "details", "--id", missing) == f"Failed to fetch data: {not_found}"
    assert gradient.error("models", "delete", "--id", missing) == f"Failed to delete resource: {not_found}"
    download = ("models", "download", "--id", missing, "--destinationDir", "x")
    assert gradient.error(*download) == f"Failed to fetch data: {not_found}"
    tag = ("models", "tags", "add", "--id", missing, "--tag", "t")
    assert gradient.error(*tag) == f"Failed to fetch data: {not_found}"
    no_project_list = gradient.error("models", "list", "--projectId", "prnosuch1")
    assert no_project_list == "Failed to fetch data: Project prnosuch1 not found"

    no_project = gradient.error(*_upload(tmp_path / "m.bin", "--projectId", "prnosuch1"))
    assert no_project == "Failed to create resource: Project prnosuch1 not found"
    no_name = gradient.error(*_upload(tmp_path / "m.bin", "--name", " "))
    assert no_name == "Failed to create resource: Model name must be a non-empty string"
    bad_summary = ("--datasetRef", "d", "--projectId", project, "--modelSummary", "[1, 2]")
    assert gradient.error("models", "create", "--name", "x", "--modelType", "Custom", *bad_summary) == (
        "Failed to create resource: Summary must be a JSON object, not list"
    )
    assert gradient.error("projects", "delete", "--id", project) == (
        f"Failed to delete resource: Project {project} still has 1 model(s) (uploads in progress included)"
    )

    viewer = admin.create_key(project=project, role="viewer").secret
    as_viewer = Gradient(server, tmp_path / "viewer", viewer)
    assert as_viewer.column("models", "list") == [model_id]
    refused = f"This API key is a viewer in project {project}; this needs editor"
    assert as_viewer.error("models", "delete", "--id", model_id) == f"Failed to delete resource: {refused}"
    upload = _upload(tmp_path / "m.bin", "--projectId", project)
    assert as_viewer.error(*upload) == f"Failed to create resource: {refused}"
    add_tag = ("models", "tags", "add", "--id", model_id, "--tag", "t")
    assert as_viewer.error(*add_tag) == f"Failed to fetch data: {refused}"
    assert admin.get_model(model_id).state == "ready"


@sqlite_only
def test_a_corrupt_zip_is_refused_and_leaves_no_model(
    gradient: Gradient, admin: Client, project: str, tmp_path: Path
) -> None:
    (tmp_path / "model.zip").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    _, err = gradient.run(*_upload(tmp_path / "model.zip", "--projectId", project))
    assert err.splitlines()[-1] == "<Response [422]>"  # what the CLI prints for a refused PUT
    # The CLI rolled back: the failed model is gone, and none was ever ready.
    assert list(admin.iter_models(state=None)) == []


# -- the upload URL, by raw HTTP --------------------------------------------------------------------------


def _envelope(data: bytes, boundary: str = "0123456789abcdef0123456789abcdef") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="/tmp/x"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


class Raw:
    """Gradient's wire protocol by hand, with httpx (as any client other than the CLI would speak it)."""

    def __init__(self, http: httpx.Client):
        self.http = http

    def create(self, project: str, name: str = "raw") -> str:
        r = self.http.post(
            "/mlModels/createModelV2", params={"name": name, "modelType": "Custom", "projectId": project}
        )
        assert r.status_code == 200, r.text
        model_id: str = r.json()["id"]
        return model_id

    def upload_url(self, model_id: str, file_name: str) -> str:
        r = self.http.get(
            "/mlModels/getPresignedModelUrl",
            params={"fileName": file_name, "modelHandle": model_id, "contentType": ""},
        )
        assert r.status_code == 200, r.text
        url: str = r.json()
        return url

    def put(self, url: str, body: bytes) -> httpx.Response:
        # A request of its own, without the API key: the URL alone must authorize it.
        return httpx.put(url, content=body, headers={"Content-Type": "application/zip"}, timeout=60)


@pytest.fixture
def raw(server: RunningServer) -> Iterator[Raw]:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.admin_key}, timeout=60) as http:
        yield Raw(http)


def _zip(entries: dict[str, bytes], *, symlink: str | None = None, method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@sqlite_only
def test_upload_url_works_once_without_a_key_and_expires(
    server: RunningServer, raw: Raw, admin: Client, project: str
) -> None:
    model_id = raw.create(project)
    assert admin.get_model(model_id).state == "uploading"
    assert [m.id for m in admin.iter_models()] == []  # not listed until its bytes arrived
    url = raw.upload_url(model_id, "weights.bin")
    assert url.startswith(server.url + "/gradient-upload/")

    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    r = raw.put(tampered, _envelope(b"x"))
    assert r.status_code == 403 and r.json()["error"]["message"] == "This URL's signature is not valid"

    r = raw.put(url, _envelope(b"the bytes"))  # no X-API-Key: the URL alone authorizes it
    assert r.status_code == 200, r.text
    assert r.json()["id"] == model_id and r.json()["state"] == "ready"

    again = raw.put(url, _envelope(b"other bytes"))
    assert again.status_code == 409
    assert "an upload URL works only once" in again.json()["error"]["message"]
    files = raw.http.request("GET", "/mlModels/listFiles/", json={"id": model_id, "links": True}).json()
    assert [(f["file"], f["size"]) for f in files] == [("weights.bin", 9)]
    assert httpx.get(files[0]["url"]).content == b"the bytes"  # the download URL needs no key either
    assert (
        raw.http.get(
            "/mlModels/getPresignedModelUrl", params={"fileName": "a", "modelHandle": model_id}
        ).status_code
        == 409
    )

    # An expired URL, and a download URL used for an upload, are refused.
    signer = server.app.state.url_signer  # type: ignore[attr-defined]
    second = raw.create(project)
    claims = {"mo": second, "f": "w.bin", "k": admin.whoami()["key_id"]}
    expired_url = f"{server.url}/gradient-upload/" + signer.sign("PUT", claims, timedelta(seconds=-1))
    r = raw.put(expired_url, _envelope(b"late"))
    assert r.status_code == 403 and r.json()["error"]["message"] == "This URL has expired"
    download_token = urlsplit(files[0]["url"]).path.split("/")[2]
    r = raw.put(f"{server.url}/gradient-upload/{download_token}", _envelope(b"x"))
    assert r.status_code == 403 and r.json()["error"]["message"] == "This URL is not for PUT requests"
    assert admin.get_model(second).state == "uploading"


@sqlite_only
def test_a_revoked_key_invalidates_its_urls(server: RunningServer, admin: Client, project: str) -> None:
    editor = admin.create_key(project=project, role="editor")
    with httpx.Client(base_url=server.url, headers={"X-API-Key": editor.secret}) as http:
        raw = Raw(http)
        model_id = raw.create(project)
        url = raw.upload_url(model_id, "w.bin")
    admin.revoke_key(editor.key.id)
    r = raw.put(url, _envelope(b"w"))
    assert r.status_code == 401 and "no longer valid" in r.json()["error"]["message"]


@sqlite_only
@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (b"not a zip at all", "it is not a valid zip archive"),
        (_zip({"../escape.txt": b"x"}), "'../escape.txt' is not allowed"),
        (_zip({"/etc/cron.d/x": b"x"}), "it is absolute"),
        (_zip({"ok.txt": b"x"}, symlink="link"), "entry 'link' is a symbolic link"),
        (_zip({"zeros.bin": bytes(20 << 20)}, method=zipfile.ZIP_DEFLATED), "more than 200 times"),
        (_zip({"a": b"1", "dir/": b""}).replace(b"PK\x01\x02", b"PK\x01\x03"), "not a valid zip archive"),
        (_zip({}), "it holds no files"),
    ],
    ids=["garbage", "dotdot", "absolute", "symlink", "bomb", "broken-directory", "empty"],
)
def test_unsafe_or_broken_zips_are_refused(
    raw: Raw, admin: Client, project: str, archive: bytes, message: str
) -> None:
    model_id = raw.create(project)
    r = raw.put(raw.upload_url(model_id, "model.zip"), _envelope(archive))
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]
    assert admin.get_model(model_id).state == "failed"
    assert [m.id for m in admin.iter_models()] == []


@sqlite_only
def test_a_raw_put_without_envelope_and_a_zip_with_folders(raw: Raw, admin: Client, project: str) -> None:
    plain = raw.create(project)
    assert raw.put(raw.upload_url(plain, "wëights 1.bin"), b"--not an envelope").status_code == 200
    assert [(f.path, f.size) for f in admin.get_model(plain).files or ()] == [("wëights 1.bin", 17)]

    zipped = raw.create(project)
    archive = _zip({"a/b/c.txt": b"c", "a/d.txt": b"d", "a/": b""}, method=zipfile.ZIP_DEFLATED)
    assert raw.put(raw.upload_url(zipped, "model.zip"), _envelope(archive)).status_code == 200
    assert [(f.path, f.size) for f in admin.get_model(zipped).files or ()] == [
        ("a/b/c.txt", 1),
        ("a/d.txt", 1),
    ]


@sqlite_only
def test_a_cut_off_upload_leaves_no_ready_model(raw: Raw, admin: Client, project: str) -> None:
    model_id = raw.create(project)
    url = urlsplit(raw.upload_url(model_id, "w.bin"))
    body = _envelope(os.urandom(1 << 20))
    with socket.create_connection((url.hostname or "", url.port or 80)) as sock:
        head = f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body[: len(body) // 2])
    # The server saw the connection drop: the model is still waiting for its bytes, and not listed.
    assert admin.get_model(model_id).state == "uploading"
    assert [m.id for m in admin.iter_models()] == []
    assert raw.put(raw.upload_url(model_id, "w.bin"), body).status_code == 200  # a retry completes it
    assert admin.get_model(model_id).state == "ready"


# -- the Python SDK -------------------------------------------------------------------------------------

SDK_SCRIPT = r"""
import json, sys
import requests
from gradient.api_sdk.clients import ModelsClient

key, path, project = sys.argv[1:4]
client = ModelsClient(key)
model_id = client.upload(path, name="sdk-model", model_type="ONNX", model_summary={"acc": 0.5},
                         notes="from the SDK", tags=["sdk"], project_id=project)
listed = [m.id for m in client.list(project_id=project)]
tagged = [m.id for m in client.list(tags=["sdk"])]
model = client.get(model_id)
files = client.get_model_files(model_id, links=True, size=True)
content = requests.get(files[0].url).content.decode()  # a presigned URL: no API key
result = {
    "id": model_id, "listed": listed, "tagged": tagged,
    "model": {"name": model.name, "type": model.model_type, "project": model.project_id,
              "tags": model.tags, "summary": model.summary, "notes": model.notes},
    "files": [{"file": f.file, "size": f.size} for f in files], "content": content,
}
client.delete(model_id)
result["after_delete"] = [m.id for m in client.list()]
print(json.dumps(result))
"""


@sqlite_only
def test_python_sdk_models_client(server: RunningServer, admin: Client, project: str, tmp_path: Path) -> None:
    (tmp_path / "net.onnx").write_bytes(b"onnx bytes")
    native = admin.upload(tmp_path / "net.onnx", project=admin.create_project("other").id, name="native")
    done = subprocess.run(
        [str(GRADIENT_PYTHON), "-c", SDK_SCRIPT, server.admin_key, str(tmp_path / "net.onnx"), project],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
             "PAPERSPACE_CONFIG_HOST": server.url},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["listed"] == [result["id"]] and result["tagged"] == [result["id"]]
    assert result["model"] == {
        "name": "sdk-model", "type": "ONNX", "project": project, "tags": ["sdk"],
        "summary": {"acc": 0.5}, "notes": "from the SDK",
    }  # fmt: skip
    assert result["files"] == [{"file": "net.onnx", "size": 10}]
    assert result["content"] == "onnx bytes"
    assert result["after_delete"] == [native.id]
    assert [m.id for m in admin.iter_models()] == [native.id]
