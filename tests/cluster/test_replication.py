"""Every member serves every operation, and every member sees the same history: writes on
any member are visible on all, watches on every member see the identical event sequence,
leases granted, kept alive and revoked through any member hold everywhere."""

from __future__ import annotations

import pytest

import embedkv

from .conftest import MakeCluster


@pytest.mark.parametrize("size, tls", [(3, False), (5, False), (3, True)],
                         ids=["3", "5", "3-tls"])
def test_writes_on_any_member_are_visible_on_all(make_cluster: MakeCluster, size: int,
                                                 tls: bool) -> None:
    cluster = make_cluster(size, tls=tls)
    members = list(cluster)
    for i, m in enumerate(members):
        m.put(f"k/{m.name}", i)
    # A linearizable read on any member sees every write acknowledged before it began.
    for reader in members:
        for i, writer in enumerate(members):
            assert reader.get(f"k/{writer.name}") == i, (reader.name, writer.name)
    # Every kind of write, each through a different member.
    a, b, c = members[:3]
    assert a.call("cas", key="k/n1", expected=0, new="swapped") is True
    assert b.call("cas", key="k/n1", expected=0, new="lost") is False
    assert c.call("txn", compare=[["k/n1", "swapped"]], success=[["t", 1]])["succeeded"]
    assert b.call("delete", key="k/n2")["deleted"] == 1
    for reader in members:
        assert reader.get("k/n1") == "swapped"
        assert reader.get("t") == 1
        assert reader.get("k/n2") is None
    # Serializable reads are local: each member gets there once it has applied everything.
    converged = cluster.wait_converged()
    assert converged["count"] == size + 1 - 1  # k/n* less the deleted one, plus t


def test_watches_see_the_identical_sequence_everywhere(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    members = list(cluster)
    members[0].put("w/before", 0)
    start = members[0].call("revision")
    # From one revision on every member (a watch "from now on" would start wherever each
    # member has applied up to).
    live = {m.name: m.call("watch_start", key="w/", prefix=True, start_revision=start + 1)
            for m in members}
    # Concurrent writers on every member, plus deletes and transactions in between.
    for m in members:
        m.call("load_start", name="w", threads=3, prefix=f"w/{m.name}/")
    for m in members:
        m.wait_load("w", 40)
    members[1].call("delete", key="w/n1/", prefix=True)
    members[2].call("txn", compare=[["w/before", 0]], success=[["w/before", 1], ["w/txn", 2]])
    acked = {m.name: m.call("load_stop", name="w") for m in members}
    last = members[0].put("w/last", "end")
    sequences = {m.name: m.watch_until(live[m.name], last) for m in members}
    first = sequences[members[0].name]
    for name, rows in sequences.items():
        diverge = next((i for i, (a, b) in enumerate(zip(rows, first, strict=False)) if a != b),
                       min(len(rows), len(first)))
        assert rows == first, (
            f"{name}'s events differ from {members[0].name}'s at #{diverge}: "
            f"{rows[diverge:diverge + 3]} != {first[diverge:diverge + 3]}"
        )
    revisions = [row[3] for row in first]
    assert revisions == sorted(revisions) and revisions[0] > start
    for state in acked.values():
        assert set(state["errors"]) <= {"Unavailable"}, state["errors"]
    written = {row[1] for row in first if row[0] == "PUT"}
    for state in acked.values():
        assert set(state["acked"]) <= written
    # A watch replaying history from the same revision sees the same events on every member.
    replay = {m.name: m.call("watch_start", key="w/", prefix=True, start_revision=start + 1)
              for m in members}
    for m in members:
        assert m.watch_until(replay[m.name], last) == first


def test_leases_work_through_any_member(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    f1, f2 = cluster.followers(leader)
    lease = f1.call("lease_grant", ttl=60)
    put = f2.put("leased", "x", lease=lease["id"])
    # TTL queries go to the leader from any member.
    assert 0 < f1.call("lease_ttl", lease=lease["id"]) <= 60
    assert 0 < leader.call("lease_ttl", lease=lease["id"]) <= 60
    wids = {m.name: m.call("watch_start", key="leased", start_revision=put + 1)
            for m in cluster}
    for m in cluster:
        assert m.get("leased") == "x"
        assert m.call("get", key="leased")["lease"] == lease["id"]
    # So do keep-alives (not Raft entries).
    assert f2.call("lease_keepalive", lease=lease["id"]) == 60
    assert leader.call("lease_keepalive", lease=lease["id"]) == 60
    f2.call("lease_revoke", lease=lease["id"])
    for m in cluster:
        assert m.get("leased") is None
        rows = m.watch_until(wids[m.name], 0)
        assert [r[:2] for r in rows] == [["DELETE", "leased"]]
    for m in cluster:
        with pytest.raises(embedkv.LeaseNotFound):
            m.call("lease_keepalive", lease=lease["id"])
        with pytest.raises(embedkv.LeaseNotFound):
            m.call("lease_ttl", lease=lease["id"])
