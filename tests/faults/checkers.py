"""Checkers of a fault campaign besides linearizability: lost writes, watch streams, leases.

Each returns a `Verdict`. A checker says "anomaly" only when the record proves one (every
time bound is taken on the side that favours the system), "inconclusive" when it could not
decide, and "ok" otherwise; "ok" never hides a give-up.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.faults.history import Op

Status = Literal["ok", "anomaly", "inconclusive"]

WRITES = ("put", "lease_put", "delete", "cas")


@dataclass
class Anomaly:
    """One proven violation: which checker, which key, why, and the operations involved."""

    checker: str
    key: str
    message: str
    ops: list[Op] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"[{self.checker}] key {self.key!r}: {self.message}"]
        lines += [f"    {describe(op)}" for op in self.ops]
        return "\n".join(lines)


@dataclass
class Verdict:
    """A checker's answer: "anomaly" beats "inconclusive" beats "ok"."""

    status: Status
    anomalies: list[Anomaly] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)  # why (e.g. which keys) it gave up
    steps: int = 0  # search steps spent (linearizability)
    keys: dict[str, Status] = field(default_factory=dict)  # each key's own (linearizability)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def explain(self) -> str:
        parts = [f"verdict: {self.status}"]
        parts += [str(a) for a in self.anomalies]
        parts += [f"inconclusive: {why}" for why in self.inconclusive]
        return "\n".join(parts)


def verdict(
    anomalies: list[Anomaly],
    inconclusive: Iterable[str] = (),
    steps: int = 0,
    keys: dict[str, Status] | None = None,
) -> Verdict:
    """The verdict that these findings make."""
    why = list(inconclusive)
    status: Status = "anomaly" if anomalies else "inconclusive" if why else "ok"
    return Verdict(status, anomalies, why, steps, dict(keys or {}))


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """One verdict over several checkers' (or keys') verdicts."""
    anomalies: list[Anomaly] = []
    why: list[str] = []
    steps = 0
    keys: dict[str, Status] = {}
    for v in verdicts:
        anomalies += v.anomalies
        why += v.inconclusive
        steps += v.steps
        for key, status in v.keys.items():
            keys[key] = worst(keys.get(key, "ok"), status)
    return verdict(anomalies, why, steps, keys)


def worst(a: Status, b: Status) -> Status:
    """ "anomaly" beats "inconclusive" beats "ok"."""
    rank = ("ok", "inconclusive", "anomaly")
    return a if rank.index(a) >= rank.index(b) else b


def describe(op: Op) -> str:
    """One line per operation, for explanations."""
    args = {
        "put": f"{op.value!r}",
        "lease_put": f"{op.value!r}",
        "get": "",
        "sget": "",
        "delete": "",
        "cas": f"{op.expected!r} -> {op.value!r}",
    }[op.kind]
    end = "…" if op.complete is None else f"{op.complete:.6f}"
    result = (
        ""
        if op.outcome != "ok" or op.kind in ("put", "lease_put", "delete")
        else (f" = {op.result!r}")
    )
    where = f" @{op.member}" if op.member else ""
    return (
        f"p{op.process} {op.kind}({op.key!r}{', ' if args else ''}{args}){result}"
        f" {op.outcome} [{op.invoke:.6f}, {end}]{where}"
    )


def freeze(value: Any) -> Any:
    """A hashable stand-in for a JSON-like value (lists and dicts compare by content)."""
    if isinstance(value, (dict, list)):
        return ("json", json.dumps(value, sort_keys=True))
    return value


def end_time(op: Op) -> float:
    """When the operation is known to have ended; never, for one that may still take effect."""
    if op.outcome == "ok" and op.complete is not None:
        return op.complete
    return float("inf")


def check_history(ops: Sequence[Op]) -> None:
    """Reject a malformed history (a checker's verdict on one would mean nothing)."""
    for op in ops:
        if op.kind not in ("put", "get", "sget", "delete", "cas", "lease_put"):
            raise ValueError(f"unknown operation kind {op.kind!r}: {op}")
        if op.outcome not in ("ok", "fail", "unknown"):
            raise ValueError(f"unknown outcome {op.outcome!r}: {op}")
        if op.outcome == "ok" and op.complete is None:
            raise ValueError(f"an ok operation without a completion time: {op}")
        if op.complete is not None and op.complete < op.invoke:
            raise ValueError(f"an operation that completed before it was invoked: {op}")
        if op.kind == "cas" and op.outcome == "ok" and not isinstance(op.result, bool):
            raise ValueError(f"an ok cas whose result is not a bool: {op}")


