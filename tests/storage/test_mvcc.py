"""The etcd v3 behaviours the key space promises, one example each (the model test explores
their combinations)."""

from __future__ import annotations

import pytest

from embedkv.errors import Compacted, FutureRevision, LeaseNotFound
from embedkv.raft.types import Entry
from embedkv.storage import LeaseExists
from embedkv.storage.requests import (
    Compaction,
    CompactResult,
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
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
    Value,
    Version,
)

from .harness import Member


def test_revisions_follow_etcd(member: Member) -> None:
    kv = member.dd.kv
    assert kv.revision == 1  # an empty store
    assert member.propose(Put("a", 1)) == PutResult(2)
    assert member.propose(Delete("nothing")) == DeleteResult(2, 0)
    assert member.propose(LeaseGrant(9, 10)).revision == 2  # type: ignore[union-attr]
    assert member.propose(Txn(success=(Get("a"),))).revision == 2  # type: ignore[union-attr]
    assert kv.revision == 2
    assert member.dd.applied_index == 4


def test_versions_and_recreation(member: Member) -> None:
    member.propose(Put("k", "v1"))
    member.propose(Put("k", "v2"))
    assert member.dd.kv.get("k") == KeyValue("k", "v2", 2, 3, 2)
    member.propose(Delete("k"))
    member.propose(Put("k", "v3"))
    assert member.dd.kv.get("k") == KeyValue("k", "v3", 5, 5, 1)


def test_prev_kv_and_key_types(member: Member) -> None:
    member.propose(Put("k", 1))
    res = member.propose(Put(b"k", 2, prev_kv=True))
    assert res == PutResult(3, KeyValue("k", 1, 2, 2, 1))
    got = member.dd.kv.get("k")
    assert got is not None and got.key == b"k"  # the type of the last write
    res = member.propose(Delete("k", prev_kv=True))
    assert res == DeleteResult(4, 1, (KeyValue(b"k", 2, 2, 3, 2),))


def test_put_with_unknown_lease(member: Member) -> None:
    res = member.propose(Put("k", 1, lease=77))
    assert isinstance(res, LeaseNotFound) and res.lease_id == 77
    assert member.dd.kv.revision == 1 and member.dd.applied_index == 1
    assert member.dd.kv.get("k") is None


def test_leases(member: Member) -> None:
    member.propose(LeaseGrant(5, 30))
    assert isinstance(member.propose(LeaseGrant(5, 30)), LeaseExists)
    member.propose(Put("a", 1, lease=5))
    member.propose(Put("b", 2, lease=5))
    member.propose(Put("c", 3, lease=5))
    member.propose(Put("c", 4))  # detached again
    assert member.dd.kv.lease(5) == (30, ["a", "b"])
    applied = member.propose_many([LeaseRevoke(5)])[0]
    assert applied.result == LeaseRevokeResult(6, 2)  # one revision for every attached key
    assert [(e.type, e.key, e.revision) for e in applied.events] == [
        (EventType.DELETE, "a", 6), (EventType.DELETE, "b", 6)]
    assert member.dd.kv.lease(5) is None and member.dd.kv.leases() == []
    assert member.dd.kv.get("a") is None and member.dd.kv.get("c") is not None
    assert isinstance(member.propose(LeaseRevoke(5)), LeaseNotFound)


def test_txn_compares_see_the_state_before(member: Member) -> None:
    member.propose(LeaseGrant(3, 10))
    member.propose(Put("x", 10, lease=3))
    member.propose(Put("x", 11, lease=3))
    compares = (Value("x") == 11, Version("x") == 2, CreateRevision("x") == 2,
                ModRevision("x") == 3, LeaseOf("x") == 3, Value("x") > 5, Version("y") == 0)
    res = member.propose(Txn(compares, (Put("x", 12), Put("y", 1), Get("x"), Delete("z")),
                             (Delete("x"),)))
    assert isinstance(res, TxnResult) and res.succeeded and res.revision == 4
    put_x, put_y, get_x, delete_z = res.responses
    assert put_x == PutResult(4) and put_y == PutResult(4)
    assert get_x == RangeResult(4, (KeyValue("x", 12, 2, 4, 3),), 1)  # sees its own write
    assert delete_z == DeleteResult(4, 0)
    res = member.propose(Txn((Value("x") < "a",), (), (Get("x", revision=3),)))
    assert isinstance(res, TxnResult) and not res.succeeded  # int < str: false, not an error
    assert res.responses[0].kvs[0].value == 11  # type: ignore[union-attr]


def test_txn_fails_whole_on_bad_lease_or_revision(member: Member) -> None:
    member.propose(Put("a", 1))
    assert isinstance(member.propose(Txn(success=(Put("b", 1), Put("c", 1, lease=4)))),
                      LeaseNotFound)
    assert isinstance(member.propose(Txn(success=(Put("b", 1), Get("a", revision=9)))),
                      FutureRevision)
    assert member.dd.kv.get("b") is None and member.dd.kv.revision == 2


