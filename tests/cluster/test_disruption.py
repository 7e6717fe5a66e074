"""A stable leader is not deposed by a follower coming back: with PreVote and CheckQuorum a
member that heard from the leader within the election timeout refuses the (pre-)votes of a
member that was frozen (SIGSTOP) or crashed and restarted (SIGKILL), so neither the leader nor
the term changes (etcd's behaviour, Raft thesis §9.6). A leader change would let users'
short leases lapse ("not the leader" on keep-alives)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.waiting import wait_for

from .conftest import MakeCluster
from .harness import FAST, Cluster, Member

ROUNDS = 4

AWAY = 2.5 * FAST["tick_interval"] * FAST["election_tick"]
"""Seconds a follower stays away: longer than the largest randomized election timeout
(2 * election_tick ticks), so that it campaigns as soon as it is back."""


def _back(cluster: Cluster, follower: Member, leader: Member) -> None:
    """Wait until `follower` names a leader again and has applied the leader's commit index
    (as read after it came back)."""
    commit = leader.status()["commit_index"]

    def caught_up() -> bool:
        status = follower.status()
        return status["leader"] is not None and status["applied_index"] >= commit

    wait_for(caught_up, 30.0, f"{follower.name} to name a leader and apply index {commit}")


def _away(cluster: Cluster, how: str, member: Member) -> None:
    """Take `member` away for AWAY seconds (not a synchronisation: the point of the test is a
    member silent for longer than an election timeout) and bring it back. "deaf": it hears
    the other follower but not the leader, so it campaigns over and over meanwhile, and hears
    the answers (a paused or restarted member rarely campaigns: ticks missed in a pause are
    not replayed, and the messages queued for it arrive first)."""
    if how == "deaf":
        leader = cluster.wait_leader([m for m in cluster if m is not member])
        member.call("fault_rule", peer=leader.name, drop=1.0, direction="receive")
        time.sleep(AWAY)
        member.call("heal")
    elif how == "sigstop":
        member.stop()
        try:
            time.sleep(AWAY)
        finally:
            member.cont()
    elif how == "sigkill-wait":
        member.kill()
        time.sleep(AWAY)
        member.start()
    else:
        member.restart()


@pytest.mark.parametrize("how", ["sigstop", "sigkill-wait", "sigkill-restart", "deaf"])
def test_a_returning_follower_does_not_depose_the_leader(
    make_cluster: MakeCluster, how: str
) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    term = leader.status()["term"]
    expected = {m.name: (leader.name, term) for m in cluster}
    for round_ in range(ROUNDS):
        follower = cluster.followers(leader)[round_ % 2]
        others = [m for m in cluster if m is not follower]
        # Even rounds idle: the follower comes back with a log as long as the others', so
        # only the leader lease refuses its pre-votes. Odd rounds write meanwhile: it comes
        # back behind, with messages queued for it.
        loads: list[tuple[Member, Callable[[], object]]] = []
        if round_ % 2:
            for m in others:
                fut = m.send("load", kind="put", threads=2, count=100, prefix=f"l/{round_}/")
                loads.append((m, lambda m=m, fut=fut: m.result(fut, "load", timeout=60.0)))
        _away(cluster, how, follower)
        for _, finish in loads:
            finish()
        leader.put(f"round/{round_}", round_)
        _back(cluster, follower, leader)
        seen = {m.name: (m.leader(), m.status()["term"]) for m in cluster}
        assert seen == expected, (
            f"round {round_}: {follower.name} came back ({how}) and the leader or the term "
            f"changed: {seen}, expected {expected}"
        )
