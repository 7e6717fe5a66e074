"""Bad input is refused at the call, with TypeError/ValueError, and nothing is written (issue 15
items 4 and 7); iterables given to the API are read exactly once, so a generator works like a
list."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import embedkv
from embedkv import Delete, Get, Put, Value, Version

TICK = 0.01


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(path: Path) -> Iterator[embedkv.Store]:
    with embedkv.open(path, durable=False, tick_interval=TICK) as s:
        yield s


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    async def with_deadline() -> Any:
        return await asyncio.wait_for(coro_fn(), 30)

    return asyncio.run(with_deadline())


# --- item 4: iterables are read once -------------------------------------------------------


def test_txn_reads_generator_compares_and_operations(store: embedkv.Store) -> None:
    # A false comparison given as a generator used to be consumed by validation and then seen
    # as "no comparisons": the transaction succeeded.
    result = store.txn(compare=(c for c in [Version("x") == 999]), success=[Put("y", 1)],
                       failure=(op for op in [Put("f", 1)]))
    assert not result.succeeded
    assert "y" not in store
    assert store["f"] == 1
    # A success branch given as a generator used to write nothing.
    result = store.txn(success=(p for p in [Put("z", 1), Put("z2", 2)]))
    assert result.succeeded
    assert (store["z"], store["z2"]) == (1, 2)
    assert len(result.responses) == 2


def test_txn_reads_other_one_shot_iterables(store: embedkv.Store) -> None:
    store["k"] = 1
    compares = iter([Value("k") == 1])
    ops = map(lambda i: Put(f"m{i}", i), range(3))
    assert store.txn(compare=compares, success=ops).succeeded
    assert [store[f"m{i}"] for i in range(3)] == [0, 1, 2]


def test_txn_refuses_a_single_operation_or_a_string(store: embedkv.Store) -> None:
    with pytest.raises(TypeError, match="iterable"):
        store.txn(success=Put("a", 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.txn(compare="abc")  # type: ignore[arg-type]
    assert len(store) == 0


def test_async_txn_reads_generators(path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(path, durable=False, tick_interval=TICK) as s:
            r = await s.txn(compare=(c for c in [Version("x") == 999]),
                            success=(p for p in [Put("y", 1)]))
            assert not r.succeeded
            r = await s.txn(success=(p for p in [Put("z", 1)]))
            assert r.succeeded
            assert await s.get("z") == 1
            assert await s.get("y") is None
            await s.update(kv for kv in [("g1", 1), ("g2", 2)])
            assert await s.get("g2") == 2

    run(main)


def test_update_reads_generators_of_pairs(store: embedkv.Store) -> None:
    store.update((k, v) for k, v in [("a", 1), ("b", 2)])
    store.update(((k, v) for k, v in [("c", 3)]), d=4)
    assert dict(store.items()) == {"a": 1, "b": 2, "c": 3, "d": 4}


# --- update(): one transaction ----------------------------------------------------------------


def test_update_is_one_transaction(store: embedkv.Store) -> None:
    before = store.revision
    store.update({f"k{i}": i for i in range(100)}, extra="x")
    assert store.revision == before + 1  # one revision: one transaction
    assert store.count("k") == 100
    assert store["extra"] == "x"
    assert {kv.mod_revision for kv in store.range(prefix="")} == {before + 1}


def test_update_later_pairs_win_as_in_dict(store: embedkv.Store) -> None:
    store.update([("a", 1), ("a", 2)], b=3)
    store.update({"b": 4}, b=5)
    assert dict(store.items()) == {"a": 2, "b": 5}


def test_update_beyond_txn_limits_is_chunked(store: embedkv.Store) -> None:
    before = store.revision
    store.update({f"k{i:04d}": i for i in range(300)})  # 128 puts per transaction
    assert store.count("k") == 300
    assert store.revision == before + 3
    big = "v" * (1024 * 1024)  # three 1 MiB values do not fit one proposal
    before = store.revision
    store.update(b1=big, b2=big, b3=big)
    assert [store[k] == big for k in ("b1", "b2", "b3")] == [True] * 3
    assert store.revision == before + 2


def test_update_checks_everything_before_writing(store: embedkv.Store) -> None:
    pairs: list[tuple[Any, Any]] = [(f"k{i}", i) for i in range(300)]
    with pytest.raises(TypeError):
        store.update([*pairs, ("bad", object())])  # the last chunk's value is bad
    with pytest.raises(TypeError):
        store.update([*pairs, (5, 1)])
    with pytest.raises(ValueError):
        store.update([*pairs, ("", 1)])
    with pytest.raises(ValueError, match="length 3"):
        store.update([("a", 1, 2)])
    with pytest.raises(TypeError):
        store.update([1])
    with pytest.raises(TypeError, match="at most 1"):
        store.update({}, {})  # type: ignore[call-arg]
    assert len(store) == 0
    before = store.revision
    store.update()
    store.update({})
    assert store.revision == before  # nothing to write, no write


# --- item 7: validated at the call ---------------------------------------------------------


def test_watch_refuses_a_callback_that_is_not_callable(store: embedkv.Store) -> None:
    with pytest.raises(TypeError, match="callable"):
        store.watch("k", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.watch("k", "print")  # type: ignore[arg-type]
    assert not store._watches


@pytest.mark.parametrize(("timeout", "error"), [
    ("x", TypeError), (True, TypeError), (-1, ValueError), (math.nan, ValueError),
])
def test_watch_iter_checks_its_timeout(store: embedkv.Store, timeout: Any,
                                       error: type[Exception]) -> None:
    with pytest.raises(error):
        store.watch_iter("k", timeout=timeout)
    assert not store._watches


def test_watch_iter_timeout_zero_is_a_poll(store: embedkv.Store) -> None:
    with store.watch_iter("k", timeout=0) as events, pytest.raises(TimeoutError):
        next(events)


@pytest.mark.parametrize(("flag", "value"), [("prefix", "yes"), ("prev_kv", 1)])
def test_watch_flags_must_be_bools(store: embedkv.Store, flag: str, value: Any) -> None:
    with pytest.raises(TypeError, match=flag):
        store.watch("k", print, **{flag: value})


_BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"request_timeout": math.inf}, ValueError),
    ({"request_timeout": math.nan}, ValueError),
    ({"request_timeout": 0}, ValueError),
    ({"request_timeout": -1.0}, ValueError),
    ({"request_timeout": "5"}, TypeError),
    ({"election_tick": 1.5}, TypeError),
    ({"election_tick": True}, TypeError),
    ({"heartbeat_tick": 1.0}, TypeError),
    ({"heartbeat_tick": 0}, ValueError),
    ({"election_tick": 3, "heartbeat_tick": 3}, ValueError),
    ({"election_tick": 2, "heartbeat_tick": 5}, ValueError),
    ({"durable": "no"}, TypeError),
    ({"durable": 0}, TypeError),
    ({"serializable_reads": "yes"}, TypeError),
    ({"tick_interval": math.inf}, ValueError),
    ({"tick_interval": math.nan}, ValueError),
    ({"tick_interval": 1e-6}, ValueError),
    ({"tick_interval": 0}, ValueError),
    ({"tick_interval": 5.0}, ValueError),
    ({"tick_interval": None}, TypeError),
]


@pytest.mark.parametrize(("options", "error"), _BAD_OPTIONS)
def test_open_checks_options_before_creating_anything(
    path: Path, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        embedkv.open(path, **options)
    assert not path.exists()  # refused before the data dir was created


@pytest.mark.parametrize(("options", "error"), [*_BAD_OPTIONS[:3], ({"nonsense": 1}, TypeError)])
def test_open_async_checks_options_at_the_call(
    path: Path, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        embedkv.open_async(path, **options)  # not only when awaited
    assert not path.exists()


def test_open_accepts_the_bounds(path: Path) -> None:
    with embedkv.open(path, durable=False, tick_interval=embedkv.store.MIN_TICK_INTERVAL,
                      election_tick=2, heartbeat_tick=1, request_timeout=1) as s:
        s["k"] = 1
    with embedkv.open(path, durable=False, tick_interval=embedkv.store.MAX_TICK_INTERVAL) as s:
        assert s["k"] == 1


def test_in_on_a_closed_store_raises_closed(path: Path) -> None:
    s = embedkv.open(path, durable=False, tick_interval=TICK)
    s["k"] = 1
    s.close()
    with pytest.raises(embedkv.Closed):
        "k" in s  # noqa: B015
    with pytest.raises(embedkv.Closed):
        5 in s  # noqa: B015
    with pytest.raises(embedkv.Closed):
        "" in s  # noqa: B015


def test_reads_refuse_a_negative_revision(store: embedkv.Store) -> None:
    store["k"] = 1
    store["k"] = 2
    for bad in (-1, -100):
        with pytest.raises(ValueError, match="revision"):
            store.get("k", revision=bad)
        with pytest.raises(ValueError, match="revision"):
            store.get_kv("k", revision=bad)
        with pytest.raises(ValueError, match="revision"):
            store.range(prefix="", revision=bad)
    with pytest.raises(TypeError):
        store.get("k", revision=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.range(prefix="", revision=True)
    # 0 means the current revision, as in etcd.
    assert store.get("k", revision=0) == 2
    assert [kv.value for kv in store.range(prefix="", revision=0)] == [2]


def test_async_reads_refuse_a_negative_revision(path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(path, durable=False, tick_interval=TICK) as s:
            await s.put("k", 1)
            with pytest.raises(ValueError):
                await s.get("k", revision=-1)
            with pytest.raises(ValueError):
                await s.range(prefix="", revision=-1)

    run(main)


@pytest.mark.parametrize("sort", ["--key", "+-mod", "-+mod", "-", "", "key-", "Key"])
def test_sort_with_more_than_one_sign_is_refused(store: embedkv.Store, sort: str) -> None:
    with pytest.raises(ValueError, match="sort"):
        store.range(prefix="", sort=sort)


def test_sort_with_one_sign_is_accepted(store: embedkv.Store) -> None:
    store.update(a=2, b=1)
    assert [kv.key for kv in store.range(prefix="", sort="-key")] == ["b", "a"]
    assert [kv.key for kv in store.range(prefix="", sort="+value")] == ["b", "a"]


def test_delete_of_the_whole_key_space_in_a_txn_matches_store_delete(
    store: embedkv.Store,
) -> None:
    store.update(a=1, b=2, c=3)
    result = store.txn(success=[Delete("", prefix=True, prev_kv=True)])
    assert result.succeeded
    response = result.responses[0]
    assert isinstance(response, embedkv.DeleteResult)
    assert response.deleted == 3
    assert [kv.key for kv in response.prev_kvs] == ["a", "b", "c"]
    assert len(store) == 0
    store.update(d=4)
    assert store.delete("", prefix=True) == 1
    assert len(store) == 0
    # And Get("", prefix=True) in a txn reads every key, as range(prefix="") does.
    store.update(x=1, y=2)
    got = store.txn(success=[Get("", prefix=True)]).responses[0]
    assert isinstance(got, embedkv.RangeResult)
    assert [kv.key for kv in got.kvs] == ["x", "y"]
    # An empty key without prefix stays an error.
    with pytest.raises(ValueError):
        store.txn(success=[Delete("")])
    with pytest.raises(ValueError):
        store.txn(success=[Put("", 1)])


@pytest.mark.parametrize("key", [bytearray(b"k"), memoryview(b"k")])
def test_bytearray_and_memoryview_keys_are_refused(store: embedkv.Store, key: Any) -> None:
    store["k"] = 1
    rev = store.revision
    for call in (
        lambda: store.put(key, 2),
        lambda: store.__setitem__(key, 2),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.create(key, 2),
        lambda: store.range(prefix=key),
        lambda: store.txn(success=[Put(key, 2)]),
        lambda: store.txn(compare=[Value(key) == 1]),
        lambda: store.watch(key, print),
        lambda: store.update([(key, 2)]),
    ):
        with pytest.raises(TypeError, match="str or bytes"):
            call()
    assert key not in store  # like a dict: not a key, so not in the store
    assert store.revision == rev
    assert store["k"] == 1


@pytest.mark.parametrize(("limit", "error"), [(0, ValueError), (-1, ValueError),
                                              (1.5, ValueError), (True, ValueError)])
def test_range_limit(store: embedkv.Store, limit: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="limit"):
        store.range(prefix="", limit=limit)


@pytest.mark.parametrize(("call", "error"), [
    (lambda s: s.lease(0), ValueError),
    (lambda s: s.lease(1.5), TypeError),
    (lambda s: s.lease(True), TypeError),
    (lambda s: s.lease(5, keepalive="no"), TypeError),
    (lambda s: s.delete("k", prefix="yes"), TypeError),
    (lambda s: s.delete("k", prev_kv=1), TypeError),
    (lambda s: s.put("k", 1, prev_kv="no"), TypeError),
    (lambda s: s.put("k", 1, lease=1.5), TypeError),
    (lambda s: s.range(prefix="", keys_only="no"), TypeError),
    (lambda s: s.compact(-1), ValueError),
    (lambda s: s.compact(True), ValueError),
])
def test_other_arguments_are_checked_at_the_call(
    store: embedkv.Store, call: Callable[[embedkv.Store], Any], error: type[Exception]
) -> None:
    store["k"] = 1
    rev = store.revision
    with pytest.raises(error):
        call(store)
    assert store.revision == rev
    assert store["k"] == 1


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_serializable_must_be_a_bool(store: embedkv.Store, value: Any) -> None:
    store.put("k", 1)
    for call in (lambda: store.get("k", serializable=value),
                 lambda: store.get_kv("k", serializable=value),
                 lambda: store.range("k", serializable=value),
                 lambda: store.count("k", serializable=value)):
        with pytest.raises(TypeError, match="serializable must be a bool"):
            call()


def test_async_serializable_must_be_a_bool(path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(path, durable=False, tick_interval=TICK) as s:
            with pytest.raises(TypeError, match="serializable must be a bool"):
                await s.get("k", serializable="yes")  # type: ignore[arg-type]

    run(main)
