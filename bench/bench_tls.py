"""The cost of mutual TLS on peer links (issue #10, "Bench"): three members on loopback, each
in its own process, once with ``tls=`` and once with ``insecure=True``, in the same run.

    python bench/bench_tls.py            # 2 rounds of each, interleaved; prints a markdown table
    python bench/bench_tls.py --quick    # smaller counts (a smoke run)

Rows, each through the leader and durable: puts/s from 64 writer threads, and sequential put
latency (p50, p99). The rounds alternate (plain, TLS, plain, TLS, ...) so that a change in the
machine's load hits both sides alike; the ratio is TLS / plain of the medians. Goal: TLS
throughput >= 0.8 of plaintext.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Measure this checkout's embedkv and harness, not whatever `pip install -e` points at.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.harness import Cluster

DEFAULT_TIMING = {"tick_interval": 0.1, "election_tick": 10, "heartbeat_tick": 1,
                  "request_timeout": 5.0}
THREADS = 64


def one_round(root: Path, tls: bool, sequential: int, per_thread: int) -> dict[str, float]:
    """One fresh 3-member cluster; the loads run in the leader's process."""
    cluster = Cluster(root, 3, options=DEFAULT_TIMING, tls=tls)
    try:
        cluster.start()
        leader = cluster.wait_leader()
        seq = leader.call("load", kind="put", threads=1, count=sequential, prefix="seq/",
                          timeout=600)
        many = leader.call("load", kind="put", threads=THREADS, count=per_thread,
                           prefix="c64/", timeout=600)
        errors = sum(seq["errors"].values()) + sum(many["errors"].values())
        return {"p50_us": seq["p50_us"], "p99_us": seq["p99_us"], "puts_64": many["rate"],
                "errors": float(errors)}
    finally:
        cluster.kill_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each (default 2)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the members' data dirs go (default: a temporary dir)")
    a = parser.parse_args(argv)
    sequential, per_thread = (300, 20) if a.quick else (2000, 100)
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for r in range(a.rounds):
            for tls in (False, True):
                results[tls].append(
                    one_round(Path(tmp) / f"r{r}-{'tls' if tls else 'tcp'}", tls, sequential,
                              per_thread))

    def med(tls: bool, key: str) -> float:
        return statistics.median(x[key] for x in results[tls])

    def each(tls: bool, key: str, fmt: str) -> str:
        return ", ".join(fmt.format(x[key]) for x in results[tls])

    print(f"`python bench/bench_tls.py{' --quick' if a.quick else ''}` on "
          f"{time.strftime('%Y-%m-%d')}: Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end; {a.rounds} rounds of each, interleaved; "
          f"errors: plain {med(False, 'errors'):.0f}, TLS {med(True, 'errors'):.0f}.\n")
    print("| measure (via the leader, durable) | TLS | insecure=True (same run) | ratio | goal "
          "| met |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratio = med(True, "puts_64") / med(False, "puts_64")
    print(f"| puts/s, {THREADS} writers (each round) | {med(True, 'puts_64'):,.0f} "
          f"({each(True, 'puts_64', '{:,.0f}')}) | {med(False, 'puts_64'):,.0f} "
          f"({each(False, 'puts_64', '{:,.0f}')}) | {ratio:.2f} | >= 0.80 | "
          f"{'yes' if ratio >= 0.8 else 'no'} |")
    for key, label in (("p50_us", "sequential put p50"), ("p99_us", "sequential put p99")):
        print(f"| {label} | {med(True, key):,.0f} us | {med(False, key):,.0f} us | "
              f"{med(True, key) / med(False, key):.2f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
