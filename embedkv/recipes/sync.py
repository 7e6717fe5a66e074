"""Barrier, double barrier, semaphore, counter and party — the rest of etcd's recipes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from embedkv import (
    CreateRevision,
    Delete,
    Event,
    EventType,
    Get,
    ModRevision,
    Put,
    Store,
    TxnResult,
    Version,
    Watch,
)

from ._base import (
    Session,
    SessionLost,
    _log,
    await_change,
    check_count,
    check_timeout,
    check_ttl,
    deadline_of,
    key_text,
    prefix,
    ranged,
)
from .lock import Holding, Lock, enqueue


class DoubleBarrier:
    """``store.double_barrier(name, n)``: ``enter()`` blocks until `n` participants have
    entered; ``leave()`` blocks until all of them have left — etcd's DoubleBarrier. Each
    participant's presence is on its own lease, so one that dies no longer counts.

    The name can be used round after round: every round has its own keys. The round key
    ``<prefix>round`` is created by a round's first arrival, and its create revision is the
    round's id; participants arrive under ``w/<id>/`` and the round opens with
    ``ready/<id>``. Opening deletes the round key in the same transaction, so whoever
    arrives later starts the next round: the last round's open state cannot release it, and
    the last round's leavers clear only their own round."""

    _stays_open = False
    """A Barrier's round stays open (late arrivals pass) until reset()."""

    def __init__(self, store: Store, name: str, n: int, *, ttl: int = 10,
                 _kind: str = "double_barrier") -> None:
        self._store = store
        self.name = name
        self.n = check_count("n", n)
        self.ttl = check_ttl(ttl)
        self._prefix = prefix(_kind, name)
        self._round_key = self._prefix + "round"
        self._session: Session | None = None
        self._round = 0

    def _waiting(self, rnd: int) -> str:
        return f"{self._prefix}w/{rnd:020d}/"

    def _ready(self, rnd: int) -> str:
        return f"{self._prefix}ready/{rnd:020d}"

    def _arrive(self, session: Session) -> tuple[int, str, TxnResult]:
        """Put our key in the round now forming (starting one if none is): (the round's
        id, our key, the arrival's transaction: [_, our key, how many arrived, ready])."""
        rk = self._round_key
        while True:
            r = self._store.txn(compare=[Version(rk) == 0], success=[Put(rk, self.n)],
                                failure=[Get(rk)])
            rnd = r.revision if r.succeeded else ranged(r, 0).kvs[0].create_revision
            mine = f"{self._waiting(rnd)}{session.id:016x}"
            # Touching the round key orders every arrival after the look of a timed-out
            # participant clearing an empty round (see _forget).
            r = self._store.txn(
                compare=[CreateRevision(rk) == rnd],
                success=[Put(rk, self.n), Put(mine, "", lease=session.id),
                         Get(self._waiting(rnd), prefix=True, count_only=True),
                         Get(self._ready(rnd))])
            if r.succeeded:
                return rnd, mine, r
            # The round opened (or was reset) between our two steps: arrive in the next.

    def _open(self, rnd: int) -> bool:
        """Open round `rnd`: True if it is open now (by us or by another participant), False
        if it was reset (a Barrier's reset deleted the round, our arrival with it)."""
        rk, ready = self._round_key, self._ready(rnd)
        done = [] if self._stays_open else [Delete(rk)]
        r = self._store.txn(compare=[CreateRevision(rk) == rnd],
                            success=[*done, Put(ready, True)], failure=[Get(ready)])
        return r.succeeded or bool(ranged(r, 0).kvs)

    def _forget(self, rnd: int) -> None:
        """After a timeout: delete the round key if the round is left empty and closed, so
        nothing stays behind (an arrival since the look touched it: then it stays)."""
        rk = self._round_key
        r = self._store.txn(success=[Get(rk), Get(self._waiting(rnd), prefix=True,
                                                     count_only=True), Get(self._ready(rnd))])
        kvs = ranged(r, 0).kvs
        if kvs and kvs[0].create_revision == rnd and ranged(r, 1).count == 0 \
                and not ranged(r, 2).kvs:
            self._store.txn(compare=[ModRevision(rk) == kvs[0].mod_revision],
                            success=[Delete(rk)])

    def enter(self, timeout: float | None = None) -> bool:
        """Arrive and wait until `n` have arrived: True, or False after `timeout`."""
        deadline = deadline_of(check_timeout(timeout))
        if self._session is not None:
            raise RuntimeError("already entered")
        session = Session(self._store, self.ttl)
        opened: list[Event] = []

        def on_ready(e: Event) -> bool:
            if e.type is EventType.PUT:  # our round opened after we arrived
                opened.append(e)
                return True
            return False

        try:
            rnd, mine, r = self._arrive(session)
            ready = self._ready(rnd)
            # r: [..., our key, how many arrived, the ready key], read together.
            while not (opened or ranged(r, -1).kvs):
                if ranged(r, -2).count >= self.n:
                    # We (or one who died before opening it) made it n.
                    if self._open(rnd):
                        break
                # Our lease ending while we wait means we no longer count: SessionLost.
                elif not await_change(self._store, ready, r.revision, deadline,
                                      session=session, wake=on_ready):
                    session.close()
                    self._forget(rnd)
                    return False
                r = self._store.txn(success=[Get(mine),
                                             Get(self._waiting(rnd), prefix=True,
                                                 count_only=True),
                                             Get(ready)])
                if not ranged(r, 0).kvs:
                    raise SessionLost("our arrival is gone: the lease ended while waiting")
        except BaseException:
            session.close()
            raise
        self._session, self._round = session, rnd
        return True

    def leave(self, timeout: float | None = None) -> bool:
        """Depart and wait until every participant of our round has departed: True, or
        False on timeout."""
        deadline = deadline_of(check_timeout(timeout))
        session, self._session = self._session, None
        if session is None:
            raise RuntimeError("not entered")
        session.close()  # deletes our key
        waiting, ready = self._waiting(self._round), self._ready(self._round)
        while True:
            r = self._store.txn(success=[Get(waiting, prefix=True, count_only=True)])
            if ranged(r, 0).count == 0:
                # Our round's own ready key: a later round's is another key.
                self._store.txn(compare=[Version(ready) > 0], success=[Delete(ready)])
                return True
            if not await_change(self._store, waiting, r.revision, deadline, prefix=True):
                return False


