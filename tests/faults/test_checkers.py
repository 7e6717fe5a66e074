"""The fault-campaign checkers on hand-made histories, good and bad, so they are shown able to
fail; and on histories from a real sequential register (always linearizable) and the same with
one read corrupted (never "ok")."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.checkers import (
    Event,
    LeaseObservation,
    Verdict,
    check_leases,
    check_no_lost_writes,
    check_watch_streams,
)
from tests.faults.history import Kind, Op, Outcome
from tests.faults.linearizability import check_linearizable


def op(
    kind: Kind,
    invoke: float,
    complete: float | None,
    *,
    value: Any = None,
    result: Any = None,
    expected: Any = None,
    outcome: Outcome = "ok",
    key: str = "k",
    process: int = 0,
) -> Op:
    return Op(process, kind, key, value, expected, invoke, complete, outcome, result)


def put(v: Any, a: float, b: float | None, **kw: Any) -> Op:
    return op("put", a, b, value=v, **kw)


def get(r: Any, a: float, b: float | None, **kw: Any) -> Op:
    return op("get", a, b, result=r, **kw)


def cas(e: Any, v: Any, r: Any, a: float, b: float | None, **kw: Any) -> Op:
    return op("cas", a, b, expected=e, value=v, result=r, **kw)


def anomaly(v: Verdict) -> str:
    assert v.status == "anomaly", v.explain()
    return v.explain()


def ok(v: Verdict) -> None:
    assert v.status == "ok", v.explain()


# --- linearizability: hand-made histories ----------------------------------------------------


def test_sequential_register_history_is_ok() -> None:
    ok(check_linearizable([put(1, 0, 1), get(1, 2, 3), op("delete", 4, 5), get(None, 6, 7)]))


def test_stale_read_is_an_anomaly_explained_by_its_key_and_ops() -> None:
    stale = get(1, 4, 5, process=1)
    history = [put(1, 0, 1), put(2, 2, 3), stale, put(3, 10, 11), get(3, 12, 13)]
    v = check_linearizable(history)
    text = anomaly(v)
    [a] = v.anomalies
    assert a.key == "k" and stale in a.ops and history[1] in a.ops
    assert history[3] not in a.ops  # after the stale read: not part of the explanation
    assert (
        "gets past get by p1 at 4.0" in text
        and "the deepest attempt linearized 2 before it" in text
    )


def test_read_concurrent_with_a_write_may_see_either_value() -> None:
    ok(check_linearizable([put(1, 0, 1), put(2, 2, 6), get(1, 3, 4), get(2, 5, 7)]))
    ok(check_linearizable([put(1, 0, 1), put(2, 2, 6), get(2, 3, 4), get(2, 5, 7)]))
    # ... but not go back once a later read saw the new value.
    anomaly(check_linearizable([put(1, 0, 1), put(2, 2, 9), get(2, 3, 4), get(1, 5, 7)]))


def test_double_cas_success_is_an_anomaly() -> None:
    base = [put(0, 0, 1)]
    anomaly(check_linearizable([*base, cas(0, 1, True, 2, 5), cas(0, 2, True, 3, 6, process=1)]))
    ok(check_linearizable([*base, cas(0, 1, True, 2, 5), cas(0, 2, False, 3, 6, process=1)]))


def test_cas_outcomes_against_the_register() -> None:
    ok(check_linearizable([cas(None, 1, True, 0, 1), get(1, 2, 3)]))  # None: key absent
    anomaly(check_linearizable([put(5, 0, 1), cas(5, 6, False, 2, 3)]))  # compare held
    anomaly(check_linearizable([put(5, 0, 1), cas(4, 6, True, 2, 3)]))  # compare failed


def test_read_of_a_never_written_value_is_an_anomaly() -> None:
    text = anomaly(check_linearizable([put(1, 0, 1), get(7, 2, 3)]))
    assert "7 was never written" in text


def test_failed_writes_took_no_effect() -> None:
    anomaly(check_linearizable([put(1, 0, 1), put(2, 2, 3, outcome="fail"), get(2, 4, 5)]))


def test_unknown_write_may_take_effect_later_or_never() -> None:
    pending = put(2, 2, None, outcome="unknown")
    ok(check_linearizable([put(1, 0, 1), pending, get(1, 3, 4)]))  # not yet, or never
    ok(check_linearizable([put(1, 0, 1), pending, get(1, 3, 4), get(2, 50, 51)]))  # later
    timed_out = put(2, 2, 3, outcome="unknown")  # a completion time is no bound when unknown
    ok(check_linearizable([put(1, 0, 1), timed_out, get(1, 4, 5), get(2, 6, 7)]))
    # never before its invoke, and once seen it stays until overwritten
    anomaly(check_linearizable([put(1, 0, 1), get(2, 1.5, 1.8), pending]))
    anomaly(check_linearizable([put(1, 0, 1), pending, get(2, 3, 4), get(1, 5, 6)]))


def test_unknown_cas_swaps_only_if_its_compare_holds() -> None:
    maybe = cas(1, 2, None, 2, None, outcome="unknown")
    ok(check_linearizable([put(1, 0, 1), maybe, get(2, 3, 4)]))
    anomaly(check_linearizable([put(3, 0, 1), maybe, get(2, 3, 4)]))


def test_unknown_and_serializable_reads_are_not_checked() -> None:
    ok(check_linearizable([put(1, 0, 1), put(2, 2, 3), op("sget", 4, 5, result=1)]))
    ok(check_linearizable([put(1, 0, 1), get(9, 2, None, outcome="unknown")]))
    ok(check_linearizable([put(1, 0, 1), get(9, 2, 3, outcome="fail")]))


def test_keys_are_checked_separately() -> None:
    history = [
        put(1, 0, 1, key="a"),
        put(1, 0, 1, key="b"),
        put(2, 2, 3, key="b"),
        get(1, 4, 5, key="a"),
        get(1, 4, 5, key="b"),
    ]
    v = check_linearizable(history)
    anomaly(v)
    assert [a.key for a in v.anomalies] == ["b"] and v.keys == {"a": "ok", "b": "anomaly"}


def test_a_leased_key_may_vanish_but_not_come_back() -> None:
    lease_put = op("lease_put", 0, 1, value=1)
    ok(check_linearizable([lease_put, get(1, 2, 3), get(None, 4, 5)]))
    anomaly(check_linearizable([lease_put, get(None, 2, 3), get(1, 4, 5)]))
    anomaly(check_linearizable([put(1, 0, 1), get(None, 2, 3)]))  # no lease: no vanishing
    # a plain put or a cas replaces the leased value with one that has no lease
    ok(check_linearizable([lease_put, cas(1, 2, True, 2, 3), get(2, 4, 5)]))
    anomaly(check_linearizable([lease_put, put(2, 2, 3), get(None, 4, 5)]))


def test_values_compare_by_content() -> None:
    ok(check_linearizable([put({"a": [1, 2]}, 0, 1), get({"a": [1, 2]}, 2, 3)]))
    anomaly(check_linearizable([put({"a": [1, 2]}, 0, 1), get({"a": [2, 1]}, 2, 3)]))


def test_malformed_histories_are_refused() -> None:
    with pytest.raises(ValueError, match="without a completion"):
        check_linearizable([put(1, 0, None)])
    with pytest.raises(ValueError, match="before it was invoked"):
        check_linearizable([put(1, 5, 1)])
    with pytest.raises(ValueError, match="not a bool"):
        check_linearizable([cas(1, 2, 3, 0, 1)])
    with pytest.raises(ValueError, match="budget"):
        check_linearizable([], budget=0)


def concurrent_unknowns(n: int) -> list[Op]:
    """Many overlapping writes of unknown outcome then reads that pin few of them: a search
    that must try very many subsets and orders."""
    ops = [put(i, i * 0.01, None, outcome="unknown", process=i) for i in range(n)]
    ops += [get(i % 3, 100 + i, 100.5 + i, process=n) for i in range(n)]
    return ops


def test_budget_exhausted_is_inconclusive_never_ok() -> None:
    # an anomaly (after the writes, reads flip among 0, 1, 2: each write happens once) ...
    assert check_linearizable(concurrent_unknowns(6)).status == "anomaly"
    # ... that takes more than the default budget to prove in a bigger history
    v = check_linearizable(concurrent_unknowns(14))
    assert v.status == "inconclusive", v.explain()
    assert "key 'k': search budget of 200000 steps ran out" in v.explain()
    assert v.keys == {"k": "inconclusive"} and v.steps > 200_000
    # a long but easy history: ok within the default budget, inconclusive within a tiny one
    big = [put(i, i, i + 0.5) for i in range(400)] + [get(399, 500, 501)]
    ok(check_linearizable(big))
    assert check_linearizable(big, budget=100).status == "inconclusive"
    # budgets are per key: one key's give-up does not hide another's anomaly
    mixed = [*concurrent_unknowns(14), put(1, 0, 1, key="j"), get(2, 2, 3, key="j")]
    v = check_linearizable(mixed)
    assert v.status == "anomaly" and v.keys == {"j": "anomaly", "k": "inconclusive"}


# --- linearizability: generated histories ----------------------------------------------------


def generate(seed: int, committed: list[Event] | None = None) -> list[Op]:
    """A history of a real sequential register: each op takes effect at one instant between
    its invoke and completion; unknown writes took effect or not; failed ones did not. Each
    change is appended to `committed` as its event (revisions from 1); ok puts and deletes
    return their revision as the store's do."""
    events: list[Event] = [] if committed is None else committed
    rng = random.Random(seed)
    keys = ["a", "b"]
    state: dict[str, Any] = {}
    ops: list[Op] = []
    t = 0.0
    for i in range(rng.randint(5, 40)):
        t += rng.expovariate(1.0)  # the linearization point
        key = rng.choice(keys)
        before, after = rng.expovariate(0.5), rng.expovariate(0.5)
        a, b = t - before, t + after
        kinds: list[Kind] = ["put", "get", "get", "delete", "cas", "lease_put", "sget"]
        kind = rng.choice(kinds)
        fate = rng.random()
        outcome: Outcome = "ok" if fate < 0.8 else "unknown" if fate < 0.93 else "fail"
        takes_effect = outcome == "ok" or (outcome == "unknown" and rng.random() < 0.5)
        end = b if outcome != "unknown" or rng.random() < 0.5 else None
        current = state.get(key)
        value = f"v{i}"
        if kind in ("get", "sget"):
            ops.append(op(kind, a, end, result=current, outcome=outcome, key=key, process=i))
            continue
        if kind == "cas":
            expected = current if rng.random() < 0.6 else rng.choice([None, "v0", "v1"])
            swapped = expected == current
            if takes_effect and swapped:
                state[key] = value
                events.append((len(events) + 1, "put", key, value))
            result = swapped if outcome == "ok" else None
            ops.append(cas(expected, value, result, a, end, outcome=outcome, key=key, process=i))
            continue
        deleted = 0
        if takes_effect:
            if kind == "delete":
                if state.pop(key, None) is not None:
                    events.append((len(events) + 1, "delete", key, None))
                    deleted = 1
            else:
                state[key] = value
                events.append((len(events) + 1, "put", key, value))
        ops.append(
            op(
                kind,
                a,
                end,
                value=None if kind == "delete" else value,
                result=len(events) if outcome == "ok" else None,
                outcome=outcome,
                key=key,
                process=i,
            )
        )
        if kind == "delete" and outcome == "ok":
            ops[-1].extra["deleted"] = deleted  # as the campaign's clients report it
    return ops


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_register_histories_are_linearizable_and_a_corrupt_read_is_not(seed: int) -> None:
    committed: list[Event] = []
    history = generate(seed, committed)
    ok(check_linearizable(history))
    ok(check_linearizable(history, committed=committed))
    reads = [o for o in history if o.kind == "get" and o.outcome == "ok"]
    if reads:
        random.Random(seed).choice(reads).result = "never-written"
        assert check_linearizable(history).status != "ok"
        assert check_linearizable(history, committed=committed).status == "anomaly"


