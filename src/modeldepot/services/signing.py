"""Signed, expiring tokens for presigned URLs: the URL alone authorizes one transfer.

A token is ``<payload>.<signature>``, both base64url without padding. The payload is compact JSON of
the claims plus the HTTP method it is bound to (``m``) and its expiry (``exp``, Unix seconds); the
signature is HMAC-SHA256 of the payload under the server's signing secret. A token for a PUT cannot
be used for a GET, a token for one model or file cannot be used for another, and it stops working
when it expires. Whatever else a transfer needs (one use only, the signer's key still valid) the
caller checks against the claims.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

from ..errors import PermissionDenied


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UrlSigner:
    """Signs and checks the tokens of presigned URLs with one server secret."""

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes long")
        self._secret = secret

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def sign(self, method: str, claims: dict[str, Any], ttl: timedelta) -> str:
        body = {**claims, "m": method.upper(), "exp": int(time.time() + ttl.total_seconds())}
        payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, method: str) -> dict[str, Any]:
        """The claims of a valid, unexpired token for ``method``; :class:`PermissionDenied` otherwise."""
        payload, _, signature = token.partition(".")
        try:
            good = bool(payload) and hmac.compare_digest(self._mac(payload), signature)
        except (UnicodeEncodeError, TypeError):
            good = False
        if not good:
            raise PermissionDenied(
                "This URL's signature is not valid",
                hint="Use the URL exactly as the server returned it, or ask for a new one. (Behind a "
                "load balancer, every replica must have the same MODELDEPOT_SIGNING_SECRET.)",
            )
        claims: Any = json.loads(_unb64(payload))
        if not isinstance(claims, dict) or claims.get("m") != method.upper():
            raise PermissionDenied(f"This URL is not for {method.upper()} requests")
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            raise PermissionDenied(
                "This URL has expired", hint="Ask for a new one (re-run the upload or the download)."
            )
        return claims
