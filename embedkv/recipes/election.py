"""Leader election — etcd's concurrency.Election: the campaigner with the oldest key leads.

Campaigners queue as lock waiters do (each watching only its predecessor); the leader's key
holds the proclaimed value. Leadership lasts while its lease does: ``is_leader`` turns false
from the first instant the store could have expired the lease, measured on the leader's own
clock from when its last refresh was sent (see Session), which is before the store lets the
next campaigner win. ``on_lost`` callbacks run at that instant or as soon as the session's
thread runs after it: code that must not act as leader after losing should check
``is_leader`` (or, stronger, guard its writes with ``store.txn(compare=[election.held()])``).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

from embedkv import (
    Event,
    EventType,
    Get,
    Put,
    SortOrder,
    SortTarget,
    Store,
)

from ._base import Follow, SessionLost, check_timeout, check_ttl, deadline_of, prefix, ranged
from .lock import Holding, queue_up

_NOBODY = object()


class Election(Holding):
    """``store.election(name, ttl=10)``: campaign, leader, observe, proclaim, resign."""

    def __init__(self, store: Store, name: str, *, ttl: int = 10) -> None:
        self._store = store
        self.name = name
        self.ttl = check_ttl(ttl)
        self._prefix = prefix("election", name)
        super().__init__()

    _not_held = "is not leading"

    def __repr__(self) -> str:
        return f"<embedkv.recipes.Election {self.name!r} leader={self.is_leader}>"

    def campaign(self, value: Any, timeout: float | None = None) -> bool:
        """Block until we lead (True) or `timeout` passes (False, and we leave the queue)."""
        timeout = check_timeout(timeout)
        with self._mu:
            if self._session is not None:
                raise RuntimeError(f"{self!r} is already campaigning or leading")
            got = queue_up(self._store, self._prefix, self.ttl, value, "", deadline_of(timeout))
            return self._take(got)

    @property
    def is_leader(self) -> bool:
        """True while we lead and our lease cannot have expired (see Session)."""
        return self._live

    def proclaim(self, value: Any) -> None:
        """Change the leader's value without an election; SessionLost if we no longer lead."""
        if not self.is_leader:
            raise SessionLost(f"{self!r}: not the leader")
        assert self._session is not None
        r = self._store.txn(
            compare=[self.held()], success=[Put(self._key, value, lease=self._session.id)]
        )
        if not r.succeeded:
            self._session.lost()
            raise SessionLost(f"{self!r}: leadership was lost")

    def resign(self) -> None:
        """Give leadership up (the next campaigner wins); does nothing if not leading."""
        session = self._drop()
        if session is not None:
            session.close()

    def leader(self) -> Any:
        """The current leader's value, or None if nobody leads."""
        r = self._store.txn(success=[self._first()])
        got = ranged(r, 0)
        return got.kvs[0].value if got.kvs else None

    def _first(self) -> Get:
        return Get(self._prefix, prefix=True, sort_order=SortOrder.ASCEND,
                   sort_target=SortTarget.CREATE)

    def observe(self, callback: Callable[[Any], object] | None = None) -> Observation:
        """Follow leadership: each change of leader or of its value is reported once, as the
        value (None: nobody leads). With `callback`, calls it on the watch dispatcher (or the
        recipes' watchdog, catching up after the store ended the watch); without,
        iterate the returned Observation. ``.cancel()`` ends it."""
        return Observation(self._store, self._prefix, self._first(), callback)


class Observation:
    """Leadership changes, computed from one read and the watch events after it, so no
    change is missed or reported out of order."""

    def __init__(
        self, store: Store, pfx: str, first: Get, callback: Callable[[Any], object] | None
    ) -> None:
        self._store, self._first = store, first
        self._members: dict[Any, tuple[int, Any]] = {}
        self._last: object = _NOBODY
        self._callback = callback
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._follow = Follow(store, pfx, prefix=True, read=self._reread, on_event=self._on_event)

    def _reread(self) -> int:
        """Read the campaigners afresh (first, and whenever the watch had to start again)."""
        r = self._store.txn(success=[self._first])
        self._members = {kv.key: (kv.create_revision, kv.value) for kv in ranged(r, 0).kvs}
        self._emit()
        return r.revision

    def _on_event(self, event: Event) -> None:
        if event.type is EventType.DELETE:
            self._members.pop(event.key, None)
        else:
            self._members[event.key] = (event.kv.create_revision, event.value)
        self._emit()

    def _emit(self) -> None:
        value = min(self._members.values(), key=lambda cv: cv[0])[1] if self._members else None
        if self._last is not _NOBODY and value == self._last:
            return
        self._last = value
        if self._callback is not None:
            self._callback(value)
        else:
            self._queue.put(value)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            if self._follow.cancelled and self._queue.empty():
                raise StopIteration
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                continue

    def cancel(self) -> None:
        """Stop following; an iterator ends once it has given what it already had."""
        self._follow.cancel()

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
