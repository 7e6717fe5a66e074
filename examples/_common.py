"""Shared by the recipe examples: three members of one cluster, in this process on 127.0.0.1,
and the run's mode (``--short``: the test suite's quick run, with 1-second leases)."""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import embedkv


def args(doc: str | None) -> argparse.Namespace:
    """The example's arguments; ``.ttl`` is the leases' TTL for the mode (1 s when short)."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("data_dir", nargs="?",
                   help="a new dir for the members' data dirs (default: a temporary one)")
    p.add_argument("--short", action="store_true", help="a quick run (the test suite's)")
    a = p.parse_args()
    a.ttl = 1 if a.short else 3
    return a


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def cluster(a: argparse.Namespace) -> Iterator[list[embedkv.Store]]:
    """Three founders n1, n2, n3 (on three machines, each runs the same open() with its own
    name: README "Clusters"); the example puts its actors on different members."""
    peers = {n: f"127.0.0.1:{_free_port()}" for n in ("n1", "n2", "n3")}
    tick = 0.02 if a.short else 0.05  # short ticks: 1-second leases are noticed promptly
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.data_dir or tmp)
        stores: list[embedkv.Store] = []
        try:
            for name, address in peers.items():
                stores.append(embedkv.open(root / name, name=name, listen=address, peers=peers,
                                           cluster="recipe-example", insecure=True,
                                           tick_interval=tick))
            deadline = time.monotonic() + 30
            while not all(s.leader for s in stores):
                if time.monotonic() > deadline:
                    raise SystemExit("no leader within 30 s")
                time.sleep(0.02)
            mode = "short run, " if a.short else ""
            print(f"three members n1, n2, n3 on 127.0.0.1 ({mode}leases of {a.ttl} s); "
                  f"{stores[0].leader} leads")
            yield stores
        finally:
            for s in stores:
                s.close()
