"""Randomized safety and liveness tests of the Raft core on the deterministic simulator.

* `test_random_schedules`: EMBEDKV_SIM_SEEDS (default 1,000) random schedules, in chunks.
* Targeted scenarios: a partitioned leader rejoining (PreVote, CheckQuorum), rolling crashes,
  membership churn that replaces every member, snapshot catch-up, leadership transfer,
  a read on a deposed leader; `stale_leader` schedules (reads under partition).
* Self-tests: planted runtime bugs must be caught, so the checker is not vacuous.

Every failure prints `python -m tests.raft.soak --seed S --steps N --verbose`, which replays
the schedule deterministically with a trace. See docs/internals/simulation.md.
"""

from __future__ import annotations

import contextlib
import os

import pytest

from embedkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    ProposalDropped,
    Role,
)

from .checker import SAFETY_KINDS, CheckerOptions, Kind, Violation
from .simulator import (
    DEFAULT_STEPS,
    CrashPoint,
    Faults,
    ScheduleParams,
    SimNode,
    Simulation,
    Stats,
    run_schedule,
)

SEEDS = int(os.environ.get("EMBEDKV_SIM_SEEDS", "1000"))
STEPS = int(os.environ.get("EMBEDKV_SIM_STEPS", str(DEFAULT_STEPS)))
CHUNK = 50
CHUNKS = [(start, min(CHUNK, SEEDS - start)) for start in range(0, SEEDS, CHUNK)]


@pytest.mark.parametrize(
    ("start", "count"), CHUNKS, ids=[f"seeds{s}-{s + c - 1}" for s, c in CHUNKS]
)
def test_random_schedules(start: int, count: int) -> None:
    failures = []
    for seed in range(start, start + count):
        result = run_schedule(seed, STEPS)
        if not result.ok:
            failures.append(result)
    if failures:
        lines = [f"{len(failures)} of {count} schedules failed:"]
        lines += [r.describe() for r in failures[:10]]
        pytest.fail("\n".join(lines), pytrace=False)


def test_schedules_exercise_every_feature() -> None:
    """The random schedules are not vacuous: each fault and feature does happen."""
    total = Stats()
    for seed in range(80):
        result = run_schedule(seed, STEPS)
        assert result.ok, result.describe()
        total.add(result.stats)
    for name in (
        "elections",
        "crashes",
        "mid_ready_crashes",
        "calls_mid_ready",
        "second_readies",
        "restarts",
        "snapshots_installed",
        "conf_changes_applied",
        "reads_released",
        "transfers",
        "partitions",
        "duplicated",
        "dropped",
    ):
        assert getattr(total, name) > 0, f"no schedule exercised {name}: {total}"
    assert total.committed > 80 * 10, total


def test_atomic_readies_still_run() -> None:
    """The simulator before issue 14 (each Ready handled atomically) stays available."""
    for seed in range(20):
        result = run_schedule(seed, STEPS, pipeline=False)
        assert result.ok, result.describe()
        assert result.stats.second_readies == 0


def test_a_seed_replays_identically() -> None:
    lines_a: list[str] = []
    lines_b: list[str] = []
    a = run_schedule(7, 120, trace=lines_a.append)
    b = run_schedule(7, 120, trace=lines_b.append)
    assert a.ok and b.ok
    assert lines_a == lines_b
    assert a.stats == b.stats


# -- targeted scenarios ----------------------------------------------------------------------


def _sim(size: int, seed: int = 1, **overrides: object) -> Simulation:
    params = ScheduleParams(seed=seed, cluster_size=size, **overrides)  # type: ignore[arg-type]
    return Simulation(params)


def _applied_payloads(node: SimNode) -> set[bytes]:
    return {data for _, kind, data in node.app.history if kind == 0 and data}


