"""The peer wire format as a sans-I/O codec: bytes in, frames out, no sockets.

A frame is a 4-byte big-endian payload length followed by that many bytes of CBOR holding one
array whose first item says the kind. Decoding is strict: every field is checked for type,
range and enum value, anything else raises ProtocolError, and a length above the cap is refused
from its header alone, so a peer can neither crash the loop nor make us buffer more than the cap.
The format is Raft's own; the MVCC value codec (embedkv/storage/codec.py) is not involved.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from embedkv.errors import Error
from embedkv.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change; a hello with another version is refused."""

DEFAULT_MAX_FRAME = 16 << 20
"""Largest payload accepted or produced (16 MiB); snapshot data travels in smaller chunks."""

MAX_HELLO = 4096
"""Largest first frame a listener accepts: a hello is at most about 1 KiB (its token is at most
256 characters), and a stranger must not make the listener buffer more before it says who it is."""

MAX_TOKEN = 256
"""Longest cluster token (UTF-8 characters) a hello may carry."""

MAX_METHOD = 64
"""Longest call method name (characters)."""

MAX_BODY_DEPTH = 16
"""Deepest nesting of arrays and maps inside a call's or reply's body."""

MAX_DEPTH = 1 + MAX_BODY_DEPTH
"""Deepest nesting the CBOR decoder accepts in any frame: the frame's own array plus a body
(a Raft message needs only 3), so a peer cannot make the decoder recurse further."""

MAX_U64 = (1 << 64) - 1
MIN_CBOR_INT = -(1 << 64)
HEADER = struct.Struct(">I")

NETWORK_TYPES = frozenset(t for t in MessageType if t >= MessageType.PROP)
"""Message types that may cross the wire; the local ones (HUP, BEAT, ...) never do."""


class ProtocolError(Error):
    """A peer sent bytes that are not a valid frame; the connection carrying them is dropped."""


class FrameTooLarge(ProtocolError):
    """A frame's length exceeds the cap (on decode from its header, on encode before sending)."""


class Purpose(enum.IntEnum):
    """What a connection carries, declared in its hello."""

    RAFT = 0
    SNAPSHOT = 1
    CALL = 2


class Kind(enum.IntEnum):
    HELLO = 0
    MESSAGE = 1
    CHUNK = 2
    END = 3
    ACK = 4
    REFUSED = 5
    CALL = 6
    REPLY = 7


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of every connection: who dials, for which cluster, for what."""

    member: int
    cluster: str
    purpose: Purpose = Purpose.RAFT
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """A piece of a snapshot's data, sent after the SNAP message on a snapshot connection."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """The stream is complete; `size` is the total data length, checked by the receiver."""

    size: int


