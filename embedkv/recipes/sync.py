"""Barrier, double barrier, semaphore, counter and party — the rest of etcd's recipes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from embedkv import (
    Compacted,
    Delete,
    Event,
    EventType,
    Get,
    ModRevision,
    Put,
    Store,
    Version,
    Watch,
)

from ._base import (
    Session,
    SessionLost,
    check_count,
    check_timeout,
    check_ttl,
    deadline_of,
    key_text,
    prefix,
    ranged,
    wait_set,
)
from .lock import Lock, enqueue


class DoubleBarrier:
    """``store.double_barrier(name, n)``: ``enter()`` blocks until `n` participants have
    entered; ``leave()`` blocks until all of them have left — etcd's DoubleBarrier. Each
    participant's presence is on its own lease, so one that dies no longer counts."""

    def __init__(self, store: Store, name: str, n: int, *, ttl: int = 10,
                 _kind: str = "double_barrier") -> None:
        self._store = store
        self.name = name
        self.n = check_count("n", n)
        self.ttl = check_ttl(ttl)
        self._prefix = prefix(_kind, name)
        self._waiting = self._prefix + "w/"
        self._ready = self._prefix + "ready"
        self._session: Session | None = None

    def enter(self, timeout: float | None = None) -> bool:
        """Arrive and wait until `n` have arrived: True, or False after `timeout`."""
        deadline = deadline_of(check_timeout(timeout))
        if self._session is not None:
            raise RuntimeError("already entered")
        session = Session(self._store, self.ttl)
        mine = f"{self._waiting}{session.id:016x}"
        try:
            r = self._store.txn(success=[Put(mine, "", lease=session.id),
                                         Get(self._waiting, prefix=True, count_only=True),
                                         Get(self._ready)])
            if ranged(r, 2).kvs or ranged(r, 1).count >= self.n:
                self._store.put(self._ready, True)
                ok = True
            else:
                ok = self._wait_ready(r.revision, deadline)
        except BaseException:
            session.close()
            raise
        if not ok:
            session.close()
            return False
        self._session = session
        return True

    def _wait_ready(self, seen: int, deadline: float | None) -> bool:
        """Wait for the ready key to be put after revision `seen`: True, False at the
        deadline. A watch the store ends (compaction) is replaced after a fresh look."""
        arrived = threading.Event()

        def on_ready(e: Event) -> None:
            if e.type is EventType.PUT:
                arrived.set()

        while True:
            with contextlib.suppress(Compacted), self._store.watch(
                self._ready, on_ready, start_revision=seen + 1
            ) as watch:
                if not wait_set(self._store, arrived, deadline, watch=watch):
                    return False
            if arrived.is_set():
                return True
            r = self._store.txn(success=[Get(self._ready)])  # the watch ended: look again
            if ranged(r, 0).kvs:
                return True
            seen = r.revision

    def leave(self, timeout: float | None = None) -> bool:
        """Depart and wait until every participant has departed: True, or False on timeout."""
        deadline = deadline_of(check_timeout(timeout))
        session, self._session = self._session, None
        if session is None:
            raise RuntimeError("not entered")
        session.close()  # deletes our key
        empty = threading.Event()
        while True:
            r = self._store.txn(success=[Get(self._waiting, prefix=True, count_only=True)])
            if ranged(r, 0).count == 0:
                self._store.txn(compare=[Version(self._ready) > 0], success=[Delete(self._ready)])
                return True
            empty.clear()
            with contextlib.suppress(Compacted), self._store.watch(
                self._waiting, lambda e: empty.set(), prefix=True, start_revision=r.revision + 1
            ) as watch:
                if not wait_set(self._store, empty, deadline, watch=watch):
                    return False


class Barrier:
    """``store.barrier(name, n)``: ``wait()`` blocks until `n` participants have called it,
    then releases them all together. Once released it stays open (late callers pass at
    once) until ``reset()``."""

    def __init__(self, store: Store, name: str, n: int, *, ttl: int = 10) -> None:
        self._db = DoubleBarrier(store, name, n, ttl=ttl, _kind="barrier")
        self._store = store

    def wait(self, timeout: float | None = None) -> bool:
        db = self._db
        db._session = None
        ok = db.enter(timeout)
        if db._session is not None:
            db._session.close()
            db._session = None
        return ok

    def reset(self) -> None:
        """Close the barrier again for a new round of `n`."""
        self._store.delete(self._db._prefix, prefix=True)


