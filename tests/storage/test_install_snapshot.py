"""WriteBatch.install_snapshot: a leader's snapshot stream replaces a follower's whole state
machine, its directory, applied index, conf state and log inside one write transaction; a
damaged or mismatched stream changes nothing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from embedkv.errors import CorruptData
from embedkv.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from embedkv.storage import DataDir, Identity, LocalInfo, PeerInfo, lmdbenv
from embedkv.storage.requests import Compaction, Delete, Get, LeaseGrant, Put

from .harness import Member
from .test_snapshot import _reads as snapshot_reads

EVERYTHING = Get(b"\x00", end=b"\x00")
SOURCE_MEMBERS = {1: PeerInfo("n1", "127.0.0.1:7001"), 2: PeerInfo("n2", "127.0.0.1:7002"),
                  3: PeerInfo("n3", "127.0.0.1:7003", promote=True)}
SOURCE_CONF = ConfState(frozenset({1, 2}), frozenset({3}))


def _source(path: Path, n: int = 200, blob: int = 0) -> Member:
    """A leader-like data dir with history, a compaction, leases and a directory (term 3)."""
    m = Member(path)
    m.dd.bootstrap(Identity(7, 1), SOURCE_CONF, members=SOURCE_MEMBERS,
                   local=LocalInfo("n1", "127.0.0.1:7001", "t"))
    m.term = 3
    m.propose(LeaseGrant(5, 60))
    m.propose(LeaseGrant(6, 90))
    for i in range(n):
        value = {"i": i, "blob": random.Random(i).randbytes(blob or i % 50)}
        m.propose(Put(f"k{i % 30:02d}", value, lease=5 if i % 7 == 0 else None))
        if i % 40 == 39:
            m.propose(Delete(f"k{i % 10}", prefix=True))
    m.propose(Compaction(60))
    return m


def _target(path: Path) -> Member:
    """A follower with other data: other keys, a lease, history, a log longer than the
    source's, its own directory."""
    m = Member(path)
    m.dd.bootstrap(Identity(7, 2), ConfState(frozenset({1, 2})),
                   members={1: PeerInfo("old1", "x:1"), 2: PeerInfo("old2", "x:2")},
                   local=LocalInfo("n2", "127.0.0.1:7002", "t"))
    m.propose(LeaseGrant(9, 30))
    for i in range(400):
        m.propose(Put(f"other{i % 50}", i, lease=9 if i % 3 == 0 else None))
    m.propose(Compaction(10))
    return m


def _reads(dd: DataDir) -> tuple[object, ...]:
    """test_snapshot's reads at this file's revisions, and what an install adds to them."""
    kv = dd.kv
    return (*snapshot_reads(dd, (60, 120, kv.revision)), kv.lease(6), kv.lease(9),
            dd.applied_index, dd.members())


def _raw_tables(dd: DataDir) -> dict[bytes, list[tuple[bytes, bytes]]]:
    env = dd._env
    with env.read() as txn:
        return {t: list(txn.cursor(db=env.dbs[t]))
                for t in (b"kv", b"graves", b"history", b"leases", b"lease_keys")}


def _snapshot(dd: DataDir, chunk_size: int = 1 << 20) -> Snapshot:
    meta, chunks = dd.snapshot_stream(chunk_size)
    return Snapshot(meta, b"".join(chunks))


def _pair(tmp_path: Path, n: int) -> tuple[Member, Snapshot, Member]:
    """A source with `n` puts, its snapshot, and a follower with other data."""
    src = _source(tmp_path / "src", n=n)
    return src, _snapshot(src.dd), _target(tmp_path / "dst")


