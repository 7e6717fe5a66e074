"""Barrier, double barrier, semaphore, counter and party under thread contention."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedkv
from tests.waiting import wait_for


def test_barrier_releases_all_n_together(store: embedkv.Store) -> None:
    n = 5
    arrived: list[int] = []
    returned_after: list[int] = []
    guard = threading.Lock()

    def party(i: int) -> None:
        with guard:
            arrived.append(i)
        assert store.barrier("b", n, ttl=5).wait(timeout=30)
        with guard:
            returned_after.append(len(arrived))

    threads = [threading.Thread(target=party, args=(i,)) for i in range(n - 1)]
    for t in threads:
        t.start()
    wait_for(lambda: store.count("_embedkv/barrier/b/w/") == n - 1, what="n-1 waiting")
    assert returned_after == []  # nobody passes with n-1
    last = threading.Thread(target=party, args=(n - 1,))
    last.start()
    for t in [*threads, last]:
        t.join(30)
    assert returned_after and all(k == n for k in returned_after) and len(returned_after) == n
    assert store.barrier("b", n).wait(timeout=0)  # stays open until reset
    store.barrier("b", n).reset()
    assert not store.barrier("b", n).wait(timeout=0)


def test_barrier_timeout_with_too_few(store: embedkv.Store) -> None:
    assert not store.barrier("few", 2).wait(timeout=0.05)
    assert store.count("_embedkv/barrier/few/") == 0


def test_double_barrier_enter_and_leave_together(store: embedkv.Store) -> None:
    n = 3
    log: list[str] = []
    guard = threading.Lock()

    def member() -> None:
        db = store.double_barrier("d", n, ttl=5)
        assert db.enter(timeout=30)
        with guard:
            log.append("in")
        assert db.leave(timeout=30)
        with guard:
            log.append("out")

    threads = [threading.Thread(target=member) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert log[:n] == ["in"] * n and log[n:] == ["out"] * n
    assert store.count("_embedkv/double_barrier/d/") == 0


def test_semaphore_never_over_n(store: embedkv.Store) -> None:
    n = 2
    holding = 0
    peak = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal holding, peak
        sem = store.semaphore("s", n, ttl=5)
        try:
            for _ in range(5):
                with sem:
                    with guard:
                        holding += 1
                        peak = max(peak, holding)
                        assert holding <= n
                    with guard:
                        holding -= 1
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and 1 <= peak <= n


def test_semaphore_slot_of_a_dead_holder_frees_itself(store: embedkv.Store) -> None:
    a, b, c = (store.semaphore("sd", 2, ttl=1) for _ in range(3))
    assert a.acquire(blocking=False) and b.acquire(blocking=False)
    assert not c.acquire(blocking=False)
    a.session.orphan()
    assert c.acquire(timeout=10)
    assert c.holders() == 2


def test_counter_under_contention(store: embedkv.Store) -> None:
    def add() -> None:
        c = store.counter("hits")
        for _ in range(25):
            c.add(1)

    threads = [threading.Thread(target=add) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.counter("hits").value == 200
    assert store.counter("hits").subtract(50) == 150
    with pytest.raises(TypeError):
        store.counter("hits").add(1.5)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(-100, 100), max_size=15))
def test_counter_matches_a_model(store: embedkv.Store, deltas: list[int]) -> None:
    c = store.counter(f"m{store.revision}")
    total = 0
    for d in deltas:
        total += d
        assert c.add(d) == total
    assert c.value == total


def test_party_join_leave_watch_and_rejoin(store: embedkv.Store) -> None:
    events: list[tuple[str, str, Any]] = []
    watch = store.party("p").watch(lambda kind, member, value: events.append((kind, member, value)))
    a, b = store.party("p", ttl=1), store.party("p", ttl=1)
    ida = a.join("alice")
    idb = b.join("bob", rejoin=False)
    assert store.party("p").members() == {ida: "alice", idb: "bob"}
    b.session.orphan()  # bob dies
    wait_for(lambda: idb not in store.party("p").members(), what="bob gone")
    a.session.stall()  # alice's lease is lost, alive: she re-joins with a new lease
    wait_for(lambda: a.id != ida and a.present, what="alice rejoined")
    wait_for(lambda: list(store.party("p").members().values()) == ["alice"], what="alice alone")
    a.leave()
    wait_for(lambda: len(events) >= 6, what="6 events")
    watch.cancel()
    new = a.id
    assert events[:3] == [("join", ida, "alice"), ("join", idb, "bob"), ("leave", idb, None)]
    assert sorted(events[3:]) == sorted(
        [("join", new, "alice"), ("leave", ida, None), ("leave", new, None)]
    )
    assert store.party("p").members() == {}


@pytest.mark.parametrize("n", [0, -1])
def test_bad_counts(store: embedkv.Store, n: int) -> None:
    with pytest.raises(ValueError):
        store.barrier("x", n)
    with pytest.raises(ValueError):
        store.double_barrier("x", n)
    with pytest.raises(ValueError):
        store.semaphore("x", n)
    with pytest.raises(TypeError):
        store.semaphore("x", 1.0)  # type: ignore[arg-type]


def test_party_leave_returns_while_a_lost_party_retries_its_rejoin(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = store.party("r", ttl=1)
    first = p.join("me")
    attempts: list[int] = []

    def unavailable(*args: Any, **kwargs: Any) -> embedkv.Lease:
        attempts.append(1)
        raise embedkv.Unavailable("no quorum (simulated)")

    monkeypatch.setattr(store, "lease", unavailable)  # every rejoin fails until the end
    guard = p.held()
    p.session.stall()  # the lease is lost while the process lives: the rejoin loop starts
    wait_for(lambda: len(attempts) >= 2, what="the rejoin to be retrying")
    t = threading.Thread(target=p.leave, daemon=True)
    t.start()
    wait_for(lambda: not t.is_alive(), timeout=5, what="leave() to return during the rejoin")
    assert not p.present
    monkeypatch.undo()
    wait_for(lambda: first not in store.party("r").members(), what="the old key to expire")
    assert store.party("r").members() == {}
    assert not store.txn(compare=[guard]).succeeded


def test_a_party_shares_the_holding_of_a_lock(store: embedkv.Store) -> None:
    """One definition of the lease-backed presence: a party is a Holding, so its presence
    guards transactions like a lock's holding."""
    from embedkv.recipes.lock import Holding

    p = store.party("h")
    assert isinstance(p, Holding)
    with pytest.raises(RuntimeError, match="not joined"):
        p.session  # noqa: B018
    p.join("x")
    guard = p.held()
    assert store.txn(compare=[guard]).succeeded
    p.leave()
    assert not store.txn(compare=[guard]).succeeded
