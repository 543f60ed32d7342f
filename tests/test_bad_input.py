"""Bad input over real HTTP, on SQLite and PostgreSQL: every request gets a problem+json answer whose
``code`` and ``detail`` say what was wrong, and nothing already stored is lost or changed.

The one-request cases share one server per database (module scope, small limits) so that the file stays
quick. Each case snapshots everything stored (projects, models with their files, the bytes of every
ready file, keys, aliases) before the bad request and compares it after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from modeldepot import Client
from modeldepot.config import Settings
from modeldepot.errors import IntegrityError, InvalidInput

from .conftest import (
    ADMIN_KEY,
    PG_ADMIN_URL,
    RunningServer,
    _drop_pg_db,
    _fresh_pg_db,
    _pg_available,
    running_server,
    write_tree,
)

MAX_JSON = 16 * 1024
MAX_SUMMARY = 1024
MAX_METADATA = 2048
MAX_FILES = 50

PROBLEM = "application/problem+json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


HELLO = b"hello"
CONFIG = b'{"layers": 3}'
ABCD = b"abcd"
UNSENT = sha(b"never sent")


# -- a server per database for the whole module -------------------------------------------------------


@dataclasses.dataclass
class Depot:
    server: RunningServer
    http: httpx.Client
    ids: dict[str, str]  # project, other (an empty project), model (ready), uploading (no blobs sent)

    def url(self, template: str) -> str:
        return template.format(**self.ids)

    def blob_store(self) -> Any:
        return self.server.app.state.services.models.blobs  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def depot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Depot]:
    tmp = tmp_path_factory.mktemp(f"depot-{request.param}")
    pg_name = None
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp / 'meta.db'}"
    else:
        if not _pg_available():
            if os.environ.get("MODELDEPOT_TEST_REQUIRE_POSTGRES"):
                pytest.fail(f"PostgreSQL is required but not reachable at {PG_ADMIN_URL}")
            pytest.skip("PostgreSQL not reachable")
        pg_name, database_url = _fresh_pg_db(PG_ADMIN_URL)
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp / "data",
        database_url=database_url,
        bootstrap_admin_key=ADMIN_KEY,
        max_json_bytes=MAX_JSON,
        max_summary_bytes=MAX_SUMMARY,
        max_metadata_bytes=MAX_METADATA,
        max_files_per_model=MAX_FILES,
    )
    try:
        with running_server(settings) as server, server.client() as admin, server.http() as http:
            project = admin.create_project("vision", tags=["cv"]).id
            other = admin.create_project("empty").id
            src = write_tree(tmp / "resnet", {"weights.bin": HELLO, "sub/config.json": CONFIG})
            model = admin.upload(
                src, project=project, name="resnet", summary={"accuracy": 0.9}, notes="base", tags=["cnn"]
            )
            admin.set_alias(project, "resnet", "production", model.id)
            admin.create_key(project=project, role="viewer", name="reader")
            plan = http.post(
                f"/projects/{project}/models",
                json={"name": "half", "files": [{"path": "x.bin", "size": 4, "sha256": sha(ABCD)}]},
            )
            assert plan.status_code == 201, plan.text
            ids = {
                "project": project,
                "other": other,
                "model": model.id,
                "uploading": plan.json()["model"]["id"],
            }
            yield Depot(server=server, http=http, ids=ids)
    finally:
        if pg_name is not None:
            _drop_pg_db(PG_ADMIN_URL, pg_name)


# -- helpers ----------------------------------------------------------------------------------------


def snapshot(http: httpx.Client) -> dict[str, Any]:
    """Everything the admin can see, including the bytes (as sha256) of every file of a ready model."""
    projects = http.get("/projects").json()["items"]
    listed = http.get("/models", params={"state": "any", "limit": 1000})
    assert listed.status_code == 200, listed.text
    models = {}
    for item in listed.json()["items"]:
        full = http.get(f"/models/{item['id']}").json()
        contents = {}
        if full["state"] == "ready":
            for f in full["files"]:
                got = http.get(f"/models/{item['id']}/files/{quote(f['path'])}")
                assert got.status_code == 200, got.text
                assert sha(got.content) == f["sha256"]
                contents[f["path"]] = sha(got.content)
        models[item["id"]] = {"model": full, "contents": contents}
    aliases = {p["id"]: http.get(f"/projects/{p['id']}/aliases").json()["items"] for p in projects}
    keys = http.get("/keys").json()["items"]
    return {"projects": projects, "models": models, "aliases": aliases, "keys": keys}


def assert_problem(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    """The answer is problem+json with this status and code, and its detail names what was wrong."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert body["type"] == f"urn:modeldepot:error:{code}", body
    detail = body["detail"].lower()
    for word in words:
        assert word.lower() in detail, f"{word!r} not in detail {body['detail']!r}"
    return body


@contextlib.contextmanager
def unchanged(http: httpx.Client) -> Iterator[None]:
    before = snapshot(http)
    yield
    assert snapshot(http) == before


def entry(path: str = "a.bin", size: int = 5, sha256: str | None = None) -> dict[str, Any]:
    return {"path": path, "size": size, "sha256": sha(HELLO) if sha256 is None else sha256}


def new_model(**fields: Any) -> dict[str, Any]:
    """A valid start-upload body with ``fields`` replaced (a value of ... drops the field)."""
    body: dict[str, Any] = {"name": "candidate", "files": [entry()]}
    body.update(fields)
    return {"json": {k: v for k, v in body.items() if v is not ...}}


