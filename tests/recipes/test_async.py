"""The asyncio faces run the same recipes: a lock among tasks, a queue, an election."""

from __future__ import annotations

import asyncio
from pathlib import Path

import embedkv


def run(coro: object) -> None:
    async def with_deadline() -> None:
        await asyncio.wait_for(coro, 60)  # type: ignore[arg-type]

    asyncio.run(with_deadline())


def test_async_lock_queue_election_counter(tmp_path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", durable=False, tick_interval=0.01) as s:
            inside = 0
            tokens: list[int] = []

            async def worker() -> None:
                nonlocal inside
                lock = s.lock("a", ttl=5)
                for _ in range(3):
                    async with lock:
                        inside += 1
                        assert inside == 1
                        tokens.append(lock.token)
                        await asyncio.sleep(0)
                        inside -= 1

            await asyncio.gather(*(worker() for _ in range(4)))
            assert tokens == sorted(tokens) and len(set(tokens)) == 12

            q = s.queue("q")
            await q.put("x")
            item = await q.get(timeout=5)
            assert item.value == "x" and await q.qsize() == 0
            await q.task_done(item)
            await q.close()

            e = s.election("e")
            assert await e.campaign("me")
            assert e.is_leader and await e.leader() == "me"
            await e.resign()
            assert await s.counter("c").add(3) == 3

            view = await s.config("cfg/")
            await s.put("cfg/k", 1)
            while "k" not in view:
                await asyncio.sleep(0.01)
            view.close()

    run(main())


def test_a_cancelled_acquire_does_not_leave_the_lock_held(tmp_path: Path) -> None:
    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", durable=False, tick_interval=0.01) as s:
            holder = s.lock("c")
            await holder.acquire()
            waiter = s.lock("c")
            task = asyncio.ensure_future(waiter.acquire())
            while s.store.count("_embedkv/lock/c/") < 2:
                await asyncio.sleep(0.01)
            task.cancel()
            await holder.release()
            while s.store.count("_embedkv/lock/c/") > 0:  # the waiter got it, then undid it
                await asyncio.sleep(0.01)
            third = s.lock("c")
            assert await third.acquire(timeout=5)
            await third.release()

    run(main())
