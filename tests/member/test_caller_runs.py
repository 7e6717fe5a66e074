"""Who runs a batch: a waiting caller on its own thread when the log writer is idle
(LogWriter.run_here), but never the main thread, where Python signal handlers run.

The timer test is the reason: a handler that raises in the middle of a batch run on the main
thread stopped the member (tried: blocking signals around the batch does not help once any
other thread takes the signal), and one that raised inside the stdlib Future's Condition.wait
left that lock held, so the writer completing the future hung (MemberFuture's gate).
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import pytest

from embedkv.member import Member
from embedkv.member import writer as writer_module
from embedkv.storage.requests import Get, Put

from .conftest import TICK


class Interrupted(Exception):
    pass


TARGETS = (f"{os.sep}embedkv{os.sep}", f"concurrent{os.sep}futures", f"{os.sep}threading.py")


def _count_cycles(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Which threads ran Ready cycles."""
    seen: collections.Counter[str] = collections.Counter()
    original = writer_module.LogWriter._cycle

    def cycle(self: writer_module.LogWriter) -> bool:
        seen[threading.current_thread().name] += 1
        return original(self)

    monkeypatch.setattr(writer_module.LogWriter, "_cycle", cycle)
    return seen


def test_a_waiting_caller_runs_its_batch_on_its_own_thread(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No ticks during the test: a tick makes the writer thread run a cycle, and a put that
    # arrives meanwhile rightly rides that batch instead of running its own.
    member = Member.open(path, durable=False, tick_interval=3600.0, request_timeout=5.0)
    with member:
        _only_callers_run_batches(member, monkeypatch)


def _only_callers_run_batches(member: Member, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_cycles(monkeypatch)
    results = []

    def writes() -> None:
        for i in range(20):
            results.append(member.propose(Put(f"t/{i}", i), run=True).result(5).revision)

    worker = threading.Thread(target=writes, name="caller")
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    assert results == sorted(results) and len(set(results)) == 20
    assert seen["caller"] >= 20  # every put was run by its caller, none waited for a hop
    # Without run=True the writer thread runs it, as before.
    before = seen["embedkv-log-writer"]
    member.propose(Put("w", 1)).result(5)
    assert seen["embedkv-log-writer"] > before


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer (POSIX)")
def test_signal_handlers_that_raise_during_puts_leave_the_member_consistent(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGALRM handler raises every ~200 us while the main thread puts fresh keys: each put
    either returns (and is applied) or raises Interrupted (applied or not); the member keeps
    working and its revisions, keys and disk agree."""
    assert threading.current_thread() is threading.main_thread()
    seen = _count_cycles(monkeypatch)
    member = Member.open(path, tick_interval=TICK)
    done: list[int] = []
    interrupted = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        # Raise in the library and in what it waits with; not in this file (its bookkeeping
        # must not be cut in half) nor in pytest's machinery.
        if frame is not None and any(part in frame.f_code.co_filename for part in TARGETS):
            raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        for i in range(1500):
            try:
                member.propose(Put(f"k/{i:05d}", i), run=True).result(10)
                done.append(i)
            except Interrupted:
                interrupted += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    try:
        assert interrupted > 10, "the timer did not interrupt the puts: the test proves nothing"
        writer = member._writer
        assert writer.failure is None and not writer.stopping
        assert seen["MainThread"] == 0  # run=True does not run batches on the main thread
        member.propose(Put("after", 1), run=True).result(10)
        kv = member.data_dir.kv
        keys = [x.key for x in kv.range(Get("k/", prefix=True)).kvs]
        present = {int(str(k).split("/")[1]) for k in keys}
        assert set(done) <= present  # every acknowledged put is there
        # Each applied put made exactly one revision (a store starts at revision 1, and
        # "after" made one more): nothing was applied twice or half.
        assert kv.revision == 1 + len(present) + 1
    finally:
        member.close()
    with Member.open(path, tick_interval=TICK) as again:
        assert again.data_dir.kv.revision == 1 + len(present) + 1
