"""Log replication: consistency check, backtracking, commit rule, flow control, durability."""

from __future__ import annotations

import pytest

from embedkv.raft import (
    ConfState,
    DropReason,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    ProposalDropped,
    Role,
)

from .cluster import Cluster


def _log_storage(terms: list[int], voters: frozenset[int], term: int) -> MemoryStorage:
    """A member's storage whose log has one entry per term in `terms` (index 1, 2, ...)."""
    storage = MemoryStorage(conf_state=ConfState(voters=voters))
    storage.append([Entry(term=t, index=i + 1) for i, t in enumerate(terms)])
    storage.set_hard_state(HardState(term=term))
    return storage


def _cluster_with_logs(logs: dict[int, list[int]], term: int) -> Cluster:
    """Members whose logs already hold entries of the given terms (PreVote off)."""
    voters = frozenset(logs)
    c = Cluster([], pre_vote=False)
    for node_id, terms in logs.items():
        c.add_member(node_id, _log_storage(terms, voters, term))
    return c


def test_entries_are_replicated_and_applied_in_order_everywhere() -> None:
    """§5.3 log replication: every member applies the same commands in the same order."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    for i in range(20):
        c.propose(1 + i % 3, f"cmd{i}".encode())  # followers forward to the leader
    expected = [f"cmd{i}".encode() for i in range(20)]
    for node_id in (1, 2, 3):
        assert c.payloads(node_id) == expected
        assert c.log_terms(node_id) == c.log_terms(1)


def test_an_entry_commits_only_once_a_majority_stores_it() -> None:
    """§5.3: an entry is committed once the leader has replicated it on a majority."""
    c = Cluster([1, 2, 3, 4, 5])
    c.elect(1)
    c.partition([1, 2], [3, 4, 5])
    c.node(1).propose(b"x")
    c.stabilize()
    assert c.node(1).status().commit == 1 and b"x" not in c.payloads(1)
    c.heal()
    c.tick_all(1)
    assert all(c.payloads(i) == [b"x"] for i in range(1, 6))


def test_leader_counts_its_own_replica_only_after_advance() -> None:
    """§5.3 durability: the leader's own copy counts for commit only once persisted."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    leader = c.node(1)
    commit = leader.status().commit
    leader.propose(b"x")
    rd = leader.ready()
    c.members[1].storage.append(rd.entries)  # persisted, but advance() not called yet
    for m in rd.messages:
        c.deliver(m)
    c.process(2)
    c.take(lambda m: m.to == 3)
    acks = c.take(lambda m: m.to == 1)
    assert acks and all(m.type is MessageType.APP_RESP and not m.reject for m in acks)
    for m in acks:
        c.deliver(m)
    # 2 of 3 hold the entry, but one of them is the leader, which has not advanced.
    assert leader.status().commit == commit
    leader.advance(rd)
    assert leader.status().commit == commit + 1


def test_follower_acknowledges_entries_in_the_ready_that_persists_them() -> None:
    """§5.3 / Figure 2: a follower answers AppendEntries only once the entries are stored."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a", b"b")
    persisted = 0
    acks = 0
    for rd in c.members[2].readies:
        if rd.entries:
            persisted = rd.entries[-1].index  # stored before this Ready's messages go out
        for m in rd.messages:
            if m.type is MessageType.APP_RESP and not m.reject:
                assert m.index <= persisted
                acks += 1
    assert acks >= 2 and persisted == c.members[2].storage.last_index()


def test_consistency_check_rejects_an_append_with_a_gap() -> None:
    """§5.3 AppendEntries consistency check: prev (index, term) must match."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    follower = c.node(2)
    last = c.members[2].storage.last_index()
    follower.step(
        Message(
            MessageType.APP,
            to=2,
            from_=1,
            term=1,
            index=last + 5,
            log_term=1,
            entries=(Entry(term=1, index=last + 6, data=b"z"),),
        )
    )
    rd = follower.ready()
    assert not rd.entries
    [resp] = [m for m in rd.messages if m.type is MessageType.APP_RESP]
    assert resp.reject and resp.index == last + 5 and resp.reject_hint == last


