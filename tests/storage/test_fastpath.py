"""The write hot path's shortcuts give exactly what the general code gives.

A plain Put is encoded without building its wire op (``codec._encode_put_proposal``) and applied
without decode_wire (``WriteBatch.apply`` -> ``Applier.apply_put``, which inlines
``codec.split_put``); KeyValue and Event are built through slot-compatible twins. Entry data
that is not ``bytes`` (a memoryview) takes the general path (decode_wire + ``Applier.apply``), so
applying the same entries both ways must give the same answers and the same state.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkv.raft.types import Entry, EntryType, HardState
from embedkv.storage import Applied, DataDir, mvcc
from embedkv.storage.codec import (
    PUT_PREV_KV,
    PUT_PROPOSAL,
    PUT_STR_KEY,
    PUT_TAG,
    _encode_put,
    encode_proposal,
)
from embedkv.storage.requests import (
    MAX_KEY_BYTES,
    Event,
    EventType,
    Get,
    KeyValue,
    LeaseGrant,
    Put,
)


def _reference_encode(member_id: int, seq: int, req: Put) -> bytes:
    """A plain Put's proposal as the general code builds it."""
    encode_proposal(member_id, seq, LeaseGrant(1, 1))  # member_id and seq checks
    op = _encode_put(req)
    key = op[1]
    kb = key.encode("utf-8") if isinstance(key, str) else key
    flags = (PUT_PREV_KV if op[4] else 0) | (PUT_STR_KEY if isinstance(key, str) else 0)
    return PUT_PROPOSAL.pack(PUT_TAG, member_id, seq, op[3], flags, len(kb)) + kb + op[2]


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


_keys = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["x" * MAX_KEY_BYTES, "x" * (MAX_KEY_BYTES + 1), "\ud800", "é" * 250,
                     b"y" * (MAX_KEY_BYTES + 1), bytearray(b"ba"), memoryview(b"mv"), 5, None]),
)
_leases = st.sampled_from([None, 0, 1, 7, (1 << 63) - 1, 1 << 63, -1, True, 1.5, "7"])
_prevs = st.sampled_from([False, True, 0, 1, None])
_values = st.one_of(st.text(max_size=20), st.integers(), st.none(),
                    st.sampled_from([object(), b"\x00" * 3, [1, {"a": 2}], "v" * 100]))


@settings(max_examples=400, deadline=None)
@given(_keys, _leases, _prevs, _values)
def test_put_encoding_matches_the_general_path(key: Any, lease: Any, prev: Any,
                                               value: Any) -> None:
    req = Put(key, value, lease, prev)
    assert _outcome(encode_proposal, 3, 9, req) == _outcome(_reference_encode, 3, 9, req)


def test_twins_are_the_frozen_classes() -> None:
    kv = mvcc._fast_kv(b"k", {"a": 1}, 2, 3, 4, None)
    assert type(kv) is KeyValue
    assert repr(kv) == repr(KeyValue(b"k", {"a": 1}, 2, 3, 4, None))
    ev = mvcc._fast_event(EventType.DELETE, kv, kv)
    assert type(ev) is Event
    assert ev == Event(EventType.DELETE, kv, kv)
    with pytest.raises(AttributeError):
        ev.kv = kv  # type: ignore[misc]


class _Pair:
    """Two data dirs fed the same entries: one as bytes (the fast path), one as memoryviews
    (the general path)."""

    def __init__(self, root: str) -> None:
        self.fast = DataDir.open(f"{root}/fast", durable=False)
        self.slow = DataDir.open(f"{root}/slow", durable=False)
        self.index = 0

    def apply(self, datas: list[bytes]) -> None:
        got: list[list[Applied]] = []
        for dd, wrap in ((self.fast, bytes), (self.slow, memoryview)):
            entries = [Entry(1, self.index + i + 1, EntryType.NORMAL, wrap(d))  # type: ignore[arg-type]
                       for i, d in enumerate(datas)]
            with dd.write() as w:
                w.append_entries([Entry(e.term, e.index, e.type, bytes(e.data)) for e in entries])
                w.set_hard_state(HardState(1, 1, entries[-1].index))
                got.append([w.apply(e) for e in entries])
        self.index += len(datas)
        for a, b in zip(*got, strict=True):
            assert (a.index, a.origin, type(a.result), a.events) == (
                b.index, b.origin, type(b.result), b.events)
            assert repr(a.result) == repr(b.result)
            for ev in a.events:
                assert type(ev) is Event and type(ev.kv) is KeyValue
        assert self.fast.kv.revision == self.slow.kv.revision
        every = Get(b"\x00", end=b"\x00")
        assert self.fast.kv.range(every) == self.slow.kv.range(every)

    def close(self) -> None:
        self.fast.close()
        self.slow.close()


@pytest.fixture(scope="module")
def pair() -> Iterator[_Pair]:
    with tempfile.TemporaryDirectory() as root:
        p = _Pair(root)
        p.apply([encode_proposal(1, 1, LeaseGrant(7, 60))])
        yield p
        p.close()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_applying_puts_matches_the_general_path(pair: _Pair, data: st.DataObject) -> None:
    key = data.draw(st.one_of(st.sampled_from(["a", "b", "é", "k" * 40]),
                              st.sampled_from([b"a", b"\xff\x00", b"k" * 40])))
    lease = data.draw(st.sampled_from([None, 7, 8]))
    prev = data.draw(st.booleans())
    value = data.draw(_values.filter(lambda v: type(v) is not object))
    good = encode_proposal(2, data.draw(st.integers(0, 99)), Put(key, value, lease, prev))
    mutated = bytearray(good)
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(1, len(good) - 1))
        mutated[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(good)))
    # The key's current version first (so prev_kv and versions are exercised), then the
    # mutated or truncated proposal, then the untouched one.
    pair.apply([encode_proposal(1, 5, Put(key, "before")), bytes(mutated), good[:cut], good])
