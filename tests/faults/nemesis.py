"""Nemeses: the faults a campaign injects into a running cluster, on a schedule drawn from a seed.

A `Fault` is one entry of the schedule (what, when, for how long, aimed at the leader or at a
follower); `schedule` draws them; a `Nemesis` applies one to a `Cluster` and undoes it. The
member a fault hits is chosen when it starts (the leader then), and recorded in the fault, so
a saved schedule says what really happened. Faults that end the same way (a heal clears every
rule of the fault hook) are never overlapped: a mixed slot pairs a process fault with a network
fault on another member.

A full disk needs a small file system per member (a tmpfs: root only, as on CI); where none
can be mounted the runner says so and a "disk" fault is noted as not injected.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import embedkv.errors

from ..cluster.harness import FAST, ChildError, Cluster, Member
from ..ports import free_port
from ..waiting import wait_for

PROCESS = ("kill", "pause", "disk")
NETWORK = ("partition", "bridge", "oneway", "drop", "delay", "duplicate")
CONTROL = ("transfer", "replace", "learner")
KINDS = PROCESS + NETWORK + CONTROL
"""kill: SIGKILL, then restart on the same data dir; pause: SIGSTOP, SIGCONT after more than
an election timeout; disk: the target's disk filled (a ballast file), then freed; partition:
the target (and, of five, one more) cut off from the rest; bridge: the others split in two
halves that only the target connects; oneway: the target's traffic to (or from) every other
member dropped; drop: a share of the target's traffic dropped; delay: the target's traffic
delayed; duplicate: a share of the Raft messages to and from the target delivered twice, the
copy up to 50 ms late; transfer: leadership moved to a follower; replace: the target removed
and a fresh member joined; learner: a fresh member added as a learner, promoted, then the
target removed."""

RESTARTED = ("tick_interval", "election_tick", "heartbeat_tick", "request_timeout")
"""open()'s options a restart passes again (the rest is persisted): the run's Raft timing."""

ELECTION_TIMEOUT = FAST["tick_interval"] * FAST["election_tick"]

JOIN_ATTEMPTS = 3

CALL_TIMEOUT = 10.0
"""Seconds the nemesis waits on a member's answer: a fault never hangs the run."""


@dataclass
class Fault:
    """One entry of a schedule; `member`, `started`, `ended` and `note` are filled in when
    it runs (monotonic timestamps, the clock of the history)."""

    kind: str
    at: float  # seconds after the traffic starts
    duration: float  # seconds until it is undone (0: a one-shot action)
    target: str  # "leader" or "follower"
    params: dict[str, Any] = field(default_factory=dict)
    member: str = ""
    started: float | None = None
    ended: float | None = None
    note: str = ""

    def describe(self) -> str:
        return f"{self.kind}@{self.at:.1f}s->{self.member or self.target}"


