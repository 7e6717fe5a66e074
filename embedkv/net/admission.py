"""Admission of inbound peer connections: how many may wait unauthenticated at once, per source
address and in all, and a log that a flood of strangers cannot flood.

A connection is *pending* from its accept until its hello is accepted with the cluster token
(after the TLS handshake, when there is one). Pending connections cost a socket, buffers and a
task each, and nothing stops a stranger from opening them, so they are capped; established
links of members are not counted. When the global cap is full, a newcomer from a source holding
fewer pending connections than the busiest source takes the place of that source's oldest one,
so one host's flood cannot lock out the members dialing from other hosts.

Sans-I/O like the codec: the transport calls `admit` and `Pending.release`; `evict` callbacks
close what they are handed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

Evict = Callable[[str], None]
"""Closes an admitted connection that has to make room; gets the reason, for the log."""


class Pending:
    """One admitted connection that has not authenticated yet; `release` it once it has (or
    once it ends). Releasing twice is harmless."""

    __slots__ = ("_evict", "_gate", "released", "source")

    def __init__(self, gate: Admission, source: str, evict: Evict) -> None:
        self._gate = gate
        self.source = source
        self._evict = evict
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._gate._forget(self)


class Admission:
    """Counts pending connections: at most `per_source` from one source address and `total`
    in all."""

    def __init__(self, per_source: int, total: int) -> None:
        if per_source < 1 or total < 1:
            raise ValueError(
                f"connection limits must be positive, not {per_source!r} and {total!r}"
            )
        self.per_source = per_source
        self.total = total
        self._by_source: dict[str, dict[Pending, None]] = {}  # insertion order: oldest first
        self._count = 0

    @property
    def pending(self) -> int:
        return self._count

    def pending_from(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def admit(self, source: str, evict: Evict) -> Pending | str:
        """A ticket for a new connection from `source`, or why it is refused (then the caller
        closes it at once). May evict the oldest pending connection of the busiest source."""
        mine = self.pending_from(source)
        if mine >= self.per_source:
            return (f"{mine} connections from {source} are already waiting for their hello "
                    f"(max_pending_per_source)")
        if self._count >= self.total:
            busiest = max(self._by_source.values(), key=len)
            if len(busiest) <= mine:
                return (f"{self._count} connections are already waiting for their hello "
                        f"(max_pending)")
            victim = next(iter(busiest))
            reason = (f"evicted for a connection from {source}: {victim.source} holds "
                      f"{len(busiest)} of the {self.total} connections waiting for their hello")
            victim.release()
            victim._evict(reason)
        ticket = Pending(self, source, evict)
        self._by_source.setdefault(source, {})[ticket] = None
        self._count += 1
        return ticket

    def _forget(self, ticket: Pending) -> None:
        mine = self._by_source.get(ticket.source)
        if mine is not None and ticket in mine:
            del mine[ticket]
            self._count -= 1
            if not mine:
                del self._by_source[ticket.source]


class ThrottledLog:
    """At most `burst` lines per `interval` seconds on `logger`; lines beyond are counted, and
    the next line let through says how many were suppressed. For what strangers can cause."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 20,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._window = -interval  # start of the current window
        self._used = 0
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        if now - self._window >= self.interval:
            self._window = now
            self._used = 0
        if self._used >= self.burst:
            self.suppressed += 1
            return
        self._used += 1
        if self.suppressed:
            msg += " (%d similar lines suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(level, msg, *args)