# --- linearizability pinned to the committed stream -----------------------------------------


def puts_of(*values: Any, key: str = "k") -> list[Event]:
    """A committed stream: one put event per value, revisions from 1."""
    return [(rev, "put", key, v) for rev, v in enumerate(values, start=1)]


def test_stream_settles_unknown_writes_and_makes_long_searches_conclusive() -> None:
    # Without the stream the anomaly below is beyond the budget (see above); pinned to the
    # order the writes were committed in, only the reads are left to place.
    v = check_linearizable(concurrent_unknowns(14), committed=puts_of(0, 1, 2))
    assert v.status == "anomaly" and v.steps < 1000, v.explain()
    # 14 writes in doubt, the stream shows which happened and in what order: 0..13, and the
    # reads follow it.
    history = [put(i, i * 0.01, None, outcome="unknown", process=i) for i in range(14)]
    history += [get(i, 100 + i, 100.5 + i, process=14) for i in range(14)]
    v = check_linearizable(history, committed=puts_of(*range(14)))
    assert v.status == "ok" and v.steps < 1000, v.explain()


def test_unknown_write_absent_from_the_stream_never_happened() -> None:
    history = [put(1, 0, 1), put(2, 2, None, outcome="unknown"), get(2, 3, 4)]
    ok(check_linearizable(history))  # it may have happened...
    v = check_linearizable(history, committed=puts_of(1))  # ... but it was never committed
    assert "get by p0" in anomaly(v)


