"""``modeldepot run … -- COMMAND``: run a training command and register what it wrote as a model."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ..client.outcome import RunInterrupted
from ..errors import ModeldepotError
from ..records import Workload
from .context import make_client, project_option
from .models import TYPES, _json_object
from .output import Bar, emit_json, err_console, human_size, note_json
from .workloads import duration_text


@click.command(
    "run",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
@project_option(required=True)
@click.option("--name", required=True, help="Name of the model the command makes.")
@click.option("--type", "type_", type=TYPES, help="Tensorflow, ONNX or Custom (detected when left out).")
@click.option(
    "--metrics",
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON file of metrics the command writes (default: metrics.json in the model directory).",
)
@click.option("--tag", "tags", multiple=True, help="A tag for the model (repeat for more).")
@click.option("--notes", help="Notes for the model (Markdown).")
@click.option("--metadata", help="Free metadata for the model, as a JSON object.")
@click.option("--dataset-ref", help="The data the run used.")
@click.option(
    "--env-keep",
    multiple=True,
    metavar="NAME",
    help="Record this environment variable's value (repeat for more). No other variable is recorded.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory the command writes the model to, kept afterwards (default: a temporary one).",
)
@click.option(
    "--parallel", default=4, show_default=True, type=click.IntRange(1, 64), help="Transfers at once."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=note_json,
    help="Print the workload and model as JSON at the end (and an error as a JSON object on stderr).",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    project: str,
    name: str,
    type_: str | None,
    metrics: Path | None,
    tags: tuple[str, ...],
    notes: str | None,
    metadata: str | None,
    dataset_ref: str | None,
    env_keep: tuple[str, ...],
    output: Path | None,
    parallel: int,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND and, if it succeeds, upload what it wrote as a new model linked to the run.

    COMMAND finds its output directory in $MODELDEPOT_MODEL_PATH (also $PS_MODEL_PATH, as in
    Gradient). Its output streams through (to stderr with --json) and is kept as the workload's log:
    the first 64 KiB and the last 448 KiB. Metrics come from --metrics, or metrics.json (or the
    "metrics" of gradient-model-metadata.json) in the output directory: numbers and strings are the
    summary, lists of numbers are series, e.g. {"accuracy": 0.93, "loss": [0.9, 0.5, 0.3]}.

    The workload records the command, exit code, times, host, user, the git commit of the current
    directory and whether it was dirty, and only the variables named by --env-keep. If COMMAND fails
    or is interrupted (Ctrl-C, SIGTERM), no model is made, the workload is kept with its log, and
    `run` exits with the command's exit code (128 + N for signal N).

    \b
    Example:
      modeldepot run --project pr… --name resnet --type ONNX --tag nightly \\
          --env-keep CUDA_VISIBLE_DEVICES -- python train.py --epochs 10
      modeldepot workloads list --project pr…
    """
    if not command:
        raise click.UsageError(
            "Give the command to run after --, e.g. "
            "modeldepot run --project pr… --name resnet -- python train.py"
        )
    client = make_client(parallel)
    started: list[Workload] = []

    def announce(workload: Workload, model_path: Path) -> None:
        started.append(workload)
        err_console.print(
            f"modeldepot: workload {workload.id} running; model files go to {model_path}",
            highlight=False,
            soft_wrap=True,
        )

    try:
        result = client.run(
            list(command),
            project=project,
            name=name,
            type=type_,
            tags=list(tags),
            notes=notes,
            metadata=_json_object(metadata, "--metadata"),
            dataset_ref=dataset_ref,
            metrics_file=metrics,
            env_keep=env_keep,
            output_dir=output,
            stdout=sys.stderr.buffer if as_json else None,
            progress=Bar(enabled=None if not as_json else False),
            on_start=announce,
        )
    except ModeldepotError:
        if started:
            err_console.print(
                f"modeldepot: workload {started[0].id} failed; see `modeldepot workloads show {started[0].id}`",
                highlight=False,
                soft_wrap=True,
            )
        raise
    except (KeyboardInterrupt, RunInterrupted) as exc:
        # Outside the command (starting, uploading): the workload is recorded as interrupted.
        if started:
            err_console.print(f"modeldepot: workload {started[0].id} interrupted", highlight=False)
        sys.exit(128 + (exc.signum if isinstance(exc, RunInterrupted) else signal.SIGINT))
    w, m = result.workload, result.model
    if as_json:
        emit_json({"workload": w, "model": m, "exit_code": result.exit_code})
    elif m is not None:
        err_console.print(
            f"modeldepot: workload {w.id} succeeded (the command ran {duration_text(w.duration_seconds)}): model {m.id} "
            f"({m.name} v{m.version}, {m.type}, {m.file_count} file(s), {human_size(m.size)})",
            highlight=False,
            soft_wrap=True,
        )
    else:
        err_console.print(
            f"modeldepot: workload {w.id} {w.state} ({w.error}); no model was made. "
            f"Log: modeldepot workloads logs {w.id}",
            highlight=False,
            soft_wrap=True,
        )
    sys.exit(result.exit_code)
