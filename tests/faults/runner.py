"""One fault-campaign run: a cluster, clients inside its members, a nemesis, then the checkers.

The clients run in the members' own processes (the store is embedded: its users live there)
and stream every invoke and every completion to this process as it happens, with
time.monotonic() timestamps (one clock for every process of the machine). An operation whose
member died before it completed, or that timed out, is "unknown" here; an unknown operation
gets no completion time (``complete is None``): it may take effect at any moment after its
invoke (the time the client gave up is kept in ``extra["gave_up"]``).

After the traffic the nemesis heals everything; the run then waits for the members to
converge, reads every key's final value through the leader, compares every member's key-space
hash and collects a watch from revision 1 on every member, and hands all of it to the
checkers. `run` returns a `RunResult` whose `summary()` is the run's one line; a failing run
saves its history, its fault schedule and the members' logs, and says how to replay it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import embedkv.errors

from ..cluster.harness import Cluster, Member
from ..waiting import wait_for
from . import checkers, history, linearizability
from .checkers import Verdict
from .history import Op
from .nemesis import KINDS, Fault, Nemesis, record, schedule

PREFIX = "f/"
"""Every key the checked clients touch starts with this (the lease clients' keys with l/)."""

LEASE_TTL = 2
"""Seconds of the lease clients' leases: several expire in a run."""


@dataclass
class RunConfig:
    """What one run does; the same config (same seed) replays the same fault schedule and the
    same clients' choices (the interleaving is the machine's)."""

    seed: int
    duration: float = 10.0  # seconds of traffic
    members: int = 3
    clients: int = 2  # client threads per member process
    keys: int = 3
    kinds: tuple[str, ...] = KINDS
    mixed: float = 0.3  # probability that a fault slot gets a second fault
    request_timeout: float = 3.0  # the members' request timeout: each operation's timeout
    keep: Path = Path("faults-runs")  # where a failing run is saved
    root: Path | None = None  # the members' data dirs (a temporary dir if None)
    lease_clients: int = 1  # per member: short leases whose keys are watched till gone
    stale_reads: bool = False  # a planted bug: "linearizable" gets served serializably

    def command(self) -> str:
        """The command line that replays this run."""
        return (f"python -m tests.faults --runs 1 --seed {self.seed} --run-length "
                f"{self.duration:g} --members {self.members} --clients {self.clients} --keys "
                f"{self.keys} --nemesis {','.join(self.kinds) or 'none'} --mixed {self.mixed:g} "
                f"--request-timeout {self.request_timeout:g}")


@dataclass
class RunResult:
    config: RunConfig
    ops: list[Op]
    faults: list[Fault]
    anomalies: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    saved: Path | None = None
    leases: int = 0  # leased keys the lease clients watched until gone
    committed: list[checkers.Event] | None = None  # the stream linearizability was pinned to

    @property
    def failed(self) -> bool:
        return bool(self.anomalies)

    def summary(self) -> str:
        """The run's one line: operations, faults injected, anomalies."""
        outcomes = {o: sum(op.outcome == o for op in self.ops) for o in ("ok", "fail", "unknown")}
        kinds: dict[str, int] = {}
        for f in self.faults:
            if f.started is not None and not f.note.startswith("no "):
                kinds[f.kind] = kinds.get(f.kind, 0) + 1
        injected = ",".join(f"{k}x{n}" for k, n in sorted(kinds.items())) or "-"
        verdict = "ANOMALY" if self.anomalies else ("inconclusive" if self.inconclusive
                                                     else "ok")
        return (f"seed={self.config.seed} {verdict} ops={len(self.ops)} "
                f"(ok {outcomes['ok']} fail {outcomes['fail']} unknown {outcomes['unknown']}) "
                f"leases={self.leases} "
                f"faults={sum(kinds.values())} [{injected}] anomalies={len(self.anomalies)} "
                f"inconclusive={len(self.inconclusive)} {self.seconds:.1f}s")


class Recorder:
    """The history, built from the clients' streams (called on the members' reader threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[tuple[int, int], Op] = {}
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._ended: set[int] = set()
        self._watchers: dict[int, str] = {}  # lease clients: process -> stream
        self.leases: list[checkers.LeaseObservation] = []
        self._processes = itertools.count(1)

    def processes(self, n: int) -> list[int]:
        with self._lock:
            return [next(self._processes) for _ in range(n)]

    def expect(self, stream: str, proc: subprocess.Popen[str], watchers: list[int]) -> None:
        with self._lock:
            self._procs[stream] = proc
            self._watchers.update((p, stream) for p in watchers)

    def on_stream(self, member: Member, msg: dict[str, Any]) -> None:
        key = (int(msg.get("p", 0)), int(msg.get("n", 0)))
        with self._lock:
            if msg["ev"] == "invoke":
                self._ops[key] = Op(process=key[0], kind=msg["kind"], key=msg["key"],
                                    value=msg["value"], expected=msg["expected"],
                                    invoke=float(msg["t"]), member=member.name,
                                    extra={"stream": msg["stream"]})
            elif msg["ev"] == "done":
                op = self._ops.get(key)
                if op is None:
                    return
                op.outcome = msg["outcome"]
                op.result = msg["result"]
                if msg.get("error"):
                    op.extra["error"] = msg["error"]
                if msg.get("deleted") is not None:
                    op.extra["deleted"] = msg["deleted"]  # how many keys a delete deleted
                if op.outcome == "unknown":
                    op.extra["gave_up"] = float(msg["t"])
                else:
                    op.complete = float(msg["t"])
                op.extra["done"] = True
            elif msg["ev"] == "lease":
                self.leases.append(checkers.LeaseObservation(
                    lease=msg["lease"], ttl=float(msg["ttl"]),
                    last_keepalive_ok=float(msg["last_keepalive_ok"]), key=msg["key"],
                    gone_seen=msg["gone_seen"], present_seen=msg["present_seen"]))
            elif msg["ev"] == "end":
                self._ended.add(key[0])

    def waiting(self) -> int:
        """Operations still in flight, and lease clients still observing, on a process that
        still runs."""
        with self._lock:
            ops = [op for op in self._ops.values() if not op.extra.get("done")
                   and self._procs[op.extra["stream"]].poll() is None]
            watchers = [p for p, stream in self._watchers.items()
                        if p not in self._ended and self._procs[stream].poll() is None]
        return len(ops) + len(watchers)

    def history(self) -> list[Op]:
        with self._lock:
            ops = sorted(self._ops.values(), key=lambda op: (op.invoke, op.process))
        for op in ops:
            if not op.extra.pop("done", False):
                op.extra["lost"] = True  # its member died (or never answered) mid-operation
        return ops


def run(config: RunConfig) -> RunResult:
    """Run once; never raises for what it finds: anomalies, and a run that broke off, are in
    the result."""
    began = time.monotonic()
    own_root = config.root is None
    root = Path(tempfile.mkdtemp(prefix=f"faults-{config.seed}-")) if own_root else config.root
    assert root is not None
    cluster = Cluster(root, config.members,
                      options={"request_timeout": config.request_timeout})
    recorder = Recorder()
    faults = schedule(config.seed, config.duration, config.kinds, config.mixed)
    result = RunResult(config, [], faults)
    incarnations = itertools.count(1)
    traffic_end = 0.0

    def start_clients(member: Member) -> None:
        member.on_stream = recorder.on_stream
        remaining = traffic_end - time.monotonic()
        if remaining < 0.2 or member.proc is None:
            return
        stream = f"{member.name}#{next(incarnations)}"
        watchers = recorder.processes(config.lease_clients)
        recorder.expect(stream, member.proc, watchers)
        member.call("clients_start", stream=stream,
                    processes=recorder.processes(config.clients),
                    keys=[f"{PREFIX}{i}" for i in range(config.keys)], duration=remaining,
                    seed=config.seed, stale_reads=config.stale_reads,
                    lease_watchers=watchers, lease_ttl_watched=LEASE_TTL)

    try:
        if "disk" in config.kinds:  # a small disk per founder, for the disk nemesis to fill
            why = cluster.small_disks([f"n{i}" for i in range(1, config.members + 1)])
            if why is not None:
                result.notes.append(f"no disk faults: {why}")
        cluster.start()  # inside: a cluster that cannot even start is a failed run too
        nemesis = Nemesis(cluster, start_clients, config.seed)
        t0 = time.monotonic()
        traffic_end = t0 + config.duration
        for m in cluster:
            start_clients(m)
        _play(nemesis, faults, t0)
        if traffic_end > time.monotonic():
            time.sleep(traffic_end - time.monotonic())  # the schedule's end: traffic goes on
        nemesis.heal_all()
        try:
            wait_for(lambda: not recorder.waiting(),
                     6 * LEASE_TTL + 3 * config.request_timeout + 30,
                     "the clients' last operations")
        except AssertionError:
            result.notes.append(f"{recorder.waiting()} operations never answered")
        result.ops = recorder.history()
        _finish(cluster, config, result)
        _verdict(result, "leases", checkers.check_leases(recorder.leases))
        result.leases = len(recorder.leases)
    except Exception as exc:
        # A member that would not restart, a read that never came back...: the run failed,
        # and what it recorded so far is saved like an anomaly's.
        if not result.ops:
            result.ops = recorder.history()
        first = str(exc).splitlines()[0] if str(exc) else ""
        result.anomalies.append(f"run aborted: {type(exc).__name__}: {first}\n"
                                f"{traceback.format_exc(limit=8)}")
    finally:
        cluster.kill_all()
        cluster.unmount_disks()
        result.seconds = time.monotonic() - began
        if result.failed or result.inconclusive:  # a give-up is worth a look too
            result.saved = _save(config, result, sorted(cluster.logdir.glob("*.stderr.log")))
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _play(nemesis: Nemesis, faults: list[Fault], t0: float) -> None:
    """Start and undo the faults at their times (this thread spawns restarted members: a child
    dies with the thread that spawned it, so this must be the run's own thread)."""
    pending = sorted(faults, key=lambda f: f.at)
    active: list[tuple[float, Fault]] = []
    while pending or active:
        now = time.monotonic() - t0
        next_start = pending[0].at if pending else float("inf")
        next_end = min(end for end, _ in active) if active else float("inf")
        wake = min(next_start, next_end)
        if wake > now:
            time.sleep(min(wake - now, 0.5))  # the schedule's clock, not a synchronisation
            continue
        if next_end <= next_start:
            end, fault = min(active, key=lambda a: a[0])
            active.remove((end, fault))
            nemesis.stop(fault)
            continue
        fault = pending.pop(0)
        hit = {f.member for _, f in active}
        nemesis.start(fault, hit)
        if fault.ended is None:
            active.append((time.monotonic() - t0 + fault.duration, fault))


def _finish(cluster: Cluster, config: RunConfig, result: RunResult) -> None:
    """After healing: convergence, final values, key-space hashes, watch streams, checkers."""
    keys = [f"{PREFIX}{i}" for i in range(config.keys)]
    for m in cluster.running():
        try:
            m.status()
        except embedkv.errors.Removed:
            # Removed by a membership fault whose answer was lost: not a member any more.
            result.notes.append(f"{m.name} turned out removed")
            cluster.members.pop(m.name).kill()
        except embedkv.errors.Unavailable:
            pass
    try:
        leader = cluster.wait_leader(timeout=30.0)
    except AssertionError as exc:
        result.anomalies.append(f"no leader 30 s after healing: {exc}\n{cluster.state_report()}")
        return
    final: dict[str, Any] = {}

    def read_final() -> bool:
        try:
            for key in keys:
                final[key] = leader.get(key)
        except embedkv.errors.Unavailable:
            return False
        return True

    wait_for(read_final, 60.0, "the final values")
    try:
        converged = cluster.wait_converged(timeout=60.0)
    except AssertionError as exc:
        result.anomalies.append(f"key spaces differ 60 s after healing: {exc}\n"
                                f"{cluster.state_report()}")
        converged = None
    streams: dict[str, list[checkers.Event]] = {}
    if converged is not None and converged["revision"] > 0:
        for m in cluster.running():
            wid = m.call("watch_start", key="", prefix=True, start_revision=1)
            try:
                rows = m.watch_until(wid, converged["revision"], timeout=30.0)
            except AssertionError as exc:
                result.anomalies.append(f"watch from revision 1 on {m.name}: {exc}")
                continue
            # The child's rows: [type, key, value, mod_revision, create_revision, version].
            # Up to the converged revision: a lease may expire meanwhile, on one member first.
            streams[m.name] = [(row[3], str(row[0]).lower(), row[1], row[2]) for row in rows
                               if row[3] <= converged["revision"]]
        _verdict(result, "watch streams",
                 checkers.check_watch_streams(streams, ops=result.ops))
    # Each key's writes pinned to the committed order (the longest stream: the watch checker
    # above has compared the members'); without a stream, the plain search.
    committed = None
    if streams:
        longest = max(sorted(streams), key=lambda m: len(streams[m]))
        committed = [e for e in streams[longest] if e[2].startswith(PREFIX)]
    elif converged is not None:
        committed = []  # revision 0: nothing was ever committed
    result.committed = committed
    linear = linearizability.check_linearizable(result.ops, committed=committed)
    _verdict(result, "linearizable", linear)
    _verdict(result, "no lost writes", checkers.check_no_lost_writes(result.ops, final))


def _verdict(result: RunResult, what: str, verdict: Verdict) -> None:
    result.anomalies += [f"{what}: {a}" for a in verdict.anomalies]
    result.inconclusive += [f"{what}: {why}" for why in verdict.inconclusive]


def _save(config: RunConfig, result: RunResult, logs: list[Path]) -> Path:
    """The history, the fault schedule, the findings and the members' logs (retired members'
    too) of a failing run."""
    where = config.keep / f"seed-{config.seed}"
    where.mkdir(parents=True, exist_ok=True)
    history.save(result.ops, where / "history.jsonl")
    (where / "faults.json").write_text(json.dumps(record(result.faults), indent=1) + "\n")
    if result.committed is not None:
        (where / "committed.json").write_text(json.dumps(result.committed) + "\n")
    (where / "findings.txt").write_text(
        result.summary() + "\n" + "\n".join(result.anomalies + result.inconclusive
                                            + result.notes) + f"\nreplay: {config.command()}\n")
    for log in logs:
        shutil.copy(log, where / log.name)
    return where


def report(result: RunResult, *, faults: bool = False) -> str:
    """The run's summary line, and for a failing run its findings, where it was saved and the
    command that replays it; with `faults`, one line per fault (whom it hit, what happened)."""
    lines = [result.summary()]
    if faults:
        for f in result.faults:
            took = "" if f.started is None or f.ended is None else f" {f.ended - f.started:.2f}s"
            lines.append(f"  fault {f.describe()}{took} {f.params} {f.note}".rstrip())
    if result.failed or result.inconclusive:
        lines += [f"  {line}" for line in result.anomalies + result.inconclusive]
    if result.notes:
        lines += [f"  note: {line}" for line in result.notes]
    if result.saved is not None:
        lines.append(f"  saved: {result.saved}  replay: {result.config.command()}")
    return "\n".join(lines)

