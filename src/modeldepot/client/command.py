"""Models from workloads, from a command: what ``modeldepot run … -- COMMAND`` does (:func:`run_command`).

The command runs with ``MODELDEPOT_MODEL_PATH`` set; its output streams through and into the log;
SIGINT and SIGTERM are passed on to it (except a terminal's Ctrl-C, which reached it already).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from ..errors import InvalidInput
from ..records import Model, Workload
from .outcome import Outcome, describe, interrupt_state, model_fields, signal_name
from .provenance import LogBuffer, find_metrics, provenance

if TYPE_CHECKING:
    from .client import Client, Progress

MODEL_PATH_VARS = ("MODELDEPOT_MODEL_PATH", "PS_MODEL_PATH")  # PS_…: what Gradient jobs used


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """How ``modeldepot run`` ended: the workload, its model (when it succeeded) and the exit code
    to leave with (the command's own; 128 + N when it died of, or was stopped by, signal N)."""

    workload: Workload
    model: Model | None
    exit_code: int


def _terminal_reaches_child() -> bool:
    """Whether a Ctrl-C typed at our terminal reached the command too: it does when we (and so the
    command, which shares our process group) are the terminal's foreground group."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class _TextSink:
    """Bytes onto a text stream that has no binary buffer (a notebook's, pytest's capture)."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self.stream.flush()


def _binary(stream: Any) -> Any:
    return getattr(stream, "buffer", None) or _TextSink(stream)


def _pump(source: IO[bytes], sink: Any, log: LogBuffer) -> None:
    fd = source.fileno()
    while chunk := os.read(fd, 65536):
        log.write(chunk)
        with contextlib.suppress(OSError, ValueError):  # our own output closed: keep logging
            sink.write(chunk)
            sink.flush()


def _output_dir(output_dir: Path | None) -> tuple[Path, bool]:
    """Where the command writes its model (absolute), and whether it is ours to remove afterwards."""
    if output_dir is None:
        return Path(tempfile.mkdtemp(prefix="modeldepot-run-")).absolute(), True
    output_dir = output_dir.absolute()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise InvalidInput(
            f"{output_dir} is not an empty directory: everything in it would become part of the model",
            hint="Give --output a new or empty directory, or leave it out for a temporary one.",
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir, False


def run_command(
    client: Client,
    command: Sequence[str],
    *,
    project: str,
    name: str,
    type: str | None = None,
    tags: Sequence[str] = (),
    notes: str | None = None,
    metadata: dict[str, Any] | None = None,
    dataset_ref: str | None = None,
    metrics_file: str | os.PathLike[str] | None = None,
    env_keep: Sequence[str] = (),
    output_dir: str | os.PathLike[str] | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    progress: Progress | None = None,
    on_start: Callable[[Workload, Path], None] | None = None,
) -> CommandResult:
    """Run ``command`` as a workload and, when it exits 0, upload what it wrote as a model.

    The command finds its output directory in ``$MODELDEPOT_MODEL_PATH`` (and ``$PS_MODEL_PATH``);
    its output streams to ``stdout``/``stderr`` (default: ours) and into the workload's log. Metrics
    come from ``metrics_file``, else ``metrics.json`` or ``gradient-model-metadata.json`` (its
    ``"metrics"``) in the output directory: scalars are the summary, lists become series.

    A failing command gives a ``failed`` workload and its exit code; SIGINT or SIGTERM gives an
    ``interrupted`` one (the signal is passed on to the command, except a terminal's Ctrl-C, which
    reached it already). Bad metrics, or no files written, record a failed workload and raise
    :class:`~modeldepot.InvalidInput`. No model is left behind by any of these.
    """
    argv = [str(a) for a in command]
    if not argv:
        raise InvalidInput("No command to run", hint="Put the command after --, e.g. -- python train.py")
    cwd = Path.cwd()
    explicit = None if metrics_file is None else cwd / Path(metrics_file)
    out, ours = _output_dir(None if output_dir is None else Path(output_dir))
    try:
        upload = model_fields(type, tags, notes, metadata, dataset_ref)
        started = client.start_workload(project, name=name, **upload, **provenance(argv, cwd, env_keep))
        log = LogBuffer()
        outcome = Outcome(client, started, log)
        try:
            if on_start is not None:
                on_start(started, out)
            try:
                exit_code, signum = _execute(argv, out, started.id, log, stdout, stderr)
            except OSError as exc:
                code = 127 if isinstance(exc, FileNotFoundError) else 126  # what a shell answers
                outcome.fail("failed", f"Cannot run {argv[0]}: {exc.strerror or exc}", exit_code=code)
                return CommandResult(outcome.workload, None, code)
            if signum is not None:
                outcome.fail("interrupted", f"interrupted by {signal_name(signum)}", exit_code=exit_code)
                return CommandResult(outcome.workload, None, 128 + signum)
            if exit_code != 0:
                died = f"the command died of {signal_name(-exit_code)}" if exit_code < 0 else None
                outcome.fail("failed", died or f"the command exited with {exit_code}", exit_code=exit_code)
                return CommandResult(outcome.workload, None, exit_code if exit_code > 0 else 128 - exit_code)
            try:
                summary, series = find_metrics(out, explicit)
                if not any(p.is_file() for p in out.rglob("*")):
                    raise InvalidInput(
                        f"The command wrote no files to $MODELDEPOT_MODEL_PATH ({out})",
                        hint="Write the model files into the directory that variable names.",
                    )
            except InvalidInput as exc:
                outcome.fail("failed", exc.detail, exit_code=0)
                raise
            model = outcome.succeed(out, upload, summary, series, 0, progress)
            return CommandResult(outcome.workload, model, 0)
        except BaseException as exc:
            if outcome.workload.state in ("running", "uploading"):
                outcome.fail(interrupt_state(exc), describe(exc))
            raise
    finally:
        if ours:
            shutil.rmtree(out, ignore_errors=True)


def _execute(
    argv: list[str],
    out: Path,
    workload_id: str,
    log: LogBuffer,
    stdout: IO[bytes] | None,
    stderr: IO[bytes] | None,
) -> tuple[int, int | None]:
    """Run the command to its end; its exit code (negative: killed by that signal) and the signal
    that interrupted the run, if one did."""
    env = dict(os.environ)
    env.update({var: str(out) for var in MODEL_PATH_VARS})
    env["MODELDEPOT_WORKLOAD_ID"] = workload_id
    env.setdefault("PYTHONUNBUFFERED", "1")  # a Python command's output arrives as it is printed
    # Signals are caught from before the command starts: one that arrives while it is being started
    # is passed on as soon as it runs. Each entry: [signal, passed on yet].
    received: list[list[Any]] = []
    started: list[subprocess.Popen[bytes]] = []

    def pass_on(signum: int) -> None:
        if signum == signal.SIGINT and _terminal_reaches_child():
            return  # a terminal's Ctrl-C reached the command already
        with contextlib.suppress(ProcessLookupError):
            started[0].send_signal(signum)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append([signum, bool(started)])
        if started:
            pass_on(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(proc)
        for entry in received:
            if not entry[1]:
                entry[1] = True
                pass_on(entry[0])
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            threading.Thread(
                target=_pump, args=(proc.stdout, stdout or _binary(sys.stdout), log), daemon=True
            ),
            threading.Thread(
                target=_pump, args=(proc.stderr, stderr or _binary(sys.stderr), log), daemon=True
            ),
        ]
        for t in pumps:
            t.start()
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for t, pipe in zip(pumps, (proc.stdout, proc.stderr), strict=True):
        # A process the command left running in the background may hold a pipe open: stop waiting
        # for it (its reader goes on, a daemon thread, and the pipe stays open under it).
        t.join(timeout=5)
        if not t.is_alive():
            pipe.close()
    if received:
        return code, received[0][0]
    # Stopped by a signal sent to the command itself (or a shell's 128 + N for one).
    for signum in (signal.SIGINT, signal.SIGTERM):
        if code in (-signum, 128 + signum):
            return code, signum
    return code, None
