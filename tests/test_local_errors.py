"""Local file-system failures of uploads and downloads: a directory that cannot be listed, a file that
cannot be read, a destination that cannot be written, a full disk.

The SDK raises the OSError naming the file (never a connection error, never a BufferError in its
place); the CLI prints one line naming the path, with a hint, and exits with 3, or 9 when the disk is
full. Uploads refuse before anything is sent; an archive leaves no ``.part``; a download keeps its
partial files (in ``DEST/.modeldepot-partial/``) and resumes when run again.

Tests run against a real server and the real ``modeldepot`` command. Permissions are taken away with
``unshare --user`` when running as root (root ignores them otherwise); a full disk is a small tmpfs
mounted in a user and mount namespace of the command's own (``unshare -rm``), or ``/dev/full``
under a partial file's name for the SDK in this process, or ``RLIMIT_FSIZE`` (EFBIG) for a ranged download.
Each skips where the system does not offer it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldepot import Client, ConnectionFailed

from .conftest import make_settings, running_server, write_tree
from .test_download_dest import partial_of

MODELDEPOT = [sys.executable, "-m", "modeldepot.cli"]
MiB = 1024 * 1024


@dataclasses.dataclass
class Depot:
    env: dict[str, str]  # for the CLI: the server's URL and key
    client: Client
    project: str
    files: dict[str, dict[str, bytes]]  # model id: its files
    ids: dict[str, str]  # small (a folder, small files), many, mid (one file over 4 MiB), big (ranged)

    def cli(self, args: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*(prefix or []), *MODELDEPOT, *args], env=self.env, capture_output=True, text=True, timeout=300
        )


@pytest.fixture(scope="module")
def depot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Depot]:
    tmp = tmp_path_factory.mktemp("local-errors")
    with running_server(make_settings(f"sqlite:///{tmp / 'meta.db'}", tmp / "data")) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
        env.update(
            XDG_CONFIG_HOME=str(tmp / "config"),
            XDG_CACHE_HOME=str(tmp / "cache"),
            COLUMNS="200",
            MODELDEPOT_URL=server.url,
            MODELDEPOT_API_KEY=server.admin_key,
        )
        with server.client() as client:
            project = client.create_project("local").id
            trees = {
                "small": {"a.bin": b"a" * 1000, "sub/b.bin": b"b" * 2000},
                "many": {f"f{i:02}.bin": os.urandom(100_000) for i in range(30)},
                "mid": {"m.bin": os.urandom(5 * MiB)},
                "big": {"big.bin": os.urandom(65 * MiB)},
            }
            ids, files = {}, {}
            for name, tree in trees.items():
                model = client.upload(write_tree(tmp / "src" / name, tree), project=project, name=name)
                ids[name] = model.id
                files[model.id] = tree
            yield Depot(env, client, project, files, ids)


def _run_ok(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def unprivileged(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A prefix that runs a command which file permissions apply to (root's are ignored)."""
    if os.geteuid() != 0:
        return []
    probe = tmp_path_factory.mktemp("probe") / "closed"
    probe.write_text("x")
    probe.chmod(0)
    prefix = ["unshare", "--user"]
    if not shutil.which("unshare") or not _run_ok([*prefix, "true"]) or _run_ok([*prefix, "cat", str(probe)]):
        pytest.skip("running as root, and `unshare --user` cannot drop the power to ignore permissions")
    return prefix


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A shell script that mounts a tmpfs of size $1 at $2 in a mount namespace of its own, runs the
    rest of its arguments there, and lists what is left on the tmpfs into $3."""
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 97; m="$2"; l="$3"; shift 3; "$@"; rc=$?; '
    script += 'find "$m" -mindepth 1 -printf "%P\\n" | sort > "$l"; exit $rc'
    probe = tmp_path_factory.mktemp("mnt")
    if not shutil.which("unshare") or not _run_ok(
        ["unshare", "-rm", "sh", "-c", script, "sh", "1m", str(probe), os.devnull, "true"]
    ):
        pytest.skip("cannot mount a tmpfs in a user and mount namespace (`unshare -rm`)")
    return script


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """The CLI failed with ``code`` and one readable error (no traceback) holding every needle."""
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.stderr.startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "BufferError" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _names(depot: Depot) -> set[str]:
    """The names of the project's models in any state (an upload refused early makes none)."""
    return {m.name for m in depot.client.list_models(project=depot.project, state="any", limit=100).items}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- uploads ---------------------------------------------------------------------------------------


