"""Shared fixtures: a real modeldepot server over real HTTP, on SQLite and on PostgreSQL.

``server`` is parametrised over the metadata backends: every test that uses it runs on both.
PostgreSQL is the machine's server at 127.0.0.1:5432; each test session creates and drops its own
database. With MODELDEPOT_TEST_REQUIRE_POSTGRES=1 (CI) a missing PostgreSQL fails instead of skipping.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from modeldepot import Client
from modeldepot.config import Settings
from modeldepot.server import create_app
from modeldepot.server.dataplane import start_data_plane

PG_ADMIN_URL = os.environ.get("MODELDEPOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_KEY = "md_test_admin_" + "x" * 24


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def _fresh_pg_db(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"modeldepot_t_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"{admin_url.rsplit('/', 1)[0]}/{name}"


def _drop_pg_db(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty metadata database: SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
        return
    if not _pg_available():
        if os.environ.get("MODELDEPOT_TEST_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required but not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")
    name, url = _fresh_pg_db(PG_ADMIN_URL)
    try:
        yield url
    finally:
        _drop_pg_db(PG_ADMIN_URL, name)


@dataclasses.dataclass
class RunningServer:
    url: str
    admin_key: str
    settings: Settings
    app: object

    def client(self, api_key: str | None = None) -> Client:
        return Client(self.url, self.admin_key if api_key is None else api_key)

    def http(self, api_key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": self.admin_key if api_key is None else api_key}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_server(settings: Settings) -> Iterator[RunningServer]:
    """Serve ``settings`` on a free port in a thread of this process (stopped on exit)."""
    app = create_app(settings)
    app.state.services.auth.bootstrap(ADMIN_KEY)
    # IPPROTO_TCP so that asyncio sets TCP_NODELAY (else keep-alive requests stall ~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    # As `modeldepot serve` does: large local files move through the data plane (data_port=-1: not).
    plane = start_data_plane(app, settings, url)
    try:
        yield RunningServer(url=url, admin_key=ADMIN_KEY, settings=settings, app=app)
    finally:
        if plane is not None:
            plane.stop()
        srv.should_exit = True
        thread.join(timeout=20)
        sock.close()


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=database_url,
        bootstrap_admin_key=ADMIN_KEY,
        **overrides,
    )


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """A real modeldepot server on a free port, in a thread of this process."""
    with running_server(make_settings(database_url, tmp_path / "data")) as running:
        yield running


@pytest.fixture
def admin(server: RunningServer) -> Iterator[Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def project(admin: Client) -> str:
    return admin.create_project("vision").id


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