def test_reads_must_follow_the_committed_order_of_concurrent_writes() -> None:
    history = [put(1, 0, 10, process=1), put(2, 0, 10, process=2), get(2, 11, 12)]
    ok(check_linearizable(history))
    ok(check_linearizable(history, committed=puts_of(1, 2)))
    anomaly(check_linearizable(history, committed=puts_of(2, 1)))


def test_stream_against_the_history_anomalies() -> None:
    twice = check_linearizable([put(1, 0, 1)], committed=puts_of(1, 1))
    assert "committed twice" in anomaly(twice)
    nobody = check_linearizable([put(1, 0, 1)], committed=puts_of(1, 7))
    assert "no operation wrote it" in anomaly(nobody)
    swapped = check_linearizable([cas(None, 1, True, 0, 1)], committed=[])
    assert "acknowledged cas of 1 is not in the committed stream" in anomaly(swapped)
    lost = check_linearizable([put(1, 0, 1), get(None, 2, 3)], committed=[])
    assert "acknowledged put" in anomaly(lost)


def test_delete_events_belong_to_a_delete_or_an_expiry() -> None:
    stream: list[Event] = [(1, "put", "k", 1), (2, "delete", "k", None)]
    # an acknowledged delete claims the event of its revision; one of an absent key, none
    ok(check_linearizable([put(1, 0, 1), op("delete", 2, 3, result=2), get(None, 4, 5),
                           op("delete", 6, 7, result=2)], committed=stream))
    anomaly(check_linearizable([put(1, 0, 1), op("delete", 2, 3, result=9), get(None, 4, 5)],
                               committed=stream))
    # one that says it deleted nothing claims nothing, whatever revision it saw
    noop = op("delete", 2, 3, result=2)
    noop.extra["deleted"] = 0
    anomaly(check_linearizable([put(1, 0, 1), noop, get(None, 4, 5)], committed=stream))
    unknown = op("delete", 1.5, None, outcome="unknown")
    ok(check_linearizable([put(1, 0, 1), unknown, noop, get(None, 4, 5)], committed=stream))
    # an event an acknowledged delete made is not an unknown delete's to take earlier
    mine = op("delete", 3, 4, result=2)
    mine.extra["deleted"] = 1
    anomaly(check_linearizable([put(1, 0, 1), unknown, get(None, 2, 2.5), mine],
                               committed=stream))
    # a delete of unknown outcome may account for it ...
    ok(check_linearizable([put(1, 0, 1), op("delete", 2, None, outcome="unknown"),
                           get(None, 4, 5)], committed=stream))
    # ... and nothing else may
    v = check_linearizable([put(1, 0, 1), get(None, 4, 5)], committed=stream)
    assert "get by p0" in anomaly(v)
    # a leased key's delete: its lease expired
    ok(check_linearizable([op("lease_put", 0, 1, value=1), get(None, 4, 5)], committed=stream))
    # an unknown cas happened if its value was committed, so its compare held
    ok(check_linearizable([put(1, 0, 1), cas(1, 2, None, 2, None, outcome="unknown"),
                           get(2, 4, 5)], committed=puts_of(1, 2)))
    anomaly(check_linearizable([put(1, 0, 1), cas(9, 2, None, 2, None, outcome="unknown"),
                                get(2, 4, 5)], committed=puts_of(1, 2)))


