"""Watch fan-out: the hub that routes applied events to watches, and the dispatcher thread.

Events enter the hub from local apply, only after the write batch that produced them is durable
(the log writer calls `publish`). Callbacks never run on the engine or the writer: each watch has
its own queue, and one dispatcher thread drains the queues, so a slow callback delays later
callbacks (of every watch) but never replication or writes.

Exactly once, in order, across the switch from history to live events: a watch is registered
under the hub lock and notes the hub's revision at that moment (its *boundary*). Every event at or
below the boundary is already committed, so the replay from history stops there; every event
above it is published after the registration, so the live queue holds exactly those.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from embedkv.errors import Closed
from embedkv.storage.requests import Event, Key, key_bytes, prefix_end

from .intervals import IntervalIndex, PrefixIndex

log = logging.getLogger("embedkv.watch")

WatchCallback = Callable[[Event], object]

_TURN = 512
"""Events one watch may deliver before the dispatcher moves on to the next watch (fairness)."""

_EVERY_KEY = b"\x00"
"""With end=b"\\x00" storage replays every key >= key; b"\\x00" is the smallest valid key."""


class History(Protocol):
    """The part of the key space the hub needs: the revision and history replay."""

    @property
    def revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def events(
        self, start_revision: int, key: Key, end: Key | None = None, *, prefix: bool = False
    ) -> Iterator[Event]: ...


def selection(key: Key, prefix: bool, end: Key | None) -> tuple[bytes, bytes | None, bool]:
    """(low, high, exact) in key bytes, with Get's rules; high None means no upper bound."""
    if prefix:
        if end is not None:
            raise ValueError("give either prefix=True or end, not both")
        if key in (b"", ""):
            return b"", None, False
        low = key_bytes(key)
        return low, prefix_end(low), False
    low = key_bytes(key)
    if end is None:
        return low, None, True
    if end in (b"\x00", "\x00"):
        return low, None, False
    high = key_bytes(end)
    if high <= low:
        raise ValueError("end must sort after key")
    return low, high, False


class _Watch:
    """One registered watch: its selection, its queue of live events, its replay."""

    __slots__ = (
        "callback",
        "cancelled",
        "error",
        "exact",
        "first_live",
        "floor",
        "frozen",
        "gen",
        "high",
        "last_n",
        "last_rev",
        "lock",
        "low",
        "opening",
        "pending",
        "prev_kv",
        "replay",
        "replay_to",
        "scheduled",
        "start",
        "wid",
    )

    def __init__(
        self,
        wid: int,
        callback: WatchCallback,
        low: bytes,
        high: bytes | None,
        exact: bool,
        prev_kv: bool,
        first_live: int,
    ) -> None:
        self.wid = wid
        self.callback = callback
        self.low = low
        self.high = high
        self.exact = exact
        self.prev_kv = prev_kv
        self.first_live = first_live
        # The first revision it asked for (a replay starts earlier), or after a reset the one
        # its replay of the installed history starts at.
        self.start = first_live
        # The last event delivered: its revision and how many events of that revision (a txn
        # makes several) were delivered, so that a reset resumes exactly after it.
        self.last_rev = 0
        self.last_n = 0
        self.frozen = False  # a reset is pending: deliver nothing until it is done
        # Set by the reset that froze it: the first revision it may not have delivered in
        # full (0: the one after last_rev, or start if it delivered nothing).
        self.floor = 0
        self.gen = 0  # the hub's reset count when it was registered
        self.opening = False  # watch() is still reading the first chunk of its replay
        self.pending: collections.deque[Event] = collections.deque()
        self.replay: Iterator[Event] | None = None
        self.replay_to = 0
        self.scheduled = False
        self.cancelled = False
        self.error: BaseException | None = None
        # Held while a callback runs, so cancel() returns only when no callback is starting.
        self.lock = threading.RLock()


