"""The recipes' safety checks, written once over a list of stores: the single-member tests
pass one store, tests/recipes/test_across_members.py passes three members of one cluster,
and user `i` works on ``stores[i % len(stores)]``."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import embedkv
from embedkv import Put
from embedkv.recipes import Endpoint, SessionLost
from tests.waiting import wait_for

Stores = Sequence[embedkv.Store]


def run_all(target: Callable[[int], None], n: int, timeout: float = 60.0) -> None:
    """`target(i)` on `n` threads; re-raise the first error any of them met."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a user is still running"
    if errors:
        raise errors[0]


def lock_exclusion(stores: Stores, name: str, users: int = 8, rounds: int = 8) -> None:
    """Never two holders at once; tokens strictly increase; held() lets the holder write."""
    inside = 0
    holdings: list[int] = []
    guard = threading.Lock()

    def worker(i: int) -> None:
        nonlocal inside
        store = stores[i % len(stores)]
        lock = store.lock(name, ttl=5)
        for _ in range(rounds):
            with lock:
                with guard:
                    inside += 1
                    assert inside == 1, "two holders at once"
                    holdings.append(lock.token)
                write = store.txn(compare=[lock.held()], success=[Put(f"{name}-x", lock.token)])
                assert write.succeeded
                with guard:
                    inside -= 1

    run_all(worker, users)
    assert len(holdings) == users * rounds
    assert holdings == sorted(holdings) and len(set(holdings)) == len(holdings)
    assert stores[-1].count(f"_embedkv/lock/{name}/") == 0


def lock_fair(stores: Stores, name: str, waiters: int = 4) -> None:
    """Waiters queued one after another (waiter i on member i % len) get the lock in the
    order they queued."""
    first = stores[0].lock(name, ttl=5)
    assert first.acquire()
    order: list[int] = []

    def waiter(i: int, lock: embedkv.recipes.Lock) -> None:
        with lock:
            order.append(i)

    threads = []
    for i in range(waiters):
        lock = stores[(i + 1) % len(stores)].lock(name, ttl=5)
        t = threading.Thread(target=waiter, args=(i, lock))
        t.start()
        threads.append(t)
        # the next one starts only once this one's key is queued
        wait_for(lambda i=i: stores[-1].count(f"_embedkv/lock/{name}/") == i + 2,  # type: ignore[misc]
                 what="queued")
    first.release()
    for t in threads:
        t.join(30)
    assert order == list(range(waiters))


def lock_dead_holder(stores: Stores, name: str) -> None:
    """A holder dies: the lock frees itself after the TTL, the next token is greater, and the
    dead holder's guarded write is refused by every member."""
    old, new = stores[0].lock(name, ttl=1), stores[1 % len(stores)].lock(name, ttl=1)
    assert old.acquire()
    guard, old_token = old.held(), old.token
    assert not new.acquire(timeout=0.1)
    old.session.orphan()  # the holder "dies": no more keep-alives
    assert new.acquire(timeout=10)
    assert new.token > old_token
    assert not old.is_held
    for s in stores:
        late = s.txn(compare=[guard], success=[Put(f"{name}-data", "stale")])
        assert not late.succeeded
    assert stores[-1].get(f"{name}-data") is None
    assert stores[-1].txn(compare=[new.held()], success=[Put(f"{name}-data", "fresh")]).succeeded
    new.release()


def election_one_leader(stores: Stores, name: str, users: int = 6) -> None:
    """Each candidate leads once, never two at a time; leader() agrees on every member."""
    leaders = 0
    terms: list[str] = []
    guard = threading.Lock()

    def candidate(i: int) -> None:
        nonlocal leaders
        e = stores[i % len(stores)].election(name, ttl=5)
        assert e.campaign(f"c{i}", timeout=60)
        with guard:
            leaders += 1
            assert leaders == 1, "two leaders"
            terms.append(f"c{i}")
        for s in stores:
            assert s.election(name).leader() == f"c{i}"
        with guard:
            leaders -= 1
        e.resign()

    run_all(candidate, users)
    assert sorted(terms) == sorted(f"c{i}" for i in range(users))
    assert stores[0].election(name).leader() is None


def election_failover(stores: Stores, name: str) -> None:
    """The leader's keep-alives stop: it knows it lost before the next candidate wins."""
    # b's lease is long: on a loaded machine a 1-second one can lapse before the checks.
    a, b = stores[0].election(name, ttl=1), stores[1 % len(stores)].election(name, ttl=10)
    lost = threading.Event()
    a.on_lost(lost.set)
    assert a.campaign("A")
    seen_when_b_won: list[bool] = []

    def run_b(_: int) -> None:
        assert b.campaign("B", timeout=30)
        seen_when_b_won.append(a.is_leader)

    t = threading.Thread(target=run_all, args=(run_b, 1))
    t.start()
    wait_for(lambda: stores[-1].count(f"_embedkv/election/{name}/") == 2, what="b queued")
    a.session.stall()  # a's keep-alives stop getting through
    t.join(30)
    assert seen_when_b_won == [False]  # a no longer believed it led when b won
    wait_for(lost.is_set, what="a's lost callback")
    assert b.is_leader and stores[-1].election(name).leader() == "B"
    try:
        a.proclaim("A again")
    except SessionLost:
        pass
    else:  # pragma: no cover
        raise AssertionError("a lost leader proclaimed")
    assert not stores[-1].txn(compare=[a.held()]).succeeded
    b.resign()


