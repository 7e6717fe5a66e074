"""The Raft log: what Storage holds durably plus the unstable tail the app has yet to persist.

Modelled on etcd raft's log.go and log_unstable.go. Indices are 1-based; index 0 (term 0) is
the empty log's sentinel. The core appends only to the unstable tail; an entry becomes stable
when the app persists a Ready that carried it and calls ``advance`` (``stable_to``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import CompactedError, Entry, Snapshot, Storage, UnavailableError, entries_size


def limit_size(entries: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of `entries` within `max_size` bytes, but always at least one entry."""
    if max_size is None or len(entries) <= 1 or entries_size(entries) <= max_size:
        return entries
    size = 0
    for i, entry in enumerate(entries):
        size += entry.size()
        if size > max_size and i > 0:
            return entries[:i]
    return entries


class Unstable:
    """Entries (and possibly a snapshot) received but not yet persisted by the app.

    ``offset`` is the index of ``entries[0]``; entries before it are in Storage. Everything
    from ``offset_in_progress`` on has not yet been handed out in a Ready; the part before it
    was handed out and awaits ``advance``.
    """

    __slots__ = ("entries", "offset", "offset_in_progress", "snapshot", "snapshot_in_progress")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.snapshot_in_progress = False
        self.entries: list[Entry] = []
        self.offset = offset
        self.offset_in_progress = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            snap = self.snapshot
            if snap is not None and snap.meta.index == index:
                return snap.meta.term
            return None
        pos = index - self.offset
        if pos >= len(self.entries):
            return None
        return self.entries[pos].term

    def has_next_entries(self) -> bool:
        return self.offset_in_progress < self.offset + len(self.entries)

    def next_entries(self) -> list[Entry]:
        """Entries not yet handed out in a Ready."""
        start = self.offset_in_progress - self.offset
        if start >= len(self.entries):
            return []
        return self.entries[start:]

    def next_snapshot(self) -> Snapshot | None:
        """The snapshot, unless it was already handed out in a Ready."""
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        """Everything unstable has now been handed out in a Ready."""
        if self.entries:
            self.offset_in_progress = self.entries[-1].index + 1
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) were persisted; forget them unless since replaced."""
        if index < self.offset:
            return
        current = self.maybe_term(index)
        if current is None or current != term:
            # The entry was overwritten after that Ready was produced: the newer one is
            # still pending and will be stabilized by a later advance.
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1
        self.offset_in_progress = max(self.offset_in_progress, self.offset)

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.meta.index + 1
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = snapshot
        self.snapshot_in_progress = False

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        """Append, first dropping any of our entries at or after entries[0].index."""
        first = entries[0].index
        end = self.offset + len(self.entries)
        if first == end:
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replace everything unstable; also supersedes stable entries from `first` on.
            self.entries = list(entries)
            self.offset = first
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(entries)
        self.offset_in_progress = min(self.offset_in_progress, first)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi); the caller guarantees offset <= lo <= hi <= last + 1."""
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """The log as the core sees it: Storage's stable entries followed by the unstable tail.

    Also tracks ``committed`` (known committed), ``applying`` (handed to the app in a Ready)
    and ``applied`` (the app reported applying via advance), with
    applied <= applying <= committed.
    """

    __slots__ = ("applied", "applying", "committed", "storage", "unstable")

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applying = first - 1
        self.applied = first - 1

    # -- bounds and terms ------------------------------------------------------------------

    def first_index(self) -> int:
        index = self.unstable.maybe_first_index()
        if index is not None:
            return index
        return self.storage.first_index()

    def last_index(self) -> int:
        index = self.unstable.maybe_last_index()
        if index is not None:
            return index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """Term of the entry at `index`; index first_index()-1 (the snapshot point) is valid.

        Raises CompactedError below that and UnavailableError past the last index.
        """
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        first = self.first_index()
        if index < first - 1:
            raise CompactedError(f"index {index} is compacted (first index {first})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is past the last index {self.last_index()}")
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        """Term at `index`, or 0 when it is compacted or not in the log."""
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (last_index, term) is at least as up to date as ours (§5.4.1)."""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    def persisted_index(self) -> int:
        """The last index the app persisted that still belongs to this log.

        0 while a snapshot is pending: until it is installed nothing stored is known to match.
        """
        if self.unstable.snapshot is not None:
            return 0
        return self.unstable.offset - 1

    # -- appending ---------------------------------------------------------------------------

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours; 0 if all match."""
        last = self.last_index()
        for entry in entries:
            if entry.index > last or not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (i, t) with i <= index and t <= term in our log (etcd findConflictByTerm).

        An unknown term (compacted) stops the search there with term 0: it might match.
        """
        while index > 0:
            try:
                our_term = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    def maybe_append(
        self, prev_index: int, prev_term: int, committed: int, entries: Sequence[Entry]
    ) -> int | None:
        """Apply a leader's append if our log matches at prev; the new last index, or None."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(
                    f"entry {conflict} conflicts with committed entry (committed {self.committed})"
                )
            self.append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, entries: Sequence[Entry]) -> int:
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        if after < self.committed:
            raise AssertionError(f"append after {after} is below committed {self.committed}")
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    # -- reading -------------------------------------------------------------------------------

    def entries(self, lo: int, max_size: int | None) -> list[Entry]:
        """Entries from `lo` to the end, within `max_size` bytes (at least one)."""
        last = self.last_index()
        if lo > last:
            return []
        return self.slice(lo, last + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        """Entries [lo, hi) from Storage and/or unstable; raises CompactedError below first."""
        first = self.first_index()
        if lo < first:
            raise CompactedError(f"index {lo} is compacted (first index {first})")
        if hi > self.last_index() + 1:
            raise AssertionError(f"slice [{lo}, {hi}) out of bound (last {self.last_index()})")
        if lo >= hi:
            return []
        offset = self.unstable.offset
        if lo >= offset:
            return self._unstable_slice(lo, hi, max_size)
        cut = min(hi, offset)
        ents = self.storage.entries(lo, cut, max_size)
        if hi <= offset or len(ents) < cut - lo:
            return ents
        size = entries_size(ents) if max_size is not None else 0
        if max_size is not None and size >= max_size:
            return ents
        rest = self._unstable_slice(offset, hi, None if max_size is None else max_size - size)
        if max_size is not None and len(rest) == 1 and size + rest[0].size() > max_size:
            return ents
        ents.extend(rest)
        return ents

    def _unstable_slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        # The unstable tail is short (what the app has not persisted yet): copying the range
        # and then cutting it is cheaper than walking it entry by entry.
        return limit_size(self.unstable.slice(lo, hi), max_size)

    def snapshot(self) -> Snapshot:
        """The most recent snapshot: a pending one, else Storage's (may raise Unavailable)."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- commit and apply ------------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(
                    f"commit {index} is out of range (last index {self.last_index()})"
                )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to `index` if the entry there is of `term` (only current-term, §5.4.2)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def has_next_or_in_progress_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def has_next_committed_entries(self) -> bool:
        if self.unstable.snapshot is not None:
            # The app must install the snapshot before applying anything after it.
            return False
        return self.committed > self.applying

    def next_committed_entries(self, max_size: int | None) -> list[Entry]:
        if not self.has_next_committed_entries():
            return []
        lo = max(self.applying + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_size)

    def accept_applying(self, index: int) -> None:
        self.applying = max(self.applying, index)

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise AssertionError(f"applied {index} is past committed {self.committed}")
        if index > self.applied:
            self.applied = index
        if index > self.applying:
            self.applying = index

    # -- persistence acknowledgements ---------------------------------------------------------

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot (InstallSnapshot, §7)."""
        self.committed = snapshot.meta.index
        self.unstable.restore(snapshot)
