"""The write path: proposals, group commit, exactly-once apply, restart, read barriers, errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from embedkv.errors import Compacted, FutureRevision, LeaseNotFound, Unavailable
from embedkv.member import Member
from embedkv.raft import ConfState, DropReason, ProposalDropped
from embedkv.storage import DataDir, Identity
from embedkv.storage.requests import (
    Compaction,
    Delete,
    DeleteResult,
    Put,
    PutResult,
    Txn,
    TxnResult,
    Value,
)

from .conftest import TICK, FakeClock


def test_open_elects_itself_and_applies_a_put(member: Member) -> None:
    assert member.member_id > 0 and member.cluster_id > 0
    result = member.propose(Put("k", {"v": 1})).result(5)
    assert isinstance(result, PutResult)
    kv = member.data_dir.kv.get("k")
    assert kv is not None and kv.value == {"v": 1} and kv.mod_revision == result.revision
    assert member.applied_index == member.data_dir.applied_index


def test_futures_are_standard_running_futures(member: Member) -> None:
    """propose/read_barrier hand out futures that start RUNNING (MemberFuture skips the
    set_running_or_notify_cancel round): they behave as any concurrent.futures.Future."""
    import asyncio
    import concurrent.futures as cf

    fut = member.propose(Put("f", 1))
    assert isinstance(fut, Future)
    assert not fut.cancel()  # queued: it cannot be taken back
    called: list[Future[Any]] = []
    fut.add_done_callback(called.append)
    done, not_done = cf.wait([fut, member.read_barrier()], timeout=5)
    assert not not_done and fut in done
    assert isinstance(fut.result(0), PutResult) and fut.exception() is None
    assert fut.done() and not fut.running() and not fut.cancelled()
    assert called == [fut]
    assert "finished" in repr(fut)
    late: list[Future[Any]] = []
    fut.add_done_callback(late.append)  # added after completion: runs at once
    assert late == [fut]
    with pytest.raises(cf.InvalidStateError):
        fut.set_result(None)

    barrier = member.read_barrier()
    assert barrier.running() or barrier.done()
    assert not barrier.cancel()
    assert isinstance(barrier.result(5), int)

    async def awaited() -> Any:
        return await asyncio.wrap_future(member.propose(Put("f", 2)))

    assert isinstance(asyncio.run(awaited()), PutResult)
    assert list(cf.as_completed([member.propose(Put("f", 3))], timeout=5))


def test_results_of_delete_and_txn(member: Member) -> None:
    member.propose(Put("a", 1)).result(5)
    txn = Txn(compare=(Value("a") == 1,), success=(Put("a", 2),), failure=())
    res = member.propose(txn).result(5)
    assert isinstance(res, TxnResult) and res.succeeded
    deleted = member.propose(Delete("a", prev_kv=True)).result(5)
    assert isinstance(deleted, DeleteResult) and deleted.deleted == 1
    assert deleted.prev_kvs[0].value == 2
    assert member.data_dir.kv.get("a") is None


def test_invalid_requests_fail_at_once_and_write_nothing(member: Member) -> None:
    member.propose(Put("k", 1)).result(5)
    revision, applied = member.data_dir.kv.revision, member.data_dir.applied_index
    with pytest.raises(TypeError):
        member.propose(Put(123, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        member.propose(Put("k", object()))
    with pytest.raises(ValueError):
        member.propose(Put("", 1))
    with pytest.raises(TypeError):
        member.propose("not a request")  # type: ignore[arg-type]
    assert member.read_barrier().result(5) == applied  # nothing reached the log
    assert member.data_dir.kv.revision == revision


def test_state_machine_errors_fail_the_future(member: Member) -> None:
    with pytest.raises(LeaseNotFound):
        member.propose(Put("k", 1, lease=0x1234)).result(5)
    r = member.propose(Put("k", 1)).result(5).revision
    member.propose(Put("k", 2)).result(5)
    member.propose(Compaction(r)).result(5)
    with pytest.raises(Compacted):
        member.propose(Compaction(r)).result(5)
    with pytest.raises(FutureRevision):
        member.propose(Compaction(r + 1000)).result(5)
    assert member.data_dir.kv.get("k") is not None


def _run_writers(
    threads: int, per_thread: int, write: Callable[[int, int], int]
) -> dict[int, list[int]]:
    """Run `write(n, i)` for i in range(per_thread) on each of `threads` threads started
    together; return each thread's revisions in the order its writes returned them."""
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    go = threading.Barrier(threads)

    def writer(n: int) -> None:
        revisions = []
        try:
            go.wait()
            for i in range(per_thread):
                revisions.append(write(n, i))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        results[n] = revisions

    ts = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors
    return results


