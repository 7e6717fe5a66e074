"""The Raft log and hard state in LMDB, implementing ``embedkv.raft.Storage``.

The core reads the log from its own thread while the log writer may have a write transaction
open. The shape of the log (first and last index, the term at the compaction point) and a tail
of recent entries live in an immutable ``LogView`` that a write batch replaces at once, so the
core sees entries appended in a batch that has not committed yet, and an aborted batch puts the
old view back. Older entries are read from LMDB, where they are committed.

Entries appended in a batch reach LMDB only when the batch commits (``flush``): a batch that
also compacts the log past them (a member with nobody to replicate to,
docs/internals/storage.md) never writes them, and the commit then leaves the ``raft_log``
B-tree untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import lmdb

from embedkv.errors import CorruptData
from embedkv.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)

from .codec import (
    LOG_ENTRY,
    U64,
    U64X2,
    decode_conf_state,
    decode_entry,
    decode_hard_state,
    encode_hard_state,
    seal,
    unpack_exact,
    unseal,
)
from .lmdbenv import LOG_START, STATE_DB, Env

TAIL_ENTRIES: Final = 1024
"""Recent entries kept in memory once committed (an open batch may hold more)."""

HARD_STATE: Final = b"hard_state"
"""STATE_DB key of the Raft hard state (term, vote, commit)."""
CONF_STATE: Final = b"conf_state"


@dataclass(frozen=True, slots=True)
class LogView:
    """The log's shape, and its last entries, as the core should see it right now."""

    start: int
    """Index of the compaction point; first_index() is start + 1."""
    start_term: int
    last: int
    tail: tuple[Entry, ...]
    """Entries (tail_first .. last), contiguous; may be empty."""
    hard_state: HardState

    @property
    def tail_first(self) -> int:
        return self.last - len(self.tail) + 1


