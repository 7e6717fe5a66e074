"""The public Store API (issue #4): mapping contract, KV operations, transactions, watches,
leases, errors, durability and thread hygiene, against a real one-member store on disk."""

from __future__ import annotations

import collections.abc
import concurrent.futures
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import embedkv
import embedkv.store
from embedkv import (
    CreateRevision,
    Delete,
    EventType,
    Get,
    LeaseOf,
    ModRevision,
    Put,
    Value,
    Version,
)
from tests.forking import in_forked_child
from tests.waiting import wait_for

TICK = 0.01
"""Short ticks keep lease expiry quick (leases are checked every tick)."""


class Collector:
    """A watch callback that records events and the threads it ran on."""

    def __init__(self) -> None:
        self.events: list[embedkv.Event] = []
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()

    def __call__(self, event: embedkv.Event) -> None:
        with self.lock:
            self.events.append(event)
            self.threads.add(threading.current_thread())

    def wait(self, n: int, timeout: float = 10.0) -> list[embedkv.Event]:
        wait_for(lambda: len(self.events) >= n, timeout, f"{n} events (have {len(self.events)})")
        with self.lock:
            return list(self.events)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(path: Path) -> Iterator[embedkv.Store]:
    s = embedkv.open(path, tick_interval=TICK)
    try:
        yield s
    finally:
        s.close()


# --- the mapping contract ------------------------------------------------------------------


def test_store_is_a_mutable_mapping(store: embedkv.Store) -> None:
    assert isinstance(store, collections.abc.MutableMapping)
    assert isinstance(store, embedkv.Store)


def test_setitem_getitem_roundtrip_keeps_key_and_value_types(store: embedkv.Store) -> None:
    values: dict[Any, Any] = {
        "text": "hello",
        b"raw": b"\x00\xff",
        "int": 42,
        "float": 1.5,
        "none": None,
        "list": [1, "two", [3]],
        "dict": {"a": 1, "b": [True, False]},
        "ünïcode/ключ": "значение",
    }
    for k, v in values.items():
        store[k] = v
    for k, v in values.items():
        assert store[k] == v
    assert sorted(store, key=lambda k: k if isinstance(k, bytes) else k.encode()) == list(store)
    for k in store:
        assert type(k) is type(next(x for x in values if x == k))


def test_str_and_bytes_name_the_same_key(store: embedkv.Store) -> None:
    store["k"] = 1
    assert store[b"k"] == 1
    store[b"k"] = 2
    assert store["k"] == 2
    assert len(store) == 1


def test_getitem_and_delitem_of_missing_key_raise_keyerror(store: embedkv.Store) -> None:
    with pytest.raises(KeyError):
        store["missing"]
    with pytest.raises(KeyError):
        del store["missing"]
    store["present"] = 1
    del store["present"]
    with pytest.raises(KeyError):
        store["present"]
    assert "present" not in store


def test_contains_and_len(store: embedkv.Store) -> None:
    assert len(store) == 0
    assert "a" not in store
    store["a"] = None  # a None value still means the key exists
    store["b"] = 0
    assert "a" in store and b"b" in store
    assert 42 not in store  # not a key type: simply not there, as with a dict of str
    assert "" not in store and "k" * 501 not in store  # keys that cannot exist
    assert len(store) == 2
    del store["a"]
    assert len(store) == 1


def test_iteration_is_in_key_byte_order(store: embedkv.Store) -> None:
    keys = ["b", "a", "ab", "é", "Z", "a/b", "a0"]
    for k in keys:
        store[k] = k.upper()
    expected = sorted(keys, key=lambda k: k.encode())
    assert list(store) == expected
    assert list(store.keys()) == expected
    assert list(store.values()) == [k.upper() for k in expected]
    assert list(store.items()) == [(k, k.upper()) for k in expected]
    assert ("a", "A") in store.items()
    keys_view = store.keys()
    assert "ab" in keys_view
    assert len(store.keys()) == len(keys)


def test_iteration_pages_through_one_snapshot(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedkv.store, "_PAGE", 3)
    for i in range(10):
        store[f"k{i:02d}"] = i
    seen = []
    for n, (k, v) in enumerate(store.items()):
        seen.append((k, v))
        if n == 1:
            # Writers go on during iteration: the iteration does not see them.
            store["k05"] = "changed"
            store["k99"] = "new"
            del store["k09"]
    assert seen == [(f"k{i:02d}", i) for i in range(10)]
    assert store["k05"] == "changed" and "k99" in store and "k09" not in store


