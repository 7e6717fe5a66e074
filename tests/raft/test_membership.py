"""Membership changes: learners, single-server changes, removal, bootstrap (thesis ch. 4)."""

from __future__ import annotations

import pytest

from embedkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    DropReason,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    Role,
)

from .cluster import Cluster

ADD_VOTER = ConfChangeType.ADD_VOTER
ADD_LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE


def _change(c: Cluster, proposer: int, kind: ConfChangeType, node_id: int) -> None:
    c.node(proposer).propose_conf_change(ConfChange(kind, node_id))
    c.stabilize()


def _conf(voters: set[int], learners: set[int] = frozenset()) -> ConfState:  # type: ignore[assignment]
    return ConfState(voters=frozenset(voters), learners=frozenset(learners))


def test_added_learner_receives_the_log_but_never_counts_for_commit() -> None:
    """Thesis §4.2.1 non-voting members: a learner catches up but is not in any majority."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.add_member(4)
    _change(c, 1, ADD_LEARNER, 4)
    c.tick_all(2)
    assert c.payloads(4) == [b"a"]
    assert c.members[4].conf_state == _conf({1, 2, 3}, {4})
    c.partition([1, 4], [2, 3])
    c.node(1).propose(b"b")
    c.stabilize()
    assert c.node(1).status().progress[4].match == c.members[1].storage.last_index()
    assert b"b" not in c.payloads(1)  # leader + learner are not a majority of {1, 2, 3}


def test_learner_ignores_timeout_now() -> None:
    """Thesis §4.2.1: a learner never becomes leader, even when told to campaign."""
    c = Cluster([1, 2], learners=[3])
    c.elect(1)
    c.node(1).transfer_leader(3)  # refused: not a voter
    assert c.node(1).status().lead_transferee == 0
    c.node(3).step(Message(MessageType.TIMEOUT_NOW, to=3, from_=1, term=1))
    assert c.node(3).role is Role.FOLLOWER and c.node(3).term == 1


def test_promoted_learner_votes_and_can_lead() -> None:
    """Thesis §4.2.1 then §4.1: a caught-up learner is promoted to voter, one change."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.add_member(4)
    _change(c, 1, ADD_LEARNER, 4)
    c.tick_all(2)
    _change(c, 1, ADD_VOTER, 4)
    for node_id in (1, 2, 3, 4):
        assert c.members[node_id].conf_state == _conf({1, 2, 3, 4})
    c.node(1).transfer_leader(4)
    c.stabilize()
    assert c.node(4).role is Role.LEADER and c.node(4).term == 2
    c.propose(4, b"from-4")
    assert c.payloads(2) == [b"from-4"]


def test_only_one_membership_change_may_be_pending() -> None:
    """Thesis §4.1 single-server changes: a new change waits until the previous one applied."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.add_member(4)
    c.node(1).propose_conf_change(ConfChange(ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped) as caught:
        c.node(1).propose_conf_change(ConfChange(ADD_LEARNER, 5))
    assert caught.value.reason is DropReason.PENDING_CONF_CHANGE
    c.stabilize()
    c.node(1).propose_conf_change(ConfChange(ADD_VOTER, 4))  # the first one is applied now
    c.stabilize()
    assert c.members[1].conf_state == _conf({1, 2, 3, 4})


def test_new_leader_refuses_changes_until_its_predecessors_log_is_applied() -> None:
    """Thesis §4.1 (one change at a time; the fix for single-server changes): a new leader
    refuses a change until it has committed and applied the first entry of its term, and so
    also every earlier change it may hold (here one that is committed but not applied)."""
    c = Cluster([1, 2, 3], check_quorum=False)  # no lease: 3 answers 2 at once
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(ADD_LEARNER, 4))
    c.process(1)
    c.deliver_all()
    c.process(2)
    c.process(3)
    c.deliver_all()  # 1 commits the change; 2 and 3 store it but never learn it committed
    c.isolate(1)
    raft2 = c.node(2)
    assert raft2.status().commit < c.members[2].storage.last_index()
    raft2.campaign()
    for _ in range(3):
        c.process(2)
        c.deliver_all()
        c.process(3)
        c.deliver_all()
    assert raft2.role is Role.LEADER
    with pytest.raises(ProposalDropped) as caught:
        raft2.propose_conf_change(ConfChange(ADD_LEARNER, 5))
    assert caught.value.reason is DropReason.PENDING_CONF_CHANGE
    c.stabilize()  # its empty entry commits; everything before applies
    assert c.members[2].conf_state == _conf({1, 2, 3}, {4})
    raft2.propose_conf_change(ConfChange(ADD_LEARNER, 5))
    c.stabilize()
    assert c.members[3].conf_state == _conf({1, 2, 3}, {4, 5})


def test_changes_that_would_leave_no_voter_are_refused() -> None:
    """Thesis §4.1: a configuration needs at least one voter."""
    c = Cluster([1], learners=[2])
    c.elect(1)
    for kind in (REMOVE, ADD_LEARNER):
        with pytest.raises(ProposalDropped) as caught:
            c.node(1).propose_conf_change(ConfChange(kind, 1))
        assert caught.value.reason is DropReason.INVALID_CONF_CHANGE
    with pytest.raises(ProposalDropped) as caught:
        c.node(1).propose_conf_change(ConfChange(ConfChangeType.BOOTSTRAP, 0))
    assert caught.value.reason is DropReason.INVALID_CONF_CHANGE
    with pytest.raises(ProposalDropped):
        c.node(1).propose_conf_change(ConfChange(ADD_VOTER, 0))


def test_removed_follower_stops_counting_and_the_rest_commits() -> None:
    """Thesis §4.1: after removing a voter, majorities are of the new configuration."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    _change(c, 1, REMOVE, 3)
    assert c.members[1].conf_state == _conf({1, 2})
    assert 3 not in c.node(1).status().progress
    c.isolate(3)
    c.propose(1, b"x")
    assert c.payloads(2) == [b"x"]


