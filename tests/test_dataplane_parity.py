"""A file's two URLs answer alike: the API's (``/api/v1/models/{id}/files/{path}``) and the data
plane's signed URL of the same blob, for every conditional header (Range, If-Range with an ETag or a
date, If-Match, If-None-Match) and every error either answers (problem+json bodies, identical).

Also what the data plane does when a client goes away mid-transfer (one line, no traceback) or when
something else fails (logged with its traceback), and the Unix modes of zip and tar entries. Real
servers over real HTTP, real sockets for what httpx will not send.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import RunningServer, make_settings, running_server, write_tree
from .test_cli import run

MiB = 1024 * 1024
DATA = bytes(range(256)) * 40  # 10,240 bytes: small enough for the API to serve it itself


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunningServer]:
    """A server on SQLite with its data plane (neither cares which database)."""
    url = f"sqlite:///{tmp_path / 'md.db'}"
    with running_server(make_settings(url, tmp_path / "data", upload_part_size=MiB)) as s:
        yield s


def _plane(served: RunningServer) -> Any:
    plane = served.app.state.services.models.blobs.presigner  # type: ignore[attr-defined]
    assert plane is not None
    return plane


def _upload(served: RunningServer, tmp_path: Path, files: dict[str, bytes]) -> str:
    src = write_tree(tmp_path / "src", files)
    with served.client() as admin:
        project = admin.create_project("p").id
        return admin.upload(src, project=project, name="m").id


@pytest.fixture
def urls(served: RunningServer, tmp_path: Path) -> dict[str, str]:
    """One file's two URLs: the API serves it itself (it is small), and the data plane's URL of the
    same blob, signed as the server signs the ones it hands out for large files."""
    model = _upload(served, tmp_path, {"w.bin": DATA})
    sha = hashlib.sha256(DATA).hexdigest()
    return {
        "api": f"{served.url}/api/v1/models/{model}/files/w.bin",
        "plane": _plane(served).get_url(sha, "w.bin", 600),
        "sha": sha,
    }


def _fetch(served: RunningServer, url: str, headers: dict[str, str], method: str = "GET") -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.request(method, url, headers={"X-API-Key": served.admin_key, **headers})


# What the two URLs must agree on. (Content-Disposition is written differently by each, and the
# data plane does not send the API's Date-like server headers; neither is a validator.)
COMPARED = (
    "content-type",
    "content-length",
    "content-range",
    "etag",
    "last-modified",
    "x-checksum-sha256",
)

SHA = "{sha}"
LAST_MODIFIED = "{last_modified}"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),
        ({"Range": "bytes=0-0"}, 206),
        ({"Range": "bytes=10-19", "If-Range": f'"{SHA}"'}, 206),
        ({"Range": "bytes=0-0", "If-Range": LAST_MODIFIED}, 206),  # the tester's case: 200 on the plane
        ({"Range": "bytes=0-0", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"}, 200),  # another version
        ({"Range": "bytes=0-0", "If-Range": f'W/"{SHA}"'}, 200),  # a weak tag never lets a Range count
        ({"Range": "bytes=10240-"}, 416),  # starts at the end
        ({"Range": "bytes=9-3"}, 416),
        ({"Range": "bytes=-0"}, 416),
        ({"If-Match": '"x"'}, 412),
        ({"If-Match": f'W/"{SHA}"'}, 412),  # If-Match compares strongly (RFC 9110 13.1.1)
        ({"If-Match": f'"{SHA}"'}, 200),
        ({"If-Match": f'"x", "{SHA}"'}, 200),
        ({"If-Match": "*"}, 200),
        ({"If-Match": f'"{SHA}"', "Range": "bytes=0-9"}, 206),
        ({"If-Match": '"x"', "Range": "bytes=0-9"}, 412),
        ({"If-Match": '"x"', "If-None-Match": f'"{SHA}"'}, 412),  # If-Match is evaluated first
        ({"If-Match": f'"{SHA}"', "If-None-Match": f'"{SHA}"'}, 304),
        ({"If-None-Match": f'W/"{SHA}"'}, 304),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_both_urls_answer_conditional_headers_alike(
    served: RunningServer, urls: dict[str, str], headers: dict[str, str], status: int, method: str
) -> None:
    plain = _fetch(served, urls["api"], {})
    values = {"sha": urls["sha"], "last_modified": plain.headers["last-modified"]}
    sent = {name: value.format(**values) for name, value in headers.items()}
    api = _fetch(served, urls["api"], sent, method)
    plane = _fetch(served, urls["plane"], sent, method)
    assert (api.status_code, plane.status_code) == (status, status)
    for name in COMPARED:
        assert api.headers.get(name) == plane.headers.get(name), name
    if method == "HEAD":
        assert api.content == plane.content == b""
    elif status >= 400:
        assert api.headers["content-type"] == "application/problem+json"
        assert api.json() == plane.json()
        assert api.json()["status"] == status and api.json()["code"] == "http_error"
    else:
        assert api.content == plane.content
    if status in (200, 206):
        assert plane.headers["etag"] == f'"{urls["sha"]}"'
        assert plane.headers["last-modified"] == plain.headers["last-modified"]
    if status == 416:
        assert plane.headers["content-range"] == f"bytes */{len(DATA)}"


def test_last_modified_is_the_blobs_modification_time(served: RunningServer, urls: dict[str, str]) -> None:
    path = served.settings.data_dir / "blobs" / "sha256" / urls["sha"][:2] / urls["sha"]
    expected = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(path.stat().st_mtime))
    assert _fetch(served, urls["plane"], {}).headers["last-modified"] == expected
    assert _fetch(served, urls["api"], {}).headers["last-modified"] == expected


def test_a_large_files_url_honours_if_match_before_redirecting(served: RunningServer, tmp_path: Path) -> None:
    """The API hands a large file to the data plane (307): a failing If-Match is answered first."""
    data = os.urandom(5 * MiB)
    model = _upload(served, tmp_path, {"big.bin": data})
    url = f"{served.url}/api/v1/models/{model}/files/big.bin"
    assert _fetch(served, url, {}).status_code == 307
    refused = _fetch(served, url, {"If-Match": '"x"'})
    assert refused.status_code == 412 and refused.json()["code"] == "http_error"
    with httpx.Client(timeout=30, follow_redirects=True) as http:
        good = http.get(
            url,
            headers={"X-API-Key": served.admin_key, "If-Match": f'"{hashlib.sha256(data).hexdigest()}"'},
        )
    assert good.status_code == 200 and good.content == data


# -- errors the data plane answers itself ---------------------------------------------------------


def _raw(url: str, request: bytes) -> tuple[bytes, bytes]:
    target = urlsplit(url)
    with socket.create_connection((target.hostname, target.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_requests_the_http_server_refuses_get_problem_json(urls: dict[str, str]) -> None:
    """Refusals of the standard library's HTTP server itself (before our handler runs)."""
    path = urlsplit(urls["plane"]).path
    many = "".join(f"X-{n}: {n}\r\n" for n in range(200))
    head, body = _raw(urls["plane"], f"GET {path} HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert head.startswith(b"HTTP/1.1 431 "), head
    assert b"Content-Type: application/problem+json" in head and b"Connection: close" in head
    problem = json.loads(body)
    assert problem == {
        "type": "urn:modeldepot:error:http_error",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": "Too many headers",
        "code": "http_error",
    }
    head, body = _raw(urls["plane"], f"BREW {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 501 "), head
    assert json.loads(body)["title"] == "Not Implemented"


def test_a_method_neither_url_takes_gets_the_same_405(served: RunningServer, urls: dict[str, str]) -> None:
    api = _fetch(served, urls["api"], {}, "DELETE")
    plane = _fetch(served, urls["plane"], {}, "DELETE")
    assert api.status_code == plane.status_code == 405
    assert plane.headers["content-type"] == "application/problem+json"
    assert plane.headers["allow"] == "GET, HEAD"
    # Dropped by the API's error handler before; Starlette lists the methods in no fixed order.
    assert set(api.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert api.json() == plane.json()
    with httpx.Client(timeout=30) as http:
        post = http.post(urls["plane"], content=b"x" * 1000)
    assert post.status_code == 405 and post.json()["title"] == "Method Not Allowed"


def test_errors_to_head_have_no_body_and_the_connection_stays_usable(urls: dict[str, str]) -> None:
    target = urlsplit(urls["plane"])
    conn = http.client.HTTPConnection(target.netloc, timeout=30)
    try:
        for path in ("/blobs/not-a-token", "/elsewhere"):
            conn.request("HEAD", path)
            refused = conn.getresponse()
            assert refused.status in (403, 404) and refused.read() == b""
            assert refused.getheader("Content-Type") == "application/problem+json"
        conn.request("HEAD", target.path, headers={"Range": "bytes=999999-"})
        unsatisfiable = conn.getresponse()
        assert unsatisfiable.status == 416 and unsatisfiable.read() == b""
        conn.request("GET", target.path)  # the same connection: nothing of those answers left over
        whole = conn.getresponse()
        assert whole.status == 200 and whole.read() == DATA
    finally:
        conn.close()


# -- a client that goes away, and failures that are not that ---------------------------------------


def _went_away(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "modeldepot.dataplane" and "went away" in r.getMessage()]


def _wait_for(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    deadline = time.monotonic() + 15
    while not _went_away(caplog) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _went_away(caplog)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a killed client's kernel may: the server's next send fails."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_client_that_goes_away_mid_download_is_one_line(
    served: RunningServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    how: str,
) -> None:
    data = os.urandom(24 * MiB)  # more than the socket buffers hold: the server is still sending
    model = _upload(served, tmp_path, {"big.bin": data})
    with served.http() as api:
        url = api.get(f"/models/{model}/files").json()["items"][0]["url"]
    assert url.startswith(_plane(served).url)
    caplog.set_level(logging.DEBUG, logger="modeldepot.dataplane")
    target = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((target.hostname, target.port))
    sock.sendall(f"GET {target.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    if how == "reset":
        _reset(sock)
    else:
        sock.close()  # unread bytes in its buffer: Linux answers the server's next bytes with a reset
    records = _wait_for(caplog)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert records[0].levelno == logging.DEBUG and records[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_goes_away_mid_part_is_one_line(
    served: RunningServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(2 * MiB)
    with served.http() as api:
        project = api.post("/projects", json={"name": "parts"}).json()["id"]
        digest = hashlib.sha256(data).hexdigest()
        files = [{"path": "w.bin", "size": len(data), "sha256": digest}]
        plan = api.post(f"/projects/{project}/models", json={"name": "m", "files": files}).json()
        part = api.post(plan["missing"][0]["parts_url"]).json()["parts"][0]
    caplog.set_level(logging.DEBUG, logger="modeldepot.dataplane")
    target = urlsplit(part["url"])
    sock = socket.create_connection((target.hostname, target.port), timeout=30)
    sock.sendall(f"PUT {target.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {MiB}\r\n\r\n".encode())
    sock.sendall(data[: MiB // 2])
    time.sleep(0.2)  # the server is reading the part
    _reset(sock)
    records = _wait_for(caplog)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err


def test_a_blob_that_cannot_be_read_is_a_500_and_logged(
    served: RunningServer, urls: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Not a client going away: the operator must see it, with its traceback."""
    path = served.settings.data_dir / "blobs" / "sha256" / urls["sha"][:2] / urls["sha"]
    path.unlink()
    path.mkdir()  # there, but not a file anyone can read
    caplog.set_level(logging.DEBUG, logger="modeldepot.dataplane")
    response = _fetch(served, urls["plane"], {})
    assert response.status_code == 500 and response.json()["code"] == "server_error"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info is not None and not _went_away(caplog)


# -- archive entries are -rw-r--r-- in both formats ------------------------------------------------


def test_zip_entries_are_regular_files_rw_r_r_like_tar(served: RunningServer, tmp_path: Path) -> None:
    model = _upload(served, tmp_path, {"a.txt": b"alpha\n", "sub/dir/b.bin": os.urandom(3000)})
    with served.http() as api:
        zipped = api.get(f"/models/{model}/archive", params={"format": "zip"})
        tarred = api.get(f"/models/{model}/archive", params={"format": "tar"})
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        zip_modes = {i.filename: (i.create_system, i.external_attr >> 16) for i in archive.infolist()}
    with tarfile.open(fileobj=io.BytesIO(tarred.content)) as archive:
        tar_modes = {m.name: stat.S_IFREG | m.mode for m in archive.getmembers() if m.isfile()}
        assert len(tar_modes) == len(archive.getmembers())  # files only: no directory entries
    assert zip_modes == {name: (3, mode) for name, mode in tar_modes.items()}
    assert {stat.filemode(mode) for mode in tar_modes.values()} == {"-rw-r--r--"}
    # What the tester saw: `unzip -Z` on what the CLI saves.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env |= {"MODELDEPOT_URL": served.url, "MODELDEPOT_API_KEY": served.admin_key}
    dest = tmp_path / "m.zip"
    run(["models", "archive", model, str(dest)], env)
    listing = subprocess.run(["unzip", "-Z", str(dest)], capture_output=True, text=True, check=True).stdout
    entries = [line for line in listing.splitlines() if line.endswith(("a.txt", "b.bin"))]
    assert len(entries) == 2 and all(line.startswith("-rw-r--r--") for line in entries), listing
