"""What a workload records on the client: where it ran, its bounded log, and the metrics it reports."""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

# The log keeps the first HEAD_BYTES and the last TAIL_BYTES of the output, with a marker line
# between them saying how much was left out: the start (configuration, versions) and the end (the
# final epochs, the traceback) are what one reads, and memory stays bounded however long a run is.
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 448 * 1024

# Points per series the server accepts; longer series are thinned (every other point, the last kept).
MAX_POINTS = 10_000

METRICS_FILE = "metrics.json"
GRADIENT_METADATA_FILE = "gradient-model-metadata.json"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- where it ran ------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or a hung one
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(cwd: Path) -> dict[str, Any]:
    """Commit, branch and dirty flag of the git work tree at ``cwd`` (all None outside one).

    Dirty means tracked files differ from the commit (what ``git describe --dirty`` says); files git
    does not track, such as a run's outputs, do not count.
    """
    commit = _git(cwd, "rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        return {"git_commit": None, "git_branch": None, "git_dirty": None}
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_branch": _git(cwd, "symbolic-ref", "--quiet", "--short", "HEAD") or None,  # None: detached
        "git_dirty": None if status is None else bool(status),
    }


def kept_env(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values of exactly the variables named (those that are set): nothing else is recorded."""
    source = os.environ if environ is None else environ
    kept = {}
    for name in names:
        if not _ENV_NAME.match(name):
            raise InvalidInput(
                f"--env-keep {name!r} is not an environment variable name",
                hint="e.g. --env-keep CUDA_VISIBLE_DEVICES",
            )
        if name in source:
            kept[name] = source[name]
    return kept


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return str(os.getuid()) if hasattr(os, "getuid") else ""


def provenance(command: Sequence[str], cwd: Path, env_keep: Iterable[str]) -> dict[str, Any]:
    """The fields of a new workload that describe where and how it runs."""
    return {
        "command": list(command),
        "working_dir": str(cwd),
        "host": socket.gethostname(),
        "user": os_user(),
        "env": kept_env(env_keep),
        **git_state(cwd),
    }


# -- the log -----------------------------------------------------------------------------------------


def _amount(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


class LogBuffer:
    """Output kept in bounded memory: the first ``head`` bytes and the last ``tail`` bytes."""

    def __init__(self, head: int = HEAD_BYTES, tail: int = TAIL_BYTES):
        self.head_limit, self.tail_limit = head, tail
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            room = self.head_limit - len(self._head)
            if room > 0:
                self._head += data[:room]
                data = data[room:]
            if data:
                self._tail += data
                if len(self._tail) > 2 * self.tail_limit:  # trimmed now and then, not on every write
                    del self._tail[: -self.tail_limit]

    def text(self) -> str:
        """The kept output as text (invalid UTF-8 and NUL replaced), with a marker where bytes were left out."""
        with self._lock:
            head, tail = bytes(self._head), bytes(self._tail[-self.tail_limit :] if self.tail_limit else b"")
            left_out = self.total - len(head) - len(tail)
        text = head.decode("utf-8", "replace")
        if left_out:
            text += (
                f"\n[modeldepot: {left_out} bytes of output left out here; the log keeps the first "
                f"{_amount(self.head_limit)} and the last {_amount(self.tail_limit)}]\n"
            )
        text += tail.decode("utf-8", "replace")
        return text.replace("\x00", "\ufffd")


# -- metrics -----------------------------------------------------------------------------------------


def _finite(value: float | int | None) -> float | int | None:
    """NaN and infinities (and integers too large for a float) become None: JSON cannot hold them,
    and a diverged loss shows as a gap."""
    try:
        return value if value is None or math.isfinite(value) else None
    except OverflowError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def thin(steps: list[int], values: list[Any], limit: int = MAX_POINTS) -> tuple[list[int], list[Any]]:
    """Halve the resolution until the series fits: keep every other point, always the last one."""
    while len(steps) > limit:
        start = (len(steps) - 1) % 2
        steps, values = steps[start::2], values[start::2]
    return steps, values


def _points(where: str, key: str, items: list[Any]) -> tuple[list[int], list[Any]]:
    """A list of numbers (steps 0, 1, …), of [step, value] pairs, or of {"step": s, "value": v}."""
    if not items:
        raise InvalidInput(
            f"{where}: series {key!r} is an empty list", hint="Leave it out, or give its values."
        )
    steps: list[int] = []
    values: list[Any] = []
    for i, item in enumerate(items):
        if _is_number(item) or item is None:
            step, value = i, item
        elif isinstance(item, list) and len(item) == 2:
            step, value = item
        elif isinstance(item, dict) and set(item) == {"step", "value"}:
            step, value = item["step"], item["value"]
        else:
            raise InvalidInput(
                f"{where}: point {i} of series {key!r} is {json.dumps(item)[:80]}, not a number",
                hint='A series is a list of numbers, e.g. "loss": [0.9, 0.5, 0.3], or of [step, value] pairs.',
            )
        if not (_is_number(value) or value is None):
            raise InvalidInput(f"{where}: point {i} of series {key!r} has the value {value!r}, not a number")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 or (steps and step <= steps[-1]):
            raise InvalidInput(
                f"{where}: point {i} of series {key!r} has step {step!r}; steps are integers from 0 up, increasing"
            )
        steps.append(step)
        values.append(_finite(value))
    return thin(steps, values)


def parse_metrics(document: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Summary and series from a metrics document, e.g. ``{"accuracy": 0.93, "loss": [0.9, 0.5, 0.3]}``.

    A scalar (number, string, boolean, null) goes to the summary. A list becomes a series, and its last
    value goes to the summary too. Anything else (a nested object) is refused.
    """
    if not isinstance(document, dict):
        raise InvalidInput(
            f"{where} must hold a JSON object of metrics, not {type(document).__name__}",
            hint='e.g. {"accuracy": 0.93, "loss": [0.9, 0.5, 0.3]}',
        )
    summary: dict[str, Any] = {}
    series: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, list):
            steps, values = _points(where, key, value)
            series[key] = {"steps": steps, "values": values}
            summary[key] = values[-1]
        elif value is None or isinstance(value, str | bool):
            summary[key] = value
        elif _is_number(value):
            summary[key] = _finite(value)
        else:
            raise InvalidInput(
                f"{where}: metric {key!r} is a {type(value).__name__}; a summary value must be a number, "
                "string, boolean or null",
                hint='Give scalars for the summary and lists of numbers for series, e.g. "loss": [0.9, 0.5].',
            )
    return summary, series


def read_metrics(path: Path, where: str, *, key: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a metrics file (or, with ``key``, that member of the file's object); ``where`` names it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"Cannot read the metrics file {where}: {exc.strerror or exc}",
            hint="Check the path given to --metrics (relative to the directory the command runs in).",
        ) from None
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(
            f"The metrics file {where} is not valid JSON: {exc}",
            hint='Write a JSON object, e.g. {"accuracy": 0.93, "loss": [0.9, 0.5, 0.3]}.',
        ) from None
    if key is not None:
        if not isinstance(document, dict) or not isinstance(document.get(key), dict):
            return {}, {}
        document = document[key]
    return parse_metrics(document, where)


def find_metrics(output: Path, explicit: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's metrics: ``explicit`` (``--metrics``), else ``metrics.json`` in the output, else the
    ``"metrics"`` object of ``gradient-model-metadata.json`` there; none of them: no metrics."""
    if explicit is not None:
        return read_metrics(explicit, str(explicit))
    for name, key in ((METRICS_FILE, None), (GRADIENT_METADATA_FILE, "metrics")):
        if (output / name).is_file():
            return read_metrics(output / name, f"{name} (in the model directory)", key=key)
    return {}, {}