# The follower logs of Figure 7 (a)-(f) against a leader whose log has terms
# 1 1 1 4 4 5 5 6 6 6; the leader is elected in term 8.
FIGURE7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE7_FOLLOWERS))
def test_leader_brings_every_figure7_follower_in_line(case: str) -> None:
    """§5.3 Figure 7: the leader forces its log on followers: missing entries are sent,
    conflicting ones overwritten; each term of divergence costs at most one round trip."""
    c = _cluster_with_logs(
        {1: FIGURE7_LEADER, 2: FIGURE7_FOLLOWERS[case], 3: FIGURE7_LEADER},
        term=7,
    )
    c.elect(1)
    assert c.node(1).term == 8
    assert c.log_terms(2) == c.log_terms(1)
    assert [t for _, t in c.log_terms(1)] == [*FIGURE7_LEADER, 8]
    rejects = [m for m in c.sent(2, MessageType.APP_RESP) if m.reject]
    assert len(rejects) <= 3


def test_fast_backtracking_skips_a_long_divergent_tail() -> None:
    """§5.3 (end; etcd findConflictByTerm): rejections carry a (term, index) hint so a long
    tail of a stale term is skipped in one round trip, not one entry at a time."""
    c = _cluster_with_logs(
        {1: [1] * 5 + [3] * 5, 2: [1] * 5 + [2] * 200, 3: [1] * 5 + [3] * 5},
        term=3,
    )
    c.elect(1)
    assert c.log_terms(2) == c.log_terms(1)
    rejects = [m for m in c.sent(2, MessageType.APP_RESP) if m.reject]
    assert 1 <= len(rejects) <= 2


def test_leader_commits_earlier_term_entries_only_through_its_own() -> None:
    """§5.4.2 Figure 8: replicas of an earlier term's entry do not commit it; a replicated
    entry of the current term commits it (and everything before)."""
    c = _cluster_with_logs({1: [1, 2], 2: [1], 3: [1]}, term=2)
    c.node(1).campaign()
    c.process(1)
    c.deliver_all()
    c.process(2)
    c.process(3)
    c.deliver_all()  # votes granted: 1 is leader of term 3 with log terms 1 2 3
    leader = c.node(1)
    assert leader.role is Role.LEADER and leader.term == 3
    c.process(1)  # persists its term-3 entry; its own match is now 3
    c.wire.clear()
    assert leader.status().commit == 0
    # Follower 2 acknowledges index 2 (term 2): a majority holds it, yet it is not committed.
    leader.step(Message(MessageType.APP_RESP, to=1, from_=2, term=3, index=2))
    assert leader.status().commit == 0
    # Once 2 acknowledges index 3 (term 3), entries 1-3 commit together.
    leader.step(Message(MessageType.APP_RESP, to=1, from_=2, term=3, index=3))
    assert leader.status().commit == 3


