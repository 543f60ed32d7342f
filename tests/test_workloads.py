"""Models from workloads, with real parts only: a real server (SQLite and PostgreSQL), the real CLI in
subprocesses, real training scripts (numpy fitting a line; onnx.helper building a tiny model), a real
git repository, real signals, and a real terminal (a pseudo-terminal) for Ctrl-C.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE
from typing import Any

import numpy as np
import onnx
import pytest

import modeldepot
from modeldepot import Client, InvalidInput
from modeldepot.client.provenance import LogBuffer, parse_metrics, thin
from modeldepot.metadata import SqlMetadataStore
from modeldepot.records import Project, Workload
from modeldepot.services import ids
from modeldepot.services.ports import ModelLink, WorkloadQuery

from .conftest import RunningServer, make_settings, running_server

MODELDEPOT = [sys.executable, "-m", "modeldepot.cli"]
PYTHON = sys.executable

# -- the training scripts, committed to a git repository per test --------------------------------------

SCRIPTS = {
    # numpy: fit y = 2x + 1 by gradient descent; weights and metrics (with a loss series) into the model.
    "train_line.py": """
        import argparse, json, os
        import numpy as np

        parser = argparse.ArgumentParser()
        parser.add_argument("--epochs", type=int, default=5)
        args = parser.parse_args()
        out = os.environ["MODELDEPOT_MODEL_PATH"]
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, 256)
        y = 2 * x + 1 + rng.normal(0, 0.01, 256)
        w = b = 0.0
        losses = []
        for epoch in range(args.epochs):
            for _ in range(40):
                err = w * x + b - y
                w -= 0.2 * 2 * np.mean(err * x)
                b -= 0.2 * 2 * np.mean(err)
            losses.append(float(np.mean((w * x + b - y) ** 2)))
            print(f"epoch {epoch} loss {losses[-1]:.6f}")
        np.save(os.path.join(out, "weights.npy"), np.array([w, b]))
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({"slope": w, "intercept": b, "loss": losses, "optimizer": "sgd"}, f)
    """,
    # onnx.helper: a tiny model Y = X + B into $PS_MODEL_PATH (Gradient's name); metrics in the cwd.
    "train_onnx.py": """
        import json, os
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        b = numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "B")
        graph = helper.make_graph(
            [helper.make_node("Add", ["X", "B"], ["Y"])], "adder",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])],
            initializer=[b],
        )
        model = helper.make_model(graph, producer_name="modeldepot-test")
        onnx.checker.check_model(model)
        onnx.save(model, os.path.join(os.environ["PS_MODEL_PATH"], "model.onnx"))
        with open("onnx-metrics.json", "w") as f:
            json.dump({"accuracy": 1.0, "params": 2, "loss": [[0, 0.5], [2, 0.25], [4, 0.125]]}, f)
        print("built model.onnx")
    """,
    "fail.py": """
        import sys
        print("about to fail", flush=True)
        sys.exit(3)
    """,
    "crash.py": """
        print("training...", flush=True)
        raise RuntimeError("loss diverged")
    """,
    # Writes argv[1] as metrics.json next to a weights file (for the bad-metrics cases).
    "write_metrics.py": """
        import os, sys
        out = os.environ["MODELDEPOT_MODEL_PATH"]
        open(os.path.join(out, "w.bin"), "wb").write(b"weights")
        if sys.argv[1] != "-":
            open(os.path.join(out, "metrics.json"), "w").write(sys.argv[1])
    """,
    "nothing.py": """
        print("I write no model")
    """,
    "touch.py": """
        import sys
        open(sys.argv[1], "w").write("ran")
    """,
    # Counts the SIGINTs it receives (into sigints.txt in the cwd), then exits as a shell would.
    "sigcount.py": """
        import os, signal, sys, time
        count = 0
        def on_sigint(signum, frame):
            global count
            count += 1
        signal.signal(signal.SIGINT, on_sigint)
        open(os.path.join(os.environ["MODELDEPOT_MODEL_PATH"], "partial.bin"), "wb").write(b"half")
        print("ready", flush=True)
        deadline = time.time() + 60
        while not count and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # a second SIGINT, if one were sent, arrives here
        open("sigints.txt", "w").write(str(count))
        sys.exit(130 if count else 0)
    """,
    # Default signal handling; says its pid so that a test can signal it alone.
    "sleeper.py": """
        import os, time
        open(os.path.join(os.environ["MODELDEPOT_MODEL_PATH"], "partial.bin"), "wb").write(b"half")
        print(f"pid {os.getpid()}", flush=True)
        time.sleep(60)
    """,
    "chatty.py": """
        import sys
        for i in range(int(sys.argv[1])):
            print(f"line {i:07d} " + "x" * 50)
        open(__import__("os").environ["MODELDEPOT_MODEL_PATH"] + "/m.bin", "wb").write(b"m")
    """,
    "big.py": """
        import os
        with open(os.path.join(os.environ["MODELDEPOT_MODEL_PATH"], "big.bin"), "wb") as f:
            f.write(os.urandom(int(os.environ["BIG_MIB"]) * 1024 * 1024))
        print("written", flush=True)
    """,
    # The SDK from a training script: the context manager around a numpy fit.
    "sdk_line.py": """
        import json, os, sys
        import numpy as np
        import modeldepot

        project = sys.argv[1]
        with modeldepot.workload(project=project, name="line-sdk", env_keep=["KEEP_ME"],
                                 tags=["sdk"]) as run:
            rng = np.random.default_rng(1)
            x = rng.uniform(-1, 1, 128)
            y = 2 * x + 1
            w = b = 0.0
            for epoch in range(6):
                for _ in range(30):
                    err = w * x + b - y
                    w -= 0.2 * 2 * np.mean(err * x)
                    b -= 0.2 * 2 * np.mean(err)
                run.log_metrics({"loss": float(np.mean((w * x + b - y) ** 2)), "slope": w}, step=epoch)
                print(f"epoch {epoch}")
            np.save("weights.npy", np.array([w, b]))
            run.save("weights.npy")
            (run.model_path / "config.json").write_text(json.dumps({"features": 1}))
            run.log_summary({"framework": "numpy"})
        print(json.dumps({"model": run.model.id, "workload": run.workload.id}))
    """,
    # The SDK's one call: log_model of a tiny ONNX model built with onnx.helper.
    "sdk_onnx.py": """
        import json, sys
        import numpy as np
        import onnx
        from onnx import TensorProto, helper
        import modeldepot

        graph = helper.make_graph(
            [helper.make_node("Relu", ["X"], ["Y"])], "relu",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3])],
        )
        onnx.save(helper.make_model(graph), "relu.onnx")
        model = modeldepot.log_model("relu.onnx", project=sys.argv[1], name="relu",
                                     summary={"accuracy": 0.93}, series={"loss": [0.9, 0.5, 0.3]})
        print(json.dumps({"model": model.id, "workload": model.workload_id, "type": model.type}))
    """,
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding the training scripts, committed (a clean tree)."""
    root = tmp_path / "repo"
    root.mkdir()
    for name, body in SCRIPTS.items():
        (root / name).write_text(textwrap.dedent(body).lstrip())
    git(root, "init", "-q", "-b", "main")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", ".")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "scripts")
    return root


