"""Compaction in bounded steps (issue 13): a Compaction records the compact revision at once and
the physical work it leaves; ``WriteBatch.compact_step`` does that work a bounded piece at a
time. The history it ends with is the one compacting in one go (the old code, oneshot.py)
gives, less what no read can reach; reads never see the difference; the work survives a close,
a crash, map growth, backups and snapshots."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from embedkv.errors import Compacted, CorruptData
from embedkv.raft.types import Snapshot
from embedkv.storage import Applied, DataDir, Identity, backup, lmdbenv
from embedkv.storage.codec import COMPACTION_WORK, KIND_PUT, REV, unpack_change, unseal
from embedkv.storage.lmdbenv import COMPACTING, Env
from embedkv.storage.mvcc import Tables
from embedkv.storage.requests import (
    Compaction,
    CompactResult,
    Delete,
    Get,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Request,
    Txn,
    Version,
)
from embedkv.storage.verify import check

from .harness import Member
from .oneshot import compact_at_once

EVERYTHING = Get(b"\x00", end=b"\x00")
TABLES = (b"kv", b"graves", b"history", b"leases", b"lease_keys")
KEYS: tuple[str | bytes, ...] = (*(f"k{i}" for i in range(12)), *(b"b%d" % i for i in range(6)),
                                 "k1x", "k1y")


# --- what a data dir holds ---------------------------------------------------------------------


def _tables(dd: DataDir) -> dict[bytes, dict[bytes, bytes]]:
    env = dd._env
    with env.read() as txn:
        return {name: dict(txn.cursor(db=env.dbs[name])) for name in TABLES}


def _history_count(dd: DataDir) -> int:
    return len(_tables(dd)[b"history"])


def _visible(history: dict[bytes, bytes], compact: int) -> tuple[set[bytes], dict[bytes, Any]]:
    """(every history position, the changes a compaction to `compact` keeps): all at or above
    it, and below it each key's latest change at or below it when that is a put. Chain
    pointers to changes not kept are shown as None (what they pointed at is gone)."""
    changes = {pos: unpack_change(unseal("history", pos, raw)) for pos, raw in history.items()}
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for pos in sorted(changes):
        by_key[changes[pos][1]].append(pos)
    keep: set[bytes] = set()
    for positions in by_key.values():
        at_or_below = [p for p in positions if REV.unpack(p)[0] <= compact]
        keep.update(p for p in positions if REV.unpack(p)[0] >= compact)
        if at_or_below:
            last = at_or_below[-1]
            if changes[last][0] == KIND_PUT:
                keep.add(last)
    shown = {}
    for pos in keep:
        kind, kb, prev_rev, prev_sub, record = changes[pos]
        prev = REV.pack(prev_rev, prev_sub)
        shown[pos] = (kind, kb, record, prev if prev in keep else None)
    return set(changes), shown


def _reads(dd: DataDir, revisions: list[int]) -> tuple[object, ...]:
    kv = dd.kv
    start = max(1, kv.compact_revision)
    return (
        kv.revision,
        kv.compact_revision,
        [kv.range(Get(b"\x00", end=b"\x00", revision=r)) for r in revisions],
        list(kv.events(start, b"\x00", end=b"\x00")),
        [list(kv.events(start, key)) for key in ("k1", b"b2", "k5")],
        kv.leases(),
    )


def _outcomes(applied: list[Applied]) -> list[object]:
    """What applying entries gave, errors as (type, message): exceptions do not compare."""
    return [((type(a.result), str(a.result)) if isinstance(a.result, Exception) else a.result,
             a.events) for a in applied]


# --- random histories --------------------------------------------------------------------------


def _writes(rng: random.Random, compact: int) -> list[Request]:
    out: list[Request] = []
    for _ in range(rng.randrange(1, 6)):
        roll = rng.random()
        key = rng.choice(KEYS)
        if roll < 0.5:
            out.append(Put(key, rng.randrange(1000), lease=rng.choice((None, None, None, 7, 8))))
        elif roll < 0.6:
            out.append(Delete(key))
        elif roll < 0.65:
            out.append(Delete("k1", prefix=True) if rng.random() < 0.5 else Delete("k2", end="k5"))
        elif roll < 0.85:
            other = rng.choice([k for k in KEYS if k != key and type(k) is type(key)])
            out.append(Txn((Version(key) == 0,), (Put(key, "new"), Delete(other)),
                           (Delete(key), Get(other, revision=compact))))
        elif roll < 0.92:
            out.append(LeaseGrant(rng.choice((7, 8)), 60))
        else:
            out.append(LeaseRevoke(rng.choice((7, 8))))
    return out


class _OneShot:
    """The reference: the same requests, each Compaction done in one go by the old code."""

    def __init__(self, path: Path) -> None:
        self.m = Member(path, step=None)

    def run(self, batch: list[Request]) -> list[object]:
        results: list[object] = []
        pending: list[Request] = []
        for request in [*batch, None]:
            if request is None or isinstance(request, Compaction):
                if pending:
                    results += _outcomes(self.m.propose_many(pending))
                    pending = []
                if request is not None:
                    self._compact(request.revision)
                    results.append(None)
            else:
                pending.append(request)
        return results

    def _compact(self, rev: int) -> None:
        self.m.dd.close()
        env = Env(self.m.path, durable=False)
        try:
            with env.env.begin(write=True) as txn:
                compact_at_once(txn, Tables(env), rev)
        finally:
            env.close()
        self.m.dd = DataDir.open(self.m.path, durable=False)


@pytest.mark.parametrize("seed", range(8))
def test_steps_end_where_one_go_does(tmp_path: Path, seed: int) -> None:
    """Random histories (puts, deletes, ranges, txns, leases, several compactions, some
    arriving while work is pending), with steps of random sizes interleaved with new writes
    and reopens: reads match compacting at once throughout, and once the work is done the
    history is the old one-shot compaction's, less the changes no read can reach."""
    rng = random.Random(seed)
    steps = Member(tmp_path / "steps", step=None)  # compacted in random steps
    at_once = Member(tmp_path / "at-once", step=1 << 30)  # the new code, done in its batch
    old = _OneShot(tmp_path / "old")  # the old code
    pending_seen = 0
    for n in range(250):
        kv = steps.dd.kv
        batch = _writes(rng, kv.compact_revision)
        if kv.revision > kv.compact_revision + 1 and rng.random() < 0.12:
            batch.insert(rng.randrange(len(batch) + 1),
                         Compaction(rng.randrange(kv.compact_revision + 1, kv.revision + 1)))
        step = rng.choice((None, None, 1, 3, 10, 50))
        got = _outcomes(steps.propose_many(batch, step=step))
        want = _outcomes(at_once.propose_many(batch))
        assert got == want
        assert [r for r in old.run(batch) if r is not None] == [
            r for r, q in zip(want, batch, strict=True) if not isinstance(q, Compaction)]
        assert not at_once.dd.compaction_pending
        pending_seen += steps.dd.compaction_pending
        if rng.random() < 0.2:
            with steps.dd.write() as w:
                w.compact_step(rng.choice((1, 4, 30)))
        if rng.random() < 0.04:
            steps.reopen()
        if n % 25 == 24:
            kv = steps.dd.kv
            revisions = sorted({kv.compact_revision, kv.revision,
                                *(rng.randrange(max(1, kv.compact_revision), kv.revision + 1)
                                  for _ in range(3))})
            assert _reads(steps.dd, revisions) == _reads(at_once.dd, revisions) \
                == _reads(old.m.dd, revisions)
            if kv.compact_revision > 1:
                with pytest.raises(Compacted):
                    kv.range(Get("k1", revision=kv.compact_revision - 1))
    assert pending_seen > 20  # the steps did lag behind the compactions
    steps.finish_compaction(step=7)
    compact = steps.dd.kv.compact_revision
    assert compact > 1 and old.m.dd.kv.compact_revision == compact
    ours, want_tables = _tables(steps.dd), _tables(at_once.dd)
    olds = _tables(old.m.dd)
    for name in (b"kv", b"graves", b"leases", b"lease_keys"):
        assert ours[name] == want_tables[name] == olds[name], name
    positions, shown = _visible(ours[b"history"], compact)
    assert positions == set(shown)  # nothing left that the compaction drops
    assert _visible(want_tables[b"history"], compact) == (positions, shown)
    old_positions, old_shown = _visible(olds[b"history"], compact)
    assert old_shown == shown and old_positions >= positions
    assert steps.dd.verify().ok
    for m in (steps, at_once, old.m):
        m.close()