# --- lost writes -----------------------------------------------------------------------------


def _writes_value(op: Op) -> Any:
    """The value a write leaves (None: the key absent)."""
    return None if op.kind == "delete" else freeze(op.value)


def _may_write(op: Op) -> bool:
    """Could this operation have changed the key (an ok write, or one whose end is unknown)?"""
    if op.kind not in WRITES or op.outcome == "fail":
        return False
    return not (op.kind == "cas" and op.outcome == "ok" and op.result is False)


def check_no_lost_writes(ops: Sequence[Op], final: dict[str, Any]) -> Verdict:
    """Every acknowledged write is either the key's final value (`final`: key -> value, absent
    keys missing or None) or was superseded by a write that did not end before it began
    (a later or concurrent one, including unknown ones). A lease_put's key may also have
    gone with its lease, so a key that ended absent does not prove a lease_put lost (the lease
    checker covers expiry). The final value must also come from some write that may have
    happened: a value from nowhere is an anomaly too."""
    check_history(ops)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    anomalies: list[Anomaly] = []
    for key in sorted(set(by_key) | {k for k, v in final.items() if v is not None}):
        history = by_key.get(key, [])
        last = freeze(final.get(key))
        writers = [op for op in history if _may_write(op)]
        if last is not None and not any(_writes_value(w) == last for w in writers):
            anomalies.append(
                Anomaly("lost-writes", key, f"final value {final.get(key)!r} was never written")
            )
        for w in writers:
            if w.outcome != "ok" or _writes_value(w) == last:
                continue
            if w.kind == "lease_put" and last is None:
                continue
            later = [x for x in writers if x is not w and end_time(x) > w.invoke]
            if not later:
                what = "absent" if last is None else repr(final.get(key))
                anomalies.append(
                    Anomaly(
                        "lost-writes",
                        key,
                        f"acknowledged write lost: the key ends {what}, and no write"
                        " that could follow it",
                        [w],
                    )
                )
    return verdict(anomalies)


# --- watch streams ---------------------------------------------------------------------------

Event = tuple[int, str, str, Any]
"""(revision, type "put"/"delete", key, value) as a watcher saw it."""


def check_watch_streams(
    streams: dict[str, list[Event]],
    *,
    healed: bool = True,
    ops: Sequence[Op] | None = None,
) -> Verdict:
    """Each member's stream in order (revisions never go back; one revision may carry several
    events, e.g. a lease's keys deleted together, but never the same key twice), no event
    repeated, every stream a prefix of the longest (equal to it once `healed`). With `ops`,
    every acknowledged put/lease_put/delete whose result is its revision must be in the
    longest stream at that revision (caller: watch every key from before the first write)."""
    anomalies: list[Anomaly] = []
    for member, events in sorted(streams.items()):
        seen: set[tuple[int, str]] = set()
        previous = 0
        for i, (rev, kind, key, _value) in enumerate(events):
            if (rev, key) in seen:
                anomalies.append(
                    Anomaly(
                        "watch",
                        key,
                        f"member {member}: event #{i} at revision {rev} delivered twice",
                    )
                )
            elif rev < previous:
                anomalies.append(
                    Anomaly(
                        "watch",
                        key,
                        f"member {member}: event #{i} at revision {rev}"
                        f" after revision {previous} (out of order)",
                    )
                )
            if kind not in ("put", "delete"):
                anomalies.append(
                    Anomaly("watch", key, f"member {member}: event #{i} of unknown type {kind!r}")
                )
            seen.add((rev, key))
            previous = max(previous, rev)
    if streams:
        longest_member = max(sorted(streams), key=lambda m: len(streams[m]))
        longest = [_frozen_event(e) for e in streams[longest_member]]
        for member, events in sorted(streams.items()):
            mine = [_frozen_event(e) for e in events]
            at = next(
                (i for i, (a, b) in enumerate(zip(mine, longest, strict=False)) if a != b), None
            )
            if at is not None:
                anomalies.append(
                    Anomaly(
                        "watch",
                        str(mine[at][2]),
                        f"member {member} diverges from member {longest_member} at event"
                        f" #{at}: {events[at]!r} != {streams[longest_member][at]!r} (an event"
                        " missing, extra or different)",
                    )
                )
            elif healed and len(mine) < len(longest):
                e = streams[longest_member][len(mine)]
                anomalies.append(
                    Anomaly(
                        "watch",
                        e[2],
                        f"member {member} is missing events from #{len(mine)} on"
                        f" (first: {e!r}; member {longest_member} has {len(longest)})",
                    )
                )
        if ops is not None:
            anomalies += _missing_acknowledged(longest_member, streams[longest_member], ops)
    return verdict(anomalies)


