"""Election: one leader at a time under contention, failover, the lost leader knows first."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import embedkv
from embedkv.recipes import SessionLost
from tests.waiting import wait_for


def test_one_leader_at_a_time_among_threads(store: embedkv.Store) -> None:
    leaders = 0
    terms: list[str] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def candidate(name: str) -> None:
        nonlocal leaders
        e = store.election("svc", ttl=5)
        try:
            assert e.campaign(name, timeout=60)
            with guard:
                leaders += 1
                assert leaders == 1, "two leaders"
                terms.append(name)
            assert e.leader() == name
            with guard:
                leaders -= 1
            e.resign()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=candidate, args=(f"c{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(terms) == [f"c{i}" for i in range(6)]
    assert store.election("svc").leader() is None


def test_failover_after_the_leader_dies_and_it_knows_before_the_next_wins(
    store: embedkv.Store,
) -> None:
    # b's lease is long: on a loaded machine a 1-second one can lapse before the checks below.
    a, b = store.election("e", ttl=1), store.election("e", ttl=10)
    lost = threading.Event()
    a.on_lost(lost.set)
    assert a.campaign("A")
    seen_when_b_won: list[bool] = []

    def run_b() -> None:
        assert b.campaign("B", timeout=30)
        seen_when_b_won.append(a.is_leader)

    t = threading.Thread(target=run_b)
    t.start()
    wait_for(lambda: store.count("_embedkv/election/e/") == 2, what="b queued")
    a.session.stall()  # a's keep-alives stop getting through
    t.join(30)
    assert seen_when_b_won == [False]  # a no longer believed it led when b won
    wait_for(lost.is_set, what="a's lost callback")
    assert b.is_leader and b.leader() == "B"
    with pytest.raises(SessionLost):
        a.proclaim("A again")
    assert not store.txn(compare=[a.held()]).succeeded
    b.resign()


def test_observe_proclaim_resign(store: embedkv.Store) -> None:
    seen: list[Any] = []
    e1, e2 = store.election("o"), store.election("o")
    obs = e1.observe(seen.append)
    it = e2.observe()
    assert e1.campaign("one")
    e1.proclaim("one'")
    t = threading.Thread(target=lambda: e2.campaign("two"))
    t.start()
    wait_for(lambda: store.count("_embedkv/election/o/") == 2, what="e2 queued")
    e1.resign()
    t.join(10)
    wait_for(lambda: len(seen) >= 4, what="4 observations")
    assert seen == [None, "one", "one'", "two"]
    assert [next(it) for _ in range(4)] == [None, "one", "one'", "two"]
    obs.cancel()
    it.cancel()
    assert e2.is_leader and not e1.is_leader
    with pytest.raises(RuntimeError):
        e2.campaign("again")
    e2.resign()
    assert e1.leader() is None


def test_campaign_timeout_leaves_the_queue(store: embedkv.Store) -> None:
    a, b = store.election("t"), store.election("t")
    assert a.campaign(1)
    assert not b.campaign(2, timeout=0.05)
    assert store.count("_embedkv/election/t/") == 1
    a.resign()
    with pytest.raises(ValueError):
        store.election("x", ttl=0)