def test_concurrent_proposals_apply_exactly_once_in_order_and_share_batches(
    member: Member,
) -> None:
    threads, per_thread = 64, 25
    before = member.stats.batches, member.stats.applied
    start_revision = member.data_dir.kv.revision

    def put(n: int, i: int) -> int:
        res = member.propose(Put(f"t/{n}", i)).result(10)
        assert isinstance(res, PutResult)
        return res.revision

    results = _run_writers(threads, per_thread, put)
    writes = threads * per_thread
    every = sorted(r for revs in results.values() for r in revs)
    # Each put applied exactly once: one new revision each, no gaps, no repeats.
    assert every == list(range(start_revision + 1, start_revision + writes + 1))
    for n, revs in results.items():
        assert revs == sorted(revs)  # one caller's writes apply in the order it made them
        kv = member.data_dir.kv.get(f"t/{n}")
        assert kv is not None and kv.value == per_thread - 1 and kv.version == per_thread
    batches = member.stats.batches - before[0]
    assert member.stats.applied - before[1] == writes
    assert batches < writes  # group commit: concurrent writes share transactions


def test_proposals_queued_during_a_batch_ride_the_next_one(member: Member) -> None:
    """Deterministic group commit: while the core is busy, proposals gather, then share."""
    member.propose(Put("warm", 0)).result(5)
    before = member.stats.batches
    n = 100
    with member._core.lock:  # the writer cannot hand anything to Raft meanwhile
        futures = [member.propose(Put(f"g/{i}", i)) for i in range(n)]
    revisions = [f.result(10).revision for f in futures]
    assert revisions == sorted(revisions) and len(set(revisions)) == n
    assert member.stats.batches - before <= 3


def test_restart_keeps_everything(path: Path, clock: FakeClock) -> None:
    with Member.open(path, tick_interval=TICK, clock=clock) as m:
        ident = m.member_id, m.cluster_id
        for i in range(20):
            m.propose(Put(f"k{i}", i)).result(5)
        m.propose(Delete("k0")).result(5)
        lease = m.grant_lease(60).result(5)
        m.propose(Put("leased", 1, lease=lease.id)).result(5)
        revision, applied = m.data_dir.kv.revision, m.data_dir.applied_index
    with Member.open(path, tick_interval=TICK, clock=clock) as m:
        assert (m.member_id, m.cluster_id) == ident
        assert m.data_dir.kv.revision == revision
        assert m.data_dir.applied_index > applied  # the new term's empty entry
        assert m.data_dir.kv.get("k0") is None
        values = [m.data_dir.kv.get(f"k{i}") for i in range(1, 20)]
        assert [kv.value if kv else None for kv in values] == list(range(1, 20))
        assert m.lease_time_to_live(lease.id) == (60, 60.0)  # the fake clock stood still
        res = m.propose(Put("after", 1)).result(5)
        assert res.revision == revision + 1


def test_read_barrier_covers_every_acknowledged_write(member: Member) -> None:
    for i in range(5):
        member.propose(Put("k", i)).result(5)
        applied = member.data_dir.applied_index
        index = member.read_barrier().result(5)
        assert index >= applied
        assert member.data_dir.applied_index >= index


def test_read_barriers_write_nothing(member: Member) -> None:
    member.propose(Put("k", 1)).result(5)
    member.read_barrier().result(5)
    batches, rounds = member.stats.batches, member.stats.read_rounds
    for _ in range(20):
        member.read_barrier().result(5)
    assert member.stats.read_rounds == rounds + 20
    assert member.stats.batches == batches  # a ReadIndex round commits no transaction


def test_concurrent_read_barriers_share_rounds(member: Member) -> None:
    member.read_barrier().result(5)
    before = member.stats.read_rounds
    with member._core.lock:  # readers arriving meanwhile share one ReadIndex round
        futures = [member.read_barrier() for _ in range(50)]
    indexes = [f.result(5) for f in futures]
    assert min(indexes) >= 1
    assert member.stats.read_rounds - before <= 3

    # And from many threads at once, while writes go on.
    got: list[int] = []
    lock = threading.Lock()

    def reader() -> None:
        for _ in range(10):
            i = member.read_barrier().result(10)
            with lock:
                got.append(i)

    ts = [threading.Thread(target=reader) for _ in range(16)]
    for t in ts:
        t.start()
    for i in range(20):
        member.propose(Put("w", i)).result(5)
    for t in ts:
        t.join(30)
    assert len(got) == 160


