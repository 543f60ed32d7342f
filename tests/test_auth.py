"""API keys and roles over real HTTP, on SQLite and PostgreSQL.

No key, a wrong key or a revoked key is 401; a valid key whose role is too small is 403; a key with no
role in a project gets 404 for that project and its models, exactly as if they did not exist.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from modeldepot import Client, NotFound, PermissionDenied
from modeldepot.metadata import tables as t

from .conftest import RunningServer, write_tree

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert (body["code"], body["status"]) == (code, status), body
    for word in words:
        assert word.lower() in body["detail"].lower(), body
    return body


def new_key(admin: Client, project: str, role: str) -> str:
    return admin.create_key(project=project, role=role, name=f"{role} key").secret


def upload(client: Client, project: str, tmp_path: Path, name: str = "resnet") -> str:
    src = write_tree(tmp_path / name, {"weights.bin": b"w" * 100, "conf/c.json": b"{}"})
    return client.upload(src, project=project, name=name, tags=["cnn"]).id


def start_upload(http: httpx.Client, project: str, data: bytes = b"half") -> httpx.Response:
    manifest = [{"path": "x.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    return http.post(f"/projects/{project}/models", json={"name": "half", "files": manifest})


def fill(template: Any, value: str) -> Any:
    """``template`` (a URL or request arguments) with ``{id}`` replaced by ``value``."""
    if isinstance(template, str):
        return template.replace("{id}", value)
    if isinstance(template, dict):
        return {k: fill(v, value) for k, v in template.items()}
    return template


def state(http: httpx.Client) -> Any:
    """What the (admin) caller can see: projects, every model with its files, keys, aliases."""
    projects = http.get("/projects").json()["items"]
    models = [
        http.get(f"/models/{m['id']}").json()
        for m in http.get("/models", params={"state": "any", "limit": 1000}).json()["items"]
    ]
    aliases = [http.get(f"/projects/{p['id']}/aliases").json() for p in projects]
    return projects, models, aliases, http.get("/keys").json()


# -- who is calling --------------------------------------------------------------------------------


def test_no_key_is_401_problem_with_www_authenticate(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    model = upload(admin, project, tmp_path)
    requests = [
        ("GET", "/whoami", {}),
        ("GET", "/projects", {}),
        ("POST", "/projects", {"json": {"name": "sneaky"}}),
        ("GET", f"/projects/{project}", {}),
        ("DELETE", f"/projects/{project}?force=true", {}),
        ("GET", "/models", {}),
        ("GET", f"/models/{model}", {}),
        ("PATCH", f"/models/{model}", {"json": {"notes": "x"}}),
        ("DELETE", f"/models/{model}", {}),
        ("GET", f"/models/{model}/files/weights.bin", {}),
        ("POST", f"/projects/{project}/models", {"json": {"name": "m", "files": []}}),
        ("GET", "/keys", {}),
        ("POST", "/keys", {"json": {"admin": True}}),
        ("GET", "/models/mo000000000000", {}),  # 401 before 404: nothing is told without a key
    ]
    with server.http() as http:
        before = state(http)
    headers_variants: list[dict[str, str]] = [
        {},
        {"X-API-Key": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {server.admin_key}"},  # not a scheme we take
        {"Authorization": server.admin_key},  # no scheme at all
    ]
    with httpx.Client(base_url=server.url + "/api/v1") as anonymous:
        for headers in headers_variants:
            for method, url, kwargs in requests if not headers else requests[:3]:
                response = anonymous.request(method, url, headers=headers, **kwargs)
                assert_problem(response, 401, "unauthenticated", "no api key")
                assert response.headers["www-authenticate"].startswith("ApiKey"), (method, url, headers)
                assert "X-API-Key" in response.json()["hint"]
        assert anonymous.get("/health").status_code == 200  # the one call that needs no key
    with server.http() as http:
        assert state(http) == before


@pytest.mark.parametrize(
    "bad",
    [
        "md_" + "x" * 43,
        "not-a-key",
        "x",
        "md_test_admin_" + "x" * 23,  # one character short of the real one
        "md_test_admin_" + "x" * 25,  # one too many
        "MD_TEST_ADMIN_" + "X" * 24,  # case matters
    ],
)
def test_wrong_key_is_401(server: RunningServer, admin: Client, bad: str) -> None:
    for headers in ({"X-API-Key": bad}, {"Authorization": f"Bearer {bad}"}):
        with httpx.Client(base_url=server.url + "/api/v1", headers=headers) as http:
            response = http.get("/whoami")
            assert_problem(response, 401, "unauthenticated", "invalid api key")
            assert response.headers["www-authenticate"]
            assert_problem(http.post("/projects", json={"name": "sneaky"}), 401, "unauthenticated")
    assert [p.name for p in admin.list_projects()] == []


def test_revoked_key_is_401_and_the_others_keep_working(
    server: RunningServer, admin: Client, project: str
) -> None:
    made = admin.create_key(project=project, role="editor", name="ci")
    kept = new_key(admin, project, "editor")
    with server.http(made.secret) as http:
        assert http.get("/whoami").json()["key_id"] == made.key.id
    assert admin.revoke_key(made.key.id).revoked
    for headers in ({"X-API-Key": made.secret}, {"Authorization": f"Bearer {made.secret}"}):
        with httpx.Client(base_url=server.url + "/api/v1", headers=headers) as http:
            assert_problem(http.get("/whoami"), 401, "unauthenticated", "invalid api key")
            assert_problem(http.post("/projects", json={"name": "x"}), 401, "unauthenticated")
            assert_problem(http.delete(f"/keys/{made.key.id}"), 401, "unauthenticated")
    with server.http(kept) as http:
        assert http.get(f"/projects/{project}").status_code == 200
    assert {k.id: k.revoked for k in admin.list_keys(project=project)}[made.key.id] is True


def test_bearer_works_like_x_api_key(server: RunningServer, admin: Client, project: str) -> None:
    secret = new_key(admin, project, "editor")
    with server.http(secret) as by_header:
        expected = by_header.get("/whoami").json()
    assert expected["roles"] == {project: "editor"}
    for value in (f"Bearer {secret}", f"bearer {secret}", f"BEARER   {secret}"):
        with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": value}) as http:
            assert http.get("/whoami").json() == expected
            assert http.get(f"/projects/{project}").json()["id"] == project
            assert http.get("/models", params={"project": project}).status_code == 200
    with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {secret}"}) as http:
        made = http.post("/projects", json={"name": "by bearer"})
        assert made.status_code == 201, made.text
        assert http.get("/whoami").json()["roles"] == {project: "editor", made.json()["id"]: "admin"}


# -- what each role may do --------------------------------------------------------------------------


def test_viewer_reads_but_cannot_change(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    model = upload(admin, project, tmp_path)
    admin.set_alias(project, "resnet", "production", model)
    viewer = new_key(admin, project, "viewer")
    with server.http() as root:
        uploading = start_upload(root, project).json()["model"]["id"]
        before = state(root)
    with server.http(viewer) as http:
        assert http.get("/whoami").json()["roles"] == {project: "viewer"}
        assert [p["id"] for p in http.get("/projects").json()["items"]] == [project]
        assert http.get(f"/projects/{project}").status_code == 200
        assert [m["id"] for m in http.get("/models").json()["items"]] == [model]
        assert http.get("/models", params={"project": project}).json()["items"][0]["id"] == model
        assert http.get(f"/models/{model}").json()["file_count"] == 2
        assert len(http.get(f"/models/{model}/files").json()["items"]) == 2
        assert http.get(f"/models/{model}/files/weights.bin").content == b"w" * 100
        assert http.get(f"/projects/{project}/aliases").json()["items"][0]["model_id"] == model
        refused = [
            http.patch(f"/models/{model}", json={"notes": "mine now"}),
            http.patch(f"/models/{model}", json={"add_tags": ["x"]}),
            http.delete(f"/models/{model}"),
            start_upload(http, project),
            http.put(f"/models/{uploading}/blobs/{hashlib.sha256(b'half').hexdigest()}", content=b"half"),
            http.post(f"/models/{uploading}/commit"),
            http.delete(f"/models/{uploading}"),
            http.put(f"/projects/{project}/aliases/resnet/staging", json={"model_id": model}),
            http.delete(f"/projects/{project}/aliases/resnet/production"),
            http.patch(f"/projects/{project}", json={"tags": ["x"]}),
        ]
        for response in refused:
            body = assert_problem(response, 403, "permission_denied", "viewer", "editor")
            assert "hint" in body, body
        for response in (
            http.patch(f"/projects/{project}", json={"name": "renamed"}),
            http.delete(f"/projects/{project}?force=true"),
            http.post("/keys", json={"project": project, "role": "viewer"}),
            http.get("/keys", params={"project": project}),
        ):
            assert_problem(response, 403, "permission_denied", "viewer", "admin")
    with server.http() as root:
        assert state(root) == before
    assert admin.get_model(model).notes == ""


def test_editor_changes_models_but_not_the_project_or_keys(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    editor = new_key(admin, project, "editor")
    with server.client(editor) as sdk:
        model = upload(sdk, project, tmp_path, "mine")
        assert sdk.get_model(model).created_by == "admin"  # keys made by the admin act for its user
        assert sdk.update_model(model, notes="# tuned", summary={"acc": 0.5}).notes == "# tuned"
        assert sdk.add_tags(model, "best").tags == ("best", "cnn")
        assert sdk.rename_model(model, "renamed").name == "renamed"
        assert sdk.set_alias(project, "renamed", "production", model).model_id == model
        other = upload(sdk, project, tmp_path, "other")
        sdk.delete_model(other)
        with pytest.raises(NotFound):
            sdk.get_model(other)
        with pytest.raises(PermissionDenied, match="admin"):
            sdk.delete_project(project, force=True)
        with pytest.raises(PermissionDenied, match="admin"):
            sdk.rename_project(project, "mine now")
        for role in ("viewer", "editor", "admin"):
            with pytest.raises(PermissionDenied, match="admin"):
                sdk.create_key(project=project, role=role)
        with pytest.raises(PermissionDenied, match="global admin"):
            sdk.create_key(admin=True)
        with pytest.raises(PermissionDenied):
            sdk.list_keys(project=project)
        assert [k.id for k in sdk.list_keys()] == [sdk.whoami()["key_id"]]  # only itself
    assert admin.get_project(project).name == "vision"
    assert [m.id for m in admin.list_models(project=project).items] == [model]


def test_project_admin_makes_keys_for_its_own_project_only(
    server: RunningServer, admin: Client, project: str
) -> None:
    other = admin.create_project("other").id
    lead = new_key(admin, project, "admin")
    stranger = admin.create_key(project=other, role="viewer")
    with server.client(lead) as sdk:
        made = {role: sdk.create_key(project=project, role=role, name=role) for role in ("viewer", "editor")}
        for role, new in made.items():
            assert new.key.roles == {project: role} and not new.key.is_admin
            with server.client(new.secret) as fresh:
                assert fresh.whoami()["roles"] == {project: role}
        assert sdk.create_key(project=project, role="admin").key.roles == {project: "admin"}
        assert sdk.rename_project(project, "vision 2").name == "vision 2"
        listed = {k.id for k in sdk.list_keys(project=project)}
        assert {new.key.id for new in made.values()} <= listed
        assert stranger.key.id not in listed
        assert sdk.revoke_key(made["viewer"].key.id).revoked
        with pytest.raises(NotFound, match=other):
            sdk.create_key(project=other, role="viewer")
        with pytest.raises(NotFound, match=other):
            sdk.list_keys(project=other)
        with pytest.raises(NotFound, match=stranger.key.id):
            sdk.revoke_key(stranger.key.id)
        with pytest.raises(NotFound):
            sdk.revoke_key(admin.whoami()["key_id"])  # the global admin's key is not its business
        with pytest.raises(PermissionDenied, match="global admin"):
            sdk.create_key(admin=True)
    assert not {k.id: k for k in admin.list_keys()}[stranger.key.id].revoked
    with server.client(stranger.secret) as still:
        assert still.whoami()["roles"] == {other: "viewer"}


def test_no_role_in_a_project_is_404_for_it_and_its_models(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    mine = upload(admin, project, tmp_path, "mine")
    b = admin.create_project("secret project").id
    theirs = upload(admin, b, tmp_path, "theirs")
    admin.set_alias(b, "theirs", "production", theirs)
    outsider = new_key(admin, project, "admin")  # even an admin of A is no one in B
    with server.http() as root:
        uploading = start_upload(root, b).json()["model"]["id"]
        before = state(root)
    sha = hashlib.sha256(b"half").hexdigest()
    with server.http(outsider) as http:
        listed = http.get("/models", params={"state": "any"}).json()["items"]
        assert [m["id"] for m in listed] == [mine]
        assert {p["id"] for p in http.get("/projects").json()["items"]} == {project}
        assert http.get("/models", params={"name": "theirs"}).json()["items"] == []
        assert [m["id"] for m in http.get("/models", params={"tag": "cnn"}).json()["items"]] == [mine]
        project_calls = [
            ("GET", "/projects/{id}", {}),
            ("PATCH", "/projects/{id}", {"json": {"name": "mine now"}}),
            ("DELETE", "/projects/{id}?force=true", {}),
            ("GET", "/models?project={id}", {}),
            ("POST", "/projects/{id}/models", {"json": {"name": "m", "files": [{"path": "a", "size": 4, "sha256": sha}]}}),
            ("GET", "/projects/{id}/aliases", {}),
            ("GET", "/projects/{id}/aliases/theirs/production", {}),
            ("DELETE", "/projects/{id}/aliases/theirs/production", {}),
            ("GET", "/keys?project={id}", {}),
            ("POST", "/keys", {"json": {"project": "{id}", "role": "viewer"}}),
        ]  # fmt: skip
        model_calls = [
            ("GET", "/models/{id}", {}),
            ("PATCH", "/models/{id}", {"json": {"notes": "mine now"}}),
            ("DELETE", "/models/{id}", {}),
            ("GET", "/models/{id}/files", {}),
            ("GET", "/models/{id}/files/weights.bin", {}),
            ("POST", "/models/{id}/commit", {}),
            ("PUT", "/models/{id}/blobs/" + sha, {"content": b"half"}),
            ("PUT", f"/projects/{project}/aliases/theirs/x", {"json": {"model_id": "{id}"}}),
        ]
        for calls, reals, ghost in (
            (project_calls, [b], "pr0000000"),
            (model_calls, [theirs, uploading], "mo000000000000"),
        ):
            for method, url, kwargs in calls:
                for real in reals:
                    seen = http.request(method, fill(url, real), **fill(kwargs, real))
                    body = assert_problem(seen, 404, "not_found", real)
                    # The same answer as for an id that does not exist: nothing tells them apart.
                    unknown = http.request(method, fill(url, ghost), **fill(kwargs, ghost)).json()
                    assert body["detail"].replace(real, ghost) == unknown["detail"], (method, url)
                    assert body.get("hint") == unknown.get("hint"), (method, url)
    with server.http() as root:
        assert state(root) == before


def test_a_key_that_creates_a_project_administers_it(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    viewer = admin.create_key(project=project, role="viewer")
    with server.client(viewer.secret) as sdk:
        made = sdk.create_project("my own")
        assert sdk.whoami()["roles"] == {project: "viewer", made.id: "admin"}
        assert {p.id for p in sdk.list_projects()} == {project, made.id}
        model = upload(sdk, made.id, tmp_path)  # an admin there may upload …
        helper = sdk.create_key(project=made.id, role="editor")  # … and hand out keys
        assert helper.key.roles == {made.id: "editor"}
        with pytest.raises(PermissionDenied, match="viewer"):
            sdk.update_model(upload(admin, project, tmp_path, "theirs"), notes="x")  # still a viewer in A
        with pytest.raises(PermissionDenied, match="viewer"):
            sdk.create_key(project=project, role="viewer")
        sdk.delete_model(model)
        sdk.delete_project(made.id)
    assert {p.id for p in admin.list_projects()} == {project}
    # The global admin's own projects need no role: it sees everything anyway.
    extra = admin.create_project("by admin")
    assert admin.whoami()["roles"] == {}
    assert extra.id in {p.id for p in admin.list_projects()}


def test_only_a_global_admin_makes_global_admin_keys(
    server: RunningServer, admin: Client, project: str
) -> None:
    made = admin.create_key(admin=True, name="second admin", user="ops")
    assert made.key.is_admin and made.key.roles == {} and made.key.user == "ops"
    hidden = admin.create_project("hidden").id
    with server.client(made.secret) as second:
        assert second.whoami()["is_admin"] is True
        assert {p.id for p in second.list_projects()} == {project, hidden}
        third = second.create_key(admin=True)
        assert third.key.is_admin
        assert second.revoke_key(third.key.id).revoked
    for role in ("viewer", "editor", "admin"):
        with server.client(new_key(admin, project, role)) as sdk:
            with pytest.raises(PermissionDenied, match="global admin"):
                sdk.create_key(admin=True, name="escalate")
            with pytest.raises(PermissionDenied, match="global admin"):
                sdk.create_key(admin=True, project=project, role="admin")
    live_admins = [k.name for k in admin.list_keys() if k.is_admin and not k.revoked]
    assert sorted(live_admins) == ["bootstrap admin", "second admin"]


def test_keys_are_stored_only_as_hashes(server: RunningServer, admin: Client, project: str) -> None:
    made = [
        admin.create_key(project=project, role="viewer", name="v"),
        admin.create_key(admin=True, name="a"),
    ]
    with server.http() as http:
        listed = http.get("/keys").json()["items"]
        whole = http.get("/keys").text
    engine = server.app.state.store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(t.api_keys))]
    assert len(rows) == 3
    stored = repr(rows)
    for new in [*made]:
        assert new.secret.startswith("md_") and len(new.secret) >= 40
        assert new.secret not in stored
        assert new.secret not in whole
        row = next(r for r in rows if r["id"] == new.key.id)
        assert row["secret_hash"] == hashlib.sha256(new.secret.encode()).hexdigest()
    assert server.admin_key not in stored
    assert all("secret" not in k and "secret_hash" not in k for k in listed)
    # The stored hash is not a key either.
    row = next(r for r in rows if r["id"] == made[1].key.id)
    with server.http(row["secret_hash"]) as http:
        assert_problem(http.get("/whoami"), 401, "unauthenticated")
    assert len({new.secret for new in made}) == 2
