from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Member


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(tmp_path / "data")
    yield m
    m.close()