def test_partitioned_leader_rejoins_without_disrupting() -> None:
    sim = _sim(3, pre_vote=True, check_quorum=True)
    old = sim.stabilize()
    old_term = old.core().term
    sim.isolate(old.id)
    others = [n for n in sim.nodes.values() if n.id != old.id]

    def new_leader() -> bool:
        return any(n.core().role is Role.LEADER for n in others)

    sim.run_until(new_leader, 10 * sim.params.election_tick, "a new leader in the majority")
    # CheckQuorum: the isolated leader steps down; PreVote: it does not inflate its term.
    sim.run_until(lambda: old.core().role is not Role.LEADER, 4 * sim.params.election_tick)
    for _ in range(5 * sim.params.election_tick):
        sim.tick_all()
        sim.flush()
    assert old.core().term == old_term
    new = next(n for n in others if n.core().role is Role.LEADER)
    new_term = new.core().term
    assert sim.propose(new, b"while-partitioned")
    sim.flush()
    sim.heal()
    sim.run_until(lambda: b"while-partitioned" in _applied_payloads(old), 50)
    for _ in range(5 * sim.params.election_tick):
        sim.tick_all()
        sim.flush()
    assert new.core().role is Role.LEADER and new.core().term == new_term
    assert old.core().leader == new.id and old.core().term == new_term


def test_rolling_crashes() -> None:
    sim = _sim(5, seed=2)
    acked: list[bytes] = []
    points = [None, *CrashPoint]
    for round_no, victim_id in enumerate([1, 2, 3, 4, 5, 1, 3]):
        leader = sim.stabilize()
        for i in range(5):
            data = f"w{round_no}-{i}".encode()
            if sim.propose(leader, data):
                acked.append(data)
        sim.process_readies()
        victim = sim.nodes[victim_id]
        sim.crash(victim, points[round_no % len(points)] if victim.core().has_ready() else None)
        for _ in range(sim.params.election_tick):
            sim.tick_all()
            sim.flush()
        sim.restart(victim)
    sim.stabilize()
    sim.wait_applied_everywhere(b"final")
    committed = {data for data in acked if data in sim.checker.payload_index}
    assert len(committed) >= len(acked) // 2, "most writes proposed to a stable leader commit"
    for node in sim.nodes.values():
        assert committed <= _applied_payloads(node), f"node {node.id} lost a committed write"
    assert sim.stats.restarts == 7


def _change(sim: Simulation, kind: ConfChangeType, node_id: int) -> None:
    """Propose one membership change through the leader and wait until all apply it."""
    for _ in range(20):
        leader = sim.stabilize()
        if sim.propose_conf_change(leader, ConfChange(kind, node_id)):
            break
        sim.tick_all()
    else:
        raise AssertionError(f"conf change {kind.name} {node_id} never accepted")
    target = sim.nodes[node_id]

    def applied_everywhere() -> bool:
        ok = True
        for n in sim.up_nodes():
            cs = n.app.conf_state
            if n.id == node_id and kind is ConfChangeType.REMOVE:
                continue
            if kind is ConfChangeType.REMOVE:
                ok &= node_id not in cs.voters | cs.learners
            elif kind is ConfChangeType.ADD_VOTER:
                ok &= node_id in cs.voters
            else:
                ok &= node_id in cs.learners
        return ok and (kind is ConfChangeType.REMOVE or target.app.applied > 0)

    sim.run_until(applied_everywhere, 30 * sim.params.election_tick, f"{kind.name} {node_id}")


def test_membership_churn_replaces_every_member() -> None:
    sim = _sim(3, seed=3, max_size_per_msg=64, max_inflight_msgs=2)
    for i in range(20):
        sim.propose(sim.stabilize(), f"before-{i}".encode())
    sim.flush()
    for new_id, old_id in ((4, 1), (5, 2), (6, 3)):
        sim.start_new_member(new_id)
        _change(sim, ConfChangeType.ADD_LEARNER, new_id)
        sim.propose(sim.stabilize(), f"with-learner-{new_id}".encode())
        _change(sim, ConfChangeType.ADD_VOTER, new_id)
        _change(sim, ConfChangeType.REMOVE, old_id)  # removes the leader too, at some point
        sim.nodes[old_id].raft = None
        sim.nodes[old_id].retired = True
    leader = sim.stabilize()
    assert leader.id in (4, 5, 6)
    assert leader.core().status().conf_state == ConfState(voters=frozenset({4, 5, 6}))
    sim.wait_applied_everywhere(b"after-churn")
    for node_id in (4, 5, 6):
        assert {b"before-0", b"before-19"} <= _applied_payloads(sim.nodes[node_id])


