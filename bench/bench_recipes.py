"""Recipe throughput against the raw store operations they are made of, in the same run.

Lock acquire/release round trips per second, uncontended and with 8 contending threads,
against the raw lower bound of the same writes without the recipe (lease grant, create txn,
revoke); queue put + get/ack items per second with 4 producers and 4 consumers, against raw
put + delete of the same keys by 4+4 threads. python-etcd3 / an etcd gateway are not run here
(no etcd on this machine). Prints only; `--quick` for a short run; `--durable` to fsync.

    python bench/bench_recipes.py [--quick] [--durable]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable

import embedkv
from embedkv import Put, Version


def timed(threads: int, per: int, body: Callable[[int, int], None]) -> float:
    """Run `body(thread, i)` `per` times on each of `threads` threads; operations per second."""
    def run(t: int) -> None:
        for i in range(per):
            body(t, i)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return threads * per / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--durable", action="store_true")
    a = p.parse_args()
    per = 20 if a.quick else 100
    with tempfile.TemporaryDirectory() as tmp, embedkv.open(
        f"{tmp}/data", durable=a.durable
    ) as s:
        print(f"durable={a.durable}, {per} round trips per thread")

        def lock_rt(t: int, i: int) -> None:
            with s.lock("bench"):
                pass

        def raw_rt(t: int, i: int) -> None:  # the writes a lock round trip makes, no waiting
            lease = s.lease(10, keepalive=False)
            key = f"raw/{lease.id:016x}"
            s.txn(compare=[Version(key) == 0], success=[Put(key, "", lease=lease.id)])
            lease.revoke()

        for threads in (1, 8):
            r = timed(threads, per, raw_rt)
            lk = timed(threads, per, lock_rt)
            print(f"lock round trips, {threads} thread(s): {lk:8.0f}/s"
                  f"   raw grant+create+revoke: {r:8.0f}/s")

        q = s.queue("bench", ttl=30)
        n = per * 4

        def producer(t: int, i: int) -> None:
            q.put(i)

        def consumer(t: int, i: int) -> None:
            q.get(timeout=60).ack()

        start = time.perf_counter()
        prods = threading.Thread(target=timed, args=(4, per, producer))
        prods.start()
        timed(4, per, consumer)
        prods.join()
        qps = n / (time.perf_counter() - start)

        def raw_put(t: int, i: int) -> None:
            s.put(f"rawq/{t}/{i}", i)

        def raw_del(t: int, i: int) -> None:
            s.delete(f"rawq/{t}/{i}")

        start = time.perf_counter()
        prods = threading.Thread(target=timed, args=(4, per, raw_put))
        prods.start()
        prods.join()
        timed(4, per, raw_del)
        raw = n / (time.perf_counter() - start)
        print(f"queue items (4 producers, 4 consumers): {qps:8.0f}/s"
              f"   raw put+delete, 4+4 threads: {raw:8.0f}/s")
        q.close()


if __name__ == "__main__":
    main()