class _Dropping:
    """Wraps a RaftNode so that every proposal is dropped for want of a leader."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def propose_batch(self, data: Any) -> None:
        raise ProposalDropped(DropReason.NO_LEADER)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


class _LosingReads:
    """Wraps a RaftNode so that the first ReadIndex requests vanish without an answer."""

    def __init__(self, node: Any, lose: int) -> None:
        self._node = node
        self.lose = lose

    def read_index(self, context: bytes) -> None:
        if self.lose > 0:
            self.lose -= 1
            return
        self._node.read_index(context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


def test_a_lost_read_index_request_is_asked_again(member: Member) -> None:
    member.propose(Put("k", 1)).result(5)
    losing = _LosingReads(member._core.node, lose=2)
    with member._core.lock:
        member._core.node = losing  # type: ignore[assignment]
    rounds, applied = member.stats.read_rounds, member.data_dir.applied_index
    assert member.read_barrier().result(5) >= applied
    assert losing.lose == 0 and member.stats.read_rounds == rounds + 3


def test_proposal_without_result_fails_with_unavailable_after_the_timeout(path: Path) -> None:
    with Member.open(path, durable=False, tick_interval=TICK, request_timeout=0.2) as m:
        with m._core.lock:
            m._core.node = _Dropping(m._core.node)  # type: ignore[assignment]
        future: Future[Any] = m.propose(Put("k", 1))
        with pytest.raises(Unavailable):
            future.result(10)
        assert m.data_dir.kv.get("k") is None


def test_open_without_a_quorum_is_unavailable(path: Path) -> None:
    with DataDir.open(path, durable=False) as dd:
        dd.bootstrap(Identity(7, 1), ConfState(voters=frozenset({1, 2})))
    before = set(threading.enumerate())
    with pytest.raises(Unavailable):
        Member.open(path, durable=False, tick_interval=TICK, request_timeout=0.2)
    assert set(threading.enumerate()) <= before
    DataDir.open(path).close()  # and the data dir was released


def test_durable_member_with_a_fake_clock_still_commits(path: Path) -> None:
    with Member.open(path, tick_interval=TICK, clock=FakeClock()) as m:
        assert m.data_dir.durable
        assert m.propose(Put("k", 1)).result(5).revision > 1


def _raft_log_rows(m: Member) -> list[int]:
    env = m.data_dir._env
    with env.read() as txn:
        return [int.from_bytes(k, "big") for k, _ in txn.cursor(db=env.dbs[b"raft_log"])]


def test_a_member_alone_writes_no_raft_log(path: Path) -> None:
    """Nobody could ever be sent those entries: each batch compacts what it applied."""
    with Member.open(path, durable=False, tick_interval=TICK) as m:
        for i in range(50):
            m.propose(Put("k", i)).result(5)
        applied = m.data_dir.applied_index
        assert applied > 50 and m.data_dir.log.first_index() == applied + 1
        assert _raft_log_rows(m) == []
    with Member.open(path, durable=False, tick_interval=TICK) as m:  # restarts from it
        kv = m.data_dir.kv.get("k")
        assert kv is not None and kv.value == 49
        assert m.propose(Put("k", 50)).result(5).revision == kv.mod_revision + 1
        assert m.data_dir.log.first_index() == m.data_dir.applied_index + 1


def test_raft_log_is_compacted_behind_the_applied_index(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a learner to feed, the log keeps LOG_RETAIN entries behind the applied index."""
    from embedkv.member import writer as writer_module

    monkeypatch.setattr(writer_module, "LOG_RETAIN", 10)
    monkeypatch.setattr(writer_module, "LOG_COMPACT_EVERY", 20)
    with DataDir.open(path, durable=False) as dd:
        dd.bootstrap(Identity(7, 1), ConfState(voters=frozenset({1}), learners=frozenset({2})))
    with Member.open(path, durable=False, tick_interval=TICK) as m:
        for i in range(100):
            m.propose(Put("k", i)).result(5)
        first, applied = m.data_dir.log.first_index(), m.data_dir.applied_index
        assert first > 1 and 10 <= applied - first < 10 + 20 + 2
        assert _raft_log_rows(m) == list(range(first, applied + 1))
    with Member.open(path, durable=False, tick_interval=TICK) as m:  # restarts from it
        kv = m.data_dir.kv.get("k")
        assert kv is not None and kv.value == 99
        assert m.propose(Put("k", 100)).result(5)


# --- durable members: the callers of a batch are woken while the next one commits ---------


