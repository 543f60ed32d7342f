"""The CLI as a user runs it: a real `modeldepot` process against a real server."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RunningServer, write_tree

MODELDEPOT = [sys.executable, "-m", "modeldepot.cli"]


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*MODELDEPOT, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    e["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    e["COLUMNS"] = "200"
    return e


@pytest.fixture
def logged_in(server: RunningServer, env: dict[str, str]) -> dict[str, str]:
    run(["login", "--url", server.url, "--api-key", server.admin_key], env)
    return env


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_readme_tour(server: RunningServer, env: dict[str, str], tmp_path: Path) -> None:
    out = run(["login", "--url", server.url, "--api-key", server.admin_key], env).stdout
    assert "Logged in" in out
    config = tmp_path / "config" / "modeldepot" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    project = run(["projects", "create", "vision"], env).stdout.strip()
    assert re.fullmatch(r"pr[0-9a-z]{7}", project)
    onnx = write_tree(tmp_path, {"squeezenet1.1.onnx": b"\x08\x07fake onnx"}) / "squeezenet1.1.onnx"
    up = run(
        [
            "models",
            "upload",
            str(onnx),
            "--name",
            "squeezenet",
            "--type",
            "onnx",
            "--project",
            project,
            "--summary",
            '{"accuracy": 0.71, "loss": 1.2}',
            "--notes",
            "baseline",
            "--tag",
            "cnn",
            "--tag",
            "small",
            "--json",
        ],
        env,
    )
    model = json.loads(up.stdout)
    assert (model["type"], model["summary"], model["tags"]) == (
        "ONNX",
        {"accuracy": 0.71, "loss": 1.2},
        ["cnn", "small"],
    )
    ck = write_tree(tmp_path / "checkpoints", {"ckpt/step-1.bin": b"1" * 1000, "ünï/cödé 2.bin": b"2" * 10})
    text = run(["models", "upload", str(ck), "--name", "resnet", "--project", project], env).stdout
    resnet = re.search(r"Uploaded (mo[0-9a-z]{12})", text)
    assert resnet, text
    rid = resnet.group(1)
    listed = json.loads(run(["models", "list", "--project", project, "--tag", "cnn", "--json"], env).stdout)
    assert [m["id"] for m in listed["items"]] == [model["id"]]
    table = run(["models", "list", "--project", project], env).stdout
    assert "squeezenet" in table and rid in table
    show = run(["models", "show", rid], env).stdout
    assert "cödé 2.bin" in show and "resnet (version 1)" in show
    run(["models", "download", rid, str(tmp_path / "out")], env)
    assert (tmp_path / "out" / "ünï" / "cödé 2.bin").read_bytes() == b"2" * 10
    assert "resnet-v2" in run(["models", "rename", rid, "resnet-v2"], env).stdout
    run(["models", "update", rid, "--notes", "retrained", "--summary", '{"accuracy": 0.74}'], env)
    assert "reviewed" in run(["models", "tags", "add", rid, "reviewed"], env).stdout
    run(["models", "tags", "remove", rid, "reviewed"], env)
    shown = json.loads(run(["models", "show", rid, "--json"], env).stdout)
    assert (shown["notes"], shown["summary"], shown["tags"]) == ("retrained", {"accuracy": 0.74}, [])
    run(["aliases", "set", "resnet-v2", "production", rid, "--project", project], env)
    aliases = json.loads(run(["aliases", "list", "--project", project, "--json"], env).stdout)
    assert aliases[0]["model_id"] == rid
    key = json.loads(run(["keys", "create", "--project", project, "--role", "viewer", "--json"], env).stdout)
    viewer_env = {**env, "MODELDEPOT_API_KEY": key["secret"]}
    denied = run(["models", "delete", rid], viewer_env, check=False)
    assert denied.returncode == 7 and "viewer" in denied.stderr
    assert key["key"]["id"] in run(["keys", "list"], env).stdout
    run(["keys", "revoke", key["key"]["id"]], env)
    assert run(["models", "list"], viewer_env, check=False).returncode == 6
    run(["models", "delete", rid], env)
    assert run(["models", "show", rid], env, check=False).returncode == 4
    run(["projects", "delete", project, "--force"], env)
    assert json.loads(run(["projects", "list", "--json"], env).stdout) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_errors_are_one_line_with_a_hint_and_an_exit_code(logged_in: dict[str, str], tmp_path: Path) -> None:
    env = logged_in
    missing = run(["models", "show", "mo000000000000"], env, check=False)
    assert missing.returncode == 4
    assert missing.stderr.startswith("Error: Model mo000000000000 not found")
    assert "Traceback" not in missing.stderr
    project = run(["projects", "create", "p"], env).stdout.strip()
    f = write_tree(tmp_path, {"m.bin": b"1"}) / "m.bin"
    bad = run(
        ["models", "upload", str(f), "--name", "m", "--project", project, "--summary", "[1]"],
        env,
        check=False,
    )
    assert bad.returncode == 3 and "JSON object" in bad.stderr
    bad = run(
        ["models", "upload", str(f), "--name", "m", "--project", project, "--summary", "{x"], env, check=False
    )
    assert bad.returncode == 3 and "not valid JSON" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run(["models", "upload", str(empty), "--name", "m", "--project", project], env, check=False)
    assert bad.returncode == 3 and "no files" in bad.stderr
    by_name = run(["models", "upload", str(f), "--name", "m", "--project", "nosuch"], env, check=False)
    assert by_name.returncode == 4
    assert by_name.stderr.startswith("Error: Project 'nosuch' not found: no project has that id or name")
    assert "projects list" in by_name.stderr
    usage = run(
        ["models", "upload", str(f), "--name", "m", "--project", project, "--type", "pytorch"],
        env,
        check=False,
    )
    assert usage.returncode == 2
    assert (
        json.loads(run(["models", "list", "--project", project, "--state", "any", "--json"], env).stdout)[
            "items"
        ]
        == []
    )
    unknown = run(["models", "list", "--project", project, "--state", "bogus"], env, check=False)
    assert unknown.returncode == 3
    assert "Hint: Use one of: uploading, ready, failed, any." in unknown.stderr


def test_project_options_take_a_name_too(logged_in: dict[str, str], tmp_path: Path) -> None:
    env = logged_in
    vision = run(["projects", "create", "vision"], env).stdout.strip()
    f = write_tree(tmp_path, {"m.bin": b"1"}) / "m.bin"
    model = run(["models", "upload", str(f), "--name", "m", "--project", "vision", "--json"], env).stdout
    assert json.loads(model)["project_id"] == vision
    listed = json.loads(run(["models", "list", "--project", "vision", "--json"], env).stdout)["items"]
    assert [m["project_id"] for m in listed] == [vision]
    run(["aliases", "set", "m", "prod", json.loads(model)["id"], "--project", "vision"], env)
    twin = run(["projects", "create", "vision"], env).stdout.strip()
    both = run(["models", "list", "--project", "vision"], env, check=False)
    assert both.returncode == 3 and "2 projects are named 'vision': " in both.stderr
    assert vision in both.stderr and twin in both.stderr and "Give the id" in both.stderr
    assert json.loads(run(["models", "list", "--project", vision, "--json"], env).stdout)["items"]


def test_with_json_an_error_is_one_json_object_on_stderr(logged_in: dict[str, str], tmp_path: Path) -> None:
    """A script that asked for --json could only scrape `Error: …` lines; it gets the problem
    document the server sends (code, detail, hint) and the exit code, and stdout stays empty."""
    env = logged_in
    missing = run(["models", "show", "mo000000000000", "--json"], env, check=False)
    assert missing.returncode == 4 and missing.stdout == ""
    problem = json.loads(missing.stderr)
    assert problem["code"] == "not_found" and problem["exit_code"] == 4
    assert problem["detail"] == "Model mo000000000000 not found"
    local = run(["models", "download", "mo000000000000", str(tmp_path / "f"), "--json"], env, check=False)
    assert json.loads(local.stderr)["code"] == "not_found"
    down = run(
        ["--url", "http://127.0.0.1:9", "--api-key", "k", "models", "list", "--json"], env, check=False
    )
    assert down.returncode == 10 and json.loads(down.stderr)["code"] == "connection_failed"
    plain = run(["models", "show", "mo000000000000"], env, check=False)
    assert plain.stderr.startswith("Error: ")  # without --json, as before


def test_models_list_shows_each_models_state_with_state_any(
    logged_in: dict[str, str], tmp_path: Path
) -> None:
    env = logged_in
    project = run(["projects", "create", "p"], env).stdout.strip()
    f = write_tree(tmp_path, {"m.bin": b"1"}) / "m.bin"
    run(["models", "upload", str(f), "--name", "m", "--project", project], env)
    every = run(["models", "list", "--project", project, "--state", "any"], env).stdout
    assert "State" in every.splitlines()[1] and "ready" in every
    assert "State" not in run(["models", "list", "--project", project], env).stdout


def test_not_logged_in_and_unreachable(env: dict[str, str]) -> None:
    none = run(["models", "list"], env, check=False)
    assert none.returncode == 6 and "modeldepot login" in none.stderr
    down = run(["--url", "http://127.0.0.1:9", "--api-key", "k", "models", "list"], env, check=False)
    assert down.returncode == 10 and "Cannot reach" in down.stderr


def test_every_command_has_help(env: dict[str, str]) -> None:
    from modeldepot.cli.main import cli

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path in walk(cli, []):
        proc = run([*path, "--help"], env)
        assert "Usage:" in proc.stdout
