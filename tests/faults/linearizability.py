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

With the committed event stream (`committed`: a watch of every key from revision 1, taken
after healing, checked on its own by check_watch_streams) each key's writes are pinned to the
order they were committed in, as etcd's robustness tests patch their histories from a watch:
the register's state is a position in the key's stream, a write can only take effect as its
own event, and an unknown write is settled by the stream (its value committed: it happened, at
that place; never committed: it did not, or after everything else and unseen). An unknown
delete (or a lease's expiry) may account for a delete event no acknowledged delete claims;
an acknowledged delete that says it deleted nothing (``extra["deleted"] == 0``) claims none.
This turns the search from exponential in the unknown and overlapping writes into one that
mostly places the reads, which makes long runs conclusive. Any order found is still a legal
linearization of the history (the stream only guides the search), so "ok" means
linearizable; no order consistent with the stream means the clients and the committed
history disagree, an anomaly either way.

Limits: the search is exponential in the worst case (in how many operations overlap, and in
how many unknown ones are pending, as each may take effect at any later point or never).
Each key gets `budget` steps (one step: one attempt to linearize an operation; 1-5 µs
here; by default 200,000 or 500 per operation of the key, whichever is more); when they run
out the key is "inconclusive", never "ok". Measured on generated register histories with
5-10 overlapping clients: about 4-17 steps per operation to accept one, about 65 per
operation to prove an anomaly (the search must exhaust every order before it). Values are
compared by content (JSON-like values frozen), None meaning absent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.faults.checkers import (
    Anomaly,
    Event,
    Verdict,
    check_history,
    combine,
    freeze,
    verdict,
)
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


Step = Callable[[Any, Op], list[Any]]
"""A model: the states an operation may leave the register in from a state (none: it cannot
happen there)."""


def search(ops: Sequence[Op], budget: int, *, model: Step = step, initial: Hashable = EMPTY,
           must: Sequence[bool] | None = None) -> _Search:
    """Is this one key's history (relevant operations only) linearizable under `model` from
    `initial`? A depth-first search over a doubly linked list of call and return events,
    Porcupine's, remembering each (linearized set, state) reached so none is explored twice.
    `must`: the operations every linearization includes (default: the ok ones); an ok one
    must also precede its return, the others may take effect any time after their call."""
    state: Any = initial
    n = len(ops)
    must = [op.outcome == "ok" for op in ops] if must is None else list(must)
    # Events: calls before returns at equal times, so touching operations count as concurrent.
    # An unknown operation has no return: it may take effect any time after its call, and
    # need not be linearized (it may never have happened).
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if op.outcome == "ok":
            assert op.complete is not None and must[i]
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
    seen: set[tuple[int, Any]] = set()
    # (call node, state before it, the states it may lead to, the one taken)
    stack: list[tuple[int, Any, list[Any], int]] = []
    steps = 0
    entry = nxt[0]

    def take(node: int, before: Any, options: list[Any], start: int) -> bool:
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
            if not take(entry, state, model(state, ops[op_of[entry]]), 0):
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
    if found.stuck < 0:  # pinned: every return passed, but a committed write fits nowhere
        pending = [op for op in ops if op.outcome != "ok" and op.kind != "delete"]
        return Anomaly("linearizability", key, "no order places every committed write of"
                       " unknown outcome at its place in the committed stream", pending[:5])
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


@dataclass
class _Stream:
    """One key's committed events, as the pinned model reads them: `values[p]` is the key's
    value after the first p events (None: absent), `leased[p]` whether a lease holds it,
    `deletes[p]` the revision of event p if it is a delete (else None), `claimed[p]` whether
    an acknowledged delete says it made that event (then nothing else may), `place` the
    position each committed value's write leads to."""

    values: list[Any]
    leased: list[bool]
    deletes: list[int | None]
    claimed: list[bool]
    place: dict[Any, int]

    def step(self, p: int, op: Op) -> list[int]:
        """The positions `op` may lead to from position `p` (a write: only to its own event)."""
        last = len(self.deletes)
        starts = [p]
        if self.leased[p] and p < last and self.deletes[p] is not None and not self.claimed[p]:
            starts.append(p + 1)  # the lease expired (its keys' delete is the next event)
        out: list[int] = []
        for c in starts:
            current = self.values[c]
            nexts: list[int] = []
            if op.kind in ("put", "lease_put"):
                if self.place.get(freeze(op.value)) == c + 1:
                    nexts.append(c + 1)
            elif op.kind == "get":
                if freeze(op.result) == current:
                    nexts.append(c)
            elif op.kind == "cas":
                match = current == freeze(op.expected)
                if op.outcome == "ok" and op.result is False:
                    if not match:
                        nexts.append(c)
                elif match and self.place.get(freeze(op.value)) == c + 1:
                    nexts.append(c + 1)  # an ok swap, or an unknown one its value shows did
            elif op.kind == "delete":
                # How many keys it deleted, if the client said (else: either may be).
                count = op.extra.get("deleted") if op.outcome == "ok" else None
                deleted = self.deletes[c] if c < last else None
                if deleted is not None and count != 0 and (
                        op.result == deleted if op.outcome == "ok" else not self.claimed[c]):
                    nexts.append(c + 1)
                if current is None and op.outcome == "ok" and not count:
                    nexts.append(c)  # deleting an absent key changes nothing (unknown: skip it)
            for n in nexts:
                if n not in out:
                    out.append(n)
        return out


def _pin(key: str, ops: list[Op], events: list[Event]) -> tuple[_Stream | None, list[Op],
                                                                 list[bool], list[Anomaly]]:
    """One key's stream model, the operations to search (unknown writes the stream shows
    never happened left out) and which must be linearized; or the anomalies that the stream
    and the history show without a search (a value committed twice or by nobody, an
    acknowledged write never committed)."""
    writers: dict[Any, Op] = {}
    for op in ops:
        if op.kind in ("put", "lease_put", "cas"):
            writers.setdefault(freeze(op.value), op)
    values: list[Any] = [None]
    leased = [False]
    deletes: list[int | None] = []
    claims = {op.result for op in ops if op.kind == "delete" and op.outcome == "ok"
              and op.extra.get("deleted") != 0}
    claimed: list[bool] = []
    place: dict[Any, int] = {}
    anomalies: list[Anomaly] = []
    for rev, kind, _key, value in sorted(events, key=lambda e: e[0]):
        if kind == "delete":
            values.append(None)
            leased.append(False)
            deletes.append(rev)
            claimed.append(rev in claims)
            continue
        frozen = freeze(value)
        writer = writers.get(frozen)
        if frozen in place:
            anomalies.append(Anomaly("linearizability", key, f"{value!r} committed twice"
                                     f" (events #{place[frozen]} and #{len(values)}, revision"
                                     f" {rev}): one write applied twice",
                                     [writer] if writer else []))
        elif writer is None:
            anomalies.append(Anomaly("linearizability", key, f"{value!r} committed at revision"
                                     f" {rev}, but no operation wrote it"))
        place[frozen] = len(values)
        values.append(frozen)
        leased.append(writer is not None and writer.kind == "lease_put")
        deletes.append(None)
        claimed.append(False)
    # An unknown delete changes the register only by taking a delete event no acknowledged
    # delete claims (done as a no-op, it need not be done at all). Unknown deletes differ only
    # in when they were invoked, and one invoked earlier can take effect wherever a later one
    # can: the earliest as many as there are such events suffice. The rest are left out (each
    # would stay pending to the end, costing a step at every placement).
    orphans = sum(rev is not None and not c for rev, c in zip(deletes, claimed, strict=True))
    unknown_deletes = sorted((op.invoke, id(op)) for op in ops
                             if op.kind == "delete" and op.outcome == "unknown")
    useful = {i for _, i in unknown_deletes[:orphans]}
    kept: list[Op] = []
    must: list[bool] = []
    for op in ops:
        if op.kind == "delete" and op.outcome == "unknown" and id(op) not in useful:
            continue
        committed = freeze(op.value) in place
        if op.kind in ("put", "lease_put") or (op.kind == "cas" and op.result is not False):
            if op.outcome == "ok" and not committed:
                anomalies.append(Anomaly("linearizability", key, f"acknowledged {op.kind} of"
                                         f" {op.value!r} is not in the committed stream", [op]))
            elif op.outcome == "unknown" and not committed:
                continue  # it never took effect (or after all else: nothing saw it)
            kept.append(op)
            must.append(True)
        else:
            kept.append(op)
            must.append(op.outcome == "ok")
    if anomalies:
        return None, kept, must, anomalies
    return _Stream(values, leased, deletes, claimed, place), kept, must, []


BUDGET = 200_000
STEPS_PER_OP = 500
"""The default budget of a key: BUDGET steps, or STEPS_PER_OP per operation of the key if
more. Each placement tries the pending operations in turn (as many as overlap), so even an
easy history costs dozens of steps per operation: measured 35-100 on generated histories of
5,000-20,000 operations with about ten overlapping (1-2 µs a step)."""


def check_linearizable(ops: list[Op], *, budget: int | None = None,
                       committed: Sequence[Event] | None = None) -> Verdict:
    """Each key's linearizable history must be one of a register's; `budget` search steps
    (attempts to linearize an operation) per key (default: see STEPS_PER_OP), after which
    that key is "inconclusive".
    With `committed` (every event of every key from revision 1 up to a revision no
    operation's effect comes after) each key's writes are pinned to their committed order."""
    if budget is not None and budget < 1:
        raise ValueError(f"a search budget of {budget} steps")
    check_history(ops)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if _relevant(op):
            by_key[op.key].append(op)
    streams: dict[str, list[Event]] = defaultdict(list)
    for event in committed or ():
        streams[event[2]].append(event)
    verdicts = []
    for key in sorted(by_key):
        key_ops = by_key[key]
        steps = budget if budget is not None else max(BUDGET, STEPS_PER_OP * len(key_ops))
        if committed is None:
            found = search(key_ops, steps)
        else:
            stream, key_ops, must, anomalies = _pin(key, key_ops, streams.get(key, []))
            if stream is None:
                verdicts.append(verdict(anomalies, [], 0, {key: "anomaly"}))
                continue
            found = search(key_ops, steps, model=stream.step, initial=0, must=must)
        if found.linearizable is None:
            why = f"key {key!r}: search budget of {steps} steps ran out"
            verdicts.append(verdict([], [why], found.steps, {key: "inconclusive"}))
        elif found.linearizable:
            verdicts.append(verdict([], [], found.steps, {key: "ok"}))
        else:
            anomaly = _explain(key, key_ops, found)
            verdicts.append(verdict([anomaly], [], found.steps, {key: "anomaly"}))
    return combine(verdicts)
