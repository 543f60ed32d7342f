"""Checks on the SDK's arguments: bad input fails here, saying what was wrong and what to do,
before a request is sent or a file hashed."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidInput

_ID_EXAMPLES = {"Model id": "mo…", "Project id": "pr…", "Key id": "ak…", "Workload id": "wl…"}


def server_url(url: Any) -> str:
    """The server's base URL, without a trailing ``/`` or ``/api/v1`` (the SDK adds that itself)."""
    example = "http://127.0.0.1:8750"
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput(
            f"The server URL must be a non-empty string, not {url!r}",
            hint=f"Give its base URL, e.g. {example}",
        )
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        fixed = f"http://{url}" if "://" not in url else example
        raise InvalidInput(
            f"The server URL {url!r} does not start with http:// or https://",
            hint=f"Give the scheme too, e.g. {fixed}",
        )
    if parts.query or parts.fragment:
        raise InvalidInput(
            f"The server URL {url!r} has a query or fragment", hint=f"Give its base URL, e.g. {example}"
        )
    if url.endswith("/api/v1"):  # the API's URL rather than the server's: the same server
        url = url[: -len("/api/v1")]
    return url


def checked_id(value: Any, what: str) -> str:
    """An id that can be one segment of a request path (ids the server hands out always can)."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or value in (".", "..")
        or "/" in value
        or "\\" in value
    ):
        raise InvalidInput(
            f"{what} {value!r} is not valid: an id is not empty, has no '/' or '\\' and is not '.' or '..'",
            hint=f"Use the id the server gave ({_ID_EXAMPLES.get(what, 'e.g. mo…')}), as the list commands show.",
        )
    return value


def segment(value: Any, what: str) -> str:
    """A model name or alias that is one segment of a request path."""
    if not isinstance(value, str) or not value.strip() or value in (".", "..") or "/" in value:
        hint = (
            "A model with such a name cannot have aliases: rename it (`modeldepot models rename ID NEW`)."
            if what == "Model name"
            else "Use letters, digits, '.', '_' and '-', e.g. 'production'."
        )
        raise InvalidInput(
            f"{what} {value!r} cannot be named in a request: it is empty, '.' or '..', or contains '/'",
            hint=hint,
        )
    return value


def local_path(value: Any, what: str) -> Path:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InvalidInput(
            f"{what} must be a path (str or pathlib.Path), not {type(value).__name__}",
            hint="e.g. './out' or pathlib.Path('model.onnx')",
        )
    if not value.strip():
        raise InvalidInput(f"{what} is an empty string", hint="Give a path; '.' is the current directory.")
    return Path(value)


def tags_list(value: Any, what: str = "tags") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        raise InvalidInput(
            f"{what} must be a list of strings, not the string {value!r}",
            hint=f"For one tag pass {what}=[{value!r}]; a string would be taken letter by letter.",
        )
    if not isinstance(value, list | tuple | set | frozenset):
        raise InvalidInput(
            f"{what} must be a list of strings, not {type(value).__name__}",
            hint=f"e.g. {what}=['cnn', 'small']",
        )
    for tag in value:
        if not isinstance(tag, str):
            raise InvalidInput(f"Tag {tag!r} in {what} is not a string", hint=f"e.g. {what}=['cnn', 'small']")
    return list(value)


def tag_args(tags: tuple[Any, ...]) -> list[str]:
    for tag in tags:
        if not isinstance(tag, str):
            raise InvalidInput(
                f"Tag {tag!r} is not a string",
                hint="Pass each tag as its own argument: add_tags(model_id, 'cnn', 'small'), "
                "or add_tags(model_id, *tags) for a list.",
            )
    return list(tags)


def filter_value(value: Any, what: str) -> Any:
    """One value of a list filter: a string (or None for no filter)."""
    if value is not None and not isinstance(value, str):
        raise InvalidInput(
            f"The {what} filter must be one string, not {type(value).__name__}",
            hint="Filter by one value; to combine, list several times and merge the results.",
        )
    return value


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what} must be a positive whole number, not {value!r}", hint=f"e.g. {what}=4")
    return value


def json_problem(value: Any, where: str) -> InvalidInput | None:
    """The first value under ``value`` that JSON cannot carry, as an error naming it by its path
    (``summary['loss'][2]``); None when there is none. Only walked after encoding failed."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return InvalidInput(
            f"{where} is {value!r}: JSON cannot carry NaN or Infinity",
            hint="Send a finite number, or None for a missing value.",
        )
    if isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str | int | float | bool | type(None)):
                return InvalidInput(
                    f"{where} has the key {key!r}, a {type(key).__name__}: JSON keys are strings",
                    hint="Use string keys.",
                )
            found = json_problem(item, f"{where}[{key!r}]" if where else str(key))
            if found is not None:
                return found
        return None
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return InvalidInput(
        f"{where or 'The request body'} is {shown}, a {type(value).__name__}, which JSON cannot carry",
        hint="Use dicts, lists, strings, numbers, booleans and None: e.g. a list instead of a set, "
        "float(x) for a numpy number.",
    )


def check_json(value: Any, where: str) -> None:
    problem = json_problem(value, where)
    if problem is not None:
        raise problem


def check_model_fields(fields: dict[str, Any]) -> None:
    """The fields a model is made or changed with, checked before anything is sent or hashed."""
    for key in ("tags", "add_tags", "remove_tags"):
        if key in fields:
            tags_list(fields[key], key)
    for key in ("summary", "metadata", "series"):
        if fields.get(key) is not None:
            check_json(fields[key], key)
