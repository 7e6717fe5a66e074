"""Deterministic tests for four key-space behaviours that only the randomized model test
(test_model.py) exercised, and only on some seeds (issue 15, "Tests that would have caught
more"): a txn compare exactly on the boundary value, a txn whose compares disagree (all of them
must hold), revoking one of two leases that both hold keys, and prefixes ending in 0xff.

Each is checked at the storage layer (a DataDir driven as a one-member log applies entries)
and, where it is cheap, through the public Store. Expected answers are written out by hand,
never computed with the code under test (``prefix_end`` in particular)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import embedkv
from embedkv.storage.requests import (
    Compare,
    CreateRevision,
    Delete,
    DeleteResult,
    EventType,
    Get,
    KeyValue,
    LeaseGrant,
    LeaseOf,
    LeaseRevoke,
    LeaseRevokeResult,
    ModRevision,
    Put,
    PutResult,
    Txn,
    TxnResult,
    Value,
    Version,
    prefix_end,
)
from tests.waiting import wait_for

from .harness import Member

Builder = Callable[[Any], Any]  # Value, Version, ... : key -> comparison builder


@pytest.fixture
def store(tmp_path: Path) -> Iterator[embedkv.Store]:
    s = embedkv.open(tmp_path / "store", durable=False)
    yield s
    s.close()


def _succeeded(member: Member, compares: tuple[Compare, ...]) -> bool:
    """Run a txn with these compares; which branch ran is also checked through its write."""
    before = member.dd.kv.revision
    res = member.propose(Txn(compares, (Put("branch", "success"),), (Put("branch", "failure"),)))
    assert isinstance(res, TxnResult)
    assert res.revision == before + 1
    got = member.dd.kv.get("branch")
    assert got is not None and got.value == ("success" if res.succeeded else "failure")
    return res.succeeded


# --- (a) compares exactly on the boundary -------------------------------------------------


def _boundary_setup(member: Member) -> None:
    """x: value 20, created at 2, modified at 4, version 3, lease 7; s: value "m", no lease."""
    member.propose(LeaseGrant(7, 60))
    member.propose(Put("x", 10))  # rev 2
    member.propose(Put("x", 15))  # rev 3
    member.propose(Put("x", 20, lease=7))  # rev 4
    member.propose(Put("s", "m"))  # rev 5
    assert member.dd.kv.get("x") == KeyValue("x", 20, 2, 4, 3, 7)


# (builder, key, the key's actual value of that target, one below it, one above it); None:
# there is nothing below (lease ids are never negative).
BOUNDARIES: list[tuple[Builder, str, Any, Any, Any]] = [
    (Value, "x", 20, 19, 21),
    (Value, "s", "m", "l", "n"),
    (Version, "x", 3, 2, 4),
    (CreateRevision, "x", 2, 1, 3),
    (ModRevision, "x", 4, 3, 5),
    (LeaseOf, "x", 7, 6, 8),
    (LeaseOf, "s", 0, None, 1),  # no lease compares as 0
    (Version, "missing", 0, -1, 1),  # a missing key has version, revisions and lease 0
    (CreateRevision, "missing", 0, -1, 1),
    (ModRevision, "missing", 0, -1, 1),
    (LeaseOf, "missing", 0, None, 1),
]
IDS = [f"{b.__name__}({k})" for b, k, *_ in BOUNDARIES]


@pytest.mark.parametrize(("builder", "key", "actual", "below", "above"), BOUNDARIES, ids=IDS)
def test_compare_on_the_boundary(
    member: Member, builder: Builder, key: str, actual: Any, below: Any, above: Any
) -> None:
    _boundary_setup(member)
    expected = [
        (builder(key) < actual, False),  # the bug `<=` makes this true
        (builder(key) > actual, False),  # ... and `>=` this one
        (builder(key) < above, True),
        (builder(key) > above, False),
        (builder(key) == actual, True),
        (builder(key) != actual, False),
        (builder(key) == above, False),
        (builder(key) != above, True),
    ]
    if below is not None:
        expected += [(builder(key) > below, True), (builder(key) < below, False)]
    got = [(c, _succeeded(member, (c,))) for c, _ in expected]
    assert got == expected


def test_compare_on_the_boundary_through_the_store(store: embedkv.Store) -> None:
    store.put("x", 5)
    store.put("x", 6)  # version 2, create 2, mod 3
    for cmp, want in [
        (embedkv.Value("x") < 6, False), (embedkv.Value("x") > 6, False),
        (embedkv.Value("x") < 7, True), (embedkv.Value("x") > 5, True),
        (embedkv.Version("x") < 2, False), (embedkv.Version("x") > 2, False),
        (embedkv.Version("x") < 3, True), (embedkv.Version("x") > 1, True),
        (embedkv.CreateRevision("x") < 2, False), (embedkv.CreateRevision("x") > 2, False),
        (embedkv.ModRevision("x") < 3, False), (embedkv.ModRevision("x") > 3, False),
        (embedkv.ModRevision("x") < 4, True), (embedkv.ModRevision("x") > 2, True),
    ]:
        assert store.txn(compare=[cmp]).succeeded is want, cmp


# --- (b) several compares: all of them must hold -------------------------------------------


def test_one_false_compare_fails_the_txn_in_either_order(member: Member) -> None:
    member.propose(Put("a", 1))
    member.propose(Put("b", 2))
    true1, true2 = Value("a") == 1, Version("b") == 1
    false1, false2 = Value("a") == 2, ModRevision("b") < 3
    assert _succeeded(member, (true1, false1)) is False
    assert _succeeded(member, (false1, true1)) is False
    assert _succeeded(member, (true1, true2, false2)) is False
    assert _succeeded(member, (false2, true1, true2)) is False
    assert _succeeded(member, (true1, false1, true2)) is False
    assert _succeeded(member, (false1, false2)) is False
    assert _succeeded(member, (true1, true2)) is True
    assert _succeeded(member, ()) is True  # no compares: success, as in etcd


def test_failed_txn_runs_only_its_failure_branch(member: Member) -> None:
    member.propose(Put("a", 1))  # rev 2
    res = member.propose(Txn(
        (Version("a") == 1, Value("a") == 99),
        (Put("s", 1), Delete("a")),
        (Put("f", 1), Get("a")),
    ))
    assert isinstance(res, TxnResult) and not res.succeeded
    assert res.revision == 3
    assert res.responses[0] == PutResult(3)
    assert [kv.value for kv in res.responses[1].kvs] == [1]  # type: ignore[union-attr]
    kv = member.dd.kv
    assert kv.get("s") is None and kv.get("a") == KeyValue("a", 1, 2, 2, 1)
    assert kv.get("f") == KeyValue("f", 1, 3, 3, 1)


def test_one_false_compare_fails_the_txn_through_the_store(store: embedkv.Store) -> None:
    store.put("a", 1)
    for compare in ([embedkv.Value("a") == 1, embedkv.Value("a") == 2],
                    [embedkv.Value("a") == 2, embedkv.Value("a") == 1]):
        res = store.txn(compare=compare, success=[embedkv.Put("s", 1)],
                        failure=[embedkv.Put("f", 1)])
        assert not res.succeeded
    assert "s" not in store and store["f"] == 1
    assert store.txn(compare=[embedkv.Value("a") == 1, embedkv.Version("a") == 1]).succeeded


# --- (c) revoking one of two leases that both hold keys ------------------------------------


def _two_leases(member: Member) -> None:
    member.propose(LeaseGrant(1, 30))
    member.propose(LeaseGrant(2, 40))
    member.propose_many([
        Put("a", "a1", lease=1),  # rev 2
        Put("b", "b2", lease=2),  # 3
        Put("c", "c1", lease=1),  # 4
        Put("d", "d2", lease=2),  # 5
        Put("e", "e-"),  # 6, no lease
        Put("m", "m1", lease=1),  # 7
        Put("m", "m2", lease=2),  # 8: moved from lease 1 to lease 2
        Put("n", "n2", lease=2),  # 9
        Put("n", "n-"),  # 10: detached from lease 2
    ])


def _survivors(member: Member) -> dict[str, tuple[Any, int | None]]:
    kvs = member.dd.kv.range(Get(b"\x00", end=b"\x00")).kvs
    return {str(kv.key): (kv.value, kv.lease) for kv in kvs}


def test_revoking_one_of_two_leases(member: Member) -> None:
    _two_leases(member)
    kv = member.dd.kv
    assert kv.lease(1) == (30, ["a", "c"])
    assert kv.lease(2) == (40, ["b", "d", "m"])
    applied = member.propose_many([LeaseRevoke(1)])[0]
    assert applied.result == LeaseRevokeResult(11, 2)
    assert [(e.type, e.key, e.revision, e.prev_kv) for e in applied.events] == [
        (EventType.DELETE, "a", 11, KeyValue("a", "a1", 2, 2, 1, 1)),
        (EventType.DELETE, "c", 11, KeyValue("c", "c1", 4, 4, 1, 1)),
    ]
    expected = {"b": ("b2", 2), "d": ("d2", 2), "e": ("e-", None), "m": ("m2", 2),
                "n": ("n-", None)}

    def check() -> None:
        assert kv.revision == 11
        assert _survivors(member) == expected
        assert kv.lease(1) is None
        assert kv.lease(2) == (40, ["b", "d", "m"])
        assert kv.leases() == [(2, 40)]
        history = [(e.type, e.key) for e in kv.events(11, b"\x00", end=b"\x00")]
        assert history == [(EventType.DELETE, "a"), (EventType.DELETE, "c")]
        assert kv.range(Get("a", revision=10)).kvs[0].value == "a1"  # the past is kept

    check()
    member.reopen()
    kv = member.dd.kv
    check()
    applied = member.propose_many([LeaseRevoke(2)])[0]  # the survivor still works
    assert applied.result == LeaseRevokeResult(12, 3)
    assert [(e.type, e.key, e.revision) for e in applied.events] == [
        (EventType.DELETE, "b", 12), (EventType.DELETE, "d", 12), (EventType.DELETE, "m", 12)]
    assert _survivors(member) == {"e": ("e-", None), "n": ("n-", None)}
    assert kv.leases() == []


def test_revoking_one_of_two_leases_through_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with embedkv.open(path, durable=False) as store:
        one = store.lease(60, keepalive=False)
        two = store.lease(60, keepalive=False)
        store.put("a", 1, lease=one)
        store.put("b", 2, lease=two)
        store.put("c", 3, lease=one)
        store.put("d", 4, lease=two)
        seen: list[embedkv.Event] = []
        with store.watch("", seen.append, prefix=True):
            one.revoke()
            rev = store.revision
            store.put("z-sentinel", 0)
            wait_for(lambda: len(seen) >= 3, what="the revoke's events and the sentinel")
        assert [(e.type, e.key, e.revision) for e in seen[:2]] == [
            (EventType.DELETE, "a", rev), (EventType.DELETE, "c", rev)]
        assert seen[2].key == "z-sentinel"
        assert dict(store.items()) == {"b": 2, "d": 4, "z-sentinel": 0}
        assert two.keys() == ["b", "d"]
        with pytest.raises(embedkv.LeaseNotFound):
            one.keys()
        two_id = two.id
    with embedkv.open(path, durable=False) as store:
        assert dict(store.items()) == {"b": 2, "d": 4, "z-sentinel": 0}
        assert [kv.lease for kv in store.range("", keys_only=True)] == [two_id, two_id, None]


# --- (d) prefixes ending in 0xff -----------------------------------------------------------

KEYS: list[bytes] = [
    b"\x00", b"a", b"a\xfe", b"a\xfe\xff", b"a\xff", b"a\xff\x00", b"a\xff\xff",
    b"a\xff\xffz", b"b", b"b\x00", b"\xfe", b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\x01",
    b"\xff\xff", b"\xff\xff\x01", b"\xff\xff\xff",
]
# Written out by hand (not with prefix_end): the keys each prefix selects.
PREFIXES: dict[bytes, list[bytes]] = {
    b"a\xff": [b"a\xff", b"a\xff\x00", b"a\xff\xff", b"a\xff\xffz"],
    b"a\xff\xff": [b"a\xff\xff", b"a\xff\xffz"],
    b"a\xfe": [b"a\xfe", b"a\xfe\xff"],
    b"\xfe": [b"\xfe", b"\xfe\xff"],
    b"\xff": [b"\xff", b"\xff\x00", b"\xff\x01", b"\xff\xff", b"\xff\xff\x01", b"\xff\xff\xff"],
    b"\xff\xff": [b"\xff\xff", b"\xff\xff\x01", b"\xff\xff\xff"],
    b"\xff\xff\xff": [b"\xff\xff\xff"],
}
P_IDS = [p.hex() for p in PREFIXES]


def test_prefix_end_follows_etcd() -> None:
    """etcd's GetPrefixRangeEnd: increment the last byte that is not 0xff and drop what
    follows; a prefix of only 0xff bytes has no end (to the end of the key space)."""
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"a\xfe") == b"a\xff"
    assert prefix_end(b"a\xfe\xff") == b"a\xff"
    assert prefix_end(b"\x00\xff") == b"\x01"
    assert prefix_end(b"\xfe") == b"\xff"
    assert prefix_end(b"\xff") is None
    assert prefix_end(b"\xff\xff") is None


def _load(member: Member) -> None:
    member.propose_many([Put(k, k.hex()) for k in KEYS])  # revisions 2..19


@pytest.mark.parametrize(("prefix", "want"), PREFIXES.items(), ids=P_IDS)
def test_prefix_reads(member: Member, prefix: bytes, want: list[bytes]) -> None:
    _load(member)
    member.propose(Put(b"zz", 0))  # a later change outside every prefix, for the past read
    kv = member.dd.kv
    res = kv.range(Get(prefix, prefix=True))
    assert [x.key for x in res.kvs] == want and res.count == len(want) and not res.more
    assert kv.range(Get(prefix, prefix=True, count_only=True)).count == len(want)
    res = kv.range(Get(prefix, prefix=True, limit=1))  # the count past a limit
    assert [x.key for x in res.kvs] == want[:1] and res.count == len(want)
    assert res.more is (len(want) > 1)
    res = kv.range(Get(prefix, prefix=True, keys_only=True,
                       sort_order=embedkv.SortOrder.DESCEND))
    assert [x.key for x in res.kvs] == want[::-1]
    res = kv.range(Get(prefix, prefix=True, revision=19))  # a past revision walks history
    assert [x.key for x in res.kvs] == want and res.count == len(want)
    assert kv.range(Get(prefix, prefix=True, revision=19, count_only=True)).count == len(want)
    assert [e.key for e in kv.events(2, prefix, prefix=True)] == want
    txn = member.propose(Txn(success=(Get(prefix, prefix=True),)))
    assert isinstance(txn, TxnResult)
    assert [x.key for x in txn.responses[0].kvs] == want  # type: ignore[union-attr]


@pytest.mark.parametrize(("prefix", "want"), PREFIXES.items(), ids=P_IDS)
@pytest.mark.parametrize("in_txn", [False, True], ids=["delete", "txn"])
def test_prefix_delete(member: Member, prefix: bytes, want: list[bytes], in_txn: bool) -> None:
    _load(member)
    delete = Delete(prefix, prefix=True, prev_kv=True)
    deleted: object
    if in_txn:
        res = member.propose(Txn(success=(delete,)))
        assert isinstance(res, TxnResult)
        deleted = res.responses[0]
    else:
        deleted = member.propose(delete)
    assert isinstance(deleted, DeleteResult)
    assert deleted.revision == 20 and deleted.deleted == len(want)
    assert [x.key for x in deleted.prev_kvs] == want
    left = [x.key for x in member.dd.kv.range(Get(b"\x00", end=b"\x00")).kvs]
    assert left == [k for k in KEYS if k not in want]
    assert [(e.type, e.key) for e in member.dd.kv.events(20, prefix, prefix=True)] == [
        (EventType.DELETE, k) for k in want]


@pytest.mark.parametrize("prefix", [b"a\xff", b"\xff", b"\xff\xff"], ids=lambda p: p.hex())
def test_prefix_through_the_store(store: embedkv.Store, prefix: bytes) -> None:
    want = PREFIXES[prefix]
    seen: list[embedkv.Event] = []
    sentinel = prefix + b"\xff\xff\xff\xffsentinel"  # in the prefix, after every other key
    with store.watch(prefix, seen.append, prefix=True):
        store.txn(success=[embedkv.Put(k, 1) for k in KEYS])
        store.put(sentinel, 2)
        wait_for(lambda: seen and seen[-1].key == sentinel, what="the sentinel's event")
    assert [e.key for e in seen] == [*want, sentinel]
    assert [kv.key for kv in store.range(prefix)] == [*want, sentinel]
    assert store.count(prefix) == len(want) + 1
    replay = store.watch_iter(prefix, prefix=True, start_revision=1, timeout=10)
    with replay:
        assert [next(replay).key for _ in range(len(want) + 1)] == [*want, sentinel]
    assert store.delete(prefix, prefix=True) == len(want) + 1
    assert sorted(store.keys()) == sorted(k for k in KEYS if k not in want)
