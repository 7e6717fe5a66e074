"""Watches: the callback Watch, the blocking WatchIterator and the asyncio AsyncWatch.

Each is a handle on one watch of the member's hub (``member.watch``), started by
``Store._start_watch`` (which checks the arguments and registers the watch with its store so
that closing the store cancels it); they differ only in how events reach their consumer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .storage.requests import Event

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("embedkv")


def check_timeout(timeout: float | None) -> None:
    """``watch_iter``'s timeout: None (no limit) or a number of seconds >= 0."""
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
        if not timeout >= 0:  # NaN too
            raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")


class _WatchBase:
    """What every kind of watch shares: the member's handle, cancel, context manager."""

    _handle: Any

    def __init__(self, store: Store) -> None:
        self._store = store
        self._handle = None
        self._cancelled = False

    def _deliver(self, event: Event) -> None:
        raise NotImplementedError

    @property
    def cancelled(self) -> bool:
        """True once cancelled, by ``cancel()``, by closing the store, or by the member."""
        return self._cancelled or (self._handle is not None and bool(self._handle.cancelled))

    @property
    def error(self) -> BaseException | None:
        """Why the watch ended on its own, else None: Compacted if a compaction overtook a long
        history replay (the watch then stops rather than skip events, as in etcd)."""
        if self._handle is None:
            return None
        error: BaseException | None = self._handle.error
        return error

    def _ended_by_member(self) -> bool:
        """The member ended the watch (error, or member closed) without our cancel()."""
        return not self._cancelled and self._handle is not None and bool(self._handle.cancelled)

    def cancel(self) -> None:
        """Stop the watch; idempotent. No callback starts after this returns, and one running
        on the dispatcher (unless this is it) has finished."""
        self._cancel(wait=True)

    def _cancel(self, *, wait: bool) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        if self._store._forked:
            return  # the member's threads and locks are the parent's: touch nothing
        if self._handle is not None:
            self._handle.cancel(wait=wait)
        self._store._forget(self)
        self._on_cancel()

    def _on_cancel(self) -> None:
        """Subclasses wake up their consumer here."""

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


_W = TypeVar("_W", bound=_WatchBase)


class Watch(_WatchBase):
    """A callback watch from ``store.watch``; ``cancel()`` it or use it as a context manager."""

    def __init__(self, store: Store, callback: Callable[[Event], object]) -> None:
        super().__init__(store)
        self._callback = callback

    def _deliver(self, event: Event) -> None:
        # A failing callback must not take the dispatcher (and every other watch) down with it.
        try:
            self._callback(event)
        except Exception:
            log.exception("embedkv watch callback %r failed on %r", self._callback, event)


_END = object()

_POLL = 0.25
"""Seconds between checks for a watch that the member ended on its own (see Watch.error)."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """Queued to an async iterator: the member ended the watch with `error`."""

    error: BaseException


class WatchIterator(_WatchBase, Iterator[Event]):
    """The blocking iterator from ``store.watch_iter``, fed by a queue from the dispatcher."""

    def __init__(self, store: Store, timeout: float | None) -> None:
        super().__init__(store)
        self._timeout = timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def _deliver(self, event: Event) -> None:
        self._queue.put(event)

    def _on_cancel(self) -> None:
        self._queue.put(_END)

    def __iter__(self) -> WatchIterator:
        return self

    def __next__(self) -> Event:
        if self._store._forked:
            self._store._check()  # raises Closed: no dispatcher feeds this queue in a child
        if self._cancelled and self._queue.empty():
            raise StopIteration
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=max(wait, 0.0))
                break
            except queue.Empty:
                # Events wake us at once; the slices only notice a watch that the member ended
                # on its own (it has no event to say so): every event before that is delivered.
                if self._ended_by_member() and self._queue.empty():
                    error = self.error
                    self.cancel()
                    if error is not None:
                        raise error from None
                    raise StopIteration from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"no watch event within {self._timeout} s") from None
        if item is _END:
            self._queue.put(_END)  # later next() calls end too
            raise StopIteration
        event: Event = item
        return event

    def close(self) -> None:
        """The same as cancel(), for code that closes iterators."""
        self.cancel()


class AsyncWatch(_WatchBase, AsyncIterator[Event]):
    """An async iterator of events; ``cancel()`` (or leaving ``async with``) ends it."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(store)
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._check_handle: asyncio.TimerHandle | None = None

    def _start_polling(self) -> None:
        """Called once the member accepted the watch (not if it raised Compacted)."""
        if not self._cancelled:
            self._check_handle = self._loop.call_later(_POLL, self._poll_member)

    def _poll_member(self) -> None:
        """Every _POLL seconds on the loop: end the iteration if the member ended the watch on
        its own (it has no event to say so); events queued before that are delivered first."""
        if self._cancelled:
            return
        if self._ended_by_member():
            # Every event the dispatcher posted before it ended the watch is already in the
            # loop's ready queue; call_soon goes behind them, so none is overtaken.
            self._loop.call_soon(self._finish_ended)
            return
        self._check_handle = self._loop.call_later(_POLL, self._poll_member)

    def _finish_ended(self) -> None:
        error = self.error
        if error is not None:
            self._queue.put_nowait(_Failed(error))  # before cancel() queues the end
        self.cancel()

    def _on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn` on the watch's loop: now if this is that loop's thread, else soon."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            # The loop is closed: nobody can consume any more events.
            self._cancelled = True

    def _deliver(self, event: Event) -> None:
        self._on_loop(self._queue.put_nowait, event)

    def _on_cancel(self) -> None:
        self._on_loop(self._stop)

    def _stop(self) -> None:
        if self._check_handle is not None:
            self._check_handle.cancel()
        self._queue.put_nowait(_END)

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Event:
        if self._store._forked:
            self._store._check()  # raises Closed: no dispatcher feeds this queue in a child
        item = await self._queue.get()
        if isinstance(item, _Failed):
            raise item.error
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        event: Event = item
        return event

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

