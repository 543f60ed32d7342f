"""What a download does with the destination folder: partial files that cannot be taken for the
model's files, file names as long as the server accepts, symlinks inside the folder, two downloads
into one folder at once, and partial files left by an earlier run that do not match.

Partial files live in ``DEST/.modeldepot-partial/<sha256 of the stored path>.part`` (and ``.done``);
``partial_of`` names them as the SDK does, for the tests that leave one there as an interrupted run
would. Every test runs a real server and the real SDK or ``modeldepot`` command.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from modeldepot import Client, IntegrityError, InvalidInput

from .conftest import RunningServer, write_tree
from .test_cli import MODELDEPOT

MiB = 1024 * 1024
PARTIAL = ".modeldepot-partial"


def partial_of(dest: Path, stored_path: str) -> tuple[Path, Path]:
    """The partial file of ``stored_path`` in a download into ``dest``, and its record of ranges."""
    key = hashlib.sha256(stored_path.encode()).hexdigest()
    return dest / PARTIAL / f"{key}.part", dest / PARTIAL / f"{key}.done"


def tree_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (symlinks as ``-> target``), by its path."""
    found: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            found[rel] = path.read_bytes()
    return found


def cli(server: RunningServer, tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    env |= {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "COLUMNS": "200",
        "MODELDEPOT_URL": server.url,
        "MODELDEPOT_API_KEY": server.admin_key,
    }
    return subprocess.run([*MODELDEPOT, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def ranged_from_1mib() -> object:
    """Files of 1 MiB and more come down in 1 MiB ranges (64 MiB and 16 MiB otherwise)."""
    from modeldepot.client import downloader

    old = downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE
    downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE = MiB, MiB
    yield
    downloader.RANGED_THRESHOLD, downloader.RANGE_SIZE = old


# -- 1. partial files are never taken for files of the model ---------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_files_named_like_partial_files_download_as_themselves(
    admin: Client, project: str, tmp_path: Path
) -> None:
    """``m.bin`` and ``m.bin.part`` in one model: ``m.bin`` used to end up holding the other file's
    bytes (3 runs in 5), and the download said it had downloaded both. Files over 4 MiB (one GET
    each), and small ones (many to a request)."""
    files = {
        "m.bin": os.urandom(12 * MiB),  # longer to fetch than the other: its .part was replaced
        "m.bin.part": os.urandom(5 * MiB),
        "s.txt": b"small",
        "s.txt.part": b"another small one",
        "s.txt.part.done": b"0\n",
    }
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    for run in range(5):
        out = tmp_path / f"out-{run}"
        admin.download(model.id, out)
        assert tree_of(out) == files, run
        assert not (out / PARTIAL).exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_downloading_again_leaves_files_named_like_partial_files_alone(
    server: RunningServer, admin: Client, project: str, tmp_path: Path, ranged_from_1mib: object
) -> None:
    """With ``w.bin``, ``w.bin.part`` and ``w.bin.part.done`` downloaded and ``w.bin`` removed, the
    next download took ``w.bin.part`` for a partial ``w.bin``: "w.bin arrived corrupted" (exit 8),
    and it deleted the good ``w.bin.part`` and ``w.bin.part.done``. Whole files and ranged ones."""
    files = {
        "w.bin": os.urandom(5 * MiB // 2),  # in ranges here
        "w.bin.part": os.urandom(5 * MiB // 2),
        "w.bin.part.done": b"0\n1048576\n",
        "x.bin": os.urandom(MiB - 1),  # one GET, resuming from a .part of the same length
        "x.bin.part": os.urandom(MiB - 1),
    }
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    out = tmp_path / "out"
    admin.download(model.id, out)
    assert tree_of(out) == files
    for gone in ("w.bin", "x.bin"):
        (out / gone).unlink()
        admin.download(model.id, out)
        assert tree_of(out) == files, gone
    proc = cli(server, tmp_path, ["models", "download", model.id, str(out)])
    assert proc.returncode == 0, proc.stderr
    assert tree_of(out) == files


# -- 2. every file name the server accepts downloads -----------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_file_names_of_up_to_255_bytes_download(admin: Client, project: str, tmp_path: Path) -> None:
    """The ``.part`` suffix pushed a name of 251-255 bytes past the 255 the file system allows:
    "File name too long", and no file of the model was written."""
    files = {
        "a" * 255: b"small, many to a request",
        "sub/" + "b" * 251: os.urandom(5 * MiB),  # one GET
        "é" * 127 + "c": b"255 bytes in UTF-8",
    }
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="long")
    out = tmp_path / "out"
    admin.download(model.id, out)
    assert tree_of(out) == files
    # Resumed from what an interrupted run left, under the same short name.
    (out / ("sub/" + "b" * 251)).unlink()
    part, _ = partial_of(out, "sub/" + "b" * 251)
    part.parent.mkdir()
    part.write_bytes(b"not the start of the file")
    with pytest.raises(IntegrityError, match="resumed from a partial file"):
        admin.download(model.id, out)
    admin.download(model.id, out)
    assert tree_of(out) == files


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_file_name_of_255_bytes_downloads_in_ranges(
    admin: Client, project: str, tmp_path: Path, ranged_from_1mib: object
) -> None:
    files = {"d" * 255: os.urandom(3 * MiB + 1)}
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="long")
    admin.download(model.id, tmp_path / "out")
    assert tree_of(tmp_path / "out") == files


# -- the folder of partial files: resuming, and paths of the model inside it ----------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_download_resumes_from_its_partial_files_and_removes_them_when_complete(
    admin: Client, project: str, tmp_path: Path, ranged_from_1mib: object
) -> None:
    whole, ranged = os.urandom(MiB - 100), os.urandom(4 * MiB + 5)
    model = admin.upload(
        write_tree(tmp_path / "m", {"w.bin": whole, "r.bin": ranged}), project=project, name="m"
    )
    out = tmp_path / "out"
    (out / PARTIAL).mkdir(parents=True)
    part, _ = partial_of(out, "w.bin")
    part.write_bytes(whole[:1000])  # cut off after 1000 bytes
    part, done = partial_of(out, "r.bin")
    with part.open("wb") as f:  # ranges 1 and 3 of 5 arrived
        f.truncate(len(ranged))
        for start in (MiB, 3 * MiB):
            f.seek(start)
            f.write(ranged[start : start + MiB])
    done.write_text(f"{MiB}\n{3 * MiB}\n")
    (out / PARTIAL / "0123.part").write_bytes(b"left by another download")
    admin.download(model.id, out)
    assert tree_of(out) == {"r.bin": ranged, "w.bin": whole}  # the folder is gone, all of it


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_model_path_in_the_folder_of_partial_files_is_refused(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    files = {"ok.bin": b"ok", ".ModelDepot-Partial/x.bin": b"x"}  # the same folder where case is ignored
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match="the folder where downloads keep the files still arriving"):
        admin.download(model.id, out)
    proc = cli(server, tmp_path, ["models", "download", model.id, str(out)])
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("Error: Refusing to write '.ModelDepot-Partial/x.bin'"), proc.stderr
    assert "models archive" in proc.stderr
    assert not out.exists()


# -- 3. symlinks inside the destination ------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_symlink_at_a_files_place_is_replaced_not_written_through(
    admin: Client, project: str, tmp_path: Path, ranged_from_1mib: object
) -> None:
    """``a.txt -> b.txt`` in the destination: a.txt and b.txt both ended up "beta" (exit 0), and the
    next run both "alpha". Now the link is replaced by the file, whatever the way the file comes."""
    files = {
        "a.txt": b"alpha",
        "b.txt": b"beta",
        "big.bin": os.urandom(2 * MiB),  # in ranges here
        "big2.bin": os.urandom(2 * MiB),
        "d.bin": b"d",
        "dir/keep.txt": b"keep",
    }
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    for run in ("sdk", "sdk-again"):
        out = tmp_path / run
        out.mkdir()
        (out / "a.txt").symlink_to("b.txt")
        (out / "big.bin").symlink_to("big2.bin")
        (out / "dir").mkdir()
        (out / "d.bin").symlink_to("dir")  # a link to a directory at a file's place
        (out / "b.txt").write_bytes(b"beta")  # already there with the right bytes
        admin.download(model.id, out)
        assert tree_of(out) == files, run
        assert not any(p.is_symlink() for p in out.rglob("*"))
    # A link to a file with the very bytes the file should have is replaced all the same.
    out = tmp_path / "same"
    out.mkdir()
    (out / "a-copy.txt").write_bytes(b"alpha")
    (out / "a.txt").symlink_to("a-copy.txt")
    admin.download(model.id, out)
    assert not (out / "a.txt").is_symlink() and (out / "a.txt").read_bytes() == b"alpha"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_symlinked_directory_that_would_put_two_files_at_one_place_is_refused(
    admin: Client, project: str, tmp_path: Path
) -> None:
    files = {"sub/x.bin": b"one", "real/x.bin": b"two", "other.bin": b"o"}
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "sub").symlink_to("real")
    with pytest.raises(InvalidInput, match=r"'real/x.bin' and 'sub/x.bin' would both be written to") as info:
        admin.download(model.id, out)
    assert "symbolic link" in info.value.detail and info.value.hint
    assert tree_of(out) == {"sub": b"-> real"}  # refused before anything was fetched
    # A symlinked directory that leads into the folder of partial files is refused too.
    out = tmp_path / "out2"
    (out / PARTIAL).mkdir(parents=True)
    (out / "sub").symlink_to(PARTIAL)
    with pytest.raises(InvalidInput, match="where downloads keep the files still arriving"):
        admin.download(model.id, out)