def queue_exactly_once(stores: Stores, name: str, per: int = 40, producers: int = 4,
                       consumers: int = 4) -> None:
    """Every item put by any producer is consumed by exactly one consumer."""
    total = per * producers
    consumed: list[object] = []
    guard = threading.Lock()

    def user(i: int) -> None:
        store = stores[i % len(stores)]
        if i < producers:
            q = store.queue(name)
            for k in range(per):
                q.put(f"{i}-{k}")
            return
        q = store.queue(name, ttl=5)
        try:
            while True:
                with guard:
                    if len(consumed) >= total:
                        return
                try:
                    item = q.get(timeout=0.2)
                except TimeoutError:
                    continue
                item.ack()
                with guard:
                    consumed.append(item.value)
        finally:
            q.close()

    run_all(user, producers + consumers, timeout=120)
    counts = collections.Counter(consumed)
    assert len(consumed) == total and all(c == 1 for c in counts.values())
    for s in stores:
        assert s.queue(name).qsize() == 0 and s.count(f"_embedkv/queue/{name}/") == 0


def queue_redelivery(stores: Stores, name: str) -> None:
    """A consumer dies before acking: its item goes to another consumer, its ack is refused."""
    producer = stores[0].queue(name)
    producer.put("job-1")
    producer.put("job-2")
    dying, other = stores[1 % len(stores)].queue(name, ttl=1), stores[-1].queue(name, ttl=1)
    item = dying.get(timeout=5)
    assert item.value == "job-1"
    assert other.get(timeout=5).value == "job-2"  # job-1 is claimed: not delivered twice
    dying.session.orphan()  # the consumer dies mid-item
    again = other.get(timeout=10)
    assert again.value == "job-1"
    try:
        item.ack()
    except SessionLost:
        pass  # the dead consumer's late ack is refused
    else:  # pragma: no cover
        raise AssertionError("a dead consumer's ack went through")
    again.ack()
    other.close()  # hands job-2 back at once
    assert producer.qsize() == 1
    last = producer.get(timeout=5)
    assert last.value == "job-2"
    last.ack()
    producer.close()


def semaphore_never_over_n(stores: Stores, name: str, n: int = 2, users: int = 6) -> None:
    holding = peak = 0
    guard = threading.Lock()

    def worker(i: int) -> None:
        nonlocal holding, peak
        sem = stores[i % len(stores)].semaphore(name, n, ttl=5)
        for _ in range(5):
            with sem:
                with guard:
                    holding += 1
                    peak = max(peak, holding)
                    assert holding <= n
                with guard:
                    holding -= 1

    run_all(worker, users)
    assert 1 <= peak <= n


def counter_contention(stores: Stores, name: str, users: int = 8, adds: int = 25) -> None:
    def add(i: int) -> None:
        c = stores[i % len(stores)].counter(name)
        for _ in range(adds):
            c.add(1)

    run_all(add, users)
    for s in stores:
        assert s.counter(name).value == users * adds


def barrier_all_together(stores: Stores, name: str, n: int = 5) -> None:
    """Nobody passes with n-1 arrived; all n pass once the last arrives."""
    arrived: list[int] = []
    returned_after: list[int] = []
    guard = threading.Lock()

    def party(i: int) -> None:
        with guard:
            arrived.append(i)
        assert stores[i % len(stores)].barrier(name, n, ttl=5).wait(timeout=30)
        with guard:
            returned_after.append(len(arrived))

    first = threading.Thread(target=run_all, args=(party, n - 1))
    first.start()
    wait_for(lambda: stores[-1].count(f"_embedkv/barrier/{name}/w/") == n - 1,
             what="n-1 waiting")
    assert returned_after == []  # nobody passes with n-1
    run_all(lambda _: party(n - 1), 1)
    first.join(30)
    assert len(returned_after) == n and all(k == n for k in returned_after)
    for s in stores:
        assert s.barrier(name, n).wait(timeout=0)  # stays open until reset


def services_backend_dies(stores: Stores, name: str) -> None:
    """Backends registered on different members; a client on each sees the same endpoints,
    and a dead backend's leave, in the same order."""
    changes: list[list[tuple[str, Endpoint]]] = [[] for _ in stores]
    def recorder(c: list[tuple[str, Endpoint]]) -> Callable[[str, Endpoint], None]:
        return lambda kind, ep: c.append((kind, ep))

    watches = [s.services(name).watch(recorder(c)) for s, c in zip(stores, changes, strict=True)]
    regs = [stores[i % len(stores)].services(name).register(f"10.0.0.{i}:80", {"i": i}, ttl=1)
            for i in range(3)]
    expect = [f"10.0.0.{i}:80" for i in range(3)]
    for s in stores:
        assert [e.address for e in s.services(name).endpoints()] == expect
    regs[1].session.orphan()  # the backend's process dies
    for s in stores:
        svc = s.services(name)
        wait_for(lambda: len(svc.endpoints()) == 2, what="dead backend gone")  # noqa: B023
        assert "10.0.0.1:80" not in {s.services(name).pick().address for _ in range(4)}
    for c in changes:
        wait_for(lambda: len(c) >= 4, what="3 joins and a leave")  # noqa: B023
    kinds: list[Any] = [[(k, ep.id) for k, ep in c] for c in changes]
    assert all(k == kinds[0] for k in kinds)  # every member reports the same, in order
    assert [k for k, _ in kinds[0]] == ["join", "join", "join", "leave"]
    assert kinds[0][3][1] == regs[1].id
    for w in watches:
        w.cancel()
    for r in (regs[0], regs[2]):
        r.deregister()
