"""Bulk bytes over plain ``http.client``: a file range sent with ``sendfile``, a body read with
``readinto`` into a reused buffer.

httpx (which the SDK uses for everything else) hands a body over in small ``bytes`` objects and
costs several times the CPU of the transfer itself at disk speeds; these two calls move a large
part or range with next to no Python work per byte. Each thread keeps its own keep-alive
connection per host. A connection the server closed while it sat idle is retried once on a new
one (sending a part or fetching a range again is harmless).
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConnectionFailed, IntegrityError, ModeldepotError, error_from_problem

SEND_SLICE = 8 * 1024 * 1024  # sendfile in slices of this size, to report progress
BUFFER = 1024 * 1024

_T = TypeVar("_T")

_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Bulk:
    def __init__(self, timeout: float | None = None, user_agent: str = "modeldepot-sdk"):
        self.timeout = timeout
        self.user_agent = user_agent
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()  # of every thread, for close()
        self._all_lock = threading.Lock()

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, set()
        for conn in conns:
            conn.close()

    def _conn(self, scheme: str, netloc: str, fresh: bool = False) -> http.client.HTTPConnection:
        conns: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "conns", {}
        )
        key = (scheme, netloc)
        conn = conns.get(key)
        if conn is not None and not fresh:
            return conn
        if conn is not None:
            self._forget(conn)
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = cls(netloc, timeout=self.timeout)
        conns[key] = conn
        with self._all_lock:
            self._all.add(conn)
        return conn

    def _forget(self, conn: http.client.HTTPConnection) -> None:
        conns = self._local.__dict__.get("conns", {})
        for key in [k for k, c in conns.items() if c is conn]:
            del conns[key]
        conn.close()
        with self._all_lock:
            self._all.discard(conn)

    def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        send_body: Callable[[http.client.HTTPConnection], None] | None,
    ) -> http.client.HTTPResponse:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            conn = self._conn(parts.scheme, parts.netloc, fresh=attempt == 2)
            try:
                conn.putrequest(method, target, skip_accept_encoding=True)
                conn.putheader("User-Agent", self.user_agent)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                if conn.sock is not None:
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if send_body is not None:
                    try:
                        send_body(conn)
                    except _RETRYABLE:
                        # The server may have refused the body and answered before it closed: read why.
                        try:
                            return conn.getresponse()
                        except (OSError, http.client.HTTPException):
                            raise BrokenPipeError("the connection closed while sending") from None
                return conn.getresponse()
            except _RETRYABLE as exc:
                self._forget(conn)
                if attempt == 2:
                    raise ConnectionFailed(f"{parts.netloc} closed the connection: {exc}") from exc
            except OSError as exc:
                self._forget(conn)
                raise ConnectionFailed(f"Transfer to or from {parts.netloc} failed: {exc}") from exc
            except BaseException:
                self._forget(conn)  # cut off in the middle of a request (Ctrl-C, a bad file): unusable
                raise
        raise AssertionError("unreachable")

    @classmethod
    def _raise_for(cls, response: http.client.HTTPResponse) -> None:
        raise cls._problem(response.status, response.read())

    @staticmethod
    def _problem(status: int, body: bytes) -> ModeldepotError:
        try:
            detail: Any = json.loads(body)
        except ValueError:
            detail = _object_store_error(status, body.decode("utf-8", "replace"))
        return error_from_problem(status, detail)

    def put_file(
        self,
        url: str,
        path: Path,
        offset: int,
        size: int,
        headers: Mapping[str, str] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        """PUT ``size`` bytes of ``path`` from ``offset`` (zero-copy where the OS allows)."""
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise IntegrityError(f"{path} vanished before it was uploaded", hint="Upload again.") from None
        with f:
            if os.fstat(f.fileno()).st_size < offset + size:
                raise IntegrityError(
                    f"{path} shrank while it was being uploaded", hint="Upload it again when stable."
                )

            def send(conn: http.client.HTTPConnection) -> None:
                assert conn.sock is not None
                pos, left = offset, size
                while left:
                    sent = conn.sock.sendfile(f, pos, min(SEND_SLICE, left))
                    if not sent:
                        raise BrokenPipeError("the file ended early")
                    pos += sent
                    left -= sent
                    if on_bytes is not None:
                        on_bytes(sent)

            all_headers = {
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
                **(headers or {}),
            }
            response = self._exchange("PUT", url, all_headers, send)
            with response:
                if response.status >= 400:
                    self._raise_for(response)
                response.read()

    def get_into(
        self,
        url: str,
        sink: Callable[[memoryview], None],
        headers: Mapping[str, str] | None = None,
        on_start: Callable[[int], None] | None = None,
        into: memoryview | None = None,
    ) -> tuple[int, http.client.HTTPResponse]:
        """GET ``url`` and feed its body to ``sink`` in pieces of one reused buffer; (status, response).

        With ``into`` the body is read straight into that buffer, one piece after the other, and
        ``sink`` gets each piece where it landed (a body larger than the buffer is an error). The
        body of any answer but 200 and 206 is not fed (a 3xx is returned for the caller to follow;
        4xx and 5xx raise the error the body describes). Only reading from the connection fails
        with ConnectionFailed: what ``sink`` or ``on_start`` raise (e.g. a full local disk) comes
        out as it is."""
        netloc = urlsplit(url).netloc

        def receive(read: Callable[..., _T], *args: Any) -> _T:
            try:
                return read(*args)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(url)
                raise ConnectionFailed(f"The download from {netloc} was cut off: {exc}") from exc

        response = self._exchange("GET", url, {"Accept-Encoding": "identity", **(headers or {})}, None)
        with response:
            if response.status >= 400:
                raise self._problem(response.status, receive(response.read))
            if response.status not in (200, 206):
                receive(response.read)
                return response.status, response
            try:
                if on_start is not None:
                    on_start(response.status)
                if into is not None:
                    got = 0
                    while got < len(into) and (n := receive(response.readinto, into[got:])):
                        sink(into[got : got + n])
                        got += n
                    if receive(response.read, 1):
                        raise ConnectionFailed(f"{netloc} sent more than was asked for")
                else:
                    buf = memoryview(bytearray(BUFFER))
                    while n := receive(response.readinto, buf):
                        sink(buf[:n])
            except BaseException:
                self._drop(url)  # the rest of the body is still on the connection
                raise
            return response.status, response

    def _drop(self, url: str) -> None:
        parts = urlsplit(url)
        conn = self._local.__dict__.get("conns", {}).pop((parts.scheme, parts.netloc), None)
        if conn is not None:
            self._forget(conn)


_S3_ERROR = re.compile(r"<Error>.*?<Code>([^<]*)</Code>(?:.*?<Message>([^<]*)</Message>)?", re.S)
_S3_HINTS = {
    "NoSuchKey": "The server's copy of this file is gone from its object store: an administrator should "
    "run `modeldepot fsck`.",
    "AccessDenied": "The object store refused the signed URL (expired, or the server's credentials "
    "changed): run the command again for fresh URLs.",
}


def _object_store_error(status: int, text: str) -> Any:
    """An object store's XML error (a presigned URL's answer) as a problem-like dict, for a readable
    error; other text as it is."""
    match = _S3_ERROR.search(text)
    if match is None:
        return text
    code, message = match.group(1), html.unescape(match.group(2) or "").strip()
    return {
        "detail": f"The object store answered {status} {code}" + (f": {message}" if message else ""),
        "hint": _S3_HINTS.get(code),
    }