def test_lagging_follower_catches_up_by_snapshot() -> None:
    sim = _sim(3, seed=4)
    leader = sim.stabilize()
    lagger = next(n for n in sim.nodes.values() if n.id != leader.id)
    sim.isolate(lagger.id)
    for i in range(30):
        sim.propose(leader, f"w{i}".encode())
        sim.flush()
    app = leader.app
    leader.storage.create_snapshot(app.applied, app.conf_state, app.encode())
    leader.storage.compact(app.applied)
    sim.heal()
    sim.run_until(lambda: lagger.app.applied >= app.applied, 20 * sim.params.election_tick)
    assert sim.stats.snapshots_installed == 1
    assert b"w29" in _applied_payloads(lagger)
    sim.wait_applied_everywhere(b"after-snapshot")


def test_leadership_transfer() -> None:
    sim = _sim(5, seed=5)
    leader = sim.stabilize()
    target = max(n.id for n in sim.nodes.values() if n.id != leader.id)
    leader.core().transfer_leader(target)
    sim.run_until(
        lambda: sim.nodes[target].core().role is Role.LEADER, 3 * sim.params.election_tick
    )
    sim.wait_applied_everywhere(b"after-transfer")


def test_deposed_leader_serves_no_stale_read() -> None:
    sim = _sim(3, seed=6, check_quorum=True)
    old = sim.stabilize()
    sim.isolate(old.id)
    others = [n for n in sim.nodes.values() if n.id != old.id]
    sim.run_until(
        lambda: any(n.core().role is Role.LEADER for n in others), 10 * sim.params.election_tick
    )
    new = next(n for n in others if n.core().role is Role.LEADER)
    assert sim.propose(new, b"fresh-write")
    sim.run_until(lambda: b"fresh-write" in sim.checker.payload_index, 10)
    # A read on the isolated old leader must not be answered from its stale state.
    sim.checker.on_read_requested(old.id, b"stale?")
    with contextlib.suppress(ProposalDropped):  # refusing is a fine answer
        old.core().read_index(b"stale?")
    for _ in range(3 * sim.params.election_tick):
        sim.tick_all()
        sim.flush()  # the checker fails the test if a stale read state is released
    sim.heal()
    sim.wait_applied_everywhere(b"after-heal")


def test_deposed_leader_with_a_reused_context_serves_no_stale_read() -> None:
    """Issue 14, item 2, in the simulator: a follower's read with context 1 is confirmed while
    one heartbeat answer is held up on the way; the leader is cut off and deposed, then asked
    again with context 1 (its own first context), and the held-up answer of the first round
    arrives. Before the fix the checker reported a stale read here."""
    sim = _sim(3, seed=12, check_quorum=False, pipeline=False)
    old = sim.stabilize()
    asker, other = (n for n in sorted(sim.nodes.values(), key=lambda n: n.id) if n is not old)
    assert sim.read_index(asker, 1)
    sim.handle_ready(asker)
    sim.deliver_all()  # READ_INDEX reaches the leader
    sim.handle_ready(old)
    sim.deliver_all()  # its round of heartbeats
    sim.handle_ready(asker)
    sim.handle_ready(other)
    held = [p for p in sim.net.packets if p.msg.from_ == other.id]
    assert [p.msg.type for p in held] == [MessageType.HEARTBEAT_RESP]
    sim.net.packets = [p for p in sim.net.packets if p not in held]
    sim.flush()
    assert (asker.id, (1).to_bytes(8, "big")) in sim.checker.released_contexts
    sim.isolate(old.id)
    others = (asker, other)
    sim.run_until(
        lambda: any(n.core().role is Role.LEADER for n in others), 10 * sim.params.election_tick
    )
    new = next(n for n in others if n.core().role is Role.LEADER)
    assert sim.propose(new, b"fresh-write")
    sim.run_until(lambda: b"fresh-write" in sim.checker.payload_index, 10)
    assert old.core().role is Role.LEADER  # it does not know yet
    old.read_ctx = 1
    assert sim.read_index(old, 1)
    sim.handle_ready(old)  # its heartbeats are lost (cut off)
    for pkt in held:  # the first round's answer was already on its way
        pkt.in_transit = True
        sim.deliver(pkt)
    sim.flush()  # the checker raises if a stale read state is released
    assert (old.id, (1).to_bytes(8, "big")) not in sim.checker.released_contexts


