"""Strip the multipart envelope the Gradient CLI wraps around the body of its presigned PUT.

The CLI sends ``--B\\r\\nContent-Disposition: form-data; name="file"; filename="…"\\r\\n\\r\\n<bytes>\\r\\n--B--\\r\\n``
with the file's own mime type (or none) as Content-Type, so the boundary ``B`` is read from the first
line. :class:`EnvelopeStripper` is fed the body chunk by chunk and hands back the file's bytes as they
arrive, holding back only as many bytes as the closing delimiter could span: the body is never held in
memory. A body that does not start like an envelope (e.g. ``curl -T file``) is taken as the raw file.
"""

from __future__ import annotations

import re

from ...errors import InvalidInput

# RFC 2046 boundary: 1-70 characters of this set, not ending in a space.
_BOUNDARY_LINE = re.compile(rb"--([0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?])\r\n")
_MAX_HEAD = 16 * 1024
_MAX_EPILOGUE = 64 * 1024


def _broken(why: str) -> InvalidInput:
    return InvalidInput(
        f"The upload body is not a complete multipart envelope: {why}",
        hint="Send the file again; the upload URL stays valid until it is used or expires.",
    )


class EnvelopeStripper:
    """Feed body chunks to :meth:`feed`, then call :meth:`finish`; both return file bytes to keep."""

    def __init__(self) -> None:
        self._state = "head"  # head -> body -> tail, or head -> raw
        self._buf = bytearray()
        self._delimiter = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._state == "raw":
            return chunk
        self._buf += chunk
        if self._state == "head":
            return self._parse_head(final=False)
        if self._state == "body":
            return self._scan_body()
        if len(self._buf) > _MAX_EPILOGUE:
            raise _broken("there is data after the closing boundary")
        return b""

    def finish(self) -> bytes:
        out = b""
        if self._state == "head":
            out = self._parse_head(final=True)
        if self._state == "raw":
            rest, self._buf = bytes(self._buf), bytearray()
            return out + rest
        if self._state == "body":
            out += self._scan_body()
            if self._state == "body":
                raise _broken("the closing boundary is missing (was the upload cut off?)")
        # After the file's delimiter: "--" closes the envelope; "\r\n" would start a second part.
        if len(self._buf) < 2:
            raise _broken("the closing boundary is cut short (was the upload cut off?)")
        if not self._buf.startswith(b"--"):
            raise _broken("it holds more than one part")
        return out

    def _parse_head(self, *, final: bool) -> bytes:
        line = _BOUNDARY_LINE.match(self._buf)
        if line is None:
            # Not (yet) a boundary line; undecided only while the first line could still become one.
            undecided = b"--".startswith(self._buf[:2]) and b"\n" not in self._buf and len(self._buf) < 80
            return b"" if undecided and not final else self._go_raw()
        end = self._buf.find(b"\r\n\r\n", line.end() - 2)
        if end == -1:
            return b"" if len(self._buf) <= _MAX_HEAD and not final else self._go_raw()
        headers = bytes(self._buf[line.end() : max(end, line.end())]).decode("latin-1").lower()
        if not headers.startswith("content-disposition:") and "\r\ncontent-disposition:" not in headers:
            return self._go_raw()
        self._delimiter = b"\r\n--" + line.group(1)
        del self._buf[: end + 4]
        self._state = "body"
        return self._scan_body()

    def _go_raw(self) -> bytes:
        self._state = "raw"
        out, self._buf = bytes(self._buf), bytearray()
        return out

    def _scan_body(self) -> bytes:
        at = self._buf.find(self._delimiter)
        if at != -1:
            out = bytes(self._buf[:at])
            del self._buf[: at + len(self._delimiter)]
            self._state = "tail"
            return out
        keep = len(self._delimiter) - 1
        if len(self._buf) <= keep:
            return b""
        out = bytes(self._buf[:-keep])
        del self._buf[:-keep]
        return out
