"""Models from workloads, from Python: a block of code (:class:`Run`, :func:`workload`) or one call
(:func:`log_model`) becomes a workload and the model it saved (see ``outcome.py``)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, Unauthenticated
from ..records import Model, Workload
from .outcome import (
    Outcome,
    RunInterrupted,
    describe,
    interrupt_state,
    model_fields,
    signal_name,
)
from .provenance import MAX_POINTS, LogBuffer, parse_metrics, provenance, thin

if TYPE_CHECKING:
    from .client import Client, Progress


class _Tee:
    """A text stream that writes through to ``stream`` and copies into the log."""

    def __init__(self, stream: Any, log: LogBuffer):
        self._stream = stream
        self._log = log

    def write(self, text: str) -> int:
        self._log.write(text.encode("utf-8", "replace"))
        return int(self._stream.write(text) or 0)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, …
        return getattr(self._stream, name)


class Run:
    """A workload around a block of Python: ``with client.workload(...) as run:`` (or
    :func:`modeldepot.workload`).

    Inside the block, write model files into :attr:`model_path` or copy them there with
    :meth:`save`, and report metrics with :meth:`log_metrics` (a series point and the summary) or
    :meth:`log_summary`. What the block prints is kept as the workload's log (its first 64 KiB and
    last 448 KiB). Leaving the block without an exception uploads :attr:`model_path` as a new model
    linked to the workload (:attr:`model`); an exception (or Ctrl-C, or SIGTERM) records the workload as
    failed (or interrupted) with no model, and goes on up.

    Example::

        with modeldepot.workload(project="pr…", name="line", type="Custom") as run:
            for epoch in range(10):
                loss = train_one_epoch()
                run.log_metrics({"loss": loss}, step=epoch)
            numpy.save(run.model_path / "weights.npy", weights)
        print(run.model.id, run.model.summary["loss"], run.workload.git_commit)
    """

    def __init__(
        self,
        client: Client,
        project: str,
        name: str,
        *,
        type: str | None = None,
        tags: Sequence[str] = (),
        notes: str | None = None,
        metadata: dict[str, Any] | None = None,
        dataset_ref: str | None = None,
        env_keep: Sequence[str] = (),
        capture_output: bool = True,
        command: Sequence[str] | None = None,
        progress: Progress | None = None,
        close_client: bool = False,
    ):
        self.client = client
        self.project = project
        self.name = name
        self._upload = model_fields(type, tags, notes, metadata, dataset_ref)
        self._env_keep = tuple(env_keep)
        self._capture = capture_output
        self._command = list(command) if command else [sys.executable, *sys.argv]
        self._progress = progress
        self._close_client = close_client
        self._source: Path | None = None  # log_model: upload this path instead of model_path
        self._log = LogBuffer()
        self._outcome: Outcome | None = None
        self._streams: tuple[Any, Any] | None = None
        self._sigterm: Any = None
        self._dir: Path | None = None
        self.summary: dict[str, Any] = {}
        self.series: dict[str, dict[str, list[Any]]] = {}
        self.model: Model | None = None

    @property
    def workload(self) -> Workload:
        if self._outcome is None:
            raise RuntimeError("The workload starts when the `with` block is entered")
        return self._outcome.workload

    @property
    def model_path(self) -> Path:
        """The directory whose files become the model (made when the block is entered)."""
        if self._dir is None:
            raise RuntimeError("model_path exists once the `with` block is entered")
        return self._dir / "model"

    def __enter__(self) -> Run:
        try:
            workload = self.client.start_workload(
                self.project,
                name=self.name,
                **self._upload,
                **provenance(self._command, Path.cwd(), self._env_keep),
            )
        except BaseException:
            if self._close_client:
                self.client.close()
            raise
        self._outcome = Outcome(self.client, workload, self._log)
        self._dir = Path(tempfile.mkdtemp(prefix="modeldepot-run-"))
        self.model_path.mkdir()
        if self._capture:
            self._streams = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = _Tee(sys.stdout, self._log), _Tee(sys.stderr, self._log)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL,
            None,
        ):
            # A scheduler's SIGTERM ends the block like Ctrl-C does, so the workload is recorded.
            self._sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    @staticmethod
    def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"interrupted by {signal_name(signum)}")

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int | None = None) -> None:
        """Add a point to each metric's series (at ``step``, else the one after its last) and make it
        the metric's summary value. NaN and infinities are kept as gaps (null)."""
        summary, _ = parse_metrics(dict(metrics), "log_metrics")
        for key, value in summary.items():
            if isinstance(value, str | bool):
                raise InvalidInput(
                    f"log_metrics: {key!r} is {value!r}, not a number", hint="Use log_summary."
                )
            points = self.series.setdefault(key, {"steps": [], "values": []})
            steps, values = points["steps"], points["values"]
            at = (steps[-1] + 1 if steps else 0) if step is None else step
            if not isinstance(at, int) or isinstance(at, bool) or at < 0:
                raise InvalidInput(f"log_metrics: step {at!r} is not a non-negative integer")
            if steps and at <= steps[-1]:
                if at != steps[-1]:
                    raise InvalidInput(
                        f"log_metrics: step {at} of {key!r} comes before step {steps[-1]}, logged already",
                        hint="Log steps in increasing order.",
                    )
                values[-1] = value  # the same step again: the newer value counts
            else:
                steps.append(at)
                values.append(value)
                if len(steps) > MAX_POINTS:
                    points["steps"], points["values"] = thin(steps, values)
            self.summary[key] = value

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """Set summary values (numbers, strings, booleans, null) without adding series points."""
        summary, series = parse_metrics(dict(metrics), "log_summary")
        if series:
            raise InvalidInput("log_summary takes scalars; log series point by point with log_metrics")
        self.summary.update(summary)

    def save(self, path: str | os.PathLike[str], name: str | None = None) -> Path:
        """Copy a file (or a directory's contents) into the model now, at ``name`` (default: the
        file's name, or the model's top for a directory). Write into :attr:`model_path` to skip the copy."""
        source = Path(path)
        target = self.model_path / name if name else self.model_path
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True, symlinks=False)
        elif source.is_file():
            target = target if name else target / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        else:
            raise InvalidInput(f"{source} does not exist", hint="Save a file or a directory the run wrote.")
        return target

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = self._outcome
        assert outcome is not None
        try:
            if self._streams is not None:
                sys.stdout, sys.stderr = self._streams
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)
            if exc is not None:
                self._log.write("".join(traceback.format_exception(exc_type, exc, tb)).encode())
                outcome.fail(interrupt_state(exc), describe(exc), summary=self.summary, series=self.series)
                return
            source = self._source or self.model_path
            if source == self.model_path and not any(p.is_file() for p in source.rglob("*")):
                outcome.fail("failed", "The block saved no files for the model")
                raise InvalidInput(
                    "The workload saved no files for the model",
                    hint="Call run.save(path) or write files into run.model_path inside the block.",
                )
            try:
                self.model = outcome.succeed(
                    source, self._upload, self.summary, self.series, None, self._progress
                )
            except RunInterrupted as interrupted:
                raise KeyboardInterrupt(str(interrupted)) from None
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            if self._close_client:
                self.client.close()


