"""Recipe users in member processes, on a three-member cluster of processes (tests/cluster's
harness): one SIGKILLed mid-holding — what it held frees itself after its TTL, and no one
else's — and users in every process contending for one lock."""

from __future__ import annotations

import threading

from tests.cluster.conftest import MakeCluster
from tests.cluster.harness import Member


def test_a_killed_holders_lock_goes_to_the_next_and_its_guard_fails(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    holder, waiter = cluster.followers(leader)
    token = holder.call("lock_acquire", name="db", ttl=1)
    assert holder.call("fenced_put", name="db", key="data", value="first")
    assert leader.call("lock_acquire", name="db", ttl=1, wait=0) is None  # held
    waiting = waiter.send("lock_acquire", name="db", ttl=1, wait=20)
    holder.kill()  # the holder's process dies: no more keep-alives, no release
    new_token = waiter.result(waiting, "lock_acquire")
    assert new_token is not None and new_token > token
    assert waiter.call("fenced_put", name="db", key="data", value="second")
    assert leader.get("data") == "second"
    waiter.call("lock_release", name="db")


def test_a_killed_consumers_item_is_delivered_again(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    producer, other = cluster.followers(leader)
    for job in ("job-1", "job-2"):
        producer.call("queue_put", name="work", value=job)
    # The consumer is the leader: its death also costs an election, and the new leader
    # times the dead consumer's lease afresh.
    assert leader.call("queue_get", name="work", ttl=1, wait=5) == "job-1"
    assert other.call("queue_get", name="work", ttl=1, wait=5) == "job-2"
    leader.kill()  # dies mid-item, before its ack
    cluster.wait_leader([producer, other])
    other.call("queue_ack", name="work")  # job-2 done
    again = other.call("queue_get", name="work", ttl=1, wait=20)
    assert again == "job-1"
    other.call("queue_ack", name="work")
    assert producer.call("count", prefix="_embedkv/queue/work/") == 0


def test_a_killed_leaders_successor_wins_after_the_ttl(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    first, second = cluster.followers(leader)
    assert first.call("campaign", name="sched", value="first", ttl=1)
    campaigning = second.send("campaign", name="sched", value="second", ttl=1, wait=20)
    assert leader.call("election_leader", name="sched") == "first"
    first.kill()
    assert second.result(campaigning, "campaign") is True
    assert leader.call("election_leader", name="sched") == "second"


def test_member_processes_contending_for_a_lock_never_overlap(make_cluster: MakeCluster) -> None:
    """A user in each of three member processes takes the lock in turn, reads a counter and
    writes it + 1 under the lock's guard: a holding overlapping another would lose an
    increment or have its guarded write refused; the tokens are all distinct."""
    cluster = make_cluster(3)
    cluster.wait_leader()
    rounds = 6
    tokens: list[int] = []
    refused: list[str] = []
    guard = threading.Lock()

    def user(member: Member) -> None:
        for _ in range(rounds):
            token = member.call("lock_acquire", name="shared", ttl=5, wait=60)
            count = member.get("counter") or 0
            if not member.call("fenced_put", name="shared", key="counter", value=count + 1):
                with guard:
                    refused.append(member.name)
            member.call("lock_release", name="shared")
            with guard:
                tokens.append(token)

    members = list(cluster)
    threads = [threading.Thread(target=user, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert refused == []
    assert len(tokens) == 3 * rounds and len(set(tokens)) == len(tokens)
    assert members[0].get("counter") == 3 * rounds


def test_member_processes_producing_and_consuming_one_queue_deliver_each_item_once(
    make_cluster: MakeCluster,
) -> None:
    """A producer and a consumer in each of three member processes, all at once: every item
    is acked by exactly one consumer."""
    cluster = make_cluster(3)
    cluster.wait_leader()
    members = list(cluster)
    per = 10
    left = 3 * per  # gets still to make: each is sure to find an item
    consumed: list[str] = []
    guard = threading.Lock()

    def producer(member: Member) -> None:
        for i in range(per):
            member.call("queue_put", name="jobs", value=f"{member.name}-{i}")

    def consumer(member: Member) -> None:
        nonlocal left
        while True:
            with guard:
                if left == 0:
                    return
                left -= 1
            value = member.call("queue_get", name="jobs", ttl=5, wait=60)
            member.call("queue_ack", name="jobs")
            with guard:
                consumed.append(value)

    threads = [threading.Thread(target=fn, args=(m,)) for m in members
               for fn in (producer, consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert sorted(consumed) == sorted(f"{m.name}-{i}" for m in members for i in range(per))
    assert members[0].call("count", prefix="_embedkv/queue/jobs/") == 0
