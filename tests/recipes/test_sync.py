"""Barrier, double barrier, semaphore, counter and party under thread contention."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedkv
from tests.recipes.safety import barrier_all_together, counter_contention, semaphore_never_over_n
from tests.waiting import wait_for


def test_barrier_releases_all_n_together(store: embedkv.Store) -> None:
    barrier_all_together([store], "b")
    store.barrier("b", 5).reset()
    assert not store.barrier("b", 5).wait(timeout=0)


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
    semaphore_never_over_n([store], "s")


def test_semaphore_slot_of_a_dead_holder_frees_itself(store: embedkv.Store) -> None:
    a, b, c = (store.semaphore("sd", 2, ttl=1) for _ in range(3))
    assert a.acquire(blocking=False) and b.acquire(blocking=False)
    assert not c.acquire(blocking=False)
    a.session.orphan()
    assert c.acquire(timeout=10)
    assert c.holders() == 2


def test_counter_under_contention(store: embedkv.Store) -> None:
    counter_contention([store], "hits")
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