def test_mapping_mixins(store: embedkv.Store) -> None:
    store.update({"a": 1, "b": 2}, c=3)
    assert dict(store) == {"a": 1, "b": 2, "c": 3}
    assert store == {"a": 1, "b": 2, "c": 3}
    assert store.pop("a") == 1
    assert "a" not in store
    assert store.pop("a", "default") == "default"
    with pytest.raises(KeyError):
        store.pop("a")
    assert store.setdefault("b", 99) == 2
    assert store.setdefault("d", 4) == 4
    assert store["d"] == 4
    key, value = store.popitem()
    assert key not in store and value in (2, 3, 4)
    store.clear()
    assert len(store) == 0 and list(store) == []
    with pytest.raises(KeyError):
        store.popitem()


# --- put / get / get_kv / range / delete / compact -----------------------------------------


def test_put_returns_revisions_and_prev(store: embedkv.Store) -> None:
    r1 = store.put("k", "v1")
    r2 = store.put("k", "v2", prev_kv=True)
    assert r2.revision > r1.revision
    assert store.revision == r2.revision
    assert r1.prev is None
    assert r2.prev is not None and r2.prev.value == "v1" and r2.prev.mod_revision == r1.revision


def test_get_default_revision_and_serializable(store: embedkv.Store) -> None:
    assert store.get("k") is None
    assert store.get("k", "dflt") == "dflt"
    r1 = store.put("k", "old").revision
    store.put("k", "new")
    assert store.get("k") == "new"
    assert store.get("k", serializable=True) == "new"
    assert store.get("k", revision=r1) == "old"
    assert store.get("k", "dflt", revision=r1 - 1) == "dflt"


def test_get_kv_reports_revisions_version_and_lease(store: embedkv.Store) -> None:
    assert store.get_kv("k") is None
    r1 = store.put("k", 1).revision
    r2 = store.put("k", 2).revision
    kv = store.get_kv("k")
    assert kv == embedkv.KeyValue("k", 2, r1, r2, 2, kv.lease if kv else None)
    assert kv is not None and not kv.lease
    with store.lease(30) as lease:
        store.put("leased", "x", lease=lease)
        leased = store.get_kv("leased")
        assert leased is not None and leased.lease == lease.id
    old = store.get_kv("k", revision=r1)
    assert old is not None and old.value == 1 and old.version == 1


def test_range_by_prefix_start_end_limit_and_keys_only(store: embedkv.Store) -> None:
    for k in ["a", "b/1", "b/2", "b/3", "c", "d"]:
        store[k] = k
    assert [kv.key for kv in store.range(prefix="b/")] == ["b/1", "b/2", "b/3"]
    assert [kv.key for kv in store.range("b/")] == ["b/1", "b/2", "b/3"]
    assert [kv.key for kv in store.range(prefix="")] == ["a", "b/1", "b/2", "b/3", "c", "d"]
    assert [kv.key for kv in store.range(start="b/2", end="d")] == ["b/2", "b/3", "c"]
    assert [kv.key for kv in store.range(start="c")] == ["c", "d"]
    assert [kv.key for kv in store.range(prefix="b/", limit=2)] == ["b/1", "b/2"]
    kvs = store.range(prefix="b/", keys_only=True)
    assert [kv.key for kv in kvs] == ["b/1", "b/2", "b/3"]
    assert all(kv.value is None for kv in kvs)
    assert store.range(prefix="zzz") == []
    assert store.count() == 6 and store.count("b/") == 3


def test_range_sort_and_revision(store: embedkv.Store) -> None:
    store["x/c"] = 1
    store["x/a"] = 3
    rev = store.put("x/b", 2).revision
    store["x/b"] = 20
    store["x/d"] = 0
    keys = lambda kvs: [kv.key for kv in kvs]  # noqa: E731
    assert keys(store.range(prefix="x/", sort="key")) == ["x/a", "x/b", "x/c", "x/d"]
    assert keys(store.range(prefix="x/", sort="-key")) == ["x/d", "x/c", "x/b", "x/a"]
    assert keys(store.range(prefix="x/", sort="mod")) == ["x/c", "x/a", "x/b", "x/d"]
    assert keys(store.range(prefix="x/", sort="-create")) == ["x/d", "x/b", "x/a", "x/c"]
    assert keys(store.range(prefix="x/", sort="-version", limit=1)) == ["x/b"]
    assert keys(store.range(prefix="x/", sort="value")) == ["x/d", "x/c", "x/a", "x/b"]
    at_rev = store.range(prefix="x/", revision=rev)
    assert [(kv.key, kv.value) for kv in at_rev] == [("x/a", 3), ("x/b", 2), ("x/c", 1)]


