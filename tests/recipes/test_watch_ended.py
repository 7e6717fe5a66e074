"""A recipe's waiter whose watch the store ends (a compaction overtaking it) looks again
instead of waiting for ever; one whose watch cannot start (its revision compacted) too."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import embedkv
from tests.waiting import wait_for


class Watches:
    """Records the watches the recipes start on `store`, and ends them as the member does
    when a compaction overtakes a watch's replay (embedkv/member/watch.py: the error is set,
    then the handle cancelled, with no event to say so)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: embedkv.Store) -> None:
        self.started: list[embedkv.Watch] = []
        real = store.watch

        def watch(*args: Any, **kwargs: Any) -> embedkv.Watch:
            w = real(*args, **kwargs)
            self.started.append(w)
            return w

        monkeypatch.setattr(store, "watch", watch)

    def live(self) -> list[embedkv.Watch]:
        return [w for w in self.started if not w.cancelled]

    def end_under(self, who: str) -> None:
        """Once `who` is watching, end its watches, and wait until it watches again."""
        wait_for(lambda: self.live(), what=f"{who} to watch")
        assert self.end_all() >= 1
        wait_for(lambda: self.live(), what=f"{who} to watch again (re-read, re-watched)")

    def end_all(self) -> int:
        ended = self.live()
        for w in ended:
            w._handle._watch.error = embedkv.Compacted(0, 1)
            w._handle.cancel()
        return len(ended)


def in_thread(fn: Callable[[], object]) -> list[object]:
    """Run `fn` on a thread; its result lands in the list returned."""
    out: list[object] = []
    threading.Thread(target=lambda: out.append(fn()), daemon=True).start()
    return out


def test_a_queue_consumer_whose_watch_the_store_ends_still_gets_the_next_item(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    watches = Watches(monkeypatch, store)
    q = store.queue("q")
    out = in_thread(lambda: q.get(timeout=60).value)
    watches.end_under("the consumer")
    store.queue("q").put("job")
    wait_for(lambda: out, timeout=10, what="the consumer to get the item")
    assert out == ["job"]
    q.close()


def test_a_double_barrier_participant_whose_watch_the_store_ends_still_enters(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    watches = Watches(monkeypatch, store)
    first, second = store.double_barrier("d", 2), store.double_barrier("d", 2)
    out = in_thread(lambda: first.enter(timeout=60))
    watches.end_under("the first, for the barrier opening")
    assert second.enter(timeout=10)
    wait_for(lambda: out, timeout=10, what="the first to enter")
    assert out == [True]
    left = in_thread(lambda: first.leave(timeout=60))
    watches.end_under("the first, for the others to leave")
    assert second.leave(timeout=10)
    wait_for(lambda: left, timeout=10, what="the first to leave")
    assert left == [True]


@pytest.mark.parametrize("how", ["ended by the store", "compacted before it started"])
def test_a_lock_waiter_whose_watch_fails_still_gets_the_lock(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The store ends the waiter's watch; or a real compaction between the waiter's read and
    its watch means the watch cannot start (Compacted): either way the waiter re-reads and
    watches again, and gets the lock when it frees."""
    holder = store.lock("c")
    holder.acquire()
    real = store.watch
    compacted: list[int] = []

    def compacting_watch(*args: Any, **kwargs: Any) -> embedkv.Watch:
        if not compacted:
            store.put("unrelated", 1)
            store.put("unrelated", 2)  # history after the waiter's read is gone too
            store.compact(store.revision)
            compacted.append(store.revision)
        return real(*args, **kwargs)

    if how == "compacted before it started":
        monkeypatch.setattr(store, "watch", compacting_watch)
    watches = Watches(monkeypatch, store)
    waiter = store.lock("c")
    out = in_thread(lambda: waiter.acquire(timeout=60))
    if how == "ended by the store":
        watches.end_under("the waiter, its predecessor")
    else:
        wait_for(lambda: watches.live(), what="the waiter to watch its predecessor")
        assert compacted
    holder.release()
    wait_for(lambda: out, timeout=30, what="the waiter to get the lock")
    assert out == [True] and waiter.is_held
    waiter.release()


def test_a_config_view_whose_watch_the_store_ends_keeps_following(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("cfg/a", 1)
    watches = Watches(monkeypatch, store)
    view = store.config("cfg/")
    seen: list[dict[str, Any]] = []
    view.on_change(lambda v: seen.append(v.snapshot()[1]))
    assert watches.end_all() == 1
    store.put("cfg/a", 2)  # a change the ended watch cannot report
    wait_for(lambda: dict(view) == {"a": 2}, timeout=10, what="the view to catch up")
    assert seen[-1] == {"a": 2} and view.revision == store.revision
    wait_for(lambda: watches.live(), what="the view to watch again")
    store.put("cfg/b", 3)  # and it follows from then on, by the new watch
    wait_for(lambda: dict(view) == {"a": 2, "b": 3}, timeout=10, what="the view to follow")
    view.close()
    assert not watches.live()


def test_an_observation_whose_watch_the_store_ends_keeps_reporting(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    watches = Watches(monkeypatch, store)
    leaders: list[object] = []
    obs = store.election("e").observe(leaders.append)
    assert watches.end_all() == 1
    a = store.election("e")
    assert a.campaign("A", timeout=10)
    wait_for(lambda: leaders[-1:] == ["A"], timeout=10, what="the new leader to be reported")
    a.resign()
    wait_for(lambda: leaders[-1:] == [None], timeout=10, what="the resign to be reported")
    assert leaders == [None, "A", None]
    obs.cancel()
