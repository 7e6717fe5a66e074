"""dd.log against the reference MemoryStorage: append with conflicting suffixes, compaction,
terms, entries under a size cap; committed, aborted and uncommitted batches; reopen."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from embedkv.raft.memory import MemoryStorage
from embedkv.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    SnapshotMeta,
    UnavailableError,
)
from embedkv.storage import DataDir, raftlog


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (CompactedError, UnavailableError) as exc:
        return type(exc)


@pytest.fixture
def small_tail(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep only a few entries in memory so reads below the tail go to LMDB."""
    monkeypatch.setattr(raftlog, "TAIL_ENTRIES", 4)
    yield


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="embedkv-log-")
        self.dd = DataDir.open(self.tmp, durable=False)
        self.ref = MemoryStorage()
        self.applied = 0

    def teardown(self) -> None:
        self.dd.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _entries(self, start: int, count: int, term: int) -> list[Entry]:
        return [Entry(term, start + i, EntryType.NORMAL, bytes([i % 256]) * (i % 7))
                for i in range(count)]

    @rule(data=st.data(), count=st.integers(1, 9), bump=st.integers(0, 2))
    def append(self, data: st.DataObject, count: int, bump: int) -> None:
        last = self.ref.last_index()
        start = data.draw(st.integers(max(1, self.ref.first_index() - 2), last + 1))
        # Terms never decrease along a log: the new entries take at least the term before them.
        term = (self.ref.term(start - 1) if start - 1 >= self.ref.first_index() - 1 else 1) + bump
        entries = self._entries(start, count, max(term, 1))
        if start <= self.applied:  # Raft never rewrites applied entries
            entries = [e for e in entries if e.index > self.applied]
            if not entries:
                return
        self.ref.append(entries)
        with self.dd.write() as w:
            w.append_entries(entries)

    @rule(data=st.data())
    def apply_and_compact(self, data: st.DataObject) -> None:
        last = self.ref.last_index()
        first = self.ref.first_index()
        if last < first:
            return
        index = data.draw(st.integers(first, last))
        with self.dd.write() as w:
            for e in self.dd.log.entries(self.applied + 1, max(index, self.applied) + 1):
                w.apply(Entry(e.term, e.index))  # no request: only the applied index moves
            w.compact_log(index)
        self.applied = max(self.applied, index)
        self.ref.compact(index)

    @rule(data=st.data(), count=st.integers(1, 9), bump=st.integers(0, 2),
          keep=st.integers(0, 4))
    def append_apply_compact_in_one_batch(
        self, data: st.DataObject, count: int, bump: int, keep: int
    ) -> None:
        """What a member alone in its configuration does: the entries it appends are applied
        and compacted away in the same batch (keep > 0: the newest few stay in the log)."""
        last = self.ref.last_index()
        start = data.draw(st.integers(max(self.applied + 1, self.ref.first_index()), last + 1))
        term = (self.ref.term(start - 1) if start - 1 >= self.ref.first_index() - 1 else 1) + bump
        entries = self._entries(start, count, max(term, 1))
        self.ref.append(entries)
        index = max(self.applied, entries[-1].index - keep)
        with self.dd.write() as w:
            w.append_entries(entries)
            for e in self.dd.log.entries(self.applied + 1, index + 1):
                w.apply(Entry(e.term, e.index))
            w.compact_log(index)
        self.applied = index
        if index >= self.ref.first_index():
            self.ref.compact(index)

    @rule(count=st.integers(1, 5))
    def aborted_batch(self, count: int) -> None:
        start = self.ref.last_index() + 1
        with pytest.raises(RuntimeError), self.dd.write() as w:
            w.append_entries(self._entries(start, count, 99))
            assert self.dd.log.last_index() == start + count - 1  # seen before commit
            raise RuntimeError("abort")

    @rule(term=st.integers(0, 5), vote=st.integers(0, 3), commit=st.integers(0, 50))
    def hard_state(self, term: int, vote: int, commit: int) -> None:
        hs = HardState(term, vote, commit)
        with self.dd.write() as w:
            w.set_hard_state(hs)
        self.ref.set_hard_state(hs)

    @rule()
    def reopen(self) -> None:
        self.dd.close()
        self.dd = DataDir.open(self.tmp, durable=False)

    @rule(data=st.data())
    def read_entries(self, data: st.DataObject) -> None:
        first, last = self.ref.first_index(), self.ref.last_index()
        lo = data.draw(st.integers(max(0, first - 2), last + 2))
        hi = data.draw(st.integers(lo, last + 3))
        cap = data.draw(st.one_of(st.none(), st.integers(0, 80)))
        want = _outcome(lambda: self.ref.entries(lo, hi, cap))
        got = _outcome(lambda: self.dd.log.entries(lo, hi, cap))
        assert got == want, (lo, hi, cap)

    @invariant()
    def same_shape(self) -> None:
        log = self.dd.log
        assert log.first_index() == self.ref.first_index()
        assert log.last_index() == self.ref.last_index()
        for i in range(log.first_index() - 2, log.last_index() + 2):
            assert _outcome(partial(log.term, i)) == _outcome(partial(self.ref.term, i))
        assert log.initial_state()[0] == self.ref.initial_state()[0]

    @invariant()
    def lmdb_holds_exactly_the_log(self) -> None:
        env = self.dd._env
        with env.read() as txn:
            keys = [int.from_bytes(k, "big") for k, _ in txn.cursor(db=env.dbs[b"raft_log"])]
        assert keys == list(range(self.ref.first_index(), self.ref.last_index() + 1))


LogMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.usefixtures("small_tail")
class TestLogSmallTail(LogMachine.TestCase):  # type: ignore[misc,valid-type]
    pass


class TestLog(LogMachine.TestCase):  # type: ignore[misc,valid-type]
    pass


def test_uncommitted_entries_are_visible_and_rolled_back(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    with dd.write() as w:
        w.append_entries([Entry(1, i) for i in range(1, 4)])
    with pytest.raises(KeyError), dd.write() as w:
        w.append_entries([Entry(2, 3), Entry(2, 4)])
        assert dd.log.term(3) == 2
        assert dd.log.entries(1, 5) == [Entry(1, 1), Entry(1, 2), Entry(2, 3), Entry(2, 4)]
        raise KeyError("abort")
    assert dd.log.last_index() == 3
    assert dd.log.term(3) == 1
    dd.close()


def test_long_log_reads_below_the_tail(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    n = raftlog.TAIL_ENTRIES * 3
    entries = [Entry(1 + i // 1000, i + 1, data=b"x" * (i % 50)) for i in range(n)]
    with dd.write() as w:
        w.append_entries(entries)
    assert dd.log.entries(1, n + 1) == entries
    dd.close()
    dd = DataDir.open(tmp_path)
    assert dd.log.entries(1, n + 1) == entries
    assert dd.log.entries(5, n + 1, max_size=10) == [entries[4]]  # at least one entry
    assert [dd.log.term(i) for i in (1, n)] == [1, entries[-1].term]
    dd.close()


def test_snapshot_meta_and_conf_state(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    cs = ConfState(frozenset({1, 2}), frozenset({3}))
    with dd.write() as w:
        w.append_entries([Entry(1, 1), Entry(2, 2, EntryType.CONF_CHANGE, b"cc")])
        w.apply(Entry(1, 1))
        w.apply_conf_change(2, cs)
    snap = dd.log.snapshot()
    assert snap.meta == SnapshotMeta(2, 2, cs)
    assert dd.conf_state == cs
    with pytest.raises(ValueError, match="restore the snapshot"), dd.write() as w:
        w.install_snapshot_meta(SnapshotMeta(9, 3, cs))
    with dd.write() as w:
        w.install_snapshot_meta(SnapshotMeta(2, 2, cs))
    assert (dd.log.first_index(), dd.log.last_index(), dd.log.term(2)) == (3, 2, 2)
    dd.close()
    dd = DataDir.open(tmp_path)
    assert dd.log.initial_state()[1] == cs
    assert (dd.log.first_index(), dd.log.last_index(), dd.applied_index) == (3, 2, 2)
    dd.close()


def test_apply_out_of_order_is_refused(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    with pytest.raises(ValueError, match="out of order"), dd.write() as w:
        w.apply(Entry(1, 2))
    assert dd.applied_index == 0
    dd.close()


def test_compact_beyond_applied_is_refused(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    with dd.write() as w:
        w.append_entries([Entry(1, 1), Entry(1, 2)])
    with pytest.raises(ValueError, match="cannot compact"), dd.write() as w:
        w.compact_log(1)
    dd.close()