def test_member_future_finishes_quietly_unless_it_has_callbacks() -> None:
    from embedkv.member.futures import MemberFuture

    quiet: MemberFuture[Any] = MemberFuture()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(quiet.result(5)))
    waiter.start()
    assert quiet._finish_quietly("r")
    waiter.join(5)
    assert got == ["r"] and quiet.done() and quiet.result() == "r"
    assert not quiet._finish_quietly("again")  # completed once only
    assert quiet.result() == "r"

    failed: MemberFuture[Any] = MemberFuture()
    assert failed._finish_quietly(LeaseNotFound(7))
    assert isinstance(failed.exception(0), LeaseNotFound)

    with_callback: MemberFuture[Any] = MemberFuture()
    calls: list[Any] = []
    with_callback.add_done_callback(calls.append)
    assert not with_callback._finish_quietly("r")  # its callback must not run here
    assert not with_callback.done() and not calls
    with_callback.set_result("r")
    assert calls == [with_callback]


def test_durable_concurrent_puts_results_errors_and_callbacks(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many callers on a durable member: every future completes once with its own outcome
    (results and state-machine errors), and no done-callback ever runs inside a write
    transaction, also one added after the outcome was set aside for a later wake-up."""
    from embedkv.member import writer as writer_mod
    from embedkv.storage.requests import LeaseRevoke

    callback_in_txn: list[bool] = []
    late_callbacks: list[Any] = []

    def note(fut: Future[Any]) -> None:
        # DataDir records the thread with an open write batch: it must not be ours.
        callback_in_txn.append(m.data_dir._writer == threading.get_ident())

    real_wake = writer_mod.LogWriter._wake_deferred
    real_complete = writer_mod.LogWriter._complete_deferred

    def add_late_callbacks(self: Any) -> None:
        for i, (fut, _) in enumerate(self._deferred):
            if i % 7 == 0:  # some futures get a callback after their outcome was set aside
                fut.add_done_callback(note)
                late_callbacks.append(fut)

    def wake(self: Any) -> Any:
        add_late_callbacks(self)
        return real_wake(self)

    def complete(self: Any) -> None:
        add_late_callbacks(self)
        real_complete(self)

    monkeypatch.setattr(writer_mod.LogWriter, "_wake_deferred", wake)
    monkeypatch.setattr(writer_mod.LogWriter, "_complete_deferred", complete)

    threads, per_thread = 12, 25
    with Member.open(path, durable=True, tick_interval=TICK) as m:
        start = m.data_dir.kv.revision

        def put(n: int, i: int) -> int:
            fut = m.propose(Put(f"d/{n}", i))
            if i % 5 == 0:
                fut.add_done_callback(note)
            res = fut.result(10)
            assert isinstance(res, PutResult)
            if i % 8 == 0:
                with pytest.raises(LeaseNotFound):
                    m.propose(LeaseRevoke(10_000 + n)).result(10)
            return res.revision

        results = _run_writers(threads, per_thread, put)
        every = sorted(r for revs in results.values() for r in revs)
        assert every == list(range(start + 1, start + threads * per_thread + 1))
        for revs in results.values():
            assert revs == sorted(revs)
        assert m.stats.batches < threads * per_thread
    assert callback_in_txn and not any(callback_in_txn)
    assert late_callbacks and all(f.done() for f in late_callbacks)


def test_durable_member_close_completes_what_it_committed(path: Path) -> None:
    """Closing right after a burst of durable puts: each future either has its result (its
    batch committed) or fails with Closed; none is left waiting."""
    from embedkv.errors import Closed

    with Member.open(path, durable=True, tick_interval=TICK) as m:
        futures = [m.propose(Put(f"c/{i}", i)) for i in range(200)]
        m.close()
        for fut in futures:
            exc = fut.exception(10)
            assert exc is None or isinstance(exc, Closed)
        done = [f for f in futures if f.exception() is None]
    with Member.open(path, durable=True, tick_interval=TICK) as m:
        for i, fut in enumerate(futures):
            kv = m.data_dir.kv.get(f"c/{i}")
            if fut in done:
                assert kv is not None and kv.value == i  # a result means it is on disk


def test_a_compaction_is_finished_in_bounded_steps_by_the_writer(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Compaction entry only records the work; the writer does it a step per batch and
    while idle, so no single transaction does it all."""
    from embedkv.member import writer as writer_module
    from tests.waiting import wait_for

    monkeypatch.setattr(writer_module, "COMPACT_STEP", 16)
    with Member.open(path, durable=False, tick_interval=TICK) as m:
        for i in range(200):
            m.propose(Put(f"k{i % 10}", i)).result(5)
        batches = m.stats.batches
        m.propose(Compaction(m.data_dir.kv.revision)).result(5)
        wait_for(lambda: not m.data_dir.compaction_pending, what="the compaction's work done")
        assert m.stats.batches - batches > 200 // 16  # many bounded steps, not one
        assert m.data_dir.verify().ok
