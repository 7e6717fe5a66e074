"""Regressions: a recipe's watch ended by the store, a priority group raced by more than 16
consumers, leaving a party that is retrying its rejoin."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import embedkv
from embedkv import Compacted
from tests.waiting import wait_for


@pytest.fixture
def ended_watches(store: embedkv.Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        Callable[[], None]]:
    """Every watch the store makes from now on is recorded; calling the result waits for
    one and ends them all as the member does when a compaction overtakes a watch (``watch.error`` is
    Compacted), with the store left open."""
    made: list[embedkv.Watch] = []
    real = store.watch

    def watch(*args: Any, **kwargs: Any) -> embedkv.Watch:
        w = real(*args, **kwargs)
        made.append(w)
        return w

    def end() -> None:
        wait_for(lambda: made, what="a watch")
        for w in made:
            handle = w._handle
            handle._watch.error = Compacted(1, 2)
            handle.cancel(wait=False)
        made.clear()

    monkeypatch.setattr(store, "watch", watch)
    yield end


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def test_a_lock_waiter_whose_watch_the_store_ends_still_gets_the_lock(
    store: embedkv.Store, ended_watches: Callable[[], None]
) -> None:
    a, b = store.lock("w", ttl=5), store.lock("w", ttl=5)
    assert a.acquire()
    t, got = _in_thread(lambda: b.acquire(timeout=5))
    wait_for(lambda: store.count("_embedkv/lock/w/") == 2, what="b queued")
    ended_watches()  # b's watch on a's key ends; the store stays open
    a.release()
    t.join(10)
    assert got == [True]
    b.release()


def test_a_queue_consumer_whose_watch_the_store_ends_still_gets_the_item(
    store: embedkv.Store, ended_watches: Callable[[], None]
) -> None:
    q = store.queue("w")
    t, got = _in_thread(lambda: q.get(timeout=5).value)
    wait_for(lambda: t.is_alive(), what="consumer waiting")
    ended_watches()
    store.queue("w").put("item")
    t.join(10)
    assert got == ["item"]
    q.close()


def test_a_barrier_whose_watch_the_store_ends_still_opens(
    store: embedkv.Store, ended_watches: Callable[[], None]
) -> None:
    t, got = _in_thread(lambda: store.barrier("w", 2, ttl=5).wait(timeout=5))
    wait_for(lambda: store.count("_embedkv/barrier/w/w/") == 1, what="first waiting")
    ended_watches()
    assert store.barrier("w", 2, ttl=5).wait(timeout=5)
    t.join(10)
    assert got == [True]


def test_a_priority_group_raced_by_many_consumers_is_not_skipped(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a consumer's read of the claims and its read of the first priority group, 20
    other consumers claim 20 of its 24 items: the consumer must still get one of the 4 left
    in that group, not an item of a later priority."""
    q = store.queue("race")
    for i in range(24):
        q.put(f"urgent-{i}", priority=0)
    q.put("later", priority=9)
    others = [store.queue("race", ttl=5) for _ in range(20)]
    real = store.range
    raced = False

    def range_(*args: Any, **kwargs: Any) -> list[embedkv.KeyValue]:
        nonlocal raced
        if kwargs.get("sort") == "create" and not raced:
            raced = True
            for other in others:  # they claim while we are between our two reads
                assert other.get(timeout=5).priority == 0
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "range", range_)
    consumer = store.queue("race", ttl=5)
    item = consumer.get(timeout=5)
    assert raced
    assert (item.priority, item.value.startswith("urgent-")) == (0, True)
    for other in [consumer, *others]:
        other.close()


def test_leave_does_not_wait_for_a_lost_party_retrying_its_rejoin(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    party = store.party("retry", ttl=1)
    party.join("me")
    attempts: list[int] = []

    def no_lease(*args: Any, **kwargs: Any) -> embedkv.Lease:
        attempts.append(1)
        raise embedkv.Unavailable("no quorum (test)")

    monkeypatch.setattr(store, "lease", no_lease)
    party.session.stall()  # lost; every rejoin fails while leases cannot be granted
    wait_for(lambda: len(attempts) >= 2, what="rejoin retries")
    t, _ = _in_thread(party.leave)
    t.join(5)
    assert not t.is_alive(), "leave() blocked behind the rejoin retries"
    monkeypatch.undo()
    tried = len(attempts)
    # Once left, the retries stop: a later grant succeeding must not bring the party back.
    wait_for(lambda: not party.present and store.party("retry").members() == {}, what="gone")
    assert len(attempts) <= tried + 1