class WatchHandle:
    """What `Member.watch` returns; `cancel()` stops delivery (idempotent)."""

    __slots__ = ("_hub", "_watch")

    def __init__(self, hub: WatchHub, watch: _Watch) -> None:
        self._hub = hub
        self._watch = watch

    def cancel(self, *, wait: bool = True) -> None:
        """Stop the watch. Once this returns, no further callback of this watch starts; one
        already running (on another thread) has finished, unless `wait` is False (closing
        waits for the dispatcher itself, within a bound). Safe to call from a callback."""
        w = self._watch
        if w.cancelled:
            return
        w.cancelled = True  # seen by the dispatcher before it starts any further callback
        if wait:
            with w.lock:  # wait for a callback that is running now (re-entrant: a callback
                pass  # may cancel its own watch)
        self._hub.remove(w)

    @property
    def cancelled(self) -> bool:
        return self._watch.cancelled

    @property
    def error(self) -> BaseException | None:
        """Why the watch ended on its own (history compacted while it was being replayed)."""
        return self._watch.error

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class _Reset:
    """The dispatcher's cue to resume every watch after a snapshot install (WatchHub.reset)."""

    __slots__ = ("gen", "revision")

    def __init__(self, revision: int, gen: int) -> None:
        self.revision = revision
        self.gen = gen


def _skip_delivered(events: Iterator[Event], revision: int, n: int) -> Iterator[Event]:
    """`events` without the first `n` of `revision` (delivered before a reset)."""
    for ev in events:
        if ev.kv.mod_revision == revision and n > 0:
            n -= 1
            continue
        yield ev


