"""AsyncStore: the Store's operations as coroutines, watches as async iterators."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import embedkv
from embedkv import EventType, Put, Value
from tests.forking import in_forked_child

TICK = 0.01


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    async def with_deadline() -> Any:
        return await asyncio.wait_for(coro_fn(), 60)

    return asyncio.run(with_deadline())


def test_open_async_forms(tmp_path: Path) -> None:
    async def main() -> None:
        store = await embedkv.open_async(tmp_path / "a", tick_interval=TICK)
        assert isinstance(store, embedkv.AsyncStore)
        await store.put("k", 1)
        await store.close()
        await store.close()  # idempotent
        assert store.closed
        with pytest.raises(embedkv.Closed):
            await store.get("k")

        async with embedkv.open_async(tmp_path / "a", tick_interval=TICK) as store:
            assert await store.get("k") == 1
        assert store.closed

        async with await embedkv.open_async(tmp_path / "a", tick_interval=TICK) as store:
            assert await store.get("k") == 1
        assert store.closed

    run(main)


def test_async_operations(tmp_path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", tick_interval=TICK) as store:
            r1 = await store.put("a/1", "one")
            r2 = await store.put("a/1", "uno", prev_kv=True)
            assert r2.revision > r1.revision and r2.prev is not None
            assert r2.prev.value == "one"
            await store.put("a/2", "two")
            assert await store.get("a/1") == "uno"
            assert await store.get("a/1", revision=r1.revision) == "one"
            assert await store.get("zz", "dflt", serializable=True) == "dflt"
            kv = await store.get_kv("a/2")
            assert kv is not None and kv.version == 1
            assert [kv.key for kv in await store.range(prefix="a/", sort="-key")] == [
                "a/2", "a/1"]
            assert await store.count("a/") == 2
            assert await store.contains("a/2") and not await store.contains("a/3")
            result = await store.txn(compare=[Value("a/2") == "two"],
                                     success=[Put("a/2", "dos")])
            assert result.succeeded
            assert await store.compare_and_set("a/2", "dos", "deux")
            assert not await store.create("a/2", "x")
            assert await store.create("a/3", "trois")
            assert store.revision == store.store.revision
            n = await store.delete("a/", prefix=True, prev_kv=True)
            assert n == 3 and [kv.value for kv in n.prev_kvs] == ["uno", "deux", "trois"]
            await store.compact(r2.revision)
            with pytest.raises(embedkv.Compacted):
                await store.get("a/1", revision=r1.revision)
            assert store.status().revision == store.revision
            with pytest.raises(TypeError):
                await store.put(1, "x")  # type: ignore[arg-type]

    run(main)


def test_async_watch_iterates_and_ends_on_cancel_or_close(tmp_path: Path) -> None:
    async def main() -> None:
        store = await embedkv.open_async(tmp_path / "d", tick_interval=TICK)
        r = await store.put("w/0", 0)
        got: list[tuple[EventType, Any]] = []
        async with store.watch("w/", prefix=True, start_revision=r.revision) as events:
            await store.put("w/1", 1)
            await store.delete("w/0")
            async for ev in events:
                got.append((ev.type, ev.key))
                if len(got) == 3:
                    break
        assert got == [(EventType.PUT, "w/0"), (EventType.PUT, "w/1"), (EventType.DELETE, "w/0")]

        events = store.watch("w/", prefix=True)
        seen: list[embedkv.Event] = []
        first = asyncio.Event()

        async def drain() -> None:
            async for ev in events:
                seen.append(ev)
                first.set()

        consumer = asyncio.ensure_future(drain())
        await store.put("w/2", 2)
        await first.wait()
        await store.close()  # closing the store ends every watch
        await consumer
        assert [e.key for e in seen] == ["w/2"]

    run(main)


def test_async_watch_from_compacted_revision_raises(tmp_path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", tick_interval=TICK) as store:
            r1 = (await store.put("k", 1)).revision
            r2 = (await store.put("k", 2)).revision
            await store.compact(r2)
            with pytest.raises(embedkv.Compacted):
                store.watch("k", start_revision=r1)

    run(main)


def test_async_lease(tmp_path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", tick_interval=TICK) as store:
            async with await store.lease(60) as lease:
                await store.put("svc", "addr", lease=lease)
                assert await lease.keys() == ["svc"]
                assert 0 < await lease.ttl_remaining() <= 60
                assert await lease.refresh() == 60
            assert not await store.contains("svc")
            with pytest.raises(embedkv.LeaseNotFound):
                await lease.keys()

            short = await store.lease(1, keepalive=False)
            put = await store.put("tmp", 1, lease=short)
            events = store.watch("tmp", start_revision=put.revision + 1)
            async for ev in events:
                assert ev.type is EventType.DELETE
                break
            events.cancel()
            assert await store.get("tmp") is None

    run(main)


def test_concurrent_async_writes_use_no_thread_per_call(tmp_path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", tick_interval=TICK) as store:
            await store.put("warm", 1)
            threads = threading.active_count()
            results = await asyncio.gather(*(store.put(f"k{i}", i) for i in range(200)))
            assert len({r.revision for r in results}) == 200
            assert threading.active_count() <= threads
            assert await store.count("k") == 200

    run(main)


def test_async_watch_ended_by_compaction_raises_compacted(tmp_path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", durable=False, tick_interval=TICK) as store:
            first = (await store.put("h", -1)).revision
            await asyncio.gather(*(store.put("h", i) for i in range(1200)))
            # Hold the dispatcher so the replay is still running when history is compacted.
            release, holding = threading.Event(), threading.Event()
            store.store.watch("blocker", lambda e: (holding.set(), release.wait(30)))
            await store.put("blocker", 1)
            assert await asyncio.to_thread(holding.wait, 10)
            events = store.watch("h", start_revision=first)
            await store.compact(store.revision)
            release.set()
            got = []
            with pytest.raises(embedkv.Compacted):
                async for ev in events:
                    got.append(ev.revision)
            assert got == sorted(got) and 1 < len(got) < 1201
            assert events.cancelled and isinstance(events.error, embedkv.Compacted)

    run(main)


def test_an_async_watch_in_a_forked_child_raises_closed(tmp_path: Path) -> None:
    """As WatchIterator: no dispatcher feeds the watch in a child of os.fork(), so iterating it
    there says why at once instead of waiting for ever."""

    async def main() -> str:
        async with embedkv.open_async(tmp_path / "a", tick_interval=TICK) as store:
            w = store.watch("k")

            def in_child() -> str:
                try:
                    # asyncio drops the running loop in a child: iterate on a new one.
                    asyncio.run(asyncio.wait_for(w.__anext__(), 5))
                    return "an event"
                except embedkv.Closed as exc:
                    return "fork" if "os.fork()" in str(exc) else f"closed: {exc}"

            report = in_forked_child(in_child)
            # The parent's watch still works.
            await store.put("k", 1)
            ev = await asyncio.wait_for(w.__anext__(), 10)
            assert ev.value == 1
            w.cancel()
            return report

    assert run(main) == "fork"
