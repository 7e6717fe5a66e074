"""Watches: replay then live without gap or duplicate, selections, cancel, threads, compaction."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from embedkv.errors import Closed, Compacted
from embedkv.member import Member
from embedkv.storage.requests import Compaction, Delete, Event, EventType, Put, PutResult
from tests.waiting import wait_for

from .conftest import Collector


def put(m: Member, key: str, value: object) -> int:
    res = m.propose(Put(key, value)).result(5)
    assert isinstance(res, PutResult)
    return res.revision


def test_callbacks_run_on_the_dispatcher_thread(member: Member) -> None:
    seen = Collector()
    with member.watch("k", seen):
        put(member, "k", 1)
        member.propose(Delete("k")).result(5)
        events = seen.wait(2)
    assert [e.type for e in events] == [EventType.PUT, EventType.DELETE]
    (thread,) = seen.threads
    assert thread is member._hub.thread
    assert thread not in (member._engine.thread, member._writer.thread, threading.current_thread())


def test_watch_from_now_sees_only_later_events(member: Member) -> None:
    put(member, "k", "before")
    seen = Collector()
    with member.watch("k", seen):
        put(member, "k", "after")
        put(member, "marker", 0)
        assert [e.value for e in seen.wait(1)] == ["after"]
    assert len(seen.events) == 1


def test_replay_then_live_under_concurrent_writes_has_no_gap_or_duplicate(
    member: Member,
) -> None:
    """Watches registered while writers run, from past revisions, see exactly the history."""
    writers, per_writer = 8, 60
    first = put(member, "w/start", 0)
    watches: list[tuple[int, Collector]] = []
    registered = threading.Event()

    def write(n: int) -> None:
        for i in range(per_writer):
            put(member, f"w/{n}", i)

    def progressed(target: int) -> Callable[[], bool]:
        return lambda: member.data_dir.kv.revision > target

    def register() -> None:
        # Each watch starts from an older revision than the store's current one.
        for _ in range(6):
            current = member.data_dir.kv.revision
            start = first + (current - first) // 2
            seen = Collector()
            member.watch("w/", seen, prefix=True, start_revision=start)
            watches.append((start, seen))
            wait_for(progressed(current + 10), what="progress")
        registered.set()

    ts = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in ts:
        t.start()
    reg = threading.Thread(target=register)
    reg.start()
    for t in ts:
        t.join(60)
    reg.join(60)
    assert registered.is_set()
    last = member.data_dir.kv.revision
    assert last == first + writers * per_writer
    for start, seen in watches:
        events = seen.wait(last - start + 1)
        assert [e.revision for e in events] == list(range(start, last + 1))
    # Per key, values arrive in the order they were written.
    start, seen = watches[0]
    for n in range(writers):
        values = [e.value for e in seen.events if e.key == f"w/{n}"]
        assert values == list(range(per_writer - len(values), per_writer))


def test_replay_from_a_start_revision_with_and_without_prev_kv(member: Member) -> None:
    r1 = put(member, "k", "a")
    put(member, "other", "x")
    put(member, "k", "b")
    with_prev, without = Collector(), Collector()
    with member.watch("k", with_prev, start_revision=r1, prev_kv=True), \
            member.watch("k", without, start_revision=r1):
        put(member, "k", "c")
        events = with_prev.wait(3)
        plain = without.wait(3)
    assert [e.value for e in events] == ["a", "b", "c"]
    assert events[0].prev_kv is None
    assert [e.prev_kv.value for e in events[1:]] == ["a", "b"]  # type: ignore[union-attr]
    assert [e.value for e in plain] == ["a", "b", "c"]
    assert all(e.prev_kv is None for e in plain)


def test_start_revision_in_the_future_waits_for_it(member: Member) -> None:
    now = member.data_dir.kv.revision
    seen = Collector()
    with member.watch("k", seen, start_revision=now + 3):
        for i in range(4):
            put(member, "k", i)
        events = seen.wait(2)
    assert [e.revision for e in events] == [now + 3, now + 4]


def test_selections_prefix_range_all_keys(member: Member) -> None:
    everything, prefixed, span, exact = Collector(), Collector(), Collector(), Collector()
    member.watch(b"", everything, prefix=True)
    member.watch("b", prefixed, prefix=True)
    member.watch("b", span, end="d")
    member.watch("c", exact)
    for k in ["a", "b", "ba", "c", "d"]:
        put(member, k, k)
    assert [e.key for e in everything.wait(5)] == ["a", "b", "ba", "c", "d"]
    assert [e.key for e in prefixed.wait(2)] == ["b", "ba"]
    assert [e.key for e in span.wait(3)] == ["b", "ba", "c"]
    assert [e.key for e in exact.wait(1)] == ["c"]
    with pytest.raises(ValueError):
        member.watch("b", exact, prefix=True, end="c")
    with pytest.raises(ValueError):
        member.watch("d", exact, end="b")


def test_replay_of_every_key(member: Member) -> None:
    r = put(member, "a", 1)
    put(member, "b", 2)
    seen = Collector()
    member.watch("", seen, prefix=True, start_revision=r)
    assert [e.key for e in seen.wait(2)] == ["a", "b"]


def test_compacted_start_revision_raises_at_once(member: Member) -> None:
    r1 = put(member, "k", 1)
    r2 = put(member, "k", 2)
    member.propose(Compaction(r2)).result(5)
    with pytest.raises(Compacted):
        member.watch("k", lambda e: None, start_revision=r1)
    seen = Collector()
    member.watch("k", seen, start_revision=r2)  # the compact revision itself is kept
    assert [e.value for e in seen.wait(1)] == [2]
    assert len(member._hub._exact[b"k"]) == 1  # the refused watch was not left registered


def test_cancel_is_idempotent_and_effective(member: Member) -> None:
    seen, marker = Collector(), Collector()
    handle = member.watch("k", seen)
    put(member, "k", 1)
    seen.wait(1)
    handle.cancel()
    handle.cancel()
    assert handle.cancelled
    member.watch("k", marker)
    put(member, "k", 2)
    marker.wait(1)
    assert len(seen.events) == 1


def test_cancel_waits_for_a_running_callback_and_works_from_inside_one(member: Member) -> None:
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow(event: object) -> None:
        order.append("callback started")
        entered.set()
        release.wait(10)
        order.append("callback finished")

    handle = member.watch("slow", slow)
    put(member, "slow", 1)
    put(member, "slow", 2)
    assert entered.wait(5)

    def cancel() -> None:
        handle.cancel()
        order.append("cancel returned")

    canceller = threading.Thread(target=cancel)
    canceller.start()
    wait_for(lambda: handle.cancelled, what="cancel() to begin")
    release.set()
    canceller.join(10)
    # cancel() waited for the running callback, and the queued event was never delivered.
    assert order == ["callback started", "callback finished", "cancel returned"]

    selfish: list[object] = []

    def cancel_myself(event: object) -> None:
        selfish.append(event)
        own.cancel()

    own = member.watch("self", cancel_myself)
    put(member, "self", 1)
    put(member, "self", 2)
    wait_for(lambda: own.cancelled, what="the watch to cancel itself")
    marker = Collector()
    member.watch("self", marker)
    put(member, "self", 3)
    marker.wait(1)
    assert len(selfish) == 1


def test_slow_callback_never_blocks_writes(member: Member) -> None:
    release = threading.Event()
    entered: list[int] = []
    seen = Collector()

    def slow(event: Event) -> None:
        entered.append(event.revision)
        release.wait(60)
        seen(event)

    member.watch("k", slow)
    try:
        first = put(member, "k", 0)
        wait_for(lambda: entered, what="the first callback to start (and block)")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # If writes waited for callbacks, these would hang behind the blocked one.
            more = pool.submit(lambda: [put(member, "k", i) for i in range(1, 50)])
            revisions = [first, *more.result(timeout=20)]
        # Every write committed while the one dispatcher thread stayed inside the first
        # callback: no other callback started, none finished.
        assert entered == [first]
        assert len(seen.events) == 0
    finally:
        release.set()
    assert [e.revision for e in seen.wait(50)] == revisions
    assert entered == revisions


def test_close_returns_behind_a_callback_that_never_returns(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = Member.open(path, durable=False, tick_interval=0.01, request_timeout=0.5)
    never = threading.Event()
    entered = threading.Event()
    later = Collector()

    def stuck(event: Event) -> None:
        entered.set()
        never.wait()

    try:
        m.watch("k", stuck)
        m.watch("k", later)
        put(m, "k", 1)
        assert entered.wait(10)
        put(m, "k", 2)
        with caplog.at_level(logging.WARNING, logger="embedkv"):
            closer = threading.Thread(target=m.close)
            closer.start()
            closer.join(20)
            assert not closer.is_alive(), "close() hung behind the stuck callback"
        assert m.closed
        assert any("has not returned" in r.getMessage() and "stuck" in r.getMessage()
                   for r in caplog.records if r.name.startswith("embedkv"))
    finally:
        never.set()
    # Released after close: the dispatcher starts no further callback and ends.
    wait_for(lambda: not m._hub.thread.is_alive(), what="the dispatcher to end")
    assert later.events == []  # queued behind the stuck callback, then dropped by close


def test_failing_callback_is_logged_and_the_watch_goes_on(
    member: Member, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Collector()

    def flaky(event: object) -> None:
        seen(event)  # type: ignore[arg-type]
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="embedkv.watch"):
        member.watch("k", flaky)
        put(member, "k", 1)
        put(member, "k", 2)
        assert len(seen.wait(2)) == 2
    assert "boom" in caplog.text


def test_watch_arguments_are_checked(member: Member) -> None:
    with pytest.raises(TypeError):
        member.watch("k", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        member.watch("k", lambda e: None, start_revision=-1)
    with pytest.raises(TypeError):
        member.watch(5, lambda e: None)  # type: ignore[arg-type]
    member.close()
    with pytest.raises(Closed):
        member.watch("k", lambda e: None)


def test_compaction_overtaking_a_long_replay_ends_the_watch_without_skipping(
    member: Member,
) -> None:
    first = put(member, "h", 0)
    for i in range(1, 1000):
        put(member, "h", i)
    gate, blocked = threading.Event(), threading.Event()

    def blocker(event: object) -> None:
        blocked.set()
        gate.wait(30)

    member.watch("block", blocker)
    put(member, "block", 1)
    assert blocked.wait(5)  # the dispatcher is busy: the replay below cannot start yet
    seen = Collector()
    handle = member.watch("h", seen, start_revision=first)  # the first chunk is read now
    member.propose(Compaction(member.data_dir.kv.revision)).result(5)
    gate.set()
    wait_for(lambda: handle.error is not None, what="the watch to end")
    assert isinstance(handle.error, Compacted) and handle.cancelled
    values = [e.value for e in seen.events]
    assert values == list(range(len(values)))  # a prefix of the history: nothing skipped
    assert 0 < len(values) < 1000
