"""Durable state of one member: the Raft log and the MVCC key-value state machine in LMDB.

See docs/internals/storage-api.md for the interface the runtime uses and
docs/internals/storage.md for the layout.
"""

from embedkv.errors import LeaseExists

from .datadir import DataDir, Identity, WriteBatch
from .directory import LocalInfo, PeerInfo, TLSFiles
from .mvcc import Applied, KeySpace
from .raftlog import RaftLog

__all__ = [
    "Applied",
    "DataDir",
    "Identity",
    "KeySpace",
    "LeaseExists",
    "LocalInfo",
    "PeerInfo",
    "RaftLog",
    "TLSFiles",
    "WriteBatch",
]