@dataclass(frozen=True, slots=True)
class SnapshotAck:
    """The receiver's answer to a snapshot stream: delivered (`ok`) or not."""

    ok: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """Sent by a listener before it closes a connection whose hello it refuses; `removed`:
    the dialer is a member removed from the cluster (it missed its removal: it stops)."""

    reason: str
    removed: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """A request on a call connection; the listener answers with a Reply of the same `call_id`.

    `body` is plain CBOR data (see `check_body`), as is a successful reply's."""

    call_id: int
    method: str
    body: object


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the Call `call_id`: the handler's result when `ok`, else its error message
    (a str)."""

    call_id: int
    ok: bool
    body: object


Frame = Hello | Message | SnapshotChunk | SnapshotEnd | SnapshotAck | Refused | Call | Reply


# ---------------------------------------------------------------------------------- encoding


def _entry(e: Entry) -> list[Any]:
    return [e.term, e.index, int(e.type), e.data]


def _payload(frame: Frame) -> list[Any]:
    if isinstance(frame, Message):
        snap: list[Any] | None = None
        if frame.snapshot is not None:
            meta = frame.snapshot.meta
            snap = [
                meta.index,
                meta.term,
                sorted(meta.conf_state.voters),
                sorted(meta.conf_state.learners),
                frame.snapshot.data,
            ]
        return [
            Kind.MESSAGE,
            int(frame.type),
            frame.to,
            frame.from_,
            frame.term,
            frame.log_term,
            frame.index,
            [_entry(e) for e in frame.entries],
            frame.commit,
            frame.reject,
            frame.reject_hint,
            snap,
            frame.context,
        ]
    if isinstance(frame, Hello):
        return [Kind.HELLO, frame.version, frame.cluster, frame.member, int(frame.purpose)]
    if isinstance(frame, SnapshotChunk):
        return [Kind.CHUNK, frame.data]
    if isinstance(frame, SnapshotEnd):
        return [Kind.END, frame.size]
    if isinstance(frame, SnapshotAck):
        return [Kind.ACK, frame.ok]
    if isinstance(frame, Call):
        return [Kind.CALL, _u64(frame.call_id, "call id"), _method(frame.method), _body(frame.body)]
    if isinstance(frame, Reply):
        return [Kind.REPLY, _u64(frame.call_id, "call id"), _bool(frame.ok, "ok"), _reply(frame)]
    if frame.removed:
        return [Kind.REFUSED, frame.reason, True]
    return [Kind.REFUSED, frame.reason]


def encode(frame: Frame, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame's bytes (header and payload). The peer validates; we cap the size, and check
    a call's method and body here so a bad one fails the caller instead of the connection."""
    try:
        payload = cbor2.dumps(_payload(frame))
    except ProtocolError:
        raise
    except Exception as exc:  # a field of the wrong type, e.g. str data
        raise ProtocolError(f"cannot encode {type(frame).__name__}: {exc}") from exc
    if len(payload) > max_frame:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the cap of {max_frame}")
    return HEADER.pack(len(payload)) + payload


# ---------------------------------------------------------------------------------- decoding


def _shown(v: object) -> str:
    """`v` for an error message, short and safe: a peer's CBOR bignum can be an int too long
    for ``str()`` (ValueError past 4300 digits), alone or inside an array, and that must not
    escape as other than a ProtocolError; so only scalars are shown by value."""
    if type(v) is int:
        return f"an int of {v.bit_length()} bits" if v.bit_length() > 64 else str(v)
    if v is None or type(v) in (bool, float):
        return repr(v)
    return f"a {type(v).__name__}"