def test_removing_a_voter_can_commit_pending_entries() -> None:
    """Thesis §4.1: once a removal applies, majorities are counted in the smaller
    configuration, which may already hold entries the old one did not commit."""
    c = Cluster([1, 2, 3, 4], max_size_per_msg=1)  # one entry per append
    c.elect(1)
    c.isolate(4)
    c.node(1).propose_conf_change(ConfChange(REMOVE, 4))
    c.node(1).propose(b"x")
    c.process(1)
    c.take(lambda m: m.to == 3 and any(e.data == b"x" for e in m.entries))
    c.deliver_all()
    c.process(2)
    c.process(3)
    c.isolate(3)
    c.cut_links.discard((3, 1))  # 3's acknowledgement still reaches the leader
    c.deliver_all()
    # Old configuration {1, 2, 3, 4}: the removal has 1, 2, 3; "x" only 1 and 2.
    removal = c.members[3].storage.last_index()
    assert c.node(1).status().commit == removal
    c.stabilize()  # the leader applies the removal; {1, 2} is a majority of {1, 2, 3}
    assert c.node(1).status().commit == removal + 1 and c.payloads(1) == [b"x"]


def test_removed_leader_hands_over_and_steps_down() -> None:
    """Thesis §4.2.2: a leader removed from the configuration steps down once the change is
    committed (and applied); it hands over to a caught-up voter meanwhile."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.node(1).propose_conf_change(ConfChange(REMOVE, 1))
    c.stabilize()
    c.tick_all(12)  # the hand-over is retried every election timeout until it succeeds
    assert c.node(1).role is Role.FOLLOWER
    new = c.leader_id()
    assert new in (2, 3) and c.node(new).term == 2
    assert c.members[new].conf_state == _conf({2, 3})
    assert [m.to for m in c.sent(1, MessageType.TIMEOUT_NOW)][-1] == new
    c.propose(new, b"b")
    assert c.payloads(2) == c.payloads(3) == [b"a", b"b"]
    with pytest.raises(ProposalDropped) as caught:
        c.node(1).propose(b"c")
    assert caught.value.reason is DropReason.NOT_MEMBER


def test_removed_leader_refuses_proposals_while_handing_over() -> None:
    """Thesis §4.2.2: between applying its removal and handing over, it accepts nothing new."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.drop_types(MessageType.TIMEOUT_NOW)
    _change(c, 1, REMOVE, 1)
    assert c.node(1).role is Role.LEADER
    with pytest.raises(ProposalDropped) as caught:
        c.node(1).propose(b"x")
    assert caught.value.reason is DropReason.NOT_MEMBER


@pytest.mark.parametrize("learned", [True, False], ids=["knows-removed", "unaware"])
def test_removed_member_cannot_disturb_the_cluster(learned: bool) -> None:
    """Thesis §4.2.3 disruptive servers: a removed server that knows it is not a voter never
    campaigns; one that does not know yet is ignored thanks to PreVote and the lease."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    if not learned:
        c.isolate(3)
    _change(c, 1, REMOVE, 3)
    assert (c.members[3].conf_state == _conf({1, 2})) is learned
    c.isolate(3)
    c.tick_all(60)
    c.heal()
    c.tick_all(60)
    assert c.leaders() == [1] and c.node(1).term == 1 and c.node(2).term == 1
    if learned:
        assert c.node(3).role is Role.FOLLOWER
        assert not c.sent(3, MessageType.PRE_VOTE) and not c.sent(3, MessageType.VOTE)


def test_no_campaign_while_a_committed_change_is_unapplied() -> None:
    """Thesis §4.1: a server campaigns in the configuration it is about to apply, not the old."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(ADD_LEARNER, 4))
    c.process(1)
    c.deliver_all()
    c.process(2)
    c.deliver_all()
    c.process(1)  # commits the change
    c.deliver_all()  # 2 learns the commit index
    raft2 = c.node(2)
    assert raft2.status().commit > raft2.status().applied
    raft2.campaign()
    assert raft2.role is Role.FOLLOWER
    c.process(2)  # applies it
    raft2.campaign()
    assert raft2.status().role is Role.PRE_CANDIDATE


