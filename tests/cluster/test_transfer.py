"""Leadership transfer while every member is writing: the named member leads, no write is
lost or half-applied, and writes go on."""

from __future__ import annotations

from .conftest import MakeCluster


def test_leadership_transfer_under_load(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    old = cluster.wait_leader()
    target = cluster.followers(old)[-1]
    members = list(cluster)
    for m in members:
        m.call("load_start", name="t", threads=4, prefix=f"t/{m.name}/")
    before = {m.name: m.wait_load("t", 30) for m in members}
    assert old.call("transfer_leadership", to=target.name) == target.name
    # Writes resume through every member after the hand-over.
    for m in members:
        m.wait_load("t", before[m.name] + 30)
    results = {m.name: m.call("load_stop", name="t") for m in members}
    for name, state in results.items():
        assert set(state["errors"]) <= {"Unavailable"}, (name, state["errors"])
    converged = cluster.wait_converged()
    # Every acknowledged put is on every member; a failed one (outcome unknown) at most once.
    on_leader = {k for k, _ in target.call("range", prefix="t/")}
    for state in results.values():
        assert set(state["acked"]) <= on_leader
    assert converged["count"] == len(on_leader)
    # Transfer to whoever is best placed, through a follower.
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    chosen = follower.call("transfer_leadership")
    assert chosen != leader.name
    assert cluster.wait_leader().name == chosen
