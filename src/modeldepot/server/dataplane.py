"""The data plane: file bytes of the local blob store, on a port of their own, through signed URLs.

With an object store (S3 mode) clients send and fetch large files straight from the store through
presigned URLs, and the API server only signs and verifies. This module gives the local blob store
the same shape: a small threaded HTTP/1.1 server (the standard library's ``http.server``) that does
nothing but

- ``PUT /parts/<token>``: one part of a large upload, read with ``readinto`` straight into the aligned
  buffers the store writes it from at its offset (``LocalBlobStore.receive_part``), and hashed;
- ``GET|HEAD /blobs/<token>``: one blob, sent with ``sendfile``, with the sha256 ETag and Last-Modified,
  and Range, If-Range, If-Match and If-None-Match answered as the API's URL of the file answers them
  (the helpers at the end of this module are both URLs' rules).

The token is an HMAC-signed, expiring claim (:mod:`modeldepot.services.signing`) bound to the method
and to one part or one blob, handed out by the API server (``…/parts`` and ``…/files``), just as a
presigned S3 URL is. The API's event loop handles a request body at about 425 MB/s on one core here;
plain threads doing ``recv_into`` and ``sendfile`` release the GIL and move bytes at disk speed on
every core. Anything the data plane refuses gets the same problem+json body as the API.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
from contextvars import ContextVar
from datetime import timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

from ..blobs.local import LocalBlobStore
from ..config import Settings
from ..errors import IntegrityError, InvalidInput, ModeldepotError, NotFound, ServerError
from ..services import validation
from ..services.signing import UrlSigner
from .listen import bind

log = logging.getLogger("modeldepot.dataplane")

BUFFER = 1024 * 1024
DRAIN_AT_MOST = 256 * 1024 * 1024
BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_ETAG = re.compile(r'(W/)?("[^"]*")')


# The host name the client of the API request being served used (its Host header), for base_url.
REQUEST_HOST: ContextVar[str | None] = ContextVar("modeldepot_request_host", default=None)
_WILDCARDS = {"0.0.0.0", "::", ""}


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class RequestHost:
    """ASGI middleware: puts each HTTP request's host name in REQUEST_HOST while it is served."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        try:
            name = urlsplit(f"//{host}").hostname
        except ValueError:
            name = None
        token = REQUEST_HOST.set(name)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_HOST.reset(token)


def start_data_plane(app: Any, settings: Settings, api_url: str) -> DataPlane | None:
    """Start the data plane of an app whose blobs are local (``modeldepot serve`` does, and the
    tests' servers); None when it is off (``data_port`` -1) or the store is an object store.

    Raises OSError (with the port as ``filename``) when its port cannot be bound.
    """
    blobs = app.state.services.models.blobs
    if settings.data_port == -1 or not isinstance(blobs, LocalBlobStore):
        return None
    # Default: next to a port that was asked for; anywhere free next to "any free port".
    port = (
        settings.data_port if settings.data_port is not None else (settings.port + 1 if settings.port else 0)
    )
    try:
        sock = bind(settings.host, port, backlog=256)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(port)) from exc
    if settings.data_public_url:
        public = settings.data_public_url
    else:
        host = urlsplit(api_url).hostname or settings.host
        public = f"http://{_bracket(host)}:{sock.getsockname()[1]}"
    plane = DataPlane(blobs, app.state.url_signer, sock, public)
    blobs.presigner = plane
    plane.start()
    return plane


