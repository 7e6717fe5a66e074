"""A deterministic network simulator for the sans-I/O Raft core.

One seed fixes everything: the cluster's shape and limits (`ScheduleParams.from_seed`), the
schedule of faults and client requests, and each node's election-timeout randomness. There is
no wall clock and no thread: time is the number of ticks the simulator hands out, the network
is a list of packets the schedule delivers, drops, duplicates, reorders or delays.

Each simulated member runs the runtime's Ready loop exactly as the core's contract says
(`SimNode` + `Simulation.handle_ready`): persist snapshot, entries and hard state to its
`MemoryStorage`, then send messages, then apply committed entries to a tiny state machine,
release read states, advance. A crash throws away the `RaftNode` (and so everything not
persisted) and may strike in the middle of a Ready; a restart builds a new `RaftNode` from the
same storage and the durable applied index.

`SafetyChecker` (tests/raft/checker.py) watches every step. At the end of a schedule the
liveness phase heals everything and asserts that a leader is elected and a proposal is applied
by every member within a bounded number of ticks.

Replay a schedule with `python -m tests.raft.soak --seed S --steps N --verbose`.
"""

from __future__ import annotations

import contextlib
import enum
import random
import struct
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from embedkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from embedkv.raft.core import Config, RaftNode
from embedkv.raft.log import RaftLog
from embedkv.raft.progress import ProgressTracker

from .checker import CheckerOptions, EntryRecord, Kind, SafetyChecker, Violation, record_of

TraceFn = Callable[[str], None]

# ----------------------------------------------------------------------------------------
# Schedule parameters
# ----------------------------------------------------------------------------------------

ACTIONS = (
    "tick_all",
    "tick_one",
    "deliver",
    "drop",
    "duplicate",
    "delay",
    "propose",
    "read_index",
    "partition",
    "heal",
    "crash",
    "restart",
    "bounce",
    "snapshot",
    "transfer_leader",
    "membership",
    "unreachable",
)

# Relative weight of each action before the per-seed scaling.
BASE_WEIGHTS: dict[str, float] = {
    "tick_all": 12.0,
    "tick_one": 3.0,
    "deliver": 40.0,
    "drop": 3.0,
    "duplicate": 2.0,
    "delay": 2.0,
    "propose": 8.0,
    "read_index": 3.0,
    "partition": 1.0,
    "heal": 1.5,
    "crash": 0.8,
    "restart": 2.0,
    "bounce": 0.4,
    "snapshot": 1.0,
    "transfer_leader": 0.5,
    "membership": 1.5,
    "unreachable": 0.3,
}

# Actions that are faults or rare events: a seed may switch each off or make it frequent.
_OPTIONAL = frozenset(
    {
        "drop",
        "duplicate",
        "delay",
        "partition",
        "crash",
        "bounce",
        "snapshot",
        "transfer_leader",
        "membership",
        "unreachable",
        "read_index",
    }
)

# What `stale_leader` schedules use instead of the seed's scaling: a leader cut off with a
# minority while the majority elects another, reads asked of it (with contexts other
# members already had answered), heartbeat answers held up in transit across the split.
_STALE_LEADER_WEIGHTS: dict[str, float] = {
    "tick_all": 20.0,
    "tick_one": 2.0,
    "deliver": 40.0,
    "drop": 1.0,
    "duplicate": 1.0,
    "delay": 6.0,
    "propose": 8.0,
    "read_index": 10.0,
    "partition": 1.5,
    "heal": 0.7,
    "crash": 0.2,
    "restart": 1.0,
    "bounce": 0.0,
    "snapshot": 0.5,
    "transfer_leader": 0.0,
    "membership": 0.0,
    "unreachable": 0.1,
}

# What `chaos` schedules (used to hunt planted bugs) make frequent.
_CHAOS = frozenset({"crash", "restart", "bounce", "partition", "heal", "tick_one", "delay"})

DEFAULT_STEPS = 300
MAX_PACKETS = 400  # the network drops the oldest packet beyond this (congestion)


