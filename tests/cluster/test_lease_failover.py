"""A deposed leader must not renew a lease (the fault campaign's seed 901, made deterministic).

The old leader is cut off with the transport's fault hook and given a long election timeout, so
its CheckQuorum keeps it believing it leads for a while; the other two elect a new leader,
whose countdown for every lease restarted at its election. A keep-alive sent to the old leader
then must not be acknowledged: if it were, the client would count the TTL from it while the
new leader's countdown, started earlier, removes the key before that TTL ran out.
"""

from __future__ import annotations

import time

import embedkv

from ..waiting import wait_for
from .conftest import MakeCluster
from .harness import FAST

TTL = 6
ELAPSED = 3.0
"""Seconds of the new leader's countdown gone before the keep-alive on the old leader: the
margin by which an acknowledged renewal would be outlived (the key gone too early)."""


def test_isolated_old_leader_renews_no_lease(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    old = cluster["n1"]
    # n1's election timeout 20 s: cut off, it keeps believing it leads (CheckQuorum counts
    # in its own election timeout) long after the others elected a new leader.
    old.restart(**dict(FAST, election_tick=400))
    leader = cluster.wait_leader()
    if leader is not old:
        leader.call("transfer_leadership", to=old.name)
    assert cluster.wait_leader() is old
    granted = time.monotonic()
    lease = old.call("lease_grant", ttl=TTL)["id"]
    old.put("l/k", "v", lease=lease)
    cluster.wait_converged()

    cluster.partition([old])
    rest = [m for m in cluster if m is not old]
    new = cluster.wait_leader(rest)
    assert old.leader() == old.name, "the old leader stepped down already: no race to test"
    # The new leader's countdown (restarted at its election) has run ELAPSED seconds.
    wait_for(lambda: new.call("lease_ttl", lease=lease) < TTL - ELAPSED, 2 * TTL,
             "the new leader's countdown to run")

    renewed = time.monotonic()
    acknowledged = True
    try:
        old.call("lease_keepalive", lease=lease)
    except embedkv.Unavailable:
        acknowledged = False
    last_ok = renewed if acknowledged else granted

    gone_seen: list[float] = []

    def gone() -> bool:
        absent = new.get("l/k") is None
        if absent:
            gone_seen.append(time.monotonic())
        return absent

    wait_for(gone, 4 * TTL, "the leased key to expire on the majority")
    # The key must live at least TTL from the last keep-alive the client saw acknowledged.
    assert gone_seen[0] >= last_ok + TTL, (
        f"the key vanished {last_ok + TTL - gone_seen[0]:.2f}s before its TTL from the last"
        f" acknowledged keep-alive (acknowledged by the isolated old leader: {acknowledged})")
    assert not acknowledged, "an isolated, deposed leader acknowledged a keep-alive"
    cluster.heal()
    cluster.wait_leader()
    cluster.wait_converged()
