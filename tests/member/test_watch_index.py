"""Watch routing at scale: the interval index against a brute-force matcher, and the hub's
cost per event following the watches an event matches (counted in index nodes looked at, not
timed), with delivery still exactly once and in order."""

from __future__ import annotations

import random

import pytest

from embedkv.member import Member
from embedkv.member.intervals import IntervalIndex, PrefixIndex
from embedkv.member.watch import WatchHub, selection
from embedkv.storage.requests import Delete, Event, EventType, KeyValue, Put, key_bytes
from tests.waiting import wait_for

from .conftest import Collector

_ALPHABET = b"ab\x00\xff"


def _key(rnd: random.Random, shortest: int = 0) -> bytes:
    return bytes(rnd.choice(_ALPHABET) for _ in range(rnd.randint(shortest, 4)))


@pytest.mark.parametrize("seed", range(20))
def test_index_agrees_with_brute_force(seed: int) -> None:
    rnd = random.Random(seed)
    index: IntervalIndex[int] = IntervalIndex(seed)
    live: dict[int, tuple[bytes, bytes | None]] = {}
    for ident in range(600):
        roll = rnd.random()
        if roll < 0.55 or not live:
            low = _key(rnd)
            high: bytes | None = None if rnd.random() < 0.2 else _key(rnd, 1)
            if high is not None and high <= low:
                with pytest.raises(ValueError):
                    index.add(low, high, ident, ident)
                continue
            index.add(low, high, ident, ident)
            live[ident] = (low, high)
        elif roll < 0.8:
            victim = rnd.choice(sorted(live))
            assert index.remove(live.pop(victim)[0], victim)
            assert not index.remove(_key(rnd), victim)  # gone: a second removal finds nothing
        else:
            for _ in range(20):
                q = _key(rnd, 1)
                expected = {i for i, (lo, hi) in live.items() if lo <= q and (hi is None or q < hi)}
                got = index.stab(q)
                assert len(got) == len(set(got)) and set(got) == expected
        assert len(index) == len(live)
    assert sorted(index.values()) == sorted(live)
    assert [live[i][0] for i in index.values()] == sorted(lo for lo, _ in live.values())


@pytest.mark.parametrize("seed", range(10))
def test_prefix_index_agrees_with_brute_force(seed: int) -> None:
    rnd = random.Random(seed)
    index: PrefixIndex[int] = PrefixIndex()
    live: dict[int, bytes] = {}
    for ident in range(600):
        roll = rnd.random()
        if roll < 0.55 or not live:
            prefix = _key(rnd)
            index.add(prefix, ident, ident)
            live[ident] = prefix
        elif roll < 0.8:
            victim = rnd.choice(sorted(live))
            assert index.remove(live.pop(victim), victim)
            assert not index.remove(_key(rnd), victim)
        else:
            for _ in range(20):
                q = _key(rnd, 1)
                got = index.stab(q)
                assert len(got) == len(set(got))
                assert set(got) == {i for i, p in live.items() if q.startswith(p)}
        assert len(index) == len(live)
    assert sorted(index.values()) == sorted(live)


def test_stab_looks_at_a_few_nodes_among_many_ranges() -> None:
    index: IntervalIndex[int] = IntervalIndex(1)
    n = 10_000
    for i in range(n):
        low = b"p/%05d/" % i
        index.add(low, low[:-1] + b"0", i, i)  # the prefix p/NNNNN/
    index.add(b"p/", b"p0", n, n)  # one prefix over all of them
    for i in range(0, n, 97):
        before = index.visited
        assert sorted(index.stab(b"p/%05d/key" % i)) == [i, n]
        assert index.visited - before < 150  # a linear scan would look at 10,001
    before = index.visited
    assert index.stab(b"q") == []
    assert index.visited - before < 150


def _event(key: bytes, rev: int) -> Event:
    return Event(EventType.PUT, KeyValue(key, 1, rev, rev, 1))


