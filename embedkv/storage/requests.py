"""The requests the key-value state machine applies, and what it answers.

These are the etcd v3 KV, Txn and Lease requests in Python form. The same objects are the public
API's building blocks (``embedkv.Put``, ``embedkv.Value(k) == v``): what a caller builds is what
goes through Raft and what every member applies, so there is one definition of each operation.

Keys are ``str`` (stored as UTF-8) or ``bytes``; a key's identity and order are its bytes, as in
etcd, and a key written as ``str`` is read back as ``str``. Values are anything cbor2 encodes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeAlias

Key: TypeAlias = str | bytes

MAX_KEY_BYTES = 500
"""LMDB keys are at most 511 bytes; keys are stored as-is so that ranges are B-tree scans."""

MAX_VALUE_BYTES = 1536 * 1024
"""A value's encoded size limit, etcd's default --max-request-bytes."""


def key_bytes(key: object) -> bytes:
    """Validate a user key and return the bytes that identify and order it.

    Only ``str`` and ``bytes``: a key is a mapping key, so it must be immutable and hashable;
    a ``bytearray`` or ``memoryview`` is refused (TypeError) rather than copied silently.
    """
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, bytes):
        raw = bytes(key)
    else:
        raise TypeError(
            f"keys must be str or bytes, not {type(key).__name__}"
            + (" (convert it with bytes())" if isinstance(key, bytearray | memoryview) else "")
        )
    if not raw:
        raise ValueError("keys must not be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"key is {len(raw)} bytes; the limit is {MAX_KEY_BYTES}")
    return raw


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with `prefix`; None means "to the end"."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key's record at some revision (etcd's mvccpb.KeyValue)."""

    key: Key
    value: Any
    create_revision: int
    mod_revision: int
    version: int
    lease: int | None = None


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """One change to one key; a DELETE's `kv` has the key, value None and the delete revision."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def key(self) -> Key:
        return self.kv.key

    @property
    def value(self) -> Any:
        return self.kv.value

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    prev: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    revision: int
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class RangeResult:
    revision: int
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    revision: int
    succeeded: bool
    responses: tuple[PutResult | DeleteResult | RangeResult, ...]


@dataclass(frozen=True, slots=True)
class LeaseGrantResult:
    id: int
    ttl: int
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseRevokeResult:
    revision: int
    deleted: int


@dataclass(frozen=True, slots=True)
class CompactResult:
    revision: int


# --- requests ------------------------------------------------------------------------------


class SortOrder(enum.Enum):
    NONE = "none"
    ASCEND = "ascend"
    DESCEND = "descend"


class SortTarget(enum.Enum):
    KEY = "key"
    VERSION = "version"
    CREATE = "create"
    MOD = "mod"
    VALUE = "value"


@dataclass(frozen=True, slots=True)
class Put:
    key: Key
    value: Any
    lease: int | None = None
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `key`; with `prefix`, every key starting with it; with `end`, the range [key, end)."""

    key: Key
    prefix: bool = False
    end: Key | None = None
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    """A range read: `key` alone, a `prefix`, or [key, end); `revision` None means current."""

    key: Key
    prefix: bool = False
    end: Key | None = None
    limit: int | None = None
    revision: int | None = None
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    keys_only: bool = False
    count_only: bool = False


class CompareTarget(enum.Enum):
    VALUE = "value"
    VERSION = "version"
    CREATE = "create"
    MOD = "mod"
    LEASE = "lease"


class CompareOp(enum.Enum):
    EQUAL = "=="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@dataclass(frozen=True, slots=True)
class Compare:
    """One guard of a transaction; a missing key has version, revisions and lease 0, value None."""

    target: CompareTarget
    key: Key
    op: CompareOp
    operand: Any


@dataclass(frozen=True, slots=True)
class Txn:
    compare: tuple[Compare, ...] = ()
    success: tuple[Put | Delete | Get, ...] = ()
    failure: tuple[Put | Delete | Get, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """Grant lease `id` (chosen by the proposer, so every member applies the same id)."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    id: int


@dataclass(frozen=True, slots=True)
class Compaction:
    revision: int


Request: TypeAlias = Put | Delete | Txn | LeaseGrant | LeaseRevoke | Compaction
Result: TypeAlias = (
    PutResult | DeleteResult | RangeResult | TxnResult | LeaseGrantResult | LeaseRevokeResult
    | CompactResult
)


# --- compare builders: embedkv.Value(k) == v ----------------------------------------------


class _CompareBuilder:
    """Turns a comparison operator into a Compare; `target` is set by each subclass."""

    __slots__ = ("key",)
    target: CompareTarget

    def __init__(self, key: Key) -> None:
        self.key = key

    def _make(self, op: CompareOp, operand: Any) -> Compare:
        return Compare(self.target, self.key, op, operand)

    def __eq__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make(CompareOp.EQUAL, operand)

    def __ne__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make(CompareOp.NOT_EQUAL, operand)

    def __lt__(self, operand: Any) -> Compare:
        return self._make(CompareOp.LESS, operand)

    def __gt__(self, operand: Any) -> Compare:
        return self._make(CompareOp.GREATER, operand)

    __hash__ = None  # type: ignore[assignment]


class Value(_CompareBuilder):
    """``Value(key) == v``: compare the key's current value."""

    target = CompareTarget.VALUE


class Version(_CompareBuilder):
    """``Version(key) == 0``: the key does not exist."""

    target = CompareTarget.VERSION


class CreateRevision(_CompareBuilder):
    target = CompareTarget.CREATE


class ModRevision(_CompareBuilder):
    target = CompareTarget.MOD


class LeaseOf(_CompareBuilder):
    """``LeaseOf(key) == lease_id``: compare the lease a key is attached to (0 for none)."""

    target = CompareTarget.LEASE