class Barrier:
    """``store.barrier(name, n)``: ``wait()`` blocks until `n` participants have called it,
    then releases them all together. Once released it stays open (late callers pass at
    once) until ``reset()``."""

    def __init__(self, store: Store, name: str, n: int, *, ttl: int = 10) -> None:
        self._db = _OpenBarrier(store, name, n, ttl=ttl, _kind="barrier")
        self._store = store

    def wait(self, timeout: float | None = None) -> bool:
        """Arrive and wait until `n` have arrived (or pass at once if the barrier is open):
        True, or False after `timeout` (our arrival is withdrawn)."""
        db = self._db
        db._session = None
        ok = db.enter(timeout)
        if db._session is not None:
            db._session.close()
            db._session = None
        return ok

    def reset(self) -> None:
        """Close the barrier again for a new round of `n` (its round key goes too: the next
        arrival starts a round with a new id, which nothing of the old round names)."""
        self._store.delete(self._db._prefix, prefix=True)


class _OpenBarrier(DoubleBarrier):
    _stays_open = True


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
        """Subtract `delta` and return the new value."""
        return self.add(-delta)

    @property
    def value(self) -> int:
        """The current value (0 before the first add)."""
        return int(self._store.get(self._key, 0))


class Party(Holding):
    """``store.party(name)``: who is present. ``join(value)`` puts our member key on our own
    lease (re-joining with a new lease if it is lost, unless ``rejoin=False``); ``members()``
    maps member id to value; ``watch(callback)`` reports joins and leaves. ``held()`` guards
    a transaction with our presence, as a lock's does with the lock."""

    _kind = "party"
    _not_held = "is not joined"

    def __init__(self, store: Store, name: str, *, ttl: int = 10) -> None:
        self._store = store
        self.name = name
        self.ttl = check_ttl(ttl)
        self._prefix = prefix(self._kind, name)
        self._value: Any = None
        self._rejoin = True
        self._left = threading.Event()  # set by leave(): ends a rejoin loop at once
        self.id: str | None = None
        super().__init__()

    def join(self, value: Any = None, *, rejoin: bool = True) -> str:
        """Be present with `value`; returns our member id."""
        with self._mu:
            if self._session is not None:
                raise RuntimeError("already joined")
            self._value, self._rejoin = value, rejoin
            self._left = threading.Event()
            return self._install(self._enter())

    def _enter(self) -> tuple[Session, str, int]:
        """Our member key on a new lease (touching none of our state, so leave() need not
        wait for it)."""
        session = Session(self._store, self.ttl)
        try:
            key, rev, _ = enqueue(self._store, self._prefix, session, self._value)
        except BaseException:
            session.close()
            raise
        session.on_lost(lambda: self._rejoin_after(session))
        return session, key, rev

    def _install(self, got: tuple[Session, str, int]) -> str:
        self._take(got)
        self.id = self._key[len(self._prefix):]
        return self.id

    def _rejoin_after(self, lost: Session) -> None:
        """Join again on a new lease until it works, the party is left or the store closes.
        Never holds ``_mu`` across a store call or a pause: leave() returns at once."""
        left = self._left
        with self._mu:
            if self._session is not lost or not self._rejoin or left.is_set():
                return
        while not self._store.closed and not left.is_set():
            try:
                got = self._enter()
            except Exception:  # the store may be unavailable for a while
                _log.warning("party %r: rejoin failed; retrying", self.name, exc_info=True)
                left.wait(min(1.0, self.ttl / 3))
                continue
            with self._mu:
                if self._session is lost and not left.is_set():
                    self._install(got)
                    return
            got[0].close()  # left (or joined anew) meanwhile: this presence is not wanted
            return

    @property
    def present(self) -> bool:
        """True while our member key is in the store on a lease that cannot have expired."""
        return self._live

    def leave(self) -> None:
        """Be absent now (our key is deleted); ends a rejoin under way without waiting."""
        self._left.set()
        session = self._drop()
        if session is not None:
            session.close()

    def members(self) -> dict[str, Any]:
        """Member id -> value of everyone present now, oldest first."""
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
