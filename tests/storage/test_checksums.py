"""Per-record checksums (format 4): damage is never returned as data, verify() finds it, and
format 2 and 3 dirs are upgraded in place."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lmdb
import pytest

import embedkv
from embedkv.errors import CorruptData
from embedkv.storage import DataDir
from embedkv.storage.codec import SUMMED_TABLES, U32
from embedkv.storage.lmdbenv import FORMAT_VERSION
from embedkv.storage.requests import Delete, Get, LeaseGrant, Put

from .harness import Member


def _value(i: int) -> dict[str, Any]:
    return {"i": i, "text": f"value-{i:05d}-" + "abcdefgh" * (i % 7 + 2)}


def _fill(path: Path, n: int = 120) -> Member:
    m = Member(path)
    m.propose(LeaseGrant(7, 600))
    for i in range(n):
        m.propose(Put(f"key/{i:04d}", _value(i), lease=7 if i % 10 == 0 else None))
    for i in range(0, n, 3):
        m.propose(Put(f"key/{i:04d}", _value(i + 10_000)))
    m.propose(Delete("key/0001"))
    return m


def _everything(dd: DataDir) -> Any:
    """Every read the key space offers: current values, a past revision, history, leases."""
    now = dd.kv.range(Get("key/", prefix=True))
    past = dd.kv.range(Get("key/", prefix=True, revision=dd.kv.revision - 50))
    events = [(e.type, e.kv.key, e.kv.value) for e in dd.kv.events(2, "key/", b"key0")]
    return now.kvs, past.kvs, events, dd.kv.leases(), dd.kv.lease(7)


def _downgrade(path: Path, fmt: int) -> None:
    """Make a format-4 dir what format `fmt` (2 or 3) left: values without checksums, and
    for 2, the log's compaction point in raft_state."""
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        for table in SUMMED_TABLES:
            db = env.open_db(table.encode(), txn=txn)
            for key, value in list(txn.cursor(db=db)):
                txn.put(key, value[:-4], db=db)
        if fmt == 2:
            start = txn.pop(b"log_start")
            if start is not None:
                txn.put(b"log_start", start, db=env.open_db(b"raft_state", txn=txn))
        txn.put(b"format", U32.pack(fmt), db=env.open_db(b"meta", txn=txn))
    env.close()


@pytest.mark.parametrize("fmt", [2, 3])
def test_older_formats_are_upgraded_in_place(tmp_path: Path, fmt: int) -> None:
    m = _fill(tmp_path)
    expected = _everything(m.dd)
    first_last = (m.dd.log.first_index(), m.dd.log.last_index())
    m.close()
    _downgrade(tmp_path, fmt)
    with DataDir.open(tmp_path) as dd:
        assert _everything(dd) == expected
        assert (dd.log.first_index(), dd.log.last_index()) == first_last
        assert dd.verify().ok
    env = lmdb.open(str(tmp_path), max_dbs=16, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"format", db=env.open_db(b"meta", txn=txn)) == U32.pack(FORMAT_VERSION)
    env.close()
    report = embedkv.check(tmp_path)
    assert report.ok and report.format == FORMAT_VERSION and report.records["kv"] == 119


def test_damage_names_table_and_key(tmp_path: Path) -> None:
    m = _fill(tmp_path, 10)
    m.close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(write=True) as txn:
        kv = env.open_db(b"kv", txn=txn)
        raw = bytearray(txn.get(b"key/0004", db=kv) or b"")
        raw[-10] ^= 0x01  # inside the value's CBOR: it still decodes, to something else
        txn.put(b"key/0004", bytes(raw), db=kv)
    env.close()
    with DataDir.open(tmp_path) as dd:
        with pytest.raises(CorruptData, match=r"the kv record of key b'key/0004' fails its"):
            dd.kv.get("key/0004")
        with pytest.raises(CorruptData, match="key/0004"):
            dd.kv.range(Get("key/", prefix=True))
        assert dd.kv.get("key/0005") is not None
        report = dd.verify()
    assert not report.ok
    assert len(report.problems) == 1 and "kv record b'key/0004'" in report.problems[0]


