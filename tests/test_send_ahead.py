"""Large files are sent while they are hashed: staging areas opened before the sha256 is known.

The client opens a staging area per large file (``POST …/stagings``), sends its parts while it hashes,
then names the areas in its manifest (``staged``): a blob the server still needs takes its area over
with the parts in it; content the server already has stops the sending and the area is dropped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from modeldepot import Client
from modeldepot.client import hashcache
from modeldepot.metadata import tables

from .conftest import RunningServer, make_settings, running_server, write_tree

MiB = 1024 * 1024


@pytest.fixture(params=["data-plane", "api-only"])
def small_parts(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """Parts of 1 MiB, through the data plane or (``api-only``) through the API."""
    data_port = -1 if request.param == "api-only" else None
    settings = make_settings(database_url, tmp_path / "data", upload_part_size=MiB, data_port=data_port)
    with running_server(settings) as running:
        yield running


class Recorder:
    """A progress report that keeps the phases and the bytes reported in each."""

    def __init__(self) -> None:
        self.phase = ""
        self.phases: list[str] = []
        self.bytes: dict[str, int] = {}

    def start(self, phase: str, total_bytes: int) -> None:
        self.phase = phase
        self.phases.append(phase)

    def advance(self, n: int) -> None:
        self.bytes[self.phase] = self.bytes.get(self.phase, 0) + n

    def finish(self) -> None:
        pass


class StopAfter(Recorder):
    """Interrupts the upload (as Ctrl-C would) once ``limit`` bytes went out."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def advance(self, n: int) -> None:
        super().advance(n)
        if self.phase == "uploading" and self.bytes[self.phase] >= self.limit:
            raise KeyboardInterrupt


def _open_stagings(server: RunningServer) -> int:
    engine = server.app.state.store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tables.stagings)) or 0)


def _blob_stagings(server: RunningServer) -> list[str]:
    return list(server.app.state.services.models.blobs.staging_ids())  # type: ignore[attr-defined]


def _pending_staging(server: RunningServer) -> str:
    engine = server.app.state.store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return str(
            conn.scalar(
                select(tables.pending_blobs.c.staging_id).where(
                    tables.pending_blobs.c.staging_id.is_not(None)
                )
            )
        )


