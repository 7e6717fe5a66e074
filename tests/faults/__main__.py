"""Fault campaigns from the command line: seeded runs one after another until the time is up.

    python -m tests.faults --duration 600 --seed 1          # a ten-minute campaign
    python -m tests.faults --runs 1 --seed 17 ...           # replay one run (as printed)

Each run prints its one summary line; a failing run also prints its findings, where its
history, fault schedule and logs were saved, and the command that replays it. The exit status
is 1 if any run found an anomaly.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .nemesis import KINDS
from .runner import RunConfig, report, run


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds the campaign runs (no new run starts after)")
    parser.add_argument("--runs", type=int, default=None, help="stop after this many runs")
    parser.add_argument("--seed", type=int, default=1, help="the first run's seed (then +1)")
    parser.add_argument("--run-length", type=float, default=20.0,
                        help="seconds of traffic per run")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="client threads per member")
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--nemesis", default=",".join(KINDS),
                        help=f"comma-separated faults among {','.join(KINDS)} (or 'none')")
    parser.add_argument("--mixed", type=float, default=0.3,
                        help="probability that a fault slot gets a second fault")
    parser.add_argument("--request-timeout", type=float, default=3.0,
                        help="the members' request timeout (each operation's timeout)")
    parser.add_argument("--keep", type=Path, default=Path("faults-runs"),
                        help="where failing runs are saved")
    parser.add_argument("--verbose", action="store_true", help="list each run's faults")
    args = parser.parse_args(argv)
    kinds = () if args.nemesis == "none" else tuple(k for k in args.nemesis.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown nemesis {sorted(unknown)}; known: {','.join(KINDS)}")
    args.kinds = kinds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    deadline = time.monotonic() + args.duration
    seed, runs, failed, inconclusive, ops = args.seed, 0, 0, 0, 0
    while (args.runs is None or runs < args.runs) and (runs == 0 or time.monotonic() < deadline):
        result = run(RunConfig(seed=seed, duration=args.run_length, members=args.members,
                               clients=args.clients, keys=args.keys, kinds=args.kinds,
                               mixed=args.mixed, keep=args.keep,
                               request_timeout=args.request_timeout))
        print(report(result, faults=args.verbose), flush=True)
        runs += 1
        ops += len(result.ops)
        failed += result.failed
        inconclusive += bool(result.inconclusive)
        seed += 1
    print(f"campaign: {runs} runs, {ops} operations, {failed} with anomalies, "
          f"{inconclusive} inconclusive", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
