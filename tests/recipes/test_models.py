"""Each recipe against a plain model, on seeded random sequences of operations by several
users (tests/recipes/models.py): a mismatch names its seed. The lock's, queue's and
counter's model tests are hypothesis tests beside their other tests. EMBEDKV_MODEL_SEEDS=N
runs N seeds of each (6 by default) for a longer search."""

from __future__ import annotations

import os

import pytest

import embedkv
from tests.recipes import models

SEEDS = int(os.environ.get("EMBEDKV_MODEL_SEEDS", "6"))


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed-{s}") for s in range(SEEDS)])
@pytest.mark.parametrize("recipe", models.RECIPES)
def test_recipe_matches_its_model(store: embedkv.Store, recipe: str, seed: int) -> None:
    check = getattr(models, f"{recipe}_model")
    check([store], f"{recipe}-{seed}", seed)
