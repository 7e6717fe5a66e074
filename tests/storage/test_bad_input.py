"""Bad input gives a clear error, never a crash, a hang or a huge allocation: wrong key and
value types, oversized values, garbage proposals, corrupted and truncated files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import cbor2
import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkv.errors import CorruptData, UnsupportedFormat
from embedkv.raft.types import Entry
from embedkv.storage import DataDir
from embedkv.storage.codec import (
    MAX_TXN_OPS,
    MAX_VALUE_DEPTH,
    U32,
    BadProposal,
    decode_proposal,
    encode_proposal,
)
from embedkv.storage.lmdbenv import FORMAT_VERSION
from embedkv.storage.requests import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Compaction,
    Delete,
    DeleteResult,
    EventType,
    Get,
    KeyValue,
    LeaseGrant,
    LeaseRevoke,
    Put,
    PutResult,
    Request,
    SortOrder,
    Txn,
    TxnResult,
    Value,
)

from .harness import Member

# --- requests refused before anything is written --------------------------------------------


@pytest.mark.parametrize("key", [1, None, 1.5, ["a"], object()])
def test_wrong_key_types(key: Any) -> None:
    with pytest.raises(TypeError, match="keys must be str or bytes"):
        encode_proposal(1, 1, Put(key, 1))


@pytest.mark.parametrize("key", [bytearray(), memoryview(b"")])
def test_empty_prefix_of_a_wrong_key_type(key: Any) -> None:
    """The empty prefix selects every key only as str or bytes, as any other key would."""
    with pytest.raises(TypeError, match="keys must be str or bytes"):
        encode_proposal(1, 1, Delete(key, prefix=True))
    with pytest.raises(TypeError, match="keys must be str or bytes"):
        encode_proposal(1, 1, Txn(success=(Get(key, prefix=True),)))


@pytest.mark.parametrize("key", ["", b"", "x" * (MAX_KEY_BYTES + 1), "é" * 251])
def test_bad_key_sizes(key: Any) -> None:
    with pytest.raises(ValueError):
        encode_proposal(1, 1, Put(key, 1))


def test_key_with_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_proposal(1, 1, Put("\ud800", 1))


@pytest.mark.parametrize("value", [object(), {1, object()}, lambda: 1])
def test_unencodable_values(value: Any) -> None:
    with pytest.raises(TypeError, match="cannot be encoded"):
        encode_proposal(1, 1, Put("k", value))


def test_oversized_value() -> None:
    with pytest.raises(ValueError, match="limit"):
        encode_proposal(1, 1, Put("k", b"x" * MAX_VALUE_BYTES))


def test_too_deep_value() -> None:
    deep: Any = 1
    for _ in range(MAX_VALUE_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ValueError, match="cannot be stored"):
        encode_proposal(1, 1, Put("k", deep))


@pytest.mark.parametrize(
    "request_",
    [
        Put("k", 1, lease=-1),
        Put("k", 1, lease=1 << 63),
        Put("k", 1, lease=True),
        Put("k", 1, prev_kv=1),  # type: ignore[arg-type]
        Delete("k", prefix=True, end="z"),
        LeaseGrant(0, 10),
        LeaseGrant(1, 0),
        LeaseGrant(1, "10"),  # type: ignore[arg-type]
        LeaseRevoke(-5),
        Compaction(0),
        Txn(success=(Put("a", 1), Put("a", 2))),
        Txn(success=(Put("a/1", 1), Delete("a/", prefix=True))),
        Txn(failure=(Put(b"a", 1), Delete("a"))),
        Txn(success=tuple(Put(f"k{i}", i) for i in range(MAX_TXN_OPS + 1))),
        Txn(success=(Get("k", limit=-1),)),
        Txn(success=(Get("k", sort_order="ascend"),)),  # type: ignore[arg-type]
        Txn(compare=("k",)),  # type: ignore[arg-type]
        Txn(success=(LeaseGrant(1, 1),)),  # type: ignore[arg-type]
    ],
)
def test_invalid_requests(request_: Request) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_proposal(1, 1, request_)


def test_not_a_request() -> None:
    with pytest.raises(TypeError, match="not a request"):
        encode_proposal(1, 1, Get("k"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_proposal(0, 1, Put("k", 1))


# Keys before, inside and after the deleted ranges; each branch below deletes a, aa, ab, abc.
_OVERLAP_KEYS = ["`", "a", "aa", "ab", "abc", "b", "b/1", "c"]


@pytest.mark.parametrize(
    ("deletes", "counts"),
    [
        ((Delete("a", prefix=True, prev_kv=True), Delete("ab", prev_kv=True)), [4, 0]),
        ((Delete("ab", prev_kv=True), Delete("a", prefix=True, prev_kv=True)), [1, 3]),
        ((Delete("a", end="ab", prev_kv=True), Delete("aa", end="b", prev_kv=True)), [2, 2]),
        ((Delete("a", prefix=True, prev_kv=True), Delete("a", prefix=True, prev_kv=True)),
         [4, 0]),
    ],
    ids=["prefix-then-key", "key-then-prefix", "ranges", "same-twice"],
)
def test_overlapping_deletes_are_allowed(
    member: Member, deletes: tuple[Delete, Delete], counts: list[int]
) -> None:
    """Overlapping deletes in one txn branch are valid (etcd allows them; only a key both put
    and deleted, or put twice, is refused): each deletes what is still there when it runs,
    all at one revision, and nothing outside their ranges changes."""
    txn = Txn(success=(*deletes, Put("b", 1)))
    _, _, decoded = decode_proposal(encode_proposal(1, 1, txn))
    assert encode_proposal(1, 1, decoded) == encode_proposal(1, 1, txn)
    member.propose_many([Put(k, k) for k in _OVERLAP_KEYS])  # revisions 2..9
    kv = member.dd.kv
    before = {k: kv.get(k) for k in _OVERLAP_KEYS}
    res = member.propose(txn)
    assert isinstance(res, TxnResult) and res.succeeded and res.revision == 10
    first, second, put = res.responses
    assert isinstance(first, DeleteResult) and isinstance(second, DeleteResult)
    assert [first.deleted, second.deleted] == counts
    assert (first.revision, second.revision) == (10, 10)
    deleted = [x.key for x in (*first.prev_kvs, *second.prev_kvs)]
    assert sorted(deleted) == ["a", "aa", "ab", "abc"]  # each key once
    assert all(x == before[str(x.key)] for x in (*first.prev_kvs, *second.prev_kvs))
    assert put == PutResult(10)
    assert kv.revision == 10
    assert [(e.type, e.key, e.revision) for e in kv.events(10, b"\x00", end=b"\x00")] == [
        *((EventType.DELETE, k, 10) for k in deleted), (EventType.PUT, "b", 10)]
    after = {str(x.key): x for x in kv.range(Get(b"\x00", end=b"\x00")).kvs}
    assert sorted(after) == ["`", "b", "b/1", "c"]
    assert after["b"] == KeyValue("b", 1, before["b"].create_revision, 10, 2)  # type: ignore[union-attr]
    assert all(after[k] == before[k] for k in ("`", "b/1", "c"))  # untouched
    past = kv.range(Get(b"\x00", end=b"\x00", revision=9)).kvs
    assert [x.key for x in past] == _OVERLAP_KEYS  # the past is kept
    assert member.propose(Put("next", 1)) == PutResult(11)  # one revision for the whole txn


def test_reads_validate_their_arguments(member: Member) -> None:
    kv = member.dd.kv
    with pytest.raises(TypeError):
        kv.get(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kv.get("")
    with pytest.raises(ValueError):
        kv.get(b"x" * (MAX_KEY_BYTES + 1))
    with pytest.raises(ValueError):
        kv.range(Get("a", limit=-2))
    with pytest.raises(TypeError):
        kv.range(Get("a", sort_order=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kv.events(0, "a")
    assert kv.lease(-1) is None
    assert kv.range(Get("b", end="a")).count == 0


# --- garbage proposals ---------------------------------------------------------------------


def test_round_trip_of_every_request_kind() -> None:
    reqs: list[Request] = [
        Put("k", {"a": [1, 2]}, lease=5, prev_kv=True),
        Put(b"\x00\xff", None),
        Delete("k", prefix=True, prev_kv=True),
        Delete(b"a", end=b"\x00"),
        Txn((Value("k") == 3,), (Put("x", 1), Get("a", end="b", limit=3,
                                                     sort_order=SortOrder.DESCEND)),
            (Delete("y"),)),
        LeaseGrant(7, 30),
        LeaseRevoke(7),
        Compaction(12),
    ]
    for req in reqs:
        member_id, seq, back = decode_proposal(encode_proposal(3, 99, req))
        assert (member_id, seq) == (3, 99)
        assert encode_proposal(3, 99, back) == encode_proposal(3, 99, req)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_cleanly(data: bytes) -> None:
    with contextlib.suppress(CorruptData):
        decode_proposal(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_truncated_and_mutated_proposals(data: st.DataObject) -> None:
    good = encode_proposal(1, 2, Txn((Value("k") == [1, {"a": 2}],),
                                     (Put("a", "v" * 30), Delete("b", prefix=True)), ()))
    cut = data.draw(st.integers(0, len(good)))
    pos = data.draw(st.integers(0, len(good) - 1))
    flipped = bytearray(good)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    for garbage in (good[:cut], bytes(flipped)):
        with contextlib.suppress(CorruptData):
            decode_proposal(garbage)


@pytest.mark.parametrize(
    "payload",
    [
        [1, 1, [1, "k", b"\xff", 0, False]],  # a value that is not CBOR
        [1, 1, [1, 5, b"\x01", 0, False]],  # key of the wrong type
        [1, 1, [99]],
        [1, 1, [4, [], [[1, "a", b"\x01", 0, False], [1, "a", b"\x02", 0, False]], []]],
        [0, 1, [7, 3]],
        [1, -1, [7, 3]],
        [1, 1, [7, 3], "extra"],
        {"not": "a list"},
    ],
)
def test_malformed_proposals_are_applied_as_errors(member: Member, payload: Any) -> None:
    data = cbor2.dumps(payload)
    with member.dd.write() as w:
        w.append_entries([Entry(1, 1, data=data)])
        applied = w.apply(Entry(1, 1, data=data))
    assert isinstance(applied.result, BadProposal)
    assert applied.events == []
    assert member.dd.applied_index == 1
    assert member.dd.kv.revision == 1


def test_huge_declared_lengths_do_not_allocate() -> None:
    for data in (b"\x5b" + (1 << 62).to_bytes(8, "big"), b"\x9b" + (1 << 62).to_bytes(8, "big"),
                 b"\x83\x01\x01\x9b" + (1 << 40).to_bytes(8, "big")):
        with pytest.raises(CorruptData):
            decode_proposal(data)


def test_deep_nesting_in_a_proposal() -> None:
    with pytest.raises(CorruptData):
        decode_proposal(b"\x81" * 100_000 + b"\x01")


# --- damaged files -------------------------------------------------------------------------


def _fill(path: Path) -> None:
    m = Member(path)
    for i in range(200):
        m.propose(Put(f"key{i:04d}", {"i": i, "pad": "p" * 100}))
    m.close()


def test_truncated_data_file(tmp_path: Path) -> None:
    _fill(tmp_path)
    data = tmp_path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, size // 2)
    with pytest.raises(CorruptData, match=r"truncated|valid"):
        DataDir.open(tmp_path)
    os.truncate(data, 100)
    with pytest.raises(CorruptData):
        DataDir.open(tmp_path)


def test_garbage_data_file(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(CorruptData):
        DataDir.open(tmp_path)


def test_garbage_lock_file_is_rebuilt(tmp_path: Path) -> None:
    _fill(tmp_path)
    (tmp_path / "lock.mdb").write_bytes(os.urandom(8192))
    dd = DataDir.open(tmp_path)
    assert dd.kv.get("key0001") is not None
    dd.close()


def test_corrupted_value_bytes(tmp_path: Path) -> None:
    m = Member(tmp_path)
    marker = b"MARKER-0123456789"
    m.propose(Put("victim", marker))
    m.propose(Put("other", 1))
    m.close()
    raw = (tmp_path / "data.mdb").read_bytes()
    # b"\x51" is the CBOR head of a 17-byte string; b"\x5b" claims an 8-byte length instead.
    assert raw.count(b"\x51" + marker) >= 2
    (tmp_path / "data.mdb").write_bytes(raw.replace(b"\x51" + marker, b"\x5b" + marker))
    # The proposal's copy in the Raft log is damaged too, and open reads the log's tail.
    with pytest.raises(CorruptData, match=r"raft_log record .* fails its checksum"):
        DataDir.open(tmp_path)


def _raw_env(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), max_dbs=16)


def test_unknown_format_version(tmp_path: Path) -> None:
    _fill(tmp_path)
    env = _raw_env(tmp_path)
    with env.begin(write=True) as txn:
        txn.put(b"format", U32.pack(99), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(UnsupportedFormat, match="format 99"):
        DataDir.open(tmp_path)


def test_format_2_is_upgraded_in_place(tmp_path: Path) -> None:
    """Format 3 moved the log's compaction point from `raft_state` to the main database."""
    with DataDir.open(tmp_path, durable=False) as dd, dd.write() as w:
        w.append_entries([Entry(2, i) for i in range(1, 6)])
        for i in range(1, 4):
            w.apply(Entry(2, i))
        w.compact_log(3)
    env = _raw_env(tmp_path)  # make it a format-2 dir, as that code left it
    with env.begin(write=True) as txn:
        start = txn.pop(b"log_start")
        assert start is not None
        txn.put(b"log_start", start, db=env.open_db(b"raft_state", txn=txn))
        txn.put(b"format", U32.pack(2), db=env.open_db(b"meta", txn=txn))
    env.close()
    with DataDir.open(tmp_path, durable=False) as dd:
        assert (dd.log.first_index(), dd.log.last_index(), dd.log.term(3)) == (4, 5, 2)
        assert dd.applied_index == 3
    env = _raw_env(tmp_path)
    with env.begin() as txn:
        assert txn.get(b"format", db=env.open_db(b"meta", txn=txn)) == U32.pack(FORMAT_VERSION)
        assert txn.get(b"log_start", db=env.open_db(b"raft_state", txn=txn)) is None
        assert txn.get(b"log_start") == start
    env.close()