def paths(*names: str) -> dict[str, Any]:
    return new_model(files=[entry(p, 1, sha(p.encode())) for p in names])


def raw(text: str | bytes, content_type: str = "application/json") -> dict[str, Any]:
    data = text.encode() if isinstance(text, str) else text
    return {"content": data, "headers": {"Content-Type": content_type}}


def case(method: str, url: str, kwargs: dict[str, Any] | None, status: int, code: str, *words: str) -> Any:
    return (method, url, kwargs or {}, status, code, words)


UPLOAD = "/projects/{project}/models"
MODEL = "/models/{model}"
BIG_SUMMARY = {f"metric_{i}": 0.123456789 for i in range(100)}
BIG_METADATA = {"blob": "x" * (MAX_METADATA + 1)}

# (method, url, request kwargs, status, code, words the detail must contain)
CASES = {
    # -- unknown ids
    "unknown project: upload": case("POST", "/projects/prnothere/models", new_model(), 404, "not_found", "project prnothere"),
    "unknown project: show": case("GET", "/projects/prnothere", None, 404, "not_found", "prnothere"),
    "unknown project: rename": case("PATCH", "/projects/prnothere", {"json": {"name": "x"}}, 404, "not_found", "prnothere"),
    "unknown project: delete": case("DELETE", "/projects/prnothere", None, 404, "not_found", "prnothere"),
    "unknown project: list models": case("GET", "/models?project=prnothere", None, 404, "not_found", "prnothere"),
    "unknown project: NUL id": case("GET", "/projects/pr%00x", None, 422, "invalid_input", "nul"),
    "unknown project: NUL id in a body": case("POST", "/keys", {"json": {"project": "pr\x00", "role": "viewer"}}, 404, "not_found", "project"),
    "unknown project: NUL id in a filter": case("GET", "/models?project=pr%00", None, 422, "invalid_input", "nul"),
    "unknown project: long id": case("GET", "/projects/" + "p" * 300, None, 404, "not_found", "project"),
    "unknown model: show": case("GET", "/models/mo000000000000", None, 404, "not_found", "mo000000000000"),
    "unknown model: update": case("PATCH", "/models/mo000000000000", {"json": {"notes": "x"}}, 404, "not_found", "mo000000000000"),
    "unknown model: delete": case("DELETE", "/models/mo000000000000", None, 404, "not_found", "mo000000000000"),
    "unknown model: commit": case("POST", "/models/mo000000000000/commit", None, 404, "not_found", "mo000000000000"),
    "unknown model: files": case("GET", "/models/mo000000000000/files", None, 404, "not_found", "mo000000000000"),
    "unknown model: download": case("GET", "/models/mo000000000000/files/weights.bin", None, 404, "not_found", "mo000000000000"),
    "unknown model: blob": case("PUT", f"/models/mo000000000000/blobs/{sha(HELLO)}", {"content": HELLO}, 404, "not_found", "mo000000000000"),
    "unknown model: NUL id": case("GET", "/models/mo%00", None, 422, "invalid_input", "nul"),
    "unknown model: NUL id in a body": case("PUT", "/projects/{project}/aliases/resnet/next", {"json": {"model_id": "mo\x00"}}, 404, "not_found", "model"),
    "unknown model: long id": case("DELETE", "/models/" + "m" * 300, None, 404, "not_found", "model"),
    "unknown file": case("GET", MODEL + "/files/nothere.bin", None, 404, "not_found", "nothere.bin"),
    "unknown route": case("GET", "/modelz", None, 404, "not_found", "route"),
    "unknown key: revoke": case("DELETE", "/keys/aknothere00", None, 404, "not_found", "aknothere00"),
    "unknown key: NUL id": case("DELETE", "/keys/ak%00", None, 422, "invalid_input", "nul"),
    "unknown alias": case("GET", "/projects/{project}/aliases/resnet/staging", None, 404, "not_found", "staging"),
    "unknown alias: NUL": case("DELETE", "/projects/{project}/aliases/resnet%00/production", None, 422, "invalid_input", "nul"),
    # -- malformed bodies
    "body: not JSON": case("POST", UPLOAD, raw("{name: candidate"), 422, "invalid_input", "not valid json"),
    "body: truncated JSON": case("POST", UPLOAD, raw('{"name": "c", "files": ['), 422, "invalid_input", "not valid json"),
    "body: not UTF-8": case("POST", UPLOAD, raw(b'{"name": "\xff\xfe"}'), 422, "invalid_input", "json"),
    "body: nested too deeply": case("POST", UPLOAD, raw('{"name": "c", "metadata": {"a": ' + "[" * 5000 + "]" * 5000 + "}}"), 422, "invalid_input", "json", "recursion"),
    "body: number too long": case("POST", UPLOAD, raw('{"name": "c", "files": [{"path": "a", "sha256": "0", "size": ' + "9" * 5000 + "}]}"), 422, "invalid_input", "json", "digits"),
    "body: a list": case("POST", UPLOAD, {"json": [new_model()["json"]]}, 422, "invalid_input", "invalid request"),
    "body: a string": case("POST", UPLOAD, {"json": "candidate"}, 422, "invalid_input", "invalid request"),
    "body: null": case("POST", UPLOAD, raw("null"), 422, "invalid_input", "invalid request"),
    "body: empty": case("POST", UPLOAD, raw(""), 422, "invalid_input", "required"),
    "body: over the limit": case("POST", UPLOAD, new_model(notes="n" * MAX_JSON), 413, "payload_too_large", f"larger than {MAX_JSON}"),
    "body: patch not JSON": case("PATCH", MODEL, raw("notes=x"), 422, "invalid_input", "not valid json"),
    "body: patch over the limit": case("PATCH", MODEL, {"json": {"notes": "n" * MAX_JSON}}, 413, "payload_too_large", "larger than"),
    # -- model fields
    "name: missing": case("POST", UPLOAD, new_model(name=...), 422, "invalid_input", "name", "required"),
    "name: empty": case("POST", UPLOAD, new_model(name=""), 422, "invalid_input", "model name", "non-empty"),
    "name: blank": case("POST", UPLOAD, new_model(name="  \t "), 422, "invalid_input", "model name"),
    "name: too long": case("POST", UPLOAD, new_model(name="n" * 201), 422, "invalid_input", "model name", "limit is 200"),
    "name: newline": case("POST", UPLOAD, new_model(name="a\nb"), 422, "invalid_input", "model name", "control"),
    "name: NUL": case("POST", UPLOAD, new_model(name="a\x00b"), 422, "invalid_input", "model name", "control"),
    "name: DEL": case("POST", UPLOAD, new_model(name="a\x7fb"), 422, "invalid_input", "control"),
    "name: number": case("POST", UPLOAD, new_model(name=7), 422, "invalid_input", "name"),
    "type: unknown": case("POST", UPLOAD, new_model(type="PyTorch"), 422, "invalid_input", "model type 'pytorch'"),
    "type: number": case("POST", UPLOAD, new_model(type=3), 422, "invalid_input", "type"),
    "summary: string": case("POST", UPLOAD, new_model(summary="accuracy=0.9"), 422, "invalid_input", "summary"),
    "summary: JSON text": case("POST", UPLOAD, new_model(summary='{"accuracy": 0.9'), 422, "invalid_input", "summary"),
    "summary: list": case("POST", UPLOAD, new_model(summary=[0.9, 0.1]), 422, "invalid_input", "summary"),
    "summary: number": case("POST", UPLOAD, new_model(summary=0.9), 422, "invalid_input", "summary"),
    "summary: bool": case("POST", UPLOAD, new_model(summary=True), 422, "invalid_input", "summary"),
    "summary: NaN": case("POST", UPLOAD, raw('{"name": "c", "files": [], "summary": {"loss": NaN}}'.replace("[]", json.dumps([entry()]))), 422, "invalid_input", "summary", "nan"),
    "summary: Infinity": case("POST", UPLOAD, raw('{"name": "c", "files": [], "summary": {"loss": -Infinity}}'.replace("[]", json.dumps([entry()]))), 422, "invalid_input", "summary", "infinity"),
    "summary: too big": case("POST", UPLOAD, new_model(summary=BIG_SUMMARY), 413, "payload_too_large", "summary", f"limit is {MAX_SUMMARY}"),
    "metadata: list": case("POST", UPLOAD, new_model(metadata=["a"]), 422, "invalid_input", "metadata"),
    "metadata: too big": case("POST", UPLOAD, new_model(metadata=BIG_METADATA), 413, "payload_too_large", "metadata", f"limit is {MAX_METADATA}"),
    "notes: NUL": case("POST", UPLOAD, new_model(notes="a\x00b"), 422, "invalid_input", "notes", "nul"),
    "notes: number": case("POST", UPLOAD, new_model(notes=5), 422, "invalid_input", "notes"),
    "dataset_ref: too long": case("POST", UPLOAD, new_model(dataset_ref="d" * 501), 413, "payload_too_large", "dataset reference", "500"),
    "dataset_ref: NUL": case("POST", UPLOAD, new_model(dataset_ref="ds\x00"), 422, "invalid_input", "dataset reference", "nul"),
    "tags: comma": case("POST", UPLOAD, new_model(tags=["a,b"]), 422, "invalid_input", "tag 'a,b'"),
    "tags: empty": case("POST", UPLOAD, new_model(tags=[""]), 422, "invalid_input", "tag ''"),
    "tags: blank": case("POST", UPLOAD, new_model(tags=["   "]), 422, "invalid_input", "tag"),
    "tags: too long": case("POST", UPLOAD, new_model(tags=["t" * 101]), 422, "invalid_input", "tag", "not allowed"),
    "tags: control": case("POST", UPLOAD, new_model(tags=["a\tb"]), 422, "invalid_input", "tag"),
    "tags: NUL": case("POST", UPLOAD, new_model(tags=["a\x00"]), 422, "invalid_input", "tag"),
    "tags: too many": case("POST", UPLOAD, new_model(tags=[f"t{i}" for i in range(101)]), 422, "invalid_input", "101 tags", "at most 100"),
    "tags: a string": case("POST", UPLOAD, new_model(tags="a,b"), 422, "invalid_input", "tags"),
    "tags: numbers": case("POST", UPLOAD, new_model(tags=[1]), 422, "invalid_input", "tags"),
    # -- manifests
    "files: missing": case("POST", UPLOAD, new_model(files=...), 422, "invalid_input", "files", "required"),
    "files: empty": case("POST", UPLOAD, new_model(files=[]), 422, "invalid_input", "at least one file"),
    "files: not a list": case("POST", UPLOAD, new_model(files={"a.bin": 5}), 422, "invalid_input", "files"),
    "files: entry not an object": case("POST", UPLOAD, new_model(files=["a.bin"]), 422, "invalid_input", "files"),
    "files: too many": case("POST", UPLOAD, new_model(files=[entry(f"f{i}", 1) for i in range(MAX_FILES + 1)]), 422, "invalid_input", f"at most {MAX_FILES}"),
    "path: missing": case("POST", UPLOAD, new_model(files=[{"size": 5, "sha256": sha(HELLO)}]), 422, "invalid_input", "path"),
    "path: number": case("POST", UPLOAD, new_model(files=[entry(5)]), 422, "invalid_input", "path"),  # type: ignore[arg-type]
    "path: empty": case("POST", UPLOAD, paths(""), 422, "invalid_input", "empty"),
    "path: dotdot": case("POST", UPLOAD, paths("../evil"), 422, "invalid_input", "'../evil'", "'..'"),
    "path: inner dotdot": case("POST", UPLOAD, paths("a/../../evil"), 422, "invalid_input", "'..'"),
    "path: trailing dotdot": case("POST", UPLOAD, paths("a/.."), 422, "invalid_input", "'..'"),
    "path: dot": case("POST", UPLOAD, paths("./a"), 422, "invalid_input", "'.'"),
    "path: empty segment": case("POST", UPLOAD, paths("a//b"), 422, "invalid_input", "empty"),
    "path: trailing slash": case("POST", UPLOAD, paths("a/"), 422, "invalid_input", "empty"),
    "path: absolute": case("POST", UPLOAD, paths("/etc/passwd"), 422, "invalid_input", "absolute"),
    "path: backslash": case("POST", UPLOAD, paths("a\\b"), 422, "invalid_input", "backslash"),
    "path: backslash dotdot": case("POST", UPLOAD, paths("..\\..\\evil"), 422, "invalid_input", "backslash"),
    "path: UNC": case("POST", UPLOAD, paths("\\\\server\\share"), 422, "invalid_input", "backslash"),
    "path: NUL": case("POST", UPLOAD, paths("a\x00.bin"), 422, "invalid_input", "nul"),
    "path: newline": case("POST", UPLOAD, paths("a\nb"), 422, "invalid_input", "control"),
    "path: escape": case("POST", UPLOAD, paths("a\x1b[31m"), 422, "invalid_input", "control"),
    "path: DEL": case("POST", UPLOAD, paths("a\x7f"), 422, "invalid_input", "control"),
    "path: drive letter": case("POST", UPLOAD, paths("C:/Windows/x"), 422, "invalid_input", "drive letter"),
    "path: drive relative": case("POST", UPLOAD, paths("c:evil"), 422, "invalid_input", "drive letter"),
    "path: %2e%2e": case("POST", UPLOAD, paths("%2e%2e/evil"), 422, "invalid_input", "%2e%2e", "'..'"),
    "path: %2E%2E inner": case("POST", UPLOAD, paths("a/%2E%2E/%2E%2E/evil"), 422, "invalid_input", "'..'"),
    "path: %2f absolute": case("POST", UPLOAD, paths("%2fetc/passwd"), 422, "invalid_input", "absolute"),
    "path: %5c backslash": case("POST", UPLOAD, paths("a%5c..%5cevil"), 422, "invalid_input", "backslash"),
    "path: %00": case("POST", UPLOAD, paths("a%00.bin"), 422, "invalid_input", "nul"),
    "path: %0a": case("POST", UPLOAD, paths("a%0a.bin"), 422, "invalid_input", "control"),
    "path: %2e alone": case("POST", UPLOAD, paths("%2e/a"), 422, "invalid_input", "'.'"),
    "path: segment too long": case("POST", UPLOAD, paths("s" * 256), 422, "invalid_input", "255 bytes"),
    "path: too long": case("POST", UPLOAD, paths("/".join(["d" * 100] * 11)), 422, "invalid_input", "1024 bytes"),
    "path: twice": case("POST", UPLOAD, paths("a.bin", "b.bin", "a.bin"), 422, "invalid_input", "'a.bin'", "twice"),
    "path: twice after NFC": case("POST", UPLOAD, paths("caf\u00e9", "cafe\u0301"), 422, "invalid_input", "twice"),
    "path: file and directory": case("POST", UPLOAD, paths("a", "a/b"), 422, "invalid_input", "'a'", "both a file and a directory"),
    "path: file and deep directory": case("POST", UPLOAD, paths("x/y", "x/y/z/w"), 422, "invalid_input", "'x/y'", "both"),
    "sha256: empty": case("POST", UPLOAD, new_model(files=[entry(sha256="")]), 422, "invalid_input", "sha256"),
    "sha256: short": case("POST", UPLOAD, new_model(files=[entry(sha256="abc")]), 422, "invalid_input", "'abc'", "sha256"),
    "sha256: 63 chars": case("POST", UPLOAD, new_model(files=[entry(sha256=sha(HELLO)[:63])]), 422, "invalid_input", "sha256"),
    "sha256: 65 chars": case("POST", UPLOAD, new_model(files=[entry(sha256=sha(HELLO) + "0")]), 422, "invalid_input", "sha256"),
    "sha256: upper case": case("POST", UPLOAD, new_model(files=[entry(sha256=sha(HELLO).upper())]), 422, "invalid_input", "sha256"),
    "sha256: not hex": case("POST", UPLOAD, new_model(files=[entry(sha256="g" * 64)]), 422, "invalid_input", "sha256"),
    "sha256: padded": case("POST", UPLOAD, new_model(files=[entry(sha256=f" {sha(HELLO)}")]), 422, "invalid_input", "sha256"),
    "sha256: trailing newline": case("POST", UPLOAD, new_model(files=[entry(sha256=f"{sha(HELLO)}\n")]), 422, "invalid_input", "sha256"),
    "sha256: number": case("POST", UPLOAD, new_model(files=[entry(sha256=123)]), 422, "invalid_input", "sha256"),  # type: ignore[arg-type]
    "sha256: prefixed": case("POST", UPLOAD, new_model(files=[entry(sha256="sha256:" + sha(HELLO))]), 422, "invalid_input", "sha256"),
    "size: negative": case("POST", UPLOAD, new_model(files=[entry(size=-1)]), 422, "invalid_input", "size", "non-negative"),
    "size: fraction": case("POST", UPLOAD, new_model(files=[entry(size=1.5)]), 422, "invalid_input", "size"),  # type: ignore[arg-type]
    "size: missing": case("POST", UPLOAD, new_model(files=[{"path": "a", "sha256": sha(HELLO)}]), 422, "invalid_input", "size"),
    "size: beyond 64 bits": case("POST", UPLOAD, new_model(files=[entry(size=2**64, sha256=UNSENT)]), 422, "invalid_input", "size"),
    "size: total beyond 64 bits": case("POST", UPLOAD, new_model(files=[entry(f"p{i}", 2**62, sha(bytes([i]))) for i in range(3)]), 422, "invalid_input", "size"),
    "size: clashes with stored blob": case("POST", UPLOAD, new_model(files=[entry(size=6)]), 422, "integrity_error", "6 bytes", "5 bytes"),
    # -- updates
    "update: unknown field": case("PATCH", MODEL, {"json": {"bogus": 1}}, 422, "invalid_input", "bogus"),
    "update: files": case("PATCH", MODEL, {"json": {"files": [entry()]}}, 422, "invalid_input", "files"),
    "update: state": case("PATCH", MODEL, {"json": {"state": "ready"}}, 422, "invalid_input", "state"),
    "update: version and id": case("PATCH", MODEL, {"json": {"version": 7, "id": "mo1"}}, 422, "invalid_input", "version"),
    "update: unknown field with a valid one": case("PATCH", MODEL, {"json": {"notes": "changed", "typo_tags": ["x"]}}, 422, "invalid_input", "typo_tags"),
    "update: body a list": case("PATCH", MODEL, {"json": [{"notes": "x"}]}, 422, "invalid_input", "invalid request"),
    "update: summary string": case("PATCH", MODEL, {"json": {"summary": "0.9"}}, 422, "invalid_input", "summary"),
    "update: summary list": case("PATCH", MODEL, {"json": {"summary": [1]}}, 422, "invalid_input", "summary"),
    "update: summary number": case("PATCH", MODEL, {"json": {"summary": 1}}, 422, "invalid_input", "summary"),
    "update: summary NaN": case("PATCH", MODEL, raw('{"summary": {"loss": NaN}}'), 422, "invalid_input", "summary", "nan"),
    "update: summary too big": case("PATCH", MODEL, {"json": {"summary": BIG_SUMMARY}}, 413, "payload_too_large", "summary"),
    "update: metadata too big": case("PATCH", MODEL, {"json": {"metadata": BIG_METADATA}}, 413, "payload_too_large", "metadata"),
    "update: name empty": case("PATCH", MODEL, {"json": {"name": ""}}, 422, "invalid_input", "model name"),
    "update: name too long": case("PATCH", MODEL, {"json": {"name": "n" * 201}}, 422, "invalid_input", "model name", "200"),
    "update: name control": case("PATCH", MODEL, {"json": {"name": "a\x01b"}}, 422, "invalid_input", "control"),
    "update: tags comma": case("PATCH", MODEL, {"json": {"tags": ["x,y"]}}, 422, "invalid_input", "tag 'x,y'"),
    "update: add_tags empty": case("PATCH", MODEL, {"json": {"add_tags": [""]}}, 422, "invalid_input", "tag"),
    "update: remove_tags too long": case("PATCH", MODEL, {"json": {"remove_tags": ["t" * 101]}}, 422, "invalid_input", "tag"),
    "update: add_tags too many": case("PATCH", MODEL, {"json": {"add_tags": [f"t{i}" for i in range(100)]}}, 422, "invalid_input", "at most 100"),
    "update: notes NUL": case("PATCH", MODEL, {"json": {"notes": "\x00"}}, 422, "invalid_input", "notes"),
    "update: valid notes, bad name": case("PATCH", MODEL, {"json": {"notes": "changed", "summary": {"a": 1}, "name": " "}}, 422, "invalid_input", "model name"),
    "update: valid name, bad tags": case("PATCH", MODEL, {"json": {"name": "renamed", "tags": ["ok", "no,pe"]}}, 422, "invalid_input", "no,pe"),
    "update: valid tags, bad metadata": case("PATCH", MODEL, {"json": {"add_tags": ["new"], "metadata": "x"}}, 422, "invalid_input", "metadata"),
    # -- listing
    "list: cursor garbage": case("GET", "/models?cursor=zz-top", None, 422, "invalid_input", "cursor 'zz-top'"),
    "list: cursor negative": case("GET", "/models?cursor=-1", None, 422, "invalid_input", "cursor"),
    "list: cursor huge": case("GET", "/models?cursor=" + "f" * 40, None, 422, "invalid_input", "cursor"),
    "list: cursor float": case("GET", "/models?cursor=1.5", None, 422, "invalid_input", "cursor"),
    "list: cursor NUL": case("GET", "/models?cursor=%00", None, 422, "invalid_input", "nul"),
    "list: cursor upper case": case("GET", "/models?cursor=FF", None, 422, "invalid_input", "cursor 'ff'"),
    "list: cursor prefixed": case("GET", "/models?cursor=0x10", None, 422, "invalid_input", "cursor"),
    "list: name NUL": case("GET", "/models?name=res%00net", None, 422, "invalid_input", "nul"),
    "list: tag NUL": case("GET", "/models?tag=%00", None, 422, "invalid_input", "nul"),
    "list: limit zero": case("GET", "/models?limit=0", None, 422, "invalid_input", "limit", "1000"),
    "list: limit negative": case("GET", "/models?limit=-5", None, 422, "invalid_input", "limit"),
    "list: limit too big": case("GET", "/models?limit=1001", None, 422, "invalid_input", "limit", "1000"),
    "list: limit enormous": case("GET", "/models?limit=" + "9" * 30, None, 422, "invalid_input", "limit"),
    "list: limit not a number": case("GET", "/models?limit=ten", None, 422, "invalid_input", "limit"),
    "list: state unknown": case("GET", "/models?state=done", None, 422, "invalid_input", "state 'done'"),
    "list: type unknown": case("GET", "/models?type=pytorch", None, 422, "invalid_input", "model type"),
    # -- files and blobs of models in the wrong state
    "download: %2e%2e": case("GET", MODEL + "/files/%2e%2e/%2e%2e/etc/passwd", None, 422, "invalid_input", "'..'"),
    "download: backslash": case("GET", MODEL + "/files/sub%5cconfig.json", None, 422, "invalid_input", "backslash"),
    "download: NUL": case("GET", MODEL + "/files/weights.bin%00", None, 422, "invalid_input", "nul"),
    "download: uploading model": case("GET", "/models/{uploading}/files/x.bin", None, 409, "conflict", "uploading"),
    "blob: ready model": case("PUT", MODEL + f"/blobs/{sha(HELLO)}", {"content": HELLO}, 409, "conflict", "already been received"),
    "blob: ready model, not in its manifest": case("PUT", MODEL + f"/blobs/{sha(ABCD)}", {"content": ABCD}, 409, "conflict", "ready", "not uploading"),
    "blob: bad sha256": case("PUT", "/models/{uploading}/blobs/XYZ", {"content": ABCD}, 422, "invalid_input", "'xyz'", "sha256"),
    "blob: sha256 with newline": case("PUT", "/models/{uploading}/blobs/" + sha(ABCD) + "%0A", {"content": ABCD}, 422, "invalid_input", "sha256"),
    "blob: upper-case sha256": case("PUT", "/models/{uploading}/blobs/" + sha(ABCD).upper(), {"content": ABCD}, 422, "invalid_input", "sha256"),
    "blob: not in manifest": case("PUT", "/models/{uploading}/blobs/" + UNSENT, {"content": b"never sent"}, 404, "not_found", UNSENT),
    # -- projects, aliases, keys
    "project: name empty": case("POST", "/projects", {"json": {"name": ""}}, 422, "invalid_input", "project name"),
    "project: name missing": case("POST", "/projects", {"json": {}}, 422, "invalid_input", "name", "required"),
    "project: name too long": case("POST", "/projects", {"json": {"name": "p" * 201}}, 422, "invalid_input", "project name", "200"),
    "project: name control": case("POST", "/projects", {"json": {"name": "p\x1b"}}, 422, "invalid_input", "control"),
    "project: bad tag": case("POST", "/projects", {"json": {"name": "p", "tags": ["a,b"]}}, 422, "invalid_input", "tag"),
    "project: repo url too long": case("POST", "/projects", {"json": {"name": "p", "repo_url": "h" * 2001}}, 413, "payload_too_large", "repository url"),
    "project: rename empty": case("PATCH", "/projects/{project}", {"json": {"name": ""}}, 422, "invalid_input", "project name"),
    "project: tags comma": case("PATCH", "/projects/{project}", {"json": {"tags": ["a,b"]}}, 422, "invalid_input", "tag"),
    "project: delete with models": case("DELETE", "/projects/{project}", None, 409, "conflict", "still has", "model"),
    "project: force not a bool": case("DELETE", "/projects/{other}?force=please", None, 422, "invalid_input", "force"),
    "alias: bad name": case("PUT", "/projects/{project}/aliases/resnet/a%20b", {"json": {"model_id": "{model}"}}, 422, "invalid_input", "alias 'a b'"),
    "alias: trailing newline": case("PUT", "/projects/{project}/aliases/resnet/prod%0A", {"json": {"model_id": "{model}"}}, 422, "invalid_input", "alias 'prod\\n'"),
    "alias: unknown project list": case("GET", "/projects/prnothere/aliases", None, 404, "not_found", "prnothere"),
    "alias: uploading model": case("PUT", "/projects/{project}/aliases/half/next", {"json": {"model_id": "{uploading}"}}, 422, "invalid_input", "uploading"),
    "alias: wrong name": case("PUT", "/projects/{project}/aliases/other/next", {"json": {"model_id": "{model}"}}, 422, "invalid_input", "'resnet'"),
    "alias: unknown model": case("PUT", "/projects/{project}/aliases/resnet/next", {"json": {"model_id": "mo000000000000"}}, 404, "not_found", "mo000000000000"),
    "key: no project": case("POST", "/keys", {"json": {"role": "viewer"}}, 422, "invalid_input", "project and a role"),
    "key: unknown role": case("POST", "/keys", {"json": {"project": "{project}", "role": "owner"}}, 422, "invalid_input", "role 'owner'"),
    "key: unknown project": case("POST", "/keys", {"json": {"project": "prnothere", "role": "viewer"}}, 404, "not_found", "prnothere"),
    "key: name too long": case("POST", "/keys", {"json": {"project": "{project}", "role": "viewer", "name": "k" * 201}}, 413, "payload_too_large", "key name", "200"),
    "key: name NUL": case("POST", "/keys", {"json": {"project": "{project}", "role": "viewer", "name": "k\x00"}}, 422, "invalid_input", "key name", "nul"),
    "key: user too long": case("POST", "/keys", {"json": {"project": "{project}", "role": "viewer", "user": "u" * 201}}, 422, "invalid_input", "user name", "200"),
    "key: user empty": case("POST", "/keys", {"json": {"project": "{project}", "role": "viewer", "user": " "}}, 422, "invalid_input", "user name"),
    "key: user control": case("POST", "/keys", {"json": {"admin": True, "user": "a\nb"}}, 422, "invalid_input", "user name", "control"),
    "key: admin not a bool": case("POST", "/keys", {"json": {"admin": "sometimes"}}, 422, "invalid_input", "admin"),
}  # fmt: skip


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and value in {"{project}", "{model}", "{uploading}", "{other}"}:
        return ids[value[1:-1]]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_is_refused_and_changes_nothing(depot: Depot, name: str) -> None:
    method, url, kwargs, status, code, words = CASES[name]
    kwargs = {k: _fill(v, depot.ids) if k == "json" else v for k, v in kwargs.items()}
    with unchanged(depot.http):
        response = depot.http.request(method, depot.url(url), **kwargs)
        assert_problem(response, status, code, *words)


