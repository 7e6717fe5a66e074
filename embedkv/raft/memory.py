"""An in-memory Storage: what tests and the simulator persist to.

It behaves like a durable log: what was appended survives a simulated crash as long as the
test keeps the MemoryStorage object and drops only the RaftNode.
"""

from __future__ import annotations

from collections.abc import Iterable

from .types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)


class MemoryStorage:
    """Storage protocol implementation backed by a list; entries[0] is a dummy at the snapshot."""

    def __init__(self, conf_state: ConfState | None = None) -> None:
        self._hard_state = HardState()
        # The configuration as of the applied index (what a restart starts from); the
        # snapshot keeps its own, as of its index, because it is what a leader sends.
        self._conf_state = conf_state or ConfState()
        self._snapshot = Snapshot(SnapshotMeta(0, 0, self._conf_state))
        # _ents[0] stands for the snapshot point: its index and term, no data.
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # -- the read side the core uses -------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is beyond last index {self.last_index()}")
        if max_size is None:
            return self._ents[lo - offset : hi - offset]
        # Walk only as far as the size allows: copying the whole range first would make
        # catching up a far-behind follower quadratic.
        ents = self._ents
        out: list[Entry] = []
        size = 0
        for i in range(lo - offset, hi - offset):
            entry = ents[i]
            size += entry.size()
            if out and size > max_size:
                break
            out.append(entry)
        return out

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (first index {offset + 1})")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"index {index} is beyond last index {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- the write side the runtime (or test) uses -----------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def set_conf_state(self, conf_state: ConfState) -> None:
        """Record the configuration as of the applied index (what a restart starts from)."""
        self._conf_state = conf_state

    def append(self, entries: Iterable[Entry]) -> None:
        """Append entries, replacing a conflicting suffix; ignores those below first_index."""
        ents = list(entries)
        if not ents:
            return
        first = self.first_index()
        if ents[-1].index < first:
            return
        if ents[0].index < first:
            ents = ents[first - ents[0].index :]
        offset = ents[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise ValueError(
                f"missing log entry: last index {self.last_index()}, appending at {ents[0].index}"
            )
        del self._ents[offset:]
        self._ents.extend(ents)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot (a follower installing a leader's snapshot)."""
        if snapshot.meta.index <= self._snapshot.meta.index:
            raise ValueError("snapshot is out of date")
        self._snapshot = snapshot
        self._conf_state = snapshot.meta.conf_state
        self._ents = [Entry(term=snapshot.meta.term, index=snapshot.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a state-machine image taken at applied index `index`."""
        if index <= self._snapshot.meta.index:
            raise ValueError("snapshot is out of date")
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is beyond last index")
        term = self.term(index)
        self._snapshot = Snapshot(SnapshotMeta(index, term, conf_state), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Discard entries up to and including `index` (which must already be in a snapshot)."""
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(f"index {index} is already compacted")
        if index > self.last_index():
            raise UnavailableError(f"compact index {index} is beyond last index")
        keep = self._ents[index - offset :]
        self._ents = [Entry(term=keep[0].term, index=keep[0].index), *keep[1:]]
