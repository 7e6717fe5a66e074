"""The asyncio faces: each runs the one sync definition of an operation in a worker thread
(``asyncio.to_thread``), so the logic exists once. A coroutine cancelled while it waits for
a lock, leadership or a slot undoes what the thread obtained once it returns."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from embedkv import Compare

from .election import Election, Observation
from .lock import Lock, RWLock
from .queue import Item, Queue
from .services import Endpoint, Registration, Services
from .sync import Barrier, Counter, DoubleBarrier, Party

_T = TypeVar("_T")


async def _run(fn: Callable[..., _T], *args: Any, undo: Callable[[_T], object] | None = None,
               **kwargs: Any) -> _T:
    """``fn(*args)`` in a thread; if the awaiting task is cancelled, `undo(result)` runs
    when the thread finishes, so nothing obtained is left held by nobody."""
    fut = asyncio.ensure_future(asyncio.to_thread(functools.partial(fn, *args, **kwargs)))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if undo is not None:
            def done(f: asyncio.Future[_T]) -> None:
                if not f.cancelled() and f.exception() is None:
                    undo(f.result())
            fut.add_done_callback(done)
        raise


class AsyncLock:
    """``astore.lock(name)``: ``await acquire()``, ``await release()``, ``async with``."""

    def __init__(self, lock: Lock) -> None:
        self.sync = lock

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        def undo(ok: bool) -> None:
            if ok:
                self.sync.release()
        return await _run(self.sync.acquire, blocking, timeout, undo=undo)

    async def release(self) -> None:
        await _run(self.sync.release)

    @property
    def is_held(self) -> bool:
        return self.sync.is_held

    @property
    def token(self) -> int:
        return self.sync.token

    def held(self) -> Compare:
        return self.sync.held()

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _run(self.sync.__exit__, None, None, None)


class AsyncRWLock:
    def __init__(self, rw: RWLock) -> None:
        self.sync = rw

    def read(self) -> AsyncLock:
        return AsyncLock(self.sync.read())

    def write(self) -> AsyncLock:
        return AsyncLock(self.sync.write())


class AsyncElection:
    """``astore.election(name)``: the Election's operations as coroutines."""

    def __init__(self, election: Election) -> None:
        self.sync = election

    async def campaign(self, value: Any, timeout: float | None = None) -> bool:
        def undo(ok: bool) -> None:
            if ok:
                self.sync.resign()
        return await _run(self.sync.campaign, value, timeout, undo=undo)

    @property
    def is_leader(self) -> bool:
        return self.sync.is_leader

    async def leader(self) -> Any:
        return await _run(self.sync.leader)

    async def proclaim(self, value: Any) -> None:
        await _run(self.sync.proclaim, value)

    async def resign(self) -> None:
        await _run(self.sync.resign)

    def held(self) -> Compare:
        return self.sync.held()

    async def observe(self, callback: Callable[[Any], object]) -> Observation:
        """Leadership changes to `callback` (called on the watch dispatcher thread)."""
        return await _run(self.sync.observe, callback)


class AsyncQueue:
    """``astore.queue(name)``: ``await put()``, ``await get()``, ``await task_done(item)``."""

    def __init__(self, q: Queue) -> None:
        self.sync = q

    async def put(self, value: Any, *, priority: int = 0) -> str:
        return await _run(self.sync.put, value, priority=priority)

    async def get(self, timeout: float | None = None) -> Item:
        return await _run(self.sync.get, timeout, undo=lambda item: item.release())

    async def task_done(self, item: Item) -> None:
        await _run(self.sync.task_done, item)

    async def qsize(self) -> int:
        return await _run(self.sync.qsize)

    async def close(self) -> None:
        await _run(self.sync.close)


class AsyncBarrier:
    def __init__(self, b: Barrier) -> None:
        self.sync = b

    async def wait(self, timeout: float | None = None) -> bool:
        return await _run(self.sync.wait, timeout)


class AsyncDoubleBarrier:
    def __init__(self, b: DoubleBarrier) -> None:
        self.sync = b

    async def enter(self, timeout: float | None = None) -> bool:
        return await _run(self.sync.enter, timeout)

    async def leave(self, timeout: float | None = None) -> bool:
        return await _run(self.sync.leave, timeout)


class AsyncCounter:
    def __init__(self, c: Counter) -> None:
        self.sync = c

    async def add(self, delta: int = 1) -> int:
        return await _run(self.sync.add, delta)

    async def subtract(self, delta: int = 1) -> int:
        return await _run(self.sync.subtract, delta)


class AsyncParty:
    def __init__(self, p: Party) -> None:
        self.sync = p

    async def join(self, value: Any = None, *, rejoin: bool = True) -> str:
        return await _run(self.sync.join, value, rejoin=rejoin)

    async def leave(self) -> None:
        await _run(self.sync.leave)

    async def members(self) -> dict[str, Any]:
        return await _run(self.sync.members)


class AsyncServices:
    def __init__(self, s: Services) -> None:
        self.sync = s

    async def register(self, address: str, metadata: dict[str, Any] | None = None, *,
                       ttl: int = 10) -> Registration:
        return await _run(self.sync.register, address, metadata, ttl=ttl)

    async def endpoints(self) -> list[Endpoint]:
        return await _run(self.sync.endpoints)

    async def pick(self, *, random: bool = False) -> Endpoint:
        return await _run(self.sync.pick, random=random)


def _document(face: type, sync: type) -> None:
    """Give each coroutine and property of an asyncio face its sync recipe's docstring: the
    operation is the same, awaited."""
    if face.__doc__ is None:
        face.__doc__ = f"The asyncio face of {sync.__name__}: its operations, awaited."
    for name, attr in vars(face).items():
        if name.startswith("_"):
            continue
        doc = getattr(getattr(sync, name, None), "__doc__", None)
        if isinstance(attr, property):
            if attr.__doc__ is None and attr.fget is not None:
                attr.fget.__doc__ = doc
                setattr(face, name, property(attr.fget, attr.fset, attr.fdel, doc))
        elif callable(attr) and attr.__doc__ is None:
            attr.__doc__ = doc


for _face, _sync in ((AsyncLock, Lock), (AsyncRWLock, RWLock), (AsyncElection, Election),
                     (AsyncQueue, Queue), (AsyncBarrier, Barrier),
                     (AsyncDoubleBarrier, DoubleBarrier), (AsyncCounter, Counter),
                     (AsyncParty, Party), (AsyncServices, Services)):
    _document(_face, _sync)
