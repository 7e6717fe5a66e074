"""Shared by the recipe examples: open a store in a temporary dir (or the one given)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import embedkv


def args(doc: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("data_dir", nargs="?", help="data dir (default: a temporary one)")
    p.add_argument("--short", action="store_true",
                   help="a quick, deterministic run: 1-second TTLs, few rounds (the test suite's)")
    return p.parse_args()


_out = threading.Lock()


def say(*parts: object) -> None:
    """Print one line of narration whole: callbacks narrate from other threads, and print()
    writes the text and its newline separately, so two lines could interleave."""
    with _out:
        sys.stdout.write(" ".join(map(str, parts)) + "\n")
        sys.stdout.flush()


def need(ok: object, what: str) -> None:
    """Stop the example with a clear message (and a non-zero exit) if a step did not happen."""
    if not ok:
        sys.exit(f"example failed: {what}")


@contextmanager
def store(path: str | None) -> Iterator[embedkv.Store]:
    # Short ticks: 1-second leases are noticed promptly.
    with tempfile.TemporaryDirectory() as tmp, embedkv.open(
        path or f"{tmp}/data", tick_interval=0.02
    ) as s:
        yield s
