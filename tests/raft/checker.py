"""Raft safety invariants, checked incrementally while a simulation runs.

The checker never looks inside the core: it sees only what a runtime sees (roles and terms,
each Ready, what is persisted and applied, read states) plus the persisted storage. Every
check raises `Violation` the moment an invariant breaks, so the failing step is the one that
broke it.

What is checked (see docs/internals/simulation.md for the reasoning behind each):

* Election Safety: at most one leader per term, over the whole history.
* Log Matching: an (index, term) pair always names the same entry with the same predecessor
  term, on every node's persisted log (checked on every append, and by a full scan).
* Leader Completeness: a new leader's persisted log holds every entry known committed in an
  earlier term.
* State Machine Safety: every node applies the same entry at each index; snapshots agree too.
* Committed entries never disappear or change: a node's persisted log up to its durable commit
  index matches every other node's committed entries, and never gets truncated.
* Applied sequences are gap-free and exactly-once, across restarts.
* Durable hard state never regresses: term and commit never decrease, a vote never changes
  within a term; a live node's commit index never decreases.
* Membership: every node holds the same configuration after applying the same change, and a
  node's core runs the configuration its app has applied (at the same applied index).
* Linearizable reads: a read index covers every write applied anywhere before the request.
* Commitment, directly: when a leader's commit index advances, the entry there is of the
  leader's own term (§5.4.2, Figure 8) and is persisted on a majority of the voters of the
  leader's configuration.
* Votes: a vote is granted only to a candidate whose log is at least as up to date as the
  voter's persisted log (§5.4.1).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from embedkv.raft import (
    NONE,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
)

EntryRecord = tuple[int, int, bytes]
"""What identifies an entry's content: (term, type, data)."""


def record_of(entry: Entry) -> EntryRecord:
    return (entry.term, int(entry.type), entry.data)


class Kind:
    """Names of the invariants (the `kind` of a Violation)."""

    ELECTION_SAFETY = "election-safety"
    LOG_MATCHING = "log-matching"
    LEADER_COMPLETENESS = "leader-completeness"
    LEADER_APPEND_ONLY = "leader-append-only"
    STATE_MACHINE_SAFETY = "state-machine-safety"
    COMMITTED_ENTRY_CHANGED = "committed-entry-changed"
    APPLY_ORDER = "apply-order"
    HARD_STATE_REGRESSION = "hard-state-regression"
    COMMIT_REGRESSION = "commit-regression"
    CONFIG_DIVERGENCE = "config-divergence"
    STALE_READ = "stale-read"
    LEADER_COMMIT_TERM = "leader-commit-term"
    COMMIT_WITHOUT_MAJORITY = "commit-without-majority"
    VOTE_NOT_UP_TO_DATE = "vote-not-up-to-date"
    ACK_BEFORE_PERSIST = "ack-before-persist"
    READY_CONTRACT = "ready-contract"
    LIVENESS = "liveness"
    CORE_EXCEPTION = "core-exception"


SAFETY_KINDS = frozenset(
    {
        Kind.ELECTION_SAFETY,
        Kind.LOG_MATCHING,
        Kind.LEADER_COMPLETENESS,
        Kind.LEADER_APPEND_ONLY,
        Kind.STATE_MACHINE_SAFETY,
        Kind.COMMITTED_ENTRY_CHANGED,
        Kind.APPLY_ORDER,
        Kind.HARD_STATE_REGRESSION,
        Kind.COMMIT_REGRESSION,
        Kind.CONFIG_DIVERGENCE,
        Kind.STALE_READ,
        Kind.ACK_BEFORE_PERSIST,
        Kind.LEADER_COMMIT_TERM,
        Kind.COMMIT_WITHOUT_MAJORITY,
        Kind.VOTE_NOT_UP_TO_DATE,
    }
)


