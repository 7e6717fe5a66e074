"""A small hand-driven cluster for scenario tests, in the style of etcd's raft_test.go.

Each member is a RaftNode over a MemoryStorage plus a toy application (the list of applied
payloads). ``process`` handles one Ready exactly as docs/internals/raft.md requires: persist
snapshot, entries and hard state; only then release the messages; apply committed entries in order
(conf changes through ``apply_conf_change``); release read states once applied; ``advance``.
Messages go into one FIFO ``wire`` that the test delivers, filters or drops explicitly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from embedkv.raft import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
)
from embedkv.raft.core import Config, RaftNode

MessageFilter = Callable[[Message], bool]


def encode_state(payloads: list[bytes]) -> bytes:
    return json.dumps([p.hex() for p in payloads]).encode()


def decode_state(data: bytes) -> list[bytes]:
    return [bytes.fromhex(h) for h in json.loads(data.decode())]


@dataclass
class Member:
    """One simulated process: durable storage, its Raft core and its applied state."""

    id: int
    storage: MemoryStorage
    config: Config
    raft: RaftNode
    applied_index: int = 0
    payloads: list[bytes] = field(default_factory=list)  # applied NORMAL entries with data
    applied_entries: list[Entry] = field(default_factory=list)
    conf_state: ConfState = field(default_factory=ConfState)
    conf_history: dict[int, ConfState] = field(default_factory=dict)  # index -> conf after it
    read_states: list[ReadState] = field(default_factory=list)  # released (applied >= index)
    waiting_reads: list[ReadState] = field(default_factory=list)
    readies: list[Ready] = field(default_factory=list)  # every Ready processed, for inspection


class Cluster:
    """Members plus an explicit network: nothing moves unless the test says so."""

    def __init__(
        self,
        voters: Iterable[int],
        learners: Iterable[int] = (),
        *,
        seed: int = 1,
        **overrides: object,
    ) -> None:
        self.seed = seed
        self.overrides = overrides
        self.members: dict[int, Member] = {}
        self.wire: list[Message] = []
        self.delivered: list[Message] = []
        self.dropped: list[Message] = []
        self.filters: list[MessageFilter] = []
        self.cut_links: set[tuple[int, int]] = set()
        cs = ConfState(voters=frozenset(voters), learners=frozenset(learners))
        for node_id in sorted(cs.voters | cs.learners):
            self.add_member(node_id, MemoryStorage(conf_state=cs))

    # -- membership of the simulation -----------------------------------------------------

    def make_config(self, node_id: int, applied: int = 0) -> Config:
        cfg = Config(id=node_id, rng=random.Random(self.seed * 1000 + node_id), applied=applied)
        for key, value in self.overrides.items():
            setattr(cfg, key, value)
        return cfg

    def add_member(self, node_id: int, storage: MemoryStorage | None = None) -> Member:
        """Start a process; a brand-new one gets empty storage (no configuration at all)."""
        storage = storage if storage is not None else MemoryStorage()
        config = self.make_config(node_id)
        member = Member(node_id, storage, config, RaftNode(config, storage))
        member.conf_state = storage.initial_state()[1]
        self.members[node_id] = member
        return member

    def restart(self, node_id: int) -> Member:
        """Crash and restart: keep storage and applied state, lose everything volatile."""
        old = self.members[node_id]
        config = self.make_config(node_id, applied=old.applied_index)
        old.raft = RaftNode(config, old.storage)
        old.config = config
        old.waiting_reads = []
        self.wire = [m for m in self.wire if m.to != node_id and m.from_ != node_id]
        return old

    def node(self, node_id: int) -> RaftNode:
        return self.members[node_id].raft

    # -- the Ready loop -----------------------------------------------------------------------

    def process(self, node_id: int) -> Ready | None:
        """Handle one Ready of `node_id` per the contract; its messages go on the wire."""
        rd = self.persist_and_send(node_id)
        if rd is not None:
            self.apply_and_advance(node_id, rd)
        return rd

    def persist_and_send(self, node_id: int) -> Ready | None:
        """The first half of `process`: take a Ready, persist it, put its messages on the
        wire. The core may be stepped before `apply_and_advance` (as the runtime does)."""
        member = self.members[node_id]
        raft = member.raft
        if not raft.has_ready():
            return None
        rd = raft.ready()
        member.readies.append(rd)
        storage = member.storage
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            storage.apply_snapshot(rd.snapshot)
            member.payloads = decode_state(rd.snapshot.data)
            member.applied_index = rd.snapshot.meta.index
            member.conf_state = rd.snapshot.meta.conf_state
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        self.wire.extend(rd.messages)
        return rd

    def apply_and_advance(self, node_id: int, rd: Ready) -> None:
        """The second half of `process`: apply, release reads, advance."""
        member = self.members[node_id]
        raft, storage = member.raft, member.storage
        for entry in rd.committed_entries:
            assert entry.index == member.applied_index + 1, "committed entries out of order"
            if entry.type is EntryType.CONF_CHANGE:
                cs = raft.apply_conf_change(ConfChange.decode(entry.data))
                storage.set_conf_state(cs)
                member.conf_state = cs
                member.conf_history[entry.index] = cs
            elif entry.data:
                member.payloads.append(entry.data)
            member.applied_entries.append(entry)
            member.applied_index = entry.index
        member.waiting_reads.extend(rd.read_states)
        still: list[ReadState] = []
        for rs in member.waiting_reads:
            (member.read_states if rs.index <= member.applied_index else still).append(rs)
        member.waiting_reads = still
        raft.advance(rd)

    def process_all(self) -> bool:
        busy = False
        for node_id in sorted(self.members):
            if self.process(node_id) is not None:
                busy = True
        return busy

    # -- the network --------------------------------------------------------------------------

    def blocked(self, m: Message) -> bool:
        if (m.from_, m.to) in self.cut_links:
            return True
        return any(f(m) for f in self.filters)

    def deliver(self, m: Message) -> None:
        if m.to not in self.members or self.blocked(m):
            self.dropped.append(m)
            return
        self.delivered.append(m)
        self.members[m.to].raft.step(m)

    def deliver_all(self) -> int:
        """Deliver everything on the wire (not what that produces); the count delivered."""
        batch, self.wire = self.wire, []
        for m in batch:
            self.deliver(m)
        return len(batch)

    def take(self, pred: Callable[[Message], bool]) -> list[Message]:
        """Remove and return matching messages from the wire without delivering them."""
        taken = [m for m in self.wire if pred(m)]
        self.wire = [m for m in self.wire if not pred(m)]
        return taken

    def stabilize(self, max_rounds: int = 10_000) -> None:
        """Process readies and deliver messages until nothing is left to do."""
        for _ in range(max_rounds):
            busy = self.process_all()
            if self.wire:
                self.deliver_all()
                busy = True
            if not busy:
                return
        raise AssertionError("cluster did not stabilize")

    def isolate(self, node_id: int) -> None:
        for other in self.members:
            if other != node_id:
                self.cut_links.add((node_id, other))
                self.cut_links.add((other, node_id))

    def partition(self, *groups: Iterable[int]) -> None:
        sets = [set(g) for g in groups]
        for a in self.members:
            for b in self.members:
                if a != b and not any(a in s and b in s for s in sets):
                    self.cut_links.add((a, b))

    def heal(self) -> None:
        self.cut_links.clear()
        self.filters.clear()

    def drop_types(self, *types: MessageType) -> MessageFilter:
        def f(m: Message) -> bool:
            return m.type in types

        self.filters.append(f)
        return f

    # -- time -----------------------------------------------------------------------------------

    def tick(self, node_id: int, n: int = 1) -> None:
        for _ in range(n):
            self.node(node_id).tick()

    def tick_all(self, n: int = 1, stabilize: bool = True) -> None:
        """Tick every member n times, stabilizing after each tick."""
        for _ in range(n):
            for node_id in sorted(self.members):
                self.node(node_id).tick()
            if stabilize:
                self.stabilize()

    # -- conveniences -----------------------------------------------------------------------------

    def elect(self, node_id: int) -> RaftNode:
        self.node(node_id).campaign()
        self.stabilize()
        raft = self.node(node_id)
        assert raft.role is Role.LEADER, f"{node_id} did not win: {raft.status()}"
        return raft

    def leaders(self) -> list[int]:
        return [i for i, m in self.members.items() if m.raft.role is Role.LEADER]

    def leader_id(self) -> int:
        """The leader of the highest term among members (NONE if there is none)."""
        best, term = NONE, -1
        for node_id, member in self.members.items():
            if member.raft.role is Role.LEADER and member.raft.term > term:
                best, term = node_id, member.raft.term
        return best

    def propose(self, node_id: int, *payloads: bytes) -> None:
        raft = self.node(node_id)
        if len(payloads) == 1:
            raft.propose(payloads[0])
        else:
            raft.propose_batch(list(payloads))
        self.stabilize()

    def snapshot_and_compact(self, node_id: int, keep: int = 0) -> Snapshot:
        """Snapshot at the applied index and drop the log up to `keep` entries before it."""
        member = self.members[node_id]
        snap = member.storage.create_snapshot(
            member.applied_index, member.conf_state, encode_state(member.payloads)
        )
        member.storage.compact(member.applied_index - keep)
        return snap

    def payloads(self, node_id: int) -> list[bytes]:
        return self.members[node_id].payloads

    def log_terms(self, node_id: int) -> list[tuple[int, int]]:
        """(index, term) of every entry in the member's durable log."""
        storage = self.members[node_id].storage
        first, last = storage.first_index(), storage.last_index()
        return (
            [(e.index, e.term) for e in storage.entries(first, last + 1)] if last >= first else []
        )

    def sent(self, node_id: int, mtype: MessageType) -> list[Message]:
        """Messages of a type the member released in any Ready so far."""
        return [m for rd in self.members[node_id].readies for m in rd.messages if m.type is mtype]