def schedule(seed: int, duration: float, kinds: tuple[str, ...] = KINDS,
             mixed: float = 0.3) -> list[Fault]:
    """The faults of a run of `duration` seconds of traffic: one after another with a short
    calm between them, the last one over a second before the traffic ends; with probability
    `mixed` a slot also gets a second fault of the other family (process vs network)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown nemesis kinds {sorted(unknown)}; known: {list(KINDS)}")
    if not kinds:
        return []
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = rng.uniform(0.5, 1.5)
    while True:
        kind = rng.choice(kinds)
        first = _draw(rng, kind, t)
        if t + first.duration > duration - 1.0:
            break
        faults.append(first)
        if kind in PROCESS + NETWORK and rng.random() < mixed:
            other = [k for k in kinds if k in (NETWORK if kind in PROCESS else PROCESS)]
            if other:
                second = _draw(rng, rng.choice(other), t)
                second.target = "follower" if first.target == "leader" else rng.choice(
                    ["leader", "follower"])
                second.duration = min(second.duration, first.duration)
                second.params["mixed"] = True
                faults.append(second)
        t += first.duration + rng.uniform(0.5, 2.0)
    return faults


def _draw(rng: random.Random, kind: str, at: float) -> Fault:
    target = rng.choice(["leader", "follower"])
    params: dict[str, Any] = {}
    if kind == "kill":
        duration = rng.uniform(0.3, 2.5)
    elif kind == "pause":
        duration = rng.uniform(1.5, 3.0) * ELECTION_TIMEOUT
    elif kind in ("disk", "partition", "bridge"):
        duration = rng.uniform(1.5, 4.0)
    elif kind == "oneway":
        duration = rng.uniform(1.5, 4.0)
        params["direction"] = rng.choice(["send", "receive"])
    elif kind == "drop":
        duration = rng.uniform(1.5, 4.0)
        params["probability"] = round(rng.uniform(0.2, 0.6), 2)
    elif kind == "delay":
        duration = rng.uniform(1.5, 4.0)
        params["seconds"] = round(rng.uniform(0.02, 0.3), 3)
    elif kind == "duplicate":
        duration = rng.uniform(1.5, 4.0)
        params["probability"] = round(rng.uniform(0.3, 1.0), 2)
    else:  # transfer, replace, learner: one action that takes what it takes
        duration = 0.0
    return Fault(kind, round(at, 3), round(duration, 3), target, params)


class Nemesis:
    """Applies faults to `cluster`. `on_start(member)` runs after a member (re)started (the
    runner starts its clients there); members it retires are kept in `retired`."""

    def __init__(self, cluster: Cluster, on_start: Callable[[Member], None],
                 seed: int) -> None:
        self.cluster = cluster
        self.on_start = on_start
        self.rng = random.Random(f"nemesis/{seed}")
        self.retired: list[Member] = []
        self.size = len(cluster.members)
        self._next_name = len(list(cluster))

    # --- choosing members --------------------------------------------------------------------

    def leader(self) -> Member | None:
        """The leader most running members name, if it runs; asked with short timeouts."""
        votes: dict[str, int] = {}
        for m in self.cluster.running():
            with contextlib.suppress(Exception):
                name = m.call("leader", timeout=2.0)
                if name is not None:
                    votes[name] = votes.get(name, 0) + 1
        for name, _ in sorted(votes.items(), key=lambda kv: -kv[1]):
            member = self.cluster.members.get(name)
            if member is not None and member.alive and not member.stopped:
                return member
        return None

    def pick(self, fault: Fault, avoid: set[str]) -> Member | None:
        running = [m for m in self.cluster.running() if m.name not in avoid]
        if not running:
            return None
        leader = self.leader()
        if fault.target == "leader" and leader is not None and leader.name not in avoid:
            return leader
        followers = [m for m in running if m is not leader]
        return self.rng.choice(followers or running)

    # --- applying and undoing ----------------------------------------------------------------

    def start(self, fault: Fault, avoid: set[str]) -> Member | None:
        """Inject `fault`; returns the member it hit (None: nothing to hit, noted)."""
        member = self.pick(fault, avoid)
        fault.started = time.monotonic()
        if member is None:
            fault.note = "no running member to hit"
            fault.ended = fault.started
            return None
        fault.member = member.name
        try:
            getattr(self, f"_start_{fault.kind}")(fault, member)
        except (AssertionError, embedkv.errors.Error, ValueError) as exc:
            fault.note = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        if fault.duration == 0.0:
            fault.ended = time.monotonic()
        return member

    def stop(self, fault: Fault) -> None:
        """Undo `fault` (a no-op for one-shot actions)."""
        if fault.ended is not None:
            return
        member = self.cluster.members.get(fault.member)
        try:
            if member is not None:
                getattr(self, f"_stop_{fault.kind}")(fault, member)
        except (AssertionError, embedkv.errors.Error, ValueError) as exc:
            fault.note += f" undo: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        fault.ended = time.monotonic()

    def heal_all(self) -> None:
        """Every member running, thawed and with no fault rules (the end of a run)."""
        for m in self.cluster:
            if m.stopped and m.alive:
                m.cont()
        for m in self.cluster:
            if not m.alive:
                self.restart(m)
        for m in self.cluster.running():
            with contextlib.suppress(ChildError, embedkv.errors.Error):
                m.call("heal", timeout=CALL_TIMEOUT)
        for disk in self.cluster.disks.values():
            disk.free()

    def restart(self, member: Member) -> None:
        member.restart(**{k: self.cluster.options[k] for k in RESTARTED
                          if k in self.cluster.options})
        self.on_start(member)

    def _others(self, member: Member) -> list[Member]:
        return [m for m in self.cluster.running() if m is not member]

    def _start_kill(self, fault: Fault, member: Member) -> None:
        member.kill()

    def _stop_kill(self, fault: Fault, member: Member) -> None:
        if not member.alive:
            self.restart(member)

    def _start_pause(self, fault: Fault, member: Member) -> None:
        member.stop()

    def _stop_pause(self, fault: Fault, member: Member) -> None:
        if member.alive and member.stopped:
            member.cont()

    def _start_disk(self, fault: Fault, member: Member) -> None:
        disk = self.cluster.disks.get(member.name)
        if disk is None:
            fault.note = f"no small disk on {member.name}: not injected"
            return
        fault.params["ballast"] = disk.fill()

    def _stop_disk(self, fault: Fault, member: Member) -> None:
        disk = self.cluster.disks.get(member.name)
        if disk is not None:
            disk.free()

    def _cut(self, fault: Fault, side: list[Member], other: list[Member]) -> None:
        """Drop everything between `side` and `other`, both ways, on both sides. A member that
        does not know the other yet (a joiner catching up) cannot cut it: noted."""
        for a, b in [(a, b) for a in side for b in other] + [(b, a) for a in side
                                                             for b in other]:
            if not a.call("fault_rule", peer=b.name, drop=1.0, timeout=CALL_TIMEOUT):
                fault.note += f"{a.name} does not know {b.name}; "

    def _heal(self) -> None:
        for m in self.cluster.running():
            m.call("heal", timeout=CALL_TIMEOUT)

    def _start_partition(self, fault: Fault, member: Member) -> None:
        others = self._others(member)
        size = len(list(self.cluster))
        minority = [member, *self.rng.sample(others, min(len(others), (size - 1) // 2 - 1))]
        fault.params["minority"] = [m.name for m in minority]
        self._cut(fault, minority, [m for m in others if m not in minority])

    def _start_bridge(self, fault: Fault, member: Member) -> None:
        others = self._others(member)
        self.rng.shuffle(others)
        half = max(1, len(others) // 2)
        left, right = others[:half], others[half:]
        fault.params["sides"] = [[m.name for m in left], [m.name for m in right]]
        self._cut(fault, left, right)

    def _rules(self, member: Member, **rule: Any) -> None:
        for o in self._others(member):
            member.call("fault_rule", peer=o.name, timeout=CALL_TIMEOUT, **rule)

    def _start_oneway(self, fault: Fault, member: Member) -> None:
        self._rules(member, drop=1.0, direction=fault.params["direction"])

    def _start_drop(self, fault: Fault, member: Member) -> None:
        self._rules(member, drop=fault.params["probability"])

    def _start_delay(self, fault: Fault, member: Member) -> None:
        self._rules(member, delay=fault.params["seconds"])

    def _start_duplicate(self, fault: Fault, member: Member) -> None:
        """Both ways: the target receives copies from every other, and every other from it."""
        p = fault.params["probability"]
        self._rules(member, duplicate=p)
        for o in self._others(member):
            o.call("fault_rule", peer=member.name, duplicate=p, timeout=CALL_TIMEOUT)

    def _stop_partition(self, fault: Fault, member: Member) -> None:
        self._heal()

    _stop_bridge = _stop_oneway = _stop_drop = _stop_delay = _stop_partition
    _stop_duplicate = _stop_partition

    def _start_transfer(self, fault: Fault, member: Member) -> None:
        leader = self.leader()
        if leader is None:
            fault.note = "no leader to transfer from"
            return
        followers = self._others(leader)
        to = member if member is not leader else (self.rng.choice(followers)
                                                   if followers else None)
        if to is None:
            fault.note = "no follower to transfer to"
            return
        fault.member = to.name
        fault.params["from"] = leader.name
        fault.params["new"] = leader.call("transfer_leadership", to=to.name,
                                          timeout=CALL_TIMEOUT)

    def _fresh_name(self) -> str:
        while True:
            self._next_name += 1
            name = f"n{self._next_name}"
            if name not in self.cluster.members and all(m.name != name for m in self.retired):
                return name

    def _remove(self, fault: Fault, member: Member) -> None:
        """Remove `member` through another running member, then end its process."""
        via = self._others(member) or [member]
        failed: BaseException | None = None
        try:
            via[0].call("remove_member", name=member.name, timeout=CALL_TIMEOUT)
        except (AssertionError, embedkv.errors.Error) as exc:
            # Unavailable may still have removed it (removing the leader through a follower
            # answers "removed or moved" once it took effect): the member list says.
            failed = exc

        def gone() -> bool:
            try:
                return all(m["name"] != member.name for m in via[0].members())
            except embedkv.errors.Unavailable:
                return False

        try:
            wait_for(gone, 2 * CALL_TIMEOUT if failed is None else CALL_TIMEOUT,
                     f"{member.name} gone from {via[0].name}'s member list")
        except AssertionError:
            if failed is not None:
                raise failed from None
            raise
        if failed is not None:
            fault.note += f"remove answered {str(failed).splitlines()[0]} (it took effect); "
        fault.params["removed"] = member.name
        member.kill()
        self.retired.append(self.cluster.members.pop(member.name))

    def _enough(self, fault: Fault) -> bool:
        """Membership faults keep the cluster at its size: none while a member is missing (a
        join that failed earlier)."""
        if len(self.cluster.members) < self.size:
            fault.note += f"skipped: {len(self.cluster.members)} of {self.size} members; "
            return False
        return True

    def _join(self, fault: Fault) -> Member:
        """A fresh member joined through the running ones. A join refused as Unavailable (no
        leader to admit it yet) is tried again, under a new name, a few times, and noted."""
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            name = self._fresh_name()
            try:
                joined = self.cluster.join(name, timeout=30.0)
            except ChildError as exc:
                failed = self.cluster.members.pop(name, None)
                if failed is not None:
                    failed.kill()
                    self.retired.append(failed)
                first = str(exc).splitlines()[0]
                fault.note += f"join of {name} failed: {first}; "
                if attempt == JOIN_ATTEMPTS or "Unavailable" not in first:
                    raise
                time.sleep(ELECTION_TIMEOUT)  # a back-off before asking again
                continue
            fault.params.setdefault("joined", []).append(name)
            self.on_start(joined)
            return joined
        raise AssertionError("unreachable")

    def _start_replace(self, fault: Fault, member: Member) -> None:
        if not self._enough(fault):
            return
        self._remove(fault, member)
        self._join(fault)

    def _start_learner(self, fault: Fault, member: Member) -> None:
        if not self._enough(fault):
            return
        leader = self.leader() or member
        name = self._fresh_name()
        address = f"127.0.0.1:{free_port()}"
        leader.call("add_member", name=name, address=address, learner=True,
                    timeout=CALL_TIMEOUT)
        fault.params["learner"] = name
        new = self.cluster.member(name, dict(self.cluster.options, name=name, listen=address,
                                             join=[m.address for m in self._others(member)],
                                             insecure=True))
        try:
            new.start()
        except ChildError:
            self.retired.append(self.cluster.members.pop(name))
            new.kill()
            with contextlib.suppress(AssertionError, embedkv.errors.Error):
                leader.call("remove_member", name=name, timeout=CALL_TIMEOUT)
            raise
        self.on_start(new)

        refusals: list[str] = []

        def promoted() -> bool:
            try:
                (self.leader() or leader).call("promote_member", name=name,
                                               timeout=CALL_TIMEOUT)
            except (ValueError, embedkv.errors.Unavailable, ChildError) as exc:
                refusals.append(str(exc).splitlines()[0])
                return False
            return True

        try:
            wait_for(promoted, 30.0, f"{name} promoted")
        except AssertionError:
            fault.note += f"last refusal: {refusals[-1] if refusals else None}; "
            raise
        self._remove(fault, member)

    _stop_transfer = _stop_replace = _stop_learner = _stop_kill


def record(faults: list[Fault]) -> list[dict[str, Any]]:
    """The schedule as JSON-able dicts (saved beside a failing run's history)."""
    return [asdict(f) for f in faults]
