"""The log writer: the one thread that writes to LMDB, and the Ready loop that feeds it.

Why the Ready loop runs here rather than on the engine thread: an LMDB write transaction and its
commit must stay on the thread that began it, and the single-voter path calls the Raft core in
the middle of that transaction (persist the new entries, advance, apply what thereby became
committed, then one fsync for all of it). Running the loop where the transaction lives saves a
thread hop per batch, which is most of the budget of a sequential durable put. The engine thread
still ticks (and, with a transport, steps) the core under the same lock while this thread is in
fsync with the GIL released.

Group commit: callers only append to a queue (a wake-up happens only when this thread is idle);
while batch N is being committed, proposals pile up, and the next turn hands all of them to the
core in one `propose_batch`, so they share the next transaction and its fsync.

Nothing leaves a batch before it is durable: futures, watch events, read states and messages
are released after the commit returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from embedkv.errors import Closed, Error, NoSpace, Removed, Unavailable
from embedkv.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    DropReason,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from embedkv.storage import Applied, DataDir, PeerInfo, WriteBatch
from embedkv.storage.requests import Event, LeaseGrantResult

from .futures import MemberFuture, complete, expire, fail
from .lease import LeaseKeeper
from .reads import ReadRounds, ReadWaiter
from .watch import WatchHub

log = logging.getLogger("embedkv.member")

MAX_READIES_PER_BATCH = 4
"""Readies one single-voter batch may absorb (persist, advance, apply what became committed)."""

LOG_RETAIN = 5000
"""Applied log entries kept for slow followers before the log is compacted (etcd's default)."""

LOG_COMPACT_EVERY = 10000
"""Compact the Raft log once this many applied entries beyond LOG_RETAIN have accumulated."""

COMPACT_STEP = 512
"""History changes one write batch visits for a pending compaction (a few ms on a loaded
machine): compaction proceeds in bounded steps, never as one long transaction."""

NO_SPACE_RETRY = 1.0
"""Seconds between attempts to write again after the disk was full."""

_MEMBERS_ONLY = frozenset({MessageType.PROP, MessageType.READ_INDEX,
                           MessageType.TRANSFER_LEADER})
"""Requests the core takes from anyone, that only members of the configuration may make."""

PROPOSALS_REMEMBERED = 16384
"""Forwarded proposals (digests of their entry data) a member remembers, to drop a copy of one
it already took: a Raft message delivered twice must not append a write twice. Each entry's
data is unique (it carries its proposer's id and a sequence number that starts at random),
and both copies of a message reach the same member, so remembering the latest few thousand
catches every copy that arrives within seconds of the original."""

NOT_LEADER = "not the leader"
"""What a member answers to a call only the leader serves."""


class NotLeader(Unavailable):
    """A membership change reached a member that does not lead (any more): it must be asked
    of the leader. Forwarded inside Raft it could be dropped silently by a leader whose first
    entry is not applied yet, and its proposer would wait out its deadline."""

    def __init__(self) -> None:
        super().__init__(NOT_LEADER)


_RETRY_DROPS = frozenset(
    {DropReason.NO_LEADER, DropReason.TRANSFERRING, DropReason.UNCOMMITTED_SIZE}
)
"""Drops that a later attempt may overcome: the proposal waits for it until its deadline."""


MAX_CALLER_CYCLES = 8
"""Ready cycles a caller runs for its own request before leaving the rest to the writer."""

_T = TypeVar("_T")


class Core:
    """The Raft node and the lock every call into it holds (engine and writer share it)."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.lock = threading.Lock()


@dataclass(slots=True)
class Proposal:
    seq: int
    data: bytes
    future: Future[Any]
    deadline: float
    conf: ConfChange | None = None  # a membership change (`data` is then unused)


@dataclass(frozen=True, slots=True)
class NodeCall:
    """A call into the Raft node from another thread (the transport's reports, a transfer),
    run by the Ready loop's owner under the core lock, so callers never wait for the lock."""

    fn: Callable[[RaftNode], object]


@dataclass(frozen=True, slots=True)
class Removal:
    """Another member told us we were removed (see LogWriter.set_removed)."""

    why: str


@dataclass(frozen=True, slots=True)
class ConfApplied:
    """A membership change was applied: the runtime updates its peers (and learns whether this
    member is still in the cluster). `origin` is the proposal's (member id, seq) if known."""

    index: int
    change: ConfChange
    conf_state: ConfState
    refusal: str | None  # why the change was ignored, or None: it took effect
    origin: tuple[int, int] | None


class Signal(enum.Enum):
    WAKE = "wake"  # the core may have a Ready (after a call into it from another thread)
    TICK = "tick"  # time passed: deadlines and retries too
    STOP = "stop"


Item = Proposal | ReadWaiter | Signal | Message | NodeCall | Removal

ConfOrigin = Callable[[ConfChange], "tuple[int, int] | None"]
"""Reads the proposer's (member id, seq) out of a membership change's context."""


@dataclass(slots=True)
class MemberStats:
    """Counters for tests and benchmarks (read-only outside the member)."""

    batches: int = 0  # write transactions committed (one fsync each when durable)
    entries: int = 0  # Raft log entries persisted
    applied: int = 0  # entries applied to the state machine
    proposals: int = 0  # proposals handed to the Raft core
    read_rounds: int = 0  # ReadIndex rounds started
    ticks: int = 0  # engine ticks done (Raft tick, deadlines, lease timers), counted by the engine
    installs: int = 0  # snapshots installed from a leader


@dataclass(slots=True)
class _Batch:
    """What one write transaction did, released only once it is durable."""

    applied_index: int
    conf_state: ConfState
    written: bool = False  # a write transaction was committed
    entries: int = 0
    hard_state: HardState | None = None  # the latest; written once, just before the commit
    applied: list[Applied] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    soft_state: SoftState | None = None
    settled: bool = True  # no Ready of this batch changed the term or the role
    conf_applied: list[ConfApplied] = field(default_factory=list)
    installed: bool = False  # a snapshot replaced the state machine


class LogWriter:
    """Runs the Ready loop and every write transaction of one member on its own thread."""

    def __init__(
        self,
        dd: DataDir,
        core: Core,
        *,
        member_id: int,
        new_node: Callable[[], RaftNode],
        hub: WatchHub,
        leases: LeaseKeeper,
        request_timeout: float,
        read_retry: float,
    ) -> None:
        self._dd = dd
        self._core = core
        self._me = member_id
        self._solo = frozenset({member_id})  # the voters of a one-member configuration
        self._alone = ConfState(self._solo)  # ... with no learner either
        self._new_node = new_node
        self._hub = hub
        self._leases = leases
        self._timeout = request_timeout
        self.send: Callable[[list[Message]], None] | None = None
        """Where messages go once durable (the transport); None: there is nobody to send to."""
        self.conf_origin: ConfOrigin = lambda cc: None
        """How to find the proposer of a membership change (the runtime's context format)."""
        self.conf_member: Callable[[ConfChange], PeerInfo | None] = lambda cc: None
        """The directory entry a membership change carries in its context, if any."""
        self.conf_deny: Callable[[ConfChange], tuple[str, ...]] = lambda cc: ()
        """The certificate serials a removal's context puts on the deny list."""
        self.conf_refusal: Callable[[ConfChange, ConfState], str | None] = lambda cc, cs: None
        """Why the runtime voids a committed change the Raft core would take, given the
        configuration it would change (etcd validates again at apply as well): every member
        decides alike from the entry and the configuration."""
        self.on_conf_applied: Callable[[ConfApplied], None] | None = None
        """Called (on this thread, after the batch is durable) for each applied change."""
        self.on_installed: Callable[[], None] | None = None
        """Called (on this thread, after the batch is durable) when a snapshot was installed."""
        self.removed: str | None = None
        """Set when this member was removed from its cluster: it serves nothing any more."""
        self.stats = MemberStats()
        self.leader_known = threading.Event()
        self.leadership = threading.Condition()
        """Notified whenever this member sees the leader or its own role change."""
        self.no_space: NoSpace | None = None
        """Set while the disk is full: proposals are refused at once."""
        self.failure: BaseException | None = None
        """Set if the loop died on an unexpected error: the member can only be closed."""
        self.local_reads = False
        """True while a linearizable read may be served from LMDB without a read barrier:
        this member is the leader and the only voter of its applied configuration, and a
        ReadIndex answered in its current term showed that it knows every committed entry
        (docs/internals/runtime.md, "Reads"). Cleared *before* anything could let another member
        commit: when a Ready changes the term or the role, when a configuration with another
        voter is applied (inside its transaction, before any message to the new voter goes
        out), on a full disk and when the writer stops. Set again only by the next ReadIndex
        answer."""
        self._term = 0  # the term of the latest hard state this writer saw

        # Callers append; whoever holds _drive takes. The bell is unlocked to wake this
        # thread: it is only rung when a caller does not run the batch itself.
        self._queue: deque[Item] = deque()
        self._bell = threading.Lock()
        self._bell.acquire()
        self._drive = threading.Lock()  # held by the one thread running the Ready loop
        self._applied = dd.applied_index
        self._conf = dd.conf_state
        self._leader = False
        self._pending: dict[int, Proposal] = {}  # seq -> proposal in the core
        self._pending_in_order = True  # insertion order is deadline order
        self._stalled: list[Proposal] = []  # dropped for want of a leader; retried
        self._proposed: set[bytes] = set()  # digests of forwarded proposals taken (_fresh)
        self._proposed_order: deque[bytes] = deque()
        self._reads = ReadRounds(member_id, read_retry)
        # Outcomes of the last durable batch whose waiting callers are not woken yet: see
        # _wake_deferred (they are woken just before the next commit, or before we wait).
        self._deferred: list[tuple[MemberFuture[Any], Any]] = []
        # Only worth it when a commit waits for an fsync: without one the commit is too short
        # for the woken callers to run in, and they would delay the release instead.
        self._defer = dd.durable
        self._no_space_retry = 0.0
        self._disk_full = False  # since the last NoSpace, no batch has committed
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="embedkv-log-writer", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def applied_index(self) -> int:
        return self._applied

    def start(self) -> None:
        self._thread.start()

    # --- caller threads -------------------------------------------------------------------

    def submit(self, item: Item) -> None:
        """Queue a proposal, read or signal for this thread."""
        self._queue.append(item)
        self._ring()

    def _ring(self) -> None:
        bell = self._bell
        if bell.locked():
            with contextlib.suppress(RuntimeError):  # another thread rang it first
                bell.release()

    def run_here(self, item: Proposal | ReadWaiter) -> None:
        """Queue `item` and, if no thread is running the Ready loop, run it on this thread
        until the item's future is done: no hop to the writer thread and back.

        Only for callers that block for the result anyway (the synchronous Store): the batch,
        with its fsync, runs on the calling thread. Never on the main thread: Python runs signal
        handlers there, between any two bytecodes, and one that raises (KeyboardInterrupt) in
        the middle of a batch would leave the member's memory out of step with its disk.
        Blocking signals around the batch is not enough: a signal taken by any other thread of
        the program still runs its handler on the main thread (docs/internals/runtime.md).
        """
        if threading.current_thread() is threading.main_thread() or not self._drive.acquire(
            blocking=False
        ):
            self.submit(item)  # the writer thread (or a caller) runs the batch: ride along
            return
        try:
            self._drive_for(item)
        finally:
            self._drive.release()
            if self._queue and not self._stopping:
                self._ring()  # what others queued meanwhile is the writer thread's

    def _drive_for(self, item: Proposal | ReadWaiter) -> None:
        """The Ready loop on a caller's thread (with _drive held), until `item` is done."""
        self._queue.append(item)
        if self._stopping:
            self.drain()
            return
        future = item.future
        try:
            for _ in range(MAX_CALLER_CYCLES):
                if self._admit(self._take()):
                    self._queue.append(Signal.STOP)  # the writer thread's to act on
                    break
                busy = self._cycle()
                if future.done() or not busy or self._stopping:
                    break
            self._complete_deferred()
        except BaseException as exc:
            # Only a bug or a broken disk gets here (no signal handler runs off the main
            # thread): the member's memory may no longer match its disk, which LMDB kept
            # consistent. Stop the member, as the writer thread would.
            self._fail_stop(exc)
            raise

    def stop(self) -> None:
        """Finish the batch in progress, then fail everything still waiting with Closed."""
        self._stopping = True
        self.local_reads = False
        self._queue.append(Signal.STOP)
        self._ring()
        if threading.current_thread() is not self._thread:
            if self._thread.is_alive():
                self._thread.join()
            self.drain()

    @property
    def stopping(self) -> bool:
        """Closing or failed: nothing queued from now on will be handled."""
        return self._stopping

    def drain(self) -> None:
        """Fail what is still queued once the writer has stopped (safe from any thread)."""
        if not self._stopping:
            return
        stop = False
        q = self._queue
        while True:
            try:
                item = q.popleft()
            except IndexError:
                break
            if type(item) is Proposal or type(item) is ReadWaiter:
                fail(item.future, self._stopped_error())
            elif item is Signal.STOP:
                stop = True
        if stop:  # not ours to take: the writer may still be waiting for it
            q.append(Signal.STOP)
            self._ring()

    def set_removed(self, why: str) -> None:
        """This member is no longer in its cluster: fail what waits and every later call with
        Removed. The node keeps running (a removed leader still hands over leadership).
        Only on the thread running the Ready loop; other threads submit a Removal."""
        if self.removed is not None:
            return
        log.warning("%s: it serves nothing from now on", why)
        self.removed = why
        self.local_reads = False
        self.leader_known.clear()
        self._fail_all(Removed(why))

    def _stopped_error(self) -> Error:
        if self.removed is not None:
            return Removed(self.removed)
        if self.failure is not None:
            return Unavailable(f"the member stopped after an internal error: {self.failure!r}")
        return Closed("the member is closed")

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        drive = self._drive
        try:
            busy = False
            while not self._stopping:
                if not busy and not self._queue:
                    if self._deferred:
                        with drive:
                            self._complete_deferred()  # wake them before we wait
                    if not self._queue:
                        self._bell.acquire()
                        continue
                with drive:
                    if self._stopping:
                        break
                    if self._admit(self._take()):
                        break
                    busy = self._cycle()
        except BaseException as exc:  # a bug or a broken disk: stop, and say why
            with drive:
                self._fail_stop(exc)
            return
        with drive:
            self._shut()

    def _fail_stop(self, exc: BaseException) -> None:
        """Stop for good after an unexpected error (with _drive held)."""
        if self.failure is None:
            log.error("the member stopped after an internal error", exc_info=exc)
            self.failure = exc
        self.leader_known.clear()
        self._shut()
        self._ring()  # the writer thread, if it waits, sees _stopping and ends

    def _shut(self) -> None:
        self._stopping = True
        self.local_reads = False
        try:
            self._complete_deferred()  # durable outcomes: they stand whatever happens next
        finally:
            self._fail_all(self._stopped_error())
            self.drain()

    def _take(self) -> list[Item]:
        q = self._queue
        pop = q.popleft
        return [pop() for _ in range(len(q))]

    def _admit(self, items: list[Item]) -> bool:
        """Hand new proposals and reads to the core; True when told to stop."""
        proposals: list[Proposal] = []
        inbound: list[Message | NodeCall] = []
        tick = stop = False
        for item in items:
            if type(item) is Proposal:
                proposals.append(item)
            elif type(item) is ReadWaiter:
                self._reads.waiting.append(item)
            elif type(item) is Message or type(item) is NodeCall:
                inbound.append(item)
            elif type(item) is Removal:
                self.set_removed(item.why)
            elif item is Signal.STOP:
                stop = True
            elif item is Signal.TICK:
                tick = True
        if stop:
            self._stalled.extend(proposals)  # failed with Closed on the way out
            return True
        if inbound:
            self._step(inbound)
        if self.removed is not None:
            for p in proposals:
                fail(p.future, self._stopped_error())
            proposals = []
            self._reads.fail_all(self._stopped_error())
        if tick:
            self._on_tick(time.monotonic())
        if self._stalled and self._leader_known():
            proposals = self._stalled + proposals
            self._stalled = []
            self._pending_in_order = False  # older deadlines now follow newer ones
        if proposals:
            self._propose(proposals)
        if self._reads.waiting:
            self._start_read_round()
        return False

    def _step(self, inbound: list[Message | NodeCall]) -> None:
        """Peers' messages and the transport's reports, into the node in arrival order."""
        core = self._core
        conf = self._conf
        known = conf.voters | conf.learners
        with core.lock:
            node = core.node
            for item in inbound:
                try:
                    if isinstance(item, NodeCall):
                        item.fn(node)
                    elif item.type not in _MEMBERS_ONLY or item.from_ in known or not known:
                        if item.type is MessageType.PROP:
                            item = self._fresh(item)
                            if not item.entries:
                                continue
                        node.step(item)
                    else:
                        # Not a member (removed, or never added): the core would take its
                        # proposals and read requests like anyone's. Everything else a
                        # stranger sends is judged by its term (a member that lags may not
                        # know the current leader yet, and must take its appends).
                        log.debug("dropped a %s from non-member %#x", item.type.name,
                                  item.from_)
                except Exception:
                    # A message the core cannot take (it never should) costs that message,
                    # never the member: the sender will retry or time out.
                    log.exception("stepping %r failed", item)

    def _fresh(self, prop: Message) -> Message:
        """`prop` without the entries this member took before (a duplicated message)."""
        seen = self._proposed
        digests = [hashlib.blake2b(e.data, digest_size=16).digest() for e in prop.entries]
        fresh = tuple(e for e, d in zip(prop.entries, digests, strict=True) if d not in seen)
        if len(fresh) < len(prop.entries):
            log.debug("dropped %d repeated proposals from %#x",
                      len(prop.entries) - len(fresh), prop.from_)
            prop = dataclasses.replace(prop, entries=fresh)
        order = self._proposed_order
        for d in digests:
            if d not in seen:
                seen.add(d)
                order.append(d)
        while len(order) > PROPOSALS_REMEMBERED:
            seen.discard(order.popleft())
        return prop

    def _leader_known(self) -> bool:
        return self._core.node.leader != NONE

    def _propose(self, proposals: list[Proposal]) -> None:
        if self.no_space is not None:
            for p in proposals:
                fail(p.future, NoSpace(str(self.no_space)))
            return
        core = self._core
        if any(p.conf is not None for p in proposals):
            changes = [p for p in proposals if p.conf is not None]
            proposals = [p for p in proposals if p.conf is None]
            for p in changes:
                self._propose_conf(p)
            if not proposals:
                return
        dropped: ProposalDropped | None = None
        with core.lock:
            try:
                core.node.propose_batch([p.data for p in proposals])
            except ProposalDropped as exc:
                dropped = exc
        if dropped is None:
            pending = self._pending
            for p in proposals:
                pending[p.seq] = p
            self.stats.proposals += len(proposals)
        elif dropped.reason in _RETRY_DROPS:
            self._stalled.extend(proposals)
        else:
            for p in proposals:
                fail(p.future, Unavailable(f"proposal dropped: {dropped}"))

    def _propose_conf(self, p: Proposal) -> None:
        """One membership change (the core takes one at a time; a busy core retries it)."""
        assert p.conf is not None
        core = self._core
        dropped: ProposalDropped | None = None
        with core.lock:
            node = core.node
            leader = node.leader
            if leader == node.id:
                try:
                    node.propose_conf_change(p.conf)
                except ProposalDropped as exc:
                    dropped = exc
        if leader == NONE:
            self._stalled.append(p)  # retried once a leader is known
        elif leader != self._me:
            fail(p.future, NotLeader())
        elif dropped is None:
            self._pending[p.seq] = p
            self._pending_in_order = False
            self.stats.proposals += 1
        elif dropped.reason in _RETRY_DROPS or dropped.reason is DropReason.PENDING_CONF_CHANGE:
            self._stalled.append(p)
        else:
            fail(p.future, ValueError(f"membership change refused: {dropped}"))

    def _start_read_round(self) -> None:
        """One ReadIndex round for every reader waiting since the last round began."""
        if self.no_space is not None and self._conf.voters == {self._me}:
            # A single voter that cannot write cannot commit either: everything committed is
            # applied, so the applied index is a valid read index. Reads keep working.
            self._reads.answer_now(self._applied)
            return
        ctx = self._reads.next_context()
        core = self._core
        with core.lock:
            try:
                core.node.read_index(ctx)
            except ProposalDropped:
                return  # no leader yet: the readers wait for a later round (or their deadline)
        self._reads.started(ctx, time.monotonic())
        self.stats.read_rounds += 1

    # --- one write batch ------------------------------------------------------------------

    def _cycle(self) -> bool:
        """Persist and apply one Ready (more with a single voter) in one transaction; True if
        the core may have more for us (False: wait for the next item or signal)."""
        if self.no_space is not None:
            self._complete_deferred()
            return False
        core = self._core
        with core.lock:
            node = core.node
            rd = node.ready() if node.has_ready() else None
            leading = node.role is Role.LEADER
        if rd is None:
            self._complete_deferred()
            if self._dd.compaction_pending:
                return self._compact_while_idle()
            return False
        batch = _Batch(self._applied, self._conf)
        if leading and rd.messages and self.send is not None and self._conf.voters != self._solo:
            # A leader sends while it writes (Raft thesis §10.2.1): its own entries count
            # toward the commit only once durable (advance, after the commit below), and what
            # it sends depends on nothing this batch makes durable (its term and vote were
            # persisted before it could win).
            self.send(rd.messages)
            rd.messages = []
        if not (rd.entries or rd.hard_state or rd.committed_entries or rd.snapshot):
            # Nothing to persist or apply (read states, messages, a role change): no
            # transaction, so a linearizable read costs no write.
            self._complete_deferred()
            self._note(rd, batch)
            with core.lock:
                node.advance(rd)
            self._release(batch)
            return True
        unadvanced: Ready | None = None
        more = True
        solo = self._solo
        late: list[tuple[MemberFuture[Any], Any]] = []
        try:
            with self._dd.write() as w:
                if self._conf.voters != solo:
                    # Others vote: our entries count for commit only once durable, so one
                    # Ready per batch, and the core's lock only for its own calls: ticks and
                    # the transport's reports do not wait for this batch's applies.
                    self._handle(w, node, rd, batch, core.lock)
                    unadvanced = rd
                    if batch.hard_state is not None:
                        w.set_hard_state(batch.hard_state)
                    self._compact_log(w, batch.applied_index, batch.conf_state)
                else:
                    with core.lock:
                        self._handle(w, node, rd, batch)
                        for _ in range(MAX_READIES_PER_BATCH):
                            if batch.conf_state.voters != solo:
                                # Others vote: our entries count for commit only once durable.
                                unadvanced = rd
                                break
                            # The only voter: nothing is released before the commit
                            # below, so the core may count these entries now and hand back
                            # what that commits, to apply in this same transaction.
                            node.advance(rd)
                            if not node.has_ready():
                                more = False  # a tick or a new item wakes us again
                                break
                            rd = node.ready()
                            self._handle(w, node, rd, batch)
                        else:
                            unadvanced = rd
                        if batch.hard_state is not None:
                            w.set_hard_state(batch.hard_state)
                        self._compact_log(w, batch.applied_index, batch.conf_state)
                # A bounded part of the history a compaction left to drop (outside the core's
                # lock: ticks and reports never wait for it).
                w.compact_step(COMPACT_STEP)
                if self._deferred:
                    # The previous batch is durable: its callers run while this one commits
                    # (the GIL is free during the write-out and fsync) instead of competing
                    # with the work above. No done-callback runs here (see _wake_deferred).
                    late = self._wake_deferred()
            batch.written = True
        except NoSpace as exc:
            self._deferred.extend(late)
            self._complete_deferred()
            self._on_no_space(exc)
            return False
        except BaseException:
            self._deferred.extend(late)  # completed on the way out (_run)
            raise
        if unadvanced is not None:
            with core.lock:
                core.node.advance(unadvanced)
        self._release(batch)
        for future, outcome in late:  # they got a done-callback meanwhile: run it now
            complete(future, outcome)
        return more

    def _compact_while_idle(self) -> bool:
        """One bounded compaction step in a transaction of its own; True: look again soon
        (queued requests get in between steps)."""
        try:
            with self._dd.write() as w:
                more = w.compact_step(COMPACT_STEP)
        except NoSpace as exc:
            self._on_no_space(exc)
            return False
        self.stats.batches += 1
        return more

    def _note(self, rd: Ready, batch: _Batch) -> None:
        """Keep what a Ready releases once its batch is durable. A new term or role ends
        local reads at once (see local_reads)."""
        if rd.soft_state is not None:
            batch.soft_state = rd.soft_state
            batch.settled = False
            self.local_reads = False
        hs = rd.hard_state
        if hs is not None and hs.term != self._term:
            self._term = hs.term
            batch.settled = False
            self.local_reads = False
        if rd.messages:
            batch.messages.extend(rd.messages)
        if rd.read_states:
            batch.read_states.extend(rd.read_states)

    def _handle(self, w: WriteBatch, node: RaftNode, rd: Ready, batch: _Batch,
                lock: threading.Lock | None = None) -> None:
        """Write one Ready into the open transaction; keep what it releases in `batch`.
        `lock`: the core's lock, to take around calls into the core (None: held already)."""
        self._note(rd, batch)
        snap = rd.snapshot
        if snap is not None and not snap.is_empty():
            # The leader's image of its state machine: it replaces ours in this transaction
            # (the data dir stays open; the hub and the lease keeper reload after the commit).
            w.install_snapshot(snap)
            batch.applied_index = snap.meta.index
            batch.conf_state = snap.meta.conf_state
            batch.installed = True
            self.local_reads = False
        if rd.entries:
            w.append_entries(rd.entries)
            batch.entries += len(rd.entries)
        if rd.hard_state is not None:
            batch.hard_state = rd.hard_state
        if rd.committed_entries:
            applied = batch.applied
            for e in rd.committed_entries:
                if e.type is EntryType.CONF_CHANGE:
                    cc = ConfChange.decode(e.data)
                    with lock if lock is not None else contextlib.nullcontext():
                        current = node.conf_state
                        refusal = (node.conf_change_refusal(cc)
                                   or self.conf_refusal(cc, current))
                        # A void change leaves the configuration as it is, as the core
                        # leaves one it refuses.
                        cs = current if refusal is not None else node.apply_conf_change(cc)
                    if cs.voters != self._solo:
                        # Another voter from now on: it may soon commit without us. Reads
                        # take the barrier before any message can reach it (see local_reads).
                        self.local_reads = False
                    w.apply_conf_change(e.index, cs)
                    if refusal is None:
                        self._record_member(w, cc)
                    batch.conf_state = cs
                    batch.conf_applied.append(
                        ConfApplied(e.index, cc, cs, refusal, self.conf_origin(cc))
                    )
                else:
                    applied.append(w.apply(e))
            batch.applied_index = rd.committed_entries[-1].index

    def _record_member(self, w: WriteBatch, cc: ConfChange) -> None:
        """Keep the member directory (names and addresses) in step with the configuration,
        in the transaction that applies the change, so it survives log compaction; a removal
        puts the serials its context lists on the deny list."""
        if cc.type is ConfChangeType.REMOVE:
            w.remove_member(cc.node_id)
            w.deny(self.conf_deny(cc))  # its certificates: refused from now on
            return
        info = self.conf_member(cc)
        if info is not None:
            w.set_member(cc.node_id, info)

    def _compact_log(self, w: WriteBatch, applied: int, conf: ConfState) -> None:
        """Keep the Raft log bounded: drop entries well behind the applied index. A member
        alone in its configuration (no other voter, no learner) has nobody to send entries
        to: it drops everything applied, in the batch that applied it, so those entries never
        reach LMDB and the commit writes one B-tree fewer (a member added later gets a
        snapshot, as it would from any compacted log)."""
        first = self._dd.log.first_index()
        if conf == self._alone:
            if applied >= first:
                w.compact_log(applied)
        elif applied - first > LOG_RETAIN + LOG_COMPACT_EVERY:
            w.compact_log(applied - LOG_RETAIN)

    def _release(self, batch: _Batch) -> None:
        """The batch is durable: send, publish, resolve, in that order."""
        self._applied = batch.applied_index
        self._conf = batch.conf_state
        stats = self.stats
        if batch.written:
            stats.batches += 1
            if self._disk_full:
                self._disk_full = False
                log.warning("writes accepted again")
        stats.entries += batch.entries
        stats.applied += len(batch.applied)
        if batch.messages and self.send is not None:
            self.send(batch.messages)
        if batch.installed:
            stats.installs += 1
        if batch.installed and self.on_installed is not None:
            # Before any event of this batch: the hub replays the installed history (which
            # holds the entries applied after the snapshot too) to every watch.
            self.on_installed()
        if batch.applied:
            events: list[Event] = []
            if not batch.installed:
                for a in batch.applied:
                    if a.events:
                        events.extend(a.events)
            if events:
                self._hub.publish(events)
            try:
                self._resolve(batch.applied)
            finally:
                self._hub.wake()
        answered = False
        if batch.read_states:
            answered = self._reads.on_read_states(batch.read_states, self._applied)
        self._reads.release(self._applied)
        if batch.soft_state is not None:
            self._on_soft_state(batch.soft_state)
        for change in batch.conf_applied:
            self._conf_applied(change)
        if answered and batch.settled:
            self._allow_local_reads()

    def _conf_applied(self, change: ConfApplied) -> None:
        """Resolve the proposer's future with the new configuration (or why it was refused)
        and let the runtime follow the change."""
        origin = change.origin
        if origin is not None and origin[0] == self._me:
            p = self._pending.pop(origin[1], None)
            if p is not None and not p.future.done():
                if change.refusal is None:
                    p.future.set_result(change)
                else:
                    p.future.set_exception(
                        ValueError(f"membership change refused: {change.refusal}")
                    )
        cc = change.change
        if change.refusal is None and cc.type is ConfChangeType.REMOVE and cc.node_id == self._me:
            self.set_removed(f"member {self._me:#x} was removed from its cluster "
                             f"(at index {change.index})")
        if self.on_conf_applied is not None:
            try:
                self.on_conf_applied(change)
            except Exception:
                log.exception("following the membership change at %d failed", change.index)

    def _allow_local_reads(self) -> None:
        """A ReadIndex was answered in this term, and applied, by a batch that changed neither
        the term nor the role: if this member is the leader and the only voter, every entry
        committed from now on is applied in the transaction that commits it (apply at commit)
        and nobody else can commit, so the latest LMDB state is a linearizable read."""
        if (
            self._leader
            and self._conf.voters == self._solo
            and self.no_space is None
            and not self._stopping
        ):
            self.local_reads = True

    def _resolve(self, applied: list[Applied]) -> None:
        """Hand out the outcomes of a durable batch. A future with done-callbacks is resolved
        now; the others are woken by _wake_deferred or _complete_deferred (soon: just before
        the next commit, or before this thread waits for work)."""
        me = self._me
        pop = self._pending.pop
        deferred = self._deferred
        defer = self._defer
        for a in applied:
            result = a.result
            if type(result) is LeaseGrantResult:
                self._leases.on_granted(result.id, result.ttl)
            origin = a.origin
            if origin is None or origin[0] != me:
                continue
            p = pop(origin[1], None)
            if p is None:
                continue  # timed out already, or proposed before a restart
            future = p.future
            if defer and type(future) is MemberFuture and not future._done_callbacks:
                deferred.append((future, result))
            else:
                complete(future, result)  # done-callbacks (asyncio, leases) run now

    def _wake_deferred(self) -> list[tuple[MemberFuture[Any], Any]]:
        """Complete the deferred futures without running done-callbacks (a write transaction
        is open); returns those that got a callback meanwhile, to complete after it."""
        deferred, self._deferred = self._deferred, []
        late: list[tuple[MemberFuture[Any], Any]] = []
        for future, outcome in deferred:
            if not future._finish_quietly(outcome):
                late.append((future, outcome))
        return late

    def _complete_deferred(self) -> None:
        """Complete the deferred futures now (no transaction is open)."""
        deferred, self._deferred = self._deferred, []
        for future, outcome in deferred:
            if not future._finish_quietly(outcome):
                complete(future, outcome)

    def _on_soft_state(self, ss: SoftState) -> None:
        leader = ss.role is Role.LEADER
        if leader != self._leader:
            self._leader = leader
            self._leases.on_leadership(leader)
        if ss.leader != NONE and self.removed is None:
            self.leader_known.set()
        else:
            self.leader_known.clear()
        with self.leadership:
            self.leadership.notify_all()

    # --- time, failures -----------------------------------------------------------------------

    def _on_tick(self, now: float) -> None:
        """Fail what waited past its deadline; after a full disk, try writing again."""
        if self.no_space is not None and now >= self._no_space_retry:
            self.no_space = None
            self._dd.clear_no_space()
        unavailable = f"no result within the request timeout ({self._timeout}s)"
        pending = self._pending
        if pending:
            expired = []
            in_order = self._pending_in_order
            for seq, p in pending.items():
                if p.deadline <= now:
                    expired.append(seq)
                elif in_order:
                    break  # the rest is younger
            for seq in expired:
                fail(pending.pop(seq).future, Unavailable(unavailable))
        else:
            self._pending_in_order = True
        if self._stalled:
            self._stalled = expire(self._stalled, now, unavailable)
        self._reads.expire(now, unavailable)
    def _on_no_space(self, exc: NoSpace) -> None:
        """The disk is full and the batch was rolled back: refuse writes, restart the core
        from what is on disk (it may have counted entries that never became durable)."""
        self.local_reads = False
        if self._disk_full:
            log.debug("disk still full: %s", exc)
        else:
            log.error("writes refused until space is freed: %s", exc)
            self._disk_full = True
        self.no_space = exc
        self._no_space_retry = time.monotonic() + NO_SPACE_RETRY
        pending = list(self._pending.values()) + self._stalled
        self._pending.clear()
        self._stalled = []
        for p in pending:
            fail(p.future, NoSpace(str(exc)))
        self._reads.ask_again()
        self._applied = self._dd.applied_index
        self._conf = self._dd.conf_state
        node = self._new_node()
        with self._core.lock:
            self._core.node = node
        if self._leader:
            self._leader = False
            self._leases.on_leadership(False)
        self.leader_known.clear()
        if self._conf.voters == {self._me}:
            with self._core.lock:
                node.campaign()

    def _fail_all(self, exc: Error) -> None:
        """Fail every proposal and read this writer holds (it has stopped)."""
        waiting = [*self._pending.values(), *self._stalled]
        self._pending.clear()
        self._stalled = []
        for item in waiting:
            fail(item.future, type(exc)(str(exc)))
        self._reads.fail_all(exc)
