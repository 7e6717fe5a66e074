"""Throughput and latency of the member runtime against raw py-lmdb (a benchmark, not a test).

    python -m tests.member.bench_member [--threads 64] [--puts 200] [--seq 1000] [--rounds 5]

Baselines: raw LMDB with one durable transaction per put (sequential latency, i.e. one fsync),
and raw LMDB with a writer thread batching every pending put into one durable transaction
(group commit), fed by the same number of threads through a queue. The targets: member puts
from many threads >= 50% of the batched raw baseline; a sequential member put <= one fsync +
100 us. On a shared machine the disk and CPU are noisy: raw and member runs alternate, and
the best of `--rounds` runs of each is reported.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import lmdb

from embedkv.member import Member
from embedkv.storage import WriteBatch
from embedkv.storage.requests import Put


def raw_sequential(path: Path, n: int) -> float:
    """Median seconds of one durable single-put transaction."""
    env = lmdb.open(str(path), map_size=1 << 30, max_dbs=2)
    db = env.open_db(b"kv")
    lat = []
    for i in range(n):
        t = time.perf_counter()
        with env.begin(write=True, db=db) as txn:
            txn.put(b"k%d" % i, b"v" * 16)
        lat.append(time.perf_counter() - t)
    env.close()
    return statistics.median(lat)


def raw_batched(path: Path, threads: int, per_thread: int) -> float:
    """Puts per second: a writer thread commits all pending puts in one durable transaction."""
    env = lmdb.open(str(path), map_size=1 << 30, max_dbs=2)
    db = env.open_db(b"kv")
    q: queue.SimpleQueue[tuple[bytes, threading.Event] | None] = queue.SimpleQueue()

    def writer() -> None:
        while True:
            items = [q.get()]
            while not q.empty():
                items.append(q.get_nowait())
            stop = False
            with env.begin(write=True, db=db) as txn:
                for item in items:
                    if item is None:
                        stop = True
                    else:
                        txn.put(item[0], b"v" * 16)
            for item in items:
                if item is not None:
                    item[1].set()
            if stop:
                return

    def client(c: int) -> None:
        for i in range(per_thread):
            done = threading.Event()
            q.put((b"c%d-%d" % (c, i), done))
            done.wait()

    w = threading.Thread(target=writer)
    w.start()
    elapsed = _run_clients(client, threads)
    q.put(None)
    w.join()
    env.close()
    return threads * per_thread / elapsed


def _run_clients(client: object, threads: int) -> float:
    ts = [threading.Thread(target=client, args=(c,)) for c in range(threads)]  # type: ignore[arg-type]
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return time.perf_counter() - t


def member_sequential(path: Path, n: int) -> tuple[float, float]:
    """(median latency, median latency minus that put's own commit) of one durable put.

    The commit (LMDB's write-out and fsync) is timed inside the member, so the difference is
    what the runtime, the core and the state machine add to one fsync, whatever the disk does.
    """
    commits: list[float] = []
    real_commit = WriteBatch.commit

    def timed_commit(self: WriteBatch) -> None:
        t = time.perf_counter()
        real_commit(self)
        commits.append(time.perf_counter() - t)

    WriteBatch.commit = timed_commit  # type: ignore[method-assign]
    try:
        with Member.open(path) as m:
            for i in range(20):
                m.propose(Put(f"warm{i}", i)).result()
            lat = []
            extra = []
            for i in range(n):
                del commits[:]
                t = time.perf_counter()
                m.propose(Put(f"k{i}", "v" * 16)).result()
                took = time.perf_counter() - t
                lat.append(took)
                extra.append(took - sum(commits))
    finally:
        WriteBatch.commit = real_commit  # type: ignore[method-assign]
    return statistics.median(lat), statistics.median(extra)


def member_concurrent(path: Path, threads: int, per_thread: int) -> tuple[float, float]:
    """(puts per second, mean puts per batch) from `threads` threads through the member."""
    with Member.open(path) as m:
        m.propose(Put("warm", 0)).result()
        before = m.stats.batches

        def client(c: int) -> None:
            for i in range(per_thread):
                m.propose(Put(f"c{c}-{i}", "v" * 16)).result()

        elapsed = _run_clients(client, threads)
        batches = m.stats.batches - before
    return threads * per_thread / elapsed, threads * per_thread / max(batches, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--puts", type=int, default=200, help="puts per thread")
    parser.add_argument("--seq", type=int, default=1000, help="sequential puts")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each (best is kept)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="embedkv-bench-"))
    try:
        raw_lats, meds, extras = [], [], []
        raw_tps, tps, per_batches = [], [], []
        for r in range(args.rounds):
            raw_lats.append(raw_sequential(root / f"raw-seq{r}", args.seq))
            med, extra = member_sequential(root / f"member-seq{r}", args.seq)
            meds.append(med)
            extras.append(extra)
            raw_tps.append(raw_batched(root / f"raw-batch{r}", args.threads, args.puts))
            tp, per_batch = member_concurrent(root / f"member-conc{r}", args.threads, args.puts)
            tps.append(tp)
            per_batches.append(per_batch)
        print(f"sequential durable put (best median of {args.rounds}): raw lmdb one-put txn "
              f"{min(raw_lats) * 1e6:.0f} us, member {min(meds) * 1e6:.0f} us = its own commit "
              f"+ {min(extras) * 1e6:.0f} us")
        raw_tp, tp = max(raw_tps), max(tps)
        print(f"{args.threads} threads durable puts/s (best of {args.rounds}): raw lmdb batched "
              f"{raw_tp:.0f}, member {tp:.0f} ({tp / raw_tp:.0%}), "
              f"{statistics.mean(per_batches):.1f} puts per batch")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
