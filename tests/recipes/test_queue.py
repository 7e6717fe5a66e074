"""Queue: exactly-once consumption with many producers/consumers, redelivery, priority."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedkv
from tests.recipes.safety import queue_exactly_once, queue_redelivery
from tests.waiting import wait_for


def test_every_item_consumed_exactly_once_4_producers_4_consumers(store: embedkv.Store) -> None:
    queue_exactly_once([store], "jobs")


def test_an_item_is_redelivered_when_its_consumer_dies_before_ack(store: embedkv.Store) -> None:
    queue_redelivery([store], "w")


def test_priority_then_fifo(store: embedkv.Store) -> None:
    q = store.queue("p")
    for v, prio in [("a", 5), ("b", 1), ("c", 5), ("d", -3), ("e", 1)]:
        q.put(v, priority=prio)
    out = []
    for _ in range(5):
        item = q.get(timeout=5)
        out.append(item.value)
        item.ack()
    assert out == ["d", "b", "e", "a", "c"]
    with pytest.raises(TimeoutError):
        q.get(timeout=0)
    with pytest.raises(TypeError):
        q.put(1, priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        q.put(1, priority=1 << 70)


def test_a_blocked_get_wakes_on_put(store: embedkv.Store) -> None:
    q = store.queue("b")
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=30).value))
    t.start()
    wait_for(lambda: t.is_alive(), what="consumer started")
    store.queue("b").put("hello")
    t.join(30)
    assert got == ["hello"]


MODEL = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@MODEL
@given(st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(-2, 2)),
    st.tuples(st.just("get"), st.just(0)),
    st.tuples(st.just("ack"), st.just(0)),
    st.tuples(st.just("release"), st.just(0)),
), max_size=25))
def test_queue_matches_a_model(store: embedkv.Store, ops: list[tuple[str, int]]) -> None:
    """One consumer against a model: a list of (priority, seq) and a list of claimed items."""
    q = store.queue(f"m{store.revision}")
    waiting: list[tuple[int, int]] = []
    claimed: list[tuple[object, tuple[int, int]]] = []
    seq = 0
    for op, prio in ops:
        if op == "put":
            q.put(seq, priority=prio)
            waiting.append((prio, seq))
            seq += 1
        elif op == "get":
            if not waiting:
                with pytest.raises(TimeoutError):
                    q.get(timeout=0)
                continue
            # released items go back in their original place (priority, then put order)
            expect = min(waiting)
            item = q.get(timeout=0)
            assert item.value == expect[1]
            waiting.remove(expect)
            claimed.append((item, expect))
        elif claimed:
            item, entry = claimed.pop(0)
            if op == "ack":
                item.ack()  # type: ignore[attr-defined]
            else:
                item.release()  # type: ignore[attr-defined]
                waiting.append(entry)
        assert q.qsize() == len(waiting)
    q.close()


def test_many_consumers_never_skip_a_priority_group(store: embedkv.Store) -> None:
    """32 consumers race over two priority groups while a producer adds more of the higher
    one. Each get's claim is checked against the store's own history at the claim's
    revision: no item of a higher priority was unclaimed then."""
    name, consumers = "race", 32
    q = store.queue(name)
    for i in range(120):
        q.put(("low", i), priority=1)
    for i in range(120):
        q.put(("high", i), priority=0)
    total = 240 + 60
    got: list[tuple[int, int, object]] = []  # (priority, claim revision, value)
    guard = threading.Lock()
    errors: list[BaseException] = []
    done = threading.Event()

    def consume() -> None:
        c = store.queue(name, ttl=10)
        try:
            while not done.is_set():
                try:
                    item = c.get(timeout=0.1)
                except TimeoutError:
                    continue
                with guard:
                    got.append((item.priority, item._claim_rev, item.value))
                    if len(got) == total:
                        done.set()
                item.ack()
        except BaseException as e:  # pragma: no cover
            errors.append(e)
        finally:
            c.close()

    def produce() -> None:
        for i in range(60):
            q.put(("late-high", i), priority=0)

    threads = [threading.Thread(target=consume) for _ in range(consumers)]
    threads.append(threading.Thread(target=produce))
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    values = [repr(v) for _, _, v in got]
    assert len(values) == total == len(set(values))  # each item once
    items, claims = f"_embedkv/queue/{name}/i/", f"_embedkv/queue/{name}/c/"
    skipped = []
    for prio, rev, value in got:
        if prio == 0:
            continue  # nothing ranks above the top group
        there = {str(kv.key)[len(items):]
                 for kv in store.range(prefix=items, revision=rev, keys_only=True)}
        taken = {str(kv.key)[len(claims):]
                 for kv in store.range(prefix=claims, revision=rev, keys_only=True)}
        higher_free = [s for s in there - taken if int(s[:19]) - (1 << 62) < prio]
        if higher_free:
            skipped.append((value, rev, len(higher_free)))
    assert not skipped, f"gets that skipped unclaimed higher-priority items: {skipped[:5]}"


def test_a_get_whose_lease_ended_unnoticed_claims_on_a_new_one(store: embedkv.Store) -> None:
    """The consumer's lease ends (revoked here) before its keep-alive notices: the next get
    claims on a new lease instead of failing with LeaseNotFound."""
    q = store.queue("lapsed", ttl=10)
    old = q.session
    old.lease.revoke()
    assert old.alive  # the keep-alive has not noticed yet
    q.put("job")
    item = q.get(timeout=10)
    assert item.value == "job" and not old.alive and q.session is not old
    item.ack()
    q.close()
