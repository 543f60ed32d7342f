"""Listing benchmark: how fast modeldepot finds models in a repository of 100,000, next to MLflow.

Fills a modeldepot repository (SQLite, then PostgreSQL) and an MLflow model registry (SQLite) with the
same shape of data -- 10 projects, 2,000 names x 50 versions, 1-3 tags per model -- straight into their
tables, starts each real server on a free 127.0.0.1 port, and times requests through the HTTP API with
one keep-alive client, one request at a time. Prints p50/p99 per query and backend, the MLflow request
each modeldepot request was compared with, and whether the aim "p99 < 50 ms" holds.

    .venv/bin/python bench/listing.py                      # the full run (about 3-4 minutes on 2 cores)
    .venv/bin/python bench/listing.py --models 5000 --requests 50 --skip-mlflow   # a quick look

``--explain`` also prints the plans of modeldepot's list queries on each database.

MLflow comes from the ``bench`` extra (``pip install -e ".[bench]"``); PostgreSQL is the server at
127.0.0.1:5432 (``--pg-admin-url``), in which a fresh ``modeldepot_bench_<random>`` database is created
and dropped afterwards. Work files go to ``bench/.work/`` and are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx
from sqlalchemy import event, insert

from modeldepot.blobs import open_blob_store
from modeldepot.metadata import SqlMetadataStore
from modeldepot.metadata import tables as t
from modeldepot.services.container import Services
from modeldepot.services.ports import ModelQuery

HERE = Path(__file__).resolve().parent
WORK_ROOT = HERE / ".work"
ADMIN_KEY = "md_bench_admin_" + "k" * 32
TAGS = ("prod", "staging", "nlp", "vision", "tabular", "baseline", "candidate", "archived")
TYPES = (("Custom", "model.bin"), ("ONNX", "model.onnx"), ("Tensorflow", "saved_model.pb"))
PAGE = 50
SHOWN = {"sqlite": "md-sqlite", "postgres": "md-pg", "mlflow": "mlflow"}
AIM_MS = 50.0
WARMUP = 10
MLFLOW_API = "/api/2.0/mlflow"
MLFLOW_SCHEMA = (
    "import sys\n"
    "from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore\n"
    "SqlAlchemyStore(sys.argv[1]).engine.dispose()\n"
)


# -- the data ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    seq: int
    id: str
    project: int
    name: int
    version: int
    type: int
    tags: tuple[str, ...]
    created_at: datetime


@dataclasses.dataclass
class Dataset:
    project_ids: list[str]
    project_names: list[str]
    names: list[str]  # names[i] lives in project i % len(project_ids)
    rows: list[Row]  # in seq order: version by version, every name, as if uploaded over time

    @property
    def per_project(self) -> int:
        return math.ceil(len(self.rows) / len(self.project_ids))


def make_dataset(models: int, projects: int, versions: int, seed: int = 42) -> Dataset:
    rng = random.Random(seed)
    alphabet = string.digits + string.ascii_lowercase
    used: set[str] = set()

    def new_id(prefix: str, n: int) -> str:
        while True:
            value = prefix + "".join(rng.choices(alphabet, k=n))
            if value not in used:
                used.add(value)
                return value

    n_names = max(min(projects, models), math.ceil(models / versions))  # every project gets a name
    names = [f"model-{i:05d}" for i in range(n_names)]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=models + 60)
    rows: list[Row] = []
    for version in range(1, versions + 1):
        for i in range(n_names):
            if len(rows) == models:
                break
            seq = len(rows) + 1
            rows.append(
                Row(
                    seq=seq,
                    id=new_id("mo", 12),
                    project=i % projects,
                    name=i,
                    version=version,
                    type=rng.randrange(len(TYPES)),
                    tags=tuple(sorted(rng.sample(TAGS, rng.randint(1, 3)))),
                    created_at=start + timedelta(seconds=seq),
                )
            )
    return Dataset(
        project_ids=[new_id("pr", 7) for _ in range(projects)],
        project_names=[f"project-{p:02d}" for p in range(projects)],
        names=names,
        rows=rows,
    )


def chunks(rows: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


# -- filling modeldepot -------------------------------------------------------------------------------


def fill_modeldepot(url: str, data_dir: Path, ds: Dataset) -> None:
    """Schema by migration, rows by Core bulk inserts, then the admin key through the auth service."""
    store = SqlMetadataStore(url)
    try:
        store.migrate()
        created = ds.rows[0].created_at - timedelta(days=1)
        projects = [
            {
                "id": pid,
                "name": ds.project_names[p],
                "created_at": created,
                "created_by": "bench",
                "repo_name": None,
                "repo_url": None,
            }
            for p, pid in enumerate(ds.project_ids)
        ]
        models, tags, files = [], [], []
        for r in ds.rows:
            type_name, path = TYPES[r.type]
            size = 1_000_000 + (r.seq * 7919) % 50_000_000
            models.append(
                {
                    "seq": r.seq,
                    "id": r.id,
                    "project_id": ds.project_ids[r.project],
                    "name": ds.names[r.name],
                    "version": r.version,
                    "type": type_name,
                    "state": "ready",
                    "summary": {"accuracy": round(0.5 + (r.seq % 500) / 1000, 3), "epochs": 10},
                    "notes": "",
                    "metadata": {},
                    "dataset_ref": None,
                    "source": "upload",
                    "created_at": r.created_at,
                    "created_by": "bench",
                    "size": size,
                    "file_count": 1,
                    "expires_at": None,
                    "deployment_state": None,
                }
            )
            tags.extend({"model_id": r.id, "tag": tag, "seq": r.seq} for tag in r.tags)
            files.append(
                {
                    "model_id": r.id,
                    "path": path,
                    "size": size,
                    "sha256": hashlib.sha256(r.id.encode()).hexdigest(),
                }
            )
        with store.engine.begin() as conn:
            conn.execute(insert(t.projects), projects)
            for table, rows in ((t.models, models), (t.model_tags, tags), (t.model_files, files)):
                for part in chunks(rows, 10_000):
                    conn.execute(insert(table), part)
            names = getattr(t, "model_names", None)
            if names is not None:
                # The per-name version counter (where the schema has one): later uploads continue from it.
                last: dict[tuple[str, str], int] = {}
                for row in models:
                    last[(row["project_id"], row["name"])] = row["version"]
                counters = [{"project_id": p, "name": n, "last_version": v} for (p, n), v in last.items()]
                conn.execute(insert(names), counters)
            if store.engine.dialect.name == "postgresql":
                # Explicit seq values do not move the sequence; keep later uploads working.
                conn.exec_driver_sql(
                    "SELECT setval(pg_get_serial_sequence('models', 'seq'), (SELECT max(seq) FROM models))"
                )
        if store.engine.dialect.name == "postgresql":
            # What autovacuum does within a minute of a bulk load: statistics and the visibility map.
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        else:
            with store.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        blobs = open_blob_store((data_dir / "blobs").resolve().as_uri())
        Services.build(store, blobs).auth.bootstrap(ADMIN_KEY)
    finally:
        store.close()


# -- filling MLflow ----------------------------------------------------------------------------------


def fill_mlflow(db_path: Path, ds: Dataset) -> None:
    """Let MLflow create its schema (its own store, in a child process), then insert with sqlite3."""
    subprocess.run(
        [sys.executable, "-c", MLFLOW_SCHEMA, f"sqlite:///{db_path}"],
        check=True,
        capture_output=True,
        text=True,
    )
    ms = [int(r.created_at.timestamp() * 1000) for r in ds.rows]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for r, stamp in zip(ds.rows, ms, strict=True):
        first.setdefault(r.name, stamp)
        last[r.name] = stamp
    registered = [
        {"name": name, "creation_time": first[i], "last_updated_time": last[i], "description": ""}
        for i, name in enumerate(ds.names)
        if i in first
    ]
    registered_tags = [
        {"key": "project", "value": ds.project_names[i % len(ds.project_ids)], "name": name}
        for i, name in enumerate(ds.names)
        if i in first
    ]
    versions, version_tags = [], []
    for r, stamp in zip(ds.rows, ms, strict=True):
        name = ds.names[r.name]
        source = f"s3://bench-artifacts/{name}/{r.version}"
        versions.append(
            {
                "name": name,
                "version": r.version,
                "creation_time": stamp,
                "last_updated_time": stamp,
                "description": "",
                "user_id": "bench",
                "current_stage": "None",
                "source": source,
                "run_id": "",
                "status": "READY",
                "status_message": None,
                "run_link": "",
                "storage_location": source,
            }
        )
        version_tags.extend(
            {"key": tag, "value": "true", "name": name, "version": r.version} for tag in r.tags
        )
    con = sqlite3.connect(db_path)
    try:
        with con:
            for table, rows in (
                ("registered_models", registered),
                ("registered_model_tags", registered_tags),
                ("model_versions", versions),
                ("model_version_tags", version_tags),
            ):
                existing = {c[1] for c in con.execute(f'PRAGMA table_info("{table}")')}
                cols = [c for c in rows[0] if c in existing]
                sql = 'INSERT INTO "{}" ({}) VALUES ({})'.format(
                    table, ", ".join(f'"{c}"' for c in cols), ", ".join("?" for _ in cols)
                )
                con.executemany(sql, ([row[c] for c in cols] for row in rows))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


# -- servers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: TextIO
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Its own session: the group holds the server and whatever it started, nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def start_server(name: str, cmd: list[str], health: str, port: int, cwd: Path, env: dict[str, str]) -> Server:
    log_path = cwd / f"{name}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(name=name, url=f"http://127.0.0.1:{port}", proc=proc, log=log, log_path=log_path)
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + health, timeout=2).status_code == 200:
                    return server
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not answer {health} in 120 s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise


def start_modeldepot(url: str, data_dir: Path) -> Server:
    """``modeldepot serve``, as a user runs it."""
    port = free_port()
    exe = Path(sys.executable).with_name("modeldepot")
    if exe.exists():
        prefix = [str(exe)]
    else:
        prefix = [sys.executable, "-c", "import sys; from modeldepot.cli.main import main; sys.exit(main())"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    cmd = [*prefix, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    return start_server("modeldepot", [*cmd, "--database-url", url], "/api/v1/health", port, data_dir, env)


def start_mlflow(db_path: Path, work: Path) -> Server:
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    env = dict(os.environ)
    # No background job runner (huey consumers): only the registry API is measured.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        *prefix,
        "server",
        "--backend-store-uri",
        f"sqlite:///{db_path}",
        "--artifacts-destination",
        str(work / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return start_server("mlflow", cmd, "/health", port, work, env)


# -- measuring ---------------------------------------------------------------------------------------

Request = tuple[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Query:
    key: str
    label: str
    modeldepot: str  # the request, in modeldepot's API


QUERIES = (
    Query("project", "first page of a project", "GET /models?project=P&limit=50"),
    Query("deep", "deep page of a project", "GET /models?project=P&limit=50&cursor=C"),
    Query("tag", "filter by tag", "GET /models?tag=T&limit=50"),
    Query("name", "filter by name", "GET /models?name=N&limit=50"),
    Query("show", "show one model", "GET /models/{id}"),
    Query("all", "first page, all projects", "GET /models?limit=50"),
    Query("rm", "list registered models", "(none)"),
)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclasses.dataclass(frozen=True)
class Probe:
    """One query on one backend: the i-th request to time, and the JSON key its answer must fill."""

    backend: str
    key: str
    client: httpx.Client
    make: Callable[[int], Request]
    expect: str


def measure(probes: Sequence[Probe], n: int) -> dict[str, dict[str, list[float]]]:
    """Latency in ms of n requests per probe, each from send to the last byte of the body.

    The probes take turns, request by request, so that whatever else the machine does at some moment
    weighs on every query and backend alike. Each first gets a few untimed warm-up requests whose
    answers must not be empty.
    """
    out: dict[str, dict[str, list[float]]] = {}

    def get(probe: Probe, i: int) -> tuple[float, httpx.Response]:
        path, params = probe.make(i)
        start = time.perf_counter()
        response = probe.client.get(path, params=params)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise RuntimeError(
                f"{probe.backend}: GET {path} {params} -> {response.status_code}: {response.text}"
            )
        return elapsed, response

    for probe in probes:
        for i in range(WARMUP):
            _, response = get(probe, i % n)
            if not response.json().get(probe.expect):
                raise RuntimeError(f"{probe.backend}: {probe.key} found nothing: {response.text[:500]}")
        out.setdefault(probe.backend, {})[probe.key] = []
    gc.collect()
    for i in range(n):
        for probe in probes:
            out[probe.backend][probe.key].append(get(probe, i)[0])
    return out


@dataclasses.dataclass
class Picks:
    """What the requests ask for, the same for every backend."""

    names: list[str]
    models: list[Row]
    deep_pages: int


def make_picks(ds: Dataset, n: int, deep_pages: int) -> Picks:
    rng = random.Random(7)
    return Picks(
        names=[rng.choice(ds.names) for _ in range(n)],
        models=[rng.choice(ds.rows) for _ in range(n)],
        deep_pages=min(deep_pages, max(0, (ds.per_project - 1) // PAGE)),
    )


def modeldepot_probes(backend: str, client: httpx.Client, ds: Dataset, picks: Picks) -> list[Probe]:
    projects = ds.project_ids

    def page(i: int, **params: Any) -> Request:
        return "/models", {"limit": PAGE, **params}

    probes = [
        Probe(backend, "project", client, lambda i: page(i, project=projects[i % len(projects)]), "items")
    ]
    if picks.deep_pages:
        # Follow next_cursor page by page into one project; the deep page is the request with the last one.
        cursor = None
        for _ in range(picks.deep_pages):
            body = client.get("/models", params={"project": projects[0], "limit": PAGE, "cursor": cursor})
            body.raise_for_status()
            cursor = body.json()["next_cursor"]
        assert cursor, "ran out of pages"
        probes.append(
            Probe(backend, "deep", client, lambda i: page(i, project=projects[0], cursor=cursor), "items")
        )
    return [
        *probes,
        Probe(backend, "tag", client, lambda i: page(i, tag=TAGS[i % len(TAGS)]), "items"),
        Probe(backend, "name", client, lambda i: page(i, name=picks.names[i]), "items"),
        Probe(backend, "show", client, lambda i: (f"/models/{picks.models[i].id}", {}), "id"),
        Probe(backend, "all", client, page, "items"),
    ]


def mlflow_probes(client: httpx.Client, ds: Dataset, picks: Picks) -> list[Probe]:
    """The MLflow side. Its first page stands for both "first page" rows (see mlflow_mapping)."""
    search = "/model-versions/search"

    def versions(i: int, **params: Any) -> Request:
        return search, {"max_results": PAGE, **params}

    probes = [Probe("mlflow", "project", client, versions, "model_versions")]
    if picks.deep_pages:
        token = None
        for _ in range(picks.deep_pages):
            body = client.get(search, params={"max_results": PAGE, "page_token": token})
            body.raise_for_status()
            token = body.json()["next_page_token"]
        probes.append(
            Probe("mlflow", "deep", client, lambda i: versions(i, page_token=token), "model_versions")
        )

    def get_version(i: int) -> Request:
        row = picks.models[i]
        return "/model-versions/get", {"name": ds.names[row.name], "version": str(row.version)}

    return [
        *probes,
        Probe(
            "mlflow",
            "tag",
            client,
            lambda i: versions(i, filter=f"tags.`{TAGS[i % len(TAGS)]}` = 'true'"),
            "model_versions",
        ),
        Probe(
            "mlflow",
            "name",
            client,
            lambda i: versions(i, filter=f"name = '{picks.names[i]}'"),
            "model_versions",
        ),
        Probe("mlflow", "show", client, get_version, "model_version"),
        Probe(
            "mlflow",
            "rm",
            client,
            lambda i: ("/registered-models/search", {"max_results": PAGE}),
            "registered_models",
        ),
    ]


def mlflow_mapping(picks: Picks) -> dict[str, str]:
    s = f"GET {MLFLOW_API}/model-versions/search"
    return {
        "project": f"{s}?max_results=50  (no projects in MLflow: newest of all versions)",
        "deep": f"{s}?max_results=50&page_token=<after {picks.deep_pages} pages>  (offset token)",
        "tag": f"{s}?filter=tags.`T` = 'true'&max_results=50  (tag T stored as key T, value 'true')",
        "name": f"{s}?filter=name = 'N'&max_results=50",
        "show": f"GET {MLFLOW_API}/model-versions/get?name=N&version=V",
        "all": f"{s}?max_results=50  (same request as 'first page of a project')",
        "rm": f"GET {MLFLOW_API}/registered-models/search?max_results=50  (MLflow only)",
    }


# -- query plans -------------------------------------------------------------------------------------


def explain_modeldepot(url: str, ds: Dataset, picks: Picks) -> None:
    """Print the plan of each list query modeldepot sends (captured from the store itself)."""
    store = SqlMetadataStore(url)
    captured: list[tuple[str, Any]] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _capture(_conn: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    deep_seq = ds.rows[-1].seq - picks.deep_pages * PAGE * len(ds.project_ids)
    queries = {
        "first page of a project": ModelQuery(project_ids=(ds.project_ids[0],), limit=PAGE),
        "deep page of a project": ModelQuery(
            project_ids=(ds.project_ids[0],), before_seq=max(1, deep_seq), limit=PAGE
        ),
        "filter by tag": ModelQuery(project_ids=None, tag=TAGS[0], limit=PAGE),
        "filter by name": ModelQuery(project_ids=None, name=picks.names[0], limit=PAGE),
        "first page, all projects": ModelQuery(project_ids=None, limit=PAGE),
    }
    pg = store.engine.dialect.name == "postgresql"
    try:
        for label, query in queries.items():
            captured.clear()
            store.list_models(query)
            statement, params = captured[0]
            prefix = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if pg else "EXPLAIN QUERY PLAN "
            with store.engine.connect() as conn:
                plan = conn.exec_driver_sql(prefix + statement, params).all()
            print(f"\n  -- {label}: {' '.join(statement.split())}")
            for row in plan:
                print("     " + (row[0] if pg else f"{row[-1]}"))
    finally:
        store.close()


# -- PostgreSQL --------------------------------------------------------------------------------------


def pg_problem(admin_url: str) -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        import psycopg
    except ImportError:
        return 'psycopg is not installed (pip install -e ".[postgres]")'
    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"not reachable at {admin_url}: {exc}"


@contextlib.contextmanager
def fresh_pg_db(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"modeldepot_bench_{secrets.token_hex(5)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- report ------------------------------------------------------------------------------------------


def fmt(values: list[float] | None) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return f"{percentile(values, 50):.1f}", f"{percentile(values, 99):.1f}"


def table_rows(results: dict[str, dict[str, list[float]]], backends: list[str]) -> list[list[str]]:
    """The result table: a header row, then one row per query."""
    md = [b for b in backends if b != "mlflow"]
    header = ["query"]
    for b in backends:
        header += [f"{SHOWN[b]} p50", f"{SHOWN[b]} p99"]
    if "mlflow" in backends:
        header += [f"p99 mlflow/{SHOWN[b]}" for b in md]
    header += [f"p99<{AIM_MS:.0f}ms {SHOWN[b]}" for b in md]
    rows = [header]
    for q in QUERIES:
        if all(q.key not in results.get(b, {}) for b in backends):
            continue
        row = [q.label]
        for b in backends:
            row += fmt(results.get(b, {}).get(q.key))
        if "mlflow" in backends:
            ml = results["mlflow"].get(q.key)
            for b in md:
                mine = results[b].get(q.key)
                row.append(f"{percentile(ml, 99) / percentile(mine, 99):.1f}x" if ml and mine else "-")
        for b in md:
            mine = results[b].get(q.key)
            row.append(("yes" if percentile(mine, 99) < AIM_MS else "NO") if mine else "-")
        rows.append(row)
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print("\nas Markdown:\n")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|")
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")


def software(backends: list[str], pg_admin_url: str) -> str:
    parts = [
        f"{os.cpu_count()} CPUs",
        f"Python {platform.python_version()}",
        f"modeldepot {importlib.metadata.version('modeldepot')}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if "postgres" in backends:
        import psycopg

        with psycopg.connect(pg_admin_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        parts.append(f"PostgreSQL {row[0] if row else '?'}")
    if "mlflow" in backends:
        parts.append(f"MLflow {importlib.metadata.version('mlflow')}")
    return ", ".join(parts)


def remove_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        WORK_ROOT.rmdir()  # only when no other run is using it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=100_000, help="models in each repository (100000)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query (200)")
    parser.add_argument("--projects", type=int, default=10, help="projects (10)")
    parser.add_argument("--versions", type=int, default=50, help="versions per model name (50)")
    parser.add_argument("--deep-pages", type=int, default=100, help="how deep the deep page is (100)")
    parser.add_argument("--skip-postgres", action="store_true", help="no modeldepot on PostgreSQL")
    parser.add_argument("--skip-mlflow", action="store_true", help="no MLflow")
    parser.add_argument("--explain", action="store_true", help="also print modeldepot's query plans")
    parser.add_argument("--keep-work", action="store_true", help="keep bench/.work/listing-* afterwards")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("MODELDEPOT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL to create the bench database in",
    )
    args = parser.parse_args(argv)
    if args.models < 1 or args.requests < 1 or args.projects < 1 or args.versions < 1:
        parser.error("--models, --requests, --projects and --versions must be positive")

    # A plain `kill` cleans up like Ctrl-C does: servers stopped, database dropped, work files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    backends = ["sqlite"]
    if not args.skip_postgres:
        problem = pg_problem(args.pg_admin_url)
        if problem is None:
            backends.append("postgres")
        else:
            print(f"PostgreSQL skipped: {problem}", file=sys.stderr)
    if not args.skip_mlflow:
        if importlib.util.find_spec("mlflow") is None:
            parser.error('MLflow is not installed: pip install -e ".[bench]" (or pass --skip-mlflow)')
        backends.append("mlflow")

    ds = make_dataset(args.models, args.projects, args.versions)
    picks = make_picks(ds, args.requests, args.deep_pages)
    print(
        f"{len(ds.rows):,} models: {len(ds.project_ids)} projects, {len(ds.names):,} names x "
        f"{ds.rows[-1].version if len(ds.rows) % len(ds.names) == 0 else f'up to {ds.rows[-1].version}'} versions, 1-3 "
        f"of {len(TAGS)} tags each; {args.requests} timed requests per query and backend, one keep-alive "
        "client per server, one request at a time, taking turns"
    )
    print(software(backends, args.pg_admin_url))
    WORK_ROOT.mkdir(exist_ok=True)
    work = WORK_ROOT / f"listing-{secrets.token_hex(4)}"
    work.mkdir()
    with contextlib.ExitStack() as stack:
        # Unwound in reverse: clients, then servers, then the PostgreSQL database, then the work files.
        if not args.keep_work:
            stack.callback(remove_work, work)
        urls: dict[str, str] = {}
        for backend in backends:
            step = time.perf_counter()
            if backend == "mlflow":
                (work / "mlflow").mkdir()
                fill_mlflow(work / "mlflow" / "mlflow.db", ds)
            else:
                data_dir = work / f"modeldepot-{backend}"
                data_dir.mkdir()
                if backend == "postgres":
                    urls[backend] = stack.enter_context(fresh_pg_db(args.pg_admin_url))
                else:
                    urls[backend] = f"sqlite:///{data_dir / 'modeldepot.db'}"
                fill_modeldepot(urls[backend], data_dir, ds)
            print(f"  {SHOWN[backend]}: filled in {time.perf_counter() - step:.1f} s")
            if args.explain and backend != "mlflow":
                print(f"\nquery plans, modeldepot on {backend}:")
                explain_modeldepot(urls[backend], ds, picks)
        step = time.perf_counter()
        probes: list[Probe] = []
        for backend in backends:
            if backend == "mlflow":
                server = start_mlflow(work / "mlflow" / "mlflow.db", work / "mlflow")
                stack.callback(server.stop)
                client = stack.enter_context(httpx.Client(base_url=server.url + MLFLOW_API, timeout=120))
                probes += mlflow_probes(client, ds, picks)
            else:
                server = start_modeldepot(urls[backend], work / f"modeldepot-{backend}")
                stack.callback(server.stop)
                client = stack.enter_context(
                    httpx.Client(
                        base_url=server.url + "/api/v1", headers={"X-API-Key": ADMIN_KEY}, timeout=120
                    )
                )
                probes += modeldepot_probes(backend, client, ds, picks)
        results = measure(probes, args.requests)
        if "mlflow" in results:
            results["mlflow"]["all"] = results["mlflow"]["project"]  # the very same request
        print(
            f"  servers started and {len(probes) * args.requests:,} requests timed in {time.perf_counter() - step:.1f} s"
        )

    if "mlflow" in backends:
        print("\nMLflow equivalents (modeldepot request -> MLflow request):")
        mapping = mlflow_mapping(picks)
        for q in QUERIES:
            if q.key in results["mlflow"]:
                print(f"  {q.label:<26} {q.modeldepot:<42} -> {mapping[q.key]}")
    if picks.deep_pages:
        print(f"\n'deep page' is page {picks.deep_pages + 1} (after {picks.deep_pages} pages of {PAGE}).")
    print("\nmodeldepot ran as `modeldepot serve`; md-pg is modeldepot on PostgreSQL, md-sqlite on SQLite.")
    print("\nlatency in ms (p50 / p99 over the timed requests; lower is better):")
    print_table(table_rows(results, backends))
    md = [b for b in backends if b != "mlflow"]
    worst = {b: max(percentile(v, 99) for v in results[b].values()) for b in md}
    verdict = ", ".join(
        f"{b}: {'holds' if w < AIM_MS else 'MISSED'} (worst p99 {w:.1f} ms)" for b, w in worst.items()
    )
    print(f"\naim p99 < {AIM_MS:.0f} ms -- {verdict}")
    print(
        f"total run time {time.perf_counter() - began:.0f} s; load average (1 min) {load_before:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end: other work on the machine shows up in the p99s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
