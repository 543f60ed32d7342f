"""Models through the SDK and the HTTP API: the behaviour a team relies on, on both databases."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modeldepot import Client, Conflict, NotFound

from .conftest import RunningServer, write_tree


def test_identical_content_is_stored_once_and_not_sent_twice(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    src = write_tree(tmp_path / "a", {"w.bin": b"x" * 100_000, "copy/w.bin": b"x" * 100_000})
    first = admin.upload(src, project=project, name="m")
    blobs = Path(server.settings.data_dir) / "blobs" / "sha256"
    stored = [p for p in blobs.rglob("*") if p.is_file()]
    assert len(stored) == 1
    with server.http() as http:
        digest = hashlib.sha256(b"x" * 100_000).hexdigest()
        plan = http.post(
            f"/projects/{project}/models",
            json={"name": "m", "files": [{"path": "w.bin", "size": 100_000, "sha256": digest}]},
        ).json()
        assert plan["missing"] == []
        second = http.post(f"/models/{plan['model']['id']}/commit").json()
    assert second["state"] == "ready" and second["version"] == first.version + 1


def test_type_is_detected_or_taken_case_insensitively(admin: Client, project: str, tmp_path: Path) -> None:
    onnx = write_tree(tmp_path / "o", {"net.onnx": b"onnx"})
    tf = write_tree(tmp_path / "t", {"export/saved_model.pb": b"pb", "export/variables/v": b"v"})
    keras = write_tree(tmp_path / "k", {"model.keras": b"k"})
    assert admin.upload(onnx, project=project, name="o").type == "ONNX"
    assert admin.upload(tf, project=project, name="t").type == "Tensorflow"
    assert admin.upload(keras, project=project, name="k").type == "Tensorflow"
    assert admin.upload(onnx / "net.onnx", project=project, name="c", type="custom").type == "Custom"
    assert admin.upload(onnx, project=project, name="x", type="onnx").type == "ONNX"


def test_listing_filters_and_pages(admin: Client, project: str, tmp_path: Path) -> None:
    other = admin.create_project("other").id
    f = write_tree(tmp_path, {"m.bin": b"1"}) / "m.bin"
    made = []
    for i in range(7):
        made.append(admin.upload(f, project=project, name=f"n{i % 2}", tags=["odd"] if i % 2 else []).id)
    admin.upload(f, project=other, name="n0")
    page = admin.list_models(project=project, limit=3)
    assert [m.id for m in page.items] == made[::-1][:3] and page.next_cursor
    assert [m.id for m in admin.iter_models(project=project, limit=3)] == made[::-1]
    assert {m.id for m in admin.iter_models(tag="odd")} == set(made[1::2])
    assert len(list(admin.iter_models(name="n0"))) == 5
    assert len(list(admin.iter_models(type="custom"))) == 8
    assert list(admin.iter_models(project=project, state="uploading")) == []


def test_rename_update_and_tags_change_only_metadata(admin: Client, project: str, tmp_path: Path) -> None:
    f = write_tree(tmp_path, {"m.bin": b"weights"}) / "m.bin"
    admin.upload(f, project=project, name="resnet")
    m = admin.upload(f, project=project, name="old", summary={"acc": 0.1}, tags=["a"])
    renamed = admin.rename_model(m.id, "resnet")
    assert (renamed.name, renamed.version) == ("resnet", 2)
    updated = admin.update_model(m.id, notes="# better", summary={"acc": 0.2}, metadata={"k": [1]})
    assert (updated.notes, updated.summary, updated.metadata) == ("# better", {"acc": 0.2}, {"k": [1]})
    assert admin.add_tags(m.id, "b", "c").tags == ("a", "b", "c")
    assert admin.remove_tags(m.id, "a").tags == ("b", "c")
    assert [x.path for x in admin.list_files(m.id)] == ["m.bin"]


def test_delete_model_and_project(admin: Client, project: str, tmp_path: Path) -> None:
    f = write_tree(tmp_path, {"m.bin": b"w"}) / "m.bin"
    m = admin.upload(f, project=project, name="a")
    keep = admin.upload(f, project=project, name="b")
    admin.delete_model(m.id)
    with pytest.raises(NotFound):
        admin.get_model(m.id)
    assert admin.get_model(keep.id).state == "ready"
    with pytest.raises(Conflict, match="still has 1 model"):
        admin.delete_project(project)
    assert admin.get_model(keep.id).state == "ready"
    admin.delete_project(project, force=True)
    with pytest.raises(NotFound):
        admin.get_project(project)
    with pytest.raises(NotFound):
        admin.get_model(keep.id)


def test_aliases(admin: Client, project: str, tmp_path: Path) -> None:
    f = write_tree(tmp_path, {"m.bin": b"w"}) / "m.bin"
    v1 = admin.upload(f, project=project, name="resnet")
    v2 = admin.upload(f, project=project, name="resnet")
    other = admin.upload(f, project=project, name="bert")
    assert admin.set_alias(project, "resnet", "production", v1.id).model_id == v1.id
    assert admin.set_alias(project, "resnet", "production", v2.id).model_id == v2.id
    assert admin.get_alias(project, "resnet", "production").model_id == v2.id
    with pytest.raises(Exception, match="not 'resnet'"):
        admin.set_alias(project, "resnet", "production", other.id)
    assert admin.get_alias(project, "resnet", "production").model_id == v2.id
    assert [a.alias for a in admin.list_aliases(project)] == ["production"]
    admin.delete_alias(project, "resnet", "production")
    with pytest.raises(NotFound):
        admin.get_alias(project, "resnet", "production")


def test_abandoned_upload_is_invisible_then_cleaned(server: RunningServer, project: str) -> None:
    services = server.app.state.services  # type: ignore[attr-defined]
    with server.http() as http:
        plan = http.post(
            f"/projects/{project}/models",
            json={"name": "half", "files": [{"path": "a", "size": 3, "sha256": "ab" * 32}]},
        ).json()
        mid = plan["model"]["id"]
        assert http.get("/models", params={"project": project}).json()["items"] == []
        assert http.get(f"/models/{mid}").json()["state"] == "uploading"
        assert http.get(f"/models/{mid}/files/a").status_code == 409
        services.uploads.store.update_model(mid, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        assert services.uploads.abort_expired() == 1
        assert http.get(f"/models/{mid}").status_code == 404


def test_download_headers_range_and_etag(
    admin: Client, server: RunningServer, project: str, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 40
    f = write_tree(tmp_path, {"weights.bin": data}) / "weights.bin"
    m = admin.upload(f, project=project, name="r")
    with server.http() as http:
        r = http.get(f"/models/{m.id}/files/weights.bin")
        assert r.content == data
        assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-disposition"].startswith("attachment")
        part = http.get(f"/models/{m.id}/files/weights.bin", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert http.get(f"/models/{m.id}/files/nope.bin").status_code == 404
        assert http.get(f"/models/{m.id}/files/..%2Fetc%2Fpasswd").status_code in (404, 422)


def test_download_keeps_good_files_and_never_leaves_partials(
    admin: Client, project: str, tmp_path: Path
) -> None:
    src = write_tree(tmp_path / "src", {"a.bin": b"a" * 5000, "d/b.bin": b"b" * 7000})
    m = admin.upload(src, project=project, name="r")
    out = tmp_path / "out"
    admin.download(m.id, out)
    (out / "d" / "b.bin").write_bytes(b"corrupted")
    admin.download(m.id, out)
    assert (out / "d" / "b.bin").read_bytes() == b"b" * 7000
    assert not list(out.rglob("*.part"))


def test_knowing_a_digest_never_grants_another_projects_bytes(
    server: RunningServer, admin: Client, project: str
) -> None:
    secret = b"secret weights of project A" * 100
    digest = hashlib.sha256(secret).hexdigest()
    with server.http() as http:
        plan = http.post(
            f"/projects/{project}/models",
            json={"name": "a", "files": [{"path": "w", "size": len(secret), "sha256": digest}]},
        ).json()
        http.put(f"/models/{plan['model']['id']}/blobs/{digest}", content=secret).raise_for_status()
        http.post(f"/models/{plan['model']['id']}/commit").raise_for_status()
    other = admin.create_project("b").id
    editor = admin.create_key(project=other, role="editor").secret
    with server.http(editor) as http:
        # Lying about the size reveals nothing either: the bytes must be sent all the same.
        for size in (len(secret), 1):
            plan = http.post(
                f"/projects/{other}/models",
                json={"name": "steal", "files": [{"path": "w", "size": size, "sha256": digest}]},
            ).json()
            assert [m["sha256"] for m in plan["missing"]] == [digest]
            commit = http.post(f"/models/{plan['model']['id']}/commit")
            assert commit.status_code == 409 and commit.json()["extra"]["missing"] == [digest]
            assert http.get(f"/models/{plan['model']['id']}/files/w").status_code == 409
            bad = http.put(f"/models/{plan['model']['id']}/blobs/{digest}", content=b"guess")
            assert bad.status_code == 422


def test_versions_are_never_reused(admin: Client, project: str, tmp_path: Path) -> None:
    f = write_tree(tmp_path, {"m.bin": b"w"}) / "m.bin"
    admin.upload(f, project=project, name="r")
    v2 = admin.upload(f, project=project, name="r")
    admin.delete_model(v2.id)
    assert admin.upload(f, project=project, name="r").version == 3


def test_chunked_json_over_the_limit_is_413(server: RunningServer, project: str) -> None:
    limit = server.settings.max_json_bytes

    def body():  # type: ignore[no-untyped-def]
        yield b'{"name": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'", "files": []}'

    with server.http() as http:
        r = http.post(
            f"/projects/{project}/models", content=body(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        small = http.post(
            "/projects",
            content=iter([b'{"name": ', b'"chunked"}']),
            headers={"Content-Type": "application/json"},
        )
        assert small.status_code == 201
