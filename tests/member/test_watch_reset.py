"""WatchHub.reset: after a snapshot install replaced the key space and its history, every watch
resumes exactly after the last event it delivered (replay from the installed history, then
live), or ends with Compacted if the installed history no longer holds its next event.

A fake History stands for the key space: the test swaps its content (the install) and calls
reset, as the member does after the install's batch is durable. Callbacks that block on an
event let the test cut delivery at an exact point (the dispatcher is one thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedkv.errors import Compacted
from embedkv.member.watch import WatchHandle, WatchHub
from embedkv.raft.types import Snapshot
from embedkv.storage.requests import Event, EventType, Key, KeyValue, Put, key_bytes
from tests.storage.harness import Member as DirMember
from tests.waiting import wait_for

from .conftest import Collector


def _ev(rev: int, key: str, value: object = None) -> Event:
    return Event(EventType.PUT, KeyValue(key.encode(), value if value is not None else rev,
                                         rev, rev, 1))


class FakeHistory:
    """A key space's history: events by revision, a revision and a compact revision. `gate`,
    when set, holds every events() call until it is opened (a slow first read)."""

    def __init__(self, events: list[Event], compact: int = 0) -> None:
        self.install(events, compact)
        self.gate: threading.Event | None = None
        self.opened = 0  # events() calls so far

    def install(self, events: list[Event], compact: int = 0) -> None:
        self._events = list(events)
        self._revision = max((e.kv.mod_revision for e in events), default=0)
        self._compact = compact

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact

    def events(self, start_revision: int, key: Key, end: Key | None = None, *,
               prefix: bool = False) -> Iterator[Event]:
        assert not prefix
        self.opened += 1
        if start_revision < self._compact:
            raise Compacted(start_revision, self._compact)
        events = list(self._events)  # as of this call, like a read transaction
        if self.gate is not None and self.opened == 1:
            assert self.gate.wait(10)  # the first call is slow
        low = key_bytes(key)
        high = None if end is None else key_bytes(end)

        def selected(k: bytes) -> bool:
            if high is None:
                return k == low
            if high == b"\x00":
                return k >= low
            return low <= k < high

        return (ev for ev in events
                if ev.kv.mod_revision >= start_revision and selected(key_bytes(ev.kv.key)))


def _ids(events: list[Event]) -> list[tuple[int, bytes]]:
    return [(e.kv.mod_revision, key_bytes(e.kv.key)) for e in events]


class Blocker(Collector):
    """A Collector that stops (holding the dispatcher) on the first event `stop_at` accepts,
    until `release()`."""

    def __init__(self, stop_at: tuple[int, bytes] | None = None) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.stopped = threading.Event()
        self._go = threading.Event()

    def __call__(self, event: Event) -> None:
        super().__call__(event)
        if self.stop_at == (event.kv.mod_revision, key_bytes(event.kv.key)):
            self.stopped.set()
            assert self._go.wait(10)

    def release(self) -> None:
        self._go.set()


def _hub(history: FakeHistory) -> WatchHub:
    hub = WatchHub(history, history.revision)
    hub.start()
    return hub


def _publish(hub: WatchHub, history: FakeHistory, events: list[Event]) -> None:
    history.install(history._events + events, history.compact_revision)
    hub.publish(events)
    hub.wake()


# A follower's history: keys a and b; revision 11 is a txn of three events.
OLD = ([_ev(r, "a" if r % 2 else "b") for r in range(1, 11)]
       + [_ev(11, "t1"), _ev(11, "t2"), _ev(11, "t3")])
# The leader's, that the follower installs: the same up to 11, then more.
NEW = OLD + [_ev(r, "a" if r % 2 else "t2") for r in range(12, 31)]


def test_a_txn_cut_in_the_middle_resumes_after_the_last_delivered_event() -> None:
    history = FakeHistory([])
    hub = _hub(history)
    everything = Blocker(stop_at=(11, b"t1"))
    hub.watch(b"", everything, prefix=True)
    t_watch = Collector()
    hub.watch("t", t_watch, prefix=True)
    _publish(hub, history, OLD)
    assert everything.stopped.wait(10)  # t1 delivered, t2 and t3 queued
    history.install(NEW)
    hub.reset(30)
    everything.release()
    expected_all = _ids(NEW)
    assert _ids(everything.wait(len(NEW))) == expected_all
    expected_t = _ids([e for e in NEW if key_bytes(e.kv.key).startswith(b"t")])
    assert _ids(t_watch.wait(len(expected_t))) == expected_t
    # Live events after the reset come after the replay, once.
    later = [_ev(31, "t9"), _ev(32, "a")]
    _publish(hub, history, later)
    assert _ids(everything.wait(len(NEW) + 2)) == expected_all + _ids(later)
    assert _ids(t_watch.wait(len(expected_t) + 1)) == [*expected_t, (31, b"t9")]
    hub.close(5)
    assert len(everything.events) == len(NEW) + 2
    assert len(t_watch.events) == len(expected_t) + 1


def test_pending_events_come_from_the_new_history_once_in_order() -> None:
    """A slow callback holds the dispatcher: the other watches' events are queued, not yet
    delivered, when the reset comes."""
    history = FakeHistory([])
    hub = _hub(history)
    slow = Blocker(stop_at=(3, b"a"))
    hub.watch("a", slow)
    others = {sel: Collector() for sel in ("a", "b", "t2", "")}
    for sel, c in others.items():
        hub.watch(sel, c, prefix=sel == "")
    _publish(hub, history, OLD)
    assert slow.stopped.wait(10)
    # Different values in the installed history: what arrives must come from it.
    new = [_ev(e.kv.mod_revision, key_bytes(e.kv.key).decode(), ("new", e.kv.mod_revision))
           for e in NEW]
    history.install(new)
    hub.reset(30)
    slow.release()
    for sel, c in others.items():
        want = [e for e in new if (key_bytes(e.kv.key) == sel.encode() or sel == "")]
        got = c.wait(len(want))
        assert _ids(got) == _ids(want), sel
        # Delivered before the reset (old values) or after (new ones), each event once.
        assert all(e.kv.value in (e.kv.mod_revision, ("new", e.kv.mod_revision)) for e in got)
    want_a = [e for e in new if e.kv.key == b"a"]
    assert _ids(slow.wait(len(want_a))) == _ids(want_a)
    hub.close(5)
    for sel, c in others.items():
        assert len(c.events) == len([e for e in new if key_bytes(e.kv.key) == sel.encode()
                                     or sel == ""]), sel


def test_a_watch_still_replaying_its_start_revision_resumes_where_it_was() -> None:
    history = FakeHistory(OLD)
    hub = _hub(history)
    c = Blocker(stop_at=(5, b"a"))
    hub.watch(b"", c, prefix=True, start_revision=2)
    assert c.stopped.wait(10)
    history.install(NEW)
    hub.reset(30)
    c.release()
    want = _ids([e for e in NEW if e.kv.mod_revision >= 2])
    assert _ids(c.wait(len(want))) == want
    _publish(hub, history, [_ev(31, "z")])
    assert _ids(c.wait(len(want) + 1)) == [*want, (31, b"z")]
    hub.close(5)
    assert len(c.events) == len(want) + 1


def _two_watches(compact: int) -> tuple[WatchHub, FakeHistory, Collector, Collector,
                                        WatchHandle, WatchHandle]:
    """A watch on a (it saw revisions 1..9) and one on zzz (it saw nothing) at revision 11,
    then an install of NEW compacted at `compact`."""
    history = FakeHistory([])
    hub = _hub(history)
    a, quiet = Collector(), Collector()
    ha = hub.watch("a", a)
    hq = hub.watch("zzz", quiet)
    _publish(hub, history, OLD)
    a.wait(5)
    history.install(NEW, compact=compact)
    hub.reset(30)
    return hub, history, a, quiet, ha, hq


def test_watches_that_missed_nothing_survive_a_compacted_install() -> None:
    """The installed history is compacted past every event the watches saw, not past any
    they still need (the follower was at 11): they go on, without an error."""
    hub, history, a, quiet, ha, hq = _two_watches(compact=12)
    want = _ids([e for e in NEW if e.kv.key == b"a"])
    assert _ids(a.wait(len(want))) == want
    _publish(hub, history, [_ev(31, "zzz")])
    assert _ids(quiet.wait(1)) == [(31, b"zzz")]
    assert (ha.error, hq.error) == (None, None)
    hub.close(5)


def test_watches_whose_next_revision_was_compacted_end() -> None:
    hub, history, a, quiet, ha, hq = _two_watches(compact=13)  # 12 is gone
    wait_for(lambda: ha.error and hq.error, what="both watches to end")
    assert isinstance(ha.error, Compacted) and isinstance(hq.error, Compacted)
    assert ha.cancelled and hq.cancelled
    _publish(hub, history, [_ev(31, "zzz"), _ev(32, "a")])
    hub.close(5)
    assert len(a.events) == 5 and quiet.events == []


def test_a_watch_with_undelivered_compacted_events_ends_with_compacted() -> None:
    history = FakeHistory([])
    hub = _hub(history)
    slow = Blocker(stop_at=(1, b"a"))
    hub.watch("a", slow)
    b = Collector()
    hb = hub.watch("b", b)  # its events (2, 4, ...) wait behind the slow callback
    later = Collector()
    _publish(hub, history, OLD)
    assert slow.stopped.wait(10)
    hl = hub.watch("b", later)  # registered at 11: needs nothing before 12
    history.install(NEW, compact=12)
    hub.reset(30)
    slow.release()
    wait_for(lambda: hb.error is not None, what="the compacted watch to end")
    assert isinstance(hb.error, Compacted) and hb.cancelled
    assert b.events == []
    _publish(hub, history, [_ev(31, "b")])
    assert _ids(later.wait(1)) == [(31, b"b")]  # 12..30 hold no b: nothing lost
    assert hl.error is None
    hub.close(5)


def test_a_watch_registered_while_a_reset_is_pending_gets_each_event_once() -> None:
    history = FakeHistory(OLD)
    hub = _hub(history)
    slow = Blocker(stop_at=(12, b"s"))
    hub.watch("s", slow)
    _publish(hub, history, [_ev(12, "s")])
    assert slow.stopped.wait(10)  # the dispatcher is held
    history.install([*OLD, _ev(12, "s"), *(_ev(r, "q") for r in range(13, 31))])
    hub.reset(30)
    c = Collector()
    hub.watch(b"", c, prefix=True, start_revision=5)  # replays 5..30 from the new history
    slow.release()
    want = _ids([e for e in history._events if e.kv.mod_revision >= 5])
    assert _ids(c.wait(len(want))) == want
    _publish(hub, history, [_ev(31, "z")])
    assert _ids(c.wait(len(want) + 1))[-1] == (31, b"z")
    hub.close(5)
    assert len(c.events) == len(want) + 1


def test_a_reset_while_a_replay_is_being_opened() -> None:
    """watch() reads the first chunk of its replay in the caller's thread (here from the old
    history, slowly); a reset meanwhile resumes the watch from the installed history, and the
    replay watch() then finishes opening must not be delivered as well."""
    history = FakeHistory(OLD)
    history.gate = threading.Event()
    hub = _hub(history)
    c = Collector()
    done = threading.Event()

    def register() -> None:
        hub.watch(b"", c, prefix=True, start_revision=3)
        done.set()

    t = threading.Thread(target=register)
    t.start()
    wait_for(lambda: history.opened == 1, what="the replay to be opened")
    history.install(NEW)
    hub.reset(30)
    want = _ids([e for e in NEW if e.kv.mod_revision >= 3])
    assert _ids(c.wait(len(want))) == want
    history.gate.set()
    t.join(10)
    assert done.is_set()
    _publish(hub, history, [_ev(31, "z")])
    assert _ids(c.wait(len(want) + 1))[-1] == (31, b"z")
    hub.close(5)
    assert len(c.events) == len(want) + 1


def test_two_resets_in_a_row() -> None:
    """Two installs before the dispatcher gets to the first: the watch resumes once, from
    the second, and loses nothing between the two."""
    history = FakeHistory([])
    hub = _hub(history)
    slow = Blocker(stop_at=(1, b"a"))
    hub.watch("a", slow)
    c = Collector()
    hub.watch("q", c)
    _publish(hub, history, OLD)
    assert slow.stopped.wait(10)  # holds the dispatcher
    first = [*OLD, *(_ev(r, "q") for r in range(12, 19))]
    history.install(first)
    hub.reset(18)
    _publish(hub, history, [_ev(19, "q")])
    history.install([*first, _ev(19, "q"), *(_ev(r, "q") for r in range(20, 31))])
    hub.reset(30)
    _publish(hub, history, [_ev(31, "q")])
    slow.release()
    want = [(r, b"q") for r in range(12, 32)]
    assert _ids(c.wait(len(want))) == want
    hub.close(5)
    assert len(c.events) == len(want)


def test_reset_with_a_real_data_dir(tmp_path: Path) -> None:
    """The hub over a real key space: a follower's watches resume from the installed one."""
    leader = DirMember(tmp_path / "leader")
    follower = DirMember(tmp_path / "follower")
    for m in (leader, follower):
        for i in range(10):
            m.propose(Put(f"k{i % 3}", i))
    hub = WatchHub(follower.dd.kv, follower.dd.kv.revision)
    hub.start()
    c = Collector()
    hub.watch("k", c, prefix=True, start_revision=8)
    c.wait(4)  # revisions 8..11 (the first put is revision 2)
    for i in range(10, 20):
        leader.propose(Put(f"k{i % 3}", i))
    meta, chunks = leader.dd.snapshot_stream()
    with follower.dd.write() as w:
        w.install_snapshot(Snapshot(meta, b"".join(chunks)))
    hub.reset(follower.dd.kv.revision)
    got = c.wait(14)
    assert [(e.kv.mod_revision, e.kv.value) for e in got] == [(r, r - 2) for r in range(8, 22)]
    hub.close(5)
    leader.close()
    follower.close()