# --- lost writes -----------------------------------------------------------------------------


def test_acknowledged_write_lost_is_an_anomaly() -> None:
    history = [put(1, 0, 1), put(2, 2, 3)]
    ok(check_no_lost_writes(history, {"k": 2}))
    text = anomaly(check_no_lost_writes(history, {"k": 1}))
    assert "acknowledged write lost" in text and "put('k', 2)" in text
    anomaly(check_no_lost_writes(history, {}))  # the key vanished


def test_overwritten_or_deleted_writes_are_not_lost() -> None:
    ok(check_no_lost_writes([put(1, 0, 1), op("delete", 2, 3)], {}))
    ok(check_no_lost_writes([put(1, 0, 5), put(2, 1, 3)], {"k": 1}))  # concurrent: any order
    ok(check_no_lost_writes([put(1, 0, 1), put(2, 2, None, outcome="unknown")], {"k": 2}))
    ok(check_no_lost_writes([put(1, 0, 1), cas(1, 2, True, 2, 3)], {"k": 2}))
    ok(check_no_lost_writes([op("lease_put", 0, 1, value=1)], {}))  # its lease may expire
    # a failed or refused write supersedes nothing, and writes nothing
    anomaly(check_no_lost_writes([put(1, 0, 1), put(2, 2, 3, outcome="fail")], {"k": 2}))
    anomaly(check_no_lost_writes([put(1, 0, 1), cas(1, 2, False, 2, 3)], {"k": 2}))