# --- the pieces ----------------------------------------------------------------------------------


def _filled(path: Path, step: int | None = None) -> Member:
    """A hot key with many versions, keys deleted for good, keys deleted and put again."""
    m = Member(path, step=step)
    m.propose_many([Put("hot", i) for i in range(300)])
    m.propose_many([Put(f"k{i}", i) for i in range(20)])
    m.propose_many([Delete(f"k{i}") for i in range(0, 20, 2)])
    m.propose_many([Put(f"k{i}", -i) for i in range(0, 20, 4)])
    m.propose_many([Put("hot", i) for i in range(100)])
    return m


def test_reads_below_the_compact_revision_fail_before_any_step(tmp_path: Path) -> None:
    m = _filled(tmp_path)
    before = _history_count(m.dd)
    rev = m.dd.kv.revision - 50
    assert m.propose(Compaction(rev)) == CompactResult(m.dd.kv.revision)
    for _ in range(2):  # and after a reopen, the work still not done
        kv = m.dd.kv
        assert m.dd.compaction_pending and _history_count(m.dd) == before
        assert kv.compact_revision == rev
        with pytest.raises(Compacted):
            kv.range(Get("hot", revision=rev - 1))
        with pytest.raises(Compacted):
            kv.events(rev - 1, "hot")
        with pytest.raises(Compacted):
            kv.events(rev - 1, b"\x00", end=b"\x00")
        assert isinstance(m.propose(Txn((), (Get("hot", revision=rev - 1),))), Compacted)
        assert isinstance(m.propose(Compaction(rev)), Compacted)
        assert kv.range(Get("hot", revision=rev)).kvs[0].value == 49
        assert [e.revision for e in kv.events(rev, "hot")] == list(range(rev, kv.revision + 1))
        assert m.dd.verify().ok
        m.reopen()
    assert m.finish_compaction() > 0
    assert _history_count(m.dd) < before - 300
    m.close()


