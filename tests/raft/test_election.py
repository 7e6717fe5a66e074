"""Leader election: timeouts, votes, PreVote, CheckQuorum and the leader lease."""

from __future__ import annotations

import random

import pytest

from embedkv.raft import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    Role,
)
from embedkv.raft.core import Config, RaftNode

from .cluster import Cluster


def test_first_leader_writes_the_bootstrap_configuration() -> None:
    """§5.2 leader election; thesis §4.1: the initial configuration is entry 1 of the log."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    for node_id in (1, 2, 3):
        raft = c.node(node_id)
        assert raft.term == 1 and raft.leader == 1
        first = c.members[node_id].applied_entries[0]
        assert first.index == 1 and first.type is EntryType.CONF_CHANGE
        cc = ConfChange.decode(first.data)
        assert cc.type is ConfChangeType.BOOTSTRAP and cc.voters == {1, 2, 3}
        assert c.members[node_id].conf_state == ConfState(voters=frozenset({1, 2, 3}))
    assert c.node(2).role is Role.FOLLOWER and c.node(3).role is Role.FOLLOWER


def test_election_timeout_is_randomized_within_one_to_two_timeouts() -> None:
    """§5.2 randomized election timeouts: a follower waits [T, 2T) ticks before campaigning."""
    waits = set()
    for seed in range(40):
        storage = MemoryStorage(conf_state=ConfState(voters=frozenset({1, 2, 3})))
        raft = RaftNode(Config(id=1, rng=random.Random(seed), election_tick=10), storage)
        ticks = 0
        while raft.role is Role.FOLLOWER:
            raft.tick()
            ticks += 1
            assert ticks < 20, "no campaign within 2 election timeouts"
        assert raft.role is Role.PRE_CANDIDATE
        waits.add(ticks)
    assert min(waits) >= 10 and max(waits) <= 19
    assert len(waits) >= 5, f"timeouts are not randomized: {sorted(waits)}"


def test_heartbeats_keep_the_leader_in_place() -> None:
    """§5.2: a leader sends periodic heartbeats, so followers never time out."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.tick_all(100)
    assert c.leaders() == [1] and c.node(1).term == 1
    beats = [m for m in c.sent(1, MessageType.HEARTBEAT) if m.to == 2]
    assert len(beats) >= 100  # heartbeat_tick = 1


def test_leader_failure_triggers_a_new_election() -> None:
    """§5.2: followers that stop hearing from the leader elect a new one in a higher term."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(1)
    c.tick_all(40)
    new = [i for i in (2, 3) if c.node(i).role is Role.LEADER]
    assert len(new) == 1
    assert c.node(new[0]).term == 2


def test_a_node_grants_at_most_one_vote_per_term() -> None:
    """§5.2: each server votes for at most one candidate in a given term."""
    c = Cluster([1, 2, 3], pre_vote=False, check_quorum=False)
    c.node(1).campaign()
    c.process(1)
    c.take(lambda m: m.to == 2)  # 2 never hears of candidate 1
    c.deliver_all()
    c.process(3)
    assert c.node(3).status().vote == 1
    c.node(2).campaign()  # also term 1
    c.process(2)
    c.take(lambda m: m.to == 1)
    c.deliver_all()
    c.process(3)
    answers = c.take(lambda m: m.type is MessageType.VOTE_RESP and m.to == 2)
    assert len(answers) == 1 and answers[0].reject and answers[0].term == 1


def test_vote_is_released_only_with_the_hard_state_that_records_it() -> None:
    """§5.2 / Figure 2 (persist votedFor before responding): VOTE_RESP rides with the vote."""
    c = Cluster([1, 2, 3], pre_vote=False)
    c.node(1).campaign()
    c.process(1)
    c.deliver_all()
    rd = c.process(2)
    assert rd is not None
    grants = [m for m in rd.messages if m.type is MessageType.VOTE_RESP and not m.reject]
    assert grants and rd.hard_state is not None
    assert rd.hard_state.vote == 1 and rd.hard_state.term == 1 and rd.must_sync


def test_election_restriction_denies_a_candidate_with_a_stale_log() -> None:
    """§5.4.1 election restriction: a vote requires a log at least as up to date."""
    c = Cluster([1, 2, 3], pre_vote=False, check_quorum=False)
    c.elect(1)
    c.isolate(3)
    c.propose(1, b"x")
    c.heal()
    c.isolate(1)
    # 3 misses "x": it cannot win, even after many attempts; only 2 can.
    c.node(3).campaign()
    c.stabilize()
    assert c.node(3).role is not Role.LEADER
    assert c.node(2).status().vote != 3
    c.node(2).campaign()
    c.stabilize()
    assert c.node(2).role is Role.LEADER


def test_split_vote_is_resolved_by_a_later_election() -> None:
    """§5.2: a split vote ends without a leader; randomized timeouts then elect one."""
    c = Cluster([1, 2, 3, 4], pre_vote=False, check_quorum=False)
    c.node(1).campaign()
    c.node(2).campaign()
    c.process(1)
    c.process(2)
    # 3 hears 1 first and 4 hears 2 first: two votes each, nobody wins term 1.
    c.wire.sort(key=lambda m: (m.to, 0 if (m.to, m.from_) in ((3, 1), (4, 2)) else 1))
    c.stabilize()
    assert c.leaders() == []
    c.tick_all(50)
    assert len(c.leaders()) == 1
    assert c.node(c.leader_id()).term >= 2


def test_prevote_does_not_increase_the_term() -> None:
    """Thesis §9.6 PreVote: an isolated node keeps polling without bumping its term."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.tick_all(100)
    assert c.node(3).role is Role.PRE_CANDIDATE
    assert c.node(3).term == 1