def _default_client() -> Client:
    """A client from MODELDEPOT_URL / MODELDEPOT_API_KEY, else from what `modeldepot login` stored."""
    from .client import Client
    from .settings import ClientSettings

    settings = ClientSettings.from_env()
    stored = settings.stored()
    url = settings.url or stored.get("url")
    if not url:
        raise Unauthenticated(
            "No server configured",
            hint="Set MODELDEPOT_URL and MODELDEPOT_API_KEY, run `modeldepot login`, or pass client=.",
        )
    return Client(url, settings.api_key or stored.get("api_key"), hash_cache=settings.hash_cache)


def workload(project: str, name: str, *, client: Client | None = None, **options: Any) -> Run:
    """Record a block of Python as a workload and make a model of what it saves (see :class:`Run`).

    Without ``client``, the server and key come from ``MODELDEPOT_URL`` and ``MODELDEPOT_API_KEY``,
    or from ``modeldepot login``.
    """
    if client is None:
        return Run(_default_client(), project, name, close_client=True, **options)
    return Run(client, project, name, **options)


def log_model(
    path: str | os.PathLike[str],
    *,
    project: str,
    name: str,
    summary: Mapping[str, Any] | None = None,
    series: Mapping[str, Sequence[Any]] | None = None,
    client: Client | None = None,
    **options: Any,
) -> Model:
    """Upload a file or directory as a model made by this program, in one call.

    It is recorded as a workload of the running program (its command line, git commit, host), with
    ``summary`` metrics and ``series`` (``{"loss": [0.9, 0.5, 0.3]}``), and linked to it.

    Example::

        modeldepot.log_model("model.onnx", project="pr…", name="resnet", summary={"accuracy": 0.93})
    """
    source = Path(path)
    if not source.exists():
        raise InvalidInput(f"{source} does not exist", hint="Give the model's file or directory.")
    document: dict[str, Any] = dict(series or {})
    clash = sorted(set(document) & set(summary or {}))
    if clash:
        raise InvalidInput(f"{clash[0]!r} is both a summary value and a series", hint="Give it once.")
    parsed_summary, parsed_series = parse_metrics({**document, **(summary or {})}, "log_model")
    with workload(project, name, client=client, capture_output=False, **options) as run:
        run._source = source
        run.summary, run.series = parsed_summary, parsed_series
    assert run.model is not None
    return run.model
