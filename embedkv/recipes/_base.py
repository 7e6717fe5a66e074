"""What every recipe shares: the key layout, argument checks and the lease session."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from embedkv import (
    Closed,
    Compacted,
    Error,
    Event,
    KeyValue,
    LeaseNotFound,
    RangeResult,
    Store,
    TxnResult,
    Watch,
)

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


def key_text(kv: KeyValue | Event) -> str:
    """The key of a record or event as str (the recipes' keys are str; the store may hand
    them back as bytes)."""
    k = kv.key
    return k if isinstance(k, str) else k.decode()


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


def wait_set(
    store: Store,
    event: threading.Event,
    deadline: float | None,
    session: Session | None = None,
    watch: Watch | None = None,
) -> bool:
    """Wait for `event` until `deadline`: True once it is set, or once `watch` (the watch that
    would set it) has ended on its own — the store ends a watch that a compaction overtook
    (``watch.error``) and it will never set `event`, so the caller must look again (re-read,
    then watch anew from the revision read); False at the deadline. Closed if the store
    closes meanwhile, SessionLost if `session` ends (each checked every quarter second)."""
    while True:
        left = remaining(deadline)
        if event.wait(_POLL if left is None else min(_POLL, left)):
            return True
        if store.closed:
            raise Closed("the store is closed")
        if session is not None and not session.alive:
            raise SessionLost("the lease ended while waiting")
        if watch is not None and watch.cancelled:
            _log.info("recipe watch ended by the store (%r): looking again", watch.error)
            return True
        if remaining(deadline) == 0.0:
            return False


_POLL = 0.25
"""Seconds between a waiter's checks for what sends no event: a closed store, an ended
lease, a watch the store ended."""


def await_change(
    store: Store,
    key: str,
    after: int,
    deadline: float | None,
    *,
    prefix: bool = False,
    session: Session | None = None,
    wake: Callable[[Event], bool] = lambda event: True,
) -> bool:
    """Wait for a change to `key` (or under it, with `prefix`) after revision `after` for
    which `wake(event)` holds: True once one came, or once the store cannot show every change
    since `after` (the watch could not start, or ended, because history was compacted) — so
    True means "look again": re-read, then call this anew from the revision read. False at
    `deadline`; Closed if the store closes; SessionLost if `session` ends meanwhile."""
    flag = threading.Event()

    def on_event(event: Event) -> None:
        if wake(event):
            flag.set()

    try:
        watch = store.watch(key, on_event, prefix=prefix, start_revision=after + 1)
    except Compacted:
        return True  # changes since `after` are gone from history: the caller re-reads
    with watch:
        return wait_set(store, flag, deadline, session, watch)


class Follow:
    """A watch of `key` (or under it, with `prefix`) that is set up again whenever the store
    ends it (a compaction overtaking it: ``Watch.error``) or it cannot start (Compacted):
    `read()` looks at the state afresh and returns the revision it read, then the watch
    resumes from just after it. A view kept current by a watch would otherwise stop
    following without a word. `on_event` runs on the dispatcher; `read` on the caller's
    thread first, then on the watchdog thread (never while the old watch can deliver)."""

    def __init__(self, store: Store, key: str, *, prefix: bool, read: Callable[[], int],
                 on_event: Callable[[Event], object]) -> None:
        self._store, self._key, self._prefix = store, key, prefix
        self._read, self._on_event = read, on_event
        self._closed = False
        self._mu = threading.Lock()
        self._watch = self._start()
        _watchdog.add(self)

    def _start(self) -> Watch:
        while True:
            revision = self._read()
            try:
                return self._store.watch(self._key, self._on_event, prefix=self._prefix,
                                         start_revision=revision + 1)
            except Compacted:
                continue  # compacted between the read and the watch: read again

    def _check(self) -> bool:
        """Restart the watch if the store ended it; False once this follow is over."""
        with self._mu:
            if self._closed or self._store.closed:
                return False
            if self._watch.cancelled:
                _log.info("recipe watch of %r ended by the store (%r): following again",
                          self._key, self._watch.error)
                try:
                    self._watch = self._start()
                except Closed:
                    return False
        return True

    @property
    def cancelled(self) -> bool:
        """True once cancelled, or once the store is closed (the store ending the watch
        otherwise is mended, not an end)."""
        return self._closed or self._store.closed

    def cancel(self) -> None:
        with self._mu:
            self._closed = True
            watch = self._watch
        watch.cancel()


class _Watchdog:
    """One thread checks every Follow of the process each quarter second: a watch that the
    store ended sends no event to say so."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._follows: list[Follow] = []
        self._thread: threading.Thread | None = None

    def add(self, follow: Follow) -> None:
        with self._mu:
            self._follows.append(follow)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="embedkv-recipe-watchdog",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(_POLL)
            with self._mu:
                follows = list(self._follows)
            done = []
            for f in follows:
                try:
                    if not f._check():
                        done.append(f)
                except Exception:  # the store may be unavailable for a while: next round
                    _log.warning("recipe watch restart failed; retrying", exc_info=True)
            with self._mu:
                self._follows = [f for f in self._follows if f not in done]
                if not self._follows:
                    self._thread = None  # idle: end; the next add starts a new thread
                    return


