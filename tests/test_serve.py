"""`modeldepot serve` as a user starts it: first-start key, restarts, settings from the environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def serving(args: list[str], env: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeldepot.cli", "serve", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("server exited:\n" + "".join(lines))
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        url = re.search(r"running at (\S+)", "".join(lines))
        assert url, lines
        yield url.group(1), lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    return env | extra


def test_first_start_prints_a_key_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(["--data-dir", str(data)], _env()) as (url, lines):
        key = re.search(r"(md_\S+)", "".join(lines))
        assert key, lines
        r = httpx.get(f"{url}/api/v1/whoami", headers={"X-API-Key": key.group(1)})
        assert r.status_code == 200 and r.json()["is_admin"]
        assert httpx.get(f"{url}/api/v1/openapi.json").status_code == 200
    assert (data / "modeldepot.db").exists()
    with serving(["--data-dir", str(data)], _env()) as (url, lines):
        assert "md_" not in "".join(lines)
        assert httpx.get(f"{url}/api/v1/whoami", headers={"X-API-Key": key.group(1)}).status_code == 200


def test_bootstrap_key_and_settings_from_environment(tmp_path: Path) -> None:
    secret = "team-bootstrap-key-0123456789"
    env = _env(MODELDEPOT_DATA_DIR=str(tmp_path / "d"), MODELDEPOT_BOOTSTRAP_ADMIN_KEY=secret)
    with serving([], env) as (url, lines):
        assert secret not in "".join(lines)
        assert httpx.get(f"{url}/api/v1/whoami", headers={"X-API-Key": secret}).status_code == 200
    assert (tmp_path / "d" / "modeldepot.db").exists()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "modeldepot.cli",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr and "--port" in proc.stderr


def test_an_invalid_setting_names_the_option_or_the_variable_that_sets_it(tmp_path: Path) -> None:
    """A setting that `serve` takes no option for was said to be checked at an option that does not
    exist (--upload-expiry-seconds)."""

    def start(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "modeldepot.cli", "serve", "--data-dir", str(tmp_path), *args]
        return subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=60)

    expiry = start([], MODELDEPOT_UPLOAD_EXPIRY_SECONDS="5")
    assert expiry.returncode == 1
    assert "setting upload_expiry_seconds is invalid" in expiry.stderr
    assert "Hint: Check MODELDEPOT_UPLOAD_EXPIRY_SECONDS." in expiry.stderr
    port = start(["--port", "70000"])
    assert port.returncode == 1 and "Hint: Check the --port option or MODELDEPOT_PORT." in port.stderr
