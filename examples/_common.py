"""Shared by the recipe examples: open a store in a temporary dir (or the one given)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import embedkv


def args(doc: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("data_dir", nargs="?", help="data dir (default: a temporary one)")
    p.add_argument("--short", action="store_true", help="a quick run (the test suite's)")
    return p.parse_args()


@contextmanager
def store(path: str | None) -> Iterator[embedkv.Store]:
    # Short ticks: 1-second leases are noticed promptly.
    with tempfile.TemporaryDirectory() as tmp, embedkv.open(
        path or f"{tmp}/data", tick_interval=0.02
    ) as s:
        yield s
