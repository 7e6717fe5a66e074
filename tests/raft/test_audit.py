"""Regression tests for the Raft audit of issue 14 (../shared/repro/raft-audit/).

Each drives the core by hand the way the runtime may (embedkv/member/writer.py): stepping it
between ready() and the apply/advance() of that Ready. Each failed on the code before the fix.
"""

from __future__ import annotations

import pytest

from embedkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    DropReason,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    Ready,
    Role,
)

from .cluster import Cluster

CT = ConfChangeType


def _conflict(c: Cluster) -> tuple[int, int, int] | None:
    """(index, member a, member b) of the first index two members applied differently."""
    seen: dict[int, tuple[int, tuple[int, int, bytes]]] = {}
    for node_id, member in sorted(c.members.items()):
        for e in member.applied_entries:
            rec = (e.term, int(e.type), e.data)
            first = seen.setdefault(e.index, (node_id, rec))
            if first[1] != rec:
                return e.index, first[0], node_id
    return None


def _held_ready_with_two_conf_changes(c: Cluster, follower: int) -> Ready:
    """Let `follower` catch up until one Ready commits two conf changes; persist it only."""
    for _ in range(50):
        for node_id in sorted(c.members):
            if node_id != follower:
                c.process(node_id)
        c.deliver_all()
        rd = c.persist_and_send(follower)
        if rd is None:
            c.tick(1)
            continue
        changes = [e for e in rd.committed_entries if e.type is EntryType.CONF_CHANGE]
        if len(changes) >= 2:
            return rd
        c.apply_and_advance(follower, rd)
    raise AssertionError(f"{follower} never got both changes in one Ready")


def test_stale_conf_change_is_not_applied_over_a_newer_snapshot() -> None:
    """Item 1: a snapshot stepped while committed conf changes are handed out but unapplied
    is refused (the leader sends it again), so the changes are never applied over the
    snapshot's newer configuration (before: two leaders, different entries at one index)."""
    f = 2
    c = Cluster([1, 2, 3, 4, 5])
    leader = c.elect(1)

    def change(kind: ConfChangeType, node_id: int) -> None:
        leader.propose_conf_change(ConfChange(kind, node_id))
        c.stabilize()

    c.isolate(f)
    change(CT.REMOVE, 4)
    change(CT.REMOVE, 5)
    c.heal()
    held = _held_ready_with_two_conf_changes(c, f)
    c.deliver_all()
    c.isolate(f)
    change(CT.ADD_VOTER, 4)
    change(CT.ADD_VOTER, 5)
    snap = c.snapshot_and_compact(1)
    leader.report_unreachable(f)
    c.heal()
    leader.propose(b"x")
    c.process(1)
    snaps = c.take(lambda m: m.to == f and m.type is MessageType.SNAP)
    assert [m.snapshot.meta.index for m in snaps if m.snapshot] == [snap.meta.index]
    for m in snaps:
        c.node(f).step(m)
    full = ConfState(voters=frozenset({1, 2, 3, 4, 5}))
    assert c.node(f).status().conf_state == full  # refused: still what it applied
    [refusal] = [m for m in c.node(f).ready().messages if m.type is MessageType.APP_RESP]
    assert refusal.reject and refusal.index == snap.meta.index
    c.wire.append(refusal)
    c.apply_and_advance(f, held)
    c.stabilize()
    c.tick_all(3)  # the leader sends the snapshot again after a heartbeat answer
    assert c.members[f].applied_index >= snap.meta.index
    assert c.node(f).status().conf_state == leader.status().conf_state == full
    assert c.members[f].storage.initial_state()[1] == full

    # A minority of the real five-voter configuration can no longer elect a leader.
    c.partition([2, 3], [1, 4, 5])
    c.tick_all(40)
    for node_id, data in ((1, b"left"), (f, b"right")):
        if c.node(node_id).role is Role.LEADER:
            c.node(node_id).propose(data)
    c.stabilize()
    assert c.node(f).role is not Role.LEADER and c.node(3).role is not Role.LEADER
    assert _conflict(c) is None


