"""Big files: a 1 GiB file and a directory of many files, through the CLI, byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from .conftest import RunningServer
from .test_cli import run

GiB = 1024**3


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(8 * 1024 * 1024)
    with path.open("wb") as f:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            # vary each block so that no two blocks are equal
            chunk = written.to_bytes(8, "little") + chunk[8:]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_gib_file_and_many_small_files(server: RunningServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPOT_")}
    env |= {
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MODELDEPOT_URL": server.url,
        "MODELDEPOT_API_KEY": server.admin_key,
    }
    project = run(["projects", "create", "big"], env).stdout.strip()
    src = tmp_path / "model"
    (src / "nested" / "ünï").mkdir(parents=True)
    big_hash = _write_random(src / "nested" / "weights 1GiB.bin", GiB)
    for i in range(300):
        (src / "nested" / "ünï" / f"shard-{i:04d}.txt").write_text(f"shard {i}\n" * (i + 1))
    model = json.loads(
        run(["models", "upload", str(src), "--name", "big", "--project", project, "--json"], env).stdout
    )
    assert model["file_count"] == 301 and model["size"] > GiB
    out = tmp_path / "out"
    run(["models", "download", model["id"], str(out)], env)
    got = hashlib.sha256()
    with (out / "nested" / "weights 1GiB.bin").open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            got.update(chunk)
    assert got.hexdigest() == big_hash
    for i in (0, 150, 299):
        name = f"nested/ünï/shard-{i:04d}.txt"
        assert (out / name).read_bytes() == (src / name).read_bytes()
    # Re-uploading the same directory sends no file bytes: every blob is already there.
    again = json.loads(
        run(["models", "upload", str(src), "--name", "big", "--project", project, "--json"], env).stdout
    )
    assert again["version"] == 2
