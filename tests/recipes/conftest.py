"""A fast store for the recipes' tests: short ticks so 1-second leases expire promptly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import embedkv
from tests.cluster.conftest import make_cluster  # noqa: F401 - processes as members


@pytest.fixture
def store(tmp_path: Path) -> Iterator[embedkv.Store]:
    s = embedkv.open(tmp_path / "data", durable=False, tick_interval=0.01)
    try:
        yield s
    finally:
        s.close()
