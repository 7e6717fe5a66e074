"""Membership changes: a fourth member joins a cluster holding many keys, catches up and is
promoted; a one-member store grows into three with every key kept; a removed member fails
every operation and cannot disturb the others."""

from __future__ import annotations

import pytest

import embedkv
from tests.waiting import wait_for

from ..ports import free_port, free_ports
from .conftest import MakeCluster
from .harness import ChildError, Member

KEYS = 5000
"""Keys in the cluster a new member joins (the bench does it with 100k)."""


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_fourth_member_joins_catches_up_and_is_promoted(make_cluster: MakeCluster,
                                                         tls: bool) -> None:
    cluster = make_cluster(3, tls=tls)
    leader = cluster.wait_leader()
    leader.call("fill", prefix="k/", count=KEYS)
    joiner = cluster.join("n4")
    everyone = {"n1": True, "n2": True, "n3": True, "n4": True}
    for m in cluster:
        cluster.wait_members(m, everyone)
    converged = cluster.wait_converged()
    assert converged["count"] == KEYS
    info = {m["name"]: m for m in leader.members()}
    assert info["n4"]["address"] == joiner.address
    assert sum(bool(m["leader"]) for m in info.values()) == 1
    joiner.put("from/n4", 1)
    assert leader.get("from/n4") == 1
    status = joiner.status()
    assert status["name"] == "n4" and status["leader"] == leader.name
    # n4 counts in the quorum: of four voters, the leader, one founder and n4 make three.
    founder = next(m for m in cluster.followers(leader) if m is not joiner)
    founder.kill()
    leader.put("quorum/with/n4", 1)
    assert joiner.get("quorum/with/n4") == 1