# -- bodies over the limit without a Content-Length ---------------------------------------------------


def test_chunked_body_over_the_limit_is_413(depot: Depot) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "candidate", "notes": "'
        for _ in range(MAX_JSON // 1024 + 1):
            yield b"n" * 1024
        yield b'", "files": []}'

    with unchanged(depot.http):
        response = depot.http.post(
            depot.url(UPLOAD), content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "payload_too_large", f"larger than {MAX_JSON}")


def test_a_body_just_under_the_limit_is_read(depot: Depot) -> None:
    """The limit refuses what is over it, not what is near it (the request is refused on its content)."""
    body = json.dumps(new_model(notes="n" * (MAX_JSON - 200), tags=["a,b"])["json"]).encode()
    assert len(body) <= MAX_JSON
    with unchanged(depot.http):
        assert_problem(depot.http.post(depot.url(UPLOAD), **raw(body)), 422, "invalid_input", "tag")


# -- blob uploads that do not match ----------------------------------------------------------------


def _start(depot: Depot, files: dict[str, bytes], name: str = "blobby") -> str:
    manifest = [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]
    response = depot.http.post(depot.url(UPLOAD), json={"name": name, "files": manifest})
    assert response.status_code == 201, response.text
    model_id: str = response.json()["model"]["id"]
    return model_id


def _tmp_files(depot: Depot) -> list[Path]:
    return [p for p in Path(depot.blob_store().tmp_dir).rglob("*") if not p.is_dir()]  # tmp/t<n>/…


def test_blob_with_wrong_bytes_is_discarded_and_commit_says_what_is_missing(depot: Depot) -> None:
    good = secrets.token_bytes(64)
    other = secrets.token_bytes(64)
    model_id = _start(depot, {"w/good.bin": good, "w/other.bin": other})
    blobs = depot.blob_store()
    put = f"/models/{model_id}/blobs/{sha(good)}"
    with unchanged(depot.http):
        # Same size, other bytes.
        wrong = bytearray(good)
        wrong[0] ^= 0xFF
        body = assert_problem(depot.http.put(put, content=bytes(wrong)), 422, "integrity_error", "discarded")
        assert sha(good) in body["detail"] and sha(bytes(wrong)) in body["detail"]
        # Fewer bytes than announced, and more.
        assert_problem(depot.http.put(put, content=good[:10]), 422, "integrity_error", "content-length", "64")
        assert_problem(depot.http.put(put, content=good + b"!"), 422, "integrity_error", "65")
        # The same without a Content-Length: the bytes are counted as they arrive.
        assert_problem(depot.http.put(put, content=iter([good, b"!"])), 422, "integrity_error", "65 bytes")
        assert_problem(depot.http.put(put, content=iter([good[:63]])), 422, "integrity_error", "63 bytes")
        assert_problem(depot.http.put(put, content=iter([])), 422, "integrity_error", "0 bytes")
        assert blobs.size(sha(good)) is None
        assert blobs.size(sha(bytes(wrong))) is None
        assert _tmp_files(depot) == []
        # The model is still uploading, and commit names what is missing.
        assert depot.http.get(f"/models/{model_id}").json()["state"] == "uploading"
        body = assert_problem(
            depot.http.post(f"/models/{model_id}/commit"), 409, "conflict", "2 file(s)", "not been uploaded"
        )
        assert sorted(body["extra"]["missing"]) == sorted([sha(good), sha(other)])
        assert "upload" in body["hint"].lower()

    # Sending the right bytes afterwards works: the failures left nothing in the way.
    assert depot.http.put(put, content=good).status_code == 204
    body = assert_problem(
        depot.http.post(f"/models/{model_id}/commit"), 409, "conflict", "1 file(s)", "other.bin"
    )
    assert body["extra"]["missing"] == [sha(other)]
    assert depot.http.put(f"/models/{model_id}/blobs/{sha(other)}", content=other).status_code == 204
    committed = depot.http.post(f"/models/{model_id}/commit")
    assert committed.status_code == 200 and committed.json()["state"] == "ready"
    assert depot.http.get(f"/models/{model_id}/files/w/good.bin").content == good
    assert depot.http.delete(f"/models/{model_id}").status_code == 204


def test_commit_before_any_blob_is_409_with_the_missing_list(depot: Depot) -> None:
    files = {f"part-{i}.bin": secrets.token_bytes(8) for i in range(3)}
    files["weights.bin"] = HELLO  # already stored: never missing
    model_id = _start(depot, files)
    with unchanged(depot.http):
        body = assert_problem(depot.http.post(f"/models/{model_id}/commit"), 409, "conflict", "3 file(s)")
        assert "'part-0.bin'" in body["detail"]
        assert sorted(body["extra"]["missing"]) == sorted(
            sha(d) for p, d in files.items() if p != "weights.bin"
        )
        listed = depot.http.get("/models", params={"project": depot.ids["project"]}).json()["items"]
        assert model_id not in {m["id"] for m in listed}  # not ready, so not listed by default
    assert depot.http.delete(f"/models/{model_id}").status_code == 204


# -- the SDK --------------------------------------------------------------------------------------


def _all_models(depot: Depot) -> set[str]:
    items = depot.http.get("/models", params={"state": "any", "limit": 1000}).json()["items"]
    return {m["id"] for m in items}


def test_sdk_empty_directory_is_refused_before_anything_is_created(depot: Depot, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub" / "deeper").mkdir(parents=True)
    with unchanged(depot.http), depot.server.client() as sdk:
        with pytest.raises(InvalidInput, match="has no files"):
            sdk.upload(empty, project=depot.ids["project"], name="nothing")
        with pytest.raises(InvalidInput, match="does not exist"):
            sdk.upload(tmp_path / "missing", project=depot.ids["project"], name="nothing")


def test_sdk_bad_metadata_is_refused_before_anything_is_created(depot: Depot, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "m", {"w.bin": b"weights"})
    with unchanged(depot.http), depot.server.client() as sdk:
        with pytest.raises(InvalidInput, match="Model type"):
            sdk.upload(src, project=depot.ids["project"], name="m", type="pytorch")
        with pytest.raises(InvalidInput, match="Tag"):
            sdk.upload(src, project=depot.ids["project"], name="m", tags=["a,b"])


class Sabotage:
    """A progress report that, once uploading starts, does ``act`` to the files not yet sent."""

    def __init__(self, act: Any) -> None:
        self.act = act
        self.phase = ""
        self.done = False

    def start(self, phase: str, total_bytes: int) -> None:
        self.phase = phase

    def advance(self, n: int) -> None:
        if self.phase == "uploading" and not self.done:
            self.done = True
            self.act()

    def finish(self) -> None:
        pass


def test_sdk_file_that_vanishes_mid_upload_leaves_no_model(depot: Depot, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "ck", {"a.bin": secrets.token_bytes(100), "b.bin": secrets.token_bytes(100)})
    before = _all_models(depot)
    bar = Sabotage(lambda: (src / "b.bin").unlink())
    sdk = Client(depot.server.url, depot.server.admin_key, parallel=1)
    with sdk, pytest.raises(InvalidInput, match=r"b\.bin vanished"):
        sdk.upload(src, project=depot.ids["project"], name="vanishing", progress=bar)
    assert bar.done
    assert _all_models(depot) == before


def test_sdk_file_that_changes_mid_upload_leaves_no_model(depot: Depot, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "ck", {"a.bin": secrets.token_bytes(100), "b.bin": secrets.token_bytes(100)})
    before = _all_models(depot)
    bar = Sabotage(lambda: (src / "b.bin").write_bytes(b"shorter"))
    sdk = Client(depot.server.url, depot.server.admin_key, parallel=1)
    with sdk, pytest.raises(IntegrityError, match=r"b\.bin changed"):
        sdk.upload(src, project=depot.ids["project"], name="changing", progress=bar)
    assert _all_models(depot) == before
    assert depot.blob_store().size(sha(b"shorter")) is None
