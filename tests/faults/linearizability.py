"""Linearizability of a key-value history: a Wing-Gong search with Lowe's memoization, as in
Porcupine, of one register per key.

Keys are independent (a register per key), so each key's sub-history is searched alone. The
search walks the history's call/return events in time order and, depth first, tries to
linearize a pending operation before the earliest outstanding return; it remembers every
(set of linearized operations, register state) it has reached so no configuration is explored
twice. An operation whose outcome is unknown has no return event (it may take effect at any
time after its invoke) and need not be linearized at all (it may never have happened); a
failed one, an unknown read and a serializable read ("sget") are left out.

Leases: a key written with lease_put may vanish at any moment afterwards (its lease expired),
so a read that finds it absent is allowed; check_leases in checkers.py checks the timing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tests.faults.checkers import Anomaly, Verdict, check_history, combine, freeze, verdict
from tests.faults.history import Op

State = tuple[Any, bool]
"""The register: (frozen value, None when absent; whether the value is held by a lease)."""

EMPTY: State = (None, False)


def step(state: State, op: Op) -> list[State]:
    """The states `op` may leave the register in from `state`; none if it cannot happen there."""
    candidates = [state, EMPTY] if state[1] else [state]  # a leased value may have expired
    out: list[State] = []
    for value, leased in candidates:
        nexts: list[State] = []
        if op.kind == "put":
            nexts.append((freeze(op.value), False))
        elif op.kind == "lease_put":
            nexts.append((freeze(op.value), op.value is not None))
        elif op.kind == "delete":
            nexts.append(EMPTY)
        elif op.kind == "get":
            if freeze(op.result) == value:
                nexts.append((value, leased))
        elif op.kind == "cas":
            match = value == freeze(op.expected)
            swapped = (freeze(op.value), False)  # a txn's put carries no lease
            if op.outcome == "unknown":
                nexts.append(swapped if match else (value, leased))
            elif op.result is True and match:
                nexts.append(swapped)
            elif op.result is False and not match:
                nexts.append((value, leased))
        for s in nexts:
            if s not in out:
                out.append(s)
    return out


def _relevant(op: Op) -> bool:
    """Does this operation constrain the register? (Reads must have ended ok to tell.)"""
    if op.outcome == "fail" or op.kind == "sget":
        return False
    return not (op.kind == "get" and op.outcome != "ok")


@dataclass
class _Search:
    """The outcome of one key's search."""

    linearizable: bool | None  # None: the budget ran out
    steps: int


def search(ops: Sequence[Op], budget: int) -> _Search:
    """Is this one key's history (relevant operations only) linearizable?"""
    n = len(ops)
    must = [op.outcome == "ok" for op in ops]
    # Events: calls before returns at equal times, so touching operations count as concurrent.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if must[i]:
            assert op.complete is not None
            events.append((op.complete, 1, i))
    events.sort()
    # A doubly linked list of events; node 0 is the head, nodes 1.. the events in order.
    size = len(events) + 1
    nxt = [i + 1 for i in range(size)]
    nxt[-1] = -1
    prv = [i - 1 for i in range(size)]
    is_call = [False] * size
    op_of = [-1] * size
    match = [-1] * size
    call_node = [0] * n
    for node, (_t, kind, i) in enumerate(events, start=1):
        op_of[node] = i
        if kind == 0:
            is_call[node] = True
            call_node[i] = node
        else:
            match[call_node[i]] = node

    def unlink(node: int) -> None:
        nxt[prv[node]] = nxt[node]
        if nxt[node] != -1:
            prv[nxt[node]] = prv[node]

    def relink(node: int) -> None:
        nxt[prv[node]] = node
        if nxt[node] != -1:
            prv[nxt[node]] = node

    def lift(node: int) -> None:
        unlink(node)
        if match[node] != -1:
            unlink(match[node])

    def unlift(node: int) -> None:
        if match[node] != -1:
            relink(match[node])
        relink(node)

    state = EMPTY
    linearized = 0
    remaining = sum(must)
    seen: set[tuple[int, State]] = set()
    # (call node, state before it, the states it may lead to, the one taken)
    stack: list[tuple[int, State, list[State], int]] = []
    steps = 0
    entry = nxt[0]

    def take(node: int, before: State, options: list[State], start: int) -> bool:
        """Linearize the call at `node` into the first unexplored option from `start`."""
        nonlocal state, linearized, remaining, entry
        i = op_of[node]
        after = linearized | (1 << i)
        for k in range(start, len(options)):
            config = (after, options[k])
            if config in seen:
                continue
            seen.add(config)
            stack.append((node, before, options, k))
            state = options[k]
            linearized = after
            remaining -= must[i]
            lift(node)
            entry = nxt[0]
            return True
        return False

    while remaining > 0:
        if entry != -1 and is_call[entry]:
            steps += 1
            if steps > budget:
                return _Search(None, steps)
            if not take(entry, state, step(state, ops[op_of[entry]]), 0):
                entry = nxt[entry]
            continue
        # A return event (an operation that must already be linearized) or the end: go back.
        while True:
            if not stack:
                return _Search(False, steps)
            node, before, options, k = stack.pop()
            i = op_of[node]
            linearized &= ~(1 << i)
            remaining += must[i]
            unlift(node)
            state = before
            if take(node, before, options, k + 1):
                break
            entry = nxt[node]
            break
    return _Search(True, steps)


