"""A metadata database and its blob store name each other; `serve` stops on a mismatched pair.

A replica started with another --blob-url (or --database-url) served without a word: its downloads
said files were gone, its fsck reported nearly everything missing, and a server pointed at another
database's store would have swept that database's uploads in flight as orphans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeldepot import Conflict
from modeldepot.server.app import create_app

from .conftest import make_settings, running_server, write_tree
from .test_serve import _env


def _check(database_url: str, data_dir: Path, blob_dir: Path) -> None:
    """What `serve` does at start, against this pair."""
    app = create_app(make_settings(database_url, data_dir, blob_url=blob_dir.resolve().as_uri()))
    try:
        app.state.services.maintenance.check_pairing()  # type: ignore[attr-defined]
    finally:
        app.state.store.close()  # type: ignore[attr-defined]


def _upload(database_url: str, tmp_path: Path, blob_dir: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data", blob_url=blob_dir.resolve().as_uri())
    with running_server(settings) as server, server.client() as admin:
        project = admin.create_project("p").id
        admin.upload(write_tree(tmp_path / "m", {"w.bin": os.urandom(1000)}), project=project, name="m")


def test_a_new_pair_is_marked_and_then_recognised(database_url: str, tmp_path: Path) -> None:
    store_dir = tmp_path / "blobs"
    _check(database_url, tmp_path / "data", store_dir)
    marker = (store_dir / "store-id").read_text().strip()
    assert marker.startswith("bs")
    _check(database_url, tmp_path / "data", store_dir)  # the same pair again: fine
    assert (store_dir / "store-id").read_text().strip() == marker


def test_an_installation_from_before_the_marker_is_marked_if_its_blobs_are_there(
    database_url: str, tmp_path: Path
) -> None:
    store_dir = tmp_path / "blobs"
    _upload(database_url, tmp_path, store_dir)  # no check: as an older server left it
    (store_dir / "store-id").unlink(missing_ok=True)
    _check(database_url, tmp_path / "data", store_dir)
    assert (store_dir / "store-id").exists()
    (store_dir / "store-id").unlink()  # a marker lost: written again, the blobs being there
    _check(database_url, tmp_path / "data", store_dir)
    assert (store_dir / "store-id").exists()


def test_a_database_pointed_at_another_store_stops(database_url: str, tmp_path: Path) -> None:
    store_dir = tmp_path / "blobs"
    _upload(database_url, tmp_path, store_dir)
    _check(database_url, tmp_path / "data", store_dir)
    with pytest.raises(Conflict, match="None of the 1 blobs this metadata database indexed last"):
        _check(database_url, tmp_path / "data", tmp_path / "empty")
    assert not (tmp_path / "empty" / "store-id").exists()  # nothing written into the wrong store
    other = tmp_path / "other"
    _check(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "data2", other)  # another pair's store
    with pytest.raises(Conflict, match="belongs to another metadata database"):
        _check(database_url, tmp_path / "data", other)
    _check(database_url, tmp_path / "data", store_dir)  # the right pair still starts


def test_a_new_database_pointed_at_a_store_in_use_stops(database_url: str, tmp_path: Path) -> None:
    store_dir = tmp_path / "blobs"
    _check(f"sqlite:///{tmp_path / 'first.db'}", tmp_path / "data1", store_dir)
    marker = (store_dir / "store-id").read_text()
    with pytest.raises(Conflict, match=r"belongs to another metadata database: .* never recorded") as caught:
        _check(database_url, tmp_path / "data2", store_dir)
    assert "delete the marker" in (caught.value.hint or "")
    assert (store_dir / "store-id").read_text() == marker  # the other database's marker stays


def test_a_replica_given_another_store_before_any_upload_stops(database_url: str, tmp_path: Path) -> None:
    """With nothing uploaded yet there are no blobs to look for: a replica with a typo in --blob-url
    wrote the database's id into the wrong store, and every start of either passed from then on."""
    _check(database_url, tmp_path / "data", tmp_path / "blobs")
    with pytest.raises(Conflict, match="has no marker, though this metadata database marked its store"):
        _check(database_url, tmp_path / "data", tmp_path / "typo")
    assert not (tmp_path / "typo" / "store-id").exists()


def test_a_new_database_pointed_at_an_unmarked_store_with_content_stops(
    database_url: str, tmp_path: Path
) -> None:
    """A store of an installation from before the marker, and a new database started on it first:
    it marked the store as its own, and the old database, upgraded, then took that id too."""
    store_dir = tmp_path / "blobs"
    _upload(f"sqlite:///{tmp_path / 'old.db'}", tmp_path / "old", store_dir)
    (store_dir / "store-id").unlink(missing_ok=True)  # as an older server left it
    with pytest.raises(Conflict, match="holds content, and this metadata database has none"):
        _check(database_url, tmp_path / "data", store_dir)
    assert not (store_dir / "store-id").exists()


def test_a_replica_starting_while_another_marks_the_store_goes_on(database_url: str, tmp_path: Path) -> None:
    """Another replica recorded the id and has not written the marker yet: this one writes it."""
    from modeldepot.metadata import SqlMetadataStore
    from modeldepot.services.maintenance import BLOB_STORE_ID

    store = SqlMetadataStore(database_url)
    store.migrate()
    store.set_fact_once(BLOB_STORE_ID, "bs0000000000000001")
    store.close()
    _check(database_url, tmp_path / "data", tmp_path / "blobs")
    assert (tmp_path / "blobs" / "store-id").read_text().strip() == "bs0000000000000001"


def test_serve_stops_with_one_line_on_a_mismatched_pair(tmp_path: Path) -> None:
    store_dir = tmp_path / "blobs"
    _check(f"sqlite:///{tmp_path / 'first.db'}", tmp_path / "data1", store_dir)
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "modeldepot.cli",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data2"),
        ],
        env=_env(MODELDEPOT_BLOB_URL=store_dir.resolve().as_uri()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode != 0
    assert "belongs to another metadata database" in started.stderr, started.stderr
    assert "Traceback" not in started.stderr
