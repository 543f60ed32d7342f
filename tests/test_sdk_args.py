"""Bad arguments to the SDK, and to the CLI over it, against a real server: each gets a
``modeldepot.InvalidInput`` (CLI: one line, exit 3) that says what was wrong and how to fix it,
raised before anything is sent, and nothing stored changes.

Most cases share one SQLite server (module scope); the model-name rules, which the server enforces,
run on SQLite and PostgreSQL with the ``server`` fixture.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modeldepot import Client, InvalidInput

from .conftest import RunningServer, make_settings, running_server, write_tree
from .test_bad_input import snapshot

MODELDEPOT = [sys.executable, "-m", "modeldepot.cli"]
FILES = {"weights.bin": b"hello weights", "sub/config.json": b'{"layers": 3}'}


@dataclasses.dataclass
class Depot:
    server: RunningServer
    admin: Client
    http: httpx.Client
    project: str
    model: str  # a ready model named "resnet" with FILES
    src: Path  # FILES on disk

    def state(self) -> dict[str, Any]:
        """Everything stored, workloads too."""
        workloads = self.http.get("/workloads", params={"limit": 1000}).json()["items"]
        return {**snapshot(self.http), "workloads": workloads}


@pytest.fixture(scope="module")
def depot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Depot]:
    tmp = tmp_path_factory.mktemp("sdk-args")
    settings = make_settings(f"sqlite:///{tmp / 'meta.db'}", tmp / "data")
    with running_server(settings) as server, server.client() as admin, server.http() as http:
        project = admin.create_project("vision").id
        src = write_tree(tmp / "resnet", FILES)
        model = admin.upload(src, project=project, name="resnet", tags=["cnn"])
        yield Depot(server=server, admin=admin, http=http, project=project, model=model.id, src=src)


def refused(call: Callable[[], Any], *words: str) -> InvalidInput:
    """``call`` raises InvalidInput whose detail holds every word, with a hint."""
    with pytest.raises(InvalidInput) as info:
        call()
    error = info.value
    for word in words:
        assert word in error.detail, (word, error.detail)
    assert error.hint, error.detail
    return error


def cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None, text: bool = True
) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(
        [*MODELDEPOT, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=text,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def env(depot: Depot, tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    e["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    e["COLUMNS"] = "200"
    e["MODELDEPOT_URL"] = depot.server.url
    e["MODELDEPOT_API_KEY"] = depot.server.admin_key
    return e


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: "), proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


# -- 1. tags given as one string ------------------------------------------------------------------


def test_a_string_where_a_list_of_tags_belongs_is_refused(depot: Depot, tmp_path: Path) -> None:
    c, p, m = depot.admin, depot.project, depot.model
    before = depot.state()
    calls: list[Callable[[], Any]] = [
        lambda: c.upload(depot.src, project=p, name="tagged", tags="abc"),
        lambda: c.create_project("tagged", tags="abc"),  # type: ignore[arg-type]
        lambda: c.update_model(m, tags="abc"),
        lambda: c.update_model(m, add_tags="abc"),
        lambda: c.update_model(m, remove_tags="abc"),
        lambda: c.start_workload(p, name="tagged", command=["x"], tags="abc"),
        lambda: c.workload(p, "tagged", tags="abc"),
        lambda: c.log_model(depot.src, project=p, name="tagged", tags="abc"),
        lambda: c.run([sys.executable, "-c", "pass"], project=p, name="tagged", tags="abc"),
    ]
    for call in calls:
        error = refused(call, "list of strings", "'abc'")
        assert "['abc']" in (error.hint or ""), error.hint  # shows the list to pass instead
    refused(lambda: c.add_tags(m, ["a", "b"]), "Tag ['a', 'b'] is not a string")  # type: ignore[arg-type]
    refused(lambda: c.upload(depot.src, project=p, name="tagged", tags=["ok", 3]), "Tag 3")  # type: ignore[list-item]
    refused(lambda: c.list_models(tag=["a", "b"]), "tag filter must be one string")  # type: ignore[arg-type]
    assert depot.state() == before
    # A list (or tuple) of tags still works.
    assert c.upload(depot.src, project=p, name="tagged", tags=("x", "y")).tags == ("x", "y")


# -- 2. empty paths -----------------------------------------------------------------------------------


def test_an_empty_path_is_refused_not_taken_as_the_current_directory(
    depot: Depot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = depot.admin
    cwd = write_tree(tmp_path / "cwd", {"secret.txt": b"not a model"})
    monkeypatch.chdir(cwd)
    before = depot.state()
    refused(lambda: c.upload("", project=depot.project, name="empty"), "path to upload is an empty string")
    refused(lambda: c.download(depot.model, ""), "destination directory is an empty string")
    refused(lambda: c.download_archive(depot.model, ""), "destination is an empty string")
    refused(lambda: c.upload(None, project=depot.project, name="none"), "not NoneType")  # type: ignore[arg-type]
    refused(lambda: c.download(depot.model, None), "not NoneType")  # type: ignore[arg-type]
    refused(lambda: Client(depot.server.url, hash_cache=""), "hash_cache is an empty string")
    assert sorted(p.name for p in cwd.iterdir()) == ["secret.txt"]  # nothing written here
    assert depot.state() == before


def test_cli_download_to_an_empty_dest_is_refused(depot: Depot, env: dict[str, str], tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    one_error_line(cli(["models", "download", depot.model, ""], env, cwd=cwd), 3, "empty")
    assert list(cwd.iterdir()) == []
    one_error_line(cli(["models", "archive", depot.model, ""], env, cwd=cwd), 3, "empty")
    assert list(cwd.iterdir()) == []


# -- 3. values JSON cannot carry ----------------------------------------------------------------------


def test_values_json_cannot_carry_are_named_before_anything_is_sent(depot: Depot) -> None:
    c, p, m = depot.admin, depot.project, depot.model
    before = depot.state()
    refused(
        lambda: c.upload(depot.src, project=p, name="nan", summary={"a": float("nan")}), "summary['a']", "nan"
    )
    refused(
        lambda: c.upload(depot.src, project=p, name="set", metadata={"a": {1, 2}}),
        "metadata['a']",
        "{1, 2}",
        "set",
    )
    refused(lambda: c.update_model(m, summary={"loss": [0.5, math.inf]}), "summary['loss'][1]", "inf")
    refused(lambda: c.update_model(m, metadata={"x": {(1, 2): "pair"}}), "metadata['x']", "(1, 2)")
    refused(lambda: c.update_model(m, metadata={"when": object()}), "metadata['when']", "object")
    refused(
        lambda: c.start_workload(p, name="w", command=["x"], metadata={"a": float("-inf")}), "metadata['a']"
    )
    refused(lambda: c.update_workload("wl0000", summary={"acc": float("nan")}), "summary['acc']")
    refused(
        lambda: c.log_model(depot.src, project=p, name="w", summary={"acc": float("nan")}), "summary['acc']"
    )
    assert depot.state() == before


# -- 4. the constructor, and iter_models(cursor=…) ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"parallel": "4"}, ["parallel", "'4'"]),
        ({"parallel": 0}, ["parallel", "0"]),
        ({"parallel": -5}, ["parallel", "-5"]),
        ({"parallel": 2.5}, ["parallel"]),
        ({"parallel": True}, ["parallel"]),
        ({"timeout": 0}, ["timeout"]),
        ({"timeout": "60"}, ["timeout"]),
        ({"timeout": float("nan")}, ["timeout"]),
        ({"api_key": 1234}, ["API key"]),
        ({"api_key": "md_key\n"}, ["API key", "line breaks"]),
        ({"hash_cache": 3}, ["hash_cache", "int"]),
    ],
)
def test_bad_constructor_arguments_are_refused_at_construction(
    depot: Depot, kwargs: dict[str, Any], words: list[str]
) -> None:
    refused(lambda: Client(depot.server.url, **kwargs), *words)


def test_iter_models_starts_at_a_cursor(depot: Depot) -> None:
    c, p = depot.admin, depot.project
    for _ in range(2):
        c.upload(depot.src, project=p, name="paged")
    first = c.list_models(project=p, name="paged", limit=1)
    assert first.next_cursor is not None
    rest = list(c.iter_models(project=p, name="paged", limit=1, cursor=first.next_cursor))
    every = list(c.iter_models(project=p, name="paged"))
    assert [m.id for m in first.items + tuple(rest)] == [m.id for m in every]
    assert len(every) >= 2
    assert list(c.iter_workloads(cursor=None, project=p)) == list(c.iter_workloads(project=p))


# -- 5. the server URL --------------------------------------------------------------------------------


def test_a_url_ending_in_api_v1_is_the_same_server(depot: Depot) -> None:
    for url in (depot.server.url + "/api/v1", depot.server.url + "/api/v1/", depot.server.url + "/"):
        with Client(url, depot.server.admin_key) as c:
            assert c.url == depot.server.url
            assert c.whoami()["is_admin"] is True
            assert c.get_model(depot.model).name == "resnet"


def test_a_url_without_http_or_https_is_refused(depot: Depot) -> None:
    bare = depot.server.url.removeprefix("http://")
    error = refused(lambda: Client(bare, depot.server.admin_key), repr(bare), "http:// or https://")
    assert f"http://{bare}" in (error.hint or "")
    refused(lambda: Client("ftp://127.0.0.1:1"), "http:// or https://")
    refused(lambda: Client(""), "non-empty")
    refused(lambda: Client(None), "non-empty")  # type: ignore[arg-type]


def test_cli_url_and_login_get_the_same_checks(depot: Depot, env: dict[str, str], tmp_path: Path) -> None:
    bare = depot.server.url.removeprefix("http://")
    one_error_line(cli(["--url", bare, "whoami"], env), 3, "http:// or https://", "--url")
    one_error_line(
        cli(["whoami"], {**env, "MODELDEPOT_URL": bare}), 3, "http:// or https://", "MODELDEPOT_URL"
    )
    del env["MODELDEPOT_URL"], env["MODELDEPOT_API_KEY"]
    one_error_line(cli(["login", "--url", bare, "--api-key", depot.server.admin_key], env), 3, "http://")
    config = tmp_path / "config" / "modeldepot" / "config.json"
    assert not config.exists()
    ok = cli(["login", "--url", depot.server.url + "/api/v1", "--api-key", depot.server.admin_key], env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(config.read_text())["url"] == depot.server.url  # stored as the base URL
    assert cli(["models", "show", depot.model, "--json"], env).returncode == 0
    # A bad URL in the login file is named as coming from there.
    config.write_text(json.dumps({"url": bare, "api_key": depot.server.admin_key}))
    one_error_line(cli(["whoami"], env), 3, "http:// or https://", str(config))


# -- 6. ids that cannot be one path segment -----------------------------------------------------------

BAD_IDS = ["", " ", ".", "..", "../models", "a/b", "a\\b", None, 7]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_are_not_one_path_segment_are_refused(depot: Depot, tmp_path: Path, bad: Any) -> None:
    c, p, m = depot.admin, depot.project, depot.model
    before = depot.state()
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("Model id", lambda: c.get_model(bad)),
        ("Model id", lambda: c.list_files(bad)),
        ("Model id", lambda: c.update_model(bad, notes="x")),
        ("Model id", lambda: c.rename_model(bad, "x")),
        ("Model id", lambda: c.add_tags(bad, "x")),
        ("Model id", lambda: c.remove_tags(bad, "x")),
        ("Model id", lambda: c.delete_model(bad)),
        ("Model id", lambda: c.download(bad, tmp_path / "out")),
        ("Model id", lambda: c.download_archive(bad, tmp_path / "out.zip")),
        ("Model id", lambda: c.set_alias(p, "resnet", "prod", bad)),
        ("Project id", lambda: c.get_project(bad)),
        ("Project id", lambda: c.rename_project(bad, "x")),
        ("Project id", lambda: c.delete_project(bad)),
        ("Project id", lambda: c.list_aliases(bad)),
        ("Project id", lambda: c.get_alias(bad, "resnet", "prod")),
        ("Project id", lambda: c.upload(depot.src, project=bad, name="x")),
        ("Project id", lambda: c.start_workload(bad, name="x", command=["x"])),
        ("Project id", lambda: c.workload(bad, "x")),
        ("Project id", lambda: c.log_model(depot.src, project=bad, name="x")),
        ("Project id", lambda: c.run(["true"], project=bad, name="x")),
        ("Key id", lambda: c.revoke_key(bad)),
        ("Workload id", lambda: c.get_workload(bad)),
        ("Workload id", lambda: c.update_workload(bad, state="failed")),
        ("Workload id", lambda: c.workload_log(bad)),
    ]
    if bad is not None:  # model_id=None means "not given"
        calls.append(("Model id", lambda: c.update_workload("wl0000", state="succeeded", model_id=bad)))
    for what, call in calls:
        refused(call, what, repr(bad))

    assert not (tmp_path / "out").exists() and not (tmp_path / "out.zip").exists()
    assert depot.state() == before
    # The ids the server hands out pass.
    assert c.get_model(m).id == m and c.get_project(p).id == p


def test_cli_show_of_an_id_with_a_slash_is_one_error_line(depot: Depot, env: dict[str, str]) -> None:
    one_error_line(cli(["models", "show", f"{depot.model}/files"], env), 3, "Model id", "'/'")
    one_error_line(cli(["models", "show", ".."], env), 3, "Model id")


# -- 7. model names that cannot be one path segment (the server's rule) -------------------------------

BAD_NAMES = ["bad/name", "/lead", ".", "..", " .. "]


def name_is_refused(
    server: RunningServer, c: Client, http: httpx.Client, src: Path, p: str, good: str, bad: str
) -> None:
    """Upload, rename, a workload, the native create and the Gradient create all refuse ``bad``."""
    error = refused(lambda: c.upload(src, project=p, name=bad), "Model name", "'/'")
    assert "team-resnet" in (error.hint or "")
    refused(lambda: c.rename_model(good, bad), "Model name")
    refused(lambda: c.start_workload(p, name=bad, command=["x"]), "Model name")
    r = http.post(f"/projects/{p}/models", json={"name": bad, "files": []})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text
    r = http.post(
        server.url + "/mlModels/createModelV2", params={"name": bad, "modelType": "Custom", "projectId": p}
    )
    error_body = r.json()["error"]  # Gradient's error shape
    assert r.status_code == 422 and error_body["name"] == "InvalidInput", r.text
    assert "'/'" in error_body["message"] and error_body["hint"], r.text


def test_model_names_with_a_slash_or_dots_are_refused(server: RunningServer, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "m", FILES)
    with server.client() as c, server.http() as http:
        p = c.create_project("names").id
        good = c.upload(src, project=p, name="good")
        before = snapshot(http)
        for bad in BAD_NAMES:
            name_is_refused(server, c, http, src, p, good.id, bad)
        assert snapshot(http) == before
        # Names with dots or backslashes elsewhere are still fine.
        for name in ("v1.2", "...", "a\\b", ".hidden"):
            assert c.upload(src, project=p, name=name).name == name


def test_stored_models_with_such_names_can_still_be_used_and_renamed(
    server: RunningServer, tmp_path: Path
) -> None:
    src = write_tree(tmp_path / "m", FILES)
    store = server.app.state.services.models.store  # type: ignore[attr-defined]
    with server.client() as c:
        p = c.create_project("legacy").id
        slash, dot = c.upload(src, project=p, name="x1"), c.upload(src, project=p, name="x2")
        # As a version before the rule stored them.
        store.update_model(slash.id, name="team/resnet")
        store.update_model(dot.id, name="..")
        assert [m.id for m in c.iter_models(project=p, name="team/resnet")] == [slash.id]
        assert c.get_model(slash.id).name == "team/resnet"
        assert sorted(f.name for f in c.download(slash.id, tmp_path / "out")) == [
            "config.json",
            "weights.bin",
        ]
        assert c.download_archive(dot.id, tmp_path / "dot.zip") == tmp_path / "dot.zip"
        # Such a name cannot be named in an alias request: the SDK says to rename the model.
        error = refused(
            lambda: c.set_alias(p, "team/resnet", "prod", slash.id), "Model name", "'team/resnet'"
        )
        assert "rename" in (error.hint or "")
        refused(lambda: c.get_alias(p, "team-resnet", "a/b"), "Alias 'a/b'")
        renamed = c.rename_model(slash.id, "team-resnet")
        assert (renamed.name, renamed.version) == ("team-resnet", 1)
        assert c.set_alias(p, "team-resnet", "prod", slash.id).model_id == slash.id
        c.update_model(dot.id, notes="still editable")
        c.delete_model(dot.id)
        assert [m.id for m in c.iter_models(project=p)] == [slash.id]


# -- 8. models archive: missing folders, and `-` ------------------------------------------------------


def test_archive_makes_missing_folders(depot: Depot, env: dict[str, str], tmp_path: Path) -> None:
    proc = cli(["models", "archive", depot.model, "nodir/sub/x.zip"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(tmp_path / "nodir" / "sub" / "x.zip") as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == FILES
    assert [p.name for p in (tmp_path / "nodir" / "sub").iterdir()] == ["x.zip"]  # no .part left
    # The SDK does the same.
    assert depot.admin.download_archive(depot.model, tmp_path / "a" / "b.tar", format="tar").is_file()


def test_archive_to_dash_writes_stdout(depot: Depot, env: dict[str, str], tmp_path: Path) -> None:
    proc = cli(["models", "archive", depot.model, "-", "--format", "tar"], env, cwd=tmp_path, text=False)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert got == FILES
    assert list(tmp_path.iterdir()) == []  # no file named "-"
    proc = cli(["models", "archive", depot.model, "-", "--json"], env, cwd=tmp_path)
    assert proc.returncode == 2 and "--json" in proc.stderr, proc.stderr
    # A bad model id writes nothing to stdout.
    proc = cli(["models", "archive", "mo000000000000", "-"], env, cwd=tmp_path, text=False)
    assert proc.returncode == 4 and proc.stdout == b"", proc.stderr
    help_text = cli(["models", "archive", "--help"], env).stdout
    assert "standard output" in help_text


def test_sdk_archive_into_a_file_object_and_bad_format(depot: Depot) -> None:
    buf = io.BytesIO()
    assert depot.admin.download_archive(depot.model, buf) is None
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert sorted(zf.namelist()) == sorted(FILES)
    refused(lambda: depot.admin.download_archive(depot.model, io.BytesIO(), format="rar"), "'rar'")