class RaftLog:
    """``dd.log``: what the Raft core reads. Written only through a DataDir write batch."""

    def __init__(self, env: Env, view: LogView, applied: int, conf_state: ConfState) -> None:
        self._env = env
        self._log_db = env.dbs[b"raft_log"]
        self._state_db = env.dbs[STATE_DB]
        self.view = view
        self._unwritten: list[Entry] = []
        """Entries of the open batch not yet in LMDB (ascending, all in view.tail)."""
        self.applied = applied
        self.conf_state = conf_state

    @classmethod
    def load(cls, env: Env, applied: int) -> RaftLog:
        """Read the log's shape and tail from a freshly opened environment."""
        with env.read() as txn:
            state_db = env.dbs[STATE_DB]
            raw = txn.get(HARD_STATE, db=state_db)
            hard_state = HardState() if raw is None else decode_hard_state(raw)
            raw = txn.get(LOG_START, db=state_db)
            start, start_term = (0, 0) if raw is None else unpack_exact(U64X2, raw, "log start")
            raw = txn.get(CONF_STATE, db=env.dbs[b"raft_state"])
            conf_state = ConfState() if raw is None else decode_conf_state(raw)
            cursor = txn.cursor(db=env.dbs[b"raft_log"])
            last = start
            tail: list[Entry] = []
            if cursor.last():
                (last,) = unpack_exact(U64, cursor.key(), "raft log key")
                if last <= start:
                    raise CorruptData(f"raft log ends at {last}, before its start {start}")
                for key, value in cursor.iterprev():
                    (index,) = unpack_exact(U64, key, "raft log key")
                    if index <= start or len(tail) >= TAIL_ENTRIES:
                        break
                    if index != last - len(tail):
                        raise CorruptData(f"raft log is missing entry {last - len(tail)}")
                    tail.append(decode_entry(index, unseal("raft_log", key, value)))
                tail.reverse()
                if tail[0].index != start + 1 and len(tail) < TAIL_ENTRIES:
                    raise CorruptData(f"raft log is missing entry {start + 1}")
        view = LogView(start, start_term, last, tuple(tail), hard_state)
        return cls(env, view, applied, conf_state)

    # --- embedkv.raft.Storage ---------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.view.hard_state, self.conf_state

    def first_index(self) -> int:
        return self.view.start + 1

    def last_index(self) -> int:
        return self.view.last

    def term(self, index: int) -> int:
        view = self.view
        if index < view.start:
            raise CompactedError(f"index {index} is compacted (first index {view.start + 1})")
        if index > view.last:
            raise UnavailableError(f"index {index} is beyond last index {view.last}")
        if index == view.start:
            return view.start_term
        tail_first = view.tail_first
        if index >= tail_first:
            return view.tail[index - tail_first].term
        key = U64.pack(index)
        with self._env.read() as txn:
            raw = txn.get(key, db=self._log_db)
        if raw is not None:
            raw = unseal("raft_log", key, raw)
        if raw is None or len(raw) < LOG_ENTRY.size:
            raise CorruptData(f"raft log entry {index} is missing or truncated")
        term: int = LOG_ENTRY.unpack_from(raw)[0]
        return term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        view = self.view
        if lo <= view.start:
            raise CompactedError(f"index {lo} is compacted (first index {view.start + 1})")
        if hi > view.last + 1:
            raise UnavailableError(f"index {hi - 1} is beyond last index {view.last}")
        out: list[Entry] = []
        size = 0
        tail_first = view.tail_first
        if lo < tail_first:
            stop = min(hi, tail_first)
            with self._env.read() as txn:
                cursor = txn.cursor(db=self._log_db)
                if not cursor.set_key(U64.pack(lo)):
                    raise CorruptData(f"raft log entry {lo} is missing")
                for key, value in cursor:
                    (index,) = unpack_exact(U64, key, "raft log key")
                    if index >= stop:
                        break
                    if index != lo + len(out):
                        raise CorruptData(f"raft log is missing entry {lo + len(out)}")
                    entry = decode_entry(index, unseal("raft_log", key, value))
                    size += entry.size()
                    if out and max_size is not None and size > max_size:
                        return out
                    out.append(entry)
            if len(out) != stop - lo:
                raise CorruptData(f"raft log is missing entries before {stop}")
            lo = stop
        for entry in view.tail[lo - tail_first : hi - tail_first]:
            size += entry.size()
            if out and max_size is not None and size > max_size:
                break
            out.append(entry)
        return out

    def snapshot(self) -> Snapshot:
        """The snapshot point the state machine is at: the applied index (data is streamed)."""
        applied = self.applied
        return Snapshot(SnapshotMeta(applied, self.term(applied), self.conf_state))

    # --- the write side, called by a write batch with its transaction ----------------------

    def append(self, txn: lmdb.Transaction[bytes], entries: list[Entry]) -> None:
        """Append, replacing a conflicting suffix; entries at or below the start are ignored.
        The new entries reach LMDB at `flush` (unless compacted away before it)."""
        view = self.view
        indexes = [e.index for e in entries]
        if not indexes:
            return
        ents = entries
        if min(indexes) <= view.start:
            ents = [e for e in entries if e.index > view.start]
            if not ents:
                return
            indexes = [e.index for e in ents]
        first = indexes[0]
        if indexes != list(range(first, first + len(indexes))):
            raise ValueError("entries to append are not contiguous")
        if first > view.last + 1:
            raise ValueError(f"missing log entry: last index {view.last}, appending at {first}")
        unwritten = self._unwritten
        if first <= view.last:  # a conflicting suffix goes, from LMDB and from the batch
            stored_last = self._stored_last()
            if unwritten:
                del unwritten[max(0, first - unwritten[0].index) :]
            if first <= stored_last:
                cursor = txn.cursor(db=self._log_db)
                if cursor.set_range(U64.pack(first)):
                    while cursor.delete():
                        pass
        unwritten.extend(ents)
        tail_first = view.tail_first
        kept = view.tail[: first - tail_first] if first >= tail_first else ()
        tail = kept + tuple(ents)
        self.view = LogView(view.start, view.start_term, ents[-1].index, tail, view.hard_state)

    def flush(self, txn: lmdb.Transaction[bytes]) -> None:
        """Write the batch's appended entries that are still in the log (just before commit)."""
        unwritten = self._unwritten
        if not unwritten:
            return
        # One putmulti call (what encode_entry and seal do, inlined); the keys ascend past
        # every key in LMDB (append and compact removed any at or above them), so they append.
        pack = U64.pack
        head = LOG_ENTRY.pack
        txn.cursor(db=self._log_db).putmulti(
            [(key, seal(key, head(e.term, e.type) + e.data))
             for e in unwritten for key in (pack(e.index),)], append=True
        )
        unwritten.clear()

    def _stored_last(self) -> int:
        """The last index in LMDB: it holds (start, stored_last], the batch's unwritten
        entries follow."""
        unwritten = self._unwritten
        return unwritten[0].index - 1 if unwritten else self.view.last

    def discard_unwritten(self) -> None:
        """The batch was aborted: forget what it appended (its view is put back by the batch)."""
        self._unwritten.clear()

    def set_hard_state(self, txn: lmdb.Transaction[bytes], hard_state: HardState) -> None:
        txn.put(HARD_STATE, encode_hard_state(hard_state), db=self._state_db)
        view = self.view
        self.view = LogView(view.start, view.start_term, view.last, view.tail, hard_state)

    def compact(self, txn: lmdb.Transaction[bytes], index: int, applied: int) -> None:
        """Drop entries <= index (which must be applied); the term at `index` is kept."""
        view = self.view
        if index <= view.start:
            return
        if index > applied or index > view.last:
            raise ValueError(f"cannot compact to {index}: applied {applied}, last {view.last}")
        term = self.term(index)
        if self._stored_last() > view.start:  # earlier batches' entries are in LMDB
            cursor = txn.cursor(db=self._log_db)
            if cursor.first():
                stop = U64.pack(index)
                while cursor.key() <= stop:
                    if not cursor.delete():
                        break
        unwritten = self._unwritten
        if unwritten:
            del unwritten[: max(0, index + 1 - unwritten[0].index)]
        txn.put(LOG_START, U64X2.pack(index, term), db=self._state_db)
        tail_first = view.tail_first
        tail = view.tail[max(0, index + 1 - tail_first) :]
        self.view = LogView(index, term, view.last, tail, view.hard_state)

    def install(self, txn: lmdb.Transaction[bytes], index: int, term: int) -> None:
        """Replace the whole log by a snapshot point."""
        txn.drop(self._log_db, delete=False)
        self._unwritten.clear()
        txn.put(LOG_START, U64X2.pack(index, term), db=self._state_db)
        self.view = LogView(index, term, index, (), self.view.hard_state)

    def trim_tail(self) -> None:
        """After a commit, keep only the newest TAIL_ENTRIES in memory."""
        view = self.view
        if len(view.tail) > TAIL_ENTRIES:
            self.view = LogView(view.start, view.start_term, view.last,
                               view.tail[-TAIL_ENTRIES:], view.hard_state)
