"""A data dir that has held data never reopens as a new, empty store (issue 15, item 2)."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest

import embedkv
from embedkv.errors import CorruptData
from embedkv.storage import DataDir
from embedkv.storage.lmdbenv import MARKER_FILE
from embedkv.storage.requests import Put

from .harness import Member


def _filled(path: Path) -> None:
    m = Member(path)
    m.propose(Put("k", "v"))
    m.close()


def test_a_new_dir_is_marked(tmp_path: Path) -> None:
    DataDir.open(tmp_path).close()
    assert (tmp_path / MARKER_FILE).exists()
    DataDir.open(tmp_path).close()  # and reopens


@pytest.mark.parametrize("damage", ["missing", "empty", "fresh lmdb"])
def test_lost_data_file_is_refused(tmp_path: Path, damage: str) -> None:
    _filled(tmp_path)
    data = tmp_path / "data.mdb"
    data.unlink()
    if damage == "empty":
        data.write_bytes(b"")
    elif damage == "fresh lmdb":
        lmdb.open(str(tmp_path), max_dbs=16).close()  # a valid, blank LMDB environment
    with pytest.raises(CorruptData, match=r"data\.mdb .*(missing|empty|no embedkv data)"):
        DataDir.open(tmp_path)
    if damage != "missing":
        assert data.exists()  # nothing replaced what is left


def test_a_dir_from_before_the_marker_gets_it(tmp_path: Path) -> None:
    """Dirs made before format 4 have no marker: the first open adds it."""
    _filled(tmp_path)
    (tmp_path / MARKER_FILE).unlink()
    with DataDir.open(tmp_path) as dd:
        assert dd.kv.get("k") is not None
    assert (tmp_path / MARKER_FILE).exists()
    (tmp_path / "data.mdb").unlink()
    with pytest.raises(CorruptData, match="missing"):
        DataDir.open(tmp_path)


def test_store_refuses_a_lost_data_file(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with embedkv.open(path) as s:
        s.put("k", 1)
    os.unlink(path / "data.mdb")
    with pytest.raises(CorruptData, match=r"data\.mdb is missing"):
        embedkv.open(path)
    assert not (path / "data.mdb").exists()