def _expire(server: RunningServer, staging_id: str) -> None:
    """Let a staging area's expiry pass (as if a day went by)."""
    engine = server.app.state.store.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            update(tables.stagings)
            .where(tables.stagings.c.id == staging_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _sender(server: RunningServer, api_key: str | None = None) -> Client:
    client = server.client(api_key)
    client.send_while_hashing = MiB  # files over 1 MiB go out while they are hashed
    client.hash_cache_path = None
    return client


def test_parts_go_out_while_the_file_is_hashed_and_are_not_sent_again(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    files = {"big.bin": os.urandom(5 * MiB + 123), "other.bin": os.urandom(2 * MiB), "small.txt": b"s" * 100}
    src = write_tree(tmp_path / "m", files)
    with _sender(small_parts) as client:
        project = client.create_project("p").id
        seen = Recorder()
        model = client.upload(src, project=project, name="m", progress=seen)
        assert model.state == "ready" and model.file_count == 3
        # No separate hashing phase, and every byte went out exactly once.
        assert "hashing" not in seen.phases
        assert seen.bytes.get("uploading") == sum(len(b) for b in files.values())
        assert _open_stagings(small_parts) == 0 and _blob_stagings(small_parts) == []
        out = tmp_path / "out"
        client.download(model.id, out)
        for name, data in files.items():
            assert (out / name).read_bytes() == data


def test_content_the_server_has_stops_the_sending_and_drops_the_area(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB)
    src = write_tree(tmp_path / "m", {"w.bin": data})
    with _sender(small_parts) as client:
        project = client.create_project("p").id
        first = client.upload(src, project=project, name="a")
        again = client.upload(src, project=project, name="b")  # not cached: sent ahead, then not needed
        assert again.state == "ready" and again.files is not None
        assert again.files[0].sha256 == first.files[0].sha256 == hashlib.sha256(data).hexdigest()
        assert _open_stagings(small_parts) == 0 and _blob_stagings(small_parts) == []
        out = tmp_path / "out"
        client.download(again.id, out)
        assert (out / "w.bin").read_bytes() == data


def test_two_files_with_the_same_content_share_one_area(small_parts: RunningServer, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    src = write_tree(tmp_path / "m", {"a.bin": data, "b/a-copy.bin": data})
    with _sender(small_parts) as client:
        project = client.create_project("p").id
        model = client.upload(src, project=project, name="m")
        assert model.state == "ready" and model.file_count == 2
        assert _open_stagings(small_parts) == 0 and _blob_stagings(small_parts) == []


def test_an_upload_interrupted_while_sending_ahead_resumes(
    small_parts: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashcache, "RACY_SECONDS", -5.0)  # trust digests of files written just now
    data = os.urandom(6 * MiB)
    src = write_tree(tmp_path / "m", {"w.bin": data})
    cache = tmp_path / "hashes.db"
    with small_parts.client() as client:
        client.send_while_hashing, client.hash_cache_path, client.parallel = MiB, cache, 1
        project = client.create_project("p").id
        with pytest.raises(KeyboardInterrupt):
            client.upload(src, project=project, name="m", progress=StopAfter(2 * MiB + 1))
        (pending,) = client.list_models(project=project, state="uploading").items
    with small_parts.client() as client:
        client.send_while_hashing, client.hash_cache_path = MiB, cache
        seen = Recorder()
        model = client.upload(src, project=project, name="m", progress=seen)
        assert model.id == pending.id and model.state == "ready" and model.version == 1
        assert "hashing" in seen.phases  # the digest came from the cache: nothing was sent ahead
        assert seen.bytes.get("uploading", 0) <= 4 * MiB  # the parts that arrived were not sent again
        assert _open_stagings(small_parts) == 0 and _blob_stagings(small_parts) == []
        out = tmp_path / "out"
        client.download(model.id, out)
        assert (out / "w.bin").read_bytes() == data


def _manifest(data: bytes, staged: dict[str, str] | None = None, name: str = "m") -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "files": [{"path": "w.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
    }
    if staged is not None:
        body["staged"] = staged
    return body


def test_a_named_area_is_taken_over_with_the_parts_it_holds(small_parts: RunningServer) -> None:
    data = os.urandom(3 * MiB + 7)
    digest = hashlib.sha256(data).hexdigest()
    with small_parts.http() as http:
        project = http.post("/projects", json={"name": "p"}).json()["id"]
        area = http.post(f"/projects/{project}/stagings", json={"size": len(data)}).json()
        assert area["part_size"] == MiB and [p["size"] for p in area["parts"]] == [MiB, MiB, MiB, 7]
        assert area["in_order"] is True  # the local store hashes parts that come in order as they arrive
        for p in area["parts"][:2]:
            assert http.put(p["url"], content=data[p["offset"] : p["offset"] + p["size"]]).status_code == 204
        plan = http.post(f"/projects/{project}/models", json=_manifest(data, {digest: area["id"]})).json()
        (missing,) = plan["missing"]
        parts = http.post(missing["parts_url"]).json()
        assert [p["received"] for p in parts["parts"]] == [True, True, False, False] and parts["in_order"]
        # A part already on its way to the area's own URL still lands.
        late = area["parts"][2]
        assert (
            http.put(late["url"], content=data[late["offset"] : late["offset"] + late["size"]]).status_code
            == 204
        )
        last = parts["parts"][3]
        assert http.put(last["url"], content=data[last["offset"] :]).status_code == 204
        assert http.post(parts["complete_url"]).status_code == 204
        model = http.post(f"/models/{plan['model']['id']}/commit").json()
        assert model["state"] == "ready"
        assert http.get(f"/models/{model['id']}/files/w.bin").content == data
        assert http.delete(area["url"]).status_code == 404  # taken over: no longer a staging area
        assert _open_stagings(small_parts) == 0


def test_wrong_bytes_sent_ahead_are_caught_and_discarded(small_parts: RunningServer) -> None:
    data = os.urandom(2 * MiB + 1)
    digest = hashlib.sha256(data).hexdigest()
    with small_parts.http() as http:
        project = http.post("/projects", json={"name": "p"}).json()["id"]
        area = http.post(f"/projects/{project}/stagings", json={"size": len(data)}).json()
        for p in area["parts"]:
            body = bytearray(data[p["offset"] : p["offset"] + p["size"]])
            if p["number"] == 1:
                body[3] ^= 0x01
            assert http.put(p["url"], content=bytes(body)).status_code == 204
        plan = http.post(f"/projects/{project}/models", json=_manifest(data, {digest: area["id"]})).json()
        parts = http.post(plan["missing"][0]["parts_url"]).json()
        bad = http.post(parts["complete_url"])
        assert bad.status_code == 422 and "discarded" in bad.json()["detail"]
        fresh = http.post(plan["missing"][0]["parts_url"]).json()
        assert not any(p["received"] for p in fresh["parts"])
        assert http.get(f"/models/{plan['model']['id']}").json()["state"] == "uploading"


def test_stagings_are_checked_and_private(small_parts: RunningServer) -> None:
    data = os.urandom(2 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    with small_parts.client() as admin:
        project = admin.create_project("p").id
        alice = admin.create_key(project=project, role="editor", name="alice", user="alice").secret
        bob = admin.create_key(project=project, role="editor", name="bob", user="bob").secret
        viewer = admin.create_key(project=project, role="viewer", name="v", user="vera").secret
    with small_parts.http(alice) as a, small_parts.http(bob) as b, small_parts.http(viewer) as v:
        for size in (0, -5, "12", True, None):
            bad = a.post(f"/projects/{project}/stagings", json={"size": size})
            assert bad.status_code in (400, 422), (size, bad.text)
            assert "size" in bad.text
        assert a.post(f"/projects/{project}/stagings", json={"size": 5, "extra": 1}).status_code == 422
        huge = a.post(f"/projects/{project}/stagings", json={"size": 2**62})  # past ext4's 16 TiB
        assert huge.status_code == 422 and "larger than" in huge.json()["detail"], huge.text
        assert _blob_stagings(small_parts) == [] and _open_stagings(small_parts) == 0
        big = {"path": "huge.bin", "size": 2**62, "sha256": "ab" * 32}  # so too a blob's own parts
        plan = a.post(f"/projects/{project}/models", json={"name": "h", "files": [big]}).json()
        refused = a.post(plan["missing"][0]["parts_url"])
        assert refused.status_code == 422 and "larger than" in refused.json()["detail"], refused.text
        assert _blob_stagings(small_parts) == []
        assert a.post("/projects/prnope/stagings", json={"size": 5}).status_code == 404
        assert v.post(f"/projects/{project}/stagings", json={"size": 5}).status_code == 403
        area = a.post(f"/projects/{project}/stagings", json={"size": len(data)}).json()
        # Bob (another user, same project) cannot fill, cancel or take over Alice's area.
        assert b.delete(area["url"]).status_code == 404
        assert b.put(f"/stagings/{area['id']}/parts/1", content=data[:MiB]).status_code == 404
        plan = b.post(f"/projects/{project}/models", json=_manifest(data, {digest: area["id"]})).json()
        parts = b.post(plan["missing"][0]["parts_url"]).json()
        assert not any(p["received"] for p in parts["parts"])
        assert _open_stagings(small_parts) == 1
        # Malformed names are refused and change nothing.
        for staged in ({"nothex": area["id"]}, {digest: 5}, {digest: ""}, ["x"]):
            refused = a.post(f"/projects/{project}/models", json=_manifest(data, staged, name="n"))  # type: ignore[arg-type]
            assert refused.status_code in (400, 422), (staged, refused.text)
        assert a.put(f"/stagings/{area['id']}/parts/9", content=b"x").status_code in (400, 422, 404)
        # An area named for content of another size is not used, and dropped.
        other = os.urandom(MiB + 5)
        wrong = a.post(
            f"/projects/{project}/models",
            json=_manifest(other, {hashlib.sha256(other).hexdigest(): area["id"]}, name="o"),
        ).json()
        assert wrong["missing"] and _open_stagings(small_parts) == 0
        assert a.delete(area["url"]).status_code == 404
        # Alice may cancel her own.
        mine = a.post(f"/projects/{project}/stagings", json={"size": 10}).json()
        assert a.delete(mine["url"]).status_code == 204
        assert _open_stagings(small_parts) == 0
        # What is left in the blob store is Bob's upload's own staging area, and nothing else.
        assert _blob_stagings(small_parts) == [_pending_staging(small_parts)]


def test_areas_nobody_named_expire(small_parts: RunningServer) -> None:
    with small_parts.http() as http:
        project = http.post("/projects", json={"name": "p"}).json()["id"]
        area = http.post(f"/projects/{project}/stagings", json={"size": 3 * MiB}).json()
        p = area["parts"][0]
        assert http.put(p["url"], content=os.urandom(MiB)).status_code == 204
        kept = http.post(f"/projects/{project}/stagings", json={"size": 3 * MiB}).json()
        _expire(small_parts, area["id"])
        report = http.post("/admin/gc", json={}).json()
        assert report["blobs_deleted"] == 0
        assert _open_stagings(small_parts) == 1 and _blob_stagings(small_parts) == [kept["id"]]


def test_gc_removes_staging_areas_nothing_names_once_idle_for_an_hour(small_parts: RunningServer) -> None:
    blobs = small_parts.app.state.services.models.blobs  # type: ignore[attr-defined]
    data = os.urandom(2 * MiB)
    with small_parts.http() as http:
        project = http.post("/projects", json={"name": "p"}).json()["id"]
        named = http.post(f"/projects/{project}/stagings", json={"size": 3 * MiB}).json()["id"]
        plan = http.post(f"/projects/{project}/models", json=_manifest(data)).json()
        pending = http.post(plan["missing"][0]["parts_url"]).json()  # opens the blob's own area
        assert pending["parts"]
        crashed = blobs.begin_staging(MiB)  # as if the server died before recording it
        fresh = blobs.begin_staging(MiB)
        old = time.time() - 2 * 3600
        for staging_id in blobs.staging_ids():
            if staging_id != fresh:
                area = blobs.root / "staging" / staging_id
                for path in (area, area / "parts", area / "data"):
                    os.utime(path, (old, old))
        dry = http.post("/admin/gc", json={"dry_run": True}).json()
        assert dry["orphan_stagings_removed"] == 1 and crashed in blobs.staging_ids()
        report = http.post("/admin/gc", json={}).json()
        assert report["orphan_stagings_removed"] == 1
        left = set(blobs.staging_ids())
        assert crashed not in left and {named, fresh, _pending_staging(small_parts)} <= left
        assert _open_stagings(small_parts) == 1
        blobs.abort_staging(fresh)


# -- an upload cut off before its manifest ------------------------------------------------------------


def test_an_area_nobody_named_yet_lists_what_arrived_to_its_own_key_only(small_parts: RunningServer) -> None:
    data = os.urandom(3 * MiB + 7)
    with small_parts.client() as admin:
        project = admin.create_project("p").id
        alice = admin.create_key(project=project, role="editor", name="alice", user="alice").secret
        bob = admin.create_key(project=project, role="editor", name="bob", user="bob").secret
    with small_parts.http(alice) as a, small_parts.http(bob) as b:
        area = a.post(f"/projects/{project}/stagings", json={"size": len(data)}).json()
        assert not any(p["received"] for p in area["parts"])
        sent = area["parts"][1]
        assert a.put(sent["url"], content=data[sent["offset"] : sent["offset"] + MiB]).status_code == 204
        later = a.post(f"/stagings/{area['id']}/parts")
        assert later.status_code == 200, later.text
        again = later.json()
        assert [p["received"] for p in again["parts"]] == [False, True, False, False]
        assert {k: again[k] for k in ("id", "size", "part_size", "in_order", "url")} == {
            k: area[k] for k in ("id", "size", "part_size", "in_order", "url")
        }
        assert again["expires_at"] >= area["expires_at"]  # the full expiry again
        # Sent now to the fresh URLs, the rest completes the area, which an upload then takes over.
        for p in again["parts"]:
            if not p["received"]:
                body = data[p["offset"] : p["offset"] + p["size"]]
                assert a.put(p["url"], content=body).status_code == 204
        digest = hashlib.sha256(data).hexdigest()
        # Another key never sees it.
        missing = b.post(f"/stagings/{area['id']}/parts")
        assert missing.status_code == 404 and "not found" in missing.json()["detail"]
        plan = a.post(f"/projects/{project}/models", json=_manifest(data, {digest: area["id"]})).json()
        parts = a.post(plan["missing"][0]["parts_url"]).json()
        assert all(p["received"] for p in parts["parts"])
        # Taken over: no longer a staging area of its own.
        assert a.post(f"/stagings/{area['id']}/parts").status_code == 404
        assert a.post(parts["complete_url"]).status_code == 204
        assert a.post(f"/models/{plan['model']['id']}/commit").json()["state"] == "ready"
        # An expired area is not handed out again (the collector removes it), nor a made-up one.
        old = a.post(f"/projects/{project}/stagings", json={"size": 5}).json()
        _expire(small_parts, old["id"])
        assert a.post(f"/stagings/{old['id']}/parts").status_code == 404
        assert a.post("/stagings/0123456789abcdef01234567/parts").status_code == 404
        assert a.post("/stagings/..%2F..%2Fetc/parts").status_code == 404


class StopDuringSendAhead(Recorder):
    """Presses Ctrl-C (SIGINT to the main thread, which is hashing the files) once ``parts`` parts of
    1 MiB went out ahead; keeps every amount reported."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        self.parts = parts
        self.calls: list[int] = []
        self.pressed = False

    def advance(self, n: int) -> None:
        super().advance(n)
        self.calls.append(n)
        if not self.pressed and self.bytes.get("uploading", 0) >= self.parts * MiB:
            self.pressed = True
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def _cut_off_while_hashing(server: RunningServer, tmp_path: Path, data: bytes) -> tuple[Path, Path, str, str]:
    """Upload ``data`` (large enough that hashing it takes far longer than sending three 1 MiB
    parts) and press Ctrl-C once three parts went out ahead; (source, digest cache, project, area)."""
    src = write_tree(tmp_path / "m", {"w.bin": data})
    cache = tmp_path / "hashes.db"
    with server.client() as client:
        client.send_while_hashing, client.hash_cache_path, client.parallel = MiB, cache, 1
        project = client.create_project("p").id
        with pytest.raises(KeyboardInterrupt):
            client.upload(src, project=project, name="m", progress=StopDuringSendAhead(3))
        assert not client.list_models(project=project).items  # cut off before the manifest
    (area,) = server.app.state.services.models.blobs.staging_ids()  # type: ignore[attr-defined]
    return src, cache, project, area


def test_an_upload_cut_off_before_its_manifest_resumes_the_parts_it_sent_ahead(
    small_parts: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted while the files were still being hashed (before any model exists), the upload
    keeps its staging areas, and running it again sends only the parts that did not arrive."""
    monkeypatch.setattr(hashcache, "RACY_SECONDS", -5.0)  # trust entries for files written just now
    data = os.urandom(160 * MiB + 3)
    src, cache, project, area = _cut_off_while_hashing(small_parts, tmp_path, data)
    blobs = small_parts.app.state.services.models.blobs  # type: ignore[attr-defined]
    arrived = sum(blobs.received_parts(area).values())
    assert arrived >= 3 * MiB and _open_stagings(small_parts) == 1
    with small_parts.client() as client:
        client.send_while_hashing, client.hash_cache_path = MiB, cache
        again = StopDuringSendAhead(10**6)  # never presses
        model = client.upload(src, project=project, name="m", progress=again)
        assert model.state == "ready" and model.version == 1
        # The bar starts at what arrived before; only the rest went out.
        assert again.calls[0] == arrived and sum(again.calls[1:]) == len(data) - arrived
        assert _open_stagings(small_parts) == 0 and _blob_stagings(small_parts) == []
        out = tmp_path / "out"
        client.download(model.id, out)
        assert (out / "w.bin").read_bytes() == data
    # Nothing is left to resume: the area was named, and forgotten.
    with small_parts.client() as client:
        client.hash_cache_path = cache
        cached = client.hash_cache()
        assert cached is not None and cached.area((src / "w.bin").stat(), client.url, project) is None


def test_a_file_changed_since_it_was_cut_off_is_sent_again_whole_and_its_old_area_dropped(
    small_parts: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashcache, "RACY_SECONDS", -5.0)
    old = os.urandom(160 * MiB)
    src, cache, project, _ = _cut_off_while_hashing(small_parts, tmp_path, old)
    new = bytearray(old)
    new[5] ^= 0xFF  # in the first part, which arrived
    (src / "w.bin").write_bytes(new)
    with small_parts.client() as client:
        client.send_while_hashing, client.hash_cache_path = MiB, cache
        again = StopDuringSendAhead(10**6)
        model = client.upload(src, project=project, name="m", progress=again)
        assert model.state == "ready" and sum(again.calls) == len(new)  # every byte sent again
        assert _open_stagings(small_parts) == 0 and _blob_stagings(small_parts) == []  # the old one too
        out = tmp_path / "out"
        client.download(model.id, out)
        assert (out / "w.bin").read_bytes() == new


@pytest.mark.xfail(
    strict=True,
    reason="an area whose POST …/stagings answer never reached the SDK cannot be named by the rerun:"
    " needs a client token on POST …/stagings (or a list of the key's areas) in the API",
)
def test_an_area_opened_by_a_run_killed_before_it_heard_the_answer_is_not_left_behind(
    small_parts: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed (SIGKILL) after the server opened its staging area but before the answer was
    read and recorded in the digest cache: the rerun must reuse or drop that area."""
    monkeypatch.setattr(hashcache, "RACY_SECONDS", -5.0)
    data = os.urandom(3 * MiB + 5)
    src = write_tree(tmp_path / "m", {"w.bin": data})
    cache = tmp_path / "hashes.db"
    with small_parts.client() as client:
        project = client.create_project("p").id
        # What the killed run's request did on the server: an area, with no part (parts go out
        # only once the area is recorded), that no digest cache knows.
        client._json("POST", f"/projects/{project}/stagings", json={"size": len(data)})
    assert _open_stagings(small_parts) == 1
    with small_parts.client() as client:
        client.send_while_hashing, client.hash_cache_path = MiB, cache
        model = client.upload(src, project=project, name="m")
        assert model.state == "ready"
    assert _open_stagings(small_parts) == 0 and _blob_stagings(small_parts) == []
