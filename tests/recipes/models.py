"""Model-based checks of the recipes: a seeded random sequence of operations by several users
(user `i` on ``stores[i % len(stores)]``), compared after each step with a plain Python model
of what the recipe promises. A mismatch fails with the seed and the steps taken so far, so
``pytest tests/recipes/test_models.py -k 'seed-17'`` replays it. The single-member tests
(tests/recipes/test_models.py) pass one store; tests/recipes/test_across_members.py passes
the three members of one cluster."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import embedkv
from embedkv import Delete, Put
from embedkv.recipes import ConfigView, Election, Endpoint, Semaphore, SessionLost
from tests.waiting import wait_for

Stores = Sequence[embedkv.Store]

RECIPES = ["semaphore", "election", "barrier", "double_barrier", "services", "config"]
"""The recipes checked here: ``<recipe>_model(stores, name, seed)`` each."""


class Run:
    """One seeded run: its random source and the steps taken, for the failure message."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps: list[str] = []

    def step(self, text: str) -> None:
        self.steps.append(text)

    def wait(self, cond: Callable[[], Any], what: str) -> Any:
        return wait_for(cond, timeout=15, what=what)


@contextmanager
def seeded(seed: int) -> Iterator[Run]:
    """A Run whose AssertionError names the seed and the steps that led to it."""
    run = Run(seed)
    try:
        yield run
    except AssertionError as e:
        steps = "\n  ".join(run.steps[-25:])
        raise AssertionError(f"model mismatch with seed {seed}: {e}\n"
                             f"last steps:\n  {steps}") from e


def _kill(session: embedkv.recipes.Session) -> None:
    """The holder's process dies and the store ends its lease (as after the TTL, without
    waiting for it): no more keep-alives, its keys are deleted."""
    session.orphan()
    session.lease.revoke()


