"""A whole server on an S3-compatible store (a real SeaweedFS): large parts go straight to the
store through presigned URLs, downloads are presigned redirects, gc and fsck work on the bucket."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest

from modeldepot import Client, NotFound, ServerError

from .conftest import RunningServer, make_settings, running_server, write_tree
from .seaweed import seaweedfs  # noqa: F401  (the session's SeaweedFS)

MiB = 1024 * 1024


@pytest.fixture(params=["copy", "pointer"])
def s3_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    """A server on its own prefix of the session's SeaweedFS. Staged blobs are published by a copy
    (below 64 MiB, as in these tests) or, with ``pointer``, by a pointer (as from 64 MiB up)."""
    parts = urlsplit(request.getfixturevalue("seaweedfs"))
    blob_url = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{secrets.token_hex(6)}"))
    settings = make_settings(
        f"sqlite:///{tmp_path / 'meta.db'}",
        tmp_path / "data",
        blob_url=blob_url,
        upload_part_size=5 * MiB,
        gc_grace_seconds=0,
    )
    with running_server(settings) as running:
        if request.param == "pointer":
            running.app.state.services.models.blobs.pointer_min_size = 0  # type: ignore[attr-defined]
        yield running


def test_upload_download_gc_and_fsck_on_s3(s3_server: RunningServer, tmp_path: Path) -> None:
    big = os.urandom(12 * MiB + 5)
    src = write_tree(tmp_path / "m", {"weights.bin": big, "config.json": b'{"a": 1}', "empty": b""})
    with s3_server.client() as admin, s3_server.http() as http:
        project = admin.create_project("p").id
        digest = hashlib.sha256(big).hexdigest()
        plan = http.post(
            f"/projects/{project}/models",
            json={"name": "probe", "files": [{"path": "w", "size": len(big), "sha256": digest}]},
        ).json()
        answer = http.post(plan["missing"][0]["parts_url"]).json()
        parts = answer["parts"]
        direct = [not p["url"].startswith(s3_server.url) for p in parts]
        assert len(parts) == 3 and all(direct)  # straight to S3
        assert answer["in_order"] is False  # S3 takes parts in parallel
        http.delete(f"/models/{plan['model']['id']}")
        mid = os.urandom(4 * MiB + 512 * 1024)  # over 4 MiB: one part, also straight to the store
        entry = {"path": "m", "size": len(mid), "sha256": hashlib.sha256(mid).hexdigest()}
        plan = http.post(f"/projects/{project}/models", json={"name": "mid", "files": [entry]}).json()
        assert "parts_url" in plan["missing"][0]
        http.delete(f"/models/{plan['model']['id']}")

        model = admin.upload(src, project=project, name="m")
        assert model.state == "ready" and model.file_count == 3
        files = http.get(f"/models/{model.id}/files").json()["items"]
        assert all(not f["url"].startswith(s3_server.url) for f in files)  # presigned GETs
        redirect = http.get(f"/models/{model.id}/files/weights.bin", follow_redirects=False)
        assert redirect.status_code == 307
        out = tmp_path / "out"
        admin.download(model.id, out)
        assert (out / "weights.bin").read_bytes() == big and (out / "empty").read_bytes() == b""
        assert admin.fsck()["ok"]
        admin.delete_model(model.id)
        report = admin.gc()
        assert report["blobs_deleted"] == 3 and report["bytes_reclaimed"] == len(big) + 8
        assert admin.fsck() == admin.fsck() and admin.fsck()["blobs_checked"] == 0
        store = s3_server.app.state.services.models.blobs  # type: ignore[attr-defined]
        left = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.key(""))
        assert left.get("Contents", []) == []  # a pointer's bytes went with it


def test_an_area_cut_off_before_its_manifest_resumes_on_s3(s3_server: RunningServer, tmp_path: Path) -> None:
    big = os.urandom(11 * MiB + 3)
    with s3_server.http() as http:
        project = http.post("/projects", json={"name": "p"}).json()["id"]
        area = http.post(f"/projects/{project}/stagings", json={"size": len(big)}).json()
        first = area["parts"][0]
        with httpx.Client() as bucket:  # a presigned URL: no key
            body = big[first["offset"] : first["offset"] + first["size"]]
            assert bucket.put(first["url"], content=body).status_code == 200
            later = http.post(f"/stagings/{area['id']}/parts").json()
            assert [p["received"] for p in later["parts"]] == [True, False, False]
            for p in later["parts"][1:]:
                assert not p["url"].startswith(s3_server.url)  # fresh presigned URLs
                body = big[p["offset"] : p["offset"] + p["size"]]
                assert bucket.put(p["url"], content=body).status_code == 200
        digest = hashlib.sha256(big).hexdigest()
        manifest = {"name": "m", "files": [{"path": "w.bin", "size": len(big), "sha256": digest}]}
        plan = http.post(
            f"/projects/{project}/models", json={**manifest, "staged": {digest: area["id"]}}
        ).json()
        parts = http.post(plan["missing"][0]["parts_url"]).json()
        assert all(p["received"] for p in parts["parts"])
        assert http.post(parts["complete_url"]).status_code == 204
        model = http.post(f"/models/{plan['model']['id']}/commit").json()
        assert model["state"] == "ready"


def test_parts_sent_while_hashing_go_straight_to_s3(s3_server: RunningServer, tmp_path: Path) -> None:
    big = os.urandom(11 * MiB + 3)
    src = write_tree(tmp_path / "m", {"weights.bin": big})
    with s3_server.client() as admin, s3_server.http() as http:
        admin.send_while_hashing = MiB
        admin.hash_cache_path = None
        project = admin.create_project("p").id
        area = http.post(f"/projects/{project}/stagings", json={"size": len(big)}).json()
        assert len(area["parts"]) == 3 and not any(p["url"].startswith(s3_server.url) for p in area["parts"])
        assert area["in_order"] is False
        assert http.delete(area["url"]).status_code == 204
        model = admin.upload(src, project=project, name="m")
        again = admin.upload(src, project=project, name="m")  # sent ahead, then found stored: dropped
        assert model.state == again.state == "ready" and again.version == 2
        out = tmp_path / "out"
        admin.download(again.id, out)
        assert (out / "weights.bin").read_bytes() == big
        assert admin.fsck()["ok"]
        store = s3_server.app.state.services.models.blobs  # type: ignore[attr-defined]
        assert store.staging_ids() == []


def test_fsck_reports_a_blob_whose_bytes_are_gone_from_the_bucket_as_missing(
    s3_server: RunningServer, tmp_path: Path
) -> None:
    """With a pointer, the pointer stays and says the size while the object it names is gone: fsck
    failed with a 500 and reported nothing. It reports the blob missing and checks the others."""
    big = os.urandom(6 * MiB)
    src = write_tree(tmp_path / "m", {"weights.bin": big, "config.json": b"{}"})
    with s3_server.client() as admin:
        project = admin.create_project("p").id
        admin.upload(src, project=project, name="m")
        store = s3_server.app.state.services.models.blobs  # type: ignore[attr-defined]
        digest = hashlib.sha256(big).hexdigest()
        key, _ = store._resolve(digest)
        store.client.delete_object(Bucket=store.bucket, Key=key)
        report = admin.fsck()
        assert report["missing"] == [digest] and report["blobs_checked"] == 1 and not report["ok"]


def test_serve_checks_the_bucket_and_credentials_at_start(seaweedfs: str, tmp_path: Path) -> None:  # noqa: F811
    """A wrong bucket, wrong credentials or an endpoint nobody answers on stop `serve` at once with
    what is wrong; before, it started and every upload then failed with "unexpected error"."""
    parts = urlsplit(seaweedfs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed

    def serve(blob_url: str, **env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "modeldepot.cli", "serve", "--port", "0"]
        command += ["--data-dir", str(tmp_path / secrets.token_hex(4)), "--blob-url", blob_url]
        return subprocess.run(command, env=os.environ | env, capture_output=True, text=True, timeout=120)

    no_bucket = serve(urlunsplit(parts._replace(netloc="no-such-bucket-here")))
    assert no_bucket.returncode == 1, no_bucket.stderr
    assert "The object store has no bucket 'no-such-bucket-here'" in no_bucket.stderr
    assert "Hint: Create the bucket first." in no_bucket.stderr
    refused = serve(seaweedfs, AWS_SECRET_ACCESS_KEY="not-the-secret")
    assert refused.returncode == 1 and "refused these credentials" in refused.stderr, refused.stderr
    query = parts.query.replace(urlsplit(parse_qs(parts.query)["endpoint"][0]).netloc, f"127.0.0.1:{closed}")
    away = serve(urlunsplit(parts._replace(query=query)))
    assert away.returncode == 1 and "Cannot reach the object store" in away.stderr, away.stderr
    assert "Traceback" not in no_bucket.stderr + refused.stderr + away.stderr


def test_an_object_store_that_refuses_is_named_in_the_error_not_unexpected(
    seaweedfs: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that stops taking the server's requests (here: credentials it refuses, as after a
    rotated secret) was a bare "unexpected error"; the answer now says the object store failed."""
    parts = urlsplit(seaweedfs)
    blob_url = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{secrets.token_hex(6)}"))
    settings = make_settings(f"sqlite:///{tmp_path / 'meta.db'}", tmp_path / "data", blob_url=blob_url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-since")  # read when the store opens
    with running_server(settings) as running:
        monkeypatch.undo()
        src = write_tree(tmp_path / "m", {"config.json": b"{}"})
        with running.client() as admin:
            project = admin.create_project("p").id
            with pytest.raises(ServerError, match="The server's object store failed") as caught:
                admin.upload(src, project=project, name="m")
            assert "SignatureDoesNotMatch" in caught.value.detail or "AccessDenied" in caught.value.detail
            # Kept, for the same upload to resume once the store takes requests again.
            assert [m.state for m in admin.list_models(project=project, state="any").items] == ["uploading"]


def test_a_file_gone_from_the_bucket_is_a_readable_error_not_the_stores_xml(
    s3_server: RunningServer, tmp_path: Path
) -> None:
    """A presigned GET of an object that is gone answers S3's XML; the SDK printed it as it was."""
    data = os.urandom(6 * MiB)
    src = write_tree(tmp_path / "m", {"weights.bin": data})
    with s3_server.client() as admin:
        project = admin.create_project("p").id
        model = admin.upload(src, project=project, name="m")
        store = s3_server.app.state.services.models.blobs  # type: ignore[attr-defined]
        key, _ = store._resolve(hashlib.sha256(data).hexdigest())
        store.client.delete_object(Bucket=store.bucket, Key=key)
        with pytest.raises(NotFound) as caught:
            admin.download(model.id, tmp_path / "out")
        assert caught.value.detail.startswith("The object store answered 404 NoSuchKey")
        assert "<" not in caught.value.detail and "modeldepot fsck" in (caught.value.hint or "")


def test_a_blob_whose_store_upload_a_stopped_server_completed_is_finished_by_another(
    s3_server: RunningServer, tmp_path: Path
) -> None:
    """A replica killed during `complete`, after it completed the object store's multipart upload but
    before it published the blob: the upload lists no part any more, so the parts plan handed out
    URLs to a dead upload and complete answered "6 part(s) have not arrived" until the upload
    expired. The completed object is finished (verified, published) by whichever server is asked."""
    big = os.urandom(11 * MiB + 3)
    digest = hashlib.sha256(big).hexdigest()
    with s3_server.http() as http, httpx.Client() as bucket:
        project = http.post("/projects", json={"name": "p"}).json()["id"]
        manifest = {"name": "m", "files": [{"path": "w.bin", "size": len(big), "sha256": digest}]}
        plan = http.post(f"/projects/{project}/models", json=manifest).json()
        parts = http.post(plan["missing"][0]["parts_url"]).json()
        for p in parts["parts"]:
            assert bucket.put(p["url"], content=big[p["offset"] : p["offset"] + p["size"]]).status_code == 200
        store = s3_server.app.state.services.models.blobs  # type: ignore[attr-defined]
        (staging_id,) = store.staging_ids()
        key, upload_id = store._staging(staging_id)
        listed = store.client.list_parts(Bucket=store.bucket, Key=key, UploadId=upload_id)["Parts"]
        store.client.complete_multipart_upload(  # what the stopped server did, and no more
            Bucket=store.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]},
        )
        again = http.post(plan["missing"][0]["parts_url"]).json()
        assert [p["received"] for p in again["parts"]] == [True, True, True]
        assert http.post(again["complete_url"]).status_code == 204
        model = http.post(f"/models/{plan['model']['id']}/commit").json()
        assert model["state"] == "ready"
        assert http.get(f"/models/{model['id']}/files/w.bin", follow_redirects=True).content == big


