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

Limits: the search is exponential in the worst case (in how many operations overlap, and in
how many unknown ones are pending, as each may take effect at any later point or never).
Each key gets `budget` steps (one step: one attempt to linearize an operation; 2-5 µs
here); when they run out the key is "inconclusive", never "ok". Measured on generated
register histories with 5-10 overlapping clients: about 4-17 steps per operation to accept
one, about 65 per operation to prove an anomaly (the search must exhaust every order before
it), so the default budget decides keys of a few thousand operations; give long campaigns
more. Values are compared by content (JSON-like values frozen), None meaning absent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
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
    deepest: int = -1  # not linearizable: the most ok operations any attempt linearized,
    stuck: int = -1  # and the one whose return that attempt could not pass


def search(ops: Sequence[Op], budget: int) -> _Search:
    """Is this one key's history (relevant operations only) linearizable? A depth-first
    search over a doubly linked list of call and return events, Porcupine's, remembering
    each (linearized set, state) reached so none is explored twice."""
    state = EMPTY
    n = len(ops)
    must = [op.outcome == "ok" for op in ops]
    # Events: calls before returns at equal times, so touching operations count as concurrent.
    # An unknown operation has no return: it may take effect any time after its call, and
    # need not be linearized (it may never have happened).
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if must[i]:
            assert op.complete is not None
            events.append((op.complete, 1, i))
    events.sort()
    size = len(events) + 1  # node 0 is the head, nodes 1.. the events in order
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

    linearized = 0
    remaining = sum(must)
    depth = 0  # ok operations linearized
    deepest, stuck = -1, -1
    seen: set[tuple[int, State]] = set()
    # (call node, state before it, the states it may lead to, the one taken)
    stack: list[tuple[int, State, list[State], int]] = []
    steps = 0
    entry = nxt[0]

    def take(node: int, before: State, options: list[State], start: int) -> bool:
        """Linearize the call at `node` into the first unexplored option from `start`."""
        nonlocal state, linearized, remaining, depth, entry
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
            depth += must[i]
            unlink(node)
            if match[node] != -1:
                unlink(match[node])
            entry = nxt[0]
            return True
        return False

    while True:
        if remaining == 0:
            return _Search(True, steps)
        if entry != -1 and is_call[entry]:
            steps += 1
            if steps > budget:
                return _Search(None, steps)
            if not take(entry, state, step(state, ops[op_of[entry]]), 0):
                entry = nxt[entry]
            continue
        if entry != -1 and depth > deepest:
            deepest, stuck = depth, op_of[entry]
        # A return no order of the calls before it passes: undo the last choice and try its
        # next option, or the calls after it.
        if not stack:
            return _Search(False, steps, deepest, stuck)
        node, before, options, k = stack.pop()
        i = op_of[node]
        linearized &= ~(1 << i)
        remaining += must[i]
        depth -= must[i]
        if match[node] != -1:
            relink(match[node])
        relink(node)
        state = before
        if not take(node, before, options, k + 1):
            entry = nxt[node]


def _explain(key: str, ops: list[Op], found: _Search) -> Anomaly:
    """The operation no attempt got past, the operations running with it, the last write
    done before it began, and (for a read) the writes of the value it read."""
    assert found.stuck >= 0, "a failed search passes no return only if there is none"
    culprit = ops[found.stuck]
    start = culprit.invoke
    end = culprit.complete if culprit.complete is not None else float("inf")
    involved = [op for op in ops if op.invoke <= end and (op.complete or end) >= start]
    before = [
        op
        for op in ops
        if op.kind != "get" and op.outcome == "ok" and (op.complete or start) < start
    ]
    if before:
        involved.append(max(before, key=lambda op: op.complete or 0.0))
    how = ""
    if culprit.kind == "get" and culprit.result is not None:
        sources = [
            op
            for op in ops
            if op.kind in ("put", "lease_put", "cas") and freeze(op.value) == freeze(culprit.result)
        ]
        if not sources:
            how = f"; {culprit.result!r} was never written"
        involved += sources[-3:]
    unique = list({id(op): op for op in sorted(involved, key=lambda op: op.invoke)}.values())
    message = (
        f"not linearizable: no order of its {sum(op.outcome == 'ok' for op in ops)} ok"
        f" operations gets past {culprit.kind} by p{culprit.process} at {start:.6f}"
        f" (the deepest attempt linearized {found.deepest} before it){how}"
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
            verdicts.append(verdict([], [why], found.steps, {key: "inconclusive"}))
        elif found.linearizable:
            verdicts.append(verdict([], [], found.steps, {key: "ok"}))
        else:
            anomaly = _explain(key, by_key[key], found)
            verdicts.append(verdict([anomaly], [], found.steps, {key: "anomaly"}))
    return combine(verdicts)
