"""Offline defragmentation: LMDB's compacting copy swapped in atomically. It shrinks a file that
compaction left mostly free, reads back exactly as before, and a SIGKILL at any step leaves a
data dir that opens with all its data."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedkv.errors import CorruptData, DataDirLocked
from embedkv.storage import DataDir, backup, lmdbenv
from embedkv.storage.datadir import DEFRAG_TEMP
from embedkv.storage.requests import Compaction, Delete, Get, LeaseGrant, Put

from .harness import Member

ROOT = Path(__file__).resolve().parents[2]
EVERYTHING = Get(b"\x00", end=b"\x00")
STEPS = ("locked", "copied", "verified", "renamed", "synced")


def _fill(path: Path, overwrites: int) -> None:
    """Many overwrites of one key (then compacted away), and keys, history, leases that stay."""
    m = Member(path)
    try:
        m.propose(LeaseGrant(5, 60))
        for i in range(200):
            m.propose(Put(f"k{i % 30:02d}", {"i": i}, lease=5 if i % 9 == 0 else None))
            if i % 40 == 39:
                m.propose(Delete(f"k{i % 4}", prefix=True))
        for i in range(overwrites):
            m.propose(Put("hot", i))
        m.propose(Compaction(m.dd.kv.revision - 100))
        m.finish_compaction()
        with m.dd.write() as w:  # as a member alone in its configuration does
            w.compact_log(m.dd.applied_index)
    finally:
        m.close()


def _reads(path: Path) -> tuple[object, ...]:
    with DataDir.open(path) as dd:
        kv = dd.kv
        return (
            kv.revision,
            kv.compact_revision,
            dd.applied_index,
            dd.identity,
            dd.conf_state,
            kv.range(EVERYTHING),
            [kv.range(Get(b"\x00", end=b"\x00", revision=r))
             for r in range(kv.compact_revision, kv.revision + 1)],
            kv.leases(),
            kv.lease(5),
            list(kv.events(kv.compact_revision, b"\x00", end=b"\x00")),
        )


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[object, ...]]:
    path = tmp_path_factory.mktemp("filled") / "data"
    _fill(path, 20_000)
    return path, _reads(path)


def _copy_of(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("data.mdb", "lock.mdb", "embedkv.lock"):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_defrag_shrinks_and_reads_back_the_same(
    tmp_path: Path, filled: tuple[Path, tuple[object, ...]]
) -> None:
    path = _copy_of(filled[0], tmp_path / "data")
    size = os.path.getsize(path / "data.mdb")
    result = backup.defrag(path)
    assert result.size_before == size and result.size_after == os.path.getsize(path / "data.mdb")
    assert size > 1 << 20 and result.size_after < size // 10, result
    assert _reads(path) == filled[1]
    assert sorted(os.listdir(path)) == ["data.mdb", "embedkv.datadir", "embedkv.lock", "lock.mdb"]
    m = Member(path)  # and it keeps working
    try:
        m.propose(Put("after", 1))
        assert m.dd.kv.get("after") is not None
    finally:
        m.close()


def test_defrag_refuses_an_open_dir_and_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "data"
    _fill(path, 10)
    before = (path / "data.mdb").read_bytes()
    with DataDir.open(path), pytest.raises(DataDirLocked):
        backup.defrag(path)
    assert (path / "data.mdb").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no embedkv data dir"):
        backup.defrag(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_defrag_refuses_an_unfinished_restore(tmp_path: Path) -> None:
    path = tmp_path / "data"
    _fill(path, 10)
    with DataDir.open(path) as dd, dd._env.env.begin(write=True) as txn:
        txn.put(lmdbenv.RESTORING, b"1", db=dd._env.dbs[b"meta"])
    with pytest.raises(CorruptData, match="incomplete snapshot restore"):
        backup.defrag(path)
    assert not (path / DEFRAG_TEMP).exists()


def test_a_leftover_copy_is_removed_by_open_and_by_defrag(tmp_path: Path) -> None:
    path = tmp_path / "data"
    _fill(path, 10)
    expected = _reads(path)
    (path / DEFRAG_TEMP).write_bytes(b"half a copy" * 1000)  # what a kill mid-copy leaves
    assert _reads(path) == expected
    assert not (path / DEFRAG_TEMP).exists()
    (path / DEFRAG_TEMP).write_bytes(b"half a copy" * 1000)
    backup.defrag(path)
    assert not (path / DEFRAG_TEMP).exists()
    assert _reads(path) == expected


def _run_child(path: Path, step: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("defrag_child.py")), str(path), step],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_after_each_step(tmp_path: Path, filled: tuple[Path, tuple[object, ...]],
                                 step: str) -> None:
    path = _copy_of(filled[0], tmp_path / "data")
    child = _run_child(path, step)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, out
    assert _reads(path) == filled[1]
    assert not (path / DEFRAG_TEMP).exists()
    backup.defrag(path)  # and a later defrag completes
    assert _reads(path) == filled[1]


def test_sigkill_at_random_moments(tmp_path: Path,
                                   filled: tuple[Path, tuple[object, ...]]) -> None:
    """Kills at moments spread over a whole run (measured first), each on a fresh copy of the
    fragmented dir, so that some land inside LMDB's copy itself."""
    rng = random.Random(15)
    child = _run_child(_copy_of(filled[0], tmp_path / "timed"), "none")
    assert child.stdout is not None
    assert child.stdout.readline() == "go\n"
    start = time.monotonic()
    child.communicate(timeout=120)
    assert child.returncode == 0
    whole_run = time.monotonic() - start
    outcomes = []
    for i in range(8):
        path = _copy_of(filled[0], tmp_path / f"data{i}")
        child = _run_child(path, "none")
        assert child.stdout is not None
        assert child.stdout.readline() == "go\n"
        try:
            child.wait(timeout=rng.uniform(0, whole_run))  # a kill moment, not a synchronisation
        except subprocess.TimeoutExpired:
            child.kill()
        child.communicate()
        outcomes.append(child.returncode)
        assert _reads(path) == filled[1]
        assert not (path / DEFRAG_TEMP).exists()
    assert set(outcomes) <= {0, -signal.SIGKILL}
