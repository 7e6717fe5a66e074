"""ReadIndex (thesis §6.4) and leadership transfer (thesis §3.10)."""

from __future__ import annotations

import pytest

from embedkv.raft import (
    CAMPAIGN_TRANSFER,
    ConfChange,
    ConfChangeType,
    DropReason,
    Message,
    MessageType,
    ProposalDropped,
    ReadState,
    Role,
)

from .cluster import Cluster


def test_read_index_is_confirmed_by_a_heartbeat_round() -> None:
    """Thesis §6.4 ReadIndex: record the commit index, confirm leadership with a heartbeat
    round acknowledged by a majority, then the read may be served at that index."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    commit = c.node(1).status().commit
    c.node(1).read_index(b"r1")
    rd = c.process(1)
    assert rd is not None and not rd.read_states
    beats = [m for m in rd.messages if m.type is MessageType.HEARTBEAT]
    # The round is named by the leader, never by the caller's context (issue 14).
    assert sorted(m.to for m in beats) == [2, 3]
    assert len({m.context for m in beats}) == 1 and beats[0].context not in (b"", b"r1")
    c.stabilize()
    assert c.members[1].read_states == [ReadState(index=commit, context=b"r1")]


def test_read_index_needs_a_majority() -> None:
    """Thesis §6.4: a leader cut off from the majority never answers a read (it may have
    been deposed), even while it still believes it leads."""
    c = Cluster([1, 2, 3], check_quorum=False)
    c.elect(1)
    c.isolate(1)
    c.node(1).read_index(b"r")
    c.stabilize()
    c.tick_all(5)
    assert c.node(1).role is Role.LEADER
    assert c.members[1].read_states == [] and c.members[1].waiting_reads == []


def test_read_index_waits_until_the_leader_commits_in_its_term() -> None:
    """Thesis §6.4 step 1: a new leader's commit index is only trustworthy once an entry of
    its own term is committed; reads wait for that."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.node(1).transfer_leader(2)
    c.process(1)
    c.deliver_all()  # TIMEOUT_NOW
    c.process(2)
    c.deliver_all()  # votes requested
    c.process(1)
    c.process(3)
    c.deliver_all()  # votes granted
    raft2 = c.node(2)
    assert raft2.role is Role.LEADER and raft2.term == 2
    raft2.read_index(b"early")
    rd = c.process(2)
    assert rd is not None
    assert not [m for m in rd.messages if m.type is MessageType.HEARTBEAT and m.context]
    c.stabilize()
    [rs] = c.members[2].read_states
    assert rs.context == b"early"
    assert c.members[2].storage.term(rs.index) == 2  # at least its own term's entry


def test_pending_reads_share_one_heartbeat_round() -> None:
    """Thesis §6.4 batching: reads queued together are confirmed by a single round."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    for i in range(10):
        c.node(1).read_index(b"r%d" % i)
    rd = c.process(1)
    assert rd is not None
    beats = [m for m in rd.messages if m.type is MessageType.HEARTBEAT]
    assert len(beats) == 2 and len({m.context for m in beats}) == 1 and beats[0].context
    c.stabilize()
    assert [rs.context for rs in c.members[1].read_states] == [b"r%d" % i for i in range(10)]


def test_follower_read_index_is_forwarded_to_the_leader() -> None:
    """Thesis §6.4: a follower asks the leader for the read index, then waits to apply it."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.node(3).read_index(b"f")
    rd = c.process(3)
    assert rd is not None
    [req] = [m for m in rd.messages if m.type is MessageType.READ_INDEX]
    assert req.to == 1 and req.context == b"f"
    c.stabilize()
    assert c.members[3].read_states == [ReadState(c.node(1).status().commit, b"f")]
    assert [m.to for m in c.sent(1, MessageType.READ_INDEX_RESP)] == [3]


def test_single_voter_answers_reads_at_once() -> None:
    """Thesis §6.4: with a single voter the leader's own acknowledgement is the majority."""
    c = Cluster([1], learners=[2])
    c.elect(1)
    c.node(1).read_index(b"solo")
    rd = c.node(1).ready()
    assert rd.read_states == [ReadState(c.node(1).status().commit, b"solo")]
    assert not [m for m in rd.messages if m.type is MessageType.HEARTBEAT]


def test_read_index_without_a_leader_is_refused() -> None:
    """Thesis §6.4: with no leader to ask, the read is refused with a reason."""
    c = Cluster([1, 2, 3])
    with pytest.raises(ProposalDropped) as caught:
        c.node(2).read_index(b"x")
    assert caught.value.reason is DropReason.NO_LEADER
    with pytest.raises(ValueError):
        c.node(2).read_index(b"")