class _NoHistory:
    revision = 0
    compact_revision = 0

    def events(self, *args: object, **kwargs: object) -> list[Event]:
        raise AssertionError("no replay in this test")


def test_hub_cost_per_event_follows_the_matching_watches() -> None:
    """10,000 prefix watches on distinct prefixes (and 1,000 range watches): publishing an
    event looks up a few prefixes and index nodes, and exactly the matching watch gets it."""
    hub = WatchHub(_NoHistory(), 0)
    seen: dict[int, list[int]] = {}
    for i in range(10_000):
        def record(ev: Event, i: int = i) -> None:
            seen.setdefault(i, []).append(ev.revision)
        hub.watch(b"w/%05d/" % i, record, prefix=True)
    for i in range(1000):
        hub.watch(b"r/%05d" % i, lambda ev: None, end=b"r/%05d" % (i + 2))
    prefixes, ranges = hub._prefixes, hub._ranges
    assert (len(prefixes), len(ranges)) == (10_000, 1000)
    before = prefixes.visited + ranges.visited
    for rev in range(1, 101):
        hub.publish([_event(b"w/%05d/x" % (rev * 37), rev)])
    hub.wake()
    assert prefixes.visited + ranges.visited - before < 100 * 50
    hub.start()
    try:
        wait_for(lambda: sum(len(v) for v in seen.values()) == 100, what="100 callbacks")
        assert seen == {rev * 37: [rev] for rev in range(1, 101)}
    finally:
        hub.close()


def _matches(low: bytes, high: bytes | None, exact: bool, kb: bytes) -> bool:
    if exact:
        return kb == low
    return low <= kb and (high is None or kb < high)


@pytest.mark.parametrize("seed", range(3))
def test_random_watches_get_every_matching_event_once_in_order(
    member: Member, seed: int
) -> None:
    """Exact, prefix, range, from-key and all-key watches, registered between writes: each
    gets exactly the events after its registration whose key it selects, in revision order."""
    rnd = random.Random(seed)
    keys = [bytes(rnd.choice(b"abc/") for _ in range(rnd.randint(1, 4))) for _ in range(40)]
    watches: list[tuple[bytes, bytes | None, bool, int, Collector]] = []
    everything = Collector()
    member.watch(b"", everything, prefix=True)
    for step in range(300):
        if rnd.random() < 0.3:
            kind = rnd.choice(["exact", "prefix", "range", "from", "all"])
            key = rnd.choice(keys)
            end: bytes | None = None
            prefix = False
            if kind == "prefix":
                key, prefix = key[: rnd.randint(1, len(key))], True
            elif kind == "all":
                key, prefix = b"", True
            elif kind == "from":
                end = b"\x00"
            elif kind == "range":
                other = rnd.choice(keys)
                if other == key:
                    continue
                key, end = min(key, other), max(key, other)
            low, high, exact = selection(key, prefix, end)
            c = Collector()
            member.watch(key, c, prefix=prefix, end=end)
            watches.append((low, high, exact, member.data_dir.kv.revision, c))
        key = rnd.choice(keys)
        if rnd.random() < 0.8:
            member.propose(Put(key, step)).result(10)
        else:
            member.propose(Delete(key)).result(10)
    last = member.data_dir.kv.revision
    wait_for(lambda: everything.events and everything.events[-1].kv.mod_revision == last,
             what="every event on the all-keys watch")
    truth = list(everything.events)
    # Every change made an event on the all-keys watch (deletes of missing keys make none).
    for low, high, exact, registered, c in watches:
        expected = [
            (ev.type, ev.kv.mod_revision)
            for ev in truth
            if ev.kv.mod_revision > registered
            and _matches(low, high, exact, key_bytes(ev.kv.key))
        ]
        c.wait(len(expected))
        # All of them (a duplicate or a stray would sit among them: one queue per watch).
        assert [(ev.type, ev.kv.mod_revision) for ev in c.events] == expected
    assert [ev.kv.mod_revision for ev in truth] == sorted({ev.kv.mod_revision for ev in truth})
