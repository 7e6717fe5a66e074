"""A work queue with lease-backed claims: every item is acknowledged by exactly one consumer.

``get()`` claims the oldest unclaimed item by creating a claim key on the consumer's lease
in a transaction that also checks the item still exists and nobody else claimed it; the
consumer then ``ack()``s (deleting item and claim in one transaction guarded by its claim).
A consumer that dies before acking stops refreshing its lease: the claim vanishes after the
TTL and the item is delivered again — kazoo's LockingQueue. Items come out lowest
``priority`` first, then in the order they were put (their create revision).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from embedkv import (
    Compacted,
    CreateRevision,
    Delete,
    Get,
    LeaseNotFound,
    Put,
    Store,
    Version,
)

from ._base import (
    Session,
    SessionLost,
    await_change,
    check_timeout,
    check_ttl,
    deadline_of,
    key_text,
    prefix,
    ranged,
)

_PRIO_BIAS = 1 << 62
_PRIO_MAX = (1 << 62) - 1


@dataclass(frozen=True)
class Item:
    """One claimed item: ``value``; ``ack()`` when done, ``release()`` to hand it back."""

    value: Any
    key: str
    priority: int
    _queue: Queue
    _claim: str
    _claim_rev: int

    def ack(self) -> None:
        """Consume the item for good. SessionLost if our claim ended first (it may have been
        delivered to another consumer then)."""
        self._queue.task_done(self)

    def release(self) -> None:
        """Give the item back now, for another consumer (SessionLost if the claim ended)."""
        self._queue._release(self)


class _Outranked(Exception):
    """A claim was made while a higher-priority item was unclaimed (it was undone)."""


class Queue:
    """``store.queue(name, ttl=10)``: ``put(value, priority=0)``, ``get(timeout=None)``,
    ``task_done(item)`` (or ``item.ack()``), ``qsize()``. Claims live on this consumer's
    lease of `ttl` seconds; ``close()`` revokes it and hands back what is not acked."""

    def __init__(self, store: Store, name: str, *, ttl: int = 10) -> None:
        self._store = store
        self.name = name
        self.ttl = check_ttl(ttl)
        pfx = prefix("queue", name)
        self._prefix = pfx
        self._items = pfx + "i/"
        self._claims = pfx + "c/"
        self._session: Session | None = None
        self._mu = threading.Lock()

    def __repr__(self) -> str:
        return f"<embedkv.recipes.Queue {self.name!r}>"

    @property
    def session(self) -> Session:
        """This consumer's lease session (created by the first ``get``)."""
        with self._mu:
            if self._session is None or not self._session.alive:
                self._session = Session(self._store, self.ttl)
            return self._session

    def put(self, value: Any, *, priority: int = 0) -> str:
        """Add `value`; lower `priority` comes out first. Returns the item's key."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not -_PRIO_BIAS <= priority <= _PRIO_MAX:
            raise ValueError(f"priority must be within ±2**62, not {priority}")
        key = f"{self._items}{priority + _PRIO_BIAS:019d}/{uuid.uuid4().hex}"
        self._store.put(key, value)
        return key

    def qsize(self) -> int:
        """Items put and not yet acknowledged nor claimed."""
        r = self._store.txn(success=[Get(self._items, prefix=True, count_only=True),
                                     Get(self._claims, prefix=True, count_only=True)])
        items, claims = ranged(r, 0).count, ranged(r, 1).count
        return max(0, int(items) - int(claims))

    def _candidates(self, claimed: set[str], revision: int) -> list[str]:
        """The unclaimed items of the highest priority group that has any, oldest first, as
        of `revision` (the claims' read). A lower group is looked at only when every item of
        the higher ones was claimed at that revision."""
        start, end = self._items, self._prefix + "i0"
        while True:
            first = self._store.range(start=start, end=end, limit=1, keys_only=True,
                                      revision=revision)
            if not first:
                return []
            group = key_text(first[0])[: len(self._items) + 20]  # "<items><prio>/"
            mark = group[len(self._items):]
            taken = sum(1 for c in claimed if c.startswith(mark))
            # At most `taken` of the group are claimed: the first taken+16 hold 16 free ones
            # if the group has them.
            kvs = self._store.range(prefix=group, sort="create", limit=taken + 16,
                                    keys_only=True, revision=revision)
            free = [k for k in map(key_text, kvs) if k[len(self._items):] not in claimed]
            if free:
                return free
            start = group[:-1] + "0"  # just past every key of this group

    def get(self, timeout: float | None = None) -> Item:
        """Claim the next item, waiting up to `timeout` seconds (None: for ever); TimeoutError
        if none came. The claim lasts while this consumer's lease does.

        The item is the highest-priority one unclaimed when the claim is made: the claim's
        transaction also reads the higher priorities, and if one of their items is
        unclaimed then (put, or handed back, since our look), the claim is undone and the
        get looks again."""
        deadline = deadline_of(check_timeout(timeout))
        while True:
            session = self.session
            r = self._store.txn(success=[Get(self._claims, prefix=True, keys_only=True)])
            seen = r.revision
            claimed = {key_text(kv)[len(self._claims):] for kv in ranged(r, 0).kvs}
            try:
                candidates = self._candidates(claimed, seen)
            except Compacted:
                continue  # the look's revision was compacted meanwhile: look again
            try:
                for key in candidates:
                    item = self._claim(session, key)
                    if item is not None:
                        return item
            except _Outranked:
                continue
            if candidates:
                continue  # others claimed them first: look again at once
            if not self._wait_change(seen, deadline):
                raise TimeoutError(f"{self!r}: no item within {timeout} s")

    def _claim(self, session: Session, key: str) -> Item | None:
        """Claim `key`: the Item, None if another consumer claimed it (or it was acked)
        first, or if our lease had ended; _Outranked if a higher-priority item was unclaimed
        at the claim."""
        suffix = key[len(self._items):]
        claim = self._claims + suffix
        try:
            r = self._store.txn(
                compare=[Version(key) > 0, Version(claim) == 0],
                success=[Put(claim, session.id, lease=session.id), Get(key),
                         Get(self._items, end=self._items + suffix[:20], keys_only=True),
                         Get(self._claims, end=self._claims + suffix[:20], keys_only=True)],
            )
        except LeaseNotFound:
            # Our lease ended while we waited, before the keep-alive noticed: the next look
            # claims on a new one.
            session.lost()
            return None
        if not r.succeeded:
            return None
        kv = ranged(r, 1).kvs[0]
        prio = int(suffix[:19]) - _PRIO_BIAS
        item = Item(kv.value, key, prio, self, claim, r.revision)
        higher = {key_text(h)[len(self._items):] for h in ranged(r, 2).kvs}
        if higher - {key_text(c)[len(self._claims):] for c in ranged(r, 3).kvs}:
            with contextlib.suppress(SessionLost):  # a claim that ended is undone already
                self._release(item)
            raise _Outranked
        return item

    def _wait_change(self, seen: int, deadline: float | None) -> bool:
        """Wait for any change under the queue after revision `seen`; False at the deadline."""
        return await_change(self._store, self._prefix, seen, deadline, prefix=True)

    def task_done(self, item: Item) -> None:
        """Acknowledge `item`: it is deleted, never delivered again."""
        r = self._store.txn(
            compare=[CreateRevision(item._claim) == item._claim_rev],
            success=[Delete(item.key), Delete(item._claim)],
        )
        if not r.succeeded:
            raise SessionLost(f"the claim on {item.key!r} ended before the ack")

    def _release(self, item: Item) -> None:
        r = self._store.txn(
            compare=[CreateRevision(item._claim) == item._claim_rev],
            success=[Delete(item._claim)],
        )
        if not r.succeeded:
            raise SessionLost(f"the claim on {item.key!r} had already ended")

    def close(self) -> None:
        """Revoke this consumer's lease: items it claimed and did not ack go back at once."""
        with self._mu:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