def test_upload_of_a_folder_with_a_subfolder_that_cannot_be_listed_is_refused(
    depot: Depot, unprivileged: list[str], tmp_path: Path
) -> None:
    """It used to be skipped without a word: the model became ready without the files in it."""
    root = write_tree(tmp_path / "model", {"weights.bin": b"w" * 100, "secret/extra.bin": b"e" * 100})
    (root / "secret").chmod(0)
    try:
        proc = depot.cli(
            ["models", "upload", str(root), "--name", "unlisted", "--project", depot.project], unprivileged
        )
    finally:
        (root / "secret").chmod(0o755)
    _one_line_error(proc, 3, f"Cannot read the directory {root / 'secret'}: Permission denied", "Hint:")
    assert "unlisted" not in _names(depot)


def test_upload_of_a_file_that_cannot_be_read_names_it(
    depot: Depot, unprivileged: list[str], tmp_path: Path
) -> None:
    root = write_tree(tmp_path / "model", {"weights.bin": b"w" * 100, "closed.bin": b"c" * 100})
    (root / "closed.bin").chmod(0)
    proc = depot.cli(
        ["models", "upload", str(root), "--name", "unreadable", "--project", depot.project], unprivileged
    )
    _one_line_error(
        proc, 3, f"Error: {root / 'closed.bin'}: Permission denied", "Hint: Check the permissions"
    )
    assert "unreadable" not in _names(depot)


# -- where a download cannot land ------------------------------------------------------------------


def test_download_into_a_regular_file_is_refused_before_anything_is_fetched(
    depot: Depot, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.write_bytes(b"mine")
    with pytest.raises(NotADirectoryError) as info:
        depot.client.download(depot.ids["small"], dest)
    assert info.value.filename == str(dest)
    proc = depot.cli(["models", "download", depot.ids["small"], str(dest)])
    _one_line_error(proc, 3, f"Error: {dest}: Not a directory", "Hint: A file is where a directory is needed")
    assert dest.read_bytes() == b"mine"


def test_download_where_a_directory_is_in_the_way_leaves_nothing_behind(depot: Depot, tmp_path: Path) -> None:
    """os.replace used to fail once the file had arrived, leaving its partial file and a traceback."""
    dest = tmp_path / "dest"
    (dest / "a.bin").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as info:
        depot.client.download(depot.ids["small"], dest)
    assert info.value.filename == str(dest / "a.bin")
    proc = depot.cli(["models", "download", depot.ids["small"], str(dest)])
    _one_line_error(proc, 3, f"Error: {dest / 'a.bin'}: Is a directory", "Hint: A directory is where a file")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["a.bin"]

    archive = dest / "a.bin"  # an archive's destination that is a directory
    proc = depot.cli(["models", "archive", depot.ids["small"], str(archive)])
    _one_line_error(proc, 3, f"Error: {archive}: Is a directory")
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]


def test_download_into_a_read_only_folder_names_the_path(
    depot: Depot, unprivileged: list[str], tmp_path: Path
) -> None:
    dest = tmp_path / "read-only"
    dest.mkdir()
    dest.chmod(0o555)
    proc = depot.cli(["models", "download", depot.ids["mid"], str(dest)], unprivileged)
    _one_line_error(
        proc, 3, f"Error: {dest / '.modeldepot-partial'}: Permission denied", "Hint: Check the permissions"
    )
    proc = depot.cli(["models", "archive", depot.ids["mid"], str(dest / "m.zip")], unprivileged)
    _one_line_error(proc, 3, f"Error: {dest / 'm.zip.part'}: Permission denied")
    assert list(dest.iterdir()) == []


def test_download_into_a_read_only_folder_that_holds_the_model_already_checks_it(
    depot: Depot, unprivileged: list[str], tmp_path: Path
) -> None:
    """Nothing has to be written, so the folder of partial files (and its lock) is not needed."""
    dest = write_tree(tmp_path / "read-only", depot.files[depot.ids["small"]])
    for folder in (dest / "sub", dest):
        folder.chmod(0o555)
    proc = depot.cli(["models", "download", depot.ids["small"], str(dest)], unprivileged)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["a.bin", "sub", "sub/b.bin"]


# -- a full disk: the SDK in this process, /dev/full under the partial file's name ------------------