def test_fake_history_selects_like_the_key_space() -> None:
    h = FakeHistory(NEW, compact=3)
    assert _ids(list(h.events(11, "t2"))) == [(11, b"t2")] + [(r, b"t2")
                                                             for r in range(12, 31, 2)]
    assert len(list(h.events(3, b"\x00", b"\x00"))) == len(NEW) - 2
    assert _ids(list(h.events(11, "t", "u"))) == _ids([e for e in NEW if e.kv.mod_revision >= 11
                                                      and e.kv.key.startswith(b"t")])
    with pytest.raises(Compacted):
        h.events(2, "a")


def test_a_second_reset_before_a_resumed_watch_delivered_anything() -> None:
    """The first reset resumed the watch from revision 12 (all it may have missed); a second
    one comes before it delivered anything: it resumes from 12 again, not from where it was
    registered (compacted in both installed histories)."""
    history = FakeHistory([])
    hub = _hub(history)
    a = Blocker(stop_at=(1, b"a"))
    hub.watch("a", a)
    g = Blocker(stop_at=(19, b"g"))
    hub.watch("g", g)
    c = Collector()
    hc = hub.watch("q", c)  # registered at revision 0
    _publish(hub, history, OLD)  # no q
    assert a.stopped.wait(10)
    first = [*OLD, *(_ev(r, "q") for r in range(12, 19))]
    history.install(first, compact=12)
    hub.reset(18)
    _publish(hub, history, [_ev(19, "g")])  # g's turn comes after the first resume
    a.release()
    assert g.stopped.wait(10)  # the first reset resumed c; its turn is next
    history.install([*first, _ev(19, "g"), *(_ev(r, "q") for r in range(20, 31))], compact=12)
    hub.reset(30)
    g.release()
    want = [(r, b"q") for r in (*range(12, 19), *range(20, 31))]
    wait_for(lambda: len(c.events) >= len(want) or hc.error, what="the replay or an error")
    assert hc.error is None
    assert _ids(c.wait(len(want))) == want
    hub.close(5)
    assert len(c.events) == len(want)
