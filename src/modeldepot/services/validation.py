"""Checks on user input shared by every service. Each failure says what was wrong and what to do."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import InvalidInput, PayloadTooLarge
from ..records import MODEL_TYPES

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TAG = re.compile(r"^[^\s,\x00-\x1f\x7f][^,\x00-\x1f\x7f]*$")


def name(value: Any, what: str = "Name", max_len: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(
            f"{what} must be a non-empty string", hint=f"Give a {what.lower()} such as 'resnet'."
        )
    value = value.strip()
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} {value!r} contains control characters")
    if len(value) > max_len:
        raise InvalidInput(f"{what} is {len(value)} characters long; the limit is {max_len}")
    if what == _MODEL_NAME:
        _path_segment_name(value, what)
    return value


# Every service checks a model name with ``name(value, "Model name")``, so the rules for model names
# hang on that label: then an upload, a rename, a workload and the Gradient routes all apply them.
_MODEL_NAME = "Model name"


def model_name(value: Any) -> str:
    """A model name: a name that can also be one segment of a URL path (aliases are set at
    ``/projects/{id}/aliases/{model name}/{alias}``)."""
    return name(value, _MODEL_NAME)


def _path_segment_name(value: str, what: str) -> None:
    # The server decodes %2F before it routes a request, and clients drop "." and ".." segments, so
    # such a name could never be named in a URL: its aliases could not be set. Stored models that
    # already have one keep it (they can be listed, downloaded, deleted and renamed to a valid name).
    if "/" in value or value in (".", ".."):
        raise InvalidInput(
            f"{what} {value!r} is not allowed: a model name cannot contain '/' or be '.' or '..'",
            hint="Choose a name without '/', e.g. 'team-resnet' instead of 'team/resnet'.",
        )


def model_type(value: Any) -> str:
    """Canonical spelling (``Tensorflow``, ``ONNX``, ``Custom``) of a case-insensitive type name."""
    if isinstance(value, str):
        for canonical in MODEL_TYPES:
            if value.strip().lower() == canonical.lower():
                return canonical
    raise InvalidInput(
        f"Model type {value!r} is not known", hint=f"Use one of: {', '.join(MODEL_TYPES)} (any case)."
    )


def json_object(value: Any, what: str, max_bytes: int) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidInput(
                f"{what} is not valid JSON: {exc}", hint='Pass a JSON object, e.g. {"accuracy": 0.9}.'
            ) from None
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{what} must be a JSON object, not {type(value).__name__}",
            hint='Pass a JSON object, e.g. {"accuracy": 0.9, "loss": 0.3}.',
        )
    size = len(json.dumps(value, default=str))
    if size > max_bytes:
        raise PayloadTooLarge(f"{what} is {size} bytes as JSON; the limit is {max_bytes}")
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as exc:
        raise InvalidInput(f"{what} contains NaN or Infinity, which JSON cannot store") from exc
    return value


def tags(values: Any) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise InvalidInput("Tags must be a list of strings")
    out = set()
    for tag in values:
        if not isinstance(tag, str):
            raise InvalidInput(f"Tag {tag!r} is not a string")
        tag = tag.strip()
        if not tag or not _TAG.match(tag) or len(tag) > 100:
            raise InvalidInput(
                f"Tag {tag!r} is not allowed",
                hint="Tags are 1-100 characters without commas or control characters.",
            )
        out.add(tag)
    if len(out) > 100:
        raise InvalidInput(f"{len(out)} tags given; a model or project may have at most 100")
    return tuple(sorted(out))


def sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInput(
            f"{value!r} is not a sha256 digest", hint="Send 64 lowercase hexadecimal characters."
        )
    return value


def text(value: Any, what: str, max_len: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character")
    if len(value) > max_len:
        raise PayloadTooLarge(f"{what} is {len(value)} characters long; the limit is {max_len}")
    return value
