"""Transfers: parts, resume, integrity, dedup under concurrency, garbage collection, archives, ranges."""

from __future__ import annotations

import hashlib
import os
import signal
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldepot import Client, Conflict, IntegrityError, InvalidInput
from modeldepot.client.hashcache import HashCache

from .conftest import RunningServer, make_settings, running_server, write_tree
from .test_download_dest import partial_of

MiB = 1024 * 1024


@pytest.fixture(params=["data-plane", "api-only"])
def small_parts(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """A server that sends files over 1 MiB in 1 MiB parts, and collects garbage without grace; large
    transfers go through its data plane, or (``api-only``, --data-port -1) through the API."""
    data_port = -1 if request.param == "api-only" else None
    settings = make_settings(
        database_url, tmp_path / "data", upload_part_size=MiB, gc_grace_seconds=0, data_port=data_port
    )
    with running_server(settings) as running:
        yield running


def _start(http: Any, project: str, data: bytes, path: str = "w.bin") -> tuple[str, dict[str, Any]]:
    digest = hashlib.sha256(data).hexdigest()
    plan = http.post(
        f"/projects/{project}/models",
        json={"name": "big", "files": [{"path": path, "size": len(data), "sha256": digest}]},
    ).json()
    return plan["model"]["id"], plan["missing"][0]


def test_parts_in_any_order_never_asked_twice_and_verified_whole(small_parts: RunningServer) -> None:
    data = os.urandom(3 * MiB + 12345)
    with small_parts.client() as admin, small_parts.http() as http:
        project = admin.create_project("p").id
        mid, missing = _start(http, project, data)
        assert "parts_url" in missing and "url" not in missing
        plan = http.post(missing["parts_url"]).json()
        assert [p["size"] for p in plan["parts"]] == [MiB, MiB, MiB, 12345]
        for p in reversed(plan["parts"][1:]):
            body = data[p["offset"] : p["offset"] + p["size"]]
            assert http.put(p["url"], content=body).status_code == 204
        again = http.post(missing["parts_url"]).json()
        assert [p["received"] for p in again["parts"]] == [False, True, True, True]
        early = http.post(plan["complete_url"])
        assert early.status_code == 409 and early.json()["extra"]["missing_parts"] == [1]
        first = plan["parts"][0]
        wrong = http.put(first["url"], content=data[:MiB], headers={"X-Part-Sha256": "0" * 64})
        assert wrong.status_code == 422
        short = http.put(first["url"], content=data[:100])
        assert short.status_code == 422 and "expected" in short.json()["detail"]
        assert http.put(first["url"], content=data[:MiB]).status_code == 204
        assert http.post(plan["complete_url"]).status_code == 204
        model = http.post(f"/models/{mid}/commit").json()
        assert model["state"] == "ready"
        assert http.get(f"/models/{mid}/files/w.bin").content == data


def test_a_corrupt_part_is_caught_when_the_blob_completes(small_parts: RunningServer) -> None:
    data = os.urandom(2 * MiB + 1)
    with small_parts.client() as admin, small_parts.http() as http:
        project = admin.create_project("p").id
        mid, missing = _start(http, project, data)
        plan = http.post(missing["parts_url"]).json()
        for p in plan["parts"]:
            body = bytearray(data[p["offset"] : p["offset"] + p["size"]])
            if p["number"] == 2:
                body[7] ^= 0xFF  # flipped on the way: same size, wrong bytes
            http.put(p["url"], content=bytes(body)).raise_for_status()
        bad = http.post(plan["complete_url"])
        assert bad.status_code == 422 and bad.json()["code"] == "integrity_error"
        # The bad bytes are gone: every part must be sent again, and then it completes.
        fresh = http.post(missing["parts_url"]).json()
        assert not any(p["received"] for p in fresh["parts"])
        for p in fresh["parts"]:
            http.put(p["url"], content=data[p["offset"] : p["offset"] + p["size"]]).raise_for_status()
        assert http.post(fresh["complete_url"]).status_code == 204
        assert http.post(f"/models/{mid}/commit").json()["state"] == "ready"


class StopAfter:
    """A progress report that interrupts the upload once ``limit`` bytes were sent."""

    def __init__(self, limit: int):
        self.limit = limit
        self.phase = ""
        self.sent = 0
        self.totals: dict[str, int] = {}

    def start(self, phase: str, total_bytes: int) -> None:
        self.phase = phase
        self.totals[phase] = total_bytes

    def advance(self, n: int) -> None:
        if self.phase == "uploading":
            self.sent += n
            if self.sent >= self.limit:
                raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def test_an_interrupted_upload_resumes_without_resending(small_parts: RunningServer, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "m", {"big.bin": os.urandom(5 * MiB), "small.txt": b"s" * 100})
    with small_parts.client() as admin:
        admin.parallel = 1
        project = admin.create_project("p").id
        stop = StopAfter(2 * MiB + 1)
        with pytest.raises(KeyboardInterrupt):
            admin.upload(src, project=project, name="r", progress=stop)
        first_total = stop.totals["uploading"]
        pending = admin.list_models(project=project, state="uploading").items
        assert len(pending) == 1
        again = StopAfter(10**12)
        model = admin.upload(src, project=project, name="r", progress=again)
        assert model.id == pending[0].id and model.state == "ready" and model.version == 1
        assert again.totals["uploading"] < first_total - MiB  # the parts that arrived were not sent again
        out = tmp_path / "out"
        admin.download(model.id, out)
        assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


class CtrlCAfter(StopAfter):
    """Presses Ctrl-C (SIGINT to the main thread) once ``limit`` bytes went out or were hashed, and
    keeps counting what is reported after that."""

    def __init__(self, limit: int, phase: str = "uploading"):
        super().__init__(limit)
        self.watched = phase
        self.seen = 0
        self.pressed = False

    def advance(self, n: int) -> None:
        if self.phase == self.watched:
            self.seen += n
            if not self.pressed and self.seen >= self.limit:
                self.pressed = True
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def test_ctrl_c_stops_hashing_and_sending_at_once(small_parts: RunningServer, tmp_path: Path) -> None:
    """Ctrl-C comes back within a piece of work, not once every file is hashed or the blob whose parts
    are going out one after the other is sent whole."""
    data = os.urandom(96 * MiB)
    src = write_tree(tmp_path / "m", {"big.bin": data})
    with small_parts.client() as admin:
        admin.parallel = 1
        admin.send_while_hashing = 10**15  # hash first, then send (send-ahead has its own test)
        project = admin.create_project("p").id
        hashing = CtrlCAfter(8 * MiB, phase="hashing")
        with pytest.raises(KeyboardInterrupt):
            admin.upload(src, project=project, name="r", progress=hashing)
        assert hashing.seen < 32 * MiB, hashing.seen  # not the whole 96 MiB
        assert admin.list_models(project=project, state="any").items == ()
        sending = CtrlCAfter(3 * MiB)
        with pytest.raises(KeyboardInterrupt):
            admin.upload(src, project=project, name="r", progress=sending)
        assert sending.seen < 32 * MiB, sending.seen  # parts of 1 MiB: a few more at most
        (pending,) = admin.list_models(project=project, state="uploading").items
        model = admin.upload(src, project=project, name="r")
        assert model.id == pending.id and model.state == "ready"
        out = tmp_path / "out"
        admin.download(model.id, out)
        assert (out / "big.bin").read_bytes() == data


def test_the_same_content_under_two_models_at_once_then_gc(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    shared = os.urandom(3 * MiB)
    a = write_tree(tmp_path / "a", {"w.bin": shared, "only-a.bin": b"a" * 1000})
    b = write_tree(tmp_path / "b", {"w.bin": shared, "only-b.bin": b"b" * 1000})
    with small_parts.client() as admin:
        project = admin.create_project("p").id
        results: dict[str, Any] = {}

        def up(name: str, path: Path) -> None:
            with small_parts.client() as c:
                results[name] = c.upload(path, project=project, name=name)

        threads = [threading.Thread(target=up, args=(n, p)) for n, p in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["a"].state == results["b"].state == "ready"
        before = admin.gc(dry_run=True)
        assert before["blobs_deleted"] == 0
        admin.delete_model(results["a"].id)
        dry = admin.gc(dry_run=True)
        assert dry["blobs_deleted"] == 1 and dry["bytes_reclaimed"] == 1000
        done = admin.gc()
        assert (done["blobs_deleted"], done["bytes_reclaimed"]) == (1, 1000)
        assert admin.gc()["blobs_deleted"] == 0
        out = tmp_path / "out"
        admin.download(results["b"].id, out)
        assert (out / "w.bin").read_bytes() == shared
        assert admin.fsck()["ok"]


def test_gc_removes_temporary_files_a_killed_server_left_once_idle_for_an_hour(
    small_parts: RunningServer,
) -> None:
    """A whole blob is received into a temporary file; a server killed meanwhile never removes it
    (found by killing one during an upload: 4 files, 42 MB, kept for good). The collector does."""
    store = small_parts.app.state.services.models.blobs  # type: ignore[attr-defined]
    left, live = store.writer(), store.writer()  # ``left`` as if its server had died mid-upload
    left.write(b"x" * 5000)
    live.write(b"y" * 10)
    old = time.time() - 2 * 3600
    os.utime(left.tmp, (old, old))
    with small_parts.client() as admin:
        dry = admin.gc(dry_run=True)
        assert dry["temporary_files_removed"] == 1 and left.tmp.exists()
        assert admin.gc()["temporary_files_removed"] == 1
        assert not left.tmp.exists() and live.tmp.exists()
        live.commit_computed()  # the live writer was left alone
        assert admin.gc()["temporary_files_removed"] == 0
    left.abort()


def test_a_large_file_whose_bytes_no_longer_match_its_digest_is_named_in_the_error(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    """A large file that changed after it was hashed (here: a digest cache that says so) fails its
    check on the server, whose words name no file; the error names it, and no model is left."""
    f = write_tree(tmp_path / "m", {"w.bin": os.urandom(3 * MiB)}) / "w.bin"
    cache = HashCache(tmp_path / "hashes.db")
    st = f.stat()
    cache.put(st, hashlib.sha256(b"what it held before").hexdigest(), hashed_at=st.st_mtime + 5)
    cache.close()
    with Client(small_parts.url, small_parts.admin_key, hash_cache=tmp_path / "hashes.db") as c:
        project = c.create_project("p").id
        with pytest.raises(IntegrityError, match="changed while it was being uploaded") as caught:
            c.upload(f, project=project, name="m")
        assert str(f) in caught.value.detail and "parts add up to" in caught.value.detail
        assert c.list_models(project=project, state="any").items == ()


def test_a_failed_run_does_not_delete_the_model_another_run_of_the_same_upload_made(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    """The same upload run twice at once: the second resumes the first's model (same upload key).
    A run that failed deleted the model whatever made it, also one the other run had just
    committed ("Uploaded", and then gone). A run now deletes only a model it made, still uploading."""
    from modeldepot.client.uploader import upload_key

    f = write_tree(tmp_path / "m", {"w.bin": os.urandom(3 * MiB)}) / "w.bin"
    stale = hashlib.sha256(b"what it held before").hexdigest()
    cache = HashCache(tmp_path / "hashes.db")
    st = f.stat()
    cache.put(st, stale, hashed_at=st.st_mtime + 5)  # this run's files list, as the other run's
    cache.close()
    meta = {"name": "m", "type": None, "summary": None, "notes": None, "metadata": None, "dataset_ref": None}
    body = {**meta, "tags": [], "files": [{"path": "w.bin", "size": st.st_size, "sha256": stale}]}
    with small_parts.client() as admin, small_parts.http() as http:
        project = admin.create_project("p").id
        other = http.post(
            f"/projects/{project}/models", json=body | {"upload_key": upload_key(project, body)}
        ).json()
        c = Client(small_parts.url, small_parts.admin_key, hash_cache=tmp_path / "hashes.db")
        with c, pytest.raises(IntegrityError, match="changed while it was being uploaded"):
            c.upload(f, project=project, name="m")  # resumes the other run's model, then fails
        assert admin.get_model(other["model"]["id"]).state == "uploading"  # still the other run's
        c = Client(small_parts.url, small_parts.admin_key, hash_cache=tmp_path / "hashes.db")
        with c, pytest.raises(IntegrityError):
            c.upload(f, project=project, name="m2")  # a model of its own: removed when it fails
        assert [m.name for m in admin.list_models(project=project, state="any").items] == ["m"]


def test_the_same_upload_started_on_two_replicas_at_once_makes_one_model(
    database_url: str, tmp_path: Path
) -> None:
    """Replicas each looked for the upload key's model, found none and made one: 12 starts at once
    made 6-7 uploading models, each taking a version. Now they all get the one model, and the runs
    of the same upload through both replicas end with it ready."""
    from concurrent.futures import ThreadPoolExecutor

    from modeldepot.client.uploader import upload_key

    data = os.urandom(3 * MiB)  # in parts
    meta = {"name": "m", "type": None, "summary": None, "notes": None, "metadata": None, "dataset_ref": None}
    files = [{"path": "w.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    settings = make_settings(database_url, tmp_path / "data", upload_part_size=MiB)
    with running_server(settings) as one, running_server(settings) as two:
        with one.client() as admin:
            project = admin.create_project("p").id
        body = {**meta, "tags": [], "files": files}
        body["upload_key"] = upload_key(project, body)  # as the SDK makes it: its runs resume this
        start = threading.Barrier(12)

        def begin(replica: RunningServer) -> tuple[int, dict[str, Any]]:
            with replica.http() as http:
                start.wait()
                answer = http.post(f"/projects/{project}/models", json=body)
                return answer.status_code, answer.json()

        with ThreadPoolExecutor(12) as pool:
            started = list(pool.map(begin, [one, two] * 6))
        assert {code for code, _ in started} == {201}
        assert len({plan["model"]["id"] for _, plan in started}) == 1
        assert sorted(plan["resumed"] for _, plan in started) == [False] + [True] * 11
        with one.client() as admin:
            (model,) = admin.list_models(project=project, state="any").items
        assert model.version == 1 and model.state == "uploading"

        f = write_tree(tmp_path / "src", {"w.bin": data}) / "w.bin"

        def upload(run: int, replica: RunningServer) -> Any:
            with Client(replica.url, replica.admin_key, hash_cache=tmp_path / f"h{run}.db") as c:
                return c.upload(f, project=project, name="m")

        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(upload, (1, 2), (one, two)))
        # Each run resumed the model, or, if the other had already committed it, made the next version.
        assert model.id in {m.id for m in done}
        with one.client() as admin:
            assert admin.get_model(model.id).state == "ready"
            made = admin.list_models(project=project, state="any").items
            assert {m.id for m in made} == {m.id for m in done} and {m.state for m in made} == {"ready"}
            admin.download(model.id, tmp_path / "out")
        assert (tmp_path / "out" / "w.bin").read_bytes() == data


def test_committing_again_and_completing_a_received_blob_succeed(small_parts: RunningServer) -> None:
    """The answer to a commit or a completion can be lost, or another run of the same upload got
    there first: doing it again is no error, and sending a received blob says it was received."""
    data = os.urandom(3 * MiB)  # in parts
    with small_parts.client() as admin, small_parts.http() as http:
        project = admin.create_project("p").id
        model_id, missing = _start(http, project, data)
        plan = http.post(missing["parts_url"]).json()
        for p in plan["parts"]:
            assert http.put(p["url"], content=data[p["offset"] : p["offset"] + p["size"]]).status_code == 204
        for _ in range(2):
            assert http.post(plan["complete_url"]).status_code == 204
        again = http.post(missing["parts_url"])
        assert again.status_code == 409 and again.json()["extra"] == {"received": True}
        first = http.post(f"/models/{model_id}/commit")
        second = http.post(f"/models/{model_id}/commit")
        assert first.status_code == second.status_code == 200 and first.json() == second.json()
        assert admin.get_model(model_id).state == "ready"
        # A batch of small blobs from a run that had not seen the commit: read, dropped, no error.
        late = http.post(
            f"/models/{model_id}/blobs",
            content=f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode() + data,
            headers={"Content-Type": "application/x-modeldepot-blobs"},
        )
        assert late.status_code == 200 and late.json() == {"received": 0}


def test_content_an_upload_counts_on_is_not_collected(small_parts: RunningServer, tmp_path: Path) -> None:
    with small_parts.client() as admin, small_parts.http() as http:
        project = admin.create_project("p").id
        f = write_tree(tmp_path, {"w.bin": b"content"}) / "w.bin"
        old = admin.upload(f, project=project, name="old")
        digest = hashlib.sha256(b"content").hexdigest()
        plan = http.post(
            f"/projects/{project}/models",
            json={"name": "new", "files": [{"path": "w.bin", "size": 7, "sha256": digest}]},
        ).json()
        assert plan["missing"] == []  # readable through "old": nothing to send
        admin.delete_model(old.id)
        assert admin.gc(grace_seconds=0)["blobs_deleted"] == 0  # the upload in flight names it
        new_id = plan["model"]["id"]
        assert http.post(f"/models/{new_id}/commit").json()["state"] == "ready"
        assert http.get(f"/models/{new_id}/files/w.bin").content == b"content"


def test_fsck_finds_corrupt_and_missing_blobs(small_parts: RunningServer, tmp_path: Path) -> None:
    with small_parts.client() as admin:
        project = admin.create_project("p").id
        src = write_tree(tmp_path / "m", {"a.bin": b"a" * 100, "b.bin": b"b" * 100})
        admin.upload(src, project=project, name="m")
        store = small_parts.app.state.services.models.blobs  # type: ignore[attr-defined]
        a = hashlib.sha256(b"a" * 100).hexdigest()
        b = hashlib.sha256(b"b" * 100).hexdigest()
        store.local_path(a).write_bytes(b"x" * 100)
        store.local_path(b).unlink()
        report = admin.fsck()
        assert not report["ok"] and report["corrupt"] == [a] and report["missing"] == [b]


def test_fsck_repair_forgets_damaged_content_so_uploading_it_again_restores_every_model(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    """A damaged blob could not be mended: an upload of the same content found it "stored" and sent
    nothing. fsck names the files that have it; --repair forgets it, and one upload restores it."""
    weights = os.urandom(3 * MiB)  # in parts
    with small_parts.client() as admin:
        project = admin.create_project("p").id
        a = admin.upload(
            write_tree(tmp_path / "a", {"w.bin": weights, "a.txt": b"a"}), project=project, name="a"
        )
        b = admin.upload(write_tree(tmp_path / "b", {"copy.bin": weights}), project=project, name="b")
        store = small_parts.app.state.services.models.blobs  # type: ignore[attr-defined]
        sha = hashlib.sha256(weights).hexdigest()
        path = store.local_path(sha)
        path.write_bytes(b"x" + path.read_bytes()[1:])
        report = admin.fsck()
        assert report["corrupt"] == [sha] and report["forgotten"] == 0
        assert report["affected"] == sorted(
            [
                {"model_id": a.id, "path": "w.bin", "sha256": sha},
                {"model_id": b.id, "path": "copy.bin", "sha256": sha},
            ],
            key=lambda f: f["model_id"],
        )
        again = admin.upload(tmp_path / "b", project=project, name="b")  # found "stored": nothing sent
        with pytest.raises(IntegrityError):
            admin.download(again.id, tmp_path / "out0")
        repaired = admin.fsck(repair=True)
        assert repaired["forgotten"] == 1 and not repaired["ok"]
        assert store.local_path(sha) is None
        waiting = admin.fsck()  # nothing indexed is damaged now, but two files have no content
        assert (waiting["missing"], waiting["corrupt"], waiting["ok"]) == ([], [], False)
        assert sorted(f["model_id"] for f in waiting["affected"]) == sorted([a.id, b.id, again.id])
        admin.upload(tmp_path / "b", project=project, name="b")  # sends it again
        for model, name in ((a, "w.bin"), (b, "copy.bin")):
            admin.download(model.id, tmp_path / model.id)
            assert (tmp_path / model.id / name).read_bytes() == weights
        assert admin.fsck()["ok"]


def test_fsck_repair_refuses_when_most_of_the_index_is_missing(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    """A store that holds almost none of what the index names is more likely the wrong store (a
    replica started with another --blob-url) than a damaged one: forgetting would empty the index."""
    files = {f"f{i}.bin": os.urandom(100) for i in range(12)}
    with small_parts.client() as admin:
        project = admin.create_project("p").id
        admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
        store = small_parts.app.state.services.models.blobs  # type: ignore[attr-defined]
        for data in list(files.values())[:11]:
            store.local_path(hashlib.sha256(data).hexdigest()).unlink()
        with pytest.raises(Conflict, match="11 of the 12 blobs the index names are missing") as caught:
            admin.fsck(repair=True)
        assert "--blob-url" in (caught.value.hint or "")
        assert len(admin.fsck()["missing"]) == 11  # nothing was forgotten


def test_a_download_fetches_every_good_file_and_names_every_damaged_one(
    small_parts: RunningServer, tmp_path: Path
) -> None:
    """A download stopped at the first file that arrived corrupted: each damaged file took a run of
    its own to be named, and the good files after it were not fetched."""
    files = {
        "a.bin": os.urandom(1000),
        "big.bin": os.urandom(5 * MiB),
        "c.bin": os.urandom(1000),
        "d.bin": b"d",
    }
    with small_parts.client() as admin:
        project = admin.create_project("p").id
        model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
        store = small_parts.app.state.services.models.blobs  # type: ignore[attr-defined]
        for name in ("a.bin", "big.bin"):
            path = store.local_path(hashlib.sha256(files[name]).hexdigest())
            path.write_bytes(bytes([path.read_bytes()[0] ^ 1]) + path.read_bytes()[1:])
        out = tmp_path / "out"
        with pytest.raises(IntegrityError, match="2 files arrived corrupted") as caught:
            admin.download(model.id, out)
        assert "a.bin, big.bin" in caught.value.detail and "modeldepot fsck" in (caught.value.hint or "")
        assert sorted(p.name for p in out.iterdir()) == ["c.bin", "d.bin"]  # nothing damaged kept
        assert (out / "c.bin").read_bytes() == files["c.bin"]


def test_archives_stream_the_whole_model(admin: Client, project: str, tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "deep/ünï/b.bin": os.urandom(300_000), "empty": b""}
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="arch")
    admin.download_archive(model.id, tmp_path / "m.zip")
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        assert {n: z.read(n) for n in z.namelist()} == files
    admin.download_archive(model.id, tmp_path / "m.tar", format="tar")
    with tarfile.open(tmp_path / "m.tar") as t:
        got = {m.name: t.extractfile(m).read() for m in t.getmembers()}  # type: ignore[union-attr]
    assert got == files
    with pytest.raises(Exception, match="format"):
        admin.download_archive(model.id, tmp_path / "m.rar", format="rar")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ranges_at_odd_boundaries(server: RunningServer, admin: Client, project: str, tmp_path: Path) -> None:
    data = os.urandom(100_003)
    model = admin.upload(write_tree(tmp_path, {"w.bin": data}) / "w.bin", project=project, name="r")
    with server.http() as http:
        url = f"/models/{model.id}/files/w.bin"
        for start, end in [
            (0, 0),
            (1, 1),
            (0, 99_999),
            (65_535, 65_536),
            (100_002, 100_002),
            (99_000, 200_000),
        ]:
            r = http.get(url, headers={"Range": f"bytes={start}-{end}"})
            assert r.status_code == 206, (start, end)
            assert r.content == data[start : min(end, len(data) - 1) + 1]
        tail = http.get(url, headers={"Range": "bytes=-7"})
        assert tail.content == data[-7:]
        assert http.get(url, headers={"Range": "bytes=100003-"}).status_code == 416
        etag = http.get(url).headers["etag"]
        assert http.get(url, headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_downloads_resume_and_never_keep_a_corrupt_file(admin: Client, project: str, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    model = admin.upload(write_tree(tmp_path / "m", {"w.bin": data}) / "w.bin", project=project, name="r")
    out = tmp_path / "out"
    part, _ = partial_of(out, "w.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:MiB])  # an earlier download cut off after 1 MiB
    admin.download(model.id, out)
    assert (out / "w.bin").read_bytes() == data and not part.parent.exists()
    (out / "w.bin").unlink()
    part.parent.mkdir()
    part.write_bytes(b"garbage that is not the start of the file")
    with pytest.raises(IntegrityError, match="resumed from a partial file"):
        admin.download(model.id, out)
    assert sorted(out.iterdir()) == []
    admin.download(model.id, out)
    assert (out / "w.bin").read_bytes() == data


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_large_files_download_in_parallel_ranges(admin: Client, project: str, tmp_path: Path) -> None:
    from modeldepot.client import downloader

    data = os.urandom(5 * MiB + 7)
    model = admin.upload(write_tree(tmp_path / "m", {"w.bin": data}) / "w.bin", project=project, name="r")
    old = downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE
    downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE = MiB, MiB
    try:
        out = tmp_path / "out"
        part, done = partial_of(out, "w.bin")
        part.parent.mkdir(parents=True)
        # Half the ranges arrived before an interruption: only the rest is fetched.
        with part.open("wb") as f:
            f.truncate(len(data))
            f.write(data[: 2 * MiB])
        done.write_text(f"0\n{MiB}\n")
        admin.download(model.id, out)
    finally:
        downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE = old
    assert (out / "w.bin").read_bytes() == data
    assert sorted(p.name for p in out.iterdir()) == ["w.bin"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("range_size", [MiB, MiB + 100], ids=["aligned", "unaligned"])
def test_ranges_from_an_earlier_run_anywhere_in_the_file_are_hashed_in_order(
    admin: Client, project: str, tmp_path: Path, range_size: int
) -> None:
    """Ranges arrive out of order, each hashed from its own buffer once those before it are hashed;
    ranges kept from an interrupted run (here the 2nd and the 4th of 6) are read back from the file.
    A kept range whose bytes are wrong fails the final check, and nothing is kept."""
    from modeldepot.client import downloader

    data = os.urandom(5 * range_size + 12345)
    model = admin.upload(write_tree(tmp_path / "m", {"w.bin": data}) / "w.bin", project=project, name="r")
    old = downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE
    downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE = MiB, range_size
    kept = [range_size, 3 * range_size]
    try:
        for corrupt in (False, True):
            out = tmp_path / f"out-{corrupt}"
            part, done = partial_of(out, "w.bin")
            part.parent.mkdir(parents=True)
            with part.open("wb") as f:
                f.truncate(len(data))
                for start in kept:
                    f.seek(start)
                    f.write(data[start : start + range_size] if not corrupt else os.urandom(range_size))
            done.write_text("".join(f"{start}\n" for start in kept))
            if corrupt:
                with pytest.raises(IntegrityError, match=r"corrupted .* resumed from a partial file"):
                    admin.download(model.id, out)
                assert sorted(p.name for p in out.iterdir()) == []
            else:
                admin.download(model.id, out)
                assert (out / "w.bin").read_bytes() == data
                assert sorted(p.name for p in out.iterdir()) == ["w.bin"]
    finally:
        downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE = old


def test_commit_with_content_gone_is_a_clear_conflict(small_parts: RunningServer) -> None:
    with small_parts.client() as admin, small_parts.http() as http:
        project = admin.create_project("p").id
        mid, missing = _start(http, project, b"x" * 10)
        r = http.post(f"/models/{mid}/commit")
        assert r.status_code == 409 and r.json()["extra"]["missing"] == [missing["sha256"]]
        with pytest.raises(Conflict, match="not been uploaded"):
            admin._json("POST", f"/models/{mid}/commit")


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_directory_of_ten_thousand_files(admin: Client, project: str, tmp_path: Path) -> None:
    src = tmp_path / "many"
    for i in range(10_000):
        d = src / f"shard-{i // 500:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(f"file {i}\n".encode() * (1 + i % 7))
    model = admin.upload(src, project=project, name="many")
    assert model.file_count == 10_000
    out = tmp_path / "out"
    admin.download(model.id, out)
    for i in (0, 4999, 9999):
        rel = f"shard-{i // 500:02d}/f{i:05d}.txt"
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    again = admin.upload(src, project=project, name="many")
    assert again.version == 2


def test_the_manifest_of_many_files_of_mixed_sizes_keeps_their_order_and_digests(tmp_path: Path) -> None:
    """Files are hashed in groups (GROUP_FILES files or GROUP_BYTES bytes): across several groups, and
    with a file larger than a group's bytes in the middle, every file gets its own digest, in order."""
    from modeldepot.client import transfer

    contents = {
        f"d{i // 100}/f{i:04d}.bin": os.urandom(i % 7 * 1000) for i in range(2 * transfer.GROUP_FILES + 3)
    }
    contents["d3/big.bin"] = os.urandom(transfer.GROUP_BYTES + 5)
    src = write_tree(tmp_path / "m", contents)
    entries = transfer.scan(src)
    seen: list[int] = []
    manifest = transfer.build_manifest(entries, seen.append, workers=3)
    assert [f.path for f, _ in manifest] == [stored for stored, _ in entries] == sorted(contents)
    for f, local in manifest:
        assert local == src / f.path
        assert (f.size, f.sha256) == (len(contents[f.path]), hashlib.sha256(contents[f.path]).hexdigest())
    assert sum(seen) == sum(len(b) for b in contents.values())


def test_the_digest_cache_skips_unchanged_files_and_never_trusts_a_changed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modeldepot.client import hashcache, transfer
    from modeldepot.client.hashcache import HashCache

    src = write_tree(tmp_path / "m", {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000})
    # The files were just written: trust them at once here (the next check restores the 2 s rule).
    monkeypatch.setattr(hashcache, "RACY_SECONDS", -5.0)
    entries = transfer.scan(src)
    cache = HashCache(tmp_path / "cache" / "hashes.db")
    first = transfer.build_manifest(entries, cache=cache)
    cache.close()

    read: list[Path] = []
    real = transfer.sha256_file

    def counting(path: Path, on_bytes: object = None, stop: threading.Event | None = None) -> str:
        read.append(path)
        return real(path, on_bytes, stop)

    transfer.sha256_file = counting  # type: ignore[assignment]
    try:
        cache = HashCache(tmp_path / "cache" / "hashes.db")
        assert transfer.build_manifest(entries, cache=cache) == first and read == []
        (src / "b.bin").write_bytes(b"c" * 1000)  # same size, new content, a fresh mtime
        again = transfer.build_manifest(entries, cache=cache)
        cache.close()
    finally:
        transfer.sha256_file = real  # type: ignore[assignment]
    assert read == [src / "b.bin"]
    assert dict((f.path, f.sha256) for f, _ in again)["b.bin"] == hashlib.sha256(b"c" * 1000).hexdigest()
    # With the real rule, a file changed within 2 s of being hashed is not trusted next time.
    monkeypatch.setattr(hashcache, "RACY_SECONDS", 2.0)
    cache = HashCache(tmp_path / "cache" / "hashes.db")
    assert cache.get((src / "b.bin").stat()) is None
    cache.close()


def test_the_digest_cache_waits_as_long_as_the_file_systems_timestamps_need(tmp_path: Path) -> None:
    """An entry is trusted once the file is older than a timestamp tick could hide a write in: 0.1 s
    where mtimes carry digits below the second, 2 s where they are whole seconds (FAT, ext3). With
    2 s everywhere, an upload of a checkpoint written just before, cut off and run again, sent the
    file whole again (its staging area follows the same rule)."""
    from modeldepot.client.hashcache import HashCache

    src = write_tree(tmp_path / "m", {"fine.bin": b"f", "whole.bin": b"w"})
    fine, whole = src / "fine.bin", src / "whole.bin"
    os.utime(fine, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    os.utime(whole, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

    def trusted(f: Path, after: float) -> bool:
        """Whether a digest noted ``after`` seconds past the file's last change is trusted."""
        st = f.stat()
        cache = HashCache(tmp_path / "hashes.db")
        cache.put(st, "digest", hashed_at=max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 + after)
        cache.close()  # puts are written at close
        cache = HashCache(tmp_path / "hashes.db")
        try:
            return cache.get(st) == "digest"
        finally:
            cache.close()

    assert [trusted(fine, after) for after in (0.05, 0.5, 3)] == [False, True, True]
    assert [trusted(whole, after) for after in (0.05, 0.5, 3)] == [False, False, True]


def test_parts_hashed_ahead_stay_right_when_a_part_is_sent_again(tmp_path: Path) -> None:
    from modeldepot.blobs import LocalBlobStore

    data = os.urandom(3 * MiB + 100)
    store = LocalBlobStore(tmp_path / "blobs")
    parts = [(n, o, min(MiB, len(data) - o)) for n, o in enumerate(range(0, len(data), MiB), start=1)]

    def send(number: int, body: bytes | None = None) -> None:
        _, offset, size = parts[number - 1]
        store.write_part(staging, number, offset, size, [body or data[offset : offset + size]], None)

    # In order: hashed as they arrive; then part 2 again, first wrong, then right.
    staging = store.begin_staging(len(data))
    for n in (1, 2, 3, 4):
        send(n)
    send(2, b"x" * MiB)
    send(2)
    store.finish_staging(staging, hashlib.sha256(data).hexdigest(), len(data))
    assert b"".join(store.read(hashlib.sha256(data).hexdigest())) == data
    # Out of order, and a wrong part that is never corrected: caught when finishing.
    other = os.urandom(len(data))
    data = other
    staging = store.begin_staging(len(data))
    for n in (3, 1, 4, 2):
        send(n)
    send(1, b"y" * MiB)
    with pytest.raises(IntegrityError):
        store.finish_staging(staging, hashlib.sha256(data).hexdigest(), len(data))


# -- many small blobs in one request ------------------------------------------------------------------


def _batch_upload(http: Any, blobs: list[bytes]) -> str:
    """An uploading model of these blobs (one file each); the URL to POST batches to."""
    project = http.post("/projects", json={"name": "batches"}).json()["id"]
    files = [
        {"path": f"f{i}.bin", "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
        for i, b in enumerate(blobs)
    ]
    plan = http.post(f"/projects/{project}/models", json={"name": "m", "files": files}).json()
    return f"/models/{plan['model']['id']}"


def _frames(*items: tuple[str, int, bytes]) -> bytes:
    return b"".join(f"{digest} {size}\n".encode() + data for digest, size, data in items)


def _still_missing(http: Any, model_url: str) -> set[str]:
    answer = http.post(f"{model_url}/commit")
    if answer.status_code == 200:
        return set()
    assert answer.status_code == 409, answer.text
    return set(answer.json()["extra"]["missing"])


def test_a_batch_keeps_the_intact_blobs_and_names_the_corrupt_one(server: RunningServer) -> None:
    blobs = [os.urandom(1000 + i) for i in range(3)]
    with server.http() as http:
        _check_corrupt_frame(http, blobs)


def _check_corrupt_frame(http: Any, blobs: list[bytes]) -> None:
    model_url = _batch_upload(http, blobs)
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    body = _frames(
        (shas[0], len(blobs[0]), blobs[0]),
        (shas[1], len(blobs[1]), b"x" * len(blobs[1])),  # the right size, the wrong bytes
        (shas[2], len(blobs[2]), blobs[2]),
    )
    answer = http.post(f"{model_url}/blobs", content=body)
    assert answer.status_code == 422 and answer.json()["code"] == "integrity_error"
    assert "1 blob(s) arrived corrupted" in answer.json()["detail"] and shas[1] in answer.json()["detail"]
    assert _still_missing(http, model_url) == {shas[1]}
    assert http.post(f"{model_url}/blobs", content=_frames((shas[1], len(blobs[1]), blobs[1]))).json() == {
        "received": 1
    }
    assert _still_missing(http, model_url) == set()


@pytest.mark.parametrize(
    ("tail", "status", "words"),
    [
        (b"not a header\n", 422, "malformed"),
        (b"0" * 64 + b" 12\nshort", 422, "ended 7 bytes before the end"),
        (f"{'ab' * 32} 5\nhello".encode(), 422, "is not a pending blob"),
        (b"z" * 200, 422, "malformed"),
    ],
)
def test_a_bad_frame_keeps_the_blobs_before_it(
    server: RunningServer, tail: bytes, status: int, words: str
) -> None:
    blobs = [os.urandom(500), os.urandom(600)]
    with server.http() as http:
        _check_bad_frame(http, blobs, tail, status, words)


def _check_bad_frame(http: Any, blobs: list[bytes], tail: bytes, status: int, words: str) -> None:
    model_url = _batch_upload(http, blobs)
    first = hashlib.sha256(blobs[0]).hexdigest()
    second = hashlib.sha256(blobs[1]).hexdigest()
    if tail.startswith(b"0" * 64):
        tail = f"{second} 600\n".encode() + blobs[1][:593]  # the body ends 7 bytes early
    answer = http.post(f"{model_url}/blobs", content=_frames((first, len(blobs[0]), blobs[0])) + tail)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    assert _still_missing(http, model_url) == {second}


def test_a_batch_is_checked_against_its_own_manifest(server: RunningServer) -> None:
    """Frames are checked against the upload's manifest (kept in memory between batches): another
    size, or another upload's content, is refused; content of this upload sent twice is stored once."""
    blobs = [os.urandom(700), os.urandom(800)]
    with server.http() as http:
        model_url = _batch_upload(http, blobs)
        other_url = _batch_upload(http, [os.urandom(900)])
        first, second = (hashlib.sha256(b).hexdigest() for b in blobs)
        assert http.post(f"{model_url}/blobs", content=_frames((first, 700, blobs[0]))).json() == {
            "received": 1
        }
        wrong_size = http.post(f"{model_url}/blobs", content=_frames((second, 799, blobs[1][:799])))
        assert wrong_size.status_code == 422 and "is not a pending blob" in wrong_size.json()["detail"]
        foreign = http.post(f"{other_url}/blobs", content=_frames((second, 800, blobs[1])))
        assert foreign.status_code == 422 and "is not a pending blob" in foreign.json()["detail"]
        again = http.post(
            f"{model_url}/blobs", content=_frames((first, 700, blobs[0]), (second, 800, blobs[1]))
        )
        assert again.json() == {"received": 2}
        assert _still_missing(http, model_url) == set()  # and committed


def test_hundreds_of_blobs_across_chunk_boundaries(server: RunningServer) -> None:
    """More than one 4 MiB chunk of the body: frames and headers cut at every kind of place."""
    blobs = [os.urandom(size) for size in [0, 1, 63, 64, 65, 4095, 4096, 4097] * 40 + [65536] * 80]
    with server.http() as http:
        model_url = _batch_upload(http, blobs)
        _send_all_and_check(http, model_url, blobs)
    with server.client() as admin:
        files = admin.list_files(model_url.rsplit("/", 1)[1])
    assert sorted(f.size for f in files) == sorted(len(b) for b in blobs)


def _send_all_and_check(http: Any, model_url: str, blobs: list[bytes]) -> None:
    items = [(hashlib.sha256(b).hexdigest(), len(b), b) for b in blobs]
    unique = list({digest: (digest, size, data) for digest, size, data in items}.values())
    answer = http.post(f"{model_url}/blobs", content=_frames(*unique))
    assert answer.status_code == 200 and answer.json() == {"received": len(unique)}
    assert _still_missing(http, model_url) == set()


def test_resuming_an_upload_gives_it_the_full_expiry_again(server: RunningServer) -> None:
    from sqlalchemy import select

    from modeldepot.metadata import tables

    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    body = {
        "name": "m",
        "files": [{"path": "w.bin", "size": len(data), "sha256": digest}],
        "upload_key": "ab" * 32,
    }
    engine = server.app.state.store.engine  # type: ignore[attr-defined]

    def expiry(model_id: str) -> Any:
        with engine.connect() as conn:
            return conn.execute(
                select(tables.models.c.expires_at).where(tables.models.c.id == model_id)
            ).scalar_one()

    with server.http() as http:
        project = http.post("/projects", json={"name": "p"}).json()["id"]
        first = http.post(f"/projects/{project}/models", json=body).json()
        before = expiry(first["model"]["id"])
        time.sleep(0.05)
        again = http.post(f"/projects/{project}/models", json=body).json()
        assert again["resumed"] and again["model"]["id"] == first["model"]["id"]
        assert expiry(first["model"]["id"]) > before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_download_never_writes_through_a_symlink_out_of_its_folder(
    admin: Client, project: str, tmp_path: Path
) -> None:
    src = write_tree(tmp_path / "m", {"sub/w.bin": b"w" * 10, "top.bin": b"t" * 10, "ok/fine.bin": b"f"})
    model = admin.upload(src, project=project, name="m")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "top.bin").write_bytes(b"precious")
    for link, to in (("sub", outside), ("top.bin", outside / "top.bin")):
        dest = tmp_path / f"dest-{link}"
        dest.mkdir()
        (dest / link).symlink_to(to)
        with pytest.raises(InvalidInput, match="outside"):
            admin.download(model.id, dest)
        assert sorted(p.name for p in outside.iterdir()) == ["top.bin"]
        assert (outside / "top.bin").read_bytes() == b"precious"
    inside = tmp_path / "dest-inside"
    (inside / "real").mkdir(parents=True)
    (inside / "ok").symlink_to(inside / "real")  # a symlink that stays inside is fine
    admin.download(model.id, inside)
    assert (inside / "real" / "fine.bin").read_bytes() == b"f"
