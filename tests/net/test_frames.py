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
    NETWORK_TYPES,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    ProtocolError,
    Purpose,
    Refused,
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


any_message = messages(st.sampled_from(sorted(NETWORK_TYPES)))
other_frames = st.one_of(
    st.builds(Hello, member=IDS, cluster=st.text(max_size=40), purpose=st.sampled_from(Purpose)),
    st.builds(SnapshotChunk, st.binary(max_size=64)),
    st.builds(SnapshotEnd, U64),
    st.builds(SnapshotAck, st.booleans()),
    st.builds(Refused, st.text(max_size=40)),
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