def test_reused_read_context_is_not_confirmed_by_an_earlier_round() -> None:
    """Item 2: a delayed heartbeat answer of an earlier round does not confirm a later read
    that reuses its context, so a deposed leader serves no stale read."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"w0")
    c.node(1).read_index(b"r")
    c.process(1)
    c.deliver_all()
    c.process(2)
    c.process(3)
    delayed = c.take(lambda m: m.type is MessageType.HEARTBEAT_RESP and m.from_ == 3)
    assert delayed
    c.deliver_all()
    c.process(1)
    assert [rs.context for rs in c.members[1].read_states] == [b"r"]

    c.isolate(1)
    for _ in range(60):
        c.tick(2)
        c.tick(3)
        c.stabilize()
        if Role.LEADER in (c.node(2).role, c.node(3).role):
            break
    new = 2 if c.node(2).role is Role.LEADER else 3
    c.propose(new, b"W")
    assert b"W" in c.payloads(new)
    assert c.node(1).role is Role.LEADER  # it does not know it was deposed

    c.node(1).read_index(b"r")  # the context is reused: no request with it is pending
    c.process(1)
    c.wire.clear()  # its heartbeats are lost
    for m in delayed:  # the first round's late answer arrives
        c.node(1).step(m)
    c.process(1)
    assert len(c.members[1].read_states) == 1, c.members[1].read_states
    assert c.members[1].waiting_reads == []


def test_two_members_reading_with_the_same_context_both_get_answers() -> None:
    """Item 3: reads are keyed by (requester, context): neither member's read is dropped."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    ctx = (1).to_bytes(8, "big")
    c.node(2).read_index(ctx)
    c.node(3).read_index(ctx)
    c.node(1).read_index(ctx)
    c.stabilize()
    for node_id in (1, 2, 3):
        assert [rs.context for rs in c.members[node_id].read_states] == [ctx], node_id


def test_member_whose_removal_committed_does_not_become_leader() -> None:
    """Item 4: a candidate that learns from the winning vote's commit hint that its own
    removal committed abandons its campaign (docs/internals/raft.md, "Campaigning")."""
    c = Cluster([1, 2, 3], pre_vote=False, check_quorum=False)
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(CT.REMOVE, 3))
    c.process(1)
    c.deliver_all()
    c.process(2)
    c.process(3)
    c.deliver_all()  # 1 commits the removal
    c.isolate(3)  # 3 never hears that it committed
    c.stabilize()
    assert c.members[2].conf_state.voters == {1, 2}
    assert c.node(3).status().conf_state.voters == {1, 2, 3}
    c.isolate(1)
    c.cut_links -= {(2, 3), (3, 2)}
    c.node(3).campaign()
    c.process(3)
    c.deliver_all()  # the vote request reaches 2 only
    c.process(2)
    [resp] = [m for m in c.wire if m.type is MessageType.VOTE_RESP]
    assert not resp.reject and resp.commit >= 2  # granted, with the commit hint
    c.deliver_all()
    st = c.node(3).status()
    assert st.role is not Role.LEADER, st
    c.stabilize()  # 3 applies its removal
    assert c.members[3].conf_state.voters == {1, 2}
    c.heal()
    c.tick_all(40)
    assert c.leader_id() in (1, 2)


def test_refused_forwarded_conf_change_leaves_no_entry() -> None:
    """docs/internals/raft.md: a forwarded conf change the leader refuses is dropped (no entry)."""
    c = Cluster([1, 2, 3])
    leader = c.elect(1)
    leader.propose_conf_change(ConfChange(CT.ADD_LEARNER, 4))  # pending until applied
    c.process(1)
    with pytest.raises(ProposalDropped) as caught:
        leader.propose_conf_change(ConfChange(CT.ADD_LEARNER, 5))
    assert caught.value.reason is DropReason.PENDING_CONF_CHANGE
    change = Entry(0, 0, EntryType.CONF_CHANGE, ConfChange(CT.ADD_LEARNER, 5).encode())
    leader.step(Message(MessageType.PROP, to=1, from_=2, entries=(change,)))
    assert not leader.has_ready() or not leader.ready().entries