def test_each_step_is_bounded(tmp_path: Path) -> None:
    """A step visits at most max_keys changes (dropping at most two each), whatever the
    length of a key's chain: the work of a compaction to T is one visit per change between
    the previous compact revision and T, spread over that many / max_keys batches."""
    m = _filled(tmp_path)
    kv = m.dd.kv
    target = kv.revision - 10
    window = sum(1 for pos in _tables(m.dd)[b"history"] if REV.unpack(pos)[0] <= target)
    m.propose(Compaction(target))
    batches = 0
    while m.dd.compaction_pending:
        count = _history_count(m.dd)
        with m.dd.write() as w:
            more = w.compact_step(9)
        assert 0 <= count - _history_count(m.dd) <= 2 * 9
        assert more == m.dd.compaction_pending
        batches += 1
    assert batches == -(-window // 9)
    with m.dd.write() as w:
        assert w.compact_step(9) is False  # nothing left: a no-op
    with m.dd.write() as w, pytest.raises(ValueError, match="max_keys"):
        w.compact_step(0)
    m.close()


def test_close_in_the_middle_continues(tmp_path: Path) -> None:
    """Work half done survives a reopen and ends as if done at once."""
    a, b = _filled(tmp_path / "a"), _filled(tmp_path / "b")
    for m in (a, b):
        m.propose(Compaction(m.dd.kv.revision - 30))
    b.finish_compaction(step=1 << 30)
    for _ in range(5):
        with a.dd.write() as w:
            assert w.compact_step(20)
    a.reopen()
    assert a.dd.compaction_pending
    a.propose_many([Put("hot", "after"), Delete("k1")])  # new writes, then the rest of it
    b.propose_many([Put("hot", "after"), Delete("k1")])
    a.finish_compaction(step=13)
    assert _tables(a.dd) == _tables(b.dd)
    a.close()
    b.close()


def test_compactions_while_work_is_pending(tmp_path: Path) -> None:
    """A second and third compaction arriving mid-way take the work over: the end is the
    same as compacting to each in turn, at once. The second lands on a revision that deleted
    keys for good and arrives when the work is part way through that revision's changes:
    its tombstones, kept for that target, go for the next one."""
    a, b = _filled(tmp_path / "a"), _filled(tmp_path / "b", step=1 << 30)
    for m in (a, b):
        res = m.propose(Delete("k1", prefix=True))
        m.propose_many([Put("hot", "again"), Put("z", 1)])
    deleted_at = res.revision  # type: ignore[union-attr]
    a.propose(Compaction(100))
    with a.dd.write() as w:
        w.compact_step(40)
    b.propose(Compaction(100))
    a.propose(Compaction(deleted_at))
    b.propose(Compaction(deleted_at))
    while (work := a.dd._compaction_work) is not None and work[1:3] <= (deleted_at, 2):
        with a.dd.write() as w:
            w.compact_step(1)
    assert work is not None and work.rev == deleted_at  # inside that revision's changes
    a.propose(Compaction(a.dd.kv.revision - 1))
    b.propose(Compaction(b.dd.kv.revision - 1))
    a.finish_compaction(step=3)
    assert _tables(a.dd) == _tables(b.dd)
    a.close()
    b.close()


def test_step_replays_after_map_growth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose puts outgrow the map runs its steps again in the grown map, with the
    same outcome as a batch that did not need to grow."""
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE", 1 << 20)
    small = _filled(tmp_path / "small")
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE", 64 << 20)
    big = _filled(tmp_path / "big")
    map_size = small.dd._env.env.info()["map_size"]
    for m in (small, big):
        m.propose(Compaction(m.dd.kv.revision - 5), step=None)
        m.propose_many([Put(f"big{i}", "x" * 20_000) for i in range(80)], first_step=100)
    assert small.dd._env.env.info()["map_size"] > map_size  # grown in the batch
    assert small.dd.compaction_pending and _tables(small.dd) == _tables(big.dd)
    small.finish_compaction()
    big.finish_compaction()
    assert _tables(small.dd) == _tables(big.dd)
    small.close()
    big.close()


def test_backup_and_snapshot_in_the_middle(tmp_path: Path) -> None:
    """A backup or snapshot taken with work pending carries it: the restored or installed
    dir refuses the same reads, finishes the work, and ends as the source does."""
    src = _filled(tmp_path / "src")
    src.propose(Compaction(src.dd.kv.revision - 40))
    with src.dd.write() as w:
        w.compact_step(25)
    revisions = [src.dd.kv.compact_revision, src.dd.kv.revision - 3]
    want = _reads(src.dd, revisions)
    info = backup.write_backup(src.dd, tmp_path / "backup")
    assert info.compact_revision == src.dd.kv.compact_revision
    meta, chunks = src.dd.snapshot_stream(chunk_size=999)
    stream = b"".join(chunks)
    src.finish_compaction()
    done = _tables(src.dd)

    backup.restore_backup(tmp_path / "backup", tmp_path / "restored", Identity(5, 1))
    restored = DataDir.open(tmp_path / "restored")
    assert restored.compaction_pending and _reads(restored, revisions) == want
    assert restored.verify().ok
    installed = _filled(tmp_path / "installed")  # with its own pending work, to be replaced
    installed.propose(Compaction(10))
    with installed.dd.write() as w:
        w.install_snapshot(Snapshot(meta, stream))
    assert installed.dd.compaction_pending and _reads(installed.dd, revisions) == want
    installed.reopen()
    assert installed.dd.compaction_pending
    for dd in (restored, installed.dd):
        while dd.compaction_pending:
            with dd.write() as w:
                w.compact_step(11)
        assert _tables(dd) == done
    restored.close()
    installed.close()
    assert check(tmp_path / "restored").ok

    # A stream with no work pending replaces pending work too.
    clean_meta, clean = src.dd.snapshot_stream()
    target = _filled(tmp_path / "target")
    target.propose(Compaction(10))
    with target.dd.write() as w:
        w.install_snapshot(Snapshot(clean_meta, b"".join(clean)))
    assert not target.dd.compaction_pending
    target.reopen()
    assert not target.dd.compaction_pending and _tables(target.dd) == done
    target.close()
    src.close()


def test_verify_checks_the_work_record(tmp_path: Path) -> None:
    """Pending work is healthy; a work record that does not fit the compact revision is
    damage, which verify reports and open refuses."""
    m = _filled(tmp_path)
    m.propose(Compaction(50))
    assert m.dd.verify().ok
    m.close()
    assert check(tmp_path).ok
    env = Env(str(tmp_path), durable=False)
    try:
        with env.env.begin(write=True) as txn:
            txn.put(COMPACTING, COMPACTION_WORK.pack(0, 0, 0, 49), db=env.dbs[b""])
    finally:
        env.close()
    report = check(tmp_path)
    assert not report.ok and "b'compacting'" in report.problems[0], report
    with pytest.raises(CorruptData, match="compaction work"):
        DataDir.open(tmp_path)


def test_defrag_finishes_pending_work(tmp_path: Path) -> None:
    """A store closed with compaction work pending: defrag does the work, then copies."""
    a, b = _filled(tmp_path / "a"), _filled(tmp_path / "b")
    for m in (a, b):
        m.propose(Compaction(m.dd.kv.revision - 5))
    b.finish_compaction()
    a.close()
    backup.defrag(tmp_path / "a")
    a = Member(tmp_path / "a")
    assert not a.dd.compaction_pending and _tables(a.dd) == _tables(b.dd)
    a.close()
    b.close()
