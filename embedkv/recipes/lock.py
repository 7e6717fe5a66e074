"""A fair, lease-backed lock with fencing, and a read-write lock — etcd's concurrency.Mutex.

Each contender puts a key ``<prefix><lease id>`` on its own lease; the contender whose key has
the lowest create revision holds the lock. A waiter watches only the key created just before
its own (its predecessor), so a release wakes one waiter, not the whole herd, and waiters are
served in creation-revision order. The holder's create revision is the fencing token: it
strictly increases from one holder to the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from embedkv import (
    Compare,
    CreateRevision,
    Get,
    KeyValue,
    Put,
    SortOrder,
    SortTarget,
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
    remaining,
)

Listing = tuple[tuple[KeyValue, ...], int]
"""The keys of a queue in creation order (values left out), and the revision they were read at."""


def _listing(pfx: str) -> Get:
    return Get(pfx, prefix=True, keys_only=True, sort_order=SortOrder.ASCEND,
               sort_target=SortTarget.CREATE)


def enqueue(
    store: Store, pfx: str, session: Session, value: object, tag: str = ""
) -> tuple[str, int, Listing]:
    """Put our key (once per session) on the session's lease, listing the queue in the same
    transaction (as etcd's Mutex does): (key, its create revision, the listing)."""
    key = f"{pfx}{tag}{session.id:016x}"
    r = store.txn(
        compare=[Version(key) == 0],
        success=[Put(key, value, lease=session.id), _listing(pfx)],
        failure=[Get(key), _listing(pfx)],
    )
    listing = (ranged(r, 1).kvs, r.revision)
    if r.succeeded:
        return key, r.revision, listing
    return key, ranged(r, 0).kvs[0].create_revision, listing


def wait_turn(
    store: Store,
    pfx: str,
    my_rev: int,
    deadline: float | None,
    session: Session,
    blocks: Callable[[str], bool] = lambda key: True,
    slots: int = 1,
    listing: Listing | None = None,
) -> bool:
    """Wait until fewer than `slots` keys under `pfx` created before `my_rev` that `blocks`
    us are left, watching one predecessor at a time (the whole prefix when `slots` > 1);
    False on timeout. SessionLost if our lease ends. `listing`: a first look already taken."""
    while True:
        if not session.alive:
            raise SessionLost("the lease ended while waiting")
        if listing is None:
            r = store.txn(success=[_listing(pfx)])
            listing = (ranged(r, 0).kvs, r.revision)
        kvs, revision = listing
        listing = None
        before = [kv for kv in kvs if kv.create_revision < my_rev and blocks(key_text(kv))]
        if not any(kv.create_revision == my_rev for kv in kvs):
            raise SessionLost("our key is gone: the lease ended or someone deleted it")
        if len(before) < slots:
            return True
        pred = key_text(before[-1])
        left = remaining(deadline)
        if left == 0.0:
            return False
        # Any event on the predecessor's key (its delete) means: look again.
        watched, whole = (pred, False) if slots == 1 else (pfx, True)
        if not await_change(store, watched, revision, deadline, prefix=whole, session=session):
            return False


def queue_up(
    store: Store,
    pfx: str,
    ttl: int,
    value: object,
    tag: str,
    deadline: float | None,
    blocks: Callable[[str], bool] = lambda key: True,
    slots: int = 1,
) -> tuple[Session, str, int] | None:
    """Join the queue under `pfx` on a new lease and wait for our turn: (session, key, create
    revision), or None at the deadline — having left the queue (the lease is revoked)."""
    session = Session(store, ttl)
    try:
        key, rev, first = enqueue(store, pfx, session, value, tag)
        ok = wait_turn(store, pfx, rev, deadline, session, blocks, slots, first)
    except BaseException:
        session.close()
        raise
    if not ok:
        session.close()
        return None
    return session, key, rev


class Holding:
    """What a lock holding and a leadership share: our key on a lease of our own, its create
    revision (the fencing token), and the callbacks for losing the lease."""

    _not_held = "is not held"

    def __init__(self) -> None:
        self._session: Session | None = None
        self._key = ""
        self._rev = 0
        self._mu = threading.Lock()
        self._on_lost: list[Callable[[], object]] = []

    def _take(self, got: tuple[Session, str, int] | None) -> bool:
        if got is None:
            return False
        self._session, self._key, self._rev = got
        for cb in self._on_lost:
            self._session.on_lost(cb)
        return True

    def _drop(self) -> Session | None:
        with self._mu:
            session, self._session = self._session, None
        return session

    @property
    def _live(self) -> bool:
        s = self._session
        return s is not None and s.alive

    @property
    def session(self) -> Session:
        """The current holding's lease session (``.session.orphan()`` simulates death)."""
        if self._session is None:
            raise RuntimeError(f"{self!r} {self._not_held}")
        return self._session

    def held(self) -> Compare:
        """A transaction comparison true only while this holding's key still exists: guard
        writes with ``store.txn(compare=[x.held(), ...])`` and the store refuses them once
        the holding is lost."""
        self.session  # noqa: B018 - raises when not holding
        return CreateRevision(self._key) == self._rev

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` if a holding's lease is lost (not on release/resign)."""
        self._on_lost.append(callback)
        if self._session is not None:
            self._session.on_lost(callback)


class Lock(Holding):
    """``store.lock(name, ttl=10)``: a fair, lease-backed, fencing lock.

    ``with lock:`` acquires and releases; ``acquire(timeout=None, blocking=True)`` returns
    False on timeout. Each holding has its own lease of `ttl` seconds, kept alive while held:
    if the holder dies (stops refreshing) the lock frees itself after the TTL. ``token`` is
    the fencing token (strictly increasing across holders); ``held()`` is a comparison that
    makes ``store.txn(compare=[lock.held(), ...])`` fail once the lock is lost."""

    _tag = ""

    def __init__(self, store: Store, name: str, *, ttl: int = 10, _kind: str = "lock") -> None:
        self._store = store
        self.name = name
        self.ttl = check_ttl(ttl)
        self._prefix = prefix(_kind, name)
        super().__init__()

    def __repr__(self) -> str:
        return f"<embedkv.recipes.{type(self).__name__} {self.name!r} held={self.is_held}>"

    def _blocks(self, key: str) -> bool:
        return True

    _slots = 1
    """How many may hold at once (a Semaphore has more)."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Wait for the lock (in arrival order); False if not acquired within `timeout`, or at
        once if `blocking` is False and someone else holds it or waits before us."""
        timeout = check_timeout(timeout)
        with self._mu:
            if self._session is not None:
                raise RuntimeError(f"{self!r} is already held by this object (not reentrant)")
            got = queue_up(self._store, self._prefix, self.ttl, "", self._tag,
                           deadline_of(0 if not blocking else timeout), self._blocks, self._slots)
            return self._take(got)

    def release(self) -> None:
        """Give the lock up (revoking its lease deletes our key and wakes the next waiter)."""
        session = self._drop()
        if session is None:
            raise RuntimeError(f"{self!r} is not held")
        session.close()

    @property
    def is_held(self) -> bool:
        """True while we hold the lock and its lease cannot have expired (see Session)."""
        return self._live

    @property
    def token(self) -> int:
        """The fencing token of the current holding: our key's create revision."""
        self.session  # noqa: B018 - raises when not holding
        return self._rev

    @property
    def key(self) -> str:
        """Our key in the store while held (for guards of your own)."""
        self.session  # noqa: B018 - raises when not holding
        return self._key

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            self.release()


class _ReadLock(Lock):
    """Held together with other readers; waits only for writers that came before it."""

    _tag = "r-"

    def _blocks(self, key: str) -> bool:
        return key[len(self._prefix):].startswith("w-")


class _WriteLock(Lock):
    """Exclusive: waits for every reader and writer that came before it."""

    _tag = "w-"


class RWLock:
    """``store.rwlock(name)``: ``.read()`` and ``.write()`` give locks over one queue, served
    in arrival order (readers that arrive together share; a writer waits for all before it)."""

    def __init__(self, store: Store, name: str, *, ttl: int = 10) -> None:
        self._store, self.name, self.ttl = store, name, check_ttl(ttl)
        prefix("rwlock", name)

    def read(self) -> Lock:
        """A new read lock (shared with readers, after every writer queued before it)."""
        return _ReadLock(self._store, self.name, ttl=self.ttl, _kind="rwlock")

    def write(self) -> Lock:
        """A new write lock (alone, after everyone queued before it)."""
        return _WriteLock(self._store, self.name, ttl=self.ttl, _kind="rwlock")
