"""The recipes' safety tests with their users spread over the three members of one cluster
(in this process, on 127.0.0.1): user `i` works on member ``i % 3``, so contenders' keys,
leases, watches and keep-alives go through different members, followers forwarding to the
leader. The checks are the single-member tests' own (tests/recipes/safety.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import embedkv
from embedkv import Put
from tests.recipes import models, safety
from tests.test_cluster_open import found, peers_of
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[embedkv.Store]]:
    """Three founders with 20 ms ticks, shared by this module's tests (each test uses
    recipe names of its own). Elections after 0.4 s and a 10 s request timeout: three members
    and dozens of users share one process, which a loaded machine may stall for longer than
    FAST's 0.2 s election timeout (an election there failed a write of the semaphore test)."""
    stores = found(tmp_path_factory.mktemp("cluster"), peers_of("n1", "n2", "n3"),
                   election_tick=20, request_timeout=10.0)
    try:
        wait_for(lambda: all(s.leader for s in stores.values()), what="a leader")
        yield [stores[n] for n in sorted(stores)]
    finally:
        for s in stores.values():
            s.close()


def test_lock_exclusion_and_tokens(members: list[embedkv.Store]) -> None:
    safety.lock_exclusion(members, "m-lock", users=6, rounds=5)


def test_lock_waiters_served_in_order(members: list[embedkv.Store]) -> None:
    safety.lock_fair(members, "m-fair")


def test_lock_dead_holder_and_fenced_write(members: list[embedkv.Store]) -> None:
    safety.lock_dead_holder(members, "m-dead")


def test_held_in_a_txn_is_refused_on_every_member_after_loss(
    members: list[embedkv.Store],
) -> None:
    lock = members[0].lock("m-held", ttl=1)
    assert lock.acquire()
    guard = lock.held()
    for s in members:  # while held, a guarded write passes on any member
        assert s.txn(compare=[guard], success=[Put("m-held-data", s.name)]).succeeded
    lock.session.orphan()
    wait_for(lambda: members[2].count("_embedkv/lock/m-held/") == 0, what="lease expired")
    for s in members:
        assert not s.txn(compare=[guard], success=[Put("m-held-data", "late")]).succeeded
    assert members[1]["m-held-data"] == members[2].name


def test_election_one_leader_at_a_time(members: list[embedkv.Store]) -> None:
    safety.election_one_leader(members, "m-elect")


def test_election_failover(members: list[embedkv.Store]) -> None:
    safety.election_failover(members, "m-fail")


def test_queue_exactly_once(members: list[embedkv.Store]) -> None:
    safety.queue_exactly_once(members, "m-jobs", per=20, producers=3, consumers=3)


def test_queue_redelivery(members: list[embedkv.Store]) -> None:
    safety.queue_redelivery(members, "m-redeliver")


def test_semaphore_never_over_n(members: list[embedkv.Store]) -> None:
    safety.semaphore_never_over_n(members, "m-sem")


def test_counter(members: list[embedkv.Store]) -> None:
    safety.counter_contention(members, "m-hits", users=6, adds=10)


def test_barrier(members: list[embedkv.Store]) -> None:
    safety.barrier_all_together(members, "m-bar")


def test_service_registry(members: list[embedkv.Store]) -> None:
    safety.services_backend_dies(members, "m-web")


@pytest.mark.parametrize("recipe", models.RECIPES)
def test_recipe_matches_its_model(members: list[embedkv.Store], recipe: str) -> None:
    """tests/recipes/models.py with user `i` on member ``i % 3`` (one seed each: the
    single-member runs try more)."""
    check = getattr(models, f"{recipe}_model")
    check(members, f"m-model-{recipe}", seed=7)
