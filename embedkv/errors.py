"""The exceptions users catch; every layer above the Raft core raises these.

They live at the bottom of the package so storage, the runtime and the public API can all raise
the same classes, and a user needs to catch only ``embedkv.Error``.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every embedkv error."""


class Closed(Error):
    """The store (or watch, or lease) was closed; no further operations are possible."""


class Compacted(Error):
    """The requested revision was compacted away; history below `compact_revision` is gone."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(
            f"revision {revision} has been compacted (oldest available: {compact_revision})"
        )


class FutureRevision(Error, ValueError):
    """A read asked for a revision newer than the store's current revision."""

    def __init__(self, revision: int, current_revision: int) -> None:
        self.revision = revision
        self.current_revision = current_revision
        super().__init__(
            f"revision {revision} is in the future (current revision: {current_revision})"
        )


class Unavailable(Error):
    """No quorum (or no leader) answered within the request timeout; the write may or may not
    have been applied, exactly as with etcd."""


class Removed(Unavailable):
    """This member was removed from its cluster: it serves nothing any more (open a fresh data
    dir and join again to come back). The other members are not disturbed by it."""


class LeaseNotFound(Error):
    """The lease does not exist (never granted, revoked, or expired)."""

    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        super().__init__(f"lease {lease_id:#x} not found")


class LeaseExists(Error):
    """A lease with this id was already granted (etcd: "lease already exists")."""

    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        super().__init__(f"lease {lease_id:#x} already exists")


class DataDirLocked(Error):
    """Another Store (in this or another process) has the data directory open."""


class NoSpace(Error):
    """The disk is full: writes are refused until space is freed; reads keep working."""


class CorruptData(Error):
    """Bytes on disk or from a peer failed to decode or to pass a checksum."""


class UnsupportedFormat(Error):
    """The data directory was written by an incompatible version of embedkv."""