class Violation(AssertionError):
    """An invariant broke; `kind` is one of `Kind`'s names."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CheckerOptions:
    """Switches for the self-tests, which prove a high-level check catches a planted bug."""

    hard_state_checks: bool = True
    config_checks: bool = True


@dataclass(slots=True)
class _NodeTrack:
    durable_hs: HardState = field(default_factory=HardState)
    # Persisted log entries up to this index were verified against the committed registry.
    verified_upto: int = 0
    # Per incarnation (reset on restart):
    live_commit: int = 0
    leader_term_at_last_ready: int = 0
    completeness_due: int = 0  # term of a fresh leadership whose log is not yet verified
    leader_commit: int = 0  # the commit index last seen while this node led ...
    leader_commit_term: int = 0  # ... in this term (this incarnation)


@dataclass(slots=True)
class _ReadRequest:
    node_id: int
    floor: int


class SafetyChecker:
    """Global history of the run and the invariant checks over it."""

    def __init__(self, options: CheckerOptions | None = None) -> None:
        self.options = options or CheckerOptions()
        self.leaders: dict[int, int] = {}  # term -> the node that led it
        self.committed: dict[int, EntryRecord] = {}  # index -> the entry known committed
        self.witness: dict[int, int] = {}  # index -> a term by which it was committed
        self.max_committed = 0
        self.max_applied = 0  # highest index applied by any node: the acknowledged writes
        # (index, term) -> (type, data, predecessor term or -1 if unknown)
        self.log_terms: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.conf_after: dict[int, ConfState] = {}  # conf-change index -> resulting config
        self.payload_index: dict[bytes, int] = {}  # client payload -> first index applied at
        self.reads: dict[tuple[int, bytes], _ReadRequest] = {}  # (member, context) -> request
        self.released_contexts: set[tuple[int, bytes]] = set()
        self.reads_released = 0
        self.vote_requests: dict[tuple[int, int], tuple[int, int]] = {}  # (cand, term) -> last
        self._tracks: dict[int, _NodeTrack] = {}

    def track(self, node_id: int) -> _NodeTrack:
        t = self._tracks.get(node_id)
        if t is None:
            t = self._tracks[node_id] = _NodeTrack()
        return t

    # -- lifecycle -------------------------------------------------------------------------

    def on_restart(self, node_id: int) -> None:
        t = self.track(node_id)
        t.live_commit = 0
        t.leader_term_at_last_ready = 0
        t.completeness_due = 0
        t.leader_commit = t.leader_commit_term = 0

    # -- roles -----------------------------------------------------------------------------

    def observe_role(self, node_id: int, role: Role, term: int) -> None:
        """Call after every call into a node's core."""
        if role is not Role.LEADER:
            return
        prev = self.leaders.get(term)
        if prev is None:
            self.leaders[term] = node_id
            self.track(node_id).completeness_due = term
        elif prev != node_id:
            raise Violation(
                Kind.ELECTION_SAFETY,
                f"nodes {prev} and {node_id} both became leader in term {term}",
            )

    def observe_leader_commit(
        self,
        node_id: int,
        term: int,
        commit: int,
        voters: frozenset[int],
        storage_of: Callable[[int], MemoryStorage | None],
    ) -> None:
        """A leader's commit index advanced: check the two rules that make it committed.

        The new commit index names an entry of the leader's own term (§5.4.2: counting
        replicas of an earlier term's entry is the Figure 8 bug), persisted on a majority of
        the voters of the configuration the leader counts with (its applied one).
        """
        t = self.track(node_id)
        if t.leader_commit_term != term:
            # Just elected: what it knew committed before, it did not commit as this leader.
            t.leader_commit_term, t.leader_commit = term, commit
            return
        if commit <= t.leader_commit:
            return
        t.leader_commit = commit
        own = storage_of(node_id)
        if own is not None and own.first_index() - 1 <= commit <= own.last_index():
            entry_term = own.term(commit)
            if entry_term != term:
                raise Violation(
                    Kind.LEADER_COMMIT_TERM,
                    f"leader {node_id} of term {term} advanced its commit index to {commit}, an "
                    f"entry of term {entry_term}",
                )
        if own is None or not voters:
            return
        holders = []
        entry_term = own.term(commit) if own.first_index() - 1 <= commit <= own.last_index() else 0
        for v in sorted(voters):
            st = storage_of(v)
            if st is not None and _holds(st, commit, entry_term):
                holders.append(v)
        if 2 * len(holders) <= len(voters):
            raise Violation(
                Kind.COMMIT_WITHOUT_MAJORITY,
                f"leader {node_id} of term {term} committed index {commit} (term {entry_term}), "
                f"but only {holders} of the voters {sorted(voters)} have persisted it",
            )

    def observe_commit(self, node_id: int, commit: int) -> None:
        """A live node's commit index (from its status) must never decrease."""
        t = self.track(node_id)
        if commit < t.live_commit:
            raise Violation(
                Kind.COMMIT_REGRESSION,
                f"node {node_id}'s commit index went from {t.live_commit} back to {commit}",
            )
        t.live_commit = commit

    # -- the committed registry -------------------------------------------------------------

    def _known_committed(
        self, index: int, rec: EntryRecord, witness: int, kind: str, who: str
    ) -> None:
        old = self.committed.get(index)
        if old is None:
            self.committed[index] = rec
            self.witness[index] = witness
            if index > self.max_committed:
                self.max_committed = index
        elif old != rec:
            raise Violation(
                kind,
                f"{who}: index {index} is {_fmt(rec)}, but {_fmt(old)} was already committed there",
            )
        elif witness < self.witness[index]:
            self.witness[index] = witness

    # -- persistence (in Ready order: snapshot, entries, hard state) ------------------------

    def on_snapshot(
        self,
        node_id: int,
        node_term: int,
        applied_before: int,
        snapshot: Snapshot,
        history: list[EntryRecord],
    ) -> None:
        meta = snapshot.meta
        if meta.index <= applied_before:
            raise Violation(
                Kind.READY_CONTRACT,
                f"node {node_id} was handed snapshot {meta.index}/{meta.term} to install, but it "
                f"has already applied up to {applied_before}",
            )
        if len(history) != meta.index or (history and history[-1][0] != meta.term):
            raise Violation(
                Kind.STATE_MACHINE_SAFETY,
                f"node {node_id}: snapshot {meta.index}/{meta.term} carries a state machine of "
                f"{len(history)} entries",
            )
        who = f"node {node_id} installing snapshot {meta.index}/{meta.term}"
        for i, rec in enumerate(history):
            self._known_committed(i + 1, rec, node_term, Kind.STATE_MACHINE_SAFETY, who)
        if meta.index > self.max_applied:
            self.max_applied = meta.index
        t = self.track(node_id)
        t.verified_upto = meta.index

    def before_append(
        self,
        node_id: int,
        storage: MemoryStorage,
        entries: list[Entry],
        role: Role,
        term: int,
    ) -> None:
        """Checks against the log as it was before the append."""
        first, last = storage.first_index(), storage.last_index()
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise Violation(
                    Kind.READY_CONTRACT,
                    f"node {node_id}: Ready entries are not contiguous ({a.index}, {b.index})",
                )
        t = self.track(node_id)
        start = entries[0].index
        if start > last + 1:
            raise Violation(
                Kind.READY_CONTRACT,
                f"node {node_id}: Ready appends at {start} but the persisted log ends at {last}",
            )
        if role is Role.LEADER and t.leader_term_at_last_ready == term and start <= last:
            raise Violation(
                Kind.LEADER_APPEND_ONLY,
                f"leader {node_id} (term {term}) rewrites its own log from index {start} "
                f"(last index {last})",
            )
        commit = t.durable_hs.commit
        if start <= commit:
            # Entries at or below the durable commit index may be re-sent but never changed.
            for e in entries:
                if e.index > commit or e.index > last:
                    break
                if e.index < first:
                    continue
                (old,) = storage.entries(e.index, e.index + 1)
                if record_of(old) != record_of(e):
                    raise Violation(
                        Kind.COMMITTED_ENTRY_CHANGED,
                        f"node {node_id} overwrites its committed entry at {e.index} "
                        f"(commit {commit}): {_fmt(record_of(old))} -> {_fmt(record_of(e))}",
                    )
        if start - 1 < t.verified_upto:
            t.verified_upto = start - 1

    def after_append(self, node_id: int, storage: MemoryStorage, entries: list[Entry]) -> None:
        """Log Matching, incrementally: (index, term) fixes the content and the previous term."""
        first = storage.first_index()
        prev_term = -1
        for e in entries:
            if e.index < first:
                continue
            if prev_term < 0:
                prev_term = storage.term(e.index - 1) if e.index - 1 >= first - 1 else -1
            self._log_entry(node_id, e.index, e.term, int(e.type), e.data, prev_term)
            prev_term = e.term

    def _log_entry(
        self, node_id: int, index: int, term: int, etype: int, data: bytes, prev_term: int
    ) -> None:
        key = (index, term)
        old = self.log_terms.get(key)
        if old is None:
            self.log_terms[key] = (etype, data, prev_term)
            return
        if old[0] != etype or old[1] != data:
            raise Violation(
                Kind.LOG_MATCHING,
                f"node {node_id} has a different entry at index {index} term {term}: "
                f"{_fmt((term, etype, data))} vs {_fmt((term, old[0], old[1]))}",
            )
        if prev_term >= 0 and old[2] >= 0 and old[2] != prev_term:
            raise Violation(
                Kind.LOG_MATCHING,
                f"node {node_id}: entry {index}/{term} follows term {prev_term} here but term "
                f"{old[2]} elsewhere",
            )
        if old[2] < 0 <= prev_term:
            self.log_terms[key] = (etype, data, prev_term)

    def on_hard_state(self, node_id: int, hs: HardState) -> None:
        t = self.track(node_id)
        old = t.durable_hs
        if self.options.hard_state_checks:
            if hs.term < old.term:
                raise Violation(
                    Kind.HARD_STATE_REGRESSION,
                    f"node {node_id} persists term {hs.term} after term {old.term}",
                )
            if hs.term == old.term and old.vote != NONE and hs.vote != old.vote:
                raise Violation(
                    Kind.HARD_STATE_REGRESSION,
                    f"node {node_id} changes its vote in term {hs.term} from {old.vote} to "
                    f"{hs.vote}",
                )
            if hs.commit < old.commit:
                raise Violation(
                    Kind.COMMIT_REGRESSION,
                    f"node {node_id} persists commit {hs.commit} after commit {old.commit}",
                )
        t.durable_hs = hs

    def after_persist(self, node_id: int, storage: MemoryStorage, role: Role, term: int) -> None:
        """Once a Ready's durable part is written: committed prefix and leader completeness."""
        t = self.track(node_id)
        hs, _ = storage.initial_state()
        first, last = storage.first_index(), storage.last_index()
        commit = hs.commit
        if commit > last:
            raise Violation(
                Kind.READY_CONTRACT,
                f"node {node_id} persisted commit index {commit} beyond its persisted log "
                f"(last index {last})",
            )
        lo = max(t.verified_upto + 1, first)
        if lo <= commit:
            who = f"node {node_id}'s log (commit {commit}, term {hs.term})"
            for e in storage.entries(lo, commit + 1):
                self._known_committed(
                    e.index, record_of(e), hs.term, Kind.COMMITTED_ENTRY_CHANGED, who
                )
        if commit > t.verified_upto:
            t.verified_upto = commit
        if role is Role.LEADER:
            if t.completeness_due == term:
                self.check_leader_completeness(node_id, storage, term)
            t.leader_term_at_last_ready = term
        else:
            t.leader_term_at_last_ready = 0
        t.completeness_due = 0

    def check_leader_completeness(self, node_id: int, storage: MemoryStorage, term: int) -> None:
        """The leader of `term` holds every entry committed in an earlier term."""
        first, last = storage.first_index(), storage.last_index()
        for index in range(first, self.max_committed + 1):
            rec = self.committed.get(index)
            if rec is None or self.witness[index] >= term:
                continue
            if index > last:
                raise Violation(
                    Kind.LEADER_COMPLETENESS,
                    f"node {node_id} leads term {term} but its log ends at {last}; entry "
                    f"{index} {_fmt(rec)} was committed by term {self.witness[index]}",
                )
            (e,) = storage.entries(index, index + 1)
            if record_of(e) != rec:
                raise Violation(
                    Kind.LEADER_COMPLETENESS,
                    f"node {node_id} leads term {term} with {_fmt(record_of(e))} at {index}, but "
                    f"{_fmt(rec)} was committed there by term {self.witness[index]}",
                )

    def on_send(self, node_id: int, storage: MemoryStorage, m: Message) -> None:
        """A message leaves only once what it promises is durable (the Ready contract).

        A promise made in a term older than the persisted one is covered: the node can never
        act in that term again, exactly as if it had persisted the promise and then moved on
        (several steps may be batched into one Ready).
        """
        if m.type == MessageType.VOTE:
            self.vote_requests.setdefault((node_id, m.term), (m.index, m.log_term))
            return
        if m.type not in (MessageType.APP_RESP, MessageType.VOTE_RESP) or m.reject:
            return
        if m.type == MessageType.VOTE_RESP:
            self._check_vote_up_to_date(node_id, storage, m)
        hs, _ = storage.initial_state()
        if hs.term > m.term:
            return
        if m.type == MessageType.APP_RESP:
            last = storage.last_index()
            if hs.term < m.term or m.index > last:
                raise Violation(
                    Kind.ACK_BEFORE_PERSIST,
                    f"node {node_id} acknowledges index {m.index} in term {m.term} to {m.to} "
                    f"but has persisted term {hs.term} and entries up to {last}",
                )
        elif hs.term < m.term or hs.vote != m.to:
            raise Violation(
                Kind.ACK_BEFORE_PERSIST,
                f"node {node_id} grants its term-{m.term} vote to {m.to} but has persisted "
                f"term {hs.term}, vote {hs.vote}",
            )

    def _check_vote_up_to_date(self, node_id: int, storage: MemoryStorage, m: Message) -> None:
        """§5.4.1: the vote went to a log at least as up to date as the voter's.

        The voter's log is its persisted log without entries of the vote's term or later:
        those can only have come since, from the leader of that term (the candidate).
        """
        cand = self.vote_requests.get((m.to, m.term))
        if cand is None:
            return
        first = storage.first_index()
        last = storage.last_index()
        while last >= first and storage.term(last) >= m.term:
            last -= 1
        last_term = storage.term(last)
        if last_term >= m.term:
            return  # only a snapshot is left: nothing to compare
        c_index, c_term = cand
        if c_term > last_term or (c_term == last_term and c_index >= last):
            return
        raise Violation(
            Kind.VOTE_NOT_UP_TO_DATE,
            f"node {node_id} grants its term-{m.term} vote to {m.to}, whose log ends at "
            f"{c_index}/{c_term}, but its own persisted log ends at {last}/{last_term}",
        )

    # -- apply -----------------------------------------------------------------------------

    def on_apply(self, node_id: int, node_term: int, applied_before: int, entry: Entry) -> None:
        if entry.index != applied_before + 1:
            what = "again" if entry.index <= applied_before else "after a gap"
            raise Violation(
                Kind.APPLY_ORDER,
                f"node {node_id} applies index {entry.index} {what} (applied {applied_before})",
            )
        rec = record_of(entry)
        self._known_committed(
            entry.index, rec, node_term, Kind.STATE_MACHINE_SAFETY, f"node {node_id} applies"
        )
        if entry.index > self.max_applied:
            self.max_applied = entry.index
        if entry.data and entry.type == 0:
            self.payload_index.setdefault(entry.data, entry.index)

    def on_conf_applied(self, node_id: int, index: int, conf_state: ConfState) -> None:
        if not self.options.config_checks:
            return
        old = self.conf_after.get(index)
        if old is None:
            self.conf_after[index] = conf_state
        elif old != conf_state:
            raise Violation(
                Kind.CONFIG_DIVERGENCE,
                f"after applying the conf change at {index}, node {node_id} has "
                f"{_fmt_conf(conf_state)} but another node had {_fmt_conf(old)}",
            )

    def check_core_config(
        self, node_id: int, applied: int, core_conf: ConfState, app_conf: ConfState
    ) -> None:
        """A quiet node (no Ready pending) runs the configuration its app applied."""
        if self.options.config_checks and core_conf != app_conf:
            raise Violation(
                Kind.CONFIG_DIVERGENCE,
                f"node {node_id} has applied up to {applied} with {_fmt_conf(app_conf)}, but "
                f"its core runs {_fmt_conf(core_conf)}",
            )

    # -- reads -----------------------------------------------------------------------------

    def on_read_requested(self, node_id: int, context: bytes) -> None:
        """`node_id` asks with `context` now: its answer must cover every write acknowledged
        (applied anywhere) so far."""
        self.reads[(node_id, context)] = _ReadRequest(node_id, self.max_applied)

    def on_read_released(self, node_id: int, rs: ReadState, applied: int) -> None:
        req = self.reads.get((node_id, rs.context))
        self.released_contexts.add((node_id, rs.context))
        if req is None:
            raise Violation(
                Kind.READY_CONTRACT,
                f"node {node_id} released a read state for context {rs.context!r} it never asked",
            )
        if rs.index < req.floor:
            raise Violation(
                Kind.STALE_READ,
                f"node {node_id}'s read {rs.context!r} got read index {rs.index}, but index "
                f"{req.floor} had been applied before the read was requested",
            )
        if applied < rs.index:
            raise Violation(Kind.READY_CONTRACT, "read released before applied reached its index")
        self.reads_released += 1

    # -- full scan -------------------------------------------------------------------------

    def full_scan(self, node_id: int, storage: MemoryStorage) -> None:
        """Re-check a whole persisted log (catches changes made outside the Ready path)."""
        hs, _ = storage.initial_state()
        first, last = storage.first_index(), storage.last_index()
        prev = storage.term(first - 1)
        who = f"node {node_id}'s log (full scan)"
        for e in storage.entries(first, last + 1):
            self._log_entry(node_id, e.index, e.term, int(e.type), e.data, prev)
            prev = e.term
            if e.index <= hs.commit:
                self._known_committed(
                    e.index, record_of(e), hs.term, Kind.COMMITTED_ENTRY_CHANGED, who
                )


def _holds(storage: MemoryStorage, index: int, term: int) -> bool:
    """Whether `storage` has persisted entry (index, term), or a snapshot covering it."""
    first = storage.first_index()
    if index < first:
        return storage.snapshot().meta.index >= index
    return index <= storage.last_index() and storage.term(index) == term


def _fmt(rec: EntryRecord) -> str:
    term, etype, data = rec
    kind = "conf" if etype == 1 else "normal"
    shown = data if len(data) <= 24 else data[:21] + b"..."
    return f"<term {term} {kind} {shown!r}>"


def _fmt_conf(cs: ConfState) -> str:
    return f"voters={sorted(cs.voters)} learners={sorted(cs.learners)}"