def _background(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """`target()` on a thread; its result (or the exception it raised) lands in the list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# --- semaphore ---------------------------------------------------------------------------------


def semaphore_model(stores: Stores, name: str, seed: int, steps: int = 30) -> None:
    """Users try, wait for, release and die holding a slot. Model: the users in line in
    arrival order, the first `n` hold. Never more than `n` holders, only the model's; a
    waiter is served as soon as the model says a slot freed for it."""
    with seeded(seed) as run:
        rng = run.rng
        n, users = rng.randint(1, 3), 5
        pfx = f"_embedkv/semaphore/{name}/"

        def new(i: int) -> Semaphore:
            return stores[i % len(stores)].semaphore(name, n, ttl=5)

        sems = [new(i) for i in range(users)]
        line: list[int] = []
        run.step(f"n={n}")
        for _ in range(steps):
            i = rng.randrange(users)
            if i in line[:n]:
                op = rng.choice(["release", "release", "die"])
                run.step(f"user {i} {op}")
                if op == "release":
                    sems[i].release()
                else:
                    _kill(sems[i].session)
                    sems[i] = new(i)
                line.remove(i)
            elif i in line:
                continue  # waiting: nothing to do but wait
            elif rng.random() < 0.5:
                run.step(f"user {i} tries")
                ok = sems[i].acquire(blocking=False)
                assert ok == (len(line) < n), f"try-acquire gave {ok} with {len(line)} in line"
                if ok:
                    line.append(i)
            else:
                run.step(f"user {i} waits")
                _background(lambda s=sems[i]: s.acquire(timeout=30))  # type: ignore[misc]
                line.append(i)
                run.wait(lambda: stores[-1].count(pfx) == len(line), "the waiter in line")
            holders = line[:n]
            run.wait(lambda: all(sems[j].is_held for j in holders),  # noqa: B023
                     f"users {holders} to hold")
            held = [j for j in range(users) if sems[j].is_held]
            assert held == sorted(holders), f"holders {held}, model {holders}"
            for s in stores:
                count = s.semaphore(name, n).holders()
                assert count == len(holders), f"holders() {count}, model {len(holders)}"
        while line:  # the rest release in turn; each waiter gets its slot
            i = line.pop(0)
            run.wait(lambda: sems[i].is_held, f"user {i} to hold")  # noqa: B023
            sems[i].release()
        assert stores[-1].count(pfx) == 0


# --- election ----------------------------------------------------------------------------------


def election_model(stores: Stores, name: str, seed: int, steps: int = 30) -> None:
    """Candidates campaign (at once or waiting), proclaim, resign and die. Model: the line of
    candidates in arrival order and each one's value; the first leads. One leader, the
    model's, on every member; an observer sees exactly the model's changes of leader value."""
    with seeded(seed) as run:
        rng = run.rng
        users = 4
        pfx = f"_embedkv/election/{name}/"

        def new(i: int) -> Election:
            return stores[i % len(stores)].election(name, ttl=5)

        elections = [new(i) for i in range(users)]
        line: list[int] = []
        value: dict[int, str] = {}
        counter = iter(range(10**6))
        model_seen: list[str | None] = [None]
        seen: list[Any] = []
        observation = stores[-1].election(name).observe(seen.append)
        for _ in range(steps):
            i = rng.randrange(users)
            v = f"u{i}-{next(counter)}"
            if line and i == line[0]:
                op = rng.choice(["proclaim", "proclaim", "resign", "die"])
                run.step(f"leader {i} {op}" + (f" {v}" if op == "proclaim" else ""))
                if op == "proclaim":
                    elections[i].proclaim(v)
                    value[i] = v
                else:
                    if op == "resign":
                        elections[i].resign()
                    else:
                        _kill(elections[i].session)
                        elections[i] = new(i)
                    line.pop(0)
            elif i in line:
                run.step(f"waiting {i} proclaims {v}")
                try:
                    elections[i].proclaim(v)
                except SessionLost:
                    pass
                else:
                    raise AssertionError(f"candidate {i} proclaimed while {line[0]} leads")
            elif rng.random() < 0.4:
                run.step(f"user {i} campaigns at once with {v}")
                ok = elections[i].campaign(v, timeout=0)
                assert ok == (not line), f"campaign(timeout=0) gave {ok} with line {line}"
                if ok:
                    line.append(i)
                    value[i] = v
            else:
                run.step(f"user {i} campaigns with {v}")
                _background(lambda e=elections[i], v=v: e.campaign(v, timeout=30))  # type: ignore[misc]
                line.append(i)
                value[i] = v
                run.wait(lambda: stores[-1].count(pfx) == len(line), "the campaigner in line")
            expect = value[line[0]] if line else None
            if expect != model_seen[-1]:
                model_seen.append(expect)
            if line:
                run.wait(lambda: elections[line[0]].is_leader, f"{line[0]} to lead")
            leaders = [j for j in range(users) if elections[j].is_leader]
            assert leaders == line[:1], f"leaders {leaders}, model {line[:1]}"
            for s in stores:
                got = s.election(name).leader()
                assert got == expect, f"leader() on {s.name} is {got!r}, model {expect!r}"
            run.wait(lambda: seen == model_seen, f"observed {seen} == model {model_seen}")
        while line:
            i = line.pop(0)
            run.wait(lambda: elections[i].is_leader, f"{i} to lead")  # noqa: B023
            elections[i].resign()
        observation.cancel()
        assert stores[-1].count(pfx) == 0


# --- barriers ----------------------------------------------------------------------------------


def _none_early(run: Run, calls: list[tuple[str, Callable[[], object]]],
                started: Callable[[int], bool], what: str) -> None:
    """Start the blocking `calls` one at a time, on threads. After each but the last, once
    `started(k)` shows the k begun in the store, none may have returned; after the last,
    all return True."""
    results: list[list[object]] = []
    for k, (label, call) in enumerate(calls, start=1):
        run.step(label)
        results.append(_background(call)[1])
        if k < len(calls):
            run.wait(lambda: started(k), f"{k} of {len(calls)} started")  # noqa: B023
            early = [i for i, out in enumerate(results) if out]
            assert not early, f"{early} {what} with {k} of {len(calls)}"
    run.wait(lambda: all(results), f"all {len(calls)} {what}")
    assert all(out == [True] for out in results), results


def barrier_model(stores: Stores, name: str, seed: int, rounds: int = 4) -> None:
    """Rounds of a barrier of random size `n`, reset between rounds. Model: how many have
    arrived. Nobody passes with fewer than `n` arrived; all pass once the n-th does; late
    arrivals pass at once until the reset."""
    with seeded(seed) as run:
        rng = run.rng
        waiting = f"_embedkv/barrier/{name}/w/"
        for r in range(rounds):
            n = rng.randint(1, 4)
            run.step(f"round {r}: n={n}")
            users = [rng.randrange(len(stores) * 2) for _ in range(n)]
            arrivals = [stores[u % len(stores)].barrier(name, n, ttl=5) for u in users]
            _none_early(run, [(f"arrival {k + 1} of {n} (user {u})",
                               lambda b=b: b.wait(timeout=30))  # type: ignore[misc]
                              for k, (u, b) in enumerate(zip(users, arrivals, strict=True))],
                        lambda k: stores[-1].count(waiting) == k, "passed the barrier")
            for _ in range(rng.randint(0, 2)):
                run.step("a late arrival")
                late = stores[rng.randrange(len(stores))].barrier(name, n)
                assert late.wait(timeout=0), "a late arrival did not pass the open barrier"
            run.step("reset")
            stores[rng.randrange(len(stores))].barrier(name, n).reset()
            if n > 1:  # closed again: one alone does not pass (with n == 1 it would)
                assert not stores[0].barrier(name, n).wait(timeout=0), "open after reset"


def double_barrier_model(stores: Stores, name: str, seed: int, rounds: int = 3) -> None:
    """Rounds of a double barrier of random size `n`, participants entering and then leaving
    in random orders on random members. Model: how many entered, how many left. Nobody is
    past enter() before all `n` entered, nor past leave() before all `n` left."""
    with seeded(seed) as run:
        rng = run.rng
        pfx = f"_embedkv/double_barrier/{name}/"
        for r in range(rounds):
            n = rng.randint(1, 4)
            run.step(f"round {r}: n={n}")
            parts = [stores[rng.randrange(len(stores))].double_barrier(name, n, ttl=5)
                     for _ in range(n)]
            _none_early(run, [(f"participant {k} enters",
                               lambda p=p: p.enter(timeout=30))  # type: ignore[misc]
                              for k, p in enumerate(parts)],
                        lambda k: stores[-1].count(pfx + "w/") == k, "past enter()")
            order = list(range(n))
            rng.shuffle(order)
            _none_early(run, [(f"participant {i} leaves",
                               lambda p=parts[i]: p.leave(timeout=30))  # type: ignore[misc]
                              for i in order],
                        lambda k: stores[-1].count(pfx + "w/") == n - k,  # noqa: B023
                        "past leave()")
            run.wait(lambda: stores[-1].count(pfx) == 0, "the barrier cleared")


# --- service registry ------------------------------------------------------------------------


def services_model(stores: Stores, name: str, seed: int, steps: int = 25) -> None:
    """Backends register, deregister, die and lose their lease (and re-register); clients
    list, watch and pick. Model: the live (id, address) list, oldest registration first.
    endpoints() on every member equals it; a watcher's joins and leaves rebuild it; picks
    with no change between them go round the model's list in order, each once per round."""
    with seeded(seed) as run:
        rng = run.rng
        regs: dict[str, embedkv.recipes.Registration] = {}  # address -> registration
        live: list[tuple[str, str]] = []  # (id, address)
        watched: dict[str, str] = {}
        guard = threading.Lock()

        def on_change(kind: str, ep: Endpoint) -> None:
            with guard:
                if kind == "join":
                    watched[ep.id] = ep.address
                else:
                    watched.pop(ep.id, None)

        watch = stores[-1].services(name).watch(on_change)
        client = stores[0].services(name)
        lost_leases = 0
        for step in range(steps):
            choice = rng.random()
            if not regs or choice < 0.35:
                address = f"10.{seed % 250}.0.{step}:80"
                run.step(f"register {address}")
                reg = stores[rng.randrange(len(stores))].services(name).register(
                    address, {"step": step}, ttl=2)
                regs[address] = reg
                live.append((reg.id, address))
            elif choice < 0.7:
                address = rng.choice(sorted(regs))
                reg = regs.pop(address)
                op = rng.choice(["deregister", "die"])
                run.step(f"{op} {address}")
                if op == "deregister":
                    reg.deregister()
                else:
                    _kill(reg.session)
                live.remove((reg.id, address))
            elif choice < 0.8 and lost_leases < 2:
                lost_leases += 1
                address = rng.choice(sorted(regs))
                reg = regs[address]
                old = reg.id
                run.step(f"{address} loses its lease")
                reg.session.lease.revoke()  # it learns at its next keep-alive and re-registers
                live.remove((old, address))
                run.wait(lambda: reg.id != old and reg.live, "re-registration")  # noqa: B023
                live.append((reg.id, address))
            else:
                rounds = rng.randint(1, 2)
                run.step(f"pick {rounds} round(s) over {len(live)}")
                ring = [ep for ep, _ in live]
                picks = [client.pick().id for _ in range(rounds * len(ring))]
                start = ring.index(picks[0])
                expect = [ring[(start + k) % len(ring)] for k in range(len(picks))]
                assert picks == expect, f"picks {picks}, model's round {expect}"
                assert client.pick(random=True).id in ring
            for s in stores:
                got = [(ep.id, ep.address) for ep in s.services(name).endpoints()]
                assert got == live, f"endpoints {got}, model {live}"
            run.wait(lambda: watched == dict(live), f"watched {watched} == model {live}")
        if not live:
            try:
                client.pick()
            except LookupError:
                pass
            else:  # pragma: no cover
                raise AssertionError("pick() with no live endpoint")
        watch.cancel()
        for reg in regs.values():
            reg.deregister()


# --- live config -------------------------------------------------------------------------------


def config_model(stores: Stores, name: str, seed: int, steps: int = 30) -> None:
    """Transactions of puts and deletes, in and out of the prefix, on random members, now and
    then a compaction. Model: the prefix's content after each revision. The view (on the last
    member) and every state its callbacks saw equal the model at their own revision, and the
    view catches up with the model."""
    with seeded(seed) as run:
        rng = run.rng
        pfx = f"{name}/"
        inside = [f"{pfx}{k}" for k in "abcd"]
        outside = [f"{name}x", f"{name}-other/a"]
        state: dict[str, Any] = {}
        writer = stores[0]
        writer.put(outside[0], "start")
        history: dict[int, dict[str, Any]] = {writer.revision: {}}
        view: ConfigView = stores[-1].config(pfx)
        seen: list[tuple[int, dict[str, Any]]] = []
        view.on_change(lambda v: seen.append(v.snapshot()))

        def at(revision: int) -> dict[str, Any]:
            return history[max(r for r in history if r <= revision)]

        compacted = 0
        for _ in range(steps):
            if rng.random() < 0.1 and writer.revision > compacted:
                compacted = writer.revision
                run.step(f"compact at {compacted}")
                writer.compact(compacted)
                continue
            ops: list[Put | Delete] = []
            for _ in range(rng.randint(1, 3)):  # at most one change per key in one txn
                key = rng.choice(inside + outside)
                kind = rng.random()
                if kind >= 0.9 and not ops:
                    ops.append(Delete(pfx, prefix=True))
                    for k in inside:
                        state.pop(k, None)
                    break
                if kind >= 0.9 or any(op.key == key for op in ops):
                    break
                if kind < 0.6:
                    v = rng.randrange(100)
                    ops.append(Put(key, v))
                    state[key] = v
                else:
                    ops.append(Delete(key))
                    state.pop(key, None)
            writer = stores[rng.randrange(len(stores))]
            r = writer.txn(success=ops)
            expect = {k[len(pfx):]: v for k, v in state.items() if k.startswith(pfx)}
            history[r.revision] = expect
            run.step(f"txn at {r.revision}: {ops}")
            run.wait(lambda: view.snapshot()[1] == expect,  # noqa: B023
                     f"view {dict(view)} == model {expect}")
            revision, data = view.snapshot()
            assert data == at(revision), f"view at {revision}: {data}, model {at(revision)}"
        view.close()
        for revision, data in seen:
            assert data == at(revision), f"a callback saw {data} at {revision}: {at(revision)}"