@pytest.fixture
def env(server: RunningServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a user of the CLI and SDK: pointed at the server, no terminal."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    e |= {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MODELDEPOT_URL": server.url,
        "MODELDEPOT_API_KEY": server.admin_key,
        "COLUMNS": "200",
        "TMPDIR": str(tmp_path),
    }
    return e


def cli(
    args: list[str], env: dict[str, str], cwd: Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*MODELDEPOT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def all_models(client: Client, project: str) -> list[modeldepot.Model]:
    return list(client.iter_models(project=project, state="any"))


def workloads_of(client: Client, project: str) -> list[Workload]:
    return list(client.iter_workloads(project=project))


def read_until(stream: Any, word: str, timeout: float = 30) -> str:
    """Lines of a subprocess's text stream until one contains ``word``."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        seen += line
        if word in line:
            return seen
        if not line:
            break
    raise AssertionError(f"{word!r} never came; got {seen!r}")


# -- `modeldepot run`: the numpy line fit, lineage, git ------------------------------------------------


def test_run_registers_the_line_fit_with_its_lineage(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    env = env | {"SECRET_TOKEN": "hunter2-secret", "KEEP_ME": "kept-value"}
    head = git(repo, "rev-parse", "HEAD")
    args = ["--project", project, "--name", "line", "--tag", "nightly", "--dataset-ref", "ds://points-v1"]
    args += ["--env-keep", "KEEP_ME", "--env-keep", "NOT_SET_ANYWHERE", "--json"]
    done = cli(["run", *args, "--", PYTHON, "train_line.py", "--epochs", "4"], env, repo)
    out = json.loads(
        done.stdout
    )  # with --json, stdout is only the result: the command's output went to stderr
    assert "epoch 3 loss" in done.stderr and out["exit_code"] == 0

    model = admin.get_model(out["model"]["id"])
    w = admin.get_workload(out["workload"]["id"])
    # The model: files, metrics and series from metrics.json, a link back to the run.
    assert {f.path for f in model.files or ()} == {"weights.npy", "metrics.json"}
    assert (model.source, model.workload_id, model.tags, model.dataset_ref) == (
        "workload",
        w.id,
        ("nightly",),
        "ds://points-v1",
    )
    assert model.summary["slope"] == pytest.approx(2, abs=0.05)
    assert model.summary["intercept"] == pytest.approx(1, abs=0.05)
    assert model.summary["optimizer"] == "sgd"
    assert model.series is not None and model.series["loss"]["steps"] == [0, 1, 2, 3]
    assert model.summary["loss"] == model.series["loss"]["values"][-1]
    assert model.series["loss"]["values"][0] > model.series["loss"]["values"][-1]
    admin.download(model.id, tmp_path / "down")
    assert np.load(tmp_path / "down" / "weights.npy") == pytest.approx([2, 1], abs=0.05)
    # The workload: what ran, where, at which commit; only the kept variable; the log.
    assert w.state == "succeeded" and w.model_id == model.id and w.exit_code == 0 and w.error is None
    assert list(w.command) == [PYTHON, "train_line.py", "--epochs", "4"]
    assert (w.git_commit, w.git_branch, w.git_dirty) == (head, "main", False)
    assert w.env == {"KEEP_ME": "kept-value"}
    assert w.host == socket.gethostname() and w.user and w.created_by == "admin"
    assert w.working_dir == str(repo) and w.dataset_ref == "ds://points-v1"
    assert w.ended_at is not None and w.ended_at >= w.started_at and w.duration_seconds is not None
    assert w.series == model.series and w.summary == model.summary
    log = cli(["workloads", "logs", w.id], env, repo).stdout
    assert "epoch 0 loss" in log and "epoch 3 loss" in log and w.log_bytes == len(log.encode())
    everything = json.dumps([out, cli(["workloads", "show", w.id, "--json"], env, repo).stdout, log])
    assert "hunter2-secret" not in everything and "SECRET_TOKEN" not in everything
    shown = cli(["models", "show", model.id], env, repo).stdout
    assert f"{w.id} (succeeded, commit {head[:10]})" in shown and "loss: 4 point(s)" in shown

    # A re-run with a changed tracked file: a new workload, a dirty tree, the next version.
    with (repo / "train_line.py").open("a") as f:
        f.write("# tuned\n")
    again = json.loads(cli(["run", "--project", project, "--name", "line", "--json", "--", PYTHON, "train_line.py"], env, repo).stdout)  # fmt: skip
    assert again["workload"]["id"] != w.id and again["workload"]["git_dirty"] is True
    assert again["model"]["version"] == 2 and again["workload"]["git_commit"] == head
    # Committed: the next run is at a new commit. Which models did each commit produce?
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "tune")
    third = json.loads(cli(["run", "--project", project, "--name", "line", "--json", "--", PYTHON, "train_line.py"], env, repo).stdout)  # fmt: skip
    by_head = json.loads(cli(["workloads", "list", "--commit", head[:7], "--json"], env, repo).stdout)
    assert [x["model_id"] for x in by_head["items"]] == [again["model"]["id"], model.id]
    new_head = git(repo, "rev-parse", "HEAD")
    assert [x.model_id for x in admin.iter_workloads(commit=new_head)] == [third["model"]["id"]]
    table = cli(["workloads", "list", "--project", project, "--state", "succeeded"], env, repo).stdout
    assert w.id in table and third["model"]["id"] in table and f"{head[:10]}-dirty" in table


def test_run_makes_an_onnx_model_with_metrics_from_a_flag(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    done = cli(
        [
            "run",
            "--project",
            project,
            "--name",
            "adder",
            "--metrics",
            "onnx-metrics.json",
            "--",
            PYTHON,
            "train_onnx.py",
        ],
        env,
        repo,
    )
    # Not a terminal: the command's output as it printed it, our lines on stderr, no progress bars.
    assert done.stdout == "built model.onnx\n"
    assert "succeeded" in done.stderr and "\r" not in done.stderr and "\x1b[" not in done.stderr
    (w,) = workloads_of(admin, project)
    assert w.git_dirty is False  # the metrics file it wrote is not tracked: the tree is still clean
    model = admin.get_model(w.model_id or "")
    assert model.type == "ONNX"  # detected from the file
    assert model.summary == {"accuracy": 1.0, "params": 2, "loss": 0.125}
    assert model.series == {"loss": {"steps": [0, 2, 4], "values": [0.5, 0.25, 0.125]}}
    admin.download(model.id, tmp_path / "down")
    loaded = onnx.load(str(tmp_path / "down" / "model.onnx"))
    onnx.checker.check_model(loaded)
    assert [n.op_type for n in loaded.graph.node] == ["Add"]


# -- failures and interrupts ---------------------------------------------------------------------------


def test_failing_commands_leave_failed_workloads_and_no_model(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str]
) -> None:
    base = ["run", "--project", project, "--name", "m", "--"]
    failed = cli([*base, PYTHON, "fail.py"], env, repo, check=False)
    assert failed.returncode == 3 and "about to fail" in failed.stdout
    assert "failed (the command exited with 3); no model was made" in failed.stderr
    crashed = cli([*base, PYTHON, "crash.py"], env, repo, check=False)
    assert crashed.returncode == 1 and "RuntimeError: loss diverged" in crashed.stderr
    missing = cli([*base, "no-such-program-xyz", "--flag"], env, repo, check=False)
    assert missing.returncode == 127 and "Cannot run no-such-program-xyz" in missing.stderr

    gone, died, failed_w = workloads_of(admin, project)  # newest first
    assert (failed_w.state, failed_w.exit_code, failed_w.model_id) == ("failed", 3, None)
    assert "about to fail" in admin.workload_log(failed_w.id)
    assert died.exit_code == 1 and "RuntimeError: loss diverged" in admin.workload_log(died.id)
    assert gone.exit_code == 127 and gone.error == "Cannot run no-such-program-xyz: No such file or directory"
    assert all(w.ended_at is not None for w in (gone, died, failed_w))
    assert all_models(admin, project) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_signals_to_the_wrapper_or_the_command_interrupt_the_workload_without_a_model(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str]
) -> None:
    base = [*MODELDEPOT, "run", "--project", project, "--name", "m", "--"]
    # SIGINT to `modeldepot run` (no terminal): passed on to the command, exactly once.
    with subprocess.Popen([*base, PYTHON, "sigcount.py"], env=env, cwd=repo, stdout=PIPE, text=True) as proc:
        read_until(proc.stdout, "ready")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    assert (repo / "sigints.txt").read_text() == "1"
    # SIGINT to the command alone (it dies of it), and SIGTERM to the wrapper (passed on).
    for target, signum, code in (("child", signal.SIGINT, 130), ("wrapper", signal.SIGTERM, 143)):
        with subprocess.Popen(
            [*base, PYTHON, "sleeper.py"], env=env, cwd=repo, stdout=PIPE, text=True
        ) as proc:
            child = int(read_until(proc.stdout, "pid").split()[-1])
            os.kill(child if target == "child" else proc.pid, signum)
            assert proc.wait(timeout=60) == code, target
    workloads = workloads_of(admin, project)
    assert [w.state for w in workloads] == ["interrupted"] * 3
    assert [w.error for w in workloads] == [
        "interrupted by SIGTERM",
        "interrupted by SIGINT",
        "interrupted by SIGINT",
    ]
    assert all_models(admin, project) == []  # the partial output was not uploaded


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ctrl_c_at_a_terminal_reaches_the_command_once(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str]
) -> None:
    """A real terminal: Ctrl-C makes the terminal signal its foreground group (wrapper and command)."""
    master, slave = os.openpty()
    cmd = [
        "setsid",
        "--ctty",
        *MODELDEPOT,
        "run",
        "--project",
        project,
        "--name",
        "m",
        "--",
        PYTHON,
        "sigcount.py",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=repo, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        os.write(master, b"\x03")  # what the Ctrl-C key sends
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert proc.wait(timeout=30) == 130, seen
    finally:
        os.close(master)
    assert (repo / "sigints.txt").read_text() == "1"  # not forwarded a second time
    (w,) = workloads_of(admin, project)
    assert w.state == "interrupted" and all_models(admin, project) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ctrl_c_during_the_upload_removes_the_half_made_model(
    database_url: str, tmp_path: Path, repo: Path
) -> None:
    # Small parts, one at a time: the upload lasts long enough to be interrupted in the middle.
    settings = make_settings(database_url, tmp_path / "data", upload_part_size=1024 * 1024)
    with running_server(settings) as srv, srv.client() as admin:
        project = admin.create_project("p").id
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
        env |= {"MODELDEPOT_URL": srv.url, "MODELDEPOT_API_KEY": srv.admin_key, "BIG_MIB": "96"}
        env |= {"XDG_CACHE_HOME": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
        cmd = [*MODELDEPOT, "run", "--project", project, "--name", "big", "--parallel", "1"]
        with subprocess.Popen([*cmd, "--", PYTHON, "big.py"], env=env, cwd=repo, stdout=PIPE) as proc:
            # Parts arriving (sent while hashing, then taken over by the model): the model exists.
            blobs = srv.app.state.services.models.blobs  # type: ignore[attr-defined]
            deadline = time.monotonic() + 60
            while not (blobs.staging_ids() and all_models(admin, project)):
                assert proc.poll() is None and time.monotonic() < deadline, "the upload never started"
                time.sleep(0.005)
            assert [m.state for m in all_models(admin, project)] == ["uploading"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        (w,) = workloads_of(admin, project)
        assert (w.state, w.exit_code, w.error, w.model_id) == (
            "interrupted",
            0,
            "interrupted by SIGINT",
            None,
        )
        assert all_models(admin, project) == []


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bad_input_gets_a_clear_error_and_changes_nothing(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str]
) -> None:
    base = ["run", "--project", project, "--name", "m"]

    def refused(args: list[str], code: int, words: str, *, recorded: int = 0) -> None:
        before = workloads_of(admin, project)
        done = cli(args, env, repo, check=False)
        assert done.returncode == code, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
        after = workloads_of(admin, project)
        assert after[len(after) - len(before) :] == before  # what was stored stays as it was
        assert len(after) - len(before) == recorded
        assert all(w.state == "failed" and w.model_id is None for w in after[:recorded])
        assert all_models(admin, project) == []

    # Refused before anything runs or is recorded.
    refused(base, 2, "Give the command to run after --")
    refused(
        ["run", "--project", "prnotthere", "--name", "m", "--", PYTHON, "touch.py", "ran"], 4, "not found"
    )
    refused([*base, "--tag", "a,b", "--", PYTHON, "touch.py", "ran"], 3, "Tag 'a,b' is not allowed")
    refused([*base, "--metadata", "[1]", "--", PYTHON, "touch.py", "ran"], 3, "must be a JSON object")
    refused([*base, "--env-keep", "NOT-A-NAME", "--", PYTHON, "touch.py", "ran"], 3, "not an environment")
    (repo / "full").mkdir()
    (repo / "full" / "old.bin").write_bytes(b"old")
    refused([*base, "--output", "full", "--", PYTHON, "touch.py", "ran"], 3, "not an empty directory")
    assert not (repo / "ran").exists()  # the command never ran
    # The command ran; what it reported is bad: a failed workload with the reason, no model.
    bad = [*base, "--", PYTHON, "write_metrics.py"]
    refused([*bad, "{not json"], 3, "is not valid JSON", recorded=1)
    refused([*bad, '{"confusion": {"a": 1}}'], 3, "metric 'confusion' is a dict", recorded=1)
    refused(
        [*bad, '{"loss": [0.5, "low"]}'],
        3,
        "metrics.json (in the model directory): point 1 of series 'loss' is \"low\", not a number",
        recorded=1,
    )
    refused(
        [*bad, '{"loss": [[3, 0.5], [1, 0.4]]}'], 3, "steps are integers from 0 up, increasing", recorded=1
    )
    refused([*bad, "[0.9, 0.5]"], 3, "must hold a JSON object of metrics", recorded=1)
    refused(
        [*base, "--metrics", "nope.json", "--", PYTHON, "write_metrics.py", "-"], 3, "Cannot read", recorded=1
    )
    refused([*base, "--", PYTHON, "nothing.py"], 3, "wrote no files", recorded=1)
    latest = workloads_of(admin, project)[0]
    assert "I write no model" in admin.workload_log(latest.id) and "wrote no files" in (latest.error or "")
    # Reading what is not there.
    refused(["workloads", "show", "wl000000000000"], 4, "Workload wl000000000000 not found")
    refused(["workloads", "logs", "wl000000000000"], 4, "Workload wl000000000000 not found")
    refused(["workloads", "list", "--commit", "xyz"], 3, "not a commit id or a prefix of one")
    refused(["workloads", "list", "--state", "bogus"], 2, "Invalid value")


def test_the_api_refuses_bad_workload_changes_and_keeps_what_is_stored(
    server: RunningServer, admin: Client, project: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    http = server.http()
    request.addfinalizer(http.close)
    start = {"name": "m", "command": ["python", "train.py"]}

    def refused(method: str, url: str, body: Any, status: int, words: str) -> None:
        before = [admin.get_workload(w.id) for w in workloads_of(admin, project)]
        models = all_models(admin, project)
        r = http.request(method, url, json=body)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json" and words in r.json()["detail"], r.text
        assert [admin.get_workload(w.id) for w in workloads_of(admin, project)] == before
        assert all_models(admin, project) == models

    new = f"/projects/{project}/workloads"
    refused("POST", new, start | {"command": []}, 422, "non-empty list of strings")
    refused("POST", new, start | {"git_commit": "abc"}, 422, "not a full commit id")
    refused("POST", new, start | {"env": {"BAD-NAME": "x"}}, 422, "not an environment variable name")
    refused("POST", new, start | {"type": "pytorch"}, 422, "Model type 'pytorch' is not known")
    refused("POST", new, start | {"name": " "}, 422, "Model name must be a non-empty string")
    refused("POST", new, start | {"colour": "red"}, 422, "colour")
    refused("POST", "/projects/prnotthere/workloads", start, 404, "not found")

    w = admin.start_workload(project, **start)
    url = f"/workloads/{w.id}"
    refused("PATCH", url, {"state": "running"}, 422, "cannot be set to 'running'")
    refused("PATCH", url, {"state": "uploading", "exit_code": 2}, 422, "exited with 2 did not succeed")
    refused(
        "PATCH", url, {"series": {"loss": {"steps": [1, 0], "values": [1, 2]}}}, 422, "above the one before"
    )
    refused("PATCH", url, {"series": {"loss": {"steps": [0], "values": ["x"]}}}, 422, "not a finite number")
    refused(
        "PATCH", url, {"series": {"loss": {"steps": [0], "values": [10**400]}}}, 422, "not a finite number"
    )
    refused("PATCH", url, {"series": {"loss": [0.9, 0.5]}}, 422, "lists 'steps' and 'values'")
    refused("PATCH", url, {"summary": {"a": {"b": 1}}}, 422, "summary values must be numbers")
    refused("PATCH", url, {"log": "x\u0000y"}, 422, "NUL")
    refused("PATCH", url, {"state": "succeeded"}, 409, "report it as uploading")
    refused("PATCH", url, {}, 422, "Nothing to change")
    refused("GET", "/workloads/wl000000000000", None, 404, "Workload wl000000000000 not found")
    refused("GET", "/workloads/wl000000000000/log", None, 404, "not found")
    refused("GET", "/workloads?commit=zz", None, 422, "not a commit id")
    refused("GET", "/workloads?limit=0", None, 422, "limit must be between 1 and 1000")

    # A model uploaded before the workload started, or in another project, is not its model.
    (tmp_path / "m.bin").write_bytes(b"weights")
    earlier = admin.upload(tmp_path / "m.bin", project=project, name="m")
    other_project = admin.create_project("other").id
    w2 = admin.start_workload(project, **start)
    elsewhere = admin.upload(tmp_path / "m.bin", project=other_project, name="m")
    admin.update_workload(w2.id, state="uploading", exit_code=0, log="ok\n")
    url2 = f"/workloads/{w2.id}"
    refused(
        "PATCH", url2, {"state": "succeeded", "model_id": earlier.id}, 422, "not uploaded by this workload"
    )
    refused(
        "PATCH", url2, {"state": "succeeded", "model_id": elsewhere.id}, 422, f"in project {other_project}"
    )
    refused("PATCH", url2, {"state": "succeeded", "model_id": "mo000000000000"}, 404, "not found")
    refused("PATCH", url2, {"exit_code": 0}, 409, "already reported how its command ended")
    mine = admin.upload(tmp_path / "m.bin", project=project, name="m")
    done = admin.update_workload(w2.id, state="succeeded", model_id=mine.id)
    assert (done.state, done.model_id, done.log_bytes) == ("succeeded", mine.id, 3)
    assert admin.get_model(mine.id).source == "workload"
    # Finished: nothing changes any more; a model is claimed once.
    refused("PATCH", url2, {"state": "failed"}, 409, "a finished workload does not change")
    w3 = admin.start_workload(project, **start)
    admin.update_workload(w3.id, state="uploading")
    refused(
        "PATCH", f"/workloads/{w3.id}", {"state": "succeeded", "model_id": mine.id}, 409, "already made by"
    )
    # A viewer reads workloads and logs but cannot change them.
    viewer = admin.create_key(project=project, role="viewer")
    with server.client(viewer.secret) as v:
        assert v.get_workload(w2.id).model_id == mine.id and v.workload_log(w2.id) == "ok\n"
        with pytest.raises(modeldepot.PermissionDenied):
            v.update_workload(w3.id, state="failed")
    # Deleting the model removes the link with it; deleting the project removes its workloads.
    admin.delete_model(mine.id)
    assert admin.get_workload(w2.id).model_id is None
    admin.delete_project(project, force=True)
    with pytest.raises(modeldepot.NotFound):
        admin.get_workload(w2.id)


# -- the SDK -------------------------------------------------------------------------------------------


def test_sdk_context_manager_and_log_model_in_real_scripts(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str]
) -> None:
    env = env | {"KEEP_ME": "yes", "SECRET_TOKEN": "hunter2-secret"}
    done = subprocess.run([PYTHON, "sdk_line.py", project], env=env, cwd=repo, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids_ = json.loads(done.stdout.splitlines()[-1])
    assert "epoch 5" in done.stdout  # printed through, as well as captured
    model, w = admin.get_model(ids_["model"]), admin.get_workload(ids_["workload"])
    assert (model.workload_id, model.source, model.tags, w.model_id) == (w.id, "workload", ("sdk",), model.id)
    assert {f.path for f in model.files or ()} == {"weights.npy", "config.json"}
    assert model.series is not None and model.series["loss"]["steps"] == [0, 1, 2, 3, 4, 5]
    assert model.summary["slope"] == pytest.approx(2, abs=0.05) and model.summary["framework"] == "numpy"
    assert model.summary["loss"] == model.series["loss"]["values"][-1]
    assert w.command[-2:] == ("sdk_line.py", project) and w.env == {"KEEP_ME": "yes"}
    assert w.git_commit == git(repo, "rev-parse", "HEAD") and w.state == "succeeded"
    log = admin.workload_log(w.id)
    assert "epoch 0" in log and "epoch 5" in log and "hunter2" not in log

    done = subprocess.run([PYTHON, "sdk_onnx.py", project], env=env, cwd=repo, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    one = json.loads(done.stdout)
    relu = admin.get_model(one["model"])
    assert (relu.type, relu.summary) == ("ONNX", {"accuracy": 0.93, "loss": 0.3})
    assert relu.series == {"loss": {"steps": [0, 1, 2], "values": [0.9, 0.5, 0.3]}}
    assert admin.get_workload(one["workload"]).state == "succeeded"


def test_sdk_block_that_fails_or_saves_nothing_leaves_no_model(
    server: RunningServer, admin: Client, project: str
) -> None:
    with pytest.raises(ValueError, match="boom"), admin.workload(project, "m") as run:
        run.log_metrics({"loss": 0.9})
        run.log_metrics({"loss": float("nan")})  # a diverged loss is a gap, not an error
        print("before the failure")
        raise ValueError("boom")
    w = admin.get_workload(run.workload.id)
    assert (w.state, w.error, w.model_id) == ("failed", "ValueError: boom", None)
    assert w.series == {"loss": {"steps": [0, 1], "values": [0.9, None]}} and w.summary == {"loss": None}
    log = admin.workload_log(w.id)
    assert "before the failure" in log and "Traceback" in log and "ValueError: boom" in log
    with pytest.raises(InvalidInput, match="saved no files"), admin.workload(project, "m"):
        pass
    with pytest.raises(InvalidInput, match="not a number"), admin.workload(project, "m") as run:
        run.log_metrics({"accuracy": "high"})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="does not exist"):
        admin.log_model("/nonexistent/model.onnx", project=project, name="m")
    assert [w.state for w in workloads_of(admin, project)] == ["failed"] * 3
    assert all_models(admin, project) == []


# -- the log, metrics parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_long_log_keeps_its_head_and_tail(
    server: RunningServer, admin: Client, project: str, repo: Path, env: dict[str, str]
) -> None:
    lines = 60_000  # 64 bytes each: 3.8 MB of output
    done = cli(["run", "--project", project, "--name", "m", "--", PYTHON, "chatty.py", str(lines)], env, repo)
    assert done.stdout.count("\n") == lines  # the terminal saw everything
    (w,) = workloads_of(admin, project)
    with server.http() as http:
        r = http.get(f"/workloads/{w.id}/log")
    assert r.headers["content-type"].startswith("text/plain")
    log = r.text
    total = lines * 64
    assert w.log_bytes == total
    assert log.startswith("line 0000000 x") and log.endswith(f"line {lines - 1:07d} " + "x" * 50 + "\n")
    kept = 64 * 1024 + 448 * 1024
    assert f"[modeldepot: {total - kept} bytes of output left out here;" in log
    assert len(log.encode()) < kept + 200


def test_log_buffer_and_metric_formats() -> None:
    buf = LogBuffer(head=10, tail=20)
    for i in range(100):
        buf.write(f"{i:02d}|".encode())
    text = buf.text()
    assert text.startswith("00|01|02|0\n[modeldepot: 270 bytes of output left out here;")
    assert text.endswith("the first 10 bytes and the last 20 bytes]\n3|94|95|96|97|98|99|")
    assert buf.total == 300
    short = LogBuffer(head=10, tail=20)
    short.write(b"hello\x00\xff")
    assert short.text() == "hello\ufffd\ufffd"

    summary, series = parse_metrics(
        {"acc": 0.9, "name": "x", "ok": True, "none": None, "loss": [0.5, float("inf"), 10**400, 0.25]}, "m"
    )
    assert summary == {"acc": 0.9, "name": "x", "ok": True, "none": None, "loss": 0.25}
    assert series == {"loss": {"steps": [0, 1, 2, 3], "values": [0.5, None, None, 0.25]}}
    _, series = parse_metrics({"l": [{"step": 3, "value": 1}, {"step": 10, "value": 2}]}, "m")
    assert series == {"l": {"steps": [3, 10], "values": [1, 2]}}
    steps, values = thin(list(range(25)), list(range(25)), limit=10)
    assert steps == values == [0, 4, 8, 12, 16, 20, 24]  # halved twice; the last point kept
    for bad, words in (({"x": []}, "empty list"), ({"x": [True]}, "not a number"), ({"x": {}}, "is a dict")):
        with pytest.raises(InvalidInput, match=words):
            parse_metrics(bad, "m")


# -- the store: schema and guarded updates, on both databases --------------------------------------------


@pytest.fixture
def store(database_url: str) -> Iterator[SqlMetadataStore]:
    s = SqlMetadataStore(database_url)
    s.migrate()
    yield s
    s.close()


def test_migrations_build_exactly_the_tables(store: SqlMetadataStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from modeldepot.metadata.tables import metadata

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_upgrading_from_the_first_schema_keeps_models(database_url: str) -> None:
    from sqlalchemy import insert

    from modeldepot.metadata import tables as t

    store = SqlMetadataStore(database_url)
    try:
        store.migrate("0001")
        now = datetime.now(UTC)
        with store.engine.begin() as conn:  # only the columns the first schema has
            conn.execute(insert(t.projects).values(id="pr0000001", name="p", created_at=now, created_by="t"))
            conn.execute(
                insert(t.models).values(
                    id="mo000000000001", project_id="pr0000001", name="m", version=1, type="ONNX",
                    state="ready", summary={}, notes="", metadata={}, source="upload", created_at=now,
                    created_by="t", size=0, file_count=0,
                )
            )  # fmt: skip
        store.migrate()
        model = store.get_model("mo000000000001")
        assert model is not None and model.workload_id is None and model.series == {}
        assert store.list_workloads(WorkloadQuery(project_ids=None)) == ([], None)
    finally:
        store.close()


def _workload(project_id: str, commit: str | None = None) -> Workload:
    return Workload(
        id="wl" + ids._random(12),
        project_id=project_id,
        name="m",
        state="running",
        command=("python", "t.py"),
        working_dir=None,
        exit_code=None,
        started_at=datetime.now(UTC),
        ended_at=None,
        duration_seconds=None,
        host="h",
        user="u",
        created_by="t",
        git_commit=commit,
        git_branch=None,
        git_dirty=None,
        env={},
        summary={},
        series={},
        error=None,
        dataset_ref=None,
        log_bytes=0,
    )


def test_store_pages_filters_and_guards_workloads(store: SqlMetadataStore) -> None:
    pid = ids.project_id()
    store.create_project(Project(id=pid, name="p", created_at=datetime.now(UTC), created_by="t"))
    commits = ["a" * 40, "ab" + "0" * 38, None]
    made = [_workload(pid, commits[i % 3]) for i in range(11)]
    for w in made:
        store.create_workload(w, "log of " + w.id)
    seen: list[str] = []
    before = None
    while True:
        page, before = store.list_workloads(WorkloadQuery(project_ids=(pid,), before_seq=before, limit=4))
        seen += [w.id for w in page]
        if before is None:
            break
    assert seen == [w.id for w in reversed(made)]
    by_prefix, _ = store.list_workloads(WorkloadQuery(project_ids=None, commit="ab"))
    assert {w.id for w in by_prefix} == {w.id for i, w in enumerate(made) if i % 3 == 1}
    by_full, _ = store.list_workloads(WorkloadQuery(project_ids=(pid,), commit="a" * 40))
    assert len(by_full) == 4 and store.workload_log(made[0].id) == "log of " + made[0].id
    # Guarded: a change meant for another state, or a claim of a model that is not ready, does nothing.
    w = made[0]
    assert not store.update_workload(w.id, ("uploading",), {"state": "failed"})
    assert store.update_workload(w.id, ("running",), {"state": "uploading", "exit_code": 0})
    assert not store.update_workload(w.id, ("uploading",), {"state": "succeeded"}, ModelLink("monothere", {}))
    got = store.get_workload(w.id)
    assert got is not None and (got.state, got.exit_code, got.model_id) == ("uploading", 0, None)
    assert store.get_workload("wlmissing") is None and store.workload_log("wlmissing") is None