# -- 4. two downloads into one folder at once ------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_second_download_into_the_same_folder_fails_at_once(
    server: RunningServer, admin: Client, project: str, tmp_path: Path
) -> None:
    """The lock is an exclusive flock on ``DEST/.modeldepot-partial/lock``, held for the download;
    here the test holds it, as a download running in another process would."""
    files = {"a.bin": b"a" * 100, "m.bin": os.urandom(5 * MiB)}
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    out = tmp_path / "out"
    (out / PARTIAL).mkdir(parents=True)
    fd = os.open(out / PARTIAL / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(InvalidInput, match=f"Another download is writing into {out}$") as info:
            admin.download(model.id, out)
        assert "another folder" in (info.value.hint or "")
        proc = cli(server, tmp_path, ["models", "download", model.id, str(out)])
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.splitlines()[0] == f"Error: Another download is writing into {out}", proc.stderr
        assert "Traceback" not in proc.stderr
        assert tree_of(out) == {f"{PARTIAL}/lock": b""}  # nothing fetched, nothing removed
    finally:
        os.close(fd)
    admin.download(model.id, out)
    assert tree_of(out) == files


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_two_downloads_at_once_never_spoil_each_other(
    server: RunningServer, project: str, tmp_path: Path
) -> None:
    """They used to fail with "No such file or directory" on a ``.part``, or "arrived corrupted"
    when nothing was, and could truncate each other's partial files. Now one of two started at once
    may be refused (InvalidInput), and nothing else goes wrong."""
    files = {f"s{i}.bin": os.urandom(200_000) for i in range(20)}
    files |= {f"m{i}.bin": os.urandom(5 * MiB) for i in range(3)}
    with server.client() as admin:
        model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    for run in range(4):
        out = tmp_path / f"out-{run}"
        start = threading.Barrier(2)
        outcomes: list[BaseException | None] = [None, None]

        def download(
            i: int,
            out: Path = out,
            start: threading.Barrier = start,
            outcomes: list[BaseException | None] = outcomes,
        ) -> None:
            with server.client() as client:
                start.wait()
                try:
                    client.download(model.id, out)
                except BaseException as exc:
                    outcomes[i] = exc

        threads = [threading.Thread(target=download, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for outcome in outcomes:
            assert outcome is None or (
                isinstance(outcome, InvalidInput) and "Another download" in outcome.detail
            ), repr(outcome)
        assert outcomes.count(None) >= 1
        assert tree_of(out) == files


# -- 5. a partial file of an earlier run that does not match ----------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bad_partial_file_is_named_as_the_likely_cause(
    server: RunningServer, admin: Client, project: str, tmp_path: Path, ranged_from_1mib: object
) -> None:
    """It said "arrived corrupted (sha256 mismatch)", blaming the transfer, with no hint."""
    files = {"w.bin": os.urandom(MiB - 1), "r.bin": os.urandom(3 * MiB), "ok.bin": b"ok"}
    model = admin.upload(write_tree(tmp_path / "m", files), project=project, name="m")
    out = tmp_path / "out"
    (out / PARTIAL).mkdir(parents=True)
    part, _ = partial_of(out, "w.bin")
    part.write_bytes(b"garbage left in a partial file")
    proc = cli(server, tmp_path, ["models", "download", model.id, str(out)])
    assert proc.returncode == 8, proc.stderr
    first, hint = proc.stderr.splitlines()[:2]
    assert first.startswith("Error: w.bin is corrupted (sha256 mismatch) and was not kept: it was resumed")
    assert f"({part})" in first and "that partial file was removed" in first
    assert hint.startswith("Hint: Run the download again: it fetches the file whole."), hint
    assert tree_of(out) == {"ok.bin": b"ok", "r.bin": files["r.bin"]}  # the bad partial file is gone
    proc = cli(server, tmp_path, ["models", "download", model.id, str(out)])
    assert proc.returncode == 0, proc.stderr
    assert tree_of(out) == files

    # Two bad ones, one of them ranges kept from an earlier run.
    out = tmp_path / "out2"
    (out / PARTIAL).mkdir(parents=True)
    part, _ = partial_of(out, "w.bin")
    part.write_bytes(b"garbage")
    part, done = partial_of(out, "r.bin")
    with part.open("wb") as f:
        f.truncate(len(files["r.bin"]))
    done.write_text("0\n")  # says the first range arrived, but it holds zeros
    with pytest.raises(IntegrityError, match="2 files arrived corrupted") as info:
        admin.download(model.id, out)
    assert "2 of them had been resumed from partial files of an earlier download" in info.value.detail
    assert "whole" in (info.value.hint or "")
    admin.download(model.id, out)
    assert tree_of(out) == files