def test_range_argument_errors(store: embedkv.Store) -> None:
    with pytest.raises(TypeError):
        store.range()
    with pytest.raises(TypeError):
        store.range(prefix="a", start="b")
    with pytest.raises(TypeError):
        store.range(prefix="a", end="b")
    with pytest.raises(ValueError):
        store.range(prefix="a", sort="size")
    with pytest.raises(ValueError):
        store.range(prefix="a", limit=0)


def test_delete_single_prefix_and_prev_kv(store: embedkv.Store) -> None:
    for k in ["a", "p/1", "p/2", "p/3", "q"]:
        store[k] = k.upper()
    assert store.delete("nope") == 0
    n = store.delete("a")
    assert n == 1 and isinstance(n, int) and n.revision == store.revision
    n = store.delete("p/", prefix=True, prev_kv=True)
    assert n == 3
    assert [(kv.key, kv.value) for kv in n.prev_kvs] == [("p/1", "P/1"), ("p/2", "P/2"),
                                                          ("p/3", "P/3")]
    assert list(store) == ["q"]
    assert store.delete("q").prev_kvs == ()


def test_compact_discards_history(store: embedkv.Store) -> None:
    r1 = store.put("k", 1).revision
    r2 = store.put("k", 2).revision
    store.put("k", 3)
    store.compact(r2)
    assert store.get("k", revision=r2) == 2
    with pytest.raises(embedkv.Compacted) as info:
        store.get("k", revision=r1)
    assert info.value.compact_revision >= r2
    with pytest.raises(embedkv.Compacted):
        store.range(prefix="k", revision=r1)
    assert store["k"] == 3
    assert store.status().compact_revision == r2


def test_future_revision_is_an_error(store: embedkv.Store) -> None:
    store["k"] = 1
    with pytest.raises(embedkv.FutureRevision):
        store.get("k", revision=store.revision + 10)


# --- transactions --------------------------------------------------------------------------


def test_txn_success_and_failure_branches(store: embedkv.Store) -> None:
    store["stock"] = 5
    result = store.txn(
        compare=[Value("stock") == 5, Version("order/1") == 0],
        success=[Put("stock", 4), Put("order/1", "paid"), Get("stock")],
        failure=[Get("stock")],
    )
    assert result.succeeded
    put_stock, put_order, got = result.responses
    assert isinstance(put_order, embedkv.PutResult)
    assert isinstance(put_stock, embedkv.PutResult) and isinstance(got, embedkv.RangeResult)
    assert got.kvs[0].value == 4
    assert result.revision == store.revision

    result = store.txn(
        compare=[Value("stock") == 5],
        success=[Put("stock", 3)],
        failure=[Get("stock"), Delete("order/", prefix=True)],
    )
    assert not result.succeeded
    got, deleted = result.responses
    assert isinstance(got, embedkv.RangeResult) and got.kvs[0].value == 4
    assert isinstance(deleted, embedkv.DeleteResult) and deleted.deleted == 1
    assert store["stock"] == 4 and "order/1" not in store


def test_txn_compare_targets(store: embedkv.Store) -> None:
    r = store.put("k", "v").revision
    store.put("k", "v2")
    kv = store.get_kv("k")
    assert kv is not None
    assert store.txn(compare=[CreateRevision("k") == r]).succeeded
    assert store.txn(compare=[ModRevision("k") > r]).succeeded
    assert store.txn(compare=[ModRevision("k") < r]).succeeded is False
    assert store.txn(compare=[Version("k") == 2, Value("k") != "v"]).succeeded
    assert store.txn(compare=[LeaseOf("k") == 0]).succeeded
    assert store.txn(compare=[Version("absent") == 0, CreateRevision("absent") == 0]).succeeded
    with store.lease(30) as lease:
        store.put("held", 1, lease=lease)
        assert store.txn(compare=[LeaseOf("held") == lease.id]).succeeded


def test_txn_rejects_non_operations(store: embedkv.Store) -> None:
    rev = store.revision
    with pytest.raises(TypeError):
        store.txn(compare=[True])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.txn(success=["put k v"])  # type: ignore[list-item]
    assert store.revision == rev


