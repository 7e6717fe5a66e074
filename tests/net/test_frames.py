"""The wire codec: every message round-trips, and nothing a peer sends raises anything but
ProtocolError or makes the decoder hold more than the cap."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkv.net.frames import (
    HEADER,
    MAX_BODY_DEPTH,
    MAX_METHOD,
    NETWORK_TYPES,
    Call,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    ProtocolError,
    Purpose,
    Refused,
    Reply,
    SnapshotAck,
    SnapshotChunk,
    SnapshotEnd,
    decode_payload,
    encode,
)
from embedkv.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

U64 = st.integers(0, (1 << 64) - 1)
IDS = st.integers(1, (1 << 64) - 1)

entries = st.builds(
    Entry, term=U64, index=U64, type=st.sampled_from(EntryType), data=st.binary(max_size=64)
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    ids = draw(st.lists(IDS, max_size=6, unique=True))
    split = draw(st.integers(0, len(ids)))
    conf = ConfState(frozenset(ids[:split]), frozenset(ids[split:]))
    return Snapshot(SnapshotMeta(draw(U64), draw(U64), conf), draw(st.binary(max_size=128)))


def messages(mtype: st.SearchStrategy[MessageType]) -> st.SearchStrategy[Message]:
    return st.builds(
        Message,
        type=mtype,
        to=IDS,
        from_=IDS,
        term=U64,
        log_term=U64,
        index=U64,
        entries=st.lists(entries, max_size=5).map(tuple),
        commit=U64,
        reject=st.booleans(),
        reject_hint=U64,
        snapshot=st.none() | snapshots(),
        context=st.binary(max_size=32),
    )


def depth(v: object) -> int:
    """Nesting of arrays and maps in a body (a scalar is 0 deep)."""
    if isinstance(v, list):
        return 1 + max(map(depth, v), default=0)
    if isinstance(v, dict):
        return 1 + max(map(depth, v.values()), default=0)
    return 0


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 64), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
bodies = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
).filter(lambda b: depth(b) <= MAX_BODY_DEPTH)
methods = st.text(min_size=1, max_size=MAX_METHOD)
calls = st.builds(Call, U64, methods, bodies)
replies = st.builds(Reply, U64, st.just(True), bodies) | st.builds(
    Reply, U64, st.just(False), st.text(max_size=40)
)

any_message = messages(st.sampled_from(sorted(NETWORK_TYPES)))
other_frames = st.one_of(
    calls,
    replies,
    st.builds(Hello, member=IDS, cluster=st.text(max_size=40), purpose=st.sampled_from(Purpose)),
    st.builds(SnapshotChunk, st.binary(max_size=64)),
    st.builds(SnapshotEnd, U64),
    st.builds(SnapshotAck, st.booleans()),
    st.builds(Refused, st.text(max_size=40), st.booleans()),
)
any_frame = any_message | other_frames


@pytest.mark.parametrize("mtype", sorted(NETWORK_TYPES), ids=lambda t: t.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips(mtype: MessageType, data: st.DataObject) -> None:
    msg = data.draw(messages(st.just(mtype)))
    assert FrameDecoder().feed(encode(msg)) == [msg]


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(any_frame, max_size=6), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_a_stream_split_anywhere_decodes_to_the_same_frames(
    frames: list[object], cuts: list[int]
) -> None:
    wire = b"".join(encode(f) for f in frames)  # type: ignore[arg-type]
    decoder = FrameDecoder()
    out = []
    last = 0
    for cut in [*sorted(c % (len(wire) + 1) for c in cuts), len(wire)]:
        out += decoder.feed(wire[last:cut])
        last = cut
    assert out == frames
    assert decoder.buffered == 0


@pytest.mark.parametrize("mtype", [MessageType.HUP, MessageType.BEAT, MessageType.SNAP_STATUS])
def test_local_message_types_are_refused(mtype: MessageType) -> None:
    with pytest.raises(ProtocolError, match="local"):
        FrameDecoder().feed(encode(Message(mtype, to=1, from_=2)))


def _frame(payload: object) -> bytes:
    body = cbor2.dumps(payload)
    return HEADER.pack(len(body)) + body


GOOD = [1, 11, 2, 3, 4, 5, 6, [[1, 2, 0, b"x"]], 7, False, 0, None, b""]


def _with(i: int, value: object) -> list[object]:
    p = list(GOOD)
    p[i] = value
    return p


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (_with(1, 99), "unknown message type"),
        (_with(2, 0), "member id"),
        (_with(3, -1), "unsigned"),
        (_with(4, 1 << 64), "unsigned"),
        (_with(4, True), "unsigned"),
        (_with(5, 1.0), "unsigned"),
        (_with(7, [[1, 2, 7, b""]]), "unknown entry type"),
        (_with(7, [[1, 2, 0, "text"]]), "byte string"),
        (_with(7, [[1, 2, 0]]), "4 items"),
        (_with(9, 0), "bool"),
        (_with(11, [1, 1, [2, 2], [], b""]), "repeats"),
        (_with(11, [1, 1, [2], [2], b""]), "overlap"),
        (_with(12, None), "byte string"),
        (GOOD[:-1], "13 items"),
        ([], "empty"),
        ({"a": 1}, "array"),
        ([9], "frame kind"),
        ([0, 1, "c" * 300, 1, 0], "token"),
        ([0, 1, "c", 1, 5], "purpose"),
        ([3, -5], "unsigned"),
        # ints too long for str() (over 4300 digits) must still make a ProtocolError
        (_with(4, 10**5000), "unsigned"),
        ([3, -(10**5000)], "unsigned"),
        ([10**5000], "frame kind"),
        (_with(1, 10**5000), "unknown message type"),
        (_with(4, [10**5000]), "unsigned"),
    ],
)
def test_each_field_is_checked(payload: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder().feed(_frame(payload))


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    decoder = FrameDecoder(max_frame=1000)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", 1001))
    assert decoder.buffered == 0
    with pytest.raises(FrameTooLarge):  # the decoder stays failed
        decoder.feed(encode(SnapshotAck(True)))


def test_encoding_beyond_the_cap_is_refused() -> None:
    with pytest.raises(FrameTooLarge):
        encode(SnapshotChunk(b"x" * 2000), max_frame=1000)


def test_undecodable_cbor_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="undecodable"):
        decode_payload(b"\xff\xff")


CAP = 4096


def _decode_all(data: bytes, step: int) -> None:
    decoder = FrameDecoder(max_frame=CAP)
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
            assert decoder.buffered <= CAP + HEADER.size + step
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=2048), step=st.integers(1, 512))
def test_fuzz_random_bytes(data: bytes, step: int) -> None:
    _decode_all(data, step)
    _decode_all(HEADER.pack(len(data)) + data, step)  # well framed, random payload


@settings(max_examples=400, deadline=None)
@given(
    frame=any_frame,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    step=st.integers(1, 512),
)
def test_fuzz_mutated_valid_frames(frame: object, flips: list[tuple[int, int]], step: int) -> None:
    wire = bytearray(encode(frame))  # type: ignore[arg-type]
    for pos, byte in flips:
        wire[pos % len(wire)] = byte
    _decode_all(bytes(wire) * 2, step)


# ---------------------------------------------------------------------------- calls and replies


@settings(max_examples=200, deadline=None)
@given(frame=calls | replies)
def test_calls_and_replies_round_trip(frame: Call | Reply) -> None:
    assert FrameDecoder().feed(encode(frame)) == [frame]


def _nested(n: int) -> object:
    body: object = 0
    for _ in range(n):
        body = [body]
    return body


def test_a_body_may_nest_to_the_bound_and_no_further() -> None:
    deepest = Call(1, "m", _nested(MAX_BODY_DEPTH))
    assert FrameDecoder().feed(encode(deepest)) == [deepest]
    with pytest.raises(ProtocolError, match="deeper"):
        encode(Call(1, "m", _nested(MAX_BODY_DEPTH + 1)))
    # from the wire: refused by the decoder before it recurses further
    with pytest.raises(ProtocolError, match="depth"):
        FrameDecoder().feed(_frame([6, 1, "m", _nested(MAX_BODY_DEPTH + 1)]))
    with pytest.raises(ProtocolError):  # far deeper than Python's recursion limit
        decode_payload(b"\x84\x06\x01\x61m" + b"\x81" * 100_000 + b"\x00")


class Opaque:
    pass


loop: list[object] = []
loop.append(loop)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (Call(1, "", None), "method"),
        (Call(1, "m" * (MAX_METHOD + 1), None), "method"),
        (Call(1, b"join", None), "method"),  # type: ignore[arg-type]
        (Call(-1, "m", None), "call id"),
        (Call(1, "m", (1, 2)), "tuple"),
        (Call(1, "m", {1, 2}), "set"),
        (Call(1, "m", Opaque()), "Opaque"),
        (Call(1, "m", {1: "int key"}), "map key"),
        (Call(1, "m", [1 << 64]), "65 bits"),
        (Call(1, "m", -(1 << 64) - 1), "65 bits"),
        (Call(1, "m", loop), "deeper"),  # a list containing itself
        (Reply(1, False, {"not": "a message"}), "error message"),
        (Reply(1, 1, None), "bool"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_call_or_reply_is_refused_before_sending(frame: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        encode(frame)  # type: ignore[arg-type]


def _tag(tag: int, value: object) -> cbor2.CBORTag:
    return cbor2.CBORTag(tag, value)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ([6, 1, "", None], "method"),
        ([6, 1, "m" * (MAX_METHOD + 1), None], "method"),
        ([6, 1, 5, None], "method"),
        ([6, -1, "m", None], "call id"),
        ([6, 1, "m"], "4 items"),
        ([7, 1, 1, None], "bool"),
        ([7, 1, False, None], "error message"),
        ([7, 1, True, [1], 2], "4 items"),
        ([6, 1, "m", {1: 2}], "undecodable"),  # an int map key
        ([6, 1, "m", {b"k": 2}], "map key"),
        ([6, 1, "m", [cbor2.undefined]], "UndefinedType"),
        ([6, 1, "m", cbor2.CBORSimpleValue(99)], "CBORSimpleValue"),
        # every tag but bignums is refused before cbor2 decodes it: no dates, regexes (a
        # regex would be compiled), sets, shared references (a body containing itself) ...
        ([6, 1, "m", _tag(0, "2026-01-01T00:00:00Z")], "tag 0 is not allowed"),
        ([6, 1, "m", _tag(35, "(a+)+$")], "tag 35 is not allowed"),
        ([6, 1, "m", _tag(258, [1, 2])], "tag 258 is not allowed"),
        ([6, 1, "m", _tag(28, [_tag(29, 0)])], "tag 29 is not allowed"),
        ([6, 1, "m", _tag(55799, 1)], "tag 55799 is not allowed"),
        ([6, 1, "m", _tag(4000, 1)], "tag 4000 is not allowed"),
        # ... in any frame, not only in bodies
        ([0, 1, _tag(35, "c"), 1, 0], "tag 35 is not allowed"),
        ([5, _tag(36, "Content-Type: text/plain\n\nhi")], "tag 36"),
    ],
)
def test_each_call_and_reply_field_is_checked(payload: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder().feed(_frame(payload))


def test_a_bignum_is_only_an_int() -> None:
    """Tags 2 and 3 decode to ints, range-checked like any other."""
    assert FrameDecoder().feed(_frame([7, _tag(2, b"\x05"), True, _tag(3, b"\x01")])) == [
        Reply(5, True, -2)
    ]
    with pytest.raises(ProtocolError, match="bignum must wrap a byte string"):
        FrameDecoder().feed(_frame([7, _tag(2, "5"), True, None]))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x84\x06\x01\x61m\x9f\x01\xff", "indefinite"),  # an indefinite-length array
        (b"\x84\x06\x01\x61m\xa2\x61k\x01\x61k\x02", "(?i)duplicate"),  # {"k": 1, "k": 2}
    ],
)
def test_indefinite_lengths_and_duplicate_keys_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_payload(raw)
