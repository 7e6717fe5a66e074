"""Every acknowledged durable write reached the disk: counted in the system calls a real store
makes, since no process-kill test can notice a missing fsync (the page cache survives them).

A child process opens a store and does sequential acknowledged puts, from the main thread (the
batch runs on the log writer thread) and from a worker thread (the batch runs on the calling
thread); after each put returns it makes a marker system call. Under ``strace -f -y`` the test
then checks that between one acknowledgement and the next there is an fdatasync/fsync of the
store's ``data.mdb`` (LMDB syncs data with fdatasync on Linux; it would use msync(MS_SYNC) only
with MDB_WRITEMAP, which embedkv does not set, and is counted as well). The same run with
``durable=False`` must show (almost) no syncs, which proves the check can fail.

Skipped, with the reason, where strace is missing or ptrace is not permitted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import embedkv

PUTS = 50
"""Acknowledged puts per thread (so 2 * PUTS in all)."""

MARK = "/embedkv-fsync-test-mark"
"""The path of the marker system calls (os.access on a file that does not exist)."""

CHILD = textwrap.dedent(
    f"""
    import os, sys, threading
    import embedkv

    path, durable, n = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    with embedkv.open(path, durable=durable) as store:
        store.put("warm-up", 0)
        os.access("{MARK}-start", os.F_OK)

        def puts(tag: str) -> None:
            for i in range(n):
                store.put(f"{{tag}}/{{i}}", i)
                os.access("{MARK}-ack", os.F_OK)  # put i is acknowledged

        puts("main")
        worker = threading.Thread(target=puts, args=("worker",))
        worker.start()
        worker.join()
        os.access("{MARK}-end", os.F_OK)
        assert store.count() == 2 * n + 1
    """
)

_PID = r"^(?:\[pid\s+\d+\]\s*|\d+\s+)?"
_SYNC = re.compile(_PID + r"(?:fsync|fdatasync)\(\d+<[^>]*data\.mdb>|" + _PID
                   + r"msync\(.*MS_SYNC")
_MARK = re.compile(_PID + r"(?:access|faccessat2?)\(.*" + re.escape(MARK) + r"-(\w+)")


def _strace() -> str:
    """The strace binary, or skip (visibly) when it is missing or may not trace."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed: cannot count fsync calls (apt-get install strace)")
    probe = subprocess.run(
        [strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync", sys.executable, "-c", "0"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace not permitted?): {probe.stderr.strip()}")
    return strace


def _trace(tmp_path: Path, durable: bool) -> list[str]:
    """Run the child under strace; return its sync and marker calls in order: "sync", or the
    marker's name ("start", "ack", "end")."""
    strace = _strace()
    out = tmp_path / f"trace-{durable}.txt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(embedkv.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    child = subprocess.run(
        [strace, "-f", "-qq", "-y", "-e", "signal=none", "-o", str(out), "-e",
         "trace=fsync,fdatasync,msync,sync_file_range,access,faccessat,faccessat2",
         sys.executable, "-c", CHILD, str(tmp_path / f"data-{durable}"), "1" if durable else "0",
         str(PUTS)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert child.returncode == 0, child.stderr
    calls: list[str] = []
    for line in out.read_text().splitlines():
        mark = _MARK.search(line)
        if mark:
            calls.append(mark.group(1))
        elif _SYNC.search(line):
            calls.append("sync")
    assert calls.count("ack") == 2 * PUTS and calls.count("start") == calls.count("end") == 1
    return calls[calls.index("start") : calls.index("end") + 1]


def _acks_without_sync(calls: list[str]) -> int:
    """Acknowledgements with no sync since the previous one (or since the start)."""
    missing = 0
    synced = False
    for call in calls:
        if call == "sync":
            synced = True
        elif call == "ack":
            missing += not synced
            synced = False
    return missing


def test_each_acknowledged_durable_put_was_synced(tmp_path: Path) -> None:
    calls = _trace(tmp_path, durable=True)
    assert calls.count("sync") >= 2 * PUTS
    assert _acks_without_sync(calls) == 0, calls


def test_non_durable_puts_are_not_synced(tmp_path: Path) -> None:
    """The control: without durability the same count falls far below the puts, so the check
    above can fail (it would, if a durable commit skipped its sync)."""
    calls = _trace(tmp_path, durable=False)
    assert calls.count("sync") < PUTS // 5, calls
    assert _acks_without_sync(calls) > 2 * PUTS - PUTS // 5
