"""Where a durable put's time goes: timers around the log writer's steps, or a plain load to
sample with a profiler.

    python bench/profile_put.py                   # sequential puts from a worker thread
    python bench/profile_put.py --main            # ... from the main thread
    python bench/profile_put.py --threads 64      # a 64-thread load, no timers: run it under
        py-spy record --gil --threads -f raw -o out.txt -- python bench/profile_put.py --threads 64

The timers wrap methods from outside (a perf_counter_ns pair each, ~1 us), so the numbers are
per call medians with that overhead in them; they show proportions, not exact costs.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's embedkv

import embedkv
from embedkv.member import writer
from embedkv.storage import datadir, raftlog

VALUE = "v" * 100
STEPS: list[tuple[type, str]] = [
    (embedkv.Store, "put"),
    (writer.LogWriter, "run_here"),
    (writer.LogWriter, "_admit"),
    (writer.LogWriter, "_cycle"),
    (writer.LogWriter, "_handle"),
    (writer.LogWriter, "_compact_log"),
    (writer.LogWriter, "_release"),
    (writer.LogWriter, "_complete_deferred"),
    (datadir.WriteBatch, "__init__"),
    (datadir.WriteBatch, "apply"),
    (datadir.WriteBatch, "commit"),
    (raftlog.RaftLog, "append"),
]


def instrument() -> dict[str, list[int]]:
    """Wrap each step with a timer; returns the per-step lists of nanoseconds."""
    times: dict[str, list[int]] = collections.defaultdict(list)
    for cls, name in STEPS:
        original = getattr(cls, name)
        tag = f"{cls.__name__}.{name}"

        def timed(*args: Any, _f: Callable[..., Any] = original, _t: str = tag,
                  **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return _f(*args, **kwargs)
            finally:
                times[_t].append(time.perf_counter_ns() - started)

        setattr(cls, name, timed)
    return times


def sequential(path: Path, n: int, on_main: bool) -> None:
    times = instrument()

    def run() -> None:
        with embedkv.open(path) as store:
            for i in range(1000):
                store[f"g/{i}"] = VALUE
            times.clear()
            for i in range(n):
                store.put(f"s/{i}", VALUE)

    if on_main:
        run()
    else:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    for tag, ns in sorted(times.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"{tag:32s} calls {len(ns):6d}  median {statistics.median(ns) / 1e3:7.1f} us")


def concurrent(path: Path, n: int, threads: int) -> None:
    with embedkv.open(path) as store:
        def work(t: int) -> None:
            for i in range(n // threads):
                store.put(f"c/{t}/{i}", VALUE)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rate = n // threads * threads / (time.perf_counter() - started)
        print(f"{rate:,.0f} puts/s from {threads} threads")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--main", action="store_true", help="sequential puts on the main thread")
    parser.add_argument("--threads", type=int, default=0, help="a concurrent load instead")
    parser.add_argument("-n", type=int, default=3000, help="puts (default 3000; x20 for --threads)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        if args.threads:
            concurrent(Path(tmp) / "store", args.n * 20, args.threads)
        else:
            sequential(Path(tmp) / "store", args.n, args.main)
    return 0


if __name__ == "__main__":
    sys.exit(main())
