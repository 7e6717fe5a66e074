"""Backup, restore and defrag: how long they take, how big the files are, and how many writes
four writer threads get in while a backup runs. Prints only (the lead curates RESULTS.md).

    python bench/bench_backup.py            # 200k keys of 100-byte values
    python bench/bench_backup.py --quick    # 20k keys
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

# Measure this checkout's embedkv, not whatever `pip install -e` points at (as bench_store.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import embedkv

MIB = 1 << 20


def _overwrites(root: Path, n: int) -> None:
    """The issue's case: n overwrites of one key, compacted, then defragmented."""
    path = root / "overwrites"
    with embedkv.open(path) as store:
        for i in range(n):
            store.put("k", i)
        store.compact(store.revision)
    start = time.perf_counter()
    result = embedkv.defrag(path)
    took = time.perf_counter() - start
    print(f"{n} durable overwrites of one key, compacted: data.mdb "
          f"{result.size_before / MIB:.2f} MiB -> {result.size_after / MIB:.3f} MiB "
          f"by defrag in {took * 1000:.1f} ms")


def _big(root: Path, keys: int) -> None:
    path, dest = root / "big", root / "big.snap"
    with embedkv.open(path, durable=False) as store:
        for start in range(0, keys, 1000):
            store.update({f"key/{i:07d}": "x" * 100 for i in range(start, start + 1000)})
        stop = threading.Event()
        counts = [0] * 4

        def writer(n: int) -> None:
            while not stop.is_set():
                store.put(f"writer/{n}", counts[n])
                counts[n] += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            while sum(counts) < 1000:  # the writers are running (a benchmark, not a test)
                time.sleep(0.01)
            first, start = sum(counts), time.perf_counter()
            time.sleep(1.0)
            alone = (sum(counts) - first) / (time.perf_counter() - start)
            before = sum(counts)
            start = time.perf_counter()
            revision = store.backup(dest)
            took = time.perf_counter() - start
            during = sum(counts) - before
        finally:
            stop.set()
            for t in threads:
                t.join()
    print(f"backup of {keys} keys (100-byte values) at revision {revision}: {took:.2f} s, "
          f"{os.path.getsize(dest) / MIB:.1f} MiB file; four writers made {during} writes "
          f"meanwhile ({during / took:.0f}/s; {alone:.0f}/s in the second before)")
    start = time.perf_counter()
    embedkv.restore(dest, root / "restored")
    took = time.perf_counter() - start
    print(f"restore: {took:.2f} s, data.mdb {os.path.getsize(root / 'restored/data.mdb') / MIB:.1f}"
          " MiB")
    start = time.perf_counter()
    result = embedkv.defrag(path)
    took = time.perf_counter() - start
    print(f"defrag of the source: {result.size_before / MIB:.1f} MiB -> "
          f"{result.size_after / MIB:.1f} MiB in {took:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k keys instead of 200k")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        root = Path(tmp)
        _overwrites(root, 2000 if args.quick else 20_000)
        _big(root, 20_000 if args.quick else 200_000)


if __name__ == "__main__":
    main()