def test_ranges(member: Member) -> None:
    member.propose_many([Put(f"k{i}", 10 - i) for i in range(5)] + [Put("l", 0)])
    kv = member.dd.kv
    res = kv.range(Get("k", prefix=True, limit=2))
    assert [x.key for x in res.kvs] == ["k0", "k1"] and res.count == 5 and res.more
    res = kv.range(Get("k", prefix=True, sort_target=SortTarget.VALUE, limit=2))
    assert [x.value for x in res.kvs] == [6, 7]  # NONE + target VALUE sorts ascending
    res = kv.range(Get("k", prefix=True, sort_order=SortOrder.DESCEND))
    assert [x.key for x in res.kvs] == ["k4", "k3", "k2", "k1", "k0"]
    res = kv.range(Get("k1", end="k3", keys_only=True))
    assert [(x.key, x.value) for x in res.kvs] == [("k1", None), ("k2", None)]
    assert kv.range(Get("k", prefix=True, count_only=True)) == RangeResult(7, (), 5)
    assert kv.range(Get("k2", end=b"\x00", count_only=True)).count == 4
    assert kv.range(Get("k0", revision=2)).kvs[0].value == 10
    assert kv.range(Get("k1", revision=2)).kvs == ()
    with pytest.raises(FutureRevision):
        kv.range(Get("k", revision=8))


def test_compaction(member: Member) -> None:
    for i in range(5):
        member.propose(Put("a", i))  # revisions 2..6
    member.propose(Put("b", 0))  # 7
    member.propose(Delete("b"))  # 8
    assert isinstance(member.propose(Compaction(99)), FutureRevision)
    assert member.propose(Compaction(5)) == CompactResult(8)
    assert isinstance(member.propose(Compaction(5)), Compacted)
    kv = member.dd.kv
    assert kv.compact_revision == 5
    assert kv.range(Get("a", revision=5)).kvs[0].value == 3  # latest version <= 5 is kept
    with pytest.raises(Compacted) as info:
        kv.range(Get("a", revision=4))
    assert (info.value.revision, info.value.compact_revision) == (4, 5)
    with pytest.raises(Compacted):
        kv.events(4, "a")
    assert [e.revision for e in kv.events(5, "a")] == [5, 6]
    member.propose(Compaction(8))
    assert kv.range(Get("b", revision=8)).kvs == ()
    assert [e.revision for e in kv.events(8, b"\x00", end=b"\x00")] == [8]


def test_events_in_order_with_prev_kv(member: Member) -> None:
    member.propose(Put("a", 1))
    applied = member.propose_many([Put("a", 2), Delete("a", prefix=True)])
    events = [e for a in applied for e in a.events]
    assert [(e.type, e.value, e.prev_kv.value if e.prev_kv else None) for e in events] == [
        (EventType.PUT, 2, 1), (EventType.DELETE, None, 2)]
    assert list(member.dd.kv.events(3, "a")) == events
    assert next(iter(member.dd.kv.events(2, "a", prefix=True))).prev_kv is None


def test_empty_and_conf_change_entries(member: Member) -> None:
    with member.dd.write() as w:
        w.append_entries([Entry(1, 1)])
        applied = w.apply(Entry(1, 1))
    assert (applied.origin, applied.result, applied.events) == (None, None, [])
    assert member.dd.applied_index == 1


def test_long_replays_cross_read_transactions(member: Member) -> None:
    # "a" has more changes than a single-key replay follows along its chain (it then scans
    # history); "b" fewer, but more than one read transaction's worth.
    member.propose_many([Put("a" if i % 3 else "b", i) for i in range(1800)])
    every = list(member.dd.kv.events(2, b"\x00", end=b"\x00"))
    assert [e.revision for e in every] == list(range(2, 1802))
    only_b = list(member.dd.kv.events(2, "b"))
    assert only_b == [e for e in every if e.key == "b"] and len(only_b) == 600
    only_a = list(member.dd.kv.events(2, "a"))
    assert only_a == [e for e in every if e.key == "a"]
    prevs = [e.prev_kv.value for e in only_a[1:]]  # type: ignore[union-attr]
    assert prevs == [e.value for e in only_a[:-1]]


def test_replay_overtaken_by_compaction(member: Member) -> None:
    member.propose_many([Put("a", i) for i in range(600)])
    replays = [member.dd.kv.events(2, "a"), member.dd.kv.events(2, b"\x00", b"\x00")]
    for replay in replays:
        assert next(replay).revision == 2  # the first read transaction is consumed
    member.propose(Compaction(500))
    for replay in replays:
        with pytest.raises(Compacted):
            list(replay)


def test_consumer_may_write_during_replay(member: Member) -> None:
    member.propose_many([Put("a", i) for i in range(300)])
    seen = 0
    for event in member.dd.kv.events(2, "a"):
        seen += 1
        if seen % 100 == 0:
            member.propose(Put("b", event.value))  # a write while the replay is open
    assert seen == 300


def test_fast_constructors_build_what_the_classes_build() -> None:
    from embedkv.storage import mvcc

    kv = mvcc._fast_kv("k", [1], 2, 3, 4, 5)
    assert kv == KeyValue("k", [1], 2, 3, 4, 5)
    assert hash(KeyValue("k", 1, 2, 3, 4, None)) == hash(mvcc._fast_kv("k", 1, 2, 3, 4, None))
    from embedkv.storage.requests import Event

    assert mvcc._fast_event(EventType.PUT, kv, None) == Event(EventType.PUT, kv, None)
    with pytest.raises(AttributeError):
        kv.value = 2  # type: ignore[misc]
    from embedkv.storage.requests import PutResult as PR

    assert mvcc._fast_put_result(3, kv) == PR(3, kv)