def test_many_proposals_are_batched_into_one_append() -> None:
    """§5.3 / thesis §10.2.1 batching: a batch of proposals is one append per follower."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).propose_batch([b"p%d" % i for i in range(100)])
    rd = c.node(1).ready()
    apps = [m for m in rd.messages if m.type is MessageType.APP]
    assert sorted(m.to for m in apps) == [2, 3]
    assert all(len(m.entries) == 100 for m in apps)
    assert len(rd.entries) == 100


def test_appends_respect_the_message_size_limit() -> None:
    """Thesis §10.2.1: entries are split into messages of at most max_size_per_msg bytes."""
    c = Cluster([1, 2], max_size_per_msg=300)
    c.elect(1)
    c.propose(1, *[bytes(100) for _ in range(9)])  # 124 bytes each: two per message
    apps = [m for m in c.sent(1, MessageType.APP) if m.entries and m.to == 2]
    assert apps and all(len(m.entries) <= 2 for m in apps)
    assert sum(len(m.entries) for m in apps) >= 9
    assert c.payloads(2) == [bytes(100)] * 9


def test_inflight_window_bounds_the_number_of_pipelined_appends() -> None:
    """Thesis §10.2.2 pipelining: at most max_inflight_msgs unacknowledged appends."""
    c = Cluster([1, 2], max_inflight_msgs=2)
    c.elect(1)
    assert c.node(1).status().progress[2].state is ProgressState.REPLICATE
    for i in range(6):
        c.node(1).propose(b"%d" % i)
        c.process(1)
    apps = c.take(lambda m: m.type is MessageType.APP and m.entries != ())
    assert len(apps) == 2
    assert c.node(1).status().progress[2].paused
    for m in apps:
        c.deliver(m)
    c.stabilize()
    assert c.payloads(2) == [b"%d" % i for i in range(6)]


def test_inflight_bytes_bound_the_pipeline_too() -> None:
    """Thesis §10.2.2: the window is also bounded in bytes (max_inflight_bytes)."""
    c = Cluster([1, 2], max_inflight_bytes=100)
    c.elect(1)
    for _ in range(5):
        c.node(1).propose(bytes(50))  # 74 bytes each
        c.process(1)
    apps = c.take(lambda m: m.type is MessageType.APP and m.entries != ())
    assert len(apps) == 2  # 74 < 100 allows a second; 148 >= 100 fills the window
    for m in apps:
        c.deliver(m)
    c.stabilize()
    assert c.payloads(2) == [bytes(50)] * 5


def test_probing_follower_gets_one_append_at_a_time() -> None:
    """Thesis §10.2.2 / etcd Progress: a follower in probe state has at most one append out."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).report_unreachable(2)
    assert c.node(1).status().progress[2].state is ProgressState.PROBE
    for i in range(4):
        c.node(1).propose(b"%d" % i)
    c.process(1)
    to2 = [m for m in c.wire if m.type is MessageType.APP and m.to == 2]
    assert len(to2) == 1
    c.stabilize()
    assert c.node(1).status().progress[2].state is ProgressState.REPLICATE
    assert c.payloads(2) == [b"0", b"1", b"2", b"3"]


def test_lost_appends_are_resent_after_a_heartbeat() -> None:
    """§5.3: the leader retries AppendEntries indefinitely; heartbeat replies resume it."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    drop = c.drop_types(MessageType.APP)
    c.propose(1, b"a")
    c.propose(1, b"b")
    assert c.payloads(2) == []
    c.filters.remove(drop)
    c.tick_all(2)
    assert c.payloads(2) == [b"a", b"b"] and c.payloads(3) == [b"a", b"b"]


def test_heartbeat_commit_never_exceeds_what_the_follower_holds() -> None:
    """§5.3: followers learn the commit index from the leader, but never beyond their match."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.propose(1, b"a", b"b")
    c.heal()
    c.drop_types(MessageType.APP)
    c.tick(1)
    c.stabilize()
    beats = [m for m in c.sent(1, MessageType.HEARTBEAT) if m.to == 3]
    assert beats[-1].commit <= 1  # 3 only matches the bootstrap entry
    assert c.node(3).status().commit <= c.members[3].storage.last_index()


