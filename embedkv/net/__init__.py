"""Peer transport: the wire codec (frames), asyncio links (transport) and a fault hook."""

from .faults import Direction, FaultPlan
from .frames import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Frame,
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
from .transport import LinkState, PeerTransport, backoff_delay, parse_address

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "Direction",
    "FaultPlan",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "Hello",
    "LinkState",
    "PeerTransport",
    "ProtocolError",
    "Purpose",
    "Refused",
    "SnapshotAck",
    "SnapshotChunk",
    "SnapshotEnd",
    "backoff_delay",
    "decode_payload",
    "encode",
    "parse_address",
]