@dataclass(frozen=True, slots=True)
class ScheduleParams:
    """Everything a schedule depends on besides the seed's own random stream."""

    seed: int
    steps: int = DEFAULT_STEPS
    cluster_size: int = 3
    max_nodes: int = 7  # including members added later
    election_tick: int = 10
    heartbeat_tick: int = 1
    check_quorum: bool = True
    pre_vote: bool = True
    max_size_per_msg: int = 1 << 20
    max_committed_size_per_ready: int = 16 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    max_uncommitted_entries_size: int = 0
    ready_prob: float = 1.0  # chance a node handles its pending Ready after a step
    # The runtime's interleavings: a Ready is taken, then persisted, sent, applied and
    # advanced in separate steps, with ticks, messages and proposals stepped in between, and
    # up to `max_outstanding` Readies taken before the oldest is advanced. False: each Ready
    # is handled atomically (the core is stepped only between Readies).
    pipeline: bool = True
    max_outstanding: int = 2
    # Chance that the runtime, about to apply a Ready's committed entries, is not done
    # assembling its transaction yet (the core goes on being stepped meanwhile).
    apply_hold_prob: float = 0.0
    mid_ready_crash_prob: float = 0.5
    full_scan_every: int = 25
    # How initial members start: "conf-state" = MemoryStorage(conf_state=...), the contract;
    # "snapshot" = a snapshot at index 1 (term 1) holding the initial configuration.
    bootstrap: str = "conf-state"
    # Reads under partition (see _STALE_LEADER_WEIGHTS): partitions isolate the leader with a
    # minority, reads go to the deposed leader, delays pick heartbeat answers.
    stale_leader: bool = False
    weights: tuple[tuple[str, float], ...] = tuple(BASE_WEIGHTS.items())

    @classmethod
    def from_seed(
        cls,
        seed: int,
        steps: int = DEFAULT_STEPS,
        *,
        chaos: bool = False,
        pipeline: bool = True,
        stale_leader: bool = False,
    ) -> ScheduleParams:
        """The seed's parameters; `chaos` makes crashes and partitions frequent everywhere.

        `pipeline=False` handles each Ready atomically (the simulator before issue 14).
        `stale_leader` makes reads under partition at a deposed leader (CheckQuorum off) the
        schedule's theme: the family that hunts a read confirmed by an earlier round's answer.
        """
        r = random.Random(f"embedkv-sim-params/{seed}")
        weights: list[tuple[str, float]] = []
        for name in ACTIONS:
            base = BASE_WEIGHTS[name]
            scale = r.choice((0.0, 0.5, 1.0, 1.0, 2.0)) if name in _OPTIONAL else r.uniform(0.5, 2)
            if chaos and name in _CHAOS:
                scale = r.uniform(3, 6)
            weights.append((name, base * scale))
        election_tick = r.randint(5, 12)
        sizes = (0, 3, 1) if chaos else (15, 50, 35)
        if stale_leader:
            # Its own stream, so the seed's other parameters are those of its default schedule.
            rs = random.Random(f"embedkv-sim-stale/{seed}")
            weights = [(n, w * rs.uniform(0.5, 2)) for n, w in _STALE_LEADER_WEIGHTS.items()]
            sizes = (0, 1, 1)
        params = cls(
            seed=seed,
            steps=steps,
            cluster_size=r.choices((1, 3, 5), weights=sizes)[0],
            election_tick=election_tick,
            heartbeat_tick=r.randint(1, max(1, election_tick // 4)),
            check_quorum=r.random() < 0.8,
            pre_vote=r.random() < (0.4 if chaos else 0.8),
            max_size_per_msg=r.choice((1, 64, 128, 1 << 20)),
            max_committed_size_per_ready=r.choice((1, 100, 16 << 20)),
            max_inflight_msgs=r.choice((1, 2, 4, 256)),
            max_inflight_bytes=r.choice((0, 0, 200)),
            max_uncommitted_entries_size=r.choice((0, 0, 300)),
            ready_prob=r.choice((1.0, 0.8, 0.5)),
            weights=tuple(weights),
            bootstrap="snapshot" if r.random() < 0.25 else "conf-state",
            pipeline=pipeline,
            max_outstanding=r.choice((1, 2, 3)),
            apply_hold_prob=r.choice((0.0, 0.5, 0.8, 0.9)),
        )
        if stale_leader:
            params = replace(params, check_quorum=False, stale_leader=True)
        return params


@dataclass(frozen=True, slots=True)
class Faults:
    """Deliberately broken runtime behaviour, for the checker's self-tests only."""

    forget_vote_on_restart: bool = False  # the persisted vote is lost when a node restarts
    lose_unapplied_tail_on_crash: bool = False  # persisted entries above commit vanish on crash
    # Planted core bugs (the core is patched per node, see _plant_core_faults):
    commit_earlier_terms: bool = False  # Figure 8: a leader commits any entry a majority holds
    vote_off_by_one: bool = False  # grants a vote to a log one entry shorter (same last term)
    quorum_off_by_one: bool = False  # a leader commits what one voter fewer than a majority has

    def flags(self) -> list[str]:
        out = []
        if self.forget_vote_on_restart:
            out.append("--fault forget-vote")
        if self.lose_unapplied_tail_on_crash:
            out.append("--fault lose-tail")
        if self.commit_earlier_terms:
            out.append("--fault figure-8")
        if self.vote_off_by_one:
            out.append("--fault vote-off-by-one")
        if self.quorum_off_by_one:
            out.append("--fault quorum-off-by-one")
        return out


class _Figure8Log(RaftLog):
    """Commits whatever a majority holds, whatever its term (the bug of the paper's Figure 8)."""

    __slots__ = ()

    def maybe_commit(self, index: int, term: int) -> bool:
        if index > self.committed:
            self.commit_to(index)
            return True
        return False


class _OffByOneVoteLog(RaftLog):
    """Thinks a candidate whose log is one entry shorter (same last term) is up to date."""

    __slots__ = ()

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        last_term = self.last_term()
        return term > last_term or (term == last_term and last_index + 1 >= self.last_index())


class _SmallQuorumTracker(ProgressTracker):
    """Counts an index committed when one voter fewer than a majority holds it."""

    __slots__ = ()

    def committed(self) -> int:
        if not self.voters:
            return 0
        matches = sorted((self.progress[v].match for v in self.voters), reverse=True)
        return matches[max(0, self.quorum() - 2)]


def _plant_core_faults(raft: RaftNode, faults: Faults) -> None:
    """Swap in a broken log or tracker (same layout, one method changed): self-tests only."""
    if faults.commit_earlier_terms:
        raft._log.__class__ = _Figure8Log
    if faults.vote_off_by_one:
        raft._log.__class__ = _OffByOneVoteLog
    if faults.quorum_off_by_one:
        raft._trk.__class__ = _SmallQuorumTracker


def replay_command(
    seed: int,
    steps: int,
    faults: Faults | None = None,
    options: CheckerOptions | None = None,
    bootstrap: str | None = None,
    chaos: bool = False,
    pipeline: bool = True,
    stale_leader: bool = False,
) -> str:
    parts = ["python -m tests.raft.soak", f"--seed {seed}", f"--steps {steps}"]
    if chaos:
        parts.append("--chaos")
    if stale_leader:
        parts.append("--stale-leader")
    if not pipeline:
        parts.append("--atomic")
    parts += (faults or Faults()).flags()
    if options is not None and not options.hard_state_checks:
        parts.append("--no-hard-state-checks")
    if options is not None and not options.config_checks:
        parts.append("--no-config-checks")
    if bootstrap is not None:
        parts.append(f"--bootstrap {bootstrap}")
    parts.append("--verbose")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------
# The application state machine
# ----------------------------------------------------------------------------------------

_REC = struct.Struct(">QBI")


@dataclass(slots=True)
class AppState:
    """A member's state machine: the list of every entry applied. Durable, with `applied`."""

    applied: int = 0
    history: list[EntryRecord] = field(default_factory=list)  # history[i - 1] is index i
    conf_state: ConfState = field(default_factory=ConfState)

    def encode(self) -> bytes:
        return b"".join(_REC.pack(t, k, len(d)) + d for t, k, d in self.history)

    @staticmethod
    def decode(data: bytes) -> list[EntryRecord]:
        out: list[EntryRecord] = []
        pos = 0
        while pos < len(data):
            term, kind, size = _REC.unpack_from(data, pos)
            pos += _REC.size
            out.append((term, kind, bytes(data[pos : pos + size])))
            pos += size
        return out


# ----------------------------------------------------------------------------------------
# Members and the network
# ----------------------------------------------------------------------------------------


class CrashPoint(enum.Enum):
    """Where inside a Ready a crash strikes."""

    AFTER_PERSIST = "after persisting, before sending"
    AFTER_SEND = "after sending, before applying"
    MID_APPLY = "in the middle of applying"
    BEFORE_ADVANCE = "after applying, before advance"


class Stage(enum.IntEnum):
    """How far the runtime got with a Ready it took (the contract's order)."""

    TAKEN = 0
    PERSISTED = 1
    SENT = 2
    APPLIED = 3  # committed entries applied and read states released


@dataclass(slots=True)
class Taken:
    """A Ready the runtime took, with the role and term its node had at ready()."""

    rd: Ready
    role: Role
    term: int
    stage: Stage = Stage.TAKEN
    applied_upto: int = 0  # how many committed entries are applied (within APPLIED's stage)


@dataclass(slots=True)
class SimNode:
    """One member: its durable storage and state machine, and (while up) its Raft core."""

    id: int
    storage: MemoryStorage
    app: AppState
    raft: RaftNode | None = None
    incarnation: int = 0
    retired: bool = False  # shut down because it is no longer a member (liveness phase)
    pending_reads: list[ReadState] = field(default_factory=list)
    # Readies taken from the core and not advanced yet, oldest first (pipeline mode).
    inflight: list[Taken] = field(default_factory=list)
    # The last ReadIndex context this member used. Durable, like the runtime's per-run base:
    # a member never reuses a context, but different members may use the same one.
    read_ctx: int = 0

    @property
    def up(self) -> bool:
        return self.raft is not None

    def core(self) -> RaftNode:
        assert self.raft is not None, f"node {self.id} is down"
        return self.raft


@dataclass(slots=True)
class Packet:
    msg: Message
    sender_incarnation: int
    not_before: int = 0  # step before which a delayed packet is not delivered
    # A delayed packet is already past the links: a partition made later does not stop it
    # (a message held up in a queue on the way arrives after the network split).
    in_transit: bool = False


class Network:
    """In-flight packets and the set of cut (directed) links."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.blocked: set[tuple[int, int]] = set()

    def connected(self, a: int, b: int) -> bool:
        return (a, b) not in self.blocked

    def cut(self, a: int, b: int) -> None:
        self.blocked.add((a, b))

    def heal(self) -> None:
        self.blocked.clear()

    def split(self, side: set[int], ids: list[int]) -> None:
        """Cut every link between `side` and the rest of `ids`, both ways."""
        for a in ids:
            for b in ids:
                if (a in side) != (b in side):
                    self.cut(a, b)


@dataclass(slots=True)
class Stats:
    steps: int = 0
    ticks: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    proposals: int = 0
    proposals_dropped: int = 0
    reads_requested: int = 0
    reads_released: int = 0
    crashes: int = 0
    mid_ready_crashes: int = 0
    calls_mid_ready: int = 0  # calls into a core while a Ready it returned is not advanced
    second_readies: int = 0  # Readies taken while an earlier one was not advanced
    restarts: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    conf_changes_proposed: int = 0
    conf_changes_applied: int = 0
    transfers: int = 0
    partitions: int = 0
    elections: int = 0
    max_term: int = 0
    committed: int = 0
    liveness_ticks: int = 0

    def add(self, other: Stats) -> None:
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, max(mine, theirs) if name == "max_term" else mine + theirs)


# ----------------------------------------------------------------------------------------
# The simulation
# ----------------------------------------------------------------------------------------


class Simulation:
    """A cluster of simulated members on a simulated network, driven step by step.

    The random schedule (`run`) and the scripted scenarios in the tests use the same
    primitives: `tick`, `deliver_all`, `flush`, `crash`, `restart`, `isolate`, `heal`,
    `propose`, `stabilize`...
    """

    def __init__(
        self,
        params: ScheduleParams,
        *,
        faults: Faults | None = None,
        options: CheckerOptions | None = None,
        trace: TraceFn | None = None,
    ) -> None:
        self.params = params
        self.faults = faults or Faults()
        self.rng = random.Random(params.seed)
        self.checker = SafetyChecker(options)
        self.net = Network()
        self.nodes: dict[int, SimNode] = {}
        self.stats = Stats()
        self.step_no = 0
        self._trace = trace
        self.liveness_mode = False  # former members are shut down, crashed ones restarted
        self._counter = 0
        self._latest_read_ctx = 0
        self._answered_ctx: list[int] = []  # contexts of released reads, latest last
        self._names = [name for name, _ in params.weights]
        self._cum_weights: list[float] = []
        total = 0.0
        for _, w in params.weights:
            total += w
            self._cum_weights.append(total)
        self._actions: dict[str, Callable[[], None]] = {
            name: getattr(self, f"_act_{name}") for name in ACTIONS
        }
        initial = ConfState(voters=frozenset(range(1, params.cluster_size + 1)))
        for node_id in sorted(initial.voters):
            if params.bootstrap == "snapshot":
                self._add_node(node_id, *_bootstrap_snapshot(initial))
            else:
                self._add_node(node_id, MemoryStorage(conf_state=initial), AppState(0, [], initial))
        self.next_id = params.cluster_size + 1

    # -- helpers -------------------------------------------------------------------------

    def trace(self, text: str) -> None:
        if self._trace is not None:
            self._trace(f"[{self.step_no:5d}] {text}")

    def _next_payload(self, prefix: str) -> bytes:
        self._counter += 1
        return f"{prefix}{self._counter}".encode()

    def _config(self, node: SimNode) -> Config:
        p = self.params
        return Config(
            id=node.id,
            rng=random.Random(self.rng.getrandbits(64)),
            election_tick=p.election_tick,
            heartbeat_tick=p.heartbeat_tick,
            applied=node.app.applied,
            max_size_per_msg=p.max_size_per_msg,
            max_committed_size_per_ready=p.max_committed_size_per_ready,
            max_inflight_msgs=p.max_inflight_msgs,
            max_inflight_bytes=p.max_inflight_bytes,
            max_uncommitted_entries_size=p.max_uncommitted_entries_size,
            check_quorum=p.check_quorum,
            pre_vote=p.pre_vote,
        )

    def _storages(self, node_id: int) -> MemoryStorage | None:
        node = self.nodes.get(node_id)
        return node.storage if node is not None else None

    def _add_node(self, node_id: int, storage: MemoryStorage, app: AppState) -> SimNode:
        node = SimNode(node_id, storage, app)
        self.nodes[node_id] = node
        node.raft = RaftNode(self._config(node), node.storage)
        _plant_core_faults(node.raft, self.faults)
        self.checker.on_restart(node_id)
        self._observe(node)
        return node

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def _shuffled_up(self) -> list[SimNode]:
        nodes = self.up_nodes()
        self.rng.shuffle(nodes)
        return nodes

    def _observe(self, node: SimNode) -> None:
        raft = node.core()
        if node.inflight:
            self.stats.calls_mid_ready += 1
        role, term = raft.role, raft.term
        if role is Role.LEADER and self.checker.leaders.get(term) is None:
            self.stats.elections += 1
            self.trace(f"node {node.id} becomes leader of term {term}")
        self.checker.observe_role(node.id, role, term)
        if role is Role.LEADER:
            st = raft.status()
            self.checker.observe_leader_commit(
                node.id, term, st.commit, st.conf_state.voters, self._storages
            )
        if term > self.stats.max_term:
            self.stats.max_term = term

    def leader(self) -> SimNode | None:
        """The up node that believes it leads the highest term, if any."""
        best: SimNode | None = None
        for node in self.up_nodes():
            raft = node.core()
            if raft.role is Role.LEADER and (best is None or raft.term > best.core().term):
                best = node
        return best

    def members(self, node: SimNode) -> frozenset[int]:
        cs = node.app.conf_state
        return cs.voters | cs.learners

    # -- the Ready loop: exactly what a runtime does ---------------------------------------

    def handle_ready(self, node: SimNode, crash_at: CrashPoint | None = None) -> None:
        """Finish the Readies already taken, then handle one more from start to end.

        With `crash_at`, the node stops at that point of the new Ready (the caller crashes it).
        """
        self.finish_inflight(node)
        taken = self.take(node)
        if crash_at is None:
            self.finish_inflight(node)
            return
        self.stage(node)  # persist
        if crash_at is CrashPoint.AFTER_PERSIST:
            return
        self.stage(node)  # send
        if crash_at is CrashPoint.AFTER_SEND:
            return
        cut = self.rng.randint(0, len(taken.rd.committed_entries))
        if crash_at is CrashPoint.MID_APPLY:
            self._apply_some(node, taken, cut)
            return
        self.stage(node)  # apply (crash before advance)

    def take(self, node: SimNode) -> Taken:
        """ready(): the node's next Ready joins the ones it has taken and not advanced."""
        raft = node.core()
        taken = Taken(raft.ready(), raft.role, raft.term)
        if node.inflight:
            self.stats.second_readies += 1
        node.inflight.append(taken)
        return taken

    def stage(self, node: SimNode) -> None:
        """One more stage of the oldest Ready taken: persist, send, apply, or advance.

        Readies go through each stage in the order they were taken (the contract).
        """
        taken = node.inflight[0]
        rd = taken.rd
        if taken.stage is Stage.TAKEN:
            self._persist(node, rd, taken.role, taken.term)
            taken.stage = Stage.PERSISTED
        elif taken.stage is Stage.PERSISTED:
            for m in rd.messages:
                self._send(node, m)
            taken.stage = Stage.SENT
        elif taken.stage is Stage.SENT:
            self._apply_some(node, taken, len(rd.committed_entries))
            if rd.read_states:
                node.pending_reads.extend(rd.read_states)
            if node.pending_reads:
                self._release_reads(node)
            taken.stage = Stage.APPLIED
        else:
            node.inflight.pop(0)
            raft = node.core()
            raft.advance(rd)
            self._observe(node)
            self.checker.observe_commit(node.id, raft.status().commit)

    def _apply_some(self, node: SimNode, taken: Taken, upto: int) -> None:
        entries = taken.rd.committed_entries
        while taken.applied_upto < upto:
            self._apply(node, entries[taken.applied_upto], taken.term)
            taken.applied_upto += 1

    def finish_inflight(self, node: SimNode) -> None:
        """Persist, send, apply and advance every Ready the node has taken."""
        while node.inflight:
            self.stage(node)

    def _pipeline_work(self, node: SimNode) -> None:
        """Some of the runtime's work on `node`: take Readies, move the oldest on a stage or
        to its end; a random amount, so that other steps fall between any two of them."""
        raft = node.core()
        while True:
            head = node.inflight[0] if node.inflight else None
            if (
                head is not None
                and head.stage is Stage.SENT
                and head.rd.committed_entries
                and self.rng.random() < self.params.apply_hold_prob
            ):
                return  # still assembling the transaction that applies them
            can_take = len(node.inflight) < self.params.max_outstanding and raft.has_ready()
            if node.inflight and (not can_take or self.rng.random() < 0.6):
                if self.rng.random() < 0.3:
                    self.finish_inflight(node)
                else:
                    self.stage(node)
            elif can_take:
                self.take(node)
            else:
                return
            if self.rng.random() < 0.35:
                return

    def _persist(self, node: SimNode, rd: Ready, role: Role, term: int) -> None:
        storage, checker = node.storage, self.checker
        snap = rd.snapshot
        if snap is not None and not snap.is_empty():
            history = AppState.decode(snap.data)
            checker.on_snapshot(node.id, term, node.app.applied, snap, history)
            storage.apply_snapshot(snap)
            node.app = AppState(snap.meta.index, history, snap.meta.conf_state)
            self.stats.snapshots_installed += 1
            self.trace(f"node {node.id} installs snapshot {snap.meta.index}/{snap.meta.term}")
        if rd.entries:
            checker.before_append(node.id, storage, rd.entries, role, term)
            storage.append(rd.entries)
            checker.after_append(node.id, storage, rd.entries)
        if rd.hard_state is not None:
            checker.on_hard_state(node.id, rd.hard_state)
            storage.set_hard_state(rd.hard_state)
        checker.after_persist(node.id, storage, role, term)

    def _apply(self, node: SimNode, entry: Entry, term: int) -> None:
        raft = node.core()
        self.checker.on_apply(node.id, term, node.app.applied, entry)
        if entry.type == EntryType.CONF_CHANGE:
            cc = ConfChange.decode(entry.data)
            cs = raft.apply_conf_change(cc)
            node.storage.set_conf_state(cs)
            node.app.conf_state = cs
            self.checker.on_conf_applied(node.id, entry.index, cs)
            self.stats.conf_changes_applied += 1
            self.trace(
                f"node {node.id} applies conf change {entry.index}: {cc.type.name} {cc.node_id} "
                f"-> voters={sorted(cs.voters)} learners={sorted(cs.learners)}"
            )
            self._observe(node)
        node.app.history.append(record_of(entry))
        node.app.applied = entry.index
        if entry.index > self.stats.committed:
            self.stats.committed = entry.index

    def _release_reads(self, node: SimNode) -> None:
        waiting: list[ReadState] = []
        for rs in node.pending_reads:
            if node.app.applied >= rs.index:
                self.checker.on_read_released(node.id, rs, node.app.applied)
                self.stats.reads_released += 1
                if self.params.stale_leader:
                    self._answered_ctx.append(int.from_bytes(rs.context, "big"))
            else:
                waiting.append(rs)
        node.pending_reads = waiting

    def process_readies(self, prob: float = 1.0) -> None:
        for node in self._shuffled_up():
            raft = node.core()
            busy = node.inflight or raft.has_ready()
            if not busy or (prob < 1.0 and self.rng.random() >= prob):
                continue
            if self.params.pipeline:
                self._pipeline_work(node)
            else:
                self.handle_ready(node)
            if node.raft is not None and not node.inflight and not node.raft.has_ready():
                self.checker.check_core_config(node.id, node.app.applied,
                                               node.raft.status().conf_state, node.app.conf_state)

    # -- the network -------------------------------------------------------------------------

    def _send(self, node: SimNode, m: Message) -> None:
        self.checker.on_send(node.id, node.storage, m)
        if not self.net.connected(m.from_, m.to):
            self._lost(m, node.incarnation)
            return
        self.net.packets.append(Packet(m, node.incarnation))
        if len(self.net.packets) > MAX_PACKETS:
            old = self.net.packets.pop(0)
            self._lost(old.msg, old.sender_incarnation)

    def _lost(self, m: Message, sender_incarnation: int) -> None:
        """What the sender's transport notices when a message does not get through."""
        self.stats.dropped += 1
        sender = self.nodes.get(m.from_)
        if sender is None or sender.raft is None or sender.incarnation != sender_incarnation:
            return
        if m.type == MessageType.SNAP:
            sender.raft.report_snapshot(m.to, False)
            self._observe(sender)
        elif self.rng.random() < 0.2:
            sender.raft.report_unreachable(m.to)
            self._observe(sender)

    def deliver(self, pkt: Packet) -> None:
        m = pkt.msg
        target = self.nodes.get(m.to)
        cut = not pkt.in_transit and not self.net.connected(m.from_, m.to)
        if target is None or target.raft is None or cut:
            self._lost(m, pkt.sender_incarnation)
            return
        self.stats.delivered += 1
        if self._trace is not None:
            self.trace(f"deliver {_fmt_msg(m)}")
        with contextlib.suppress(ProposalDropped):
            target.raft.step(replace(m))
        self._observe(target)
        if m.type == MessageType.SNAP:
            sender = self.nodes.get(m.from_)
            live = sender is not None and sender.raft is not None
            if live and sender is not None and sender.incarnation == pkt.sender_incarnation:
                sender.core().report_snapshot(m.to, True)
                self._observe(sender)

    def _pick_packet(self) -> int | None:
        """Index of a deliverable packet: usually the oldest, sometimes any (reordering)."""
        ready = [i for i, p in enumerate(self.net.packets) if p.not_before <= self.step_no]
        if not ready:
            return None
        return ready[0] if self.rng.random() < 0.5 else self.rng.choice(ready)

    def deliver_all(self) -> int:
        """Deliver every packet in flight, in order (undelayed, fault-free network)."""
        packets, self.net.packets = self.net.packets, []
        for pkt in packets:
            self.deliver(pkt)
        return len(packets)

    # -- scripted primitives (also used by the tests) ----------------------------------------

    def tick(self, node: SimNode) -> None:
        node.core().tick()
        self._observe(node)

    def tick_all(self) -> None:
        for node in sorted(self.up_nodes(), key=lambda n: n.id):
            self.tick(node)
        self.stats.ticks += 1

    def flush(self, max_rounds: int = 2000) -> None:
        """Handle every Ready and deliver every packet until the cluster is quiet."""
        for _ in range(max_rounds):
            busy = False
            for node in sorted(self.up_nodes(), key=lambda n: n.id):
                if node.inflight:
                    self.finish_inflight(node)
                    busy = True
                if node.raft is not None and node.raft.has_ready():
                    self.handle_ready(node)
                    busy = True
            if self.net.packets:
                self.deliver_all()
                busy = True
            if not busy:
                return
        raise Violation(Kind.LIVENESS, f"the cluster never goes quiet ({max_rounds} rounds)")

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.net.cut(node_id, other)
                self.net.cut(other, node_id)
        self.trace(f"isolate node {node_id}")

    def heal(self) -> None:
        self.net.heal()
        self.trace("heal all links")

    def crash(self, node: SimNode, at: CrashPoint | None = None) -> None:
        if node.inflight:
            stages = [t.stage.name for t in node.inflight]
            self.trace(f"node {node.id} crashes with Readies taken and not advanced: {stages}")
            self.stats.mid_ready_crashes += 1
        elif at is not None:
            self.trace(f"node {node.id} crashes {at.value}")
            self.handle_ready(node, crash_at=at)
            self.stats.mid_ready_crashes += 1
        else:
            self.trace(f"node {node.id} crashes")
        node.raft = None
        node.inflight = []
        node.pending_reads = []
        self.stats.crashes += 1
        if self.faults.lose_unapplied_tail_on_crash:
            node.storage = _without_uncommitted_tail(node.storage, node.app.applied)

    def restart(self, node: SimNode) -> None:
        assert node.raft is None
        node.incarnation += 1
        if self.faults.forget_vote_on_restart:
            hs, _ = node.storage.initial_state()
            node.storage.set_hard_state(HardState(hs.term, 0, hs.commit))
        self.checker.on_restart(node.id)
        node.raft = RaftNode(self._config(node), node.storage)
        _plant_core_faults(node.raft, self.faults)
        self.stats.restarts += 1
        self.trace(f"node {node.id} restarts (applied {node.app.applied})")
        self._observe(node)

    def propose(self, node: SimNode, data: bytes) -> bool:
        self.stats.proposals += 1
        try:
            node.core().propose(data)
        except ProposalDropped as e:
            self.stats.proposals_dropped += 1
            self.trace(f"node {node.id} drops proposal {data!r}: {e.reason.name}")
            return False
        finally:
            self._observe(node)
        self.trace(f"node {node.id} proposes {data!r}")
        return True

    def propose_conf_change(self, node: SimNode, cc: ConfChange) -> bool:
        self.stats.conf_changes_proposed += 1
        try:
            node.core().propose_conf_change(cc)
        except ProposalDropped as e:
            self.trace(f"node {node.id} drops conf change {cc.type.name} {cc.node_id}: {e}")
            return False
        finally:
            self._observe(node)
        self.trace(f"node {node.id} proposes conf change {cc.type.name} {cc.node_id}")
        return True

    def start_new_member(self, node_id: int) -> SimNode:
        """Start a node with empty storage (it learns the configuration from the leader)."""
        assert node_id not in self.nodes
        self.next_id = max(self.next_id, node_id + 1)
        self.trace(f"node {node_id} starts with empty storage")
        return self._add_node(node_id, MemoryStorage(), AppState())

    def run_until(self, done: Callable[[], bool], max_ticks: int, what: str = "") -> int:
        """Flush and tick a fault-free cluster until `done()`; the ticks it took (bounded)."""
        for ticks in range(max_ticks + 1):
            self.flush()
            if done():
                return ticks
            self.tick_all()
        raise Violation(
            Kind.LIVENESS, f"not done within {max_ticks} ticks: {what}{self._summary()}"
        )

    def stable_leader(self) -> SimNode | None:
        """A leader whose every up voter follows it in its term."""
        leader = self.leader()
        if leader is None:
            return None
        raft = leader.core()
        for vid in raft.status().conf_state.voters:
            voter = self.nodes.get(vid)
            if voter is None or voter.raft is None:
                continue
            if voter.raft.leader != leader.id or voter.raft.term != raft.term:
                return None
        return leader

    def liveness_bound(self) -> int:
        """Ticks within which a fault-free cluster must elect a leader (and then commit).

        With PreVote a node that cannot win never disturbs the others, so elections settle
        within a few timeouts. Without it, a member with a stale log keeps starting elections
        it cannot win, each one resetting everyone's timer: the electable member then wins
        each round only by drawing the shorter timeout (~40-50% with election_tick 5), so
        the bound is looser (a failure then means ~33 lost draws in a row: p < 1e-7).
        """
        return (20 if self.params.pre_vote else 50) * self.params.election_tick

    def stabilize(self, max_ticks: int | None = None) -> SimNode:
        """Tick a fault-free cluster until it has a stable leader (liveness, bounded)."""
        bound = max_ticks if max_ticks is not None else self.liveness_bound()
        for _ in range(bound + 1):
            self.flush()
            if self.liveness_mode:
                self._retire_non_members()
            leader = self.stable_leader()
            if leader is not None:
                return leader
            self.tick_all()
            self.stats.liveness_ticks += 1
        raise Violation(Kind.LIVENESS, f"no stable leader within {bound} ticks{self._summary()}")

    def wait_applied_everywhere(self, data: bytes, max_ticks: int | None = None) -> int:
        """Propose `data` through the leader until every member has applied it.

        "Every member" is every up node in the stable leader's configuration (voters and
        learners). Returns the index `data` was committed at.
        """
        bound = max_ticks if max_ticks is not None else self.liveness_bound()
        proposed_to: tuple[int, int] | None = None
        for _ in range(bound + 1):
            self.flush()
            if self.liveness_mode:
                self._retire_non_members()
            index = self.checker.payload_index.get(data)
            leader = self.stable_leader()
            if index is not None and leader is not None:
                cs = leader.core().status().conf_state
                members = cs.voters | cs.learners
                if all(n.app.applied >= index for n in self.up_nodes() if n.id in members):
                    return index
            if index is None and leader is not None:
                key = (leader.id, leader.core().term)
                if key != proposed_to and self.propose(leader, data):
                    proposed_to = key
                    continue
            self.tick_all()
            self.stats.liveness_ticks += 1
        where = self.checker.payload_index.get(data)
        raise Violation(
            Kind.LIVENESS,
            f"proposal {data!r} (index {where}) not applied by every member within {bound} "
            f"ticks{self._summary()}",
        )

    def _summary(self) -> str:
        parts = []
        for node in sorted(self.nodes.values(), key=lambda n: n.id):
            if node.raft is None:
                parts.append(f"{node.id}:down" + (" (retired)" if node.retired else ""))
                continue
            st = node.raft.status()
            parts.append(
                f"{node.id}:{st.role.name} term={st.term} lead={st.leader} commit={st.commit} "
                f"applied={node.app.applied} last={node.storage.last_index()} "
                f"conf=v{sorted(st.conf_state.voters)}l{sorted(st.conf_state.learners)}"
            )
        return " [" + "; ".join(parts) + "]"

    # -- the random schedule -----------------------------------------------------------------

    def step(self) -> None:
        self.step_no += 1
        self.stats.steps += 1
        name = self.rng.choices(self._names, cum_weights=self._cum_weights)[0]
        self._actions[name]()
        self.process_readies(self.params.ready_prob)
        for node in self.up_nodes():
            self.checker.observe_commit(node.id, node.core().status().commit)
        if self.step_no % self.params.full_scan_every == 0:
            self.full_scan()

    def full_scan(self) -> None:
        for node in self.nodes.values():
            self.checker.full_scan(node.id, node.storage)

    def run(self) -> None:
        for _ in range(self.params.steps):
            self.step()
        self.full_scan()
        self.liveness_phase()
        self.full_scan()

    def liveness_phase(self) -> None:
        """Stop all faults; a leader must emerge and a new proposal reach every member."""
        self.trace("liveness phase: heal, restart, no more faults")
        self.liveness_mode = True
        self.net.heal()
        for pkt in self.net.packets:
            pkt.not_before = 0
        for _ in range(3):  # pending membership changes may commit meanwhile: repeat then
            members = self._retire_non_members()
            self.stabilize()
            self.wait_applied_everywhere(self._next_payload("live-"))
            if self._retire_non_members() == members:
                break
        self.wait_reads_everywhere()

    def wait_reads_everywhere(self, max_ticks: int | None = None) -> None:
        """Every member of the leader's configuration reads, all with the same context; on a
        fault-free network each must get its read state (none may be dropped)."""
        bound = max_ticks if max_ticks is not None else self.liveness_bound()
        asked: dict[int, bytes] = {}
        asked_of: tuple[int, int] | None = None
        for _ in range(bound + 1):
            self.flush()
            leader = self.stable_leader()
            if leader is not None:
                key = (leader.id, leader.core().term)
                if key != asked_of or not asked:  # a new leader may have lost them: ask again
                    asked_of, asked = key, {}
                    cs = leader.core().status().conf_state
                    members = [self.nodes[i] for i in sorted(cs.voters | cs.learners)]
                    ctx = 1 + max(n.read_ctx for n in self.nodes.values())
                    for node in members:
                        if node.raft is not None:
                            node.read_ctx = ctx
                            if self.read_index(node, ctx):
                                asked[node.id] = ctx.to_bytes(8, "big")
                    continue
                released = self.checker.released_contexts
                if asked and all((i, c) in released for i, c in asked.items()):
                    return
            self.tick_all()
            self.stats.liveness_ticks += 1
        released = self.checker.released_contexts
        missing = sorted(i for i, c in asked.items() if (i, c) not in released)
        raise Violation(
            Kind.LIVENESS,
            f"reads at members {missing} never answered within {bound} ticks{self._summary()}",
        )

    def _retire_non_members(self) -> frozenset[int]:
        """Members of the most advanced applied configuration run; former members stop.

        A removed member is decommissioned (shut down for good, as a real one is) once every
        remaining member has applied its removal; until then it keeps running, so the others
        can still learn that the removal committed. Crashed members are restarted.
        """
        newest = max(self.nodes.values(), key=lambda n: (n.app.applied, -n.id))
        members = self.members(newest)
        for node in sorted(self.nodes.values(), key=lambda n: n.id):
            removed_everywhere = node.id not in members and all(
                node.id not in self.members(self.nodes[m]) for m in members
            )
            if not removed_everywhere:
                node.retired = False
                if node.raft is None:
                    self.restart(node)
            elif not node.retired:
                node.retired = True
                if node.raft is not None:
                    self.trace(f"node {node.id} is not a member: shut down")
                    node.raft = None
                    node.inflight = []
                    node.pending_reads = []
        return members

    # -- actions ---------------------------------------------------------------------------

    def _random_up(self) -> SimNode | None:
        nodes = self.up_nodes()
        return self.rng.choice(nodes) if nodes else None

    def _act_tick_all(self) -> None:
        self.tick_all()

    def _act_tick_one(self) -> None:
        node = self._random_up()
        if node is not None:
            self.tick(node)

    def _act_deliver(self) -> None:
        n = len(self.net.packets)
        if n == 0:
            return
        for _ in range(self.rng.randint(1, max(1, min(n, 12)))):
            i = self._pick_packet()
            if i is None:
                return
            self.deliver(self.net.packets.pop(i))

    def _act_drop(self) -> None:
        if self.net.packets:
            pkt = self.net.packets.pop(self.rng.randrange(len(self.net.packets)))
            self.trace(f"drop {_fmt_msg(pkt.msg)}")
            self._lost(pkt.msg, pkt.sender_incarnation)

    def _act_duplicate(self) -> None:
        if self.net.packets:
            pkt = self.rng.choice(self.net.packets)
            self.stats.duplicated += 1
            self.trace("duplicate:")
            self.deliver(pkt)

    def _act_delay(self) -> None:
        if self.params.stale_leader and self._delay_heartbeat_answers():
            return
        if self.net.packets:
            pkt = self.rng.choice(self.net.packets)
            longest = 60 if self.rng.random() < 0.7 else 250
            pkt.not_before = self.step_no + self.rng.randint(5, longest)
            pkt.in_transit = self.rng.random() < 0.5
            self.trace(f"delay {_fmt_msg(pkt.msg)} until step {pkt.not_before}")

    def _delay_heartbeat_answers(self) -> bool:
        """Hold up, in transit, one member's heartbeat answers to a leader (stale_leader);
        answers of read rounds (a non-empty context) first."""
        acks = [p for p in self.net.packets if p.msg.type == MessageType.HEARTBEAT_RESP]
        acks = [p for p in acks if p.msg.context] or acks
        if not acks:
            return False
        sender = self.rng.choice(acks).msg.from_
        until = self.step_no + self.rng.randint(20, 250)
        for pkt in acks:
            if pkt.msg.from_ == sender:
                pkt.not_before = until
                pkt.in_transit = True
        self.trace(f"delay node {sender}'s heartbeat answers until step {until}")
        return True

    def _act_propose(self) -> None:
        leader = self.leader()
        node = leader if leader is not None and self.rng.random() < 0.7 else self._random_up()
        if node is None:
            return
        if self.rng.random() < 0.2:
            batch = [self._next_payload("w") for _ in range(self.rng.randint(2, 5))]
            self.stats.proposals += 1
            try:
                node.core().propose_batch(batch)
                self.trace(f"node {node.id} proposes batch {batch!r}")
            except ProposalDropped as e:
                self.stats.proposals_dropped += 1
                self.trace(f"node {node.id} drops batch: {e.reason.name}")
            self._observe(node)
        else:
            self.propose(node, self._next_payload("w"))

    def _act_read_index(self) -> None:
        leaders = [n for n in self.up_nodes() if n.core().role is Role.LEADER]
        followers = [n for n in self.up_nodes() if n.core().role is not Role.LEADER]
        # stale_leader: clients ask followers while one leader leads (their contexts name its
        # rounds) and keep asking the old leader once another is elected.
        share = (0.8 if len(leaders) > 1 else 0.0) if self.params.stale_leader else 0.3
        node: SimNode | None
        if leaders and self.rng.random() < share:
            # A client that still talks to the leader it knows: the oldest one, if several.
            node = min(leaders, key=lambda n: (n.core().term, n.id))
        elif self.params.stale_leader and followers and self.rng.random() < 0.9:
            node = self.rng.choice(followers)
        else:
            node = self._random_up()
        if node is None:
            return
        # stale_leader: a member often asks with a context another member already had
        # answered (one this member never used, so each (member, context) is asked once).
        if self.params.stale_leader and self._answered_ctx and self.rng.random() < 0.7:
            recent = self._answered_ctx[-8:]
            for ctx in (self.rng.choice(recent), *reversed(recent)):
                if (node.id, ctx.to_bytes(8, "big")) not in self.checker.reads:
                    node.read_ctx = max(node.read_ctx, ctx)  # its own counter never goes back
                    self.read_index(node, ctx)
                    return
        # Each member counts its own contexts (never reusing one); half the time it jumps to
        # the latest context any member used, so that members often ask with the same one.
        latest = self._latest_read_ctx
        if latest > node.read_ctx and self.rng.random() < 0.5:
            node.read_ctx = latest
        else:
            node.read_ctx += 1
        self.read_index(node, node.read_ctx)

    def read_index(self, node: SimNode, ctx_number: int) -> bool:
        """Ask `node` for a read index with context `ctx_number`; False if refused at once."""
        ctx = ctx_number.to_bytes(8, "big")
        self._latest_read_ctx = ctx_number
        self.checker.on_read_requested(node.id, ctx)
        self.stats.reads_requested += 1
        try:
            node.core().read_index(ctx)
            self.trace(f"node {node.id} read_index {ctx_number} (floor {self.checker.max_applied})")
            return True
        except ProposalDropped as e:
            self.trace(f"node {node.id} drops read {ctx_number}: {e.reason.name}")
            return False
        finally:
            self._observe(node)

    def _act_partition(self) -> None:
        ids = sorted(self.nodes)
        if len(ids) < 2:
            return
        self.stats.partitions += 1
        leader = self.leader()
        if self.params.stale_leader and leader is not None and self.rng.random() < 0.7:
            # The leader keeps a minority: the rest can elect another and write without it.
            self.net.heal()  # a clean split, not piled on earlier cuts
            others = [i for i in ids if i != leader.id]
            side = {leader.id, *self.rng.sample(others, max(0, (len(ids) - 1) // 2 - 1))}
            self.net.split(side, ids)
            self.trace(f"partition leader's side {sorted(side)} | {sorted(set(ids) - side)}")
            return
        kind = self.rng.random()
        if kind < 0.4:
            side = {i for i in ids if self.rng.random() < 0.5}
            self.net.split(side, ids)
            self.trace(f"partition {sorted(side)} | {sorted(set(ids) - side)}")
        elif kind < 0.75:
            leader = self.leader()
            victim = leader.id if leader is not None and self.rng.random() < 0.6 else None
            self.isolate(victim if victim is not None else self.rng.choice(ids))
        else:
            a, b = self.rng.sample(ids, 2)
            self.net.cut(a, b)
            self.trace(f"cut link {a} -> {b} (one way)")

    def _act_heal(self) -> None:
        if not self.net.blocked:
            return
        if self.rng.random() < 0.6:
            self.heal()
        else:
            link = self.rng.choice(sorted(self.net.blocked))
            self.net.blocked.discard(link)
            self.net.blocked.discard((link[1], link[0]))
            self.trace(f"heal link {link[0]} <-> {link[1]}")

    def _act_crash(self) -> None:
        busy = [n for n in self.up_nodes() if n.inflight or n.core().has_ready()]
        at: CrashPoint | None = None
        if busy and self.rng.random() < self.params.mid_ready_crash_prob:
            node: SimNode | None = self.rng.choice(busy)  # strike inside its pending Ready
            at = self.rng.choice(list(CrashPoint))
        else:
            node = self._random_up()
        if node is None:
            return
        self.crash(node, at)
        # Packets it already sent may or may not be lost with it.
        if self.rng.random() < 0.5:
            self.net.packets = [p for p in self.net.packets if p.msg.from_ != node.id]

    def _act_bounce(self) -> None:
        """A quick restart: crash and come back while its packets are still in flight."""
        node = self._random_up()
        if node is not None:
            self.crash(node)
            self.restart(node)

    def _act_restart(self) -> None:
        down = [n for n in self.nodes.values() if n.raft is None and not n.retired]
        if down:
            self.restart(self.rng.choice(down))

    def _act_snapshot(self) -> None:
        node = self._random_up()
        if node is None:
            return
        storage, app = node.storage, node.app
        snap_index = storage.snapshot().meta.index
        if app.applied <= snap_index:
            return
        storage.create_snapshot(app.applied, app.conf_state, app.encode())
        offset = storage.first_index() - 1
        keep = self.rng.choice((0, 2, 10))
        compact_to = max(offset + 1, app.applied - keep)
        if compact_to <= app.applied:
            storage.compact(compact_to)
        self.stats.snapshots_taken += 1
        self.trace(f"node {node.id} snapshots at {app.applied}, compacts to {compact_to}")

    def _act_transfer_leader(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        targets = sorted(self.nodes)
        target = self.rng.choice(targets)
        self.stats.transfers += 1
        try:
            leader.core().transfer_leader(target)
            self.trace(f"leader {leader.id} transfers leadership to {target}")
        except ProposalDropped as e:
            self.trace(f"leader {leader.id} refuses transfer to {target}: {e.reason.name}")
        self._observe(leader)

    def _act_membership(self) -> None:
        leader = self.leader()
        proposer = leader if leader is not None and self.rng.random() < 0.8 else self._random_up()
        if proposer is None:
            return
        cs = proposer.app.conf_state
        members = cs.voters | cs.learners
        options: list[tuple[ConfChangeType, int]] = []
        if len(self.nodes) < self.params.max_nodes:
            options.append((ConfChangeType.ADD_LEARNER, self.next_id))
        for node_id in sorted(self.nodes):
            if node_id not in members:
                options.append((ConfChangeType.ADD_LEARNER, node_id))  # re-add, data kept
        options += [(ConfChangeType.ADD_VOTER, i) for i in sorted(cs.learners)]
        if len(cs.voters) > 1:
            options += [(ConfChangeType.ADD_LEARNER, i) for i in sorted(cs.voters)]
            options += [(ConfChangeType.REMOVE, i) for i in sorted(cs.voters)]
        options += [(ConfChangeType.REMOVE, i) for i in sorted(cs.learners)]
        if not options:
            return
        kind, node_id = self.rng.choice(options)
        if self.propose_conf_change(proposer, ConfChange(kind, node_id)) and (
            node_id == self.next_id
        ):
            self.start_new_member(node_id)
        elif node_id in self.nodes:
            node = self.nodes[node_id]
            if node.raft is None and kind is not ConfChangeType.REMOVE:
                node.retired = False
                self.restart(node)

    def _act_unreachable(self) -> None:
        node = self._random_up()
        if node is not None and len(self.nodes) > 1:
            other = self.rng.choice([i for i in sorted(self.nodes) if i != node.id])
            node.core().report_unreachable(other)
            self._observe(node)


def _bootstrap_snapshot(conf_state: ConfState) -> tuple[MemoryStorage, AppState]:
    """An initial member whose configuration is in a snapshot at index 1, term 1."""
    app = AppState(1, [(1, int(EntryType.NORMAL), b"")], conf_state)
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(SnapshotMeta(1, 1, conf_state), app.encode()))
    storage.set_hard_state(HardState(term=1, commit=1))
    return storage, app


def _without_uncommitted_tail(storage: MemoryStorage, applied: int) -> MemoryStorage:
    """A copy of `storage` that lost its entries above the commit index (a broken fsync).

    Those entries were persisted, so this member may have acknowledged them to a leader.
    """
    hs, cs = storage.initial_state()
    applied = max(applied, hs.commit)
    snap = storage.snapshot()
    copy = MemoryStorage(conf_state=cs)
    if not snap.is_empty():
        copy.apply_snapshot(snap)
    copy.set_conf_state(cs)
    keep_to = max(applied, storage.first_index() - 1)
    if keep_to >= storage.first_index():
        copy.append(storage.entries(storage.first_index(), keep_to + 1))
    copy.set_hard_state(HardState(hs.term, hs.vote, min(hs.commit, copy.last_index())))
    return copy


def _fmt_msg(m: Message) -> str:
    out = f"{m.type.name} {m.from_}->{m.to} t{m.term}"
    if m.type in (MessageType.APP, MessageType.APP_RESP, MessageType.SNAP):
        out += f" idx={m.index} lt={m.log_term} commit={m.commit}"
        if m.entries:
            out += f" ents={m.entries[0].index}..{m.entries[-1].index}"
        if m.reject:
            out += f" REJECT hint={m.reject_hint}"
        if m.snapshot is not None:
            out += f" snap={m.snapshot.meta.index}/{m.snapshot.meta.term}"
    elif m.type in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP) and m.context:
        out += f" ctx={int.from_bytes(m.context, 'big')}"  # a read's context, or a round
    elif m.type in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP) and m.reject:
        out += " REJECT"
    elif m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
        out += f" last={m.index}/{m.log_term}"
    return out


# ----------------------------------------------------------------------------------------
# Running one schedule
# ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ScheduleResult:
    seed: int
    steps: int
    ok: bool
    stats: Stats
    kind: str = ""
    message: str = ""
    replay: str = ""
    failed_at_step: int = 0

    def describe(self) -> str:
        return (
            f"seed {self.seed}: {self.message} (step {self.failed_at_step})\n"
            f"  replay: {self.replay}"
        )


def run_schedule(
    seed: int,
    steps: int = DEFAULT_STEPS,
    *,
    faults: Faults | None = None,
    options: CheckerOptions | None = None,
    trace: TraceFn | None = None,
    bootstrap: str | None = None,
    chaos: bool = False,
    pipeline: bool = True,
    stale_leader: bool = False,
) -> ScheduleResult:
    """Run one random schedule plus the liveness phase; never raises for a found bug."""
    params = ScheduleParams.from_seed(
        seed, steps, chaos=chaos, pipeline=pipeline, stale_leader=stale_leader
    )
    if bootstrap is not None:
        params = replace(params, bootstrap=bootstrap)
    replay = replay_command(seed, steps, faults, options, bootstrap, chaos, pipeline, stale_leader)
    sim: Simulation | None = None
    try:
        sim = Simulation(params, faults=faults, options=options, trace=trace)
        if trace is not None:
            trace(f"params: {params}")
        sim.run()
    except Violation as v:
        stats = sim.stats if sim is not None else Stats()
        return ScheduleResult(
            seed, steps, False, stats, v.kind, str(v), replay, sim.step_no if sim else 0
        )
    except Exception as e:  # the core (or the simulator) crashed: report it as a failure
        stats = sim.stats if sim is not None else Stats()
        tb = traceback.format_exception(e)
        where = "".join(tb[-3:]).strip().replace("\n", " | ")
        return ScheduleResult(
            seed,
            steps,
            False,
            stats,
            Kind.CORE_EXCEPTION,
            f"{type(e).__name__}: {e} [{where}]",
            replay,
            sim.step_no if sim else 0,
        )
    sim.stats.reads_released = sim.checker.reads_released
    return ScheduleResult(seed, steps, True, sim.stats)
