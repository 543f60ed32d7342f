"""Interruptions as they really happen: the CLI or the server killed mid-upload, then the same command again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ADMIN_KEY, free_port, make_settings, running_server
from .test_cli import MODELDEPOT, run

MiB = 1024 * 1024


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    return env | {
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MODELDEPOT_URL": url,
        "MODELDEPOT_API_KEY": ADMIN_KEY,
    }


def _parts_received(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "blobs" / "staging").glob("*/parts/*"))


def _upload_until_parts(
    args: list[str], env: dict[str, str], data_dir: Path, parts: int
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*MODELDEPOT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while _parts_received(data_dir) < parts:
        assert proc.poll() is None, f"the upload ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def _big_file(tmp_path: Path) -> Path:
    path = tmp_path / "model" / "weights.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(64 * MiB))
    return path.parent


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_killing_the_cli_mid_upload_then_running_it_again_resumes(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_server(make_settings(database_url, data_dir, upload_part_size=MiB)) as server:
        env = _env(tmp_path, server.url)
        project = run(["projects", "create", "p"], env).stdout.strip()
        src = _big_file(tmp_path)
        args = ["models", "upload", str(src), "--name", "big", "--project", project, "--parallel", "1"]
        proc = _upload_until_parts(args, env, data_dir, 3)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        with server.client() as admin:
            half = admin.list_models(project=project, state="uploading").items
            assert len(half) == 1 and admin.list_models(project=project).items == ()
            done = run([*args, "--json"], env)
            model = admin.list_models(project=project).items
            assert [m.id for m in model] == [half[0].id] and model[0].version == 1, done.stdout
            admin.download(model[0].id, tmp_path / "out")
        assert (tmp_path / "out" / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()


def _start_server(data_dir: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*MODELDEPOT, "serve", "--data-dir", str(data_dir), "--port", str(port), "--data-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Press Ctrl-C" in line:
            return proc
    raise AssertionError("the server did not start")


def test_killing_the_server_mid_upload_then_running_it_again_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    serve_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    serve_env |= {"MODELDEPOT_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "MODELDEPOT_UPLOAD_PART_SIZE": str(MiB)}
    src = _big_file(tmp_path)
    port = free_port()
    env = _env(tmp_path, f"http://127.0.0.1:{port}")
    server = _start_server(data_dir, port, serve_env)
    try:
        project = run(["projects", "create", "p"], env).stdout.strip()
        args = ["models", "upload", str(src), "--name", "big", "--project", project, "--parallel", "1"]
        upload = _upload_until_parts(args, env, data_dir, 3)
        server.send_signal(signal.SIGKILL)
        server.communicate()
        out, err = upload.communicate(timeout=120)
        assert upload.returncode == 10, (out, err)
        assert "resume" in err, err
        server = _start_server(data_dir, port, serve_env)
        done = json.loads(run([*args, "--json"], env).stdout)
        assert done["state"] == "ready" and done["version"] == 1
        listed = json.loads(
            run(["models", "list", "--project", project, "--state", "any", "--json"], env).stdout
        )
        assert [m["id"] for m in listed["items"]] == [done["id"]]
        run(["models", "download", done["id"], str(tmp_path / "out")], env)
    finally:
        server.kill()
        server.communicate()
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ctrl_c_while_the_file_is_still_hashed_then_running_it_again_resumes(
    database_url: str, tmp_path: Path
) -> None:
    """Ctrl-C before the manifest (no model yet, parts already sent ahead into a staging area): the
    CLI says how to go on and exits with 130, the area keeps its parts, and the same command again
    finishes the upload from them."""
    data_dir = tmp_path / "data"
    with running_server(make_settings(database_url, data_dir, upload_part_size=MiB)) as server:
        env = _env(tmp_path, server.url)
        project = run(["projects", "create", "p"], env).stdout.strip()
        src = tmp_path / "model"
        src.mkdir()
        # Large enough that hashing it takes far longer than sending three 1 MiB parts.
        (src / "weights.bin").write_bytes(os.urandom(256 * MiB))
        # The CLI does not trust what it noted about a file changed just before (0.1 s on this disk,
        # whose timestamps have digits below the second).
        time.sleep(0.3)
        args = ["models", "upload", str(src), "--name", "big", "--project", project, "--parallel", "1"]
        proc = _upload_until_parts(args, env, data_dir, 3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (out, err)
        assert "Interrupted. Run the same command again to resume the upload" in err, err
        assert "Aborted" not in err
        blobs = server.app.state.services.models.blobs  # type: ignore[attr-defined]
        (area,) = blobs.staging_ids()
        arrived = blobs.received_parts(area)
        assert len(arrived) >= 3  # kept, not dropped
        with server.client() as admin:
            assert admin.list_models(project=project, state="any").items == ()  # before the manifest
            done = json.loads(run([*args, "--json"], env).stdout)
            assert done["state"] == "ready" and done["version"] == 1
            assert blobs.staging_ids() == []
            admin.download(done["id"], tmp_path / "out")
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
