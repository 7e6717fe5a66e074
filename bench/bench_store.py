"""Store benchmarks against raw py-lmdb baselines measured in the same run.

    python bench/bench_store.py            # full run; rewrites the "Store" section of RESULTS.md
    python bench/bench_store.py --quick    # smaller counts, prints only
    python bench/bench_store.py --no-write # full counts, prints only (e.g. to take medians)
    python bench/bench_store.py --keys 100000  # the scale section on 100k keys (default 1M;
                                               # 20k with --quick; 0 skips it)

Goals (issue #4, the put goals as issue #15 restated them from what was measured: not to
regress), as ratios to baselines taken on the same machine in the same run:
- durable puts from 64 threads >= 0.41 x raw py-lmdb driven in the same threading shape (64
  waiting threads, group commit by one writer); issue #4's 0.5 x raw py-lmdb batched 100 per
  fsync'd txn and 10x etcd 3.4 (~5k puts/s, 64 clients) are kept as rows without a goal;
- sequential durable put median latency <= one fsync'd raw LMDB txn + 350 us;
- serializable gets from one thread >= 300k/s (raw py-lmdb: one read txn per get);
- watch callback latency after commit: p99 <= 2 ms.

Goals (issue #15, "The default read path"), same-run ratios:
- linearizable gets from one thread >= 0.7 x serializable gets (one member);
- iterating keys(), values() and items() of a store of 1M keys (100-byte values) >= 0.8 x the
  throughput of one range() over the same keys, in constant memory;
- with 10,000 prefix watches on distinct prefixes, sequential puts (durable=False, one
  thread) >= 0.8 x the no-watch put rate.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

# Measure this checkout's embedkv, not whatever `pip install -e` points at (as bench_storage.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import embedkv

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PUT_BUDGET_US = 350
"""The sequential put's allowance over one fsync'd raw txn (issue #15's restated goal)."""
VALUE = "v" * 100
RAW_VALUE = b"v" * 100
THREADS = 64
RAW_BATCH = 100  # puts per fsync'd txn of the raw baseline for the 64-thread row (issue #4)
ETCD_64_CLIENTS = 5000.0


@dataclass
class Numbers:
    raw_batched_puts: float = 0.0
    raw_group_puts: float = 0.0  # raw py-lmdb behind the store's threading shape (group commit)
    store_concurrent_puts: float = 0.0
    raw_fsync_txn_us: float = 0.0
    store_put_median_us: float = 0.0
    store_put_p99_us: float = 0.0
    worker_put_median_us: float = 0.0  # the same, from a thread other than the main one
    worker_raw_fsync_txn_us: float = 0.0
    raw_gets: float = 0.0
    store_serializable_gets: float = 0.0
    storage_gets: float = 0.0
    store_linearizable_gets: float = 0.0
    watch_p50_us: float = 0.0
    watch_p99_us: float = 0.0
    watch_e2e_p99_us: float = 0.0
    # issue #15: puts/s (durable=False, one thread) without watches and with WATCHES prefix
    # watches, each put matched by one of them / by none
    # each (1 / median put time, puts / total time)
    puts_no_watch: tuple[float, float] = (0.0, 0.0)
    puts_watched: tuple[float, float] = (0.0, 0.0)
    puts_unwatched: tuple[float, float] = (0.0, 0.0)
    puts_one_watch: tuple[float, float] = (0.0, 0.0)  # one prefix watch matched by every put
    scale: Scale | None = None


@dataclass
class Scale:
    """The scale section: one store of `keys` keys with 100-byte values."""

    keys: int
    load: float = 0.0  # keys/s, TXN_PUTS puts per txn, durable=False
    rates: dict[str, float] = field(default_factory=dict)  # records/s of each way of reading
    rss_kib: dict[str, int] = field(default_factory=dict)  # anonymous RSS growth, KiB
    gets_serializable: float = 0.0
    gets_linearizable: float = 0.0
    reopen_s: float = 0.0
    dir_mib: float = 0.0
    rss_anon_mib: float = 0.0


def _raw_env(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True)


def raw_batched_puts(env: lmdb.Environment, lo: int, n: int, batch: int) -> float:
    """Seconds for one thread to write the keys the 64-thread store round writes (the same
    names, interleaved across threads as they arrive), `batch` per fsync'd LMDB transaction:
    the same durable work, so that B-tree page splits cost both sides alike."""
    per_thread = n // THREADS
    first = lo // THREADS
    keys = [
        f"c/{t}/{i}".encode()
        for i in range(first, first + per_thread)
        for t in range(THREADS)
    ]
    started = time.perf_counter()
    for start in range(0, len(keys), batch):
        with env.begin(write=True) as txn:
            for key in keys[start : start + batch]:
                txn.put(key, RAW_VALUE)
    return time.perf_counter() - started


def raw_group_commit_puts(env: lmdb.Environment, lo: int, n: int, threads: int) -> float:
    """Seconds for `threads` threads to put the same keys as the store round through raw
    py-lmdb with group commit: each thread queues its put and blocks on a lock of its own; one
    writer thread commits everything queued in one fsync'd transaction. The store's threading
    shape with no Raft, no MVCC and no futures: what a design in which each of 64 CPython
    threads waits for its own durable put can reach here. Like the store, the writer releases
    a batch's callers just before the next batch's commit (or at once when nothing is queued),
    so that they run while it waits for the fsync: releasing them right after their own commit
    gave ~1.5x fewer puts/s in a trial, as the writer then took smaller batches."""
    per_thread = n // threads
    queue: collections.deque[tuple[bytes, threading.Lock]] = collections.deque()
    bell = threading.Lock()
    bell.acquire()
    done = threading.Event()

    def writer() -> None:
        durable: list[threading.Lock] = []  # committed; their callers not released yet
        while not done.is_set():
            if not queue:
                for lock in durable:
                    lock.release()
                durable = []
                bell.acquire(timeout=0.05)
                continue
            items = [queue.popleft() for _ in range(len(queue))]
            with env.begin(write=True) as txn:
                for key, _ in items:
                    txn.put(key, RAW_VALUE)
                for lock in durable:
                    lock.release()
            durable = [lock for _, lock in items]
        for lock in durable:
            lock.release()

    def client(t: int) -> None:
        for i in range(lo, lo + per_thread):
            lock = threading.Lock()
            lock.acquire()
            queue.append((f"c/{t}/{i}".encode(), lock))
            if bell.locked():
                with contextlib.suppress(RuntimeError):
                    bell.release()
            lock.acquire()

    committer = threading.Thread(target=writer)
    committer.start()
    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    done.set()
    committer.join()
    return elapsed


def raw_gets(path: Path, n: int) -> float:
    """Gets/s of one thread, one read transaction per get (what a serializable get does)."""
    env = _raw_env(path)
    try:
        with env.begin(write=True) as txn:
            for i in range(1000):
                txn.put(b"k%08d" % i, RAW_VALUE)
        keys = [b"k%08d" % (i % 1000) for i in range(n)]
        begin = env.begin
        started = time.perf_counter()
        for k in keys:
            txn = begin()
            txn.get(k)
            txn.abort()
        return n / (time.perf_counter() - started)
    finally:
        env.close()


def store_concurrent_puts(store: embedkv.Store, lo: int, n: int, threads: int) -> float:
    """Seconds for `threads` threads to put `n` keys, each its share in sequence."""
    per_thread = n // threads
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(lo, lo + per_thread):
            store.put(f"c/{t}/{i}", VALUE)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - started


def concurrent_puts(
    store: embedkv.Store, raw_path: Path, group_path: Path, n: int, rounds: int = 5
) -> tuple[float, float, float]:
    """(store, raw, raw group commit) puts/s: rounds of the store's 64-thread puts alternate
    with rounds of both raw baselines, so that all see the same disk (see sequential_puts)."""
    env = _raw_env(raw_path)
    group_env = _raw_env(group_path)
    per_round = n // rounds // THREADS * THREADS
    store_s = raw_s = group_s = 0.0
    try:
        for r in range(rounds):
            raw_s += raw_batched_puts(env, r * per_round, per_round, RAW_BATCH)
            group_s += raw_group_commit_puts(group_env, r * per_round // THREADS, per_round,
                                             THREADS)
            store_s += store_concurrent_puts(store, r * per_round // THREADS, per_round, THREADS)
    finally:
        env.close()
        group_env.close()
    total = per_round * rounds
    return total / store_s, total / raw_s, total / group_s


def sequential_puts(
    store: embedkv.Store, raw_path: Path, n: int, prefix: str = "s/"
) -> tuple[float, float, float]:
    """(store median, store p99, raw median) in us of one durable put at a time.

    The store's puts and the raw baseline (one put per fsync'd LMDB transaction) alternate in
    blocks of 10, so both see the same disk: fsync time on a shared machine drifts by an order
    of magnitude within seconds, and measuring one after the other would compare two disks.
    """
    env = _raw_env(raw_path)
    store_times: list[float] = []
    raw_times: list[float] = []
    try:
        for lo in range(0, n, 10):
            for i in range(lo, lo + 10):
                t = time.perf_counter()
                with env.begin(write=True) as txn:
                    txn.put(b"k%08d" % i, RAW_VALUE)
                raw_times.append(time.perf_counter() - t)
            for i in range(lo, lo + 10):
                t = time.perf_counter()
                store.put(f"{prefix}{i}", VALUE)
                store_times.append(time.perf_counter() - t)
    finally:
        env.close()
    store_times.sort()
    return (
        statistics.median(store_times) * 1e6,
        store_times[int(len(store_times) * 0.99)] * 1e6,
        statistics.median(raw_times) * 1e6,
    )


def store_gets(get: Callable[[str], object], n: int) -> float:
    keys = [f"g/{i % 1000}" for i in range(n)]
    started = time.perf_counter()
    for k in keys:
        get(k)
    return n / (time.perf_counter() - started)


def watch_latency(store: embedkv.Store, n: int) -> tuple[float, float, float]:
    """(p50, p99) of callback time minus put() return time, clamped at 0 (a callback may run
    before put() returns), and p99 from put() call to callback (end to end), in us."""
    fired: dict[int, float] = {}
    done = threading.Event()

    def on_event(ev: embedkv.Event) -> None:
        fired[ev.value] = time.perf_counter()
        if ev.value == n - 1:
            done.set()

    called: list[float] = []
    returned: list[float] = []
    with store.watch("w/", on_event, prefix=True):
        for i in range(n):
            called.append(time.perf_counter())
            store.put("w/k", i)
            returned.append(time.perf_counter())
        if not done.wait(30):
            raise RuntimeError("watch events did not all arrive")
    after = sorted(max(0.0, fired[i] - returned[i]) for i in range(n))
    e2e = sorted(fired[i] - called[i] for i in range(n))
    def p(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(len(xs) * q))] * 1e6

    return p(after, 0.5), p(after, 0.99), p(e2e, 0.99)


def run(quick: bool, base: Path, keys: int) -> Numbers:
    scale = 0.2 if quick else 1.0
    n_puts = int(20_480 * scale)
    n_seq = int(1000 * scale)
    n_gets = int(300_000 * scale)
    num = Numbers()

    num.raw_gets = raw_gets(base / "raw-gets", n_gets)

    # Latency first, on a store of modest size (1,000 keys), then the 64-thread load in a
    # store of its own, so neither measure inherits the other's dirty pages.
    with embedkv.open(base / "store") as store:
        for i in range(1000):
            store[f"g/{i}"] = VALUE
        num.store_put_median_us, num.store_put_p99_us, num.raw_fsync_txn_us = sequential_puts(
            store, base / "raw-fsync", n_seq
        )
        # From a worker thread the waiting caller runs its own batch (docs/internals/runtime.md,
        # "Who runs the batch"); the main thread never does, so both are measured.
        worker_num: list[tuple[float, float, float]] = []
        worker = threading.Thread(target=lambda: worker_num.append(
            sequential_puts(store, base / "raw-fsync-worker", n_seq, "t/")))
        worker.start()
        worker.join()
        num.worker_put_median_us, _, num.worker_raw_fsync_txn_us = worker_num[0]
        # Serializable and linearizable gets alternate (three rounds each, the same calls),
        # so that both see the same machine; the first linearizable get pays one ReadIndex.
        store.get("g/0")
        num.store_serializable_gets, num.store_linearizable_gets = alternating_gets(
            store, [f"g/{i % 1000}" for i in range(n_gets)]
        )
        # The storage layer's own read (dd.kv.get), to show what the Store adds on top of it.
        kv = store._m.data_dir.kv
        num.storage_gets = store_gets(lambda k: kv.get(k), n_gets)
        num.watch_p50_us, num.watch_p99_us, num.watch_e2e_p99_us = watch_latency(store, n_seq)
    with embedkv.open(base / "store-concurrent") as store:
        num.store_concurrent_puts, num.raw_batched_puts, num.raw_group_puts = concurrent_puts(
            store, base / "raw-batched", base / "raw-group", n_puts
        )
    num.puts_no_watch, num.puts_watched, num.puts_unwatched, num.puts_one_watch = (
        watched_puts(base, int(6000 * scale))
    )
    if keys:
        num.scale = scale_section(base / "scale", keys, n_gets)
    return num


WATCHES = 10_000


def watched_puts(base: Path, n: int) -> list[tuple[float, float]]:
    """Sequential puts/s (durable=False, one thread), each as (1 / median put time, puts / total
    time): no watch, WATCHES prefix watches each put matched by one, the same watches matched
    by none, one prefix watch matched by every put.

    Three stores side by side: none, WATCHES watches on distinct prefixes, one watch; the four
    kinds of puts take turns put by put, in a shuffled order each turn (a callback of one store
    runs during the next put, whichever store that is), and each rate is 1 / the median time of
    its puts: on
    this shared machine the rate moves by 2x within seconds, and totals (even over alternating
    blocks) are ruled by a few stalls. The one-watch row shows what delivering a callback per
    put costs by itself."""

    def on_event(ev: embedkv.Event) -> None:
        pass

    times: list[list[float]] = [[], [], [], []]
    with embedkv.open(base / "plain", durable=False) as plain, \
            embedkv.open(base / "watched", durable=False) as watched, \
            embedkv.open(base / "one-watch", durable=False) as one:
        for i in range(WATCHES):
            watched.watch(f"w/{i:05d}/", on_event, prefix=True)
        one.watch("w/", on_event, prefix=True)
        kinds = (
            (plain, "w/{:05d}/k", 0),  # the same keys as the matched ones, nobody watches
            (watched, "w/{:05d}/k", 1),
            (watched, "y/{:05d}/k", 2),
            (one, "w/{:05d}/k", 3),
        )
        clock = time.perf_counter
        order = list(kinds)
        shuffle = random.Random(15).shuffle
        for i in range(n):
            shuffle(order)
            for store, pattern, slot in order:
                key = pattern.format((i * 7919) % WATCHES)
                started = clock()
                store.put(key, VALUE)
                times[slot].append(clock() - started)
    return [(1 / statistics.median(t), len(t) / sum(t)) for t in times]


TXN_PUTS = 128  # puts per txn when loading the scale store (the txn operation limit)


def _rss_anon_kib() -> int:
    """This process's anonymous resident memory (not LMDB's file-backed pages), KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scale_section(path: Path, keys: int, n_gets: int) -> Scale:
    """Load `keys` keys, then read them every way: iterate keys/values/items against one
    range() (and its keys-only form), random gets, reopen; sizes and memory."""
    sc = Scale(keys)
    names = [f"big/{i:08d}" for i in range(keys)]
    store = embedkv.open(path, durable=False)
    try:
        started = time.perf_counter()
        for lo in range(0, keys, TXN_PUTS):
            store.txn(success=[embedkv.Put(k, VALUE) for k in names[lo:lo + TXN_PUTS]])
        sc.load = keys / (time.perf_counter() - started)
        del names

        def walk(it: Iterable[object]) -> tuple[int, int]:
            """(records, peak anonymous RSS sampled while iterating, KiB)."""
            n = 0
            peak = _rss_anon_kib()
            for _ in it:
                n += 1
                if n % 50_000 == 0:
                    peak = max(peak, _rss_anon_kib())
            return n, peak

        def ranged(keys_only: bool) -> tuple[int, int]:
            got = store.range("", keys_only=keys_only)
            return len(got), _rss_anon_kib()  # while the whole result is held

        readers: list[tuple[str, Callable[[], tuple[int, int]]]] = [
            ("range()", lambda: ranged(False)),
            ("keys()", lambda: walk(store.keys())),
            ("range(keys_only=True)", lambda: ranged(True)),
            ("values()", lambda: walk(store.values())),
            ("items()", lambda: walk(store.items())),
        ]
        for name, read in readers:
            before = _rss_anon_kib()
            started = time.perf_counter()
            n, peak = read()
            sc.rates[name] = n / (time.perf_counter() - started)
            sc.rss_kib[name] = max(0, peak - before)
            if n != keys:
                raise RuntimeError(f"{name} read {n} records, not {keys}")
        rnd = random_keys(keys, n_gets)
        sc.gets_serializable, sc.gets_linearizable = alternating_gets(store, rnd)
        sc.rss_anon_mib = _rss_anon_kib() / 1024
    finally:
        store.close()
    sc.dir_mib = _dir_bytes(path) / (1 << 20)
    started = time.perf_counter()
    store = embedkv.open(path, durable=False)
    sc.reopen_s = time.perf_counter() - started
    store.close()
    return sc


def random_keys(keys: int, n: int) -> list[str]:
    rnd = random.Random(15)
    return [f"big/{rnd.randrange(keys):08d}" for _ in range(n)]


def alternating_gets(store: embedkv.Store, keys: list[str], block: int = 2000
                     ) -> tuple[float, float]:
    """(serializable, linearizable) gets/s of one thread over `keys`; the two kinds alternate
    in blocks, the same keys each, so that both see the same machine. The first linearizable
    get (before the clock starts) may pay one ReadIndex: the member proves it leads."""
    store.get(keys[0])
    ser_s = lin_s = 0.0
    for lo in range(0, len(keys), block):
        part = keys[lo:lo + block]
        started = time.perf_counter()
        for k in part:
            store.get(k, serializable=True)
        ser_s += time.perf_counter() - started
        started = time.perf_counter()
        for k in part:
            store.get(k)
        lin_s += time.perf_counter() - started
    return len(keys) / ser_s, len(keys) / lin_s


def report(num: Numbers, quick: bool) -> str:
    def ok(cond: bool) -> str:
        return "yes" if cond else "**no**"

    put_ratio = num.store_concurrent_puts / num.raw_batched_puts
    lin_ratio = num.store_linearizable_gets / num.store_serializable_gets
    none = num.puts_no_watch

    def vs_none(rates: tuple[float, float]) -> tuple[float, float]:
        return rates[0] / none[0], rates[1] / none[1]

    watched, unwatched, one_watch = (
        vs_none(num.puts_watched), vs_none(num.puts_unwatched), vs_none(num.puts_one_watch)
    )
    latency_budget = num.raw_fsync_txn_us + PUT_BUDGET_US
    group_ratio = num.store_concurrent_puts / num.raw_group_puts
    lines = [
        "## Store",
        "",
        f"`python bench/bench_store.py{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}: Python {platform.python_version()}, py-lmdb "
        f"{lmdb.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end; values of 100 bytes, "
        "durable (fsync) unless said otherwise. Baselines are raw py-lmdb on the same disk in "
        "the same run.",
        "",
        "| measure | store | baseline (same run) | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| durable puts, {THREADS} threads | {num.store_concurrent_puts:,.0f}/s | raw py-lmdb, "
        f"{RAW_BATCH} puts per fsync'd txn, interleaved: {num.raw_batched_puts:,.0f}/s | "
        f"{put_ratio:.2f} | (restated: next row) | |",
        f"| the same vs raw py-lmdb with group commit from {THREADS} threads | "
        f"{num.store_concurrent_puts:,.0f}/s | {THREADS} threads each wait for their own put, "
        f"one writer commits what is queued per fsync'd txn: {num.raw_group_puts:,.0f}/s | "
        f"{group_ratio:.2f} | >= 0.41 (not to regress) | {ok(group_ratio >= 0.41)} |",
        f"| durable puts, {THREADS} threads vs etcd 3.4 | {num.store_concurrent_puts:,.0f}/s | "
        f"etcd, 64 clients, HTTP gateway: ~{ETCD_64_CLIENTS:,.0f}/s (published) | "
        f"{num.store_concurrent_puts / ETCD_64_CLIENTS:.1f}x | (restated) | |",
        f"| sequential durable put, median | {num.store_put_median_us:,.0f} us "
        f"(p99 {num.store_put_p99_us:,.0f} us) | one fsync'd raw txn, interleaved: "
        f"{num.raw_fsync_txn_us:,.0f} us | +{num.store_put_median_us - num.raw_fsync_txn_us:,.0f}"
        f" us | <= +350 us | {ok(num.store_put_median_us <= latency_budget)} |",
        f"| the same from a worker thread (it runs its own batch) | "
        f"{num.worker_put_median_us:,.0f} us | one fsync'd raw txn, interleaved: "
        f"{num.worker_raw_fsync_txn_us:,.0f} us | "
        f"+{num.worker_put_median_us - num.worker_raw_fsync_txn_us:,.0f} us | <= +350 us | "
        f"{ok(num.worker_put_median_us <= num.worker_raw_fsync_txn_us + PUT_BUDGET_US)} |",
        f"| serializable gets, 1 thread | {num.store_serializable_gets:,.0f}/s | raw py-lmdb, "
        f"one read txn per get: {num.raw_gets:,.0f}/s | "
        f"{num.store_serializable_gets / num.raw_gets:.2f} | >= 300k/s | "
        f"{ok(num.store_serializable_gets >= 300_000)} |",
        f"| (storage alone: `dd.kv.get`, 1 thread) | {num.storage_gets:,.0f}/s | | "
        f"Store/storage {num.store_serializable_gets / num.storage_gets:.2f} | | |",
        f"| linearizable gets, 1 thread (the only voter: served locally) | "
        f"{num.store_linearizable_gets:,.0f}/s | serializable gets, alternating: "
        f"{num.store_serializable_gets:,.0f}/s | {lin_ratio:.2f} | >= 0.70 | "
        f"{ok(lin_ratio >= 0.7)} |",
        f"| watch callback after put() returns | p50 {num.watch_p50_us:,.0f} us, p99 "
        f"{num.watch_p99_us:,.0f} us | | | p99 <= 2 ms | {ok(num.watch_p99_us <= 2000)} |",
        f"| watch callback after put() is called | p99 {num.watch_e2e_p99_us:,.0f} us | | | | |",
        f"| puts, durable=False, 1 thread, {WATCHES:,} prefix watches, no put matched: "
        f"1 / median put time (by totals) | {num.puts_unwatched[0]:,.0f}/s "
        f"({num.puts_unwatched[1]:,.0f}/s) | no watch, taking turns put by put: "
        f"{none[0]:,.0f}/s ({none[1]:,.0f}/s) | {unwatched[0]:.2f} ({unwatched[1]:.2f}) | "
        f">= 0.80 | {ok(unwatched[0] >= 0.8)} |",
        f"| the same, each put matched by one of them (a callback per put) | "
        f"{num.puts_watched[0]:,.0f}/s ({num.puts_watched[1]:,.0f}/s) | no watch | "
        f"{watched[0]:.2f} ({watched[1]:.2f}) | >= 0.80 | {ok(watched[0] >= 0.8)} |",
        f"| one prefix watch matched by every put (what a callback per put costs) | "
        f"{num.puts_one_watch[0]:,.0f}/s ({num.puts_one_watch[1]:,.0f}/s) | no watch | "
        f"{one_watch[0]:.2f} ({one_watch[1]:.2f}) | | |",
        "",
    ]
    if num.scale is not None:
        lines += scale_report(num.scale)
    return "\n".join(lines)


def scale_report(sc: Scale) -> list[str]:
    def ok(cond: bool) -> str:
        return "yes" if cond else "**no**"

    whole = sc.rates["range()"]
    whole_keys = sc.rates["range(keys_only=True)"]
    lines = [
        f"Scale: one store of {sc.keys:,} keys, 100-byte values, durable=False. Iteration "
        "rates are records/s; memory is the growth of the process's anonymous RSS while "
        "reading (LMDB's file pages are not anonymous).",
        "",
        "| measure | store | baseline (same run) | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| load, {TXN_PUTS} puts per txn | {sc.load:,.0f} keys/s | | | | |",
        f"| one range() over all keys | {whole:,.0f}/s, +{sc.rss_kib['range()'] / 1024:,.0f} "
        "MiB | | | | |",
        f"| one range(keys_only=True) | {whole_keys:,.0f}/s, "
        f"+{sc.rss_kib['range(keys_only=True)'] / 1024:,.0f} MiB | | | | |",
    ]
    for name, base, base_name in (
        ("keys()", whole, "range()"),
        ("values()", whole, "range()"),
        ("items()", whole, "range()"),
    ):
        r = sc.rates[name] / base
        lines.append(
            f"| iterate {name} | {sc.rates[name]:,.0f}/s, +{sc.rss_kib[name] / 1024:,.1f} MiB "
            f"| {base_name}: {base:,.0f}/s | {r:.2f} | >= 0.80 | {ok(r >= 0.8)} |"
        )
    r = sc.rates["keys()"] / whole_keys
    lines += [
        f"| iterate keys() vs a keys-only range | {sc.rates['keys()']:,.0f}/s | "
        f"range(keys_only=True): {whole_keys:,.0f}/s | {r:.2f} | | |",
        f"| random gets, serializable | {sc.gets_serializable:,.0f}/s | | | | |",
        f"| random gets, linearizable | {sc.gets_linearizable:,.0f}/s | serializable: "
        f"{sc.gets_serializable:,.0f}/s | {sc.gets_linearizable / sc.gets_serializable:.2f} | "
        "| |",
        f"| reopen | {sc.reopen_s:.2f} s | | | | |",
        f"| data dir | {sc.dir_mib:,.0f} MiB | | | | |",
        f"| anonymous RSS after the reads | {sc.rss_anon_mib:,.0f} MiB | | | | |",
        "",
    ]
    return lines


def write_section(section: str) -> None:
    """Replace (or append) the "## Store" section of RESULTS.md, leaving other sections be."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(r"^## Store\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts; print only")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section without rewriting RESULTS.md")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to put the data dirs (default: a temp dir beside the repo)")
    parser.add_argument("--keys", type=int, default=None,
                        help="keys of the scale section (default 1,000,000; 20,000 with "
                             "--quick; 0 skips it)")
    args = parser.parse_args(argv)
    keys = args.keys if args.keys is not None else (20_000 if args.quick else 1_000_000)
    if keys < 0:
        parser.error("--keys must be >= 0")
    with tempfile.TemporaryDirectory(prefix="embedkv-bench-", dir=args.dir or HERE) as tmp:
        numbers = run(args.quick, Path(tmp), keys)
    section = report(numbers, args.quick)
    print(section)
    if not (args.quick or args.no_write):
        write_section(section)
        print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