class WatchHub:
    """Routes published events to matching watches and runs their callbacks on one thread."""

    def __init__(self, history: History, revision: int) -> None:
        self._history = history
        self._lock = threading.Lock()
        self._revision = revision  # every event at or below it has been published
        self._exact: dict[bytes, list[_Watch]] = {}
        # Prefix watches, and the other range watches: an event looks up only the prefixes and
        # ranges that hold its key.
        self._prefixes: PrefixIndex[_Watch] = PrefixIndex()
        self._ranges: IntervalIndex[_Watch] = IntervalIndex()
        self._count = 0
        self._waking: list[_Watch] = []  # scheduled by publish, for the next wake()
        self._ids = itertools.count(1)
        self._resets = 0  # resets so far (a watch opening its replay meanwhile drops it)
        self._closed = False
        self._running: WatchCallback | None = None
        """The callback the dispatcher is running now, named if close() has to leave it."""
        self._ready: queue.SimpleQueue[_Watch | _Reset | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="embedkv-watch-dispatcher", daemon=True
        )

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    # --- registration (caller threads) ----------------------------------------------------

    def watch(
        self,
        key: Key,
        callback: WatchCallback,
        *,
        prefix: bool = False,
        end: Key | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
    ) -> WatchHandle:
        """Register a watch; Compacted at once if start_revision is below the compact revision."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        if type(prefix) is not bool or type(prev_kv) is not bool:
            raise TypeError("prefix and prev_kv must be bools")
        if start_revision is not None:
            if type(start_revision) is not int:
                raise TypeError(f"start_revision must be an int, not {start_revision!r}")
            if start_revision < 0:
                raise ValueError(f"start_revision must be >= 0, not {start_revision}")
        low, high, exact = selection(key, prefix, end)
        start = start_revision or 0  # 0 (etcd) and None both mean "from now"
        with self._lock:
            if self._closed:
                raise Closed("the member is closed")
            boundary = self._revision
            first_live = max(boundary + 1, start)
            w = _Watch(next(self._ids), callback, low, high, exact, prev_kv, first_live)
            w.gen = self._resets
            replaying = 0 < start <= boundary
            if replaying:
                w.start = start
                w.opening = True
            # A replaying watch stays off the dispatcher until its replay is attached: live
            # events queue up meanwhile, and are delivered after the replay.
            w.scheduled = replaying
            if exact:
                self._exact.setdefault(low, []).append(w)
            elif high == prefix_end(low):  # the keys starting with `low` (b"": every key)
                self._prefixes.add(low, w.wid, w)
            else:
                self._ranges.add(low, high, w.wid, w)
            self._count += 1
        if replaying:
            try:
                replay = self._open_replay(w, start)
            except BaseException:
                w.cancelled = True  # a pending reset must not resume it
                self.remove(w)
                raise
            with self._lock:
                w.opening = False
                if self._resets != w.gen:
                    # A snapshot was installed while the replay was being opened: the reset
                    # resumes this watch from the installed history; this replay may hold
                    # the old one.
                    return WatchHandle(self, w)
                w.replay = replay
                w.replay_to = boundary
            self._ready.put(w)
        return WatchHandle(self, w)

    def reset(self, revision: int) -> None:
        """A snapshot replaced the key space and its history (now at `revision`): every watch
        resumes after the last event it delivered (from the first revision it may have
        missed), replayed from the installed history, or ends with Compacted if that history
        no longer reaches back so far. The dispatcher
        does the work, between two callbacks, so nothing is delivered twice or skipped."""
        with self._lock:
            published = self._revision
            self._revision = revision
            self._resets += 1
            for w in self._all():
                if not w.frozen:  # (frozen: an earlier reset is pending, its floor holds)
                    w.floor = self._floor(w, published)
                    w.frozen = True
                w.pending = collections.deque()  # what was queued is in the new history
            self._ready.put(_Reset(revision, self._resets))

    @staticmethod
    def _floor(w: _Watch, published: int) -> int:
        """The first revision `w` may not have delivered in full, as far as the hub knows
        (under the lock, at a reset): its first queued event, or the one after the last
        published (not its last delivered: that may lie in the compacted history while the
        watch missed nothing). 0 while a replay runs (it delivers in its own time)."""
        if w.replay is not None or w.opening:
            return 0
        if w.pending:
            return w.pending[0].kv.mod_revision
        return max(published + 1, w.first_live)

    def _all(self) -> list[_Watch]:
        watches = [w for ws in self._exact.values() for w in ws]
        return watches + self._prefixes.values() + self._ranges.values()

    def _resume(self, reset: _Reset) -> None:
        """On the dispatcher thread: re-open each frozen watch's replay after a reset (the
        watches registered since are at the installed revision already). Only the latest
        reset does it: an earlier one's revision is no longer the history's."""
        with self._lock:
            if reset.gen != self._resets:
                return
            watches = [w for w in self._all() if w.frozen]
        for w in watches:
            if w.cancelled:
                continue
            # What the dispatcher delivered is final here (it runs the callbacks): at most
            # one event of the floor's revision can have been delivered after the freeze.
            start = w.floor or w.last_rev or w.start
            if w.last_rev != start:
                w.last_rev = w.last_n = 0  # nothing of `start` delivered yet
            w.start = start  # what a later reset falls back to while this replay runs
            replay: Iterator[Event] | None = None
            if start <= reset.revision:
                try:
                    replay = self._open_replay(w, start)
                except Exception as exc:
                    log.warning("watch %d ended after a snapshot was installed: %s", w.wid, exc)
                    w.error = exc
                    WatchHandle(self, w).cancel()
                    continue
                if w.last_rev == start:
                    replay = _skip_delivered(replay, w.last_rev, w.last_n)
            with self._lock:
                if self._resets != reset.gen:
                    return  # another reset came meanwhile: it resumes the rest
                w.replay = replay
                w.replay_to = reset.revision
                w.first_live = max(w.first_live, reset.revision + 1)
                w.frozen = False
                w.floor = 0
                w.scheduled = False
                self._schedule(w)

    def _open_replay(self, w: _Watch, start: int) -> Iterator[Event]:
        """Read the first chunk of history now, so Compacted is raised in the caller's thread."""
        if w.exact:
            events = self._history.events(start, w.low)
        elif w.low == b"":
            events = self._history.events(start, _EVERY_KEY, _EVERY_KEY)
        elif w.high is None:
            events = self._history.events(start, w.low, _EVERY_KEY)
        else:
            events = self._history.events(start, w.low, w.high)
        first = list(itertools.islice(events, _TURN))
        return itertools.chain(first, events)

    def remove(self, w: _Watch) -> None:
        with self._lock:
            if w.exact:
                watches = self._exact.get(w.low)
                if watches is not None and w in watches:
                    watches.remove(w)
                    if not watches:
                        del self._exact[w.low]
                    self._count -= 1
            elif self._prefixes.remove(w.low, w.wid) or self._ranges.remove(w.low, w.wid):
                self._count -= 1
        w.pending.clear()
        w.replay = None

    # --- publishing (the log writer, after each durable batch) ----------------------------

    def publish(self, events: list[Event]) -> None:
        """Queue `events` (in revision order) on every matching watch; never blocks on callbacks.
        The dispatcher is woken by the next `wake()` (the writer calls it once it has resolved
        the batch's futures, so that their callers are not kept waiting behind callbacks)."""
        with self._lock:
            if self._count:
                exact = self._exact
                prefixes = self._prefixes if len(self._prefixes) else None
                ranges = self._ranges if len(self._ranges) else None
                waking = self._waking
                for ev in events:
                    key = ev.kv.key
                    kb = key if type(key) is bytes else key_bytes(key)
                    rev = ev.kv.mod_revision
                    hits = exact.get(kb, [])
                    if prefixes is not None:
                        hits = hits + prefixes.stab(kb)
                    if ranges is not None:
                        hits = hits + ranges.stab(kb)
                    for w in hits:  # each watch once: it is in one of the three, once
                        if rev >= w.first_live:
                            w.pending.append(ev)
                            if not w.scheduled:
                                w.scheduled = True
                                waking.append(w)
            last = events[-1].kv.mod_revision if events else 0
            if last > self._revision:
                self._revision = last

    def wake(self) -> None:
        """Hand the watches that `publish` gave events to the dispatcher."""
        if self._waking:
            with self._lock:
                waking, self._waking = self._waking, []
            put = self._ready.put
            for w in waking:
                put(w)

    def _schedule(self, w: _Watch) -> None:
        if not w.scheduled:
            w.scheduled = True
            self._ready.put(w)

    # --- the dispatcher thread --------------------------------------------------------------

    def _run(self) -> None:
        ready = self._ready
        while True:
            w = ready.get()
            if w is None:
                return
            if isinstance(w, _Reset):
                self._resume(w)
                continue
            w.scheduled = False  # before draining: an event queued from now on reschedules it
            if w.cancelled:
                continue
            more = self._turn(w)
            if more and not w.cancelled:
                with self._lock:
                    self._schedule(w)

    def _turn(self, w: _Watch) -> bool:
        """Deliver up to _TURN events of `w` (replay first); True if it has more waiting."""
        budget = _TURN
        if w.frozen:
            return False  # a reset reschedules it
        replay = w.replay
        if replay is not None:
            try:
                for ev in replay:
                    if ev.kv.mod_revision > w.replay_to:
                        break
                    if w.frozen or not self._deliver(w, ev):
                        return False
                    budget -= 1
                    if budget == 0:
                        return True
            except Exception as exc:
                # History compacted under a long replay (or unreadable): end the watch, as etcd
                # does, rather than skip events.
                log.warning("watch %d ended during replay: %s", w.wid, exc)
                w.error = exc
                WatchHandle(self, w).cancel()
                return False
            w.replay = None
        pending = w.pending
        while pending and budget:
            if w.frozen or not self._deliver(w, pending.popleft()):
                return False
            budget -= 1
        return bool(pending)

    def _deliver(self, w: _Watch, ev: Event) -> bool:
        """Run the callback unless the watch was cancelled; False once it is."""
        if not w.prev_kv and ev.prev_kv is not None:
            ev = Event(ev.type, ev.kv)
        with w.lock:
            if w.cancelled:
                return False
            self._running = w.callback
            rev = ev.kv.mod_revision
            if rev == w.last_rev:
                w.last_n += 1
            else:
                w.last_rev, w.last_n = rev, 1
            try:
                w.callback(ev)
            except Exception:
                log.exception("watch %d callback failed on event at revision %d", w.wid,
                              ev.revision)
            finally:
                self._running = None
        return True

    def close(self, timeout: float | None = None) -> None:
        """Stop the dispatcher (events not yet delivered are dropped); idempotent.

        Waits at most `timeout` seconds (None: for ever) for a callback that is running: one
        that has not returned by then is left behind on the (daemon) dispatcher thread, with a
        warning, and no further callback starts."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for watches in self._exact.values():
                for w in watches:
                    w.cancelled = True
            for w in self._prefixes.values() + self._ranges.values():
                w.cancelled = True
            self._exact.clear()
            self._prefixes.clear()
            self._ranges.clear()
            self._count = 0
        self._ready.put(None)
        if self._thread.ident is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "watch callback %r has not returned within %s s of close(): closing "
                    "without it; its thread (%s) is left behind and runs no further callback",
                    self._running, timeout, self._thread.name,
                )
