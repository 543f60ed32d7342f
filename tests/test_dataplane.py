"""The data plane: large local files through signed URLs on a port of their own, over real HTTP.

What a client (ours, curl, a browser) can send it: Range at odd boundaries, HEAD, If-None-Match, and
every way of getting a URL wrong. A refused part is never counted as received, and the connection
it came on stays usable.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from modeldepot.services.signing import UrlSigner

from .conftest import ADMIN_KEY, RunningServer, make_settings, running_server
from .test_serve import serving

MiB = 1024 * 1024


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunningServer]:
    """A server on SQLite with 1 MiB parts (the data plane does not care which database)."""
    url = f"sqlite:///{tmp_path / 'md.db'}"
    with running_server(make_settings(url, tmp_path / "data", upload_part_size=MiB, gc_grace_seconds=0)) as s:
        yield s


@pytest.fixture
def stored(served: RunningServer, tmp_path: Path) -> dict[str, Any]:
    """A 5 MiB + 7 bytes file uploaded (large enough to be served by the data plane)."""
    data = os.urandom(5 * MiB + 7)
    (tmp_path / "w.bin").write_bytes(data)
    with served.client() as admin:
        project = admin.create_project("p").id
        model = admin.upload(tmp_path / "w.bin", project=project, name="m")
    with served.http() as api:
        files = api.get(f"/models/{model.id}/files").json()["items"]
    return {"data": data, "url": files[0]["url"], "model": model.id, "project": project}


def _plane_url(served: RunningServer) -> str:
    plane = served.app.state.services.models.blobs.presigner  # type: ignore[attr-defined]
    assert plane is not None
    return str(plane.url)


def test_large_files_are_listed_with_a_signed_data_plane_url(
    served: RunningServer, stored: dict[str, Any]
) -> None:
    assert stored["url"].startswith(_plane_url(served) + "/blobs/")
    assert not stored["url"].startswith(served.url)
    with httpx.Client(timeout=30) as http:
        whole = http.get(stored["url"])
    assert whole.status_code == 200 and whole.content == stored["data"]
    digest = hashlib.sha256(stored["data"]).hexdigest()
    assert whole.headers["etag"] == f'"{digest}"'
    assert whole.headers["content-disposition"] == "attachment; filename*=UTF-8''w.bin"
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["accept-ranges"] == "bytes"
    # The API's own URL for the file redirects there, for curl -L and browsers.
    with served.http() as api:
        redirect = api.get(f"/models/{stored['model']}/files/w.bin")
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(_plane_url(served))


@pytest.mark.parametrize(
    ("header", "status", "start", "end"),
    [
        ("bytes=0-0", 206, 0, 1),
        ("bytes=1048575-1048576", 206, MiB - 1, MiB + 1),  # across a part boundary of the upload
        ("bytes=5242880-", 206, 5 * MiB, 5 * MiB + 7),  # the last 7 bytes
        ("bytes=-1", 206, 5 * MiB + 6, 5 * MiB + 7),
        ("bytes=-99999999", 206, 0, 5 * MiB + 7),  # a suffix longer than the file: all of it
        ("bytes=10-99999999", 206, 10, 5 * MiB + 7),  # an end past the file: up to its end
        ("bytes=5242887-", 416, 0, 0),  # starts at the end
        ("bytes=9-3", 416, 0, 0),  # backwards
        ("bytes=0-1,5-6", 200, 0, 5 * MiB + 7),  # several ranges: ignored, the whole file
        ("lines=1-2", 200, 0, 5 * MiB + 7),  # another unit: ignored
    ],
)
def test_range_requests_at_odd_boundaries(
    stored: dict[str, Any], header: str, status: int, start: int, end: int
) -> None:
    with httpx.Client(timeout=30) as http:
        response = http.get(stored["url"], headers={"Range": header})
    assert response.status_code == status
    size = len(stored["data"])
    if status == 206:
        assert response.content == stored["data"][start:end]
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
    elif status == 416:
        assert response.headers["content-range"] == f"bytes */{size}"
    else:
        assert response.content == stored["data"]


def test_head_if_none_match_and_if_range(stored: dict[str, Any]) -> None:
    digest = hashlib.sha256(stored["data"]).hexdigest()
    with httpx.Client(timeout=30) as http:
        head = http.head(stored["url"])
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(stored["data"]))
        assert http.get(stored["url"], headers={"If-None-Match": f'"{digest}"'}).status_code == 304
        # If-Range with another ETag: the file changed, so the whole of it comes back.
        stale = http.get(stored["url"], headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and len(stale.content) == len(stored["data"])
        fresh = http.get(stored["url"], headers={"Range": "bytes=0-9", "If-Range": f'"{digest}"'})
        assert fresh.status_code == 206 and fresh.content == stored["data"][:10]


def test_urls_that_are_wrong_are_refused_clearly(served: RunningServer, stored: dict[str, Any]) -> None:
    url = stored["url"]
    token = url.rsplit("/", 1)[1]
    payload, _, signature = token.partition(".")
    signer: UrlSigner = served.app.state.url_signer  # type: ignore[attr-defined]
    claims = signer.verify(token, "GET")
    expired = signer.sign("GET", {"h": claims["h"], "f": claims["f"]}, timedelta(seconds=-10))
    base = _plane_url(served)
    with httpx.Client(timeout=30) as http:
        cases = {
            "tampered": (http.get(f"{base}/blobs/{payload}.{signature[:-2]}AA"), 403, "signature"),
            "expired": (http.get(f"{base}/blobs/{expired}"), 403, "expired"),
            "a GET URL used to PUT": (http.put(f"{base}/parts/{token}", content=b"x"), 403, "not for PUT"),
            "a GET on /parts": (http.get(f"{base}/parts/{token}"), 404, "No such data URL"),
            "no such path": (http.get(f"{base}/other/{token}"), 404, "No such data URL"),
            "no token": (http.get(f"{base}/blobs/"), 403, "signature"),
        }
    for name, (response, status, words) in cases.items():
        assert response.status_code == status, name
        assert response.headers["content-type"] == "application/problem+json", name
        assert words in response.json()["detail"], (name, response.json())


def test_a_deleted_blob_answers_404(served: RunningServer, stored: dict[str, Any]) -> None:
    with served.client() as admin:
        admin.delete_model(stored["model"])
        assert admin.gc()["blobs_deleted"] == 1
    with httpx.Client(timeout=30) as http:
        response = http.get(stored["url"])
    assert response.status_code == 404 and "not stored" in response.json()["detail"]


def _part_plan(served: RunningServer, data: bytes) -> tuple[str, dict[str, Any]]:
    digest = hashlib.sha256(data).hexdigest()
    with served.http() as api:
        project = api.post("/projects", json={"name": "parts"}).json()["id"]
        plan = api.post(
            f"/projects/{project}/models",
            json={"name": "m", "files": [{"path": "w.bin", "size": len(data), "sha256": digest}]},
        ).json()
        parts = api.post(plan["missing"][0]["parts_url"]).json()
    return plan["model"]["id"], parts


def test_refused_parts_are_not_kept_and_the_connection_stays_usable(served: RunningServer) -> None:
    data = os.urandom(2 * MiB + 10)
    model_id, plan = _part_plan(served, data)
    first, second = plan["parts"][0], plan["parts"][1]
    assert first["url"].startswith(_plane_url(served) + "/parts/")
    target = urlsplit(first["url"])
    conn = http.client.HTTPConnection(target.netloc, timeout=30)

    def put(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn.request("PUT", urlsplit(url).path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None

    part1 = data[:MiB]
    status, problem = put(first["url"], part1, {"X-Part-Sha256": "0" * 64})
    assert status == 422 and "corrupted" in problem["detail"]
    status, problem = put(first["url"], part1[:100])
    assert status == 422 and "expected 1048576" in problem["detail"]
    status, problem = put(second["url"], part1)  # part 1's bytes to part 2: right size, wrong place
    assert status == 204  # accepted as bytes; the whole blob's sha256 catches it at the end
    status, problem = put(first["url"], part1, {"X-Part-Sha256": "not hex"})
    assert status == 422 and "sha256" in problem["detail"].lower()
    # The same keep-alive connection carries a good part after all those refusals.
    status, _ = put(first["url"], part1, {"X-Part-Sha256": hashlib.sha256(part1).hexdigest()})
    assert status == 204
    conn.close()
    with served.http() as api:
        parts = api.post(f"/models/{model_id}/blobs/{plan['sha256']}/parts").json()["parts"]
        assert [p["received"] for p in parts] == [True, True, False]
        httpx.put(parts[2]["url"], content=data[2 * MiB :], timeout=30).raise_for_status()
        wrong = api.post(plan["complete_url"])
        assert wrong.status_code == 422 and "were discarded" in wrong.json()["detail"]
        again = api.post(f"/models/{model_id}/blobs/{plan['sha256']}/parts").json()["parts"]
        assert [p["received"] for p in again] == [False, False, False]  # sent again from scratch


def test_a_body_without_length_is_refused_and_the_connection_closed(served: RunningServer) -> None:
    data = os.urandom(MiB + 1)
    _, plan = _part_plan(served, data)
    target = urlsplit(plan["parts"][0]["url"])
    with socket.create_connection((target.hostname, target.port), timeout=30) as sock:
        sock.sendall(
            f"PUT {target.path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 422") and b"Connection: close" in head
    assert "Content-Length" in json.loads(body)["detail"]


def test_uploads_and_downloads_through_the_cli_use_it(served: RunningServer, tmp_path: Path) -> None:
    """The SDK sends large parts to the data plane; everything arrives intact both ways."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(9 * MiB + 3))
    (src / "small.txt").write_bytes(b"tiny")
    with served.client() as admin:
        project = admin.create_project("p").id
        model = admin.upload(src, project=project, name="m")
        admin.download(model.id, tmp_path / "out")
    for name in ("big.bin", "small.txt"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    env["MODELDEPOT_BOOTSTRAP_ADMIN_KEY"] = ADMIN_KEY
    return subprocess.run(
        [sys.executable, "-m", "modeldepot.cli", "serve", "--data-dir", str(tmp_path / "d"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_says_clearly_when_the_data_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = _serve(tmp_path, "--port", "0", "--data-port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port} for the data plane" in result.stderr
    assert "--data-port -1" in result.stderr


def test_serve_rejects_a_bad_data_port(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--port", "0", "--data-port", "70000")
    assert result.returncode == 1 and "data_port" in result.stderr


def test_serve_puts_the_data_plane_next_to_its_port_or_nowhere(tmp_path: Path) -> None:
    port = _two_free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    with serving(["--port", str(port), "--data-dir", str(tmp_path / "a")], env) as (_, lines):
        assert f"  data:     http://127.0.0.1:{port + 1} (large files, signed URLs)\n" in lines
    with serving(["--port", "0", "--data-port", "-1", "--data-dir", str(tmp_path / "b")], env) as (_, lines):
        assert not any(line.startswith("  data:") for line in lines)


def _two_free_ports() -> int:
    """A free port of 127.0.0.1 whose next port is free too."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no two free ports in a row")


def test_on_every_interface_it_answers_each_client_at_the_host_it_used(tmp_path: Path) -> None:
    """--host 0.0.0.0 and no public URL: a part URL names the host the client reached the API at."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    env |= {"MODELDEPOT_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "MODELDEPOT_UPLOAD_PART_SIZE": str(MiB)}
    args = ["--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path / "d")]
    with serving(args, env) as (url, lines):
        assert url.startswith("http://0.0.0.0:")
        data_line = next(line for line in lines if line.startswith("  data:"))
        data_port = int(data_line.split(":")[3].split()[0])
        api = url.replace("0.0.0.0", "127.0.0.1") + "/api/v1"
        with httpx.Client(base_url=api, headers={"X-API-Key": ADMIN_KEY}, timeout=30) as http:
            project = http.post("/projects", json={"name": "p"}).json()["id"]
            files = [{"path": "big.bin", "size": 2 * MiB + 1, "sha256": "ab" * 32}]
            plan = http.post(f"/projects/{project}/models", json={"name": "m", "files": files}).json()
            parts_url = plan["missing"][0]["parts_url"]
            for host in ("127.0.0.1", "localhost"):
                answer = http.post(parts_url, headers={"Host": f"{host}:1234"}).json()
                assert "parts" in answer, answer
                parts = answer["parts"]
                assert {urlsplit(p["url"]).netloc for p in parts} == {f"{host}:{data_port}"}
            part = http.post(parts_url).json()["parts"][0]
            put = httpx.put(part["url"], content=os.urandom(MiB), timeout=30)
            assert put.status_code == 204  # the URL works as handed out