def test_final_value_never_written_is_an_anomaly() -> None:
    text = anomaly(check_no_lost_writes([put(1, 0, 1)], {"k": 1, "other": "x"}))
    assert "'other'" in text and "never written" in text


# --- watch streams ---------------------------------------------------------------------------

EVENTS = [(2, "put", "a", 1), (3, "put", "b", 1), (4, "delete", "a", None), (5, "put", "a", 2)]


def test_identical_streams_are_ok() -> None:
    ok(check_watch_streams({"m1": list(EVENTS), "m2": list(EVENTS), "m3": list(EVENTS)}))
    # one revision may delete several keys at once (a lease's keys)
    both = [(6, "delete", "a", None), (6, "delete", "b", None)]
    ok(check_watch_streams({"m1": EVENTS + both, "m2": EVENTS + both}))


def test_duplicated_watch_event_is_an_anomaly() -> None:
    dup = [*EVENTS[:2], EVENTS[1], *EVENTS[2:]]
    assert "delivered twice" in anomaly(check_watch_streams({"m1": dup}))
    assert "delivered twice" in anomaly(check_watch_streams({"m1": list(EVENTS), "m2": dup}))


def test_missing_watch_event_is_an_anomaly() -> None:
    gap = EVENTS[:1] + EVENTS[2:]
    assert "diverges" in anomaly(check_watch_streams({"m1": list(EVENTS), "m2": gap}))
    short = EVENTS[:3]
    assert "missing events from #3" in anomaly(
        check_watch_streams({"m1": list(EVENTS), "m2": short})
    )
    ok(check_watch_streams({"m1": list(EVENTS), "m2": short}, healed=False))  # a prefix
    # missing on every member: the acknowledged write's revision tells
    acked = [
        put(1, 0, 1, key="a", result=2),
        put(1, 1, 2, key="b", result=3),
        put(2, 5, 6, key="a", result=5),
    ]
    ok(check_watch_streams({"m1": list(EVENTS)}, ops=acked))
    text = anomaly(check_watch_streams({"m1": gap, "m2": gap}, ops=acked))
    assert "revision 3" in text


def test_out_of_order_watch_event_is_an_anomaly() -> None:
    swapped = [EVENTS[1], EVENTS[0], *EVENTS[2:]]
    assert "out of order" in anomaly(check_watch_streams({"m1": swapped}))


def test_different_values_on_members_is_an_anomaly() -> None:
    other = [*EVENTS[:3], (5, "put", "a", 3)]
    assert "diverges" in anomaly(check_watch_streams({"m1": list(EVENTS), "m2": other}))


# --- leases ----------------------------------------------------------------------------------


def test_key_gone_before_its_ttl_is_an_anomaly() -> None:
    early = LeaseObservation(lease=7, ttl=2.0, last_keepalive_ok=10.0, key="k", gone_seen=11.5)
    assert "before its TTL" in anomaly(check_leases([early]))


def test_key_gone_after_its_ttl_or_kept_is_ok() -> None:
    ok(
        check_leases(
            [
                LeaseObservation(7, 2.0, 10.0, "k", gone_seen=12.5),
                LeaseObservation(
                    8, 2.0, 10.0, "j", gone_seen=None, present_seen=11.9, expires_by=13.0
                ),
            ]
        )
    )


def test_key_outliving_its_lease_is_an_anomaly() -> None:
    late = LeaseObservation(7, 2.0, 10.0, "k", gone_seen=None, present_seen=20.0, expires_by=15.0)
    assert "after it must have expired" in anomaly(check_leases([late]))
    with pytest.raises(ValueError, match="TTL"):
        check_leases([LeaseObservation(7, 0.0, 10.0, "k", gone_seen=None)])