class DataPlane:
    """Signs URLs for the local blob store and serves them (see the module docstring)."""

    def __init__(self, store: LocalBlobStore, signer: UrlSigner, sock: socket.socket, public_url: str):
        self.store = store
        self.signer = signer
        self.url = public_url.rstrip("/")
        self._server = _Server(sock, self)
        self._thread: threading.Thread | None = None

    # -- signing (called by the blob store on behalf of the API) -------------------------------------

    def base_url(self) -> str:
        """Where clients reach the data plane. Bound to every interface (0.0.0.0, ::) and given no
        public URL, it answers each client at the host name that client used for the API."""
        parts = urlsplit(self.url)
        if parts.hostname in _WILDCARDS and (host := REQUEST_HOST.get()):
            return f"{parts.scheme}://{_bracket(host)}:{parts.port}"
        return self.url

    def part_url(self, staging_id: str, number: int, offset: int, size: int, expires_in: int) -> str:
        claims = {"s": staging_id, "n": number, "o": offset, "z": size}
        return f"{self.base_url()}/parts/{self.signer.sign('PUT', claims, timedelta(seconds=expires_in))}"

    def get_url(self, sha256: str, filename: str, expires_in: int) -> str:
        token = self.signer.sign("GET", {"h": sha256, "f": filename}, timedelta(seconds=expires_in))
        return f"{self.base_url()}/blobs/{token}"

    # -- serving -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="dataplane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.store.presigner is self:
            self.store.presigner = None
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, plane: DataPlane):
        # Bind nothing: serve on the socket the caller bound (so that a busy port fails early and clearly).
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.plane = plane

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed past the handler's own error answers. A client that went away (a
        download stopped with Ctrl-C, a closed browser tab) is normal: one line at debug level, not
        the standard library's traceback on stderr. Anything else is logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):  # BrokenPipeError, ConnectionResetError, ConnectionAbortedError
            log.debug("data plane: client %s:%s went away: %s", *client_address[:2], exc)
            return
        log.error("data plane: request from %s failed", client_address, exc_info=exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection carries many parts
    server: _Server
    server_version = "modeldepot-data"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, too many headers, an
        unknown method) as problem+json, like every other error of the data plane and the API."""
        title, default = self.responses.get(code, ("Error", "The request cannot be served"))
        self.log_error("code %d, message %s", code, message)
        body = http_problem(code, title, message or default)
        self._send_problem(body, unread=None)  # the request was not read: the connection closes

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- PUT /parts/<token> --------------------------------------------------------------------------

    def do_PUT(self) -> None:
        length = self._content_length()
        # Bytes of this request's body not read yet (unknown without a Content-Length).
        self._unread: int | None = length
        try:
            claims = self._claims("/parts/", "PUT")
            staging_id, number, offset, size = (claims["s"], claims["n"], claims["o"], claims["z"])
            if length is None:
                raise InvalidInput(
                    "A part needs a Content-Length header", hint="Send the part's bytes as is."
                )
            if length != size:
                raise IntegrityError(
                    f"Part {number} has {length} bytes (Content-Length), expected {size}; send it again"
                )
            part_sha = self.headers.get("X-Part-Sha256")
            digest = validation.sha256(part_sha) if part_sha is not None else None
            self.server.plane.store.receive_part(staging_id, number, offset, size, self._readinto, digest)
        except ModeldepotError as exc:
            self._problem(exc, self._unread)
            return
        except ConnectionError:
            raise  # the client went away mid-part: nobody to answer (see _Server.handle_error)
        except Exception:
            log.exception("data plane: PUT failed")
            self._problem(ServerError("The server failed to store the part; send it again"), self._unread)
            return
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _readinto(self, view: memoryview) -> int:
        """Read the request body into ``view`` (at most what is left of it), keeping count."""
        n = self.rfile.readinto(view[: self._unread])
        self._unread = (self._unread or 0) - n
        return n

    # -- GET|HEAD /blobs/<token> ---------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, with_body: bool) -> None:
        try:
            claims = self._claims("/blobs/", "GET")
            sha256, filename = claims["h"], claims["f"]
            path = self.server.plane.store.local_path(sha256)
            if path is None:
                raise NotFound(
                    f"Blob {sha256} is not stored (any more)", hint="List the model's files again."
                )
            f = path.open("rb")
            stat = os.fstat(f.fileno())
        except ModeldepotError as exc:
            self._problem(exc, 0)
            return
        except Exception:
            log.exception("data plane: GET failed")
            self._problem(ServerError("The server failed to read the file; it has been logged"), 0)
            return
        with f:
            self._send_blob(f, stat, sha256, filename, with_body)

    def _send_blob(
        self, f: BinaryIO, stat: os.stat_result, sha256: str, filename: str, with_body: bool
    ) -> None:
        """The blob's answer, by the same rules as the API's URL of the file (server/api/models.py)."""
        size = stat.st_size
        etag = f'"{sha256}"'
        last_modified = http_date(stat.st_mtime)
        if not if_match_holds(self.headers.get("If-Match"), etag):
            self._send_problem(precondition_failed(etag), unread=0)
            return
        if if_none_match_hits(self.headers.get("If-None-Match"), etag):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        start, end, status = 0, size, 200
        wanted = self.headers.get("Range")
        if wanted is not None and not BYTE_RANGE.fullmatch(wanted.strip()):
            wanted = None  # not a single byte range: ignored, the whole blob is sent (RFC 9110)
        if wanted is not None and if_range_holds(self.headers.get("If-Range"), etag, last_modified):
            span = parse_range(wanted, size)
            if span is None:
                problem = range_not_satisfiable(wanted, size)
                self._send_problem(problem, unread=0, headers={"Content-Range": f"bytes */{size}"})
                return
            start, end = span
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(filename)}")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        self.send_header("X-Checksum-Sha256", sha256)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if with_body and end > start:
            self.wfile.flush()
            # A client that goes away meanwhile raises ConnectionError: see _Server.handle_error.
            self.connection.sendfile(f, start, end - start)

    # -- anything else -------------------------------------------------------------------------------

    def do_POST(self) -> None:
        """405 as the API answers a method its route does not take (other methods: 501, send_error)."""
        unread = self._content_length()
        if unread is None and "Transfer-Encoding" not in self.headers:
            unread = 0  # no body
        allow = {"/parts/": "PUT", "/blobs/": "GET, HEAD"}.get(self.path[:7])
        if allow is None:
            error = NotFound("No such data URL", hint="Use the URL exactly as the server returned it.")
            self._problem(error, unread)
            return
        problem = http_problem(405, "Method Not Allowed", "Method Not Allowed")
        self._send_problem(problem, unread, headers={"Allow": allow})

    do_DELETE = do_PATCH = do_OPTIONS = do_POST

    # -- helpers -------------------------------------------------------------------------------------

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def _claims(self, prefix: str, method: str) -> dict[str, Any]:
        if not self.path.startswith(prefix):
            raise NotFound("No such data URL", hint="Use the URL exactly as the server returned it.")
        return self.server.plane.signer.verify(self.path[len(prefix) :], method)

    def _problem(self, error: ModeldepotError, unread: int | None) -> None:
        self._send_problem(error.to_problem(), unread)

    def _send_problem(
        self, problem: dict[str, Any], unread: int | None, headers: dict[str, str] | None = None
    ) -> None:
        """A problem+json answer, the same body as the API's. ``unread``: bytes of the request body
        not read yet (None: unknown); a HEAD gets the headers only."""
        if unread:
            unread = self._drain(unread)
        # Written as Starlette's JSONResponse writes it: the same bytes, and Content-Length, as the API's.
        body = json.dumps(problem, ensure_ascii=False, separators=(",", ":")).encode()
        self.send_response(problem["status"])
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if unread != 0:
            # The rest of the request body was not read: the connection cannot carry another request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain(self, unread: int) -> int:
        """Read and drop the rest of a refused body, so that the client gets to read the answer (a
        socket closed with unread bytes resets the connection, and the answer is lost with it)."""
        if unread > DRAIN_AT_MOST:
            return unread
        buf = memoryview(bytearray(BUFFER))
        try:
            while unread:
                n = self.rfile.readinto(buf[: min(BUFFER, unread)])
                if not n:
                    break
                unread -= n
        except OSError:
            pass
        return unread


def if_none_match_hits(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches the strong ``etag``: ``*``, or a list of tags any
    of which is it by the weak comparison (RFC 9110 13.1.2: ``W/"x"`` matches ``"x"``)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(tag == etag for _weak, tag in _ETAG.findall(header))


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) of a single ``bytes=`` range, end exclusive; None when it cannot be satisfied."""
    match = BYTE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    elif last:
        start, end = max(0, size - int(last)), size
    else:
        return None
    return (start, end) if start < end else None