@pytest.mark.parametrize("pre_vote", [True, False])
def test_prevote_stops_a_rejoining_node_from_deposing_the_leader(pre_vote: bool) -> None:
    """Thesis §9.6 PreVote: a partitioned node that returns does not disrupt a healthy leader.

    Without PreVote (and without CheckQuorum's lease) it does: the contrast shows the test
    can fail.
    """
    c = Cluster([1, 2, 3], pre_vote=pre_vote, check_quorum=False)
    c.elect(1)
    c.isolate(3)
    c.propose(1, b"while 3 was away")
    c.tick_all(60)
    c.heal()
    c.node(3).campaign()  # it comes back mid-campaign
    c.stabilize()
    c.tick_all(30)
    if pre_vote:
        assert c.leaders() == [1] and c.node(1).term == 1 and c.node(2).term == 1
        assert c.node(3).term == 1 and c.payloads(3) == [b"while 3 was away"]
    else:
        assert c.node(1).term > 1 and c.node(2).term > 1


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    """Thesis §6.2 CheckQuorum: a leader that cannot reach a majority steps down."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(1)
    c.tick(1, 2 * 10)
    assert c.node(1).role is Role.FOLLOWER and c.node(1).leader == NONE


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    """Thesis §6.2: the contrast case; without CheckQuorum nothing makes it step down."""
    c = Cluster([1, 2, 3], check_quorum=False)
    c.elect(1)
    c.isolate(1)
    c.tick(1, 50)
    assert c.node(1).role is Role.LEADER


def test_leader_lease_ignores_vote_requests() -> None:
    """Thesis §4.2.3 disruptive servers: one that heard from a leader within the election
    timeout neither grants a vote nor adopts the candidate's term."""
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    c.isolate(3)
    c.tick(3, 30)  # 3 campaigns alone: term 2, 3, ...
    assert c.node(3).role is Role.CANDIDATE and c.node(3).term > 1
    c.wire.clear()
    c.heal()
    c.node(3).campaign()
    c.process(3)
    votes = c.take(lambda m: m.type is MessageType.VOTE and m.to == 2)
    c.wire.clear()
    for m in votes:
        c.deliver(m)
    assert c.node(2).term == 1 and c.node(2).leader == 1
    assert not c.node(2).has_ready() or not any(
        m.type is MessageType.VOTE_RESP for m in c.node(2).ready().messages
    )