def test_the_same_upload_through_two_replicas_at_once_ends_ready_on_s3(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Both runs share one model and its multipart upload: the run whose parts went to an upload
    the other completed (S3's NoSuchUpload), or whose completion found a part being sent again,
    found the blob received and went on, and did not fail. (Published by pointers: SeaweedFS fails
    two copies to one key at the same time, both of them at times, and the rerun then finishes.)"""
    from concurrent.futures import ThreadPoolExecutor

    from modeldepot.client.uploader import upload_key

    parts = urlsplit(request.getfixturevalue("seaweedfs"))
    blob_url = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{secrets.token_hex(6)}"))
    settings = make_settings(
        f"sqlite:///{tmp_path / 'meta.db'}", tmp_path / "data", blob_url=blob_url, upload_part_size=5 * MiB
    )
    data = os.urandom(16 * MiB)
    f = write_tree(tmp_path / "src", {"w.bin": data}) / "w.bin"
    with running_server(settings) as one, running_server(settings) as two:
        for replica in (one, two):
            replica.app.state.services.models.blobs.pointer_min_size = 0  # type: ignore[attr-defined]
        with one.client() as admin, one.http() as http:
            project = admin.create_project("p").id
            meta = {"name": "m", "type": None, "summary": None, "notes": None, "metadata": None}
            body = {**meta, "dataset_ref": None, "tags": [], "files": [_entry("w.bin", data)]}
            started = http.post(
                f"/projects/{project}/models", json=body | {"upload_key": upload_key(project, body)}
            )
            shared = started.json()["model"]["id"]  # both runs resume it

        def upload(run: int, replica: RunningServer) -> Any:
            with Client(replica.url, replica.admin_key, hash_cache=tmp_path / f"h{run}.db") as c:
                return c.upload(f, project=project, name="m")

        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(upload, (1, 2), (one, two)))
        assert [m.id for m in done] == [shared, shared]
        with one.client() as admin:
            assert [m.state for m in admin.list_models(project=project, state="any").items] == ["ready"]
            admin.download(shared, tmp_path / "out")
        assert (tmp_path / "out" / "w.bin").read_bytes() == data


def _entry(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
