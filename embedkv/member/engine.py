"""The engine thread: an asyncio loop that keeps Raft's time and runs the member's timers.

It ticks the Raft core every `tick_interval` (elections, heartbeats, CheckQuorum), lets the log
writer see deadlines and any Ready the tick produced, drives lease expiry and automatic
keep-alives, and is where a transport plugs in: messages from a durable Ready reach `send`,
which hands them to `transport` on this loop (with one member there is no transport and
nothing to send, and that needs no special case).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from embedkv.raft import Message

from .lease import LeaseKeeper
from .writer import Core, LogWriter, Signal

STOP_GRACE = 5.0
"""Seconds the stopped loop gives its remaining tasks to unwind once cancelled."""

log = logging.getLogger("embedkv.member")

Transport = Callable[[list[Message]], None]


class Engine:
    """Owns the asyncio loop thread; everything it runs is short and never blocks on I/O."""

    def __init__(
        self, core: Core, writer: LogWriter, leases: LeaseKeeper, tick_interval: float
    ) -> None:
        if not tick_interval > 0:
            raise ValueError(f"tick_interval must be positive, not {tick_interval!r}")
        self._core = core
        self._writer = writer
        self._leases = leases
        self._interval = tick_interval
        self.transport: Transport | None = None
        """Called on the engine loop with each durable batch's messages (clustering)."""
        self.on_tick: Callable[[], None] | None = None
        """Called every tick, on this loop, with the core lock held (the leader's chores)."""
        self._loop = asyncio.new_event_loop()
        self._next = 0.0
        self._thread = threading.Thread(target=self._run, name="embedkv-engine", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        self._next = loop.time()
        loop.call_soon(self._tick)
        try:
            loop.run_forever()
        finally:
            try:
                self._end_tasks()
            finally:
                loop.close()

    def _end_tasks(self) -> None:
        """Cancel what still runs on the stopped loop and let it unwind (bounded), as
        asyncio.run does: a task left suspended is torn down later by the garbage collector,
        outside any loop, where its cleanup fails."""
        loop = self._loop
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=STOP_GRACE))
        loop.run_until_complete(loop.shutdown_asyncgens())

    def _tick(self) -> None:
        """One tick of Raft time; re-arms itself on a fixed schedule (no drift)."""
        try:
            core = self._core
            with core.lock:
                core.node.tick()
                if self.on_tick is not None:
                    self.on_tick()
            self._writer.submit(Signal.TICK)
            self._leases.tick()
            self._writer.stats.ticks += 1
        except Exception:
            log.exception("engine tick failed")
        loop = self._loop
        self._next += self._interval
        now = loop.time()
        if self._next < now:  # fell behind (a long pause): do not replay missed ticks
            self._next = now + self._interval
        loop.call_at(self._next, self._tick)

    def send(self, messages: list[Message]) -> None:
        """Hand durable messages to the transport on the engine loop (from the log writer)."""
        transport = self.transport
        if transport is not None:
            with contextlib.suppress(RuntimeError):  # the loop stopped: the member is closing
                self._loop.call_soon_threadsafe(transport, messages)

    def stop(self) -> None:
        """Stop the loop and join the thread; idempotent."""
        if self._thread.ident is None:  # never started
            if not self._loop.is_closed():
                self._loop.close()
            return
        if not self._thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()