def test_transfer_vote_bypasses_the_lease() -> None:
    """Thesis §3.10 / §4.2.3: a vote request caused by TIMEOUT_NOW is granted in the lease."""
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    raft2 = c.node(2)
    raft2.step(Message(MessageType.VOTE, to=2, from_=3, term=2, index=1, log_term=1, context=b""))
    assert raft2.term == 1  # ignored: in lease
    raft2.step(
        Message(
            MessageType.VOTE,
            to=2,
            from_=3,
            term=2,
            index=1,
            log_term=1,
            context=CAMPAIGN_TRANSFER,
        )
    )
    assert raft2.term == 2 and raft2.status().vote == 3


def test_stale_leader_learns_the_new_term_and_steps_down() -> None:
    """Thesis §4.2.3 / §6.2: with CheckQuorum a stuck node's higher term reaches the leader
    through its answer to an append, freeing the node."""
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    c.isolate(3)
    c.tick(3, 30)
    term3 = c.node(3).term
    assert term3 > 1
    c.wire.clear()
    c.heal()
    c.tick(1)  # a heartbeat; 3 answers it with an APP_RESP in its own, higher term
    c.stabilize()
    assert c.node(1).role is Role.FOLLOWER and c.node(1).term == term3
    c.tick_all(40)
    assert len(c.leaders()) == 1 and c.node(c.leader_id()).term >= term3


def test_learner_never_campaigns() -> None:
    """Learners (thesis §4.2.1 non-voting members) never start elections."""
    c = Cluster([1, 2], learners=[3])
    c.elect(1)
    c.isolate(3)
    c.tick(3, 200)
    c.node(3).campaign()
    assert c.node(3).role is Role.FOLLOWER and c.node(3).term == 1
    assert not [m for m in c.node(3).ready().messages if m.type is MessageType.PRE_VOTE]


def test_single_voter_elects_itself_and_commits_after_persisting() -> None:
    """§5.2 with one server: its own vote is a majority; §5.3: commit needs the persisted entry."""
    c = Cluster([1])
    raft = c.node(1)
    raft.campaign()
    assert raft.role is Role.LEADER
    rd = raft.ready()
    assert rd.entries and not rd.committed_entries and rd.hard_state is not None
    assert rd.hard_state.commit == 0
    c.members[1].storage.append(rd.entries)
    c.members[1].storage.set_hard_state(rd.hard_state)
    raft.advance(rd)
    assert raft.status().commit == 1
    assert [e.index for e in raft.ready().committed_entries] == [1]


def test_new_leader_appends_an_entry_of_its_term() -> None:
    """§5.4.2 / thesis §6.4: a new leader commits an entry of its own term at once."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.isolate(1)
    c.tick_all(40)
    leader = c.leader_id()
    raft = c.node(leader)
    last = c.members[leader].applied_entries[-1]
    assert last.term == raft.term and last.type is EntryType.NORMAL and last.data == b""
    assert raft.status().commit == last.index


def test_pre_candidate_yields_to_a_leader_of_its_term() -> None:
    """Thesis §9.6: a pre-candidate that hears from the current leader becomes its follower."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(3).campaign()
    assert c.node(3).role is Role.PRE_CANDIDATE
    c.wire.clear()
    c.tick_all(1)
    assert c.node(3).role is Role.FOLLOWER and c.node(3).leader == 1
    assert c.leaders() == [1] and c.node(1).term == 1


def test_messages_of_older_terms_are_ignored() -> None:
    """§5.1: a server ignores requests with a stale term (and answers pre-votes with a no)."""
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    c.isolate(1)
    c.tick_all(40)
    new = c.leader_id()
    assert new != 1 and c.node(new).term == 2
    follower = 5 - new  # the node that is neither 1 nor the new leader
    before = c.node(follower).status()
    c.node(follower).step(
        Message(MessageType.APP, to=follower, from_=1, term=1, index=5, log_term=1, commit=9)
    )
    after = c.node(follower).status()
    assert (after.term, after.leader, after.commit) == (before.term, before.leader, before.commit)