def if_match_holds(header: str | None, etag: str) -> bool:
    """Whether a request may go on under its ``If-Match`` header (False: 412): no header, ``*`` (the
    file exists, or there would be a 404), or a list holding the strong ``etag``. RFC 9110 13.1.1
    asks for the strong comparison here: ``W/"x"`` does not match ``"x"``."""
    if header is None or header.strip() == "*":
        return True
    return any(not weak and tag == etag for weak, tag in _ETAG.findall(header))


def if_range_holds(header: str | None, etag: str, last_modified: str) -> bool:
    """Whether a Range counts under its ``If-Range`` header: no header, or exactly the ETag or the
    ``Last-Modified`` date (RFC 9110 13.1.5); anything else means the client holds another version."""
    return header is None or header.strip() in (etag, last_modified)


def http_date(timestamp: float) -> str:
    """A file's ``Last-Modified`` value: the one Starlette's FileResponse sends from the same stat."""
    return formatdate(timestamp, usegmt=True)


def http_problem(status: int, title: str, detail: str, hint: str | None = None) -> dict[str, Any]:
    """The problem+json body of an HTTP-level refusal (code ``http_error``), in the shape the API's
    error handlers send (server/problems.py)."""
    body: dict[str, Any] = {
        "type": "urn:modeldepot:error:http_error",
        "title": title,
        "status": status,
        "detail": detail,
        "code": "http_error",
    }
    if hint is not None:
        body["hint"] = hint
    return body


def range_not_satisfiable(wanted: str, size: int) -> dict[str, Any]:
    """The 416 body of both URLs of a file (sent with ``Content-Range: bytes */SIZE``)."""
    return http_problem(
        416,
        "Range Not Satisfiable",
        f"The range {wanted.strip()!r} has no bytes in this file of {size} bytes",
        "Ask for a range that starts before the end of the file, or for the whole file.",
    )


def precondition_failed(etag: str) -> dict[str, Any]:
    """The 412 body of both URLs of a file, for an ``If-Match`` that does not hold."""
    return http_problem(
        412,
        "Precondition Failed",
        f"If-Match does not list the file's ETag {etag}: the file is another version than expected",
        "Fetch the file without If-Match, or with the ETag it has now.",
    )