def test_compare_and_set_and_create(store: embedkv.Store) -> None:
    assert store.create("leader", "me")
    assert not store.create("leader", "you")
    assert store["leader"] == "me"
    assert store.compare_and_set("leader", "me", "me-again")
    assert not store.compare_and_set("leader", "me", "stolen")
    assert store["leader"] == "me-again"
    with store.lease(30) as lease:
        assert store.create("ephemeral", 1, lease=lease)
        assert lease.keys() == ["ephemeral"]


def test_compare_and_set_counts_under_contention(store: embedkv.Store) -> None:
    store["counter"] = 0

    def increment(times: int) -> None:
        done = 0
        while done < times:
            current = store["counter"]
            if store.compare_and_set("counter", current, current + 1):
                done += 1

    threads = [threading.Thread(target=increment, args=(15,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store["counter"] == 60


# --- watches -------------------------------------------------------------------------------


def test_watch_callbacks_run_on_the_dispatcher_thread(store: embedkv.Store) -> None:
    before = set(threading.enumerate())
    seen = Collector()
    with store.watch("k", seen):
        store["k"] = 1
        store["k"] = 2
        del store["k"]
        events = seen.wait(3)
    assert [e.type for e in events] == [EventType.PUT, EventType.PUT, EventType.DELETE]
    assert [e.value for e in events[:2]] == [1, 2]
    assert events[2].key == "k" and events[2].kv.value is None
    (thread,) = seen.threads
    assert thread is not threading.current_thread()
    assert thread in before  # one of the member's threads, not one made per watch
    assert "engine" not in thread.name.lower()


def test_watch_delivers_every_event_once_in_order_under_concurrent_writers(
    tmp_path: Path,
) -> None:
    with embedkv.open(tmp_path / "d", durable=False, tick_interval=TICK) as store:
        seen = Collector()
        writers, per_writer = 8, 40
        with store.watch("w/", seen, prefix=True):

            def write(n: int) -> None:
                for i in range(per_writer):
                    store[f"w/{n}"] = i

            threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            events = seen.wait(writers * per_writer)
            assert len(events) == writers * per_writer
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
        for n in range(writers):
            assert [e.value for e in events if e.key == f"w/{n}"] == list(range(per_writer))


def test_watch_replays_from_start_revision_with_prev_kv(store: embedkv.Store) -> None:
    r1 = store.put("k", "a").revision
    store.put("other", "x")
    store.put("k", "b")
    seen = Collector()
    with store.watch("k", seen, start_revision=r1, prev_kv=True):
        store.put("k", "c")
        events = seen.wait(3)
    assert [e.value for e in events] == ["a", "b", "c"]
    assert events[0].prev_kv is None
    assert events[1].prev_kv is not None and events[1].prev_kv.value == "a"
    assert events[2].prev_kv is not None and events[2].prev_kv.value == "b"
    assert events[0].revision == r1


def test_watch_from_compacted_revision_raises(store: embedkv.Store) -> None:
    r1 = store.put("k", 1).revision
    r2 = store.put("k", 2).revision
    store.compact(r2)
    with pytest.raises(embedkv.Compacted):
        store.watch("k", lambda e: None, start_revision=r1)
    with pytest.raises(embedkv.Compacted):
        store.watch_iter("k", start_revision=r1)


def test_compaction_overtaking_a_replay_ends_the_watch_with_compacted(tmp_path: Path) -> None:
    with embedkv.open(tmp_path / "d", durable=False, tick_interval=TICK) as store:
        first = store.put("h", -1).revision
        for i in range(1200):
            store["h"] = i
        # Hold the (single) dispatcher thread in a callback while the watches start replaying,
        # compact history away under them, then let the replays run into the compaction.
        release, holding = threading.Event(), threading.Event()

        def hold(event: embedkv.Event) -> None:
            holding.set()
            release.wait(30)

        store.watch("blocker", hold)
        store["blocker"] = 1
        assert holding.wait(10)
        seen = Collector()
        w = store.watch("h", seen, start_revision=first)
        events = store.watch_iter("h", start_revision=first, timeout=30)
        store.compact(store.revision)
        release.set()
        wait_for(lambda: w.cancelled, what="the member to end the watch")
        assert isinstance(w.error, embedkv.Compacted)
        got = []
        with pytest.raises(embedkv.Compacted):
            for ev in events:
                got.append(ev.value)
        # Events up to the point the history vanished were delivered, in order, none skipped.
        assert got == [e.value for e in seen.events] == [-1, *range(len(got) - 1)]
        assert 1 < len(got) < 1201
        assert events.cancelled and isinstance(events.error, embedkv.Compacted)


def test_watch_all_keys_and_ranges(store: embedkv.Store) -> None:
    everything, span = Collector(), Collector()
    with store.watch("", everything, prefix=True), store.watch("b", span, end="d"):
        for k in ["a", "b", "c", "d"]:
            store[k] = k
        assert [e.key for e in everything.wait(4)] == ["a", "b", "c", "d"]
        assert [e.key for e in span.wait(2)] == ["b", "c"]


def test_watch_cancel_stops_delivery_and_is_idempotent(store: embedkv.Store) -> None:
    seen, marker = Collector(), Collector()
    w = store.watch("k", seen)
    store["k"] = 1
    seen.wait(1)
    w.cancel()
    w.cancel()
    assert w.cancelled
    with store.watch("k", marker):
        store["k"] = 2
        marker.wait(1)
    assert len(seen.events) == 1


def test_failing_callback_does_not_stop_the_watch(
    store: embedkv.Store, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Collector()

    def flaky(event: embedkv.Event) -> None:
        seen(event)
        if event.value == 1:
            raise RuntimeError("boom")

    with store.watch("k", flaky):
        store["k"] = 1
        store["k"] = 2
        assert [e.value for e in seen.wait(2)] == [1, 2]
    assert "boom" in caplog.text


def test_watch_iter_yields_events_times_out_and_ends_on_cancel(store: embedkv.Store) -> None:
    events = store.watch_iter("q/", prefix=True, timeout=10)
    store["q/1"] = "one"
    store["q/2"] = "two"
    assert [next(events).value, next(events).value] == ["one", "two"]
    quick = store.watch_iter("nothing", timeout=0.05)
    with pytest.raises(TimeoutError):
        next(quick)
    quick.close()
    events.cancel()
    assert list(events) == []


def test_watch_iter_in_a_for_loop_ends_when_the_store_closes(path: Path) -> None:
    store = embedkv.open(path, tick_interval=TICK)
    got: list[Any] = []
    with store.watch_iter("k") as events:
        store["k"] = 1

        def consume() -> None:
            for ev in events:
                got.append(ev.value)

        t = threading.Thread(target=consume)
        t.start()
        wait_for(lambda: got == [1], what="the first event")
        store.close()
        t.join(10)
        assert not t.is_alive()
    assert got == [1]


# --- leases --------------------------------------------------------------------------------


def test_expired_lease_deletes_its_keys_with_delete_events(store: embedkv.Store) -> None:
    seen = Collector()
    with store.watch("svc/", seen, prefix=True):
        lease = store.lease(1, keepalive=False)
        store.put("svc/a", "10.0.0.1", lease=lease)
        store.put("svc/b", "10.0.0.2", lease=lease.id)
        store.put("svc/static", "stays")
        assert sorted(lease.keys()) == ["svc/a", "svc/b"]
        assert 0 < lease.ttl_remaining() <= 1
        events = seen.wait(5, timeout=15)
    assert [(e.type, e.key) for e in events[3:]] == [
        (EventType.DELETE, "svc/a"),
        (EventType.DELETE, "svc/b"),
    ]
    assert list(store) == ["svc/static"]
    with pytest.raises(embedkv.LeaseNotFound):
        lease.ttl_remaining()
    with pytest.raises(embedkv.LeaseNotFound):
        lease.keys()
    with pytest.raises(embedkv.LeaseNotFound):
        lease.refresh()
    with pytest.raises(embedkv.LeaseNotFound):
        store.put("svc/late", 1, lease=lease)


def test_keepalive_keeps_a_lease_alive(store: embedkv.Store) -> None:
    lease = store.lease(2)
    store.put("alive", 1, lease=lease)
    # Hold well past the TTL: the background keepalive (every ttl/3) must keep refreshing it.
    end = time.monotonic() + 3.5
    while time.monotonic() < end:
        assert "alive" in store
        time.sleep(0.05)
    assert lease.ttl_remaining() > 0
    lease.revoke()
    assert "alive" not in store


def test_manual_refresh(store: embedkv.Store) -> None:
    lease = store.lease(2, keepalive=False)
    store.put("k", 1, lease=lease)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        assert lease.refresh() == 2
        assert "k" in store
        time.sleep(0.2)
    lease.revoke()


def test_revoke_deletes_keys_and_context_manager_revokes(store: embedkv.Store) -> None:
    seen = Collector()
    with store.watch("l/", seen, prefix=True):
        lease = store.lease(60)
        store.put("l/1", 1, lease=lease)
        lease.revoke()
        lease.revoke()  # a second revoke of the same object is a no-op
        assert "l/1" not in store
        with store.lease(60) as scoped:
            store.put("l/2", 2, lease=scoped)
            assert "l/2" in store
        assert "l/2" not in store
        events = seen.wait(4)
    assert [(e.type, e.key) for e in events] == [
        (EventType.PUT, "l/1"),
        (EventType.DELETE, "l/1"),
        (EventType.PUT, "l/2"),
        (EventType.DELETE, "l/2"),
    ]
    with pytest.raises(embedkv.LeaseNotFound):
        scoped.keys()


def test_lease_arguments(store: embedkv.Store) -> None:
    with pytest.raises(ValueError):
        store.lease(0)
    with pytest.raises(TypeError):
        store.lease(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.put("k", 1, lease="lease")  # type: ignore[arg-type]
    with pytest.raises(embedkv.LeaseNotFound):
        store.put("k", 1, lease=0x7777)
    assert "k" not in store


# --- errors --------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    for cls in (embedkv.Closed, embedkv.Compacted, embedkv.Unavailable, embedkv.LeaseNotFound,
                embedkv.DataDirLocked, embedkv.NoSpace, embedkv.FutureRevision):
        assert issubclass(cls, embedkv.Error)


def test_an_answer_that_never_comes_is_unavailable(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The member fails its futures with Unavailable at request_timeout; should one never
    # resolve at all, the store still gives up (request_timeout + a grace period).
    monkeypatch.setattr(store, "_wait_limit", 0.05)
    monkeypatch.setattr(store._m, "read_barrier", lambda **_: concurrent.futures.Future())
    with pytest.raises(embedkv.Unavailable):
        store.get("k")
    assert store.get("k", serializable=True) is None


def test_closed_store_raises_closed_and_close_is_idempotent(path: Path) -> None:
    store = embedkv.open(path, tick_interval=TICK)
    store["k"] = 1
    lease = store.lease(60)
    store.close()
    store.close()
    assert store.closed
    ops: list[Callable[[], Any]] = [
        lambda: store["k"],
        lambda: store.__setitem__("k", 2),
        lambda: store.__delitem__("k"),
        lambda: "k" in store,
        lambda: len(store),
        lambda: list(store),
        lambda: store.get("k"),
        lambda: store.get("k", serializable=True),
        lambda: store.get_kv("k"),
        lambda: store.put("k", 2),
        lambda: store.range(prefix=""),
        lambda: store.delete("k"),
        lambda: store.revision,
        lambda: store.compact(1),
        lambda: store.txn(),
        lambda: store.compare_and_set("k", 1, 2),
        lambda: store.create("x", 1),
        lambda: store.watch("k", lambda e: None),
        lambda: store.watch_iter("k"),
        lambda: store.lease(5),
        lambda: lease.refresh(),
        lambda: lease.ttl_remaining(),
        lambda: lease.keys(),
        lambda: lease.revoke(),
        lambda: store.status(),
    ]
    for op in ops:
        with pytest.raises(embedkv.Closed):
            op()
    with lease:  # leaving the context manager after close is not an error
        pass


def test_close_from_a_watch_callback(path: Path) -> None:
    before = set(threading.enumerate())
    store = embedkv.open(path, tick_interval=TICK)
    closed = threading.Event()

    def close_on_event(event: embedkv.Event) -> None:
        store.close()
        closed.set()

    store.watch("k", close_on_event)
    store["k"] = 1
    assert closed.wait(10)
    assert store.closed
    wait_for(lambda: set(threading.enumerate()) <= before, 10, "the member's threads to end")


def test_store_context_manager_closes(path: Path) -> None:
    with embedkv.open(path, tick_interval=TICK) as store:
        store["k"] = 1
    assert store.closed
    with pytest.raises(embedkv.Closed):
        store["k"]
    with pytest.raises(embedkv.Closed), store:
        pass


def test_second_open_in_process_raises_datadirlocked(store: embedkv.Store, path: Path) -> None:
    with pytest.raises(embedkv.DataDirLocked):
        embedkv.open(path)
    store["still"] = "works"
    assert store["still"] == "works"


def test_second_open_from_another_process_raises_datadirlocked(
    store: embedkv.Store, path: Path
) -> None:
    code = textwrap.dedent(
        f"""
        import embedkv, sys
        try:
            embedkv.open({str(path)!r})
        except embedkv.DataDirLocked:
            sys.exit(3)
        sys.exit(0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 3, proc.stderr.decode()


def test_reopen_after_close_and_lock_is_released(path: Path) -> None:
    with embedkv.open(path, tick_interval=TICK) as first:
        first["k"] = {"v": 1}
        first.delete("gone")
        first["gone"] = 2
        del first["gone"]
        revision = first.revision
    # The lock is released: another process opens the data dir and sees the data.
    code = textwrap.dedent(
        f"""
        import embedkv
        with embedkv.open({str(path)!r}, tick_interval=0.01) as s:
            print(repr((s["k"], "gone" in s, s.revision)))
            s["other"] = 3
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr(({"v": 1}, False, revision))
    with embedkv.open(path, tick_interval=TICK) as again:
        assert again["k"] == {"v": 1}
        assert again["other"] == 3
        assert again.revision == revision + 1


def test_close_returns_behind_a_callback_that_never_returns(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = embedkv.open(path, durable=False, tick_interval=TICK, request_timeout=0.5)
    never = threading.Event()
    entered = threading.Event()

    def stuck(event: embedkv.Event) -> None:
        entered.set()
        never.wait()

    try:
        watch = s.watch("k", stuck)
        s["k"] = 1
        assert entered.wait(10)
        with caplog.at_level(logging.WARNING, logger="embedkv"):
            closer = threading.Thread(target=s.close)
            closer.start()
            closer.join(20)
            assert not closer.is_alive(), "close() hung behind the stuck callback"
        assert s.closed and watch.cancelled
        assert any("has not returned" in r.getMessage() for r in caplog.records)
        with pytest.raises(embedkv.Closed):
            s["k"]
    finally:
        never.set()
    # The lock is released although the callback's thread was still running at close.
    with embedkv.open(path, durable=False, tick_interval=TICK) as again:
        assert again["k"] == 1


@pytest.mark.parametrize("close", [True, False])
def test_exit_never_hangs_behind_a_callback_that_never_returns(path: Path, close: bool) -> None:
    code = textwrap.dedent(
        f"""
        import threading, embedkv
        s = embedkv.open({str(path)!r}, durable=False, tick_interval=0.01, request_timeout=0.5)
        entered = threading.Event()
        def stuck(event):
            entered.set()
            threading.Event().wait()  # never returns
        s.watch("k", stuck)
        s["k"] = 1
        assert entered.wait(10)
        if {close!r}:
            s.close()
        print("exiting", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exiting"
    assert "has not returned" in proc.stderr  # the warning, logged at close or at exit
    with embedkv.open(path, durable=False, tick_interval=TICK) as again:
        assert again["k"] == 1


def test_a_forked_child_cannot_use_the_store_and_leaves_it_alone(path: Path) -> None:
    s = embedkv.open(path, tick_interval=TICK)
    s["k"] = 1
    events = s.watch_iter("k", timeout=5)

    def in_child() -> str:
        outcome = []
        for op in (lambda: s["k"], lambda: s.put("k", 2), lambda: "k" in s,
                   lambda: s.revision, lambda: next(events)):
            try:
                op()
                outcome.append("ok")
            except embedkv.Closed as exc:
                outcome.append("fork" if "os.fork()" in str(exc) else f"closed: {exc}")
        s.close()  # does nothing in the child
        events.cancel()
        return repr(outcome)

    report = in_forked_child(in_child)
    assert report == repr(["fork"] * 5)
    # The parent goes on, and its watch still works.
    s["k"] = 3
    assert next(events).value == 3
    assert s["k"] == 3
    s.close()


def test_a_forked_child_does_not_keep_the_data_dir_locked(path: Path) -> None:
    # The child outlives the parent's close, then exits normally: its exit hooks must not
    # close (or unlock) the parent's store, and its copy of the lock must not outlive it.
    code = textwrap.dedent(
        f"""
        import os, select, sys
        # Registered before embedkv's own fork hook, so it runs first in the child: the child
        # holds its inherited copy of the lock descriptor until the parent has reopened.
        hold_r, hold_w = os.pipe()
        os.register_at_fork(after_in_child=lambda: select.select([hold_r], [], [], 20))
        import embedkv
        s = embedkv.open({str(path)!r}, tick_interval=0.01)
        s["k"] = 1
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            select.select([go_r], [], [], 20)  # bounded: never outlive a parent that failed
            sys.exit(0)  # a normal exit: threading's and atexit hooks run
        s.close()
        with embedkv.open({str(path)!r}, tick_interval=0.01) as again:  # not DataDirLocked
            os.write(hold_w, b"x")
            again["k"] = again["k"] + 1
            os.write(go_w, b"x")
            _, status = os.waitpid(pid, 0)
            again["k"] = again["k"] + 1  # the child's exit left the parent's store alone
        print(os.waitstatus_to_exitcode(status))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"
    with embedkv.open(path, tick_interval=TICK) as again:
        assert again["k"] == 3


@pytest.mark.parametrize(
    ("key", "error"),
    [(1, TypeError), (None, TypeError), ("", ValueError), (b"", ValueError),
     ("k" * 501, ValueError), (b"\x01" * 501, ValueError)],
)
def test_bad_keys_raise_before_anything_is_written(
    store: embedkv.Store, key: Any, error: type[Exception]
) -> None:
    store["before"] = 1
    rev = store.revision
    with pytest.raises(error):
        store[key] = "v"
    with pytest.raises(error):
        store.put(key, "v")
    with pytest.raises(error):
        store.create(key, "v")
    with pytest.raises(error):
        store.delete(key)
    with pytest.raises(error):
        store.txn(success=[Put(key, "v")])
    assert store.revision == rev and list(store) == ["before"]


def test_key_limit_is_inclusive(store: embedkv.Store) -> None:
    store["k" * embedkv.MAX_KEY_BYTES] = 1
    assert store["k" * embedkv.MAX_KEY_BYTES] == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [(object(), TypeError), ({1, 2}, None), (b"x" * (embedkv.MAX_VALUE_BYTES + 1), ValueError)],
)
def test_bad_values_raise_before_anything_is_written(
    store: embedkv.Store, value: Any, error: type[Exception] | None
) -> None:
    rev = store.revision
    if error is None:  # a value cbor2 can encode round-trips
        store["k"] = value
        assert store["k"] == value
        return
    with pytest.raises(error):
        store["k"] = value
    with pytest.raises(error):
        store.txn(success=[Put("ok", 1), Put("k", value)])
    assert store.revision == rev and len(store) == 0


def test_large_value_within_the_limit(store: embedkv.Store) -> None:
    big = b"v" * (1024 * 1024)
    store["big"] = big
    assert store["big"] == big


# --- durability and threads ----------------------------------------------------------------


def test_everything_is_there_after_close_and_reopen(path: Path) -> None:
    with embedkv.open(path, tick_interval=TICK) as store:
        for i in range(20):
            store[f"k{i:02d}"] = {"n": i}
        del store["k05"]
        lease = store.lease(300)
        store.put("leased", 1, lease=lease)
        revision = store.revision
        expected = dict(store.items())
    with embedkv.open(path, tick_interval=TICK) as store:
        assert store.revision == revision
        assert dict(store.items()) == expected
        assert "k05" not in store
        kv = store.get_kv("leased")
        assert kv is not None and kv.lease == lease.id


def test_no_fsync_store_works(tmp_path: Path) -> None:
    with embedkv.open(tmp_path / "d", durable=False, tick_interval=TICK) as store:
        store["k"] = 1
        assert store.status().durable is False
    with embedkv.open(tmp_path / "d", tick_interval=TICK) as store:
        assert store["k"] == 1  # a clean close loses nothing even without fsync


def test_serializable_reads_option(tmp_path: Path) -> None:
    with embedkv.open(tmp_path / "d", serializable_reads=True, tick_interval=TICK) as store:
        store["k"] = 1
        assert store["k"] == 1 and "k" in store and len(store) == 1 and list(store) == ["k"]


def test_threads_are_gone_after_close(path: Path) -> None:
    before = set(threading.enumerate())
    store = embedkv.open(path, tick_interval=TICK)
    store["k"] = 1
    store.watch("k", lambda e: None)
    store.lease(5)
    assert set(threading.enumerate()) - before  # the member runs threads of its own
    store.close()
    wait_for(lambda: set(threading.enumerate()) <= before, 10, "the member's threads to end")


def test_concurrent_readers_and_writers_share_one_store(store: embedkv.Store) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                store[f"t{n}/{i}"] = i
                assert store[f"t{n}/{i}"] == i
                assert store.get(f"t{n}/{i}", serializable=True) == i
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(store) == 200


def test_status_and_repr(store: embedkv.Store, path: Path) -> None:
    store["k"] = 1
    st = store.status()
    assert st.revision == store.revision
    assert st.applied_index >= 1 and st.member_id > 0 and st.cluster_id > 0
    assert Path(st.path) == path and st.durable
    assert "revision=" in repr(store)


def test_public_names() -> None:
    for name in embedkv.__all__:
        assert hasattr(embedkv, name), name
    assert embedkv.__version__
    assert os.path.basename(embedkv.__file__) == "__init__.py"