class Semaphore(Lock):
    """``store.semaphore(name, n)``: at most `n` holders at once, served in arrival order,
    each on its own lease (a dead holder's slot frees itself after the TTL)."""

    def __init__(self, store: Store, name: str, n: int, *, ttl: int = 10) -> None:
        self.n = self._slots = check_count("n", n)
        super().__init__(store, name, ttl=ttl, _kind="semaphore")

    def holders(self) -> int:
        """How many hold a slot now."""
        return min(self.n, self._store.count(self._prefix))


class Counter:
    """``store.counter(name)``: an integer changed atomically by compare-and-set retries."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self.name = name
        self._key = prefix("counter", name) + "value"

    def add(self, delta: int = 1) -> int:
        """Add `delta` (negative to subtract) and return the new value."""
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        while True:
            kv = self._store.get_kv(self._key)
            if kv is None:
                guard = Version(self._key) == 0
                new = delta
            else:
                guard = ModRevision(self._key) == kv.mod_revision
                new = int(kv.value) + delta
            if self._store.txn(compare=[guard], success=[Put(self._key, new)]).succeeded:
                return new

    def subtract(self, delta: int = 1) -> int:
        return self.add(-delta)

    @property
    def value(self) -> int:
        return int(self._store.get(self._key, 0))


class Party:
    """``store.party(name)``: who is present. ``join(value)`` puts our member key on our own
    lease (re-joining with a new lease if it is lost, unless ``rejoin=False``); ``members()``
    maps member id to value; ``watch(callback)`` reports joins and leaves."""

    _kind = "party"

    def __init__(self, store: Store, name: str, *, ttl: int = 10) -> None:
        self._store = store
        self.name = name
        self.ttl = check_ttl(ttl)
        self._prefix = prefix(self._kind, name)
        self._session: Session | None = None
        self._value: Any = None
        self._rejoin = True
        self._mu = threading.Lock()
        self.id: str | None = None

    def join(self, value: Any = None, *, rejoin: bool = True) -> str:
        """Be present with `value`; returns our member id."""
        with self._mu:
            if self._session is not None:
                raise RuntimeError("already joined")
            self._value, self._rejoin = value, rejoin
            return self._join()

    def _join(self) -> str:
        session, key = self._enter()
        self._session = session
        self.id = key[len(self._prefix):]
        self._rejoin_on_loss(session)
        return self.id

    def _rejoin_on_loss(self, session: Session) -> None:
        session.on_lost(lambda: self._on_lost(session))

    def _enter(self) -> tuple[Session, str]:
        """A new lease with our member key on it (not yet ours: see _join, _on_lost)."""
        session = Session(self._store, self.ttl)
        try:
            key, _, _ = enqueue(self._store, self._prefix, session, self._value)
        except BaseException:
            session.close()
            raise
        return session, key

    def _on_lost(self, lost: Session) -> None:
        """Rejoin with a new lease, retrying while the store is unavailable, without holding
        the party's lock between attempts (``leave()`` must not wait for a quorum), and
        giving up once the party was left or rejoined otherwise."""
        while not self._store.closed:
            with self._mu:
                if self._session is not lost or not self._rejoin:
                    return
            try:
                session, key = self._enter()
            except Exception:  # the store may be unavailable for a while
                time.sleep(min(1.0, self.ttl / 3))
                continue
            with self._mu:
                if self._session is not lost:  # left (or rejoined) meanwhile
                    session.close()
                    return
                self._session = session
                self.id = key[len(self._prefix):]
            self._rejoin_on_loss(session)
            return

    @property
    def present(self) -> bool:
        s = self._session
        return s is not None and s.alive

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("not joined")
        return self._session

    def leave(self) -> None:
        with self._mu:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def members(self) -> dict[str, Any]:
        return {key_text(kv)[len(self._prefix):]: kv.value
                for kv in self._store.range(prefix=self._prefix, sort="create")}

    def watch(self, callback: Callable[[str, str, Any], object]) -> Watch:
        """``callback("join"|"leave", member_id, value)`` for each change from now on (a
        change of value is reported as a join); ``.cancel()`` on the result ends it."""
        if not callable(callback):
            raise TypeError("callback must be callable")

        def on_event(e: Event) -> None:
            member = key_text(e)[len(self._prefix):]
            if e.type is EventType.DELETE:
                callback("leave", member, None)
            else:
                callback("join", member, e.value)

        return self._store.watch(self._prefix, on_event, prefix=True)


__all__ = ["Barrier", "Counter", "DoubleBarrier", "Party", "Semaphore", "SessionLost"]
