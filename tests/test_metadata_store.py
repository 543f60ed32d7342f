"""The metadata store contract, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from modeldepot.errors import StorageFull
from modeldepot.metadata import SqlMetadataStore
from modeldepot.records import Alias, ApiKey, ModelFile, Project
from modeldepot.services import ids
from modeldepot.services.ports import ModelQuery, NewModel

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(database_url: str):
    s = SqlMetadataStore(database_url)
    s.migrate()
    s.migrate()  # idempotent
    yield s
    s.close()


def _project(store: SqlMetadataStore, name: str = "p") -> str:
    pid = ids.project_id()
    store.create_project(Project(id=pid, name=name, created_at=NOW, created_by="t", tags=("a",)))
    return pid


def _new_model(pid: str, name: str, **fields: Any) -> NewModel:
    defaults: dict[str, Any] = {
        "type": "ONNX", "summary": {"acc": 0.5}, "notes": "", "tags": (), "metadata": {},
        "dataset_ref": None, "source": "upload", "created_at": NOW, "created_by": "t",
        "expires_at": NOW + timedelta(hours=1), "files": (),
    }  # fmt: skip
    return NewModel(id=ids.model_id(), project_id=pid, name=name, **(defaults | fields))


def _model(store: SqlMetadataStore, pid: str, name: str, tags: tuple[str, ...] = (), files: int = 1):
    new = _new_model(
        pid,
        name,
        tags=tags,
        files=tuple(ModelFile(path=f"f{i}.bin", size=i, sha256=f"{i:064x}") for i in range(files)),
    )
    model = store.create_model(new)
    store.update_model(model.id, state="ready", expires_at=None)
    return model


def test_versions_count_up_per_name(store: SqlMetadataStore) -> None:
    pid = _project(store)
    other = _project(store)
    versions = [_model(store, pid, "resnet").version for _ in range(3)]
    assert versions == [1, 2, 3]
    assert _model(store, pid, "bert").version == 1
    assert _model(store, other, "resnet").version == 1


def test_list_pages_cover_everything_once_newest_first(store: SqlMetadataStore) -> None:
    pid = _project(store)
    made = [_model(store, pid, f"m{i % 3}", tags=("even",) if i % 2 == 0 else ()).id for i in range(23)]
    seen: list[str] = []
    before = None
    while True:
        page, before = store.list_models(ModelQuery(project_ids=(pid,), before_seq=before, limit=5))
        seen += [m.id for m in page]
        if before is None:
            break
    assert seen == list(reversed(made))
    tagged, _ = store.list_models(ModelQuery(project_ids=(pid,), tag="even", limit=100))
    assert [m.id for m in tagged] == [mid for i, mid in reversed(list(enumerate(made))) if i % 2 == 0]
    named, _ = store.list_models(ModelQuery(project_ids=None, name="m1", limit=100))
    assert {m.name for m in named} == {"m1"} and len(named) == 8
    assert store.list_models(ModelQuery(project_ids=(), limit=5))[0] == []


def test_uploading_models_are_not_listed_as_ready(store: SqlMetadataStore) -> None:
    pid = _project(store)
    ready = _model(store, pid, "a")
    pending = store.create_model(
        dataclasses.replace(
            NewModel(
                id=ids.model_id(),
                project_id=pid,
                name="b",
                type="Custom",
                summary={},
                notes="",
                tags=(),
                metadata={},
                dataset_ref=None,
                source="upload",
                created_at=NOW,
                created_by="t",
                expires_at=NOW - timedelta(seconds=1),
                files=(),
            )
        )
    )
    listed, _ = store.list_models(ModelQuery(project_ids=(pid,)))
    assert [m.id for m in listed] == [ready.id]
    assert store.expired_uploads(datetime.now(UTC)) == [pending.id]


def test_tags_files_and_delete(store: SqlMetadataStore) -> None:
    pid = _project(store)
    m = _model(store, pid, "a", tags=("x", "y"), files=3)
    store.set_model_tags(m.id, ["z", "x"])
    got = store.get_model(m.id, with_files=True)
    assert got is not None and got.tags == ("x", "z") and got.files is not None and len(got.files) == 3
    assert got.created_at == NOW and got.summary == {"acc": 0.5}
    store.delete_model(m.id)
    assert store.get_model(m.id) is None
    assert store.model_files(m.id) == []


def test_files_at_some_paths_and_the_manifest_sizes(store: SqlMetadataStore) -> None:
    pid = _project(store)
    m = _model(store, pid, "a", files=1203)  # more paths than one IN list of 500 holds
    other = _model(store, pid, "b", files=2)
    wanted = [f"f{i}.bin" for i in range(0, 1203, 2)] + ["f7.bin", "nothing.bin"]
    got = store.model_files_at(m.id, wanted)
    assert sorted(got) == sorted(set(wanted) - {"nothing.bin"})
    assert got["f1202.bin"] == ModelFile(path="f1202.bin", size=1202, sha256=f"{1202:064x}")
    assert store.model_files_at(m.id, []) == {} and store.model_files_at("nope", ["f1.bin"]) == {}
    assert store.manifest_sizes(m.id) == {f"{i:064x}": i for i in range(1203)}
    assert store.manifest_sizes(other.id) == {f"{i:064x}": i for i in range(2)}


def test_delete_project_removes_everything_in_it(store: SqlMetadataStore) -> None:
    pid = _project(store)
    keep = _project(store)
    m = _model(store, pid, "a", tags=("t",))
    kept = _model(store, keep, "a", tags=("t",))
    store.set_alias(Alias(pid, "a", "prod", m.id, NOW, "t"))
    store.create_key(ApiKey("ak1", "", "u", False, {pid: "viewer"}, NOW), "h" * 64)
    store.delete_project(pid)
    assert store.get_project(pid) is None and store.get_model(m.id) is None
    assert store.get_model(kept.id) is not None
    key = store.get_key("ak1")
    assert key is not None and key.key.roles == {}


def test_aliases_move_and_keep_history(store: SqlMetadataStore) -> None:
    pid = _project(store)
    a, b = _model(store, pid, "r"), _model(store, pid, "r")
    store.set_alias(Alias(pid, "r", "prod", a.id, NOW, "t"))
    store.set_alias(Alias(pid, "r", "prod", b.id, NOW, "t"))
    got = store.get_alias(pid, "r", "prod")
    assert got is not None and got.model_id == b.id
    assert [x.alias for x in store.list_aliases(pid)] == ["prod"]
    store.delete_alias(pid, "r", "prod", "t")
    assert store.get_alias(pid, "r", "prod") is None


def test_rename_takes_next_version_of_new_name(store: SqlMetadataStore) -> None:
    pid = _project(store)
    _model(store, pid, "new")
    m = _model(store, pid, "old")
    store.rename_model(m.id, "new")
    got = store.get_model(m.id)
    assert got is not None and (got.name, got.version) == ("new", 2)


def test_keys_by_hash(store: SqlMetadataStore) -> None:
    pid = _project(store)
    store.create_key(ApiKey("ak2", "n", "u", False, {pid: "editor"}, NOW), "a" * 64)
    found = store.find_key_by_hash("a" * 64)
    assert found is not None and found.key.roles == {pid: "editor"}
    assert store.find_key_by_hash("b" * 64) is None
    store.grant_role("ak2", pid, "admin")
    store.revoke_key("ak2", NOW)
    key = store.get_key("ak2")
    assert key is not None and key.key.revoked and key.key.roles == {pid: "admin"}
    assert [k.id for k in store.list_keys(pid)] == ["ak2"]


def test_a_full_database_disk_is_storage_full_and_changes_nothing(tmp_path) -> None:
    """SQLITE_FULL (here from a page limit; a full disk gives the same error) is the documented
    storage_full error, not an unexpected one, and the write that met it left nothing behind."""
    store = SqlMetadataStore(f"sqlite:///{tmp_path / 'full.db'}")
    store.migrate()
    _project(store)

    @event.listens_for(store.engine, "connect")
    def _limit(dbapi_conn, _record) -> None:
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    store.engine.dispose()  # new connections, each held to the pages the database has now
    made = ["p"]
    try:
        with pytest.raises(StorageFull, match="disk is full") as caught:
            for i in range(200):
                name = f"p{i}" + "x" * 2000
                _project(store, name)
                made.append(name)
        assert "Free space on the disk" in (caught.value.hint or "")
        assert sorted(p.name for p in store.list_projects(None)) == sorted(made)
    finally:
        store.close()


def test_fsck_forgets_a_blob_only_if_untouched_since_it_was_found_damaged(store: SqlMetadataStore) -> None:
    """Between fsck finding a blob damaged and repairing it, the collector may remove it and an upload
    publish it again (good bytes, a new row), or an upload may touch it: then it is left alone."""
    sha = "ab" * 32
    with store.publishing_blob(sha, 10):
        pass
    ((_, _, touched),) = [row for row in store.blob_index() if row[0] == sha]
    with store.publishing_blob(sha, 10):  # published again since
        pass
    with store.forgetting_blob(sha, touched) as gone:
        assert not gone
    assert store.stored_blobs([sha]) == {sha: 10}
    ((_, _, touched),) = [row for row in store.blob_index() if row[0] == sha]
    assert store.blob_touches([sha, "cd" * 32]) == {sha: touched}
    with store.forgetting_blob(sha, touched) as gone:
        assert gone
    assert store.stored_blobs([sha]) == {}


def test_servers_started_together_migrate_one_after_the_other(database_url: str) -> None:
    """Replicas started at once on a new database all ran the migrations at the same time, and all
    but one failed (PostgreSQL: duplicate key in pg_type, as they created the same tables). Each
    starts in a process of its own, as replicas do (Alembic's context is one per process)."""
    script = "import sys; from modeldepot.metadata import SqlMetadataStore; SqlMetadataStore(sys.argv[1]).migrate()"
    starts = [
        subprocess.Popen([sys.executable, "-c", script, database_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    failed = [err for proc in starts if (err := proc.communicate(timeout=120)[1]) and proc.returncode]
    if database_url.startswith("postgresql"):
        assert failed == []
    store = SqlMetadataStore(database_url)
    store.migrate()
    assert store.list_projects(None) == []
    store.close()


def test_the_same_new_alias_set_from_many_places_at_once(store: SqlMetadataStore) -> None:
    """Replicas creating the same alias at once each looked, found none and inserted: all but one
    failed with a duplicate key (a 500). Each alias now ends on one of the models, with no error."""
    import threading

    pid = _project(store)
    models = [_model(store, pid, "r") for _ in range(4)]
    start = threading.Barrier(len(models))
    errors: list[BaseException] = []

    def set_all(model_id: str) -> None:
        start.wait()
        for i in range(15):
            try:
                store.set_alias(Alias(pid, "r", f"stage{i}", model_id, NOW, "t"))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=set_all, args=(m.id,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i in range(15):
        got = store.get_alias(pid, "r", f"stage{i}")
        assert got is not None and got.model_id in {m.id for m in models}


def _uploading(pid: str, key: str, by: str = "t") -> NewModel:
    files = (ModelFile(path="w.bin", size=1, sha256="ab" * 32),)
    return _new_model(pid, "m", created_by=by, files=files, upload_key=key)


def test_one_uploading_model_per_upload_key(store: SqlMetadataStore) -> None:
    """The same upload started on several replicas at once made as many uploading models, each
    taking a version. Now the second start is told which model the first made."""
    from modeldepot.services.ports import UploadInProgress

    pid = _project(store)
    first = store.create_model(_uploading(pid, "cd" * 32))
    with pytest.raises(UploadInProgress) as raced:
        store.create_model(_uploading(pid, "cd" * 32))
    assert raced.value.model_id == first.id
    other_user = store.create_model(_uploading(pid, "cd" * 32, by="u"))  # keys are per creator
    store.update_model(first.id, state="ready", expires_at=None)
    again = store.create_model(_uploading(pid, "cd" * 32))  # only uploading models hold their key
    assert [first.version, other_user.version, again.version] == [1, 2, 3]
    store.release_upload_key(again.id)
    assert store.find_upload(pid, "cd" * 32, "t") is None
    store.create_model(_uploading(pid, "cd" * 32))


def test_the_database_itself_keeps_an_upload_key_to_one_uploading_model(store: SqlMetadataStore) -> None:
    """What holds when replicas check at the same instant and both find nothing: the unique index."""
    from sqlalchemy import exc, insert

    from modeldepot.metadata import tables as t

    pid = _project(store)
    row = {
        "project_id": pid, "name": "m", "type": "Custom", "state": "uploading", "summary": {},
        "notes": "", "metadata": {}, "source": "upload", "created_at": NOW, "created_by": "t",
        "size": 1, "file_count": 1, "upload_key": "ef" * 32,
    }  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(t.models).values(id=ids.model_id(), version=1, **row))
    with pytest.raises(exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(insert(t.models).values(id=ids.model_id(), version=2, **row))
    with store.engine.begin() as conn:  # a ready model keeps its key, out of the way
        conn.execute(insert(t.models).values(id=ids.model_id(), version=2, **(row | {"state": "ready"})))


def test_upgrading_keeps_the_newest_of_uploads_that_share_a_key(database_url: str) -> None:
    """Databases that the race filled with duplicates upgrade: the newest keeps the key."""
    from sqlalchemy import insert, select

    from modeldepot.metadata import tables as t

    store = SqlMetadataStore(database_url)
    try:
        store.migrate("0003")
        made = [ids.model_id() for _ in range(4)]
        with store.engine.begin() as conn:
            conn.execute(insert(t.projects).values(id="pr0000001", name="p", created_at=NOW, created_by="t"))
            for version, mid in enumerate(made, 1):
                conn.execute(
                    insert(t.models).values(
                        id=mid, project_id="pr0000001", name="m", version=version, type="Custom",
                        state="ready" if version == 1 else "uploading", summary={}, notes="",
                        metadata={}, source="upload", created_at=NOW, created_by="t", size=1,
                        file_count=1, upload_key="ab" * 32,
                    )
                )  # fmt: skip
        store.migrate()
        with store.engine.connect() as conn:
            keys = dict(conn.execute(select(t.models.c.id, t.models.c.upload_key)).all())
        assert keys == {made[0]: "ab" * 32, made[1]: None, made[2]: None, made[3]: "ab" * 32}
        assert store.find_upload("pr0000001", "ab" * 32, "t") == made[3]
    finally:
        store.close()


def test_replicas_starting_together_make_one_bootstrap_key(database_url: str) -> None:
    """Each looked for a key, found none and made one: two admin keys, or, given the same
    MODELDEPOT_BOOTSTRAP_ADMIN_KEY, all but one failing to start on its hash (a duplicate key)."""
    import threading

    from modeldepot.services.auth import AuthService

    first = SqlMetadataStore(database_url)
    first.migrate()
    stores = [first] + [SqlMetadataStore(database_url) for _ in range(3)]  # an engine each, as replicas
    start = threading.Barrier(len(stores))
    made: list[object] = []
    errors: list[BaseException] = []

    def bootstrap(store: SqlMetadataStore) -> None:
        start.wait()
        try:
            made.append(AuthService(store).bootstrap("md_the_same_bootstrap_secret"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bootstrap, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len([m for m in made if m is not None]) == 1
        assert first.count_keys() == 1
        assert AuthService(first).bootstrap(None) is None  # and never again
    finally:
        for store in stores:
            store.close()