def test_config_defaults_follow_etcd_and_bad_values_are_refused() -> None:
    """§5.2 / §9.3 timing (broadcastTime << electionTimeout): etcd's defaults are one tick per
    heartbeat and ten per election timeout; an election timeout must exceed the heartbeat."""
    cfg = Config(id=1, rng=random.Random(0))
    assert (cfg.heartbeat_tick, cfg.election_tick) == (1, 10)
    assert cfg.check_quorum and cfg.pre_vote
    storage = MemoryStorage(conf_state=ConfState(voters=frozenset({1})))
    for bad in (
        Config(id=0, rng=random.Random(0)),
        Config(id=1, rng=random.Random(0), election_tick=2, heartbeat_tick=2),
        Config(id=1, rng=random.Random(0), max_inflight_msgs=0),
    ):
        with pytest.raises(ValueError):
            RaftNode(bad, storage)


def test_stale_leader_is_told_the_newer_term_even_without_prevote_or_check_quorum() -> None:
    """§5.1: a request with a stale term is rejected with the current term, and its sender
    steps down. Here a removed member's vote request moved a learner to a higher term; the
    learner never campaigns, so only this answer can get the leader to catch up with it."""
    c = Cluster([1], learners=[2], pre_vote=False, check_quorum=False)
    c.elect(1)
    c.node(2).step(Message(MessageType.VOTE, to=2, from_=9, term=5, index=0, log_term=0))
    assert c.node(2).term == 5
    c.propose(1, b"x")
    c.tick_all(30)
    c.propose(c.leader_id(), b"y")
    assert c.node(1).term > 5 and c.payloads(2) == [b"x", b"y"]


def _terms(c: Cluster) -> dict[int, int]:
    return {i: c.node(i).term for i in c.members}


def test_a_follower_deaf_to_the_leader_campaigns_in_vain_with_prevote_and_check_quorum() -> None:
    """Thesis §9.6 (etcd's defaults): a follower that stops hearing the leader, but still
    reaches the others (a pause, a one-way cut, a restart before the leader redials),
    campaigns again and again; the other follower and the leader heard from the leader
    within the election timeout and ignore its pre-votes, so no term moves anywhere."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.cut_links.add((1, 3))  # 3 hears nobody from 1; it hears 2, and both hear it
    c.tick_all(100)  # 3 pre-campaigns several times (election timeout 10-19 ticks)
    assert c.node(3).role is Role.PRE_CANDIDATE
    assert any(m.type is MessageType.PRE_VOTE and m.from_ == 3 for m in c.delivered)
    assert c.leaders() == [1] and _terms(c) == {1: 1, 2: 1, 3: 1}
    c.heal()
    c.tick_all(2)  # the next heartbeat
    assert c.node(3).role is Role.FOLLOWER and c.node(3).leader == 1
    assert c.leaders() == [1] and _terms(c) == {1: 1, 2: 1, 3: 1}


def test_a_restarted_follower_campaigning_at_once_does_not_depose_the_leader() -> None:
    """A follower restarted after a crash (no leader known) that campaigns before hearing
    the leader, as the runtime's forget-and-campaign does: its pre-vote is refused without
    moving any term, and it follows the leader's next heartbeat."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    c.restart(3)
    assert c.node(3).leader == NONE
    c.node(3).campaign()
    c.stabilize()
    assert c.leaders() == [1] and _terms(c) == {1: 1, 2: 1, 3: 1}
    c.tick_all(2)
    assert c.node(3).role is Role.FOLLOWER and c.node(3).leader == 1
    assert c.leaders() == [1] and _terms(c) == {1: 1, 2: 1, 3: 1}


def test_forgetting_a_live_leader_on_a_majority_lets_a_campaign_depose_it() -> None:
    """The contrast that bounds forget_leader: it turns the lease check off on its member, so
    a campaign wins once a majority forgot a leader that is in fact alive. The runtime calls
    it only when the leader's own kernel closed the follower's link (its process is gone),
    never for another member's link, a pause or a restart of the follower itself."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(2).forget_leader()
    c.node(3).forget_leader()
    c.node(3).campaign()
    c.stabilize()
    assert c.leaders() == [3] and c.node(1).term == 2
