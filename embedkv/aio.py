"""The asyncio face: ``open_async`` and AsyncStore, the Store's operations as coroutines.

An AsyncStore wraps a Store and shares its definitions: each write is the same
``embedkv.operations`` operation (checks, request, result), proposed without running the batch
on the event loop and awaited through ``asyncio.wrap_future``; reads await the read barrier and
then read through the Store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import os
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import operations as ops
from .leases import AsyncLease, Lease, granted, lease_id, propose_grant
from .member import MemberInfo
from .operations import Deleted, TxnOp, range_request
from .storage.requests import Compare, Get, Key, KeyValue, PutResult, TxnResult
from .storage.verify import VerifyReport
from .watches import AsyncWatch

if TYPE_CHECKING:  # the recipes import embedkv; the methods below import them lazily
    from .recipes import aio as _aio
    from .recipes.config import ConfigView
    from .store import Status, Store

__all__ = ["AsyncStore", "open_async"]

_R = TypeVar("_R")


class _AsyncOpen:
    """What ``open_async`` returns: ``await`` it for an AsyncStore, or ``async with`` it."""

    def __init__(self, opener: Callable[[], Store]) -> None:
        self._opener = opener
        self._store: AsyncStore | None = None

    async def _open(self) -> AsyncStore:
        # Member.open blocks while it starts threads and elects itself: keep the loop free.
        return AsyncStore(await asyncio.to_thread(self._opener))

    def __await__(self) -> Generator[Any, None, AsyncStore]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.close()


def open_async(path: str | os.PathLike[str], **options: Any) -> _AsyncOpen:
    """Open a store for asyncio: ``store = await embedkv.open_async(path)`` or
    ``async with embedkv.open_async(path) as store:``. Options are those of ``embedkv.open``,
    checked at this call (not when awaited)."""
    # Imported here: embedkv.store imports this module (to re-export AsyncStore).
    from .store import _check_options
    from .store import open as open_store

    bound = inspect.signature(open_store).bind(path, **options)  # TypeError for an unknown option
    bound.apply_defaults()
    _check_options(**{k: v for k, v in bound.arguments.items() if k != "path"})
    return _AsyncOpen(functools.partial(open_store, os.fspath(path), **options))


class AsyncStore:
    """The Store's operations as coroutines, for asyncio code.

    Writes await the member's futures (``asyncio.wrap_future``: no thread per call); reads
    await the read barrier, then read LMDB inline (a local read that does not block on I/O
    beyond the page cache). The mapping protocol is sync-only: use ``.store`` from threads.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def close(self) -> None:
        """Close the store (idempotent); the threads are joined off the event loop."""
        if self.store._closed:
            return
        await asyncio.to_thread(self.store.close)

    @property
    def closed(self) -> bool:
        return self.store.closed

    async def __aenter__(self) -> AsyncStore:
        self.store._check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "<embedkv.AsyncStore " + repr(self.store)[len("<embedkv.Store ") :]

    async def _linearize(self, serializable: bool) -> None:
        s = self.store
        s._check()
        if s._needs_barrier(serializable):
            await asyncio.wrap_future(s._m.read_barrier())

    # --- reads --------------------------------------------------------------------------------

    async def get(
        self,
        key: Key,
        default: Any = None,
        *,
        revision: int | None = None,
        serializable: bool = False,
    ) -> Any:
        kv = await self.get_kv(key, revision=revision, serializable=serializable)
        return default if kv is None else kv.value

    async def get_kv(
        self, key: Key, *, revision: int | None = None, serializable: bool = False
    ) -> KeyValue | None:
        await self._linearize(serializable)
        return self.store.get_kv(key, revision=revision, serializable=True)

    async def range(
        self,
        prefix: Key | None = None,
        *,
        start: Key | None = None,
        end: Key | None = None,
        limit: int | None = None,
        revision: int | None = None,
        sort: str | None = None,
        keys_only: bool = False,
        serializable: bool = False,
    ) -> list[KeyValue]:
        get = range_request(prefix, start, end, limit, revision, sort, keys_only)
        await self._linearize(serializable)
        return list(self.store._range(get, True).kvs)

    async def count(self, prefix: Key = "", *, serializable: bool = False) -> int:
        await self._linearize(serializable)
        return self.store.count(prefix, serializable=True)

    async def contains(self, key: Key, *, serializable: bool = False) -> bool:
        """``key in store``, as a coroutine."""
        await self._linearize(serializable)
        return self.store._range(Get(key, count_only=True), True).count > 0

    @property
    def revision(self) -> int:
        return self.store.revision

    async def backup(self, dest: str | os.PathLike[str]) -> int:
        """``Store.backup``, in a worker thread (it writes the whole store to a file)."""
        return await asyncio.to_thread(self.store.backup, dest)

    def status(self) -> Status:
        return self.store.status()

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def leader(self) -> str | None:
        return self.store.leader

    async def members(self) -> list[MemberInfo]:
        """``Store.members``, in a worker thread (it may ask the leader)."""
        return await asyncio.to_thread(self.store.members)

    async def add_member(self, name: str, address: str, *, learner: bool = False) -> MemberInfo:
        return await asyncio.to_thread(self.store.add_member, name, address, learner=learner)

    async def remove_member(self, name: str) -> None:
        await asyncio.to_thread(self.store.remove_member, name)

    async def promote_member(self, name: str) -> MemberInfo:
        return await asyncio.to_thread(self.store.promote_member, name)

    async def transfer_leadership(self, to: str | None = None) -> str:
        return await asyncio.to_thread(self.store.transfer_leadership, to)

    async def verify(self) -> VerifyReport:
        """Store.verify(), in a worker thread: it reads the whole data dir."""
        return await asyncio.to_thread(self.store.verify)

    # --- writes -------------------------------------------------------------------------------

    def _propose(self, request: Any) -> concurrent.futures.Future[Any]:
        """Never runs the batch here: the event loop must not block on an fsync."""
        return self.store._propose(request, run=False)

    async def _run(self, op: ops.Op[_R]) -> _R:
        """Propose `op`'s request, await its outcome, shape the result (Store._run, awaited)."""
        return op.shape(await asyncio.wrap_future(self._propose(op.request)))

    async def put(
        self,
        key: Key,
        value: Any,
        *,
        lease: Lease | AsyncLease | int | None = None,
        prev_kv: bool = False,
    ) -> PutResult:
        return await self._run(ops.put(key, value, lease_id(lease), prev_kv))

    async def delete(self, key: Key, *, prefix: bool = False, prev_kv: bool = False) -> Deleted:
        return await self._run(ops.delete(key, prefix, prev_kv))

    async def compact(self, revision: int) -> None:
        await self._run(ops.compact(revision))

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnResult:
        return await self._run(ops.txn(compare, success, failure))

    async def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update`` as Store.update does it: one transaction when within the limits."""
        for op in ops.update(args, kwargs):
            await self._run(op)

    async def compare_and_set(self, key: Key, expected: Any, new: Any) -> bool:
        return await self._run(ops.compare_and_set(key, expected, new))

    async def create(
        self, key: Key, value: Any, *, lease: Lease | AsyncLease | int | None = None
    ) -> bool:
        return await self._run(ops.create(key, value, lease_id(lease)))

    # --- watches and leases -------------------------------------------------------------------

    def watch(
        self,
        key: Key,
        *,
        prefix: bool = False,
        end: Key | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
    ) -> AsyncWatch:
        """``async for event in astore.watch(key):`` — call from a coroutine (it binds to the
        running loop). Compacted at once if `start_revision` was compacted."""
        w = AsyncWatch(self.store, asyncio.get_running_loop())
        self.store._start_watch(w, key, prefix, end, start_revision, prev_kv)
        w._start_polling()
        return w

    async def lease(self, ttl: int, *, keepalive: bool = True) -> AsyncLease:
        grant = await asyncio.wrap_future(propose_grant(self.store, ttl, keepalive))
        return AsyncLease(granted(self.store, grant, keepalive))

    # --- coordination recipes: the sync recipes' logic, run in worker threads ---------------

    def lock(self, name: str, *, ttl: int = 10) -> _aio.AsyncLock:
        from .recipes import aio

        return aio.AsyncLock(self.store.lock(name, ttl=ttl))

    def rwlock(self, name: str, *, ttl: int = 10) -> _aio.AsyncRWLock:
        from .recipes import aio

        return aio.AsyncRWLock(self.store.rwlock(name, ttl=ttl))

    def election(self, name: str, *, ttl: int = 10) -> _aio.AsyncElection:
        from .recipes import aio

        return aio.AsyncElection(self.store.election(name, ttl=ttl))

    def queue(self, name: str, *, ttl: int = 10) -> _aio.AsyncQueue:
        from .recipes import aio

        return aio.AsyncQueue(self.store.queue(name, ttl=ttl))

    def barrier(self, name: str, n: int, *, ttl: int = 10) -> _aio.AsyncBarrier:
        from .recipes import aio

        return aio.AsyncBarrier(self.store.barrier(name, n, ttl=ttl))

    def double_barrier(self, name: str, n: int, *, ttl: int = 10) -> _aio.AsyncDoubleBarrier:
        from .recipes import aio

        return aio.AsyncDoubleBarrier(self.store.double_barrier(name, n, ttl=ttl))

    def semaphore(self, name: str, n: int, *, ttl: int = 10) -> _aio.AsyncLock:
        from .recipes import aio

        return aio.AsyncLock(self.store.semaphore(name, n, ttl=ttl))

    def counter(self, name: str) -> _aio.AsyncCounter:
        from .recipes import aio

        return aio.AsyncCounter(self.store.counter(name))

    def party(self, name: str, *, ttl: int = 10) -> _aio.AsyncParty:
        from .recipes import aio

        return aio.AsyncParty(self.store.party(name, ttl=ttl))

    def services(self, name: str) -> _aio.AsyncServices:
        from .recipes import aio

        return aio.AsyncServices(self.store.services(name))

    async def config(self, prefix: str) -> ConfigView:
        """The live view (its initial read runs in a worker thread); reading it is sync."""
        return await asyncio.to_thread(self.store.config, prefix)

