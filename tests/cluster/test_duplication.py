"""Raft messages delivered twice (the transport's fault hook) change nothing: a proposal a
follower forwarded is applied once, however often its message arrives (the fault campaign's
first run with duplication, seed 31, saw writes committed twice)."""

from __future__ import annotations

from .conftest import MakeCluster


def test_duplicated_messages_apply_each_write_once(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    # Every Raft message, both ways between every pair, delivered twice.
    for m in cluster:
        for o in cluster:
            if o is not m:
                assert m.call("fault_rule", peer=o.name, duplicate=1.0)
    start = leader.call("revision")
    revisions = [follower.put("k", i) for i in range(30)]
    revisions += [leader.put("k", 100 + i) for i in range(10)]
    assert revisions == list(range(start + 1, start + 41)), "a write applied twice"
    wid = follower.call("watch_start", key="k", start_revision=start + 1)
    events = follower.watch_until(wid, start + 40)
    assert [row[2] for row in events] == [*range(30), *range(100, 110)]
    cluster.heal()
    assert cluster.wait_converged()["revision"] == start + 40