def test_transfer_to_an_up_to_date_follower() -> None:
    """Thesis §3.10 leadership transfer: TIMEOUT_NOW makes the target campaign at once
    (skipping PreVote and overriding the lease), and it wins the next term."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.node(1).transfer_leader(3)
    c.stabilize()
    assert c.leaders() == [3] and c.node(3).term == 2
    votes = c.sent(3, MessageType.VOTE)
    assert votes and all(m.context == CAMPAIGN_TRANSFER for m in votes)
    assert not c.sent(3, MessageType.PRE_VOTE)
    c.propose(3, b"b")
    assert c.payloads(1) == [b"a", b"b"]


def test_transfer_first_catches_the_target_up() -> None:
    """Thesis §3.10 step 1: the leader brings the target's log up to date before TIMEOUT_NOW."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.propose(1, b"a", b"b")
    c.heal()
    c.node(1).transfer_leader(3)
    assert c.node(1).status().lead_transferee == 3
    rd = c.process(1)
    assert rd is not None
    assert not [m for m in rd.messages if m.type is MessageType.TIMEOUT_NOW]
    assert [m for m in rd.messages if m.type is MessageType.APP and m.to == 3]
    c.stabilize()
    assert c.leaders() == [3]
    assert c.payloads(3) == [b"a", b"b"]


def test_proposals_are_refused_during_a_transfer_which_aborts_after_a_timeout() -> None:
    """Thesis §3.10: the old leader stops accepting requests while transferring; if the
    transfer does not complete within an election timeout, it resumes."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.node(1).transfer_leader(3)
    with pytest.raises(ProposalDropped) as caught:
        c.node(1).propose(b"x")
    assert caught.value.reason is DropReason.TRANSFERRING
    c.tick_all(9)
    assert c.node(1).status().lead_transferee == 3
    c.tick_all(1)
    assert c.node(1).status().lead_transferee == 0 and c.leaders() == [1]
    c.propose(1, b"x")
    assert c.payloads(2) == [b"x"]


def test_transfer_requested_at_a_follower_is_forwarded() -> None:
    """Thesis §3.10: any member may ask; the request goes to the leader."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(2).transfer_leader(2)
    rd = c.process(2)
    assert rd is not None
    [req] = [m for m in rd.messages if m.type is MessageType.TRANSFER_LEADER]
    assert req.to == 1 and req.from_ == 2 and req.index == 2
    c.stabilize()
    assert c.leaders() == [2]


def test_transfer_to_self_non_member_or_learner_is_ignored() -> None:
    """Thesis §3.10: only another voter can take over."""
    c = Cluster([1, 2], learners=[3])
    c.elect(1)
    for target in (1, 3, 9):
        c.node(1).transfer_leader(target)
        assert c.node(1).status().lead_transferee == 0
    c.stabilize()
    assert c.leaders() == [1] and c.node(1).term == 1


def test_new_single_voter_does_not_answer_reads_below_what_its_predecessor_committed() -> None:
    """Thesis §6.4 step 1, with §4.1 changes: a leader that is now the only voter still waits
    for an entry of its term to commit before answering reads: its commit index may lag one
    that the previous leader (here demoted to learner) committed and applied."""
    c = Cluster([1, 2], max_size_per_msg=1)
    c.elect(1)
    leader = c.node(1)
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 1))  # demote itself
    leader.propose(b"x")
    c.process(1)
    c.deliver_all()
    c.process(2)
    c.deliver_all()  # 2 holds both; the leader commits both (old configuration {1, 2})
    demotion = c.members[2].storage.last_index() - 1
    c.filters.append(lambda m: m.from_ == 1)
    c.stabilize()  # 1 applies both and hands over, but 2 hears nothing from it...
    assert c.payloads(1) == [b"x"]
    assert [m.to for m in c.sent(1, MessageType.TIMEOUT_NOW)] == [2]
    # ...except that the demotion committed (not "x"), so it is the only voter; then TIMEOUT_NOW.
    c.node(2).step(Message(MessageType.HEARTBEAT, to=2, from_=1, term=1, commit=demotion))
    c.process(2)
    assert c.members[2].conf_state.voters == {2}
    c.node(2).step(Message(MessageType.TIMEOUT_NOW, to=2, from_=1, term=1))
    raft2 = c.node(2)
    assert raft2.role is Role.LEADER and raft2.status().commit == demotion
    raft2.read_index(b"q")
    rd = c.process(2)
    assert rd is not None and rd.entries and not rd.read_states  # not before its entry commits
    c.stabilize()
    [rs] = c.members[2].read_states
    assert rs.index > demotion  # covers "x", which 1 had already applied


def test_a_new_transfer_request_replaces_one_in_flight() -> None:
    """Thesis §3.10: a transfer to another target abandons the one in flight."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.node(1).transfer_leader(3)
    assert c.node(1).status().lead_transferee == 3
    c.node(1).transfer_leader(2)
    assert c.node(1).status().lead_transferee == 2
    c.stabilize()
    assert c.leaders() == [2]
