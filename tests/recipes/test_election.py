"""Election: one leader at a time under contention, failover, the lost leader knows first."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import embedkv
from tests.recipes.safety import election_failover, election_one_leader
from tests.waiting import wait_for


def test_one_leader_at_a_time_among_threads(store: embedkv.Store) -> None:
    election_one_leader([store], "svc")


def test_failover_after_the_leader_dies_and_it_knows_before_the_next_wins(
    store: embedkv.Store,
) -> None:
    election_failover([store], "e")


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
