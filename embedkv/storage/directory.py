"""The member directory and this member's own settings, as stored in raft_state.

Raft knows members by id; the directory maps each id to a name and a peer address (and whether
a learner should be promoted once it has caught up). It is part of the replicated state: the
log writer changes it in the transaction that applies a membership change, and it travels in
snapshot streams, so it survives log compaction. `LocalInfo` is not replicated: this member's
name, listen address and cluster token, written at bootstrap (or when the address changes).
Both records are sealed with the per-record checksum like every other record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from embedkv.errors import CorruptData

from .codec import seal, unseal

MEMBERS: Final = b"members"
LOCAL: Final = b"local"


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A member's name and peer address; `promote`: a learner that becomes a voter once it
    has caught up (it joined to become one)."""

    name: str
    address: str
    promote: bool = False


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """This member's own name, listen address and cluster token."""

    name: str
    listen: str
    token: str


def members_rows(members: Mapping[int, PeerInfo]) -> list[list[Any]]:
    return [[mid, m.name, m.address, m.promote] for mid, m in sorted(members.items())]


def members_from_rows(rows: object) -> dict[int, PeerInfo]:
    """The directory from its rows; CorruptData if they are not what members_rows makes."""
    if not isinstance(rows, list):
        raise CorruptData("the member directory is not a list")
    out: dict[int, PeerInfo] = {}
    for row in rows:
        if (not isinstance(row, list) or len(row) != 4 or type(row[0]) is not int
                or not 0 < row[0] < 1 << 64 or not isinstance(row[1], str)
                or not isinstance(row[2], str) or type(row[3]) is not bool or row[0] in out):
            raise CorruptData(f"a member directory row is invalid: {row!r:.100}")
        out[row[0]] = PeerInfo(row[1], row[2], row[3])
    return out


def encode_members(members: Mapping[int, PeerInfo]) -> bytes:
    return seal(MEMBERS, cbor2.dumps(members_rows(members)))


def decode_members(raw: bytes) -> dict[int, PeerInfo]:
    body = unseal("raft_state", MEMBERS, raw)
    try:
        rows = cbor2.loads(body, max_depth=3)
    except Exception as exc:
        raise CorruptData(f"raft_state record b'members' does not decode: {exc}") from None
    try:
        return members_from_rows(rows)
    except CorruptData as exc:
        raise CorruptData(f"raft_state record b'members' is invalid: {exc}") from None


def encode_local(local: LocalInfo) -> bytes:
    return seal(LOCAL, cbor2.dumps([local.name, local.listen, local.token]))


def decode_local(raw: bytes) -> LocalInfo:
    body = unseal("raft_state", LOCAL, raw)
    try:
        row = cbor2.loads(body, max_depth=2)
    except Exception as exc:
        raise CorruptData(f"raft_state record b'local' does not decode: {exc}") from None
    if not isinstance(row, list) or len(row) != 3 or not all(isinstance(v, str) for v in row):
        raise CorruptData("raft_state record b'local' is invalid")
    return LocalInfo(row[0], row[1], row[2])