# Seeds of the `stale_leader` family (`--stale-leader`) that found issue 14's item 2 (a reused
# context confirmed by an earlier round's held-up answer: `stale-read`) on the core before the
# fix (commit 4294213); see docs/internals/simulation.md.
STALE_LEADER_FOUND = (4, 112, 138, 448, 514, 568, 882, 979)


def test_stale_leader_schedules() -> None:
    """Reads under partition: the seeds that found item 2 before the fix, and 100 more, run
    clean, and the family does what it is for (deposed leaders asked to read)."""
    total = Stats()
    failures = []
    for seed in (*STALE_LEADER_FOUND, *range(1000, 1100)):
        result = run_schedule(seed, STEPS, stale_leader=True)
        total.add(result.stats)
        if not result.ok:
            failures.append(result.describe())
    assert not failures, "\n".join(failures[:10])
    assert ScheduleParams.from_seed(4, stale_leader=True).check_quorum is False
    assert total.partitions > 0 and total.reads_released > 0, total
    assert total.elections > len(STALE_LEADER_FOUND) + 100, total  # leaders are deposed


# -- self-tests: the checker catches planted bugs ------------------------------------------


@pytest.mark.parametrize("forget", [False, True], ids=["intact", "forgets-vote"])
def test_checker_catches_a_node_that_forgets_its_vote(forget: bool) -> None:
    """Scripted: node 3 votes for 1 in term 1, restarts, then is asked by 2 in term 1."""
    params = ScheduleParams(seed=8, cluster_size=3, pre_vote=False, check_quorum=False)
    sim = Simulation(
        params,
        faults=Faults(forget_vote_on_restart=forget),
        options=CheckerOptions(hard_state_checks=False),
    )
    n1, n2, n3 = (sim.nodes[i] for i in (1, 2, 3))
    sim.isolate(2)
    n1.core().campaign()
    sim.handle_ready(n1)  # VOTE to 3 (the one to 2 is cut)
    sim.deliver_all()
    sim.handle_ready(n3)  # 3 persists its vote for 1 and answers
    sim.deliver_all()
    assert n1.core().role is Role.LEADER and n1.core().term == 1
    sim.crash(n3)
    sim.restart(n3)
    sim.heal()
    sim.isolate(1)
    n2.core().campaign()
    if not forget:
        sim.flush()
        assert n2.core().role is not Role.LEADER
        return
    with pytest.raises(Violation) as caught:
        sim.flush()
    assert caught.value.kind == Kind.ELECTION_SAFETY, caught.value


def _first_caught(faults: Faults, options: CheckerOptions, seeds: range) -> str:
    """The first safety violation the checker reports, on chaos schedules, under a planted bug.

    The core may notice some corruptions itself first (a commit index beyond the log is a
    core error, as in etcd), and a corrupted cluster may also just stall; those runs are
    skipped: the point is to prove the checker catches the bug.
    """
    for seed in seeds:
        result = run_schedule(seed, STEPS, faults=faults, options=options, chaos=True)
        if not result.ok and result.kind not in (Kind.CORE_EXCEPTION, Kind.LIVENESS):
            assert result.kind in SAFETY_KINDS, result.describe()
            return result.kind
    return ""


def test_random_schedules_catch_a_forgotten_vote() -> None:
    kind = _first_caught(Faults(forget_vote_on_restart=True), CheckerOptions(), range(100))
    assert kind, "no schedule caught a node that forgets its vote on restart"


