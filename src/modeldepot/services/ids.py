"""Ids in Gradient's style: a two-letter prefix and lowercase base-36 characters."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.digits + string.ascii_lowercase


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def project_id() -> str:
    return "pr" + _random(7)


def model_id() -> str:
    return "mo" + _random(12)


def key_id() -> str:
    return "ak" + _random(10)


def workload_id() -> str:
    return "wl" + _random(12)


def store_id() -> str:
    """The id a metadata database and its blob store name each other by."""
    return "bs" + _random(16)
