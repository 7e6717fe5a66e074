"""Lock and RWLock: exclusion and fencing under thread contention, fairness, dead holders."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedkv
from embedkv.recipes import SessionLost
from tests.recipes.safety import lock_dead_holder, lock_exclusion, lock_fair
from tests.waiting import wait_for


def test_exclusion_and_strictly_increasing_tokens_with_8_threads(store: embedkv.Store) -> None:
    lock_exclusion([store], "db")


def test_waiters_are_served_in_arrival_order(store: embedkv.Store) -> None:
    lock_fair([store], "fair")


def test_a_dead_holders_lock_frees_itself_and_its_late_write_is_refused(
    store: embedkv.Store,
) -> None:
    lock_dead_holder([store], "f")


def test_lost_lock_calls_back_and_is_no_longer_held(store: embedkv.Store) -> None:
    lock = store.lock("cb", ttl=1)
    lost = threading.Event()
    lock.on_lost(lost.set)
    assert lock.acquire()
    lock.session.stall()
    wait_for(lost.is_set, what="lost callback")
    assert not lock.is_held


def test_a_callback_registered_after_release_is_not_called(store: embedkv.Store) -> None:
    lock = store.lock("cb-closed", ttl=5)
    assert lock.acquire()
    session = lock.session
    lock.release()  # closed on purpose: not a loss
    called: list[int] = []
    session.on_lost(lambda: called.append(1))
    assert called == []


def test_nonblocking_and_timeout_leave_no_key(store: embedkv.Store) -> None:
    a, b = store.lock("nb"), store.lock("nb")
    assert a.acquire(blocking=False)
    assert not b.acquire(blocking=False)
    assert not b.acquire(timeout=0.05)
    assert store.count("_embedkv/lock/nb/") == 1
    with pytest.raises(RuntimeError):
        a.acquire()  # not reentrant
    a.release()
    with pytest.raises(RuntimeError):
        a.release()
    with pytest.raises(RuntimeError):
        a.held()
    assert b.acquire(blocking=False)
    b.release()


def test_waiting_on_a_closed_store_raises_closed(tmp_path: object) -> None:
    import pathlib

    s = embedkv.open(pathlib.Path(str(tmp_path)) / "d", durable=False, tick_interval=0.01)
    a, b = s.lock("c"), s.lock("c")
    assert a.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            b.acquire()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    wait_for(lambda: s.count("_embedkv/lock/c/") == 2, what="b queued")
    s.close()
    t.join(10)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], embedkv.Closed | SessionLost)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"name": "a/b"}, ValueError),
        ({"name": ""}, ValueError),
        ({"name": 3}, TypeError),
        ({"name": "x", "ttl": 0}, ValueError),
        ({"name": "x", "ttl": -1}, ValueError),
        ({"name": "x", "ttl": 1.5}, TypeError),
        ({"name": "x", "ttl": True}, TypeError),
    ],
)
def test_bad_arguments(store: embedkv.Store, kwargs: dict[str, object], exc: type) -> None:
    name = kwargs.pop("name")
    with pytest.raises(exc):
        store.lock(name, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="separator"):
        store.rwlock("a/b")
    with pytest.raises(ValueError):
        store.lock("ok").acquire(timeout=-1)


def test_rwlock_readers_share_writer_excludes_and_waits_in_order(store: embedkv.Store) -> None:
    rw = store.rwlock("rw", ttl=5)
    r1, r2 = rw.read(), rw.read()
    assert r1.acquire(blocking=False) and r2.acquire(blocking=False)
    w = rw.write()
    assert not w.acquire(blocking=False)
    got = threading.Event()
    t = threading.Thread(target=lambda: (w.acquire(), got.set()))
    t.start()
    wait_for(lambda: store.count("_embedkv/rwlock/rw/") == 3, what="writer queued")
    r3 = rw.read()
    assert not r3.acquire(blocking=False)  # a reader after a waiting writer waits (fair)
    r1.release()
    assert not got.wait(0.05)
    r2.release()
    wait_for(got.is_set, what="writer holds")
    assert not rw.read().acquire(blocking=False)
    w.release()
    t.join(10)
    assert r3.acquire(timeout=10)
    r3.release()


MODEL = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@MODEL
@given(st.lists(st.tuples(st.sampled_from(["acquire", "release"]), st.integers(0, 2)), max_size=20))
def test_lock_matches_a_model(store: embedkv.Store, ops: list[tuple[str, int]]) -> None:
    """Non-blocking acquire/release by three clients against: one holder, first come."""
    name = f"model{store.revision}"
    locks = [store.lock(name) for _ in range(3)]
    holder: int | None = None
    last_token = 0
    for op, i in ops:
        if op == "acquire":
            if locks[i].is_held:
                with pytest.raises(RuntimeError):
                    locks[i].acquire(blocking=False)
                continue
            ok = locks[i].acquire(blocking=False)
            assert ok == (holder is None)
            if ok:
                holder = i
                assert locks[i].token > last_token
                last_token = locks[i].token
        else:
            if holder == i:
                locks[i].release()
                holder = None
            else:
                with pytest.raises(RuntimeError):
                    locks[i].release()
        assert [lk.is_held for lk in locks] == [j == holder for j in range(3)]
    for lk in locks:
        if lk.is_held:
            lk.release()


@MODEL
@given(st.lists(st.tuples(st.sampled_from(["read", "write", "release"]), st.integers(0, 3)),
                max_size=20))
def test_rwlock_matches_a_model(store: embedkv.Store, ops: list[tuple[str, int]]) -> None:
    """Non-blocking read/write acquisitions and releases by four clients against: readers
    share, a writer is alone (a refused non-blocking try leaves no one waiting)."""
    rw = store.rwlock(f"rwmodel{store.revision}")
    held: dict[int, tuple[str, embedkv.recipes.Lock]] = {}
    for op, i in ops:
        if op == "release":
            if i in held:
                held.pop(i)[1].release()
            continue
        if i in held:
            continue
        writers = [c for c, (kind, _) in held.items() if kind == "write"]
        expect = not writers if op == "read" else not held
        lock = rw.read() if op == "read" else rw.write()
        assert lock.acquire(blocking=False) == expect, (op, i, held)
        if expect:
            held[i] = (op, lock)
        assert all(lk.is_held for _, lk in held.values())
    for _, lk in held.values():
        lk.release()
    assert store.count("_embedkv/rwlock/") == 0
