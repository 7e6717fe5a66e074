"""The member directory and this member's own settings, as stored in raft_state.

Raft knows members by id; the directory maps each id to a name and a peer address (and whether
a learner should be promoted once it has caught up). It is part of the replicated state: the
log writer changes it in the transaction that applies a membership change, and it travels in
snapshot streams, so it survives log compaction. `LocalInfo` is not replicated: this member's
name, listen address and cluster token, written at bootstrap (or when the address changes),
and the TLS files it runs with (None: plain TCP, chosen with insecure=True).

With TLS the directory also holds the serials of each member's certificates (recorded by the
leader as it sees them), and `DENIED` the serials of removed members' certificates, refused on
every connection. `REMOVED` holds the ids of every member ever removed (ids are never reused):
a member that was down when it was removed is told so when it dials back, as etcd answers
such a member "the member has been permanently removed". All records are sealed with the
per-record checksum like every other record; the TLS fields and `REMOVED` are optional, so
records written before them still read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import cbor2

from embedkv.errors import CorruptData

from .codec import seal, unseal

_T = TypeVar("_T")

MEMBERS: Final = b"members"
LOCAL: Final = b"local"
DENIED: Final = b"denied"
REMOVED: Final = b"removed"

MAX_SERIALS: Final = 16
"""Certificate serials kept per member (the most recent): one more per renewal."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A member's name and peer address; `promote`: a learner that becomes a voter once it
    has caught up (it joined to become one)."""

    name: str
    address: str
    promote: bool = False
    serials: tuple[str, ...] = ()
    """The serials (hex) of the certificates this member was seen with, oldest first."""

    def with_serials(self, serials: tuple[str, ...]) -> PeerInfo:
        """This entry with `serials` added after the ones it has (the last MAX_SERIALS)."""
        merged = self.serials + tuple(s for s in serials if s not in self.serials)
        return PeerInfo(self.name, self.address, self.promote, merged[-MAX_SERIALS:])


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Where a TLS member's CA bundle, certificate and key are (absolute paths)."""

    ca: str
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """This member's own name, listen address and cluster token, and its TLS files (None:
    its peer links are plain TCP)."""

    name: str
    listen: str
    token: str
    tls: TLSFiles | None = None


def members_rows(members: Mapping[int, PeerInfo]) -> list[list[Any]]:
    return [[mid, m.name, m.address, m.promote] + ([list(m.serials)] if m.serials else [])
            for mid, m in sorted(members.items())]


def members_from_rows(rows: object) -> dict[int, PeerInfo]:
    """The directory from its rows; CorruptData if they are not what members_rows makes."""
    if not isinstance(rows, list):
        raise CorruptData("the member directory is not a list")
    out: dict[int, PeerInfo] = {}
    for row in rows:
        if (not isinstance(row, list) or len(row) not in (4, 5) or type(row[0]) is not int
                or not 0 < row[0] < 1 << 64 or not isinstance(row[1], str)
                or not isinstance(row[2], str) or type(row[3]) is not bool or row[0] in out
                or (len(row) == 5 and not _serials(row[4]))):
            raise CorruptData(f"a member directory row is invalid: {row!r:.100}")
        out[row[0]] = PeerInfo(row[1], row[2], row[3], tuple(row[4]) if len(row) == 5 else ())
    return out


def _serials(value: object) -> bool:
    return isinstance(value, list) and all(is_serial(v) for v in value)


def is_serial(value: object) -> bool:
    """A certificate serial as recorded: lower-case hex, at most 40 digits (RFC 5280)."""
    return (isinstance(value, str) and 0 < len(value) <= 40
            and all(c in "0123456789abcdef" for c in value))


def denied_from_list(items: object) -> frozenset[str]:
    if not _serials(items):
        raise CorruptData(f"the deny list is invalid: {items!r:.100}")
    assert isinstance(items, list)
    return frozenset(items)


def encode_denied(denied: frozenset[str]) -> bytes:
    return seal(DENIED, cbor2.dumps(sorted(denied)))


def decode_denied(raw: bytes) -> frozenset[str]:
    return _decode(DENIED, raw, 2, denied_from_list)


def removed_from_list(items: object) -> frozenset[int]:
    if not isinstance(items, list) or any(type(i) is not int or not 0 < i < 1 << 64
                                          for i in items):
        raise CorruptData(f"the removed members' ids are invalid: {items!r:.100}")
    return frozenset(items)


def encode_removed(removed: frozenset[int]) -> bytes:
    return seal(REMOVED, cbor2.dumps(sorted(removed)))


def decode_removed(raw: bytes) -> frozenset[int]:
    return _decode(REMOVED, raw, 2, removed_from_list)


def encode_members(members: Mapping[int, PeerInfo]) -> bytes:
    return seal(MEMBERS, cbor2.dumps(members_rows(members)))


def decode_members(raw: bytes) -> dict[int, PeerInfo]:
    return _decode(MEMBERS, raw, 3, members_from_rows)


def _decode(key: bytes, raw: bytes, depth: int, parse: Callable[[object], _T]) -> _T:
    """A sealed CBOR record of raft_state, parsed; CorruptData naming the record."""
    body = unseal("raft_state", key, raw)
    try:
        value = cbor2.loads(body, max_depth=depth)
    except Exception as exc:
        raise CorruptData(f"raft_state record {key!r} does not decode: {exc}") from None
    try:
        return parse(value)
    except CorruptData as exc:
        raise CorruptData(f"raft_state record {key!r} is invalid: {exc}") from None


def encode_local(local: LocalInfo) -> bytes:
    row: list[Any] = [local.name, local.listen, local.token]
    if local.tls is not None:
        row.append([local.tls.ca, local.tls.cert, local.tls.key])
    return seal(LOCAL, cbor2.dumps(row))


def decode_local(raw: bytes) -> LocalInfo:
    body = unseal("raft_state", LOCAL, raw)
    try:
        row = cbor2.loads(body, max_depth=3)
    except Exception as exc:
        raise CorruptData(f"raft_state record b'local' does not decode: {exc}") from None
    if (not isinstance(row, list) or len(row) not in (3, 4)
            or not all(isinstance(v, str) for v in row[:3])):
        raise CorruptData("raft_state record b'local' is invalid")
    tls = None
    if len(row) == 4:
        files = row[3]
        if (not isinstance(files, list) or len(files) != 3
                or not all(isinstance(v, str) and v for v in files)):
            raise CorruptData("raft_state record b'local' has invalid TLS files")
        tls = TLSFiles(*files)
    return LocalInfo(row[0], row[1], row[2], tls)