def test_member_added_as_learner_then_promoted(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    leader.call("fill", prefix="k/", count=500)
    joiner = cluster.join("n4")
    cluster.wait_members(leader, {"n1": True, "n2": True, "n3": True, "n4": True})
    # By hand, through a follower: a fifth member added as a learner (not promoted by
    # itself), started on its address with join, then promoted through another member.
    follower = cluster.followers(leader)[0]
    address = f"127.0.0.1:{free_port()}"
    added = follower.call("add_member", name="n5", address=address, learner=True)
    assert added["name"] == "n5" and added["voter"] is False
    n5 = cluster.member("n5", dict(cluster.options, name="n5", listen=address,
                                   join=[leader.address], insecure=True))
    n5.start()
    cluster.wait_converged()
    # A learner stays one until promoted: only joins ask to be promoted by themselves.
    cluster.wait_members(leader, {"n1": True, "n2": True, "n3": True, "n4": True, "n5": False})
    promoted = joiner.call("promote_member", name="n5")
    assert promoted["voter"] is True
    for m in cluster:
        cluster.wait_members(m, {f"n{i}": True for i in range(1, 6)})


def test_one_member_store_grows_into_three_keeping_every_key(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(0)
    n1 = cluster.member("n1", {})  # embedkv.open(path): a store that started alone
    n1.start()
    n1.call("fill", prefix="k/", count=2000)
    lease = n1.call("lease_grant", ttl=600)
    n1.put("leased", 1, lease=lease["id"])
    n1.call("delete", key="k/00000007")
    alone = n1.hash()
    n1.close()
    n1.restart(**dict(cluster.options, name="n1", listen=f"127.0.0.1:{free_port()}",
                      insecure=True))
    assert n1.hash() == alone
    cluster.join("n2", via=[n1])
    cluster.join("n3", via=[n1])
    for m in cluster:
        cluster.wait_members(m, {"n1": True, "n2": True, "n3": True})
    converged = cluster.wait_converged()
    assert converged["revision"] == alone["revision"] and converged["hash"] == alone["hash"]
    for m in cluster:
        assert m.call("get", key="leased")["lease"] == lease["id"]
        assert m.get("k/00000007") is None
    # It is a real cluster now: it survives the loss of its first member.
    n1.kill()
    survivors = cluster.running()
    cluster.wait_leader(survivors)
    survivors[0].put("grown", 1)
    assert survivors[1].get("grown") == 1


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_removed_member_fails_every_operation(make_cluster: MakeCluster, tls: bool) -> None:
    cluster = make_cluster(3, tls=tls)
    leader = cluster.wait_leader()
    victim = cluster.followers(leader)[0]
    rest = [m for m in cluster if m is not victim]
    leader.put("k", 1)
    rest[1].call("remove_member", name=victim.name)  # through any member
    for m in rest:
        cluster.wait_members(m, {m.name: True for m in rest})

    def refuses() -> bool:
        try:
            victim.put("from/victim", 1)
        except embedkv.Unavailable as exc:  # Removed is an Unavailable
            return getattr(exc, "remote", None) == "Removed"
        return False

    wait_for(refuses, 30, "the removed member to refuse writes with Removed")
    with pytest.raises(embedkv.Unavailable, match="Removed"):
        victim.get("k")
    with pytest.raises(embedkv.Unavailable, match="Removed"):
        victim.call("lease_grant", ttl=10)
    for m in rest:
        m.put(f"after/{m.name}", 1)
    cluster.wait_converged(rest)
    assert leader.get("from/victim") is None


def _removed(victim: Member) -> bool:
    """Whether `victim` refuses a write with Removed (not just Unavailable)."""
    try:
        victim.put("from/victim", 1)
    except embedkv.Unavailable as exc:  # Removed is an Unavailable
        return getattr(exc, "remote", None) == "Removed"
    return False


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_member_removed_while_down_learns_it_when_it_comes_back(
        make_cluster: MakeCluster, tls: bool) -> None:
    """It missed its removal (and the leader's word of it): restarted with the old
    configuration, it dials the others, which tell it it was removed (etcd's "permanently
    removed"). It then fails every operation with Removed, not with endless timeouts."""
    cluster = make_cluster(3, tls=tls)
    leader = cluster.wait_leader()
    victim = cluster.followers(leader)[0]
    rest = [m for m in cluster if m is not victim]
    leader.put("k", 1)
    cluster.wait_converged()
    victim.kill()
    rest[1].call("remove_member", name=victim.name)
    for m in rest:
        cluster.wait_members(m, {m.name: True for m in rest})
    victim.restart()
    wait_for(lambda: _removed(victim), 30, "the restarted member to learn it was removed")
    with pytest.raises(embedkv.Unavailable, match="Removed"):
        victim.get("k")
    for m in rest:
        m.put(f"after/{m.name}", 1)
    cluster.wait_converged(rest)
    assert leader.get("from/victim") is None
    # Its own log never got the removal: it is told again each time it comes back.
    victim.restart()
    wait_for(lambda: _removed(victim), 30, "the member told again after another restart")


def test_member_removed_while_cut_off_cannot_disturb_the_cluster(
    make_cluster: MakeCluster,
) -> None:
    """The member never learns of its removal from the log (it was cut off when it was
    committed): healed, it still takes the leader for its leader and asks it to write, then
    times out and campaigns. The others must refuse it all: no write of its lands, the term
    and the leader stay. (A long election timeout keeps it believing in its leader at first.)"""
    cluster = make_cluster(3, options={"tick_interval": 0.1, "election_tick": 30})
    leader = cluster.wait_leader()
    victim = cluster.followers(leader)[0]
    rest = [m for m in cluster if m is not victim]
    leader.put("k", 1)
    cluster.wait_converged()
    cluster.partition([victim])
    leader.call("remove_member", name=victim.name)
    for m in rest:
        cluster.wait_members(m, {m.name: True for m in rest})
    terms = {m.name: m.status()["term"] for m in rest}
    cluster.heal()
    # The victim's write takes a whole request timeout to fail; the others keep writing
    # meanwhile, with the same leader in the same term.
    failing = victim.send("put", key="from/victim", value=1)
    count = 0
    while not failing.done():
        for m in rest:
            m.put(f"steady/{m.name}/{count}", count)
        count += 1
    with pytest.raises(embedkv.Unavailable):
        victim.result(failing, "put")
    assert count > 0
    for m in rest:
        status = m.status()
        assert status["term"] == terms[m.name], f"{m.name}'s term moved: the victim disturbed it"
        assert status["leader"] == leader.name
    assert leader.get("from/victim") is None, "a removed member's write was applied"
    assert {m["name"] for m in leader.members()} == {m.name for m in rest}


def test_join_through_an_address_nobody_listens_on_fails_clearly(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    dead, listen = (f"127.0.0.1:{port}" for port in free_ports(2))  # nobody listens on dead
    lonely: Member = cluster.member("n9", dict(cluster.options, name="n9", listen=listen,
                                               join=[dead], insecure=True,
                                               request_timeout=1.0))
    with pytest.raises(ChildError, match="failed to open"):
        lonely.start()
    assert {m["name"] for m in cluster.wait_leader().members()} == {"n1", "n2", "n3"}