@pytest.mark.parametrize(
    ("fault", "kind", "seeds"),
    [
        (Faults(commit_earlier_terms=True), Kind.LEADER_COMMIT_TERM, 100),
        (Faults(vote_off_by_one=True), Kind.VOTE_NOT_UP_TO_DATE, 100),
        (Faults(quorum_off_by_one=True), Kind.COMMIT_WITHOUT_MAJORITY, 20),
    ],
    ids=["figure-8", "vote-off-by-one", "quorum-off-by-one"],
)
def test_random_schedules_catch_a_planted_core_bug(fault: Faults, kind: str, seeds: int) -> None:
    """Each direct check of a classic rule fails on its planted bug: a leader committing an
    earlier term's entry by counting replicas (Figure 8), a vote granted to a log one entry
    shorter, a commit counted with one voter fewer than a majority."""
    assert _first_caught(fault, CheckerOptions(), range(seeds)) == kind


def test_random_schedules_catch_lost_persisted_entries() -> None:
    """A storage that loses acknowledged entries on a crash lets committed entries vanish."""
    kind = _first_caught(Faults(lose_unapplied_tail_on_crash=True), CheckerOptions(), range(200))
    assert kind, "no schedule caught a storage that loses persisted entries on crash"


@pytest.mark.parametrize("kind", [ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE])
def test_leader_that_leaves_and_crashes_before_handing_off(kind: ConfChangeType) -> None:
    """The leader demotes or removes itself, is the only one to learn that it committed,
    has one more entry than the remaining voter, and crashes before handing off."""
    sim = _sim(2, seed=9, pre_vote=True, check_quorum=True)
    leader = sim.stabilize()
    other = next(n for n in sim.nodes.values() if n.id != leader.id)
    assert sim.propose_conf_change(leader, ConfChange(kind, leader.id))
    sim.handle_ready(leader)  # persists the change, sends it
    sim.deliver_all()
    sim.handle_ready(other)  # persists it, acknowledges
    sim.deliver_all()  # the leader commits the change
    with contextlib.suppress(ProposalDropped):
        leader.core().propose(b"after-the-change")
    sim.net.cut(leader.id, other.id)  # the other voter never hears that it committed
    sim.handle_ready(leader)  # applies its own demotion/removal
    sim.crash(leader)
    sim.restart(leader)
    sim.heal()
    sim.stabilize()
    sim.wait_applied_everywhere(b"after-recovery")


def test_member_removed_during_its_own_campaign() -> None:
    """A follower learns, from the commit hint in a (pre-)vote response, that its own removal
    committed, applies it mid-campaign, and must not go on to win the election."""
    sim = _sim(3, seed=10, pre_vote=True, check_quorum=False)
    leader = sim.stabilize()
    victim, other = (n for n in sorted(sim.nodes.values(), key=lambda n: n.id) if n is not leader)
    assert sim.propose_conf_change(leader, ConfChange(ConfChangeType.REMOVE, victim.id))
    sim.handle_ready(leader)
    sim.deliver_all()  # the change reaches both followers
    sim.handle_ready(victim)
    sim.handle_ready(other)
    sim.deliver_all()  # the leader commits it
    sim.net.cut(leader.id, victim.id)  # ... but the victim never hears so from the leader
    sim.flush()
    assert victim.app.conf_state.voters == {leader.id, victim.id, other.id}
    sim.crash(leader)  # the leader goes away; it comes back as a follower
    sim.restart(leader)
    sim.heal()
    victim.core().campaign()
    sim.flush()  # the vote responses tell the victim that its removal committed
    assert victim.core().role is not Role.LEADER
    sim.stabilize()
    sim.wait_applied_everywhere(b"after-removal")


def test_learner_in_a_newer_term_catches_up_without_prevote_or_checkquorum() -> None:
    """A stale leader's appends are answered with the newer term, so the leader steps up to it
    and a learner stuck in a higher term is not stranded (found by this simulator)."""
    sim = _sim(1, seed=11, pre_vote=False, check_quorum=False)
    leader = sim.stabilize()
    learner = sim.start_new_member(2)
    assert sim.propose_conf_change(leader, ConfChange(ConfChangeType.ADD_LEARNER, 2))
    sim.run_until(lambda: learner.app.applied >= 2, 50, "the learner joins")
    # A vote request from a (since removed) member in a newer term reaches only the learner.
    term = learner.core().term + 1
    learner.core().step(Message(MessageType.VOTE, to=2, from_=3, term=term, index=0, log_term=0))
    sim.wait_applied_everywhere(b"after-term-bump")