def _frozen_event(event: Event) -> tuple[int, str, str, Any]:
    rev, kind, key, value = event
    return (rev, kind, key, freeze(value))


def _missing_acknowledged(member: str, events: list[Event], ops: Sequence[Op]) -> list[Anomaly]:
    """Acknowledged writes (with their revision as result) that no event reports."""
    at = {(rev, key): (kind, freeze(value)) for rev, kind, key, value in events}
    anomalies = []
    for op in ops:
        if op.outcome != "ok" or op.kind not in ("put", "lease_put", "delete"):
            continue
        if not isinstance(op.result, int) or isinstance(op.result, bool):
            continue
        seen = at.get((op.result, op.key))
        kind = "delete" if op.kind == "delete" else "put"
        if op.kind == "delete" and seen is None:
            continue  # deleting an absent key makes no revision and no event
        if seen is None or seen[0] != kind or (kind == "put" and seen[1] != freeze(op.value)):
            anomalies.append(
                Anomaly(
                    "watch",
                    op.key,
                    f"acknowledged {op.kind} at revision {op.result} is not in member"
                    f" {member}'s stream as such (saw {seen!r})",
                    [op],
                )
            )
    return anomalies


# --- leases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseObservation:
    """What the runner saw of one key attached to one lease; all times time.monotonic().

    last_keepalive_ok: the invoke time of the last keep-alive (or the grant) that was
      acknowledged; the leader accepted it no earlier, so the key must live until at least
      this + ttl.
    gone_seen: the completion time of the first linearizable read, invoked after the
      lease_put was acknowledged, that found the key absent (None: never seen absent).
    present_seen: the invoke time of the last linearizable read that found the key present
      (None: not recorded); with `expires_by` this shows a key that outlived its lease.
    expires_by: the time by which the key must be gone (the completion of the last
      keep-alive that may have been accepted, ok or unknown, + ttl + the leader's expiry
      slack; None: no such bound, e.g. a keep-alive still in doubt or a revoked lease).
    """

    lease: int
    ttl: float
    last_keepalive_ok: float
    key: str
    gone_seen: float | None
    present_seen: float | None = None
    expires_by: float | None = None


def check_leases(observations: Sequence[LeaseObservation]) -> Verdict:
    """A leased key never gone before its TTL from the last accepted keep-alive, and gone
    once its lease must have expired."""
    anomalies: list[Anomaly] = []
    for o in observations:
        if o.ttl <= 0:
            raise ValueError(f"a lease with a TTL of {o.ttl}: {o}")
        earliest = o.last_keepalive_ok + o.ttl
        if o.gone_seen is not None and o.gone_seen < earliest:
            anomalies.append(
                Anomaly(
                    "lease",
                    o.key,
                    f"lease {o.lease:#x} (ttl {o.ttl}s): key gone by {o.gone_seen:.6f},"
                    f" {earliest - o.gone_seen:.3f}s before its TTL from the last keep-alive"
                    f" ({o.last_keepalive_ok:.6f}) ran out",
                )
            )
        seen, deadline = o.present_seen, o.expires_by
        if seen is not None and deadline is not None and seen > deadline:
            anomalies.append(
                Anomaly(
                    "lease",
                    o.key,
                    f"lease {o.lease:#x} (ttl {o.ttl}s): key still present at"
                    f" {o.present_seen}, after it must have expired by {o.expires_by}",
                )
            )
    return verdict(anomalies)
