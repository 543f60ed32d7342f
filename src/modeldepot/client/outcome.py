"""Models from workloads: how a run that makes a model ends, shared by the SDK's block of Python
(``workload.py``) and by commands (``command.py``, ``modeldepot run``).

1. A workload is started on the server (``running``) with where it runs: command, host, user,
   working directory, git commit and dirty flag, and only the environment variables named in
   ``env_keep``.
2. It runs; its output is streamed through and its head and tail kept (:class:`LogBuffer`).
3. On success, :meth:`Outcome.succeed` reports the end with the log and the metrics (``uploading``:
   the server checks them before any model exists), uploads the output directory through the
   normal resumable upload, and claims the model (``succeeded``: the model is linked and takes the
   series in one transaction).
4. On failure or interrupt, :meth:`Outcome.fail` reports ``failed`` or ``interrupted`` with the log;
   no model remains. A Ctrl-C during the upload is turned into an error the uploader answers by
   removing its half-made model (instead of keeping it to resume: a re-run is a new workload).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import Conflict, InvalidInput, ModeldepotError
from ..records import Model, Workload
from .provenance import LogBuffer

if TYPE_CHECKING:
    from .client import Client, Progress


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class RunInterrupted(Exception):
    """A signal (Ctrl-C, SIGTERM) arrived while the output was being uploaded.

    Deliberately not a KeyboardInterrupt: the uploader keeps a half-made model after one (to resume
    it), and removes it after any other error, which is what a workload wants.
    """

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal_name(signum)}")
        self.signum = signum


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`RunInterrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupt_state(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, KeyboardInterrupt | RunInterrupted) else "failed"


def describe(exc: BaseException) -> str:
    if isinstance(exc, RunInterrupted | KeyboardInterrupt):
        return str(exc) or "interrupted"
    if isinstance(exc, ModeldepotError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"


def model_fields(
    type: str | None,
    tags: Sequence[str],
    notes: str | None,
    metadata: dict[str, Any] | None,
    dataset_ref: str | None,
) -> dict[str, Any]:
    """What the model will be uploaded with; a new workload is sent them too, to check them early."""
    return {
        "type": type,
        "tags": list(tags),
        "notes": notes,
        "metadata": metadata,
        "dataset_ref": dataset_ref,
    }


class Outcome:
    """Reports how a workload ends; makes sure a failed or interrupted one leaves no model."""

    def __init__(self, client: Client, workload: Workload, log: LogBuffer):
        self.client = client
        self.workload = workload
        self.log = log
        self.ended = False  # has the end of the run (with its log) been reported?

    def succeed(
        self,
        source: Path,
        upload: dict[str, Any],
        summary: dict[str, Any],
        series: dict[str, Any],
        exit_code: int | None,
        progress: Progress | None,
    ) -> Model:
        """Report the end, upload ``source`` and claim it; on any failure, :meth:`fail` and re-raise."""
        model: Model | None = None
        try:
            with signals_raise():
                self.workload = self.client.update_workload(
                    self.workload.id,
                    state="uploading",
                    exit_code=exit_code,
                    log=self.log.text(),
                    log_bytes=self.log.total,
                    summary=summary,
                    series=series,
                )
                self.ended = True
                model = self.client.upload(
                    source, project=self.workload.project_id, name=self.workload.name, summary=summary,
                    progress=progress, **upload,
                )  # fmt: skip
                self.workload = self.client.update_workload(
                    self.workload.id, state="succeeded", model_id=model.id
                )
        except BaseException as exc:
            self.fail(interrupt_state(exc), describe(exc), model=model)
            raise
        # What claiming changed on the model, without asking the server again.
        return dataclasses.replace(
            model, source="workload", workload_id=self.workload.id, series=self.workload.series
        )

    def fail(
        self,
        state: str,
        error: str | None,
        *,
        exit_code: int | None = None,
        summary: dict[str, Any] | None = None,
        series: dict[str, Any] | None = None,
        model: Model | None = None,
    ) -> None:
        """Record ``failed`` or ``interrupted`` (best effort: the caller's error matters more), then
        delete ``model`` if the workload did not claim it."""
        base: dict[str, Any] = {"state": state, "error": error}
        full = base if self.ended else base | {"exit_code": exit_code, "log": self.log.text(),
                                                 "log_bytes": self.log.total}  # fmt: skip
        # Each next attempt sends less: the metrics may be what the server refused, or the end of the
        # run may have been recorded already (an answer lost on the way).
        attempts = (
            [full | {"summary": summary, "series": series}, full, base] if summary or series else [full, base]
        )
        for attempt in attempts:
            try:
                self.workload = self.client.update_workload(self.workload.id, **attempt)
                break
            except InvalidInput:
                continue
            except Conflict:
                try:
                    self.workload = self.client.get_workload(self.workload.id)
                except (ModeldepotError, KeyboardInterrupt):
                    break
                if self.workload.state not in ("running", "uploading"):
                    break  # finished meanwhile: maybe the claim went through, its answer lost
            except (ModeldepotError, KeyboardInterrupt):
                break
        if model is not None and self.workload.state != "succeeded":
            with contextlib.suppress(ModeldepotError, KeyboardInterrupt):
                self.client.delete_model(model.id)
