"""Peer transport: the wire codec (frames), asyncio links and calls (transport) and a fault
hook."""

from .faults import Direction, FaultPlan
from .frames import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Call,
    Frame,
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
from .transport import (
    JOIN,
    LinkState,
    OnCall,
    PeerTransport,
    RemoteError,
    backoff_delay,
    parse_address,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "JOIN",
    "PROTOCOL_VERSION",
    "Call",
    "Direction",
    "FaultPlan",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "Hello",
    "LinkState",
    "OnCall",
    "PeerTransport",
    "ProtocolError",
    "Purpose",
    "Refused",
    "RemoteError",
    "Reply",
    "SnapshotAck",
    "SnapshotChunk",
    "SnapshotEnd",
    "backoff_delay",
    "decode_payload",
    "encode",
    "parse_address",
]
