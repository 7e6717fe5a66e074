"""Values that flow into and out of the sans-I/O Raft core.

Everything here is plain data so that the runtime can encode it for disk and the wire, and so
that a test can build and inspect it by hand. Node ids are positive ints; 0 means "nobody".
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

NONE = 0
"""The node id meaning "no node" (no leader, no vote)."""


class RaftError(Exception):
    """Base of every error the Raft core raises."""


class CompactedError(RaftError):
    """The requested index is at or below the storage's compaction point."""


class UnavailableError(RaftError):
    """The requested index is beyond the last entry the storage holds."""


class SnapshotTemporarilyUnavailable(RaftError):
    """The storage is still building a snapshot; the leader retries later."""


class DropReason(enum.Enum):
    NO_LEADER = "no leader is known"
    TRANSFERRING = "a leadership transfer is in progress"
    UNCOMMITTED_SIZE = "too many uncommitted bytes are pending"
    PENDING_CONF_CHANGE = "another membership change is still pending"
    NOT_MEMBER = "this node is not a member of the cluster"
    INVALID_CONF_CHANGE = "the membership change is not valid for the current configuration"


class ProposalDropped(RaftError):
    """A proposal (or read, or conf change) was refused; `reason` says why."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(reason.value + (f": {detail}" if detail else ""))


class Rng(Protocol):
    """The injected source of randomness (``random.Random`` satisfies it)."""

    def randint(self, a: int, b: int) -> int: ...


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Bytes this entry counts for in message-size and uncommitted-size limits."""
        return len(self.data) + ENTRY_OVERHEAD


ENTRY_OVERHEAD = 24
"""What an entry counts for beyond its data (see Entry.size)."""


def entries_size(entries: Sequence[Entry]) -> int:
    """Sum of Entry.size() over `entries`, computed without a method call per entry."""
    return ENTRY_OVERHEAD * len(entries) + sum([len(e.data) for e in entries])


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0  # also promotes an existing learner
    ADD_LEARNER = 1  # also demotes an existing voter
    REMOVE = 2
    # Written by the core only, as entry 1 of a new cluster: the whole initial configuration
    # (`voters`, `learners`), so that a member that joins later and replays the log from
    # index 1 starts from the same configuration as the founding members.
    BOOTSTRAP = 3


_CONF_CHANGE_HEADER = struct.Struct(">BQ")
_ID_COUNTS = struct.Struct(">II")
_NODE_ID = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change; carried in an entry of type CONF_CHANGE."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""  # opaque to Raft (the runtime puts the peer's address here)
    # BOOTSTRAP only: the complete configuration it establishes.
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def encode(self) -> bytes:
        head = _CONF_CHANGE_HEADER.pack(int(self.type), self.node_id)
        if self.type is ConfChangeType.BOOTSTRAP:
            ids = sorted(self.voters) + sorted(self.learners)
            head += _ID_COUNTS.pack(len(self.voters), len(self.learners))
            head += b"".join(_NODE_ID.pack(i) for i in ids)
        return head + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < _CONF_CHANGE_HEADER.size:
            raise ValueError("conf change entry is truncated")
        kind, node_id = _CONF_CHANGE_HEADER.unpack_from(data)
        try:
            change_type = ConfChangeType(kind)
        except ValueError:
            raise ValueError(f"unknown conf change type {kind}") from None
        pos = _CONF_CHANGE_HEADER.size
        if change_type is not ConfChangeType.BOOTSTRAP:
            return cls(change_type, node_id, bytes(data[pos:]))
        if len(data) < pos + _ID_COUNTS.size:
            raise ValueError("bootstrap conf change is truncated")
        n_voters, n_learners = _ID_COUNTS.unpack_from(data, pos)
        pos += _ID_COUNTS.size
        end = pos + (n_voters + n_learners) * _NODE_ID.size
        if len(data) < end:
            raise ValueError("bootstrap conf change is truncated")
        ids = [
            _NODE_ID.unpack_from(data, pos + k * _NODE_ID.size)[0]
            for k in range(n_voters + n_learners)
        ]
        return cls(
            change_type,
            node_id,
            bytes(data[end:]),
            voters=frozenset(ids[:n_voters]),
            learners=frozenset(ids[n_voters:]),
        )


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image as of `meta.index`; `data` is opaque to Raft."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.meta.index == 0


class MessageType(enum.IntEnum):
    # Local messages: never sent over the network.
    HUP = 0  # start an election
    BEAT = 1  # leader: send heartbeats
    UNREACHABLE = 2
    SNAP_STATUS = 3
    CHECK_QUORUM = 4
    # Network messages.
    PROP = 10
    APP = 11
    APP_RESP = 12
    VOTE = 13
    VOTE_RESP = 14
    PRE_VOTE = 15
    PRE_VOTE_RESP = 16
    SNAP = 17
    HEARTBEAT = 18
    HEARTBEAT_RESP = 19
    TRANSFER_LEADER = 20
    TIMEOUT_NOW = 21
    READ_INDEX = 22
    READ_INDEX_RESP = 23


@dataclass(slots=True)
class Message:
    type: MessageType
    to: int
    from_: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the runtime may want to observe; not persisted."""

    leader: int = NONE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches `index`."""

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """What the runtime must do next; hand it back with ``advance()`` once done.

    Order: persist `snapshot`, `entries` and `hard_state` (one atomic, synced write when
    `must_sync`), then send `messages`, then apply `committed_entries` in order, release
    `read_states` once applied reaches their index, then call ``advance(ready)``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False


class Storage(Protocol):
    """The durable state the core reads from; the runtime writes it (see docs/internals/raft.md).

    Indices are 1-based. `first_index()` is one past the last compacted (snapshot) index;
    `term(first_index() - 1)` returns the snapshot's term.
    """

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi); at least one if lo < hi even when it alone exceeds max_size.

        Raises CompactedError if lo < first_index(), UnavailableError if hi > last_index()+1.
        """
        ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`, valid for first_index()-1 <= index <= last_index()."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...
