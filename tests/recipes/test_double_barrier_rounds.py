"""A double barrier reused under one name: each round is its own. The interleavings are driven
explicitly — the last leavers of a round are held just before their final store write (the
one that clears the round) while the next round begins."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import embedkv
from embedkv import Delete
from tests.waiting import wait_for


class Gate:
    """Holds the named threads at their next transaction that deletes something, until
    opened: the point where a leaver, having seen everyone gone, clears the round."""

    def __init__(self, store: embedkv.Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held: set[str] = set()
        self.waiting: set[str] = set()
        self._names: set[str] = set()
        self._open = threading.Event()
        self._mu = threading.Lock()
        real = store.txn

        def txn(*args: Any, **kwargs: Any) -> embedkv.TxnResult:
            me = threading.current_thread().name
            if me in self._names and any(isinstance(op, Delete)
                                         for op in kwargs.get("success", ())):
                with self._mu:
                    self.waiting.add(me)
                self._open.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "txn", txn)

    def hold(self, *names: str) -> None:
        self._names.update(names)

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def gate(store: embedkv.Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate(store, monkeypatch)
    try:
        yield g
    finally:
        g.open()


def _thread(name: str, fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), name=name, daemon=True)
    t.start()
    return t, out


def test_the_next_round_is_not_released_by_the_last_rounds_ready_key(
    store: embedkv.Store, gate: Gate
) -> None:
    """Round 1 (a, b) is leaving: both are gone, but the leavers have not yet cleared the
    round. A newcomer of round 2 must wait for a second participant of its own round, not
    pass on round 1's open state; later both rounds complete, and the late clearing of
    round 1 leaves round 2 open."""
    a, b = store.double_barrier("job", 2, ttl=5), store.double_barrier("job", 2, ttl=5)
    ta, got_a = _thread("a", lambda: a.enter(timeout=10))
    assert b.enter(timeout=10)
    ta.join(10)
    assert got_a == [True]

    gate.hold("a-leave", "b-leave")
    la, left_a = _thread("a-leave", lambda: a.leave(timeout=10))
    lb, left_b = _thread("b-leave", lambda: b.leave(timeout=10))
    # Both have left the round (their keys are gone); at least one leaver is held just
    # before clearing it (the other may be waiting to see the last one go, or held too).
    wait_for(lambda: gate.waiting, what="a leaver about to clear round 1")
    wait_for(lambda: store.count("_embedkv/double_barrier/job/w/") == 0, what="both gone")

    c = store.double_barrier("job", 2, ttl=5)
    assert not c.enter(timeout=0), "round 2's first participant passed alone"

    # Round 2 opens with two of its own while round 1's leavers are still held.
    c, d = store.double_barrier("job", 2, ttl=5), store.double_barrier("job", 2, ttl=5)
    tc, got_c = _thread("c", lambda: c.enter(timeout=10))
    assert d.enter(timeout=10)
    tc.join(10)
    assert got_c == [True]

    gate.open()  # round 1's late leavers now clear what they think is their round
    la.join(10)
    lb.join(10)
    assert left_a == [True] and left_b == [True]

    # Round 2 is still open: a participant that asks again (as one catching up after its
    # watch ended would) sees it open, and round 2 leaves normally.
    e = store.double_barrier("job", 2, ttl=5)
    assert not e.enter(timeout=0), "a third participant joined the open round 2"
    tc2, left_c = _thread("c-leave", lambda: c.leave(timeout=10))
    assert d.leave(timeout=10)
    tc2.join(10)
    assert left_c == [True]
    wait_for(lambda: store.count("_embedkv/double_barrier/job/") == 0, what="all cleared")


def test_many_rounds_under_one_name_each_wait_for_their_own_n(store: embedkv.Store) -> None:
    """Rounds of 3 participants back to back under one name, each round's participants
    arriving once the last round is all in, while it is leaving: nobody passes enter()
    before the 3rd participant of its own round arrived."""
    n, rounds = 3, 4
    arrived = [0] * rounds
    inside = [0] * rounds
    passed_early: list[tuple[int, int]] = []
    guard = threading.Lock()

    def participant(r: int) -> None:
        db = store.double_barrier("many", n, ttl=5)
        with guard:
            arrived[r] += 1
        assert db.enter(timeout=30)
        with guard:
            inside[r] += 1
            if arrived[r] < n:
                passed_early.append((r, arrived[r]))
        assert db.leave(timeout=30)

    threads = []
    for r in range(rounds):
        for _ in range(n):
            t = threading.Thread(target=participant, args=(r,), daemon=True)
            t.start()
            threads.append(t)
        wait_for(lambda: inside[r] == n, what=f"round {r} in")  # noqa: B023
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert passed_early == []
    wait_for(lambda: store.count("_embedkv/double_barrier/many/") == 0, what="all cleared")
