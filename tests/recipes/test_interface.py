"""What issue 12 asks of every recipe's interface: clear errors for bad arguments on every
factory, the asyncio face of each recipe, and a lock waiter watching only its predecessor."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import embedkv
from tests.waiting import wait_for

# Each factory with its arguments; "NAME" is replaced by the name under test.
FACTORIES: dict[str, Callable[..., Any]] = {
    "lock": lambda s, name, **kw: s.lock(name, **kw),
    "rwlock": lambda s, name, **kw: s.rwlock(name, **kw),
    "election": lambda s, name, **kw: s.election(name, **kw),
    "queue": lambda s, name, **kw: s.queue(name, **kw),
    "barrier": lambda s, name, **kw: s.barrier(name, 2, **kw),
    "double_barrier": lambda s, name, **kw: s.double_barrier(name, 2, **kw),
    "semaphore": lambda s, name, **kw: s.semaphore(name, 2, **kw),
    "party": lambda s, name, **kw: s.party(name, **kw),
    "counter": lambda s, name, **kw: s.counter(name),
    "services": lambda s, name, **kw: s.services(name),
}
WITH_TTL = set(FACTORIES) - {"counter", "services"}


@pytest.mark.parametrize("recipe", sorted(FACTORIES))
@pytest.mark.parametrize("name", ["a/b", "/", "a\x00b", ""])
def test_a_name_with_the_reserved_separator_or_empty_is_refused(
    store: embedkv.Store, recipe: str, name: str
) -> None:
    with pytest.raises(ValueError, match=r"separator|empty"):
        FACTORIES[recipe](store, name)
    assert store.count("_embedkv/") == 0


@pytest.mark.parametrize("recipe", sorted(WITH_TTL))
@pytest.mark.parametrize(("ttl", "exc"), [(0, ValueError), (-5, ValueError),
                                          (1.5, TypeError), (None, TypeError)])
def test_a_ttl_below_one_second_or_not_an_int_is_refused(
    store: embedkv.Store, recipe: str, ttl: object, exc: type[Exception]
) -> None:
    with pytest.raises(exc, match="ttl"):
        FACTORIES[recipe](store, "ok", ttl=ttl)
    assert store.count("_embedkv/") == 0


@pytest.mark.parametrize("factory", ["barrier", "double_barrier", "semaphore"])
@pytest.mark.parametrize("n", [0, -1])
def test_a_count_below_one_is_refused(store: embedkv.Store, factory: str, n: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        getattr(store, factory)("ok", n)


def test_bad_registration_arguments_and_config_prefix(store: embedkv.Store) -> None:
    with pytest.raises(ValueError, match="ttl"):
        store.services("web").register("h:1", ttl=0)
    with pytest.raises(TypeError):
        store.services("web").register("h:1", metadata=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.config(b"cfg/")  # type: ignore[arg-type]
    assert store.count("_embedkv/") == 0


def test_a_lock_waiter_watches_only_its_predecessors_key(
    store: embedkv.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd's Mutex: each waiter watches the key just before its own, so a release wakes one
    waiter, not the herd."""
    locks = [store.lock("herd", ttl=5) for _ in range(4)]
    assert locks[0].acquire()
    watched: list[tuple[str, bool]] = []
    real = store.watch

    def watch(key: Any, *args: Any, **kwargs: Any) -> embedkv.Watch:
        watched.append((key, bool(kwargs.get("prefix"))))
        return real(key, *args, **kwargs)

    monkeypatch.setattr(store, "watch", watch)
    def take(lock: embedkv.recipes.Lock) -> None:
        if lock.acquire(timeout=30):
            lock.release()

    threads = []
    for i, lock in enumerate(locks[1:], start=1):
        t = threading.Thread(target=take, args=(lock,))
        t.start()
        threads.append(t)
        wait_for(lambda: len(watched) == i, what=f"waiter {i} watching")  # noqa: B023
    keys = [kv.key for kv in store.range(prefix="_embedkv/lock/herd/", sort="create",
                                         keys_only=True)]
    assert [w for w, _ in watched] == keys[:-1]  # waiter i watches key i-1, one key each
    assert not any(prefix for _, prefix in watched)
    locks[0].release()
    for t in threads:
        t.join(30)
    assert store.count("_embedkv/lock/herd/") == 0


def test_the_async_faces_of_every_recipe(tmp_path: Path) -> None:
    """The recipes test_async.py leaves out: rwlock, semaphore, barrier, double barrier,
    party, services, election's observe and proclaim."""

    async def main() -> None:
        async with embedkv.open_async(tmp_path / "d", durable=False, tick_interval=0.01) as s:
            rw = s.rwlock("doc")
            r1, r2, w = rw.read(), rw.read(), rw.write()
            assert await r1.acquire(blocking=False) and await r2.acquire(blocking=False)
            assert not await w.acquire(blocking=False)
            await r1.release()
            await r2.release()
            async with w:
                assert w.is_held and w.token > 0

            sem = [s.semaphore("gpu", 2) for _ in range(3)]
            assert await sem[0].acquire(blocking=False) and await sem[1].acquire(blocking=False)
            assert not await sem[2].acquire(blocking=False)
            await sem[0].release()
            assert await sem[2].acquire(timeout=5)
            await sem[1].release()
            await sem[2].release()

            assert all(await asyncio.gather(*(s.barrier("b", 3).wait(timeout=10)
                                              for _ in range(3))))
            dbs = [s.double_barrier("d", 2) for _ in range(2)]
            assert all(await asyncio.gather(*(d.enter(timeout=10) for d in dbs)))
            assert all(await asyncio.gather(*(d.leave(timeout=10) for d in dbs)))

            p = s.party("workers")
            member = await p.join("w-1")
            assert await p.members() == {member: "w-1"}
            await p.leave()
            assert await p.members() == {}

            web = s.services("web")
            reg = await web.register("10.0.0.1:80", {"zone": "a"})
            assert [e.address for e in await web.endpoints()] == ["10.0.0.1:80"]
            assert (await web.pick()).address == "10.0.0.1:80"
            assert (await web.pick(random=True)).address == "10.0.0.1:80"
            reg.deregister()

            seen: list[Any] = []
            e = s.election("e")
            observation = await e.observe(seen.append)
            assert await e.campaign("one")
            await e.proclaim("two")
            await e.resign()
            while seen != [None, "one", "two", None]:
                await asyncio.sleep(0.01)
            observation.cancel()
            assert await s.counter("c").subtract(2) == -2

    asyncio.run(asyncio.wait_for(main(), 60))
