"""A partitioned minority cannot commit and, healed, converges (the key-space hash equal on
every member). Partitions come from the transport's fault hook (a silent loss of every
message, as on a cut network) and from SIGSTOP (a majority frozen in place)."""

from __future__ import annotations

import pytest

import embedkv

from .conftest import MakeCluster


@pytest.mark.parametrize("size", [3, 5])
def test_partitioned_minority_cannot_commit_and_converges_when_healed(
    make_cluster: MakeCluster, size: int
) -> None:
    cluster = make_cluster(size)
    old = cluster.wait_leader()
    old.put("k", "before")
    cluster.wait_converged()
    # The old leader and (with five) one follower end up on the small side.
    minority = [old, *cluster.followers(old)[: (size - 1) // 2 - 1]]
    majority = [m for m in cluster if m not in minority]
    cluster.partition(minority)
    new = cluster.wait_leader(majority)
    new.put("k", "majority")
    for m in majority:
        assert m.get("k") == "majority"
    # The small side: writes and linearizable reads fail within the request timeout; it
    # applies nothing meanwhile, and the isolated leader steps down (CheckQuorum).
    for m in minority:
        revision = m.call("revision")
        with pytest.raises(embedkv.Unavailable):
            m.put("k", f"minority/{m.name}")
        with pytest.raises(embedkv.Unavailable):
            m.get("k")
        assert m.get("k", serializable=True) == "before"
        assert m.call("revision") == revision
    assert old.leader() != old.name
    cluster.heal()
    cluster.wait_leader()
    for m in minority:
        assert m.get("k") == "majority"
    converged = cluster.wait_converged()
    assert converged["count"] == 1


def test_frozen_majority_leaves_the_rest_unable_to_commit(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    leader.put("k", 1)
    cluster.wait_converged()
    alone = cluster.followers(leader)[0]
    frozen = [m for m in cluster if m is not alone]
    for m in frozen:
        m.stop()
    with pytest.raises(embedkv.Unavailable):
        alone.put("k", 2)
    with pytest.raises(embedkv.Unavailable):
        alone.get("k")
    assert alone.get("k", serializable=True) == 1
    for m in frozen:
        m.cont()
    cluster.wait_leader()
    alone.put("k", 3)
    for m in cluster:
        assert m.get("k") == 3
    cluster.wait_converged()