def test_install_replaces_everything(tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    snap = _snapshot(src.dd, chunk_size=1000)
    assert snap.meta == SnapshotMeta(src.dd.applied_index, 3, SOURCE_CONF)
    dst = _target(tmp_path / "dst")
    assert dst.dd.log.last_index() > snap.meta.index  # a longer log, to be replaced
    kv = dst.dd.kv
    with dst.dd.write() as w:
        w.install_snapshot(snap)
    expected = _reads(src.dd)
    assert _reads(dst.dd) == expected
    assert _raw_tables(dst.dd) == _raw_tables(src.dd)
    assert dst.dd.kv is kv  # the Store holds it
    assert kv.revision == src.dd.kv.revision and kv.compact_revision == 60
    log = dst.dd.log
    assert (log.first_index(), log.last_index()) == (snap.meta.index + 1, snap.meta.index)
    assert log.term(snap.meta.index) == 3
    assert log.snapshot().meta == snap.meta
    assert dst.dd.identity == Identity(7, 2)  # not replicated: stays the follower's
    assert dst.dd.local == LocalInfo("n2", "127.0.0.1:7002", "t")
    assert dst.dd.verify().ok
    # It can serve the same snapshot on (a new leader): byte for byte the source's stream.
    assert _snapshot(dst.dd) == snap
    dst.reopen()
    assert _reads(dst.dd) == expected
    log = dst.dd.log
    assert (log.first_index(), log.last_index()) == (snap.meta.index + 1, snap.meta.index)
    assert log.term(snap.meta.index) == 3
    # The follower goes on from the snapshot point.
    with dst.dd.write() as w:
        w.append_entries([Entry(3, snap.meta.index + 1, data=b"")])
        w.set_hard_state(HardState(3, 1, snap.meta.index + 1))
        w.apply(Entry(3, snap.meta.index + 1, data=b""))
    dst.term = 3
    dst.propose(Put("after", 1))
    assert dst.dd.kv.get("after").mod_revision == src.dd.kv.revision + 1  # type: ignore[union-attr]
    src.close()
    dst.close()


def test_install_with_entries_after_it_in_the_same_batch(tmp_path: Path) -> None:
    src, snap, dst = _pair(tmp_path, 20)
    i = snap.meta.index
    with dst.dd.write() as w:
        w.install_snapshot(snap)
        w.append_entries([Entry(3, i + 1), Entry(4, i + 2)])
    assert (dst.dd.log.first_index(), dst.dd.log.last_index()) == (i + 1, i + 2)
    assert dst.dd.log.term(i + 2) == 4
    dst.reopen()
    assert (dst.dd.log.first_index(), dst.dd.log.last_index()) == (i + 1, i + 2)
    src.close()
    dst.close()


def _refused(dst: Member, snap: Snapshot, match: str | None) -> None:
    dd = dst.dd
    before = _reads(dd)
    raw = _raw_tables(dd)
    kept = (dd.kv.lease(9), dd.conf_state, dd.members(), dd.log.first_index())
    last = dd.log.last_index()
    kv = dd.kv
    with pytest.raises(CorruptData, match=match), dd.write() as w:
        w.install_snapshot(snap)
    assert _reads(dd) == before
    assert _raw_tables(dd) == raw
    assert (dd.log.first_index(), dd.log.last_index()) == (kept[-1], last)
    assert dd.kv is kv
    dst.propose(Put("still-writable", 1))  # the batch aborted cleanly
    dst.reopen()
    dd = dst.dd
    assert dd.kv.get("still-writable") is not None
    assert (dd.kv.lease(9), dd.conf_state, dd.members(), dd.log.first_index()) == kept


@pytest.mark.parametrize("where", [3, 10, 200, -40, -5, -1])
def test_a_damaged_stream_changes_nothing(tmp_path: Path, where: int) -> None:
    src, snap, dst = _pair(tmp_path, 60)
    damaged = bytearray(snap.data)
    damaged[where] ^= 0x20
    _refused(dst, Snapshot(snap.meta, bytes(damaged)), None)
    _refused(dst, Snapshot(snap.meta, snap.data[:-10]), "truncated")
    _refused(dst, Snapshot(snap.meta, snap.data + b"x"), "after its end")
    src.close()
    dst.close()


def test_a_stream_at_another_point_is_refused(tmp_path: Path) -> None:
    src, snap, dst = _pair(tmp_path, 30)
    meta = snap.meta
    for other in (
        SnapshotMeta(meta.index + 1, meta.term, meta.conf_state),
        SnapshotMeta(meta.index - 1, meta.term, meta.conf_state),
        SnapshotMeta(meta.index, meta.term + 1, meta.conf_state),
        SnapshotMeta(meta.index, meta.term, ConfState(frozenset({1, 2}))),
        SnapshotMeta(meta.index, meta.term, ConfState(frozenset({1, 2, 3}))),
    ):
        _refused(dst, Snapshot(other, snap.data), "refused")
    src.close()
    dst.close()


def test_an_install_bigger_than_the_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The install runs again in a grown map (MapFullError replay) and commits whole."""
    src = _source(tmp_path / "src", n=400, blob=20_000)
    snap = _snapshot(src.dd)
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE", 1 << 20)
    dst = _target(tmp_path / "dst")
    start = dst.dd._env.env.info()["map_size"]
    assert len(snap.data) > 2 * start
    with dst.dd.write() as w:
        w.set_hard_state(HardState(3, 0, snap.meta.index))
        w.install_snapshot(snap)
    assert dst.dd._env.env.info()["map_size"] > start
    assert _reads(dst.dd) == _reads(src.dd)
    assert _raw_tables(dst.dd) == _raw_tables(src.dd)
    dst.reopen()
    assert _reads(dst.dd) == _reads(src.dd)
    assert dst.dd.log.initial_state()[0] == HardState(3, 0, snap.meta.index)
    src.close()
    dst.close()


def test_a_stream_without_members_installs_an_empty_directory(tmp_path: Path) -> None:
    from .test_directory import _without_members

    src, snap, dst = _pair(tmp_path, 10)
    with dst.dd.write() as w:
        w.install_snapshot(Snapshot(snap.meta, _without_members(snap.data)))
    assert dst.dd.members() == {}
    assert dst.dd.kv.range(EVERYTHING) == src.dd.kv.range(EVERYTHING)
    dst.reopen()
    assert dst.dd.members() == {}
    src.close()
    dst.close()