def _full_part(path: Path) -> Path:
    """``path`` made a symlink to /dev/full, where every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/full")
    return path


def test_a_full_disk_under_a_download_is_not_a_connection_failure(depot: Depot, tmp_path: Path) -> None:
    """The OSError of the local write used to come out as ConnectionFailed ("cut off … run again")."""
    part = _full_part(partial_of(tmp_path / "dest", "m.bin")[0])
    with pytest.raises(OSError) as info:
        depot.client.download(depot.ids["mid"], tmp_path / "dest")
    assert not isinstance(info.value, ConnectionFailed)
    assert (info.value.errno, info.value.filename) == (28, str(part))
    # The connection that was cut off is not reused half-read: the next download works.
    part.unlink()
    written = depot.client.download(depot.ids["mid"], tmp_path / "dest")
    assert [p.read_bytes() for p in written] == [depot.files[depot.ids["mid"]]["m.bin"]]


def test_a_failed_archive_leaves_no_part(depot: Depot, tmp_path: Path) -> None:
    part = _full_part(tmp_path / "m.zip.part")
    with pytest.raises(OSError) as info:
        depot.client.download_archive(depot.ids["mid"], tmp_path / "m.zip")
    assert (info.value.errno, info.value.filename) == (28, str(part))
    assert sorted(os.listdir(tmp_path)) == []


# -- a full disk for the CLI: a small tmpfs ---------------------------------------------------------


def _left_by_download(stored: str, done: bool) -> list[str]:
    """What a download into ``out`` that failed while writing ``stored`` leaves, to resume from: the
    partial file (and its record of ranges), and the lock file beside them."""
    part, ranges = partial_of(Path("out"), stored)
    kept = [part, ranges] if done else [part]
    return ["out", "out/.modeldepot-partial", "out/.modeldepot-partial/lock", *(p.as_posix() for p in kept)]


@pytest.mark.parametrize(
    ("model", "size", "command", "left"),
    [
        # small files, many to a request (the batch path)
        ("many", "1m", "download", None),
        # one file over 4 MiB, fetched whole
        ("mid", "2m", "download", _left_by_download("m.bin", done=False)),
        # a file fetched in parallel ranges: the BufferError used to replace the OSError
        ("big", "20m", "download", _left_by_download("big.bin", done=True)),
        ("mid", "2m", "archive", []),
    ],
)
def test_a_full_disk_is_one_line_and_exit_code_9(
    depot: Depot, small_disk: str, tmp_path: Path, model: str, size: str, command: str, left: list[str] | None
) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    listing = tmp_path / "left.txt"
    dest = mount / ("out" if command == "download" else "m.zip")
    proc = depot.cli(
        ["models", command, depot.ids[model], str(dest)],
        ["unshare", "-rm", "sh", "-c", small_disk, "sh", size, str(mount), str(listing)],
    )
    _one_line_error(proc, 9, "No space left on device", f"Hint: Free space on the disk of {dest.parent}")
    assert "cut off" not in proc.stderr and "run it again" not in proc.stderr
    line = proc.stderr.splitlines()[0]
    # The partial file, or (in ranges) the record of the ranges that arrived, whichever the disk refused.
    assert line.startswith(f"Error: {dest}"), line
    assert line.endswith((".part: No space left on device", ".done: No space left on device")), line
    remains = listing.read_text().split()
    if left is not None:
        assert sorted(remains) == sorted(
            left
        )  # an archive leaves nothing; a download keeps its partial files
    else:
        assert "out" in remains and any(name.endswith(".part") for name in remains)


# -- a ranged download that fails locally keeps its error, and resumes ------------------------------


def test_a_ranged_download_that_cannot_write_reports_why_and_resumes(depot: Depot, tmp_path: Path) -> None:
    """A write that fails inside a range used to come out as "BufferError: cannot close exported
    pointers exist" (exit 1). Here the write fails with EFBIG (a file size limit, RLIMIT_FSIZE, in
    the command's process); the partial file from an earlier run is there already, so that the limit
    hits the ranges' writes rather than the preallocation."""
    dest = tmp_path / "out"
    big = depot.files[depot.ids["big"]]["big.bin"]
    part, done = partial_of(dest, "big.bin")
    part.parent.mkdir(parents=True)
    with part.open("wb") as f:
        f.truncate(len(big))
    done.write_text("")
    limited = [
        sys.executable,
        "-c",
        "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20));"
        " sys.argv = ['modeldepot', *sys.argv[1:]]; runpy.run_module('modeldepot.cli', run_name='__main__')",
    ]
    proc = subprocess.run(
        [*limited, "models", "download", depot.ids["big"], str(dest)],
        env=depot.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _one_line_error(proc, 3, f"Error: {part}: File too large", "ulimit -f")
    assert sorted(p.name for p in dest.iterdir()) == [".modeldepot-partial"]
    assert sorted(p.name for p in part.parent.iterdir()) == sorted([part.name, done.name, "lock"])
    again = depot.cli(["models", "download", depot.ids["big"], str(dest)])
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["big.bin"]
    assert _sha((dest / "big.bin").read_bytes()) == _sha(big)