def _u64(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_U64:
        raise ProtocolError(f"{what} must be an unsigned 64-bit int, not {_shown(v)}")
    return v


def _id(v: object, what: str) -> int:
    n = _u64(v, what)
    if n == 0:
        raise ProtocolError(f"{what} must be a member id (positive), not 0")
    return n


def _bytes(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        raise ProtocolError(f"{what} must be a byte string, not {type(v).__name__}")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise ProtocolError(f"{what} must be a bool, not {type(v).__name__}")
    return v


def _list(v: object, what: str, n: int | None = None) -> list[Any]:
    if type(v) is not list:
        raise ProtocolError(f"{what} must be an array, not {type(v).__name__}")
    if n is not None and len(v) != n:
        raise ProtocolError(f"{what} must have {n} items, not {len(v)}")
    return v


def _method(v: object) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_METHOD:
        raise ProtocolError(f"a call method must be a string of 1 to {MAX_METHOD} chars")
    return v


def _body(v: object, what: str = "body", depth: int = 0) -> object:
    """`v` if it is plain CBOR data: None, bool, int (CBOR's native range), float, str, bytes,
    and lists and str-keyed dicts of those, nested at most MAX_BODY_DEPTH deep (which also
    refuses a list containing itself); ProtocolError naming the first offender otherwise."""
    if v is None or type(v) in (bool, float, str, bytes):
        return v
    if type(v) is int:
        if not MIN_CBOR_INT <= v <= MAX_U64:
            raise ProtocolError(f"{what} holds {_shown(v)}, beyond CBOR's 64-bit ints")
        return v
    if type(v) is not list and type(v) is not dict:
        raise ProtocolError(f"{what} may hold only plain CBOR data, not a {type(v).__name__}")
    if depth >= MAX_BODY_DEPTH:
        raise ProtocolError(f"{what} nests deeper than {MAX_BODY_DEPTH} arrays or maps")
    if type(v) is list:
        for item in v:
            _body(item, what, depth + 1)
        return v
    assert type(v) is dict
    for key, item in v.items():
        if type(key) is not str:
            raise ProtocolError(f"{what} has a map key that is a {type(key).__name__}, not a str")
        _body(item, what, depth + 1)
    return v


def _reply(frame: Reply) -> object:
    if not frame.ok and type(frame.body) is not str:
        raise ProtocolError("a failed reply's body must be its error message (a str)")
    return _body(frame.body, "reply body")


def _ids(v: object, what: str) -> frozenset[int]:
    items = [_id(x, what) for x in _list(v, what)]
    out = frozenset(items)
    if len(out) != len(items):
        raise ProtocolError(f"{what} repeats a member id")
    return out


def _enum(cls: type[enum.IntEnum], v: object, what: str) -> Any:
    if type(v) is not int:
        raise ProtocolError(f"{what} must be an int, not {type(v).__name__}")
    try:
        return cls(v)
    except ValueError:
        raise ProtocolError(f"unknown {what} {_shown(v)}") from None


def _message(p: list[Any]) -> Message:
    _list(p, "message", 13)
    mtype = _enum(MessageType, p[1], "message type")
    if mtype not in NETWORK_TYPES:
        raise ProtocolError(f"message type {mtype.name} is local and never crosses the wire")
    entries = []
    for raw in _list(p[7], "entries"):
        e = _list(raw, "entry", 4)
        entries.append(
            Entry(
                term=_u64(e[0], "entry term"),
                index=_u64(e[1], "entry index"),
                type=_enum(EntryType, e[2], "entry type"),
                data=_bytes(e[3], "entry data"),
            )
        )
    snapshot = None
    if p[11] is not None:
        s = _list(p[11], "snapshot", 5)
        voters = _ids(s[2], "snapshot voter")
        learners = _ids(s[3], "snapshot learner")
        if voters & learners:
            raise ProtocolError("a snapshot's voters and learners overlap")
        meta = SnapshotMeta(
            _u64(s[0], "snapshot index"), _u64(s[1], "snapshot term"), ConfState(voters, learners)
        )
        snapshot = Snapshot(meta, _bytes(s[4], "snapshot data"))
    return Message(
        type=mtype,
        to=_id(p[2], "to"),
        from_=_id(p[3], "from"),
        term=_u64(p[4], "term"),
        log_term=_u64(p[5], "log term"),
        index=_u64(p[6], "index"),
        entries=tuple(entries),
        commit=_u64(p[8], "commit"),
        reject=_bool(p[9], "reject"),
        reject_hint=_u64(p[10], "reject hint"),
        snapshot=snapshot,
        context=_bytes(p[12], "context"),
    )


def _validate(p: object) -> Frame:
    """The frame a decoded CBOR value stands for, or ProtocolError."""
    items = _list(p, "frame")
    if not items:
        raise ProtocolError("empty frame")
    kind = _enum(Kind, items[0], "frame kind")
    if kind is Kind.MESSAGE:
        return _message(items)
    if kind is Kind.HELLO:
        _list(items, "hello", 5)
        token = items[2]
        if type(token) is not str or len(token) > MAX_TOKEN:
            raise ProtocolError(f"cluster token must be a string of at most {MAX_TOKEN} chars")
        return Hello(
            version=_u64(items[1], "protocol version"),
            cluster=token,
            member=_id(items[3], "member"),
            purpose=_enum(Purpose, items[4], "purpose"),
        )
    if kind is Kind.CHUNK:
        _list(items, "chunk", 2)
        return SnapshotChunk(_bytes(items[1], "chunk data"))
    if kind is Kind.END:
        _list(items, "end", 2)
        return SnapshotEnd(_u64(items[1], "snapshot size"))
    if kind is Kind.ACK:
        _list(items, "ack", 2)
        return SnapshotAck(_bool(items[1], "ack"))
    if kind is Kind.CALL:
        _list(items, "call", 4)
        return Call(_u64(items[1], "call id"), _method(items[2]), _body(items[3], "call body"))
    if kind is Kind.REPLY:
        _list(items, "reply", 4)
        reply = Reply(_u64(items[1], "call id"), _bool(items[2], "ok"), items[3])
        _reply(reply)
        return reply
    if len(items) != 3:
        _list(items, "refusal", 2)
    if type(items[1]) is not str:
        raise ProtocolError("refusal reason must be a string")
    return Refused(items[1], len(items) == 3 and _bool(items[2], "removed"))


def _bignum(sign: int) -> Callable[[object, bool], int]:
    """Decoder of CBOR tag 2 (sign 1) or 3 (sign -1): a plain int, range-checked like any."""

    def decode(value: object, immutable: bool) -> int:
        if type(value) is not bytes:
            raise ValueError("a bignum must wrap a byte string")
        n = int.from_bytes(value, "big")
        return n if sign > 0 else -1 - n

    return decode


def _refuse_tag(tag: int) -> Callable[[object, bool], object]:
    def refuse(value: object, immutable: bool) -> object:
        raise ValueError(f"CBOR tag {tag} is not allowed")

    return refuse


_BIGNUMS: dict[int, Callable[[object, bool], object]] = {2: _bignum(1), 3: _bignum(-1)}


class _OnlyBignums(Mapping[int, Callable[[object, bool], object]]):
    """cbor2's decoders for tags, asked for every tag it meets: bignums decode to ints and any
    other tag is refused before cbor2's own decoders run (no dates, regexes, shared or cyclic
    references: a frame is plain data)."""

    def __getitem__(self, tag: int) -> Callable[[object, bool], object]:
        return _BIGNUMS.get(tag) or _refuse_tag(tag)

    def __iter__(self) -> Iterator[int]:
        return iter(_BIGNUMS)

    def __len__(self) -> int:
        return len(_BIGNUMS)


_TAGS = _OnlyBignums()


def _refuse_unknown_tag(tag: cbor2.CBORTag, immutable: bool) -> object:
    raise ValueError(f"CBOR tag {tag.tag} is not allowed")


def decode_payload(payload: bytes) -> Frame:
    """Decode one frame's payload (without the length header)."""
    try:
        value = cbor2.loads(
            payload,
            semantic_decoders=_TAGS,
            tag_hook=_refuse_unknown_tag,  # in case a cbor2 bypasses the mapping above
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,  # map keys str or bytes: no crafted hash collisions
        )
    except Exception as exc:  # CBORDecodeError, and whatever a tag decoder raises
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise ProtocolError(f"undecodable frame: {exc}{cause}") from None
    return _validate(value)


class FrameDecoder:
    """Incremental decoder for one connection: ``feed`` bytes as they arrive, get whole frames.

    After a ProtocolError the stream position is lost, so the decoder stays failed and the
    caller must drop the connection.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError(f"max_frame must be positive, not {max_frame!r}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held awaiting the rest of a frame (never above the cap plus one header)."""
        return len(self._buf)

    def limit(self, max_frame: int) -> None:
        """Change the cap for the frames not begun yet: a listener reads the hello under a
        small cap (``feed(data, 1)`` leaves what follows undecoded), then sets the cap for
        the rest of the connection from what the hello proved."""
        if max_frame < 1:
            raise ValueError(f"max_frame must be positive, not {max_frame!r}")
        self.max_frame = max_frame
        if self._need is not None and self._need > max_frame:
            self._fail(FrameTooLarge(f"frame of {self._need} bytes exceeds the cap of {max_frame}"))

    def _fail(self, exc: ProtocolError) -> None:
        self._failed = exc
        self._buf.clear()

    def feed(self, data: bytes, most: int | None = None) -> list[Frame]:
        """The whole frames in what was fed so far: at most `most` of them (the rest stays
        buffered for the next call, which may feed b"")."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data, most)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _feed(self, data: bytes, most: int | None) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        while most is None or len(out) < most:
            if self._need is None:
                if len(buf) - pos < HEADER.size:
                    break
                (n,) = HEADER.unpack_from(buf, pos)
                if n == 0:
                    raise ProtocolError("empty frame")
                if n > self.max_frame:
                    raise FrameTooLarge(f"frame of {n} bytes exceeds the cap of {self.max_frame}")
                pos += HEADER.size
                self._need = n
            n = self._need
            if len(buf) - pos < n:
                break
            out.append(decode_payload(bytes(buf[pos : pos + n])))
            pos += n
            self._need = None
        del buf[:pos]
        return out