_watchdog = _Watchdog()


class SessionLost(Error):
    """The recipe's lease ended (expired, revoked, or its keep-alive failed): what it held
    (a lock, leadership, a claim) is gone."""


def _run_callbacks(callbacks: list[Callable[[], object]]) -> None:
    for cb in callbacks:
        try:
            cb()
        except Exception:
            _log.exception("session-lost callback raised")


class _Keeper:
    """One thread refreshes every Session of the process, each when it is due: starting a
    thread per lock holding would cost more than the lock itself."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Session]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, session: Session, due: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), session))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="embedkv-recipe-keepalive", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait(5.0)
                        if not self._heap:  # idle: end; the next add starts a new thread
                            self._thread = None
                            return
                        continue
                    due, _, session = self._heap[0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            try:
                nxt = session._tick()
            except Exception:  # pragma: no cover - _tick handles what it expects
                _log.exception("recipe keep-alive failed")
                nxt = None
            if nxt is not None:
                self.add(session, nxt)


_keeper = _Keeper()


class Session:
    """A lease that the recipe keeps alive itself, so that it knows when the lease may have
    ended — etcd's ``concurrency.Session``.

    Every refresh is timed from the moment it was *sent*: the store restarts the countdown
    when it applies the refresh, which is later, so ``sent + ttl`` is a lower bound of the
    lease's expiry. ``alive`` is computed from the clock at each read against that bound, so
    it turns false no later than the instant the store could expire the lease (on one
    machine; across machines it also assumes the clocks run at the same rate). The
    ``on_lost`` callbacks run (on a thread of their own) once the process's keep-alive
    thread sees that instant pass — at it, or as soon as that thread is scheduled after it."""

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = check_ttl(ttl)
        sent = time.monotonic()
        self.lease = store.lease(ttl, keepalive=False)
        self.id = self.lease.id
        self._valid_until = sent + ttl
        self._lost = False
        self._stopped = False
        self._stalled = False
        self._closed = False  # close() ended it before it was lost
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        _keeper.add(self, sent + ttl / 3)

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
            if self._closed:  # ended by close(), not lost: no callback
                return
        callback()

    def _tick(self) -> float | None:
        """Refresh if due; the time of the next tick, or None when the session is over."""
        if self._stopped or self._lost:
            return None
        now = time.monotonic()
        if now >= self._valid_until:
            self._mark_lost()
            return None
        if self._stalled:
            return self._valid_until
        try:
            self.lease.refresh()
        except (LeaseNotFound, Closed):
            self._mark_lost()
            return None
        except Exception as e:  # Unavailable, an election under way: try again until the
            # bound passes (losing the lease then is what callbacks and `alive` report).
            _log.info("lease %x: keep-alive failed (%r); retrying", self.id, e)
            return min(time.monotonic() + 0.1, self._valid_until)
        self._valid_until = now + self.ttl
        return min(time.monotonic() + self.ttl / 3, self._valid_until)

    def _mark_lost(self) -> None:
        with self._lock:
            if self._lost or self._stopped:
                return
            self._lost = True
            callbacks, self._callbacks = self._callbacks, []
        if callbacks:
            threading.Thread(
                target=_run_callbacks, args=(callbacks,), name="embedkv-session-lost", daemon=True
            ).start()

    def lost(self) -> None:
        """Declare the lease lost now (a watch saw its key deleted under us)."""
        self._mark_lost()

    def orphan(self) -> None:
        """Stop refreshing without revoking, and without callbacks: the lease (and every key
        on it) ends after its TTL, as when the process holding it is killed."""
        self._stalled = True
        self._stopped = True

    def stall(self) -> None:
        """Stop refreshing but keep the process's view: as when keep-alives stop getting
        through. ``alive`` turns false and ``on_lost`` callbacks run when the lease may have
        expired, before the store can expire it."""
        self._stalled = True

    def close(self) -> None:
        """Revoke the lease now: every key on it is deleted. Idempotent."""
        self._stopped = True
        with self._lock:
            self._closed = self._closed or not self._lost
            self._lost = True
            self._callbacks = []
        with contextlib.suppress(LeaseNotFound, Closed):
            self.lease.revoke()