def test_follower_forwards_proposals_to_the_leader() -> None:
    """§8 client interaction: a follower forwards a proposal to the leader it knows."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(3).propose(b"fwd")
    rd = c.node(3).ready()
    [prop] = [m for m in rd.messages if m.type is MessageType.PROP]
    assert prop.to == 1 and prop.term == 0 and prop.entries[0].data == b"fwd"
    for m in rd.messages:
        c.deliver(m)
    c.stabilize()
    assert c.payloads(3) == [b"fwd"]


def test_proposals_without_a_leader_are_refused() -> None:
    """§8: with no known leader a proposal is refused with a reason, not lost silently."""
    c = Cluster([1, 2, 3])
    with pytest.raises(ProposalDropped) as caught:
        c.node(1).propose(b"x")
    assert caught.value.reason is DropReason.NO_LEADER
    c.node(1).campaign()
    assert c.node(1).role is Role.PRE_CANDIDATE
    with pytest.raises(ProposalDropped) as caught:
        c.node(1).propose_batch([b"x", b"y"])
    assert caught.value.reason is DropReason.NO_LEADER


def test_uncommitted_size_limit_refuses_proposals_until_entries_commit() -> None:
    """Thesis §10.2 flow control (etcd MaxUncommittedEntriesSize)."""
    c = Cluster([1, 2, 3], max_uncommitted_entries_size=200)
    c.elect(1)
    c.isolate(1)
    accepted = 0
    with pytest.raises(ProposalDropped) as caught:
        for _ in range(100):
            c.node(1).propose(bytes(40))  # 64 bytes each
            accepted += 1
    assert caught.value.reason is DropReason.UNCOMMITTED_SIZE
    assert accepted == 3
    c.heal()
    c.tick_all(2)
    c.propose(1, b"after")
    assert c.payloads(2)[-1] == b"after"


def test_committed_entries_are_delivered_once_in_order_across_restarts() -> None:
    """§5.3 / §5.4: the state machine applies each committed entry exactly once, in order;
    after a restart the entries after the app's applied index are delivered again."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a", b"b", b"c")
    member = c.members[2]
    member.applied_index -= 2  # the app's last durable apply was two entries ago
    member.payloads = member.payloads[:-2]
    c.restart(2)
    c.tick_all(1)
    c.propose(1, b"d")
    assert c.payloads(2) == [b"a", b"b", b"c", b"d"]
    indices = [e.index for e in member.applied_entries]
    assert indices[-2:] == [indices[-1] - 1, indices[-1]]


def test_committed_entries_are_split_across_readies_by_size() -> None:
    """Thesis §10.2.1: the apply batch per Ready is bounded (max_committed_size_per_ready)."""
    c = Cluster([1], max_committed_size_per_ready=250)
    c.elect(1)
    c.propose(1, *[bytes(100) for _ in range(6)])
    sizes = [len(rd.committed_entries) for rd in c.members[1].readies if rd.committed_entries]
    assert max(sizes) <= 2 and sum(sizes) == 7  # bootstrap entry + 6 proposals
    assert c.payloads(1) == [bytes(100)] * 6


def test_responses_from_unknown_members_are_ignored() -> None:
    """§5.1: a leader only tracks members of its configuration."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    before = c.node(1).status()
    c.node(1).step(Message(MessageType.APP_RESP, to=1, from_=9, term=1, index=99))
    c.node(1).step(Message(MessageType.HUP, to=1, from_=1))  # local types are not steppable
    c.node(1).step(Message(MessageType.APP_RESP, to=3, from_=2, term=1, index=99))  # misrouted
    assert c.node(1).status() == before


def test_commit_only_changes_need_no_sync_and_readies_do_not_repeat() -> None:
    """§5.3 durability, etcd MustSync: term, vote and entries must be synced before sending;
    a new commit index alone need not be. A second ready() before advance() holds only what
    is new, and both can then be advanced in order."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.node(1).propose(b"b")
    c.process(1)
    c.deliver_all()  # 2 and 3 store "b"; commit only arrives with the next append
    for node_id in (2, 3):
        c.process(node_id)
    c.deliver_all()
    leader = c.node(1)
    first = leader.ready()  # the commit of "b" and the append telling followers
    assert first.committed_entries and first.hard_state is not None and not first.must_sync
    leader.propose(b"c")
    second = leader.ready()
    assert [e.data for e in second.entries] == [b"c"] and second.must_sync
    assert not second.committed_entries  # "b" was already handed out in `first`
    leader.advance(first)
    leader.advance(second)
    assert leader.status().applied == first.committed_entries[-1].index