@pytest.mark.parametrize(
    ("table", "key", "value", "match"),
    [
        (b"meta", b"format", b"\x01", "wrong size"),
        (b"", b"applied", b"short", "wrong size"),
        (b"", b"hard_state", b"\x00" * 5, "wrong size"),
        (b"raft_state", b"identity", b"\x00" * 3, "wrong size"),
        (b"raft_state", b"conf_state", b"\x00\x00\x00\x09", "truncated|wrong size"),
        (b"raft_log", (5).to_bytes(8, "big"), b"\x00", "fails its checksum"),
    ],
)
def test_garbage_records_fail_on_open(
    tmp_path: Path, table: bytes, key: bytes, value: bytes, match: str
) -> None:
    _fill(tmp_path)
    env = _raw_env(tmp_path)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(table or None, txn=txn))  # b"": the main DB
    env.close()
    with pytest.raises(CorruptData, match=match):
        DataDir.open(tmp_path)


def test_garbage_key_records_fail_on_read(tmp_path: Path) -> None:
    _fill(tmp_path)
    env = _raw_env(tmp_path)
    with env.begin(write=True) as txn:
        txn.put(b"key0001", b"\x00" * 5, db=env.open_db(b"kv", txn=txn))
        txn.put(b"key0002", b"\x00" * 37 + b"\xff", db=env.open_db(b"kv", txn=txn))
    env.close()
    dd = DataDir.open(tmp_path)
    with pytest.raises(CorruptData, match="kv record of key b'key0001' fails its checksum"):
        dd.kv.get("key0001")
    with pytest.raises(CorruptData, match="kv record of key b'key0002' fails its checksum"):
        dd.kv.get("key0002")
    with pytest.raises(CorruptData):
        dd.kv.range(Get("key", prefix=True))
    dd.close()
