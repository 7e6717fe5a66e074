"""Run many random Raft schedules, or replay one.

    python -m tests.raft.soak --schedules 100000 --workers 8     # soak
    python -m tests.raft.soak --seed 123 --steps 300 --verbose   # replay one, with a trace

Exit status 1 if any schedule fails; each failure prints a one-line replay command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

from .checker import CheckerOptions
from .simulator import DEFAULT_STEPS, Faults, ScheduleResult, Stats, run_schedule

_FAULTS = {
    "forget-vote": "forget_vote_on_restart",
    "lose-tail": "lose_unapplied_tail_on_crash",
    "figure-8": "commit_earlier_terms",
    "vote-off-by-one": "vote_off_by_one",
    "quorum-off-by-one": "quorum_off_by_one",
}


def _faults(names: Iterable[str]) -> Faults:
    return Faults(**{_FAULTS[n]: True for n in names})


def _run_chunk(
    seeds: Sequence[int],
    steps: int,
    faults: Faults,
    options: CheckerOptions,
    bootstrap: str | None,
    chaos: bool,
    pipeline: bool = True,
    stale_leader: bool = False,
) -> list[ScheduleResult]:
    return [
        run_schedule(
            s,
            steps,
            faults=faults,
            options=options,
            bootstrap=bootstrap,
            chaos=chaos,
            pipeline=pipeline,
            stale_leader=stale_leader,
        )
        for s in seeds
    ]


def run_many(
    seeds: Sequence[int],
    steps: int,
    workers: int,
    faults: Faults | None = None,
    options: CheckerOptions | None = None,
    progress_every: int = 0,
    stop_after_failures: int = 0,
    bootstrap: str | None = None,
    chaos: bool = False,
    pipeline: bool = True,
    stale_leader: bool = False,
) -> tuple[list[ScheduleResult], Stats, int]:
    """Run `seeds` (in parallel when workers > 1): the failures, summed stats, schedules run."""
    faults = faults or Faults()
    options = options or CheckerOptions()
    failures: list[ScheduleResult] = []
    total = Stats()
    done = 0
    started = time.monotonic()
    chunk = 50
    chunks = [list(seeds[i : i + chunk]) for i in range(0, len(seeds), chunk)]

    def consume(results: list[ScheduleResult]) -> bool:
        nonlocal done
        for r in results:
            done += 1
            total.add(r.stats)
            if not r.ok:
                failures.append(r)
                print(f"FAIL {r.describe()}", flush=True)
        if progress_every and done % progress_every < chunk:
            rate = done / max(1e-9, time.monotonic() - started)
            print(
                f"{done}/{len(seeds)} schedules, {len(failures)} failed ({rate:.0f}/s)",
                flush=True,
            )
        return bool(stop_after_failures and len(failures) >= stop_after_failures)

    if workers <= 1:
        for c in chunks:
            results = _run_chunk(
                c, steps, faults, options, bootstrap, chaos, pipeline, stale_leader
            )
            if consume(results):
                break
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(
                    _run_chunk, c, steps, faults, options, bootstrap, chaos, pipeline, stale_leader
                )
                for c in chunks
            ]
            for fut in futures:
                if consume(fut.result()):
                    for f in futures:
                        f.cancel()
                    break
    return failures, total, done


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.raft.soak", description=__doc__)
    ap.add_argument("--seed", type=int, help="replay this one schedule")
    ap.add_argument("--schedules", type=int, default=1000, help="how many seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed of the range")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="random steps per schedule")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--verbose", action="store_true", help="print the trace (with --seed)")
    ap.add_argument("--fault", action="append", default=[], choices=sorted(_FAULTS))
    ap.add_argument("--no-hard-state-checks", action="store_true")
    ap.add_argument("--no-config-checks", action="store_true")
    ap.add_argument("--chaos", action="store_true", help="crash- and partition-heavy schedules")
    ap.add_argument(
        "--stale-leader",
        action="store_true",
        help="reads under partition: a deposed leader (CheckQuorum off) asked for reads with "
        "contexts other members had answered, heartbeat answers held up across the split",
    )
    ap.add_argument(
        "--atomic",
        action="store_true",
        help="handle each Ready atomically (the simulator before issue 14; default: pipelined)",
    )
    ap.add_argument(
        "--bootstrap",
        choices=("conf-state", "snapshot"),
        help="force how initial members start (default: chosen by each seed)",
    )
    ap.add_argument("--max-failures", type=int, default=20, help="stop after this many")
    args = ap.parse_args(argv)
    faults = _faults(args.fault)
    options = CheckerOptions(
        hard_state_checks=not args.no_hard_state_checks,
        config_checks=not args.no_config_checks,
    )

    if args.seed is not None:
        trace = print if args.verbose else None
        r = run_schedule(
            args.seed,
            args.steps,
            faults=faults,
            options=options,
            trace=trace,
            bootstrap=args.bootstrap,
            chaos=args.chaos,
            pipeline=not args.atomic,
            stale_leader=args.stale_leader,
        )
        s = r.stats
        print(
            f"seed {args.seed}: {'ok' if r.ok else 'FAILED'} — {s.steps} steps, "
            f"{s.elections} elections, max term {s.max_term}, committed {s.committed}, "
            f"{s.crashes} crashes, {s.snapshots_installed} snapshots installed, "
            f"{s.conf_changes_applied} conf changes applied, {s.reads_released} reads"
        )
        if not r.ok:
            print(f"FAIL {r.describe()}")
        return 0 if r.ok else 1

    started = time.monotonic()
    seeds = list(range(args.start, args.start + args.schedules))
    failures, total, done = run_many(
        seeds,
        args.steps,
        args.workers,
        faults,
        options,
        progress_every=max(1000, args.schedules // 20),
        stop_after_failures=args.max_failures,
        bootstrap=args.bootstrap,
        chaos=args.chaos,
        pipeline=not args.atomic,
        stale_leader=args.stale_leader,
    )
    elapsed = time.monotonic() - started
    print(
        f"{done} of {len(seeds)} schedules (seeds {args.start}..{args.start + len(seeds) - 1}, "
        f"{args.steps} steps) in {elapsed:.1f}s: {len(failures)} failed"
    )
    print(f"totals: {total}")
    for r in failures:
        print(f"  {r.replay}    # {r.kind}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
