"""The default read path: a linearizable read is served locally while the member is the leader
and the only voter, and through ReadIndex as soon as its applied configuration has another
voter (docs/internals/runtime.md, "Reads").

The second member is a test double: a bare Raft core on MemoryStorage, wired to the member's
engine as its transport. It acknowledges appends, snapshots and heartbeats (so the member's
commits and ReadIndex rounds need it once it votes) and keeps no state machine.
"""

from __future__ import annotations

import random

import pytest

import embedkv
from embedkv.errors import Unavailable
from embedkv.member.writer import Signal
from embedkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    EntryType,
    MemoryStorage,
    Message,
    RaftNode,
)
from tests.waiting import wait_for

PEER = 2


class Peer:
    """Member PEER as a bare Raft core; `transport` runs on the member's engine loop."""

    def __init__(self, store: embedkv.Store) -> None:
        self.member = store._m
        self.storage = MemoryStorage()
        # Never ticked: it never campaigns, it only answers.
        self.node = RaftNode(Config(id=PEER, rng=random.Random(7)), self.storage)
        self.connected = True
        self.received = 0
        # (the peer is a voter in its own applied configuration, the member serves local reads)
        # when each message reached it.
        self.seen: list[tuple[bool, bool]] = []

    def transport(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.to != PEER:
                continue
            voter = PEER in self.node.status().conf_state.voters
            self.seen.append((voter, self.member.local_reads))
            if self.connected:
                self.received += 1
                self.node.step(msg)
        self._pump()

    def _pump(self) -> None:
        replies: list[Message] = []
        node, storage = self.node, self.storage
        while node.has_ready():
            rd = node.ready()
            if rd.snapshot is not None and not rd.snapshot.is_empty():
                storage.apply_snapshot(rd.snapshot)
            storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            for e in rd.committed_entries:
                if e.type is EntryType.CONF_CHANGE:
                    storage.set_conf_state(node.apply_conf_change(ConfChange.decode(e.data)))
            replies.extend(rd.messages)
            node.advance(rd)
        if replies:
            core = self.member._core
            with core.lock:
                for reply in replies:
                    core.node.step(reply)
            self.member._writer.submit(Signal.WAKE)


def _change(store: embedkv.Store, kind: ConfChangeType) -> None:
    """Propose a membership change for PEER through the member's core and wait until the
    member has applied it."""
    m = store._m
    before = m.data_dir.conf_state
    with m._core.lock:
        m._core.node.propose_conf_change(ConfChange(kind, PEER))
    m._writer.submit(Signal.WAKE)
    wait_for(lambda: m.data_dir.conf_state != before, what=f"{kind.name} applied")


def _rounds(store: embedkv.Store) -> int:
    return store._m.stats.read_rounds


def test_the_only_voter_reads_locally_after_one_read_index(store: embedkv.Store) -> None:
    store["a"] = 1
    first = _rounds(store)
    assert store["a"] == 1  # the first linearizable read proves leadership with ReadIndex
    assert store._m.local_reads
    settled = _rounds(store)
    assert settled <= first + 1
    for i in range(50):
        store[f"k{i}"] = i
        assert store[f"k{i}"] == i and store.get(f"k{i}") == i
        assert f"k{i}" in store
    assert store.count() == 51 and len(store.range("k")) == 50
    assert [k for k in store][:2] == ["a", "k0"]
    assert _rounds(store) == settled  # none of those reads asked Raft


async def _async_reads(store: embedkv.Store) -> int:
    astore = embedkv.AsyncStore(store)
    # The first reads may pay a ReadIndex each, until one is answered by a batch that has
    # already applied its index (the member then knows it holds every committed entry).
    for _ in range(10):
        await astore.get("a")
        if store._m.local_reads:
            break
    assert store._m.local_reads
    before = _rounds(store)
    for _ in range(20):
        assert await astore.get("a") == 1
        assert await astore.contains("a")
    return _rounds(store) - before


def test_async_reads_share_the_local_path(store: embedkv.Store) -> None:
    import asyncio

    store["a"] = 1
    assert asyncio.run(_async_reads(store)) == 0


def test_a_second_voter_switches_reads_to_read_index_and_back(store: embedkv.Store) -> None:
    m = store._m
    peer = Peer(store)
    m._engine.transport = peer.transport
    store["a"] = 1
    assert store["a"] == 1 and m.local_reads

    # A learner does not vote: the member still commits alone, and reads stay local.
    _change(store, ConfChangeType.ADD_LEARNER)
    assert m.data_dir.conf_state.learners == {PEER}
    wait_for(lambda: peer.received > 0, what="the learner hears from the leader")
    store["b"] = 2
    before = _rounds(store)
    assert store["b"] == 2 and m.local_reads
    assert _rounds(store) - before <= 1  # a conf change is no term or role change: at most
    before = _rounds(store)  # the round already asked; then none at all
    for _ in range(20):
        assert store["b"] == 2
    assert _rounds(store) == before

    # Promoted, it votes: from the apply on, every linearizable read is a ReadIndex round
    # (answered by the peer's heartbeat acknowledgements), and writes need the peer too.
    _change(store, ConfChangeType.ADD_VOTER)
    assert m.data_dir.conf_state.voters == {m.member_id, PEER}
    assert not m.local_reads
    for i in range(5):
        before = _rounds(store)
        store["c"] = i
        assert store["c"] == i
        assert _rounds(store) > before
        assert not m.local_reads
    wait_for(lambda: PEER in peer.node.status().conf_state.voters, what="the peer votes")
    # No message reached the peer as a voter while the member still read locally.
    assert (True, True) not in peer.seen

    # Cut off, the peer could elect itself elsewhere: a read must fail, never be served
    # from a state that may be stale. (The leader steps down meanwhile: CheckQuorum.)
    peer.connected = False
    with pytest.raises(Unavailable):
        store.get("c")
    assert not m.local_reads


def test_back_to_local_reads_once_the_other_voter_is_removed(store: embedkv.Store) -> None:
    m = store._m
    peer = Peer(store)
    m._engine.transport = peer.transport
    _change(store, ConfChangeType.ADD_VOTER)
    store["c"] = 1
    assert store["c"] == 1 and not m.local_reads

    # Removed again, the member is the only voter: one ReadIndex, then local reads.
    _change(store, ConfChangeType.REMOVE)
    assert m.data_dir.conf_state.voters == {m.member_id}
    before = _rounds(store)
    assert store["c"] == 1
    assert m.local_reads and _rounds(store) == before + 1
    for _ in range(20):
        assert store["c"] == 1
    assert _rounds(store) == before + 1