def test_conf_changes_are_reapplied_after_a_restart() -> None:
    """Thesis §4.1: the configuration follows the log: after a restart from an applied index
    before a change, the change is delivered (and applied) again."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    member = c.members[2]
    applied_before = member.applied_index
    conf_before = member.conf_state
    _change(c, 1, ADD_LEARNER, 4)
    member.applied_index = applied_before  # as if the apply had not been durable
    member.storage.set_conf_state(conf_before)
    member.conf_state = conf_before
    c.restart(2)
    assert c.node(2).status().conf_state == conf_before
    c.tick_all(2)
    assert c.members[2].conf_state == _conf({1, 2, 3}, {4})
    reapplied = [e for e in member.applied_entries if e.type is EntryType.CONF_CHANGE]
    assert ConfChange.decode(reapplied[-1].data) == ConfChange(ADD_LEARNER, 4)


def test_joiner_replaying_the_log_reaches_the_same_configurations() -> None:
    """Thesis §4.1: the configuration is a function of the log: a member that joins with an
    empty log replays every change from the bootstrap entry and agrees at every index."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    _change(c, 1, REMOVE, 3)
    c.add_member(4)
    _change(c, 1, ADD_LEARNER, 4)
    c.tick_all(2)
    founder, joiner = c.members[1].conf_history, c.members[4].conf_history
    assert list(joiner) == list(founder) and len(founder) == 3  # bootstrap, remove, add
    assert joiner == founder
    assert c.members[4].conf_state == _conf({1, 2}, {4})


def test_follower_forwards_a_conf_change_to_the_leader() -> None:
    """Thesis §4.1: any member may request a change; the leader appends it."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    _change(c, 3, ADD_LEARNER, 5)
    assert c.members[1].conf_state == _conf({1, 2, 3}, {5})


def test_demoted_leader_becomes_a_learner_and_hands_over() -> None:
    """Thesis §4.2.2 (demotion is removal from the voters): the leader hands over."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    _change(c, 1, ADD_LEARNER, 1)
    assert c.leader_id() in (2, 3)
    assert c.members[2].conf_state == _conf({2, 3}, {1})
    c.tick(1, 100)
    assert c.node(1).role is Role.FOLLOWER


def test_voters_learn_a_committed_removal_from_vote_answers() -> None:
    """Thesis §4.2.2 / §4.1: when the leader that removed itself steps down before the other
    voter heard that the removal committed, that voter learns it from the removed member's
    answer to its pre-vote, applies it and wins alone, rather than waiting forever for the
    vote of the removed member (whose longer log refuses it)."""
    c = Cluster([1, 2], max_size_per_msg=1)
    c.elect(1)
    c.node(1).propose_conf_change(ConfChange(REMOVE, 1))
    c.node(1).propose(b"late")
    c.process(1)
    c.take(lambda m: any(e.data == b"late" for e in m.entries))
    c.deliver_all()
    c.process(2)  # 2 stores the removal only
    c.deliver_all()
    c.isolate(1)
    c.process(1)  # 1 commits and applies the removal; 2 never hears of the commit
    assert c.members[1].conf_state == _conf({2})
    assert c.node(2).status().commit < c.node(1).status().commit
    assert c.members[2].storage.last_index() < c.members[1].storage.last_index()
    c.tick(1, 30)  # the removed leader cannot reach the new voter: CheckQuorum steps it down
    assert c.node(1).role is Role.FOLLOWER
    c.stabilize()  # whatever it sent while it led is lost
    c.heal()
    c.tick_all(40)
    assert c.node(2).role is Role.LEADER
    assert c.members[2].conf_state == _conf({2})


def test_candidate_that_applies_its_own_removal_abandons_the_campaign() -> None:
    """Thesis §4.2.3: a member that learns mid-campaign that it is no longer a voter stops
    campaigning, and late votes do not make it leader."""
    c = Cluster([1, 2, 3], pre_vote=False, check_quorum=False)
    c.elect(1)
    raft3 = c.node(3)
    raft3.campaign()
    assert raft3.role is Role.CANDIDATE
    c.process(3)
    c.wire.clear()
    raft3.apply_conf_change(ConfChange(REMOVE, 3))  # the app applies a committed removal
    assert raft3.status().role is Role.FOLLOWER
    for voter in (1, 2):
        raft3.step(Message(MessageType.VOTE_RESP, to=3, from_=voter, term=raft3.term))
    assert raft3.status().role is Role.FOLLOWER
    raft3.campaign()
    assert raft3.status().role is Role.FOLLOWER
