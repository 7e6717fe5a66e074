"""Open, close, exit without close, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from embedkv.errors import Closed, DataDirLocked, NoSpace, Unavailable
from embedkv.member import Member
from embedkv.member import writer as writer_module
from embedkv.storage import DataDir, WriteBatch
from embedkv.storage.requests import Put
from tests.waiting import wait_for

from .conftest import TICK, Collector
from .test_writes import _Dropping

REPO = Path(__file__).resolve().parents[2]


def test_close_stops_every_thread_and_is_idempotent(path: Path) -> None:
    before = set(threading.enumerate())
    m = Member.open(path, durable=False, tick_interval=TICK)
    started = set(threading.enumerate()) - before
    assert {t.name for t in started} == {
        "embedkv-engine", "embedkv-log-writer", "embedkv-watch-dispatcher"
    }
    seen = Collector()
    m.watch("k", seen)
    m.propose(Put("k", 1)).result(5)
    seen.wait(1)
    lease = m.grant_lease(5).result(5).id
    m.set_auto_keepalive(lease, True)
    m.close()
    assert set(threading.enumerate()) <= before
    assert m.closed
    m.close()
    for op in (
        lambda: m.propose(Put("k", 2)),
        lambda: m.read_barrier(),
        lambda: m.watch("k", seen),
        lambda: m.keepalive(lease),
        lambda: m.lease_time_to_live(lease),
        lambda: m.set_auto_keepalive(lease, False),
    ):
        with pytest.raises(Closed):
            op()
    with DataDir.open(path) as dd:  # the data dir was released, and holds the write
        assert dd.kv.get("k") is not None


def test_close_unwinds_every_task_left_on_the_engine_loop(path: Path) -> None:
    """A task still suspended on the engine loop at close (an inbound connection accepted as
    the transport closed) is cancelled and unwinds before the loop closes, not torn down
    later by the garbage collector, where its cleanup needs the closed loop."""
    m = Member.open(path, durable=False, tick_interval=TICK)
    unwound = threading.Event()
    started = threading.Event()

    async def connection() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            asyncio.get_running_loop().call_soon(lambda: None)  # needs the loop open
            unwound.set()

    loop = m._engine.loop
    tasks: list[asyncio.Task[None]] = []  # held, so only the loop can end it
    loop.call_soon_threadsafe(lambda: tasks.append(loop.create_task(connection())))
    assert started.wait(5)
    m.close()
    assert loop.is_closed()
    ended = unwound.is_set() and tasks[0].cancelled()
    assert ended, "the task was left suspended on the closed loop"


def test_close_fails_waiting_futures_with_closed(path: Path) -> None:
    m = Member.open(path, durable=False, tick_interval=TICK, request_timeout=60)
    with m._core.lock:
        m._core.node = _Dropping(m._core.node)  # type: ignore[assignment]
    futures: list[Future[Any]] = [m.propose(Put("k", i)) for i in range(5)]
    m.close()
    for f in futures:
        with pytest.raises(Closed):
            f.result(5)


def test_close_while_many_threads_propose_leaves_nothing_hanging(path: Path) -> None:
    before = set(threading.enumerate())
    m = Member.open(path, durable=False, tick_interval=TICK, request_timeout=60)
    outcomes: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(17)

    def writer(n: int) -> None:
        started.wait()
        for i in range(10_000):
            try:
                future = m.propose(Put(f"w/{n}", i)) if i % 3 else m.read_barrier()
            except Closed:
                break
            try:
                future.result(30)  # fails (never hangs) once the member closes
                outcome = "ok"
            except Closed:
                outcome = "closed"
            with lock:
                outcomes.append(outcome)

    ts = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in ts:
        t.start()
    started.wait()
    wait_for(lambda: len(outcomes) > 200, what="writes under way")
    m.close()
    for t in ts:
        t.join(60)
        assert not t.is_alive()
    assert set(threading.enumerate()) <= before
    assert outcomes.count("ok") > 200


def test_close_from_a_watch_callback(path: Path) -> None:
    before = set(threading.enumerate())
    m = Member.open(path, durable=False, tick_interval=TICK)
    m.watch("k", lambda e: m.close())
    m.propose(Put("k", 1)).result(5)
    wait_for(lambda: m.closed, what="the callback to close the member")
    wait_for(lambda: set(threading.enumerate()) <= before, what="the member's threads to end")


def test_close_from_a_future_done_callback(path: Path) -> None:
    before = set(threading.enumerate())
    m = Member.open(path, durable=False, tick_interval=TICK)
    others = [m.propose(Put(f"k{i}", i)) for i in range(20)]
    m.propose(Put("k", 1)).add_done_callback(lambda f: m.close())
    for f in others:
        with contextlib.suppress(Closed):  # those queued behind the closing write
            f.result(5)
    wait_for(lambda: m.closed, what="the callback to close the member")
    wait_for(lambda: set(threading.enumerate()) <= before, what="the member's threads to end")
    with DataDir.open(path) as dd:
        assert dd.kv.get("k") is not None


def test_second_open_is_refused(member: Member, path: Path) -> None:
    with pytest.raises(DataDirLocked):
        Member.open(path, tick_interval=TICK)
    assert member.propose(Put("still", "works")).result(5)


def test_exit_without_close_stops_threads_and_leaves_a_clean_data_dir(path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import threading
        from embedkv.errors import Closed
        from embedkv.member import Member
        from embedkv.storage.requests import Put

        m = Member.open({str(path)!r}, tick_interval=0.01)
        m.watch("k", lambda e: None)
        lease = m.grant_lease(60).result(5).id
        m.set_auto_keepalive(lease, True)
        for i in range(50):
            m.propose(Put("k", i)).result(5)
        # A pending write nobody waits for, and a user thread blocked on a future.
        m.propose(Put("late", 1))
        f = m.read_barrier()

        def wait():
            # Either outcome is right: the barrier resolved before exit, or exit closed it.
            try:
                f.result()
            except Closed:
                pass

        threading.Thread(target=wait, daemon=False).start()
        print("done", flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert "Traceback" not in proc.stderr
    with Member.open(path, durable=False, tick_interval=TICK) as m:
        kv = m.data_dir.kv.get("k")
        assert kv is not None and kv.value == 49


def test_acknowledged_writes_survive_a_crash(path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, threading
        from embedkv.member import Member
        from embedkv.storage.requests import Put

        m = Member.open({str(path)!r}, tick_interval=0.01)
        def write(n):
            for i in range(30):
                m.propose(Put(f"w/{{n}}", i)).result(5)
                os.write(1, f"w/{{n}}={{i}}\\n".encode())  # one write per line
        ts = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        m.propose(Put("unacknowledged", 1))
        os._exit(3)  # no close, no exit hooks: as if killed
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 3, proc.stderr
    acked = dict(line.split("=") for line in proc.stdout.split())
    assert len(acked) == 4
    with Member.open(path, durable=False, tick_interval=TICK) as m:
        for key, value in acked.items():
            kv = m.data_dir.kv.get(key)
            assert kv is not None and kv.value >= int(value)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """While the event is set, committing a write batch fails as storage does on a full disk."""
    full = threading.Event()
    commit = WriteBatch.commit

    def failing_commit(self: WriteBatch) -> None:
        if full.is_set():
            exc = NoSpace("no space left on device (simulated)")
            self.abort()
            self._dd.refuse_writes(exc)
            raise exc
        commit(self)

    monkeypatch.setattr(WriteBatch, "commit", failing_commit)
    monkeypatch.setattr(writer_module, "NO_SPACE_RETRY", 0.02)
    yield full


def test_no_space_refuses_writes_keeps_reads_and_recovers(
    member: Member, full_disk: threading.Event
) -> None:
    member.propose(Put("k", "kept")).result(5)
    seen = Collector()
    member.watch("k", seen)
    full_disk.set()
    with pytest.raises(NoSpace):
        member.propose(Put("k", "lost")).result(5)
    with pytest.raises(NoSpace):
        member.propose(Put("k", "refused"))  # at once, while the disk is full
    # Reads keep working: serializable, and linearizable ones too.
    kv = member.data_dir.kv.get("k")
    assert kv is not None and kv.value == "kept"
    assert member.read_barrier().result(5) == member.data_dir.applied_index
    full_disk.clear()

    def writable() -> bool:
        try:
            return member.propose(Put("k", "again")).result(5) is not None
        except NoSpace:
            return False

    wait_for(writable, what="writes to resume once space is back")
    assert [e.value for e in seen.wait(1)] == ["again"]  # nothing of the failed batch leaked
    assert member.data_dir.kv.get("k").value == "again"  # type: ignore[union-attr]


def test_no_space_under_concurrent_writers_loses_nothing_acknowledged(
    member: Member, full_disk: threading.Event
) -> None:
    acked: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(40):
            key = f"w/{n}/{i}"
            try:
                member.propose(Put(key, i)).result(5)
            except NoSpace:
                continue
            with lock:
                acked.append(key)

    ts = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in ts:
        t.start()
    wait_for(lambda: len(acked) > 20, what="some writes")
    full_disk.set()
    wait_for(lambda: member._writer.no_space is not None, what="the full disk to be noticed")
    full_disk.clear()
    for t in ts:
        t.join(60)
    for key in acked:
        assert member.data_dir.kv.get(key) is not None


def test_an_internal_error_stops_the_member_cleanly(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(threading.enumerate())
    m = Member.open(path, durable=False, tick_interval=TICK)
    m.propose(Put("k", "kept")).result(5)

    def broken(self: WriteBatch, entry: object) -> None:
        raise RuntimeError("bug in apply")

    monkeypatch.setattr(WriteBatch, "apply", broken)
    with pytest.raises(Unavailable):
        m.propose(Put("k", "lost")).result(5)
    assert "bug in apply" in caplog.text
    with pytest.raises(Unavailable, match="bug in apply"):
        m.propose(Put("k", "refused"))
    with pytest.raises(Unavailable):
        m.read_barrier()
    kv = m.data_dir.kv.get("k")
    assert kv is not None and kv.value == "kept"  # the failed batch was rolled back
    m.close()
    assert set(threading.enumerate()) <= before