def _flip_inside_values(data: bytearray, rnd: random.Random, flips: int) -> list[int]:
    """Flip bytes inside stored values (found by their text), never in LMDB's own structures:
    returns the i of each value hit."""
    hit = []
    for _ in range(flips):
        i = rnd.randrange(120)
        needle = f"value-{i:05d}-".encode()
        spots = [p for p in range(len(data)) if data.startswith(needle, p)]
        if not spots:
            continue
        pos = rnd.choice(spots) + rnd.randrange(len(needle) + 16)
        data[pos] ^= rnd.randrange(1, 256)
        hit.append(i)
    return hit


@pytest.mark.parametrize("seed", range(40))
def test_random_corruption_is_never_returned(tmp_path: Path, seed: int) -> None:
    """Flip bytes inside values of a closed data dir: every read returns the original value
    or raises CorruptData, and verify() reports the damage."""
    m = _fill(tmp_path)
    originals = {f"key/{i:04d}": m.dd.kv.get(f"key/{i:04d}") for i in range(120)}
    history = {(e.kv.key, e.kv.mod_revision): e.kv.value for e in m.dd.kv.events(2, "key/",
                                                                                 b"key0")}
    m.close()
    rnd = random.Random(seed)
    path = tmp_path / "data.mdb"
    data = bytearray(path.read_bytes())
    hit = _flip_inside_values(data, rnd, rnd.randrange(1, 6))
    assert hit
    path.write_bytes(bytes(data))
    damaged = 0
    live: tuple[str, ...] | None = None
    try:
        dd = DataDir.open(tmp_path)
    except CorruptData as exc:  # the flip hit the Raft log's tail, which open reads
        assert "raft_log record" in str(exc)
        damaged = 1
    else:
        with dd:
            damaged = _read_all(dd, originals, history)
            live = dd.verify().problems
    # A flip may land in a stale copy on a free page, which nothing reads: then there is no
    # damage to find. Otherwise the reads (open reads the whole Raft log here, the reads
    # cover kv and all of history) and the check both find it.
    report = embedkv.check(tmp_path)
    assert (damaged > 0) == (not report.ok)
    assert live is None or live == report.problems


def _read_all(dd: DataDir, originals: dict[str, Any], history: dict[Any, Any]) -> int:
    """Read every key, all of history and past revisions: each read gives the original or
    raises CorruptData; returns how many reads raised."""
    damaged = 0
    for key, kv in originals.items():
        try:
            assert dd.kv.get(key) == kv
        except CorruptData:
            damaged += 1
    try:
        for e in dd.kv.events(2, "key/", b"key0"):
            assert history[(e.kv.key, e.kv.mod_revision)] == e.kv.value
    except CorruptData:
        damaged += 1
    for rev in range(2, dd.kv.revision + 1, 17):
        try:
            for kv in dd.kv.range(Get("key/", prefix=True, revision=rev)).kvs:
                assert history[(kv.key, kv.mod_revision)] == kv.value
        except CorruptData:
            damaged += 1
    return damaged


def test_store_verify_and_check(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with embedkv.open(path) as s:
        for i in range(50):
            s.put(f"k{i}", {"i": i})
        report = s.verify()
        assert report.ok and report.records["kv"] == 50 and report.pages > 0
        with pytest.raises(embedkv.DataDirLocked):
            embedkv.check(path)  # a Store has it open
    assert embedkv.check(path).ok
    with pytest.raises(FileNotFoundError):
        embedkv.check(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


async def _async_verify(path: Path) -> embedkv.VerifyReport:
    async with await embedkv.open_async(path) as s:
        await s.put("k", 1)
        return await s.verify()


def test_async_store_verify(tmp_path: Path) -> None:
    import asyncio

    report = asyncio.run(_async_verify(tmp_path / "d"))
    assert report.ok and report.records["kv"] == 1


def test_verify_reports_a_damaged_btree_without_crashing(tmp_path: Path) -> None:
    m = _fill(tmp_path)
    m.close()
    path = tmp_path / "data.mdb"
    size = os.path.getsize(path)
    data = bytearray(path.read_bytes())
    for page in range(2, size // 4096):  # scribble over every page header but the metas'
        data[page * 4096 + 10 : page * 4096 + 16] = b"\xff" * 6
    path.write_bytes(bytes(data))
    report = embedkv.check(tmp_path)
    assert not report.ok and "B-tree" in report.problems[0]
