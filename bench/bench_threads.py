"""The floor CPython threads put under any design where 64 threads wait for a shared writer.

No storage and no Raft: 64 threads each queue a lock and block on it; one writer thread drains
the queue, sleeps `--fsync` seconds with the GIL released (an fsync's stand-in) and releases
the locks. What it prints is the most durable puts per second that such a pipeline can reach
on this machine, whatever the work per put. Run by hand: `python bench/bench_threads.py`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import threading
import time


def ceiling(threads: int, fsync: float, seconds: float) -> float:
    queue: collections.deque[threading.Lock] = collections.deque()
    bell = threading.Lock()
    bell.acquire()
    stop = False
    counts = [0] * threads

    def writer() -> None:
        while not stop:
            if not queue:
                bell.acquire(timeout=0.01)
                continue
            items = [queue.popleft() for _ in range(len(queue))]
            time.sleep(fsync)
            for lock in items:
                lock.release()

    def client(i: int) -> None:
        n = 0
        while not stop:
            lock = threading.Lock()
            lock.acquire()
            queue.append(lock)
            if bell.locked():
                with contextlib.suppress(RuntimeError):
                    bell.release()
            lock.acquire(timeout=0.1)
            n += 1
        counts[i] = n

    w = threading.Thread(target=writer)
    w.start()
    clients = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in clients:
        t.start()
    time.sleep(seconds)
    stop = True
    w.join()
    for t in clients:
        t.join()
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    for fsync in (0.0, 0.0005, 0.001):
        rate = ceiling(args.threads, fsync, args.seconds)
        print(f"{args.threads} threads, writer sleeps {fsync * 1e6:.0f} us per batch: "
              f"{rate:,.0f} round trips/s")


if __name__ == "__main__":
    main()
