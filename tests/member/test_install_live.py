"""A follower cut off while the leader compacts its log catches up by installing a snapshot,
in-process and live (no restart): its data, log and directory match the leader's and its open
watch continues from the installed history, each event once, in order.

Three members in this process on 127.0.0.1; the follower is cut off through its transport's
fault plan (a stopped process would still get what TCP buffered)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import embedkv
from embedkv.member import writer
from embedkv.net import FaultPlan
from embedkv.storage.requests import Event
from tests.ports import free_ports
from tests.waiting import wait_for

from .conftest import Collector

NAMES = ("n1", "n2", "n3")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setattr(writer, "LOG_RETAIN", 10)
    monkeypatch.setattr(writer, "LOG_COMPACT_EVERY", 20)
    peers = {n: f"127.0.0.1:{p}" for n, p in zip(NAMES, free_ports(len(NAMES)), strict=True)}

    def start(name: str) -> Any:
        return embedkv.open(tmp_path / name, name=name, listen=peers[name], peers=peers,
                            cluster="install-live", insecure=True, tick_interval=0.02,
                            request_timeout=10.0)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        stores = dict(zip(NAMES, pool.map(start, NAMES), strict=True))
    try:
        yield stores
    finally:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: s.close(), stores.values()))


def _on_loop(store: Any, fn: Callable[[Any], None]) -> None:
    """Run fn(transport) on the member's engine loop (the fault plan belongs to it)."""
    member = store._m
    transport = member._links.transport
    done = concurrent.futures.Future[None]()

    def run() -> None:
        try:
            fn(transport)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc)

    member._engine.loop.call_soon_threadsafe(run)
    done.result(10)


def test_a_cut_off_follower_installs_a_snapshot_live(cluster: dict[str, Any]) -> None:
    stores = cluster
    leader_name = wait_for(lambda: next(iter(stores.values())).leader, what="a leader")
    leader = stores[leader_name]
    name = next(n for n in NAMES if n != leader_name)
    follower = stores[name]
    leader.put("s/first", 0)
    wait_for(lambda: follower.get("s/first", serializable=True) == 0, what="replication")
    fdd = follower._m._dd
    ldd = leader._m._dd
    seen = Collector()
    # From the next revision (a watch "from now" may yet see s/first: the hub learns of an
    # entry after reads do).
    handle = follower.watch("s/", seen, prefix=True, start_revision=ldd.kv.revision + 1)
    leader.put("s/seen", 1)
    seen.wait(1)
    # History compacted past the one event the watch saw, not past anything it needs: the
    # install must not end it with Compacted.
    leader.put("x", 1)
    leader.compact(leader.revision)
    wait_for(lambda: fdd.kv.compact_revision == ldd.kv.compact_revision > 0,
             what="the compaction to reach the follower")
    others = [m for m in follower.members() if m.name != name]
    behind = fdd.applied_index

    def cut(transport: Any) -> None:
        transport.faults = FaultPlan()
        for m in others:
            transport.faults.partition(m.id)
            transport.faults.partition(m.address)

    _on_loop(follower, cut)
    n = 0
    while ldd.log.first_index() <= behind + 1:
        leader.put(f"s/{n:04d}", n)
        n += 1
        assert n < 2000, "the leader's log was never compacted"
    leader.put("s/last", "end")
    assert fdd.applied_index <= behind + 1  # it got nothing meanwhile
    _on_loop(follower, lambda t: t.faults.heal())
    wait_for(lambda: fdd.applied_index >= ldd.applied_index, 30, what="the follower to catch up")
    assert fdd.log.first_index() > behind + 1  # by a snapshot, not by replaying the entries
    assert follower.get("s/last", serializable=True) == "end"
    assert fdd.members() == ldd.members() and len(fdd.members()) == 3
    assert fdd.conf_state == ldd.conf_state
    assert fdd.kv.revision == ldd.kv.revision
    assert fdd.kv.compact_revision == ldd.kv.compact_revision
    want = ["s/seen"] + [f"s/{i:04d}" for i in range(n)] + ["s/last"]

    def keys(events: list[Event]) -> list[Any]:
        return [e.kv.key for e in events]

    got = seen.wait(len(want))
    assert keys(got) == want
    assert [e.kv.mod_revision for e in got] == sorted({e.kv.mod_revision for e in got})
    assert handle.error is None
    # Live again: later writes reach the watch after the replay, once.
    leader.put("s/after", 1)
    assert keys(seen.wait(len(want) + 1)) == [*want, "s/after"]
    follower.put("s/from-follower", 2)
    assert keys(seen.wait(len(want) + 2))[-1] == "s/from-follower"
    assert len(seen.events) == len(want) + 2
    assert fdd.verify().ok
