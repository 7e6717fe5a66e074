"""Each recipe against a plain model, on seeded random sequences of operations by several
users (tests/recipes/models.py): a mismatch names its seed. The lock's, queue's and
counter's model tests are hypothesis tests beside their other tests."""

from __future__ import annotations

import pytest

import embedkv
from tests.recipes import models

SEEDS = [pytest.param(seed, id=f"seed-{seed}") for seed in range(6)]


@pytest.mark.parametrize("seed", SEEDS)
def test_semaphore_matches_a_model(store: embedkv.Store, seed: int) -> None:
    models.semaphore_model([store], f"s{seed}", seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_election_matches_a_model(store: embedkv.Store, seed: int) -> None:
    models.election_model([store], f"e{seed}", seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_barrier_matches_a_model(store: embedkv.Store, seed: int) -> None:
    models.barrier_model([store], f"b{seed}", seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_double_barrier_matches_a_model(store: embedkv.Store, seed: int) -> None:
    models.double_barrier_model([store], f"d{seed}", seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_service_registry_matches_a_model(store: embedkv.Store, seed: int) -> None:
    models.services_model([store], f"web{seed}", seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_config_view_matches_a_model(store: embedkv.Store, seed: int) -> None:
    models.config_model([store], f"cfg{seed}", seed)
