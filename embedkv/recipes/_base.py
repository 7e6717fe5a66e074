"""What every recipe shares: the key layout, argument checks and the lease session."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from embedkv import Closed, Error, LeaseNotFound, RangeResult, Store, TxnResult

ROOT = "_embedkv/"
"""Every recipe keeps its keys under this prefix: ``_embedkv/<kind>/<name>/...``."""
SEP = "/"
"""The recipes' reserved separator: a recipe name must not contain it."""

_log = logging.getLogger("embedkv")


def ranged(result: TxnResult, i: int) -> RangeResult:
    """The `i`-th response of a transaction, which the recipe knows is a Get's."""
    got = result.responses[i]
    assert isinstance(got, RangeResult)
    return got


def check_name(kind: str, name: object) -> str:
    """A recipe name is a non-empty str without the reserved separator (it would let one
    recipe's prefix hold another's keys)."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{kind} name must not be empty")
    if SEP in name or "\x00" in name:
        raise ValueError(f"{kind} name {name!r} must not contain {SEP!r} (the recipes' separator)")
    if len(name.encode()) > 300:
        raise ValueError(f"{kind} name is longer than 300 bytes")
    return name


def prefix(kind: str, name: str) -> str:
    return f"{ROOT}{kind}{SEP}{check_name(kind, name)}{SEP}"


def check_ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"ttl must be an int number of seconds, not {type(ttl).__name__}")
    if ttl < 1:
        raise ValueError(f"ttl must be at least 1 second, not {ttl}")
    return ttl


def check_count(what: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{what} must be at least 1, not {n}")
    return n


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return float(timeout)


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (None: no limit), never negative."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def wait_set(store: Store, event: threading.Event, deadline: float | None) -> bool:
    """Wait for `event` until `deadline`; Closed if the store closes meanwhile (its watches
    then end without an event, and a waiter must not hang)."""
    while True:
        left = remaining(deadline)
        if event.wait(0.5 if left is None else min(0.5, left)):
            return True
        if store.closed:
            raise Closed("the store is closed")
        if remaining(deadline) == 0.0:
            return False


class SessionLost(Error):
    """The recipe's lease ended (expired, revoked, or its keep-alive failed): what it held
    (a lock, leadership, a claim) is gone."""


class Session:
    """A lease that the recipe keeps alive itself, so that it knows when the lease may have
    ended — etcd's ``concurrency.Session``.

    Every refresh is timed from the moment it was *sent*: the store restarts the countdown
    when it applies the refresh, which is later, so ``sent + ttl`` is a lower bound of the
    lease's expiry. ``alive`` is computed from the clock at each read against that bound, so
    it turns false no later than the instant the store could expire the lease (on one
    machine; across machines it also assumes the clocks run at the same rate). The
    ``on_lost`` callbacks run on the session's thread at that instant or as soon as the
    thread is scheduled after it."""

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = check_ttl(ttl)
        sent = time.monotonic()
        self.lease = store.lease(ttl, keepalive=False)
        self.id = self.lease.id
        self._valid_until = sent + ttl
        self._lost = False
        self._stopped = threading.Event()
        self._stalled = False
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"embedkv-session-{self.id:x}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<embedkv.recipes.Session lease={self.id:#x} ttl={self.ttl} alive={self.alive}>"

    @property
    def alive(self) -> bool:
        """False from the first instant the store could have expired the lease."""
        return not self._lost and time.monotonic() < self._valid_until

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` once when the lease is lost (not when it is closed on purpose)."""
        with self._lock:
            if not self._lost:
                self._callbacks.append(callback)
                return
        callback()

    def _run(self) -> None:
        period = self.ttl / 3
        while not self._stopped.wait(min(period, max(0.0, self._valid_until - time.monotonic()))):
            if time.monotonic() >= self._valid_until:
                self._mark_lost()
                return
            if self._stalled:
                continue
            sent = time.monotonic()
            try:
                self.lease.refresh()
            except (LeaseNotFound, Closed):
                self._mark_lost()
                return
            except Exception:  # Unavailable and the like: try again until the bound passes.
                _log.warning("lease %x: keep-alive failed; retrying", self.id, exc_info=True)
                continue
            self._valid_until = sent + self.ttl

    def _mark_lost(self) -> None:
        with self._lock:
            if self._lost or self._stopped.is_set():
                return
            self._lost = True
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                _log.exception("session-lost callback raised")

    def lost(self) -> None:
        """Declare the lease lost now (a watch saw its key deleted under us)."""
        self._mark_lost()

    def orphan(self) -> None:
        """Stop refreshing without revoking, and without callbacks: the lease (and every key
        on it) ends after its TTL, as when the process holding it is killed."""
        self._stalled = True
        self._stopped.set()

    def stall(self) -> None:
        """Stop refreshing but keep the process's view: as when keep-alives stop getting
        through. ``alive`` turns false and ``on_lost`` callbacks run when the lease may have
        expired, before the store can expire it."""
        self._stalled = True

    def close(self) -> None:
        """Revoke the lease now: every key on it is deleted. Idempotent."""
        self._stopped.set()
        with self._lock:
            self._lost = True
            self._callbacks = []
        with contextlib.suppress(LeaseNotFound, Closed):
            self.lease.revoke()