def _prefix(ops: Sequence[Op], t: float) -> list[Op]:
    """The operations invoked by `t`, those still running at `t` made unknown: linearizable
    whenever the whole history is, so a non-linearizable prefix proves an anomaly."""
    out = []
    for op in ops:
        if op.invoke > t:
            continue
        if op.outcome == "ok" and op.complete is not None and op.complete > t:
            if op.kind == "get":
                continue
            op = replace(op, outcome="unknown")
        out.append(op)
    return out


def _explain(key: str, ops: list[Op], budget: int) -> Anomaly:
    """The shortest non-linearizable prefix (by binary search over completion times) and the
    operations around the one whose completion breaks it."""
    times = sorted({op.complete for op in ops if op.outcome == "ok" and op.complete is not None})
    lo, hi = 0, len(times) - 1  # times[hi] is proven (the whole history is)
    while lo < hi:
        mid = (lo + hi) // 2
        if search(_prefix(ops, times[mid]), budget).linearizable is False:
            hi = mid
        else:
            lo = mid + 1
    t = times[hi]
    prefix = _prefix(ops, t)
    culprits = [op for op in prefix if op.outcome == "ok" and op.complete == t]
    start = min(op.invoke for op in culprits)
    involved = [
        op for op in prefix if op.outcome != "ok" or op.complete is None or op.complete >= start
    ]
    written = [op for op in prefix if op.kind != "get"]
    before = [
        op
        for op in written
        if op.outcome == "ok" and op.complete is not None and op.complete < start
    ]
    if before:
        involved.append(max(before, key=lambda op: op.complete or 0.0))
    how = ""
    for c in culprits:
        if c.kind == "get" and c.result is not None:
            sources = [
                op
                for op in ops
                if op.kind != "get"
                and op.outcome != "fail"
                and freeze(op.value) == freeze(c.result)
            ]
            if not sources:
                how = f"; {c.result!r} was never written"
            involved += [op for op in sources[-3:] if op.invoke <= t]
    seen: set[int] = set()
    unique = []
    for op in sorted(involved, key=lambda op: op.invoke):
        if id(op) not in seen:
            seen.add(id(op))
            unique.append(op)
    message = (
        f"not linearizable: the first {len(prefix)} operations have no linearization once"
        f" the last of these completes (at {t:.6f}){how}"
    )
    return Anomaly("linearizability", key, message, unique)


def check_linearizable(ops: list[Op], *, budget: int = 200_000) -> Verdict:
    """Each key's linearizable history must be one of a register's; `budget` search steps
    (attempts to linearize an operation) per key, after which that key is "inconclusive"."""
    if budget < 1:
        raise ValueError(f"a search budget of {budget} steps")
    check_history(ops)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if _relevant(op):
            by_key[op.key].append(op)
    verdicts = []
    for key in sorted(by_key):
        found = search(by_key[key], budget)
        if found.linearizable is None:
            why = f"key {key!r}: search budget of {budget} steps ran out"
            verdicts.append(verdict([], [why], found.steps))
        elif found.linearizable:
            verdicts.append(verdict([], [], found.steps))
        else:
            verdicts.append(verdict([_explain(key, by_key[key], budget)], [], found.steps))
    return combine(verdicts)
