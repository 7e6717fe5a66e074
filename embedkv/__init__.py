"""embedkv: etcd, embedded.

A durable, transactional key-value store that lives inside your Python process::

    import embedkv
    with embedkv.open("data/") as store:
        store["config/greeting"] = "hello"

Every write goes through a Raft core (a cluster of one today), is fsync'd and applied to an
MVCC state machine in LMDB; reads, watches, leases and transactions follow etcd v3.
"""

from .aio import AsyncStore, open_async
from .errors import (
    Closed,
    Compacted,
    CorruptData,
    DataDirLocked,
    Error,
    FutureRevision,
    LeaseExists,
    LeaseNotFound,
    NoSpace,
    Removed,
    Unavailable,
    UnsupportedFormat,
)
from .leases import AsyncLease, Lease
from .member import MemberInfo
from .member.discovery import Discovery
from .member.founding import Timing as FoundingTiming
from .net.tls import TLS, CertificateError
from .operations import Deleted
from .storage.backup import DefragResult
from .storage.requests import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    CompactResult,
    Compare,
    CompareOp,
    CompareTarget,
    CreateRevision,
    Delete,
    DeleteResult,
    Event,
    EventType,
    Get,
    Key,
    KeyValue,
    LeaseGrantResult,
    LeaseOf,
    LeaseRevokeResult,
    ModRevision,
    Put,
    PutResult,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnResult,
    Value,
    Version,
)
from .storage.verify import VerifyReport, check
from .store import Status, Store, defrag, open, restore
from .watches import AsyncWatch, Watch, WatchIterator

__version__ = "0.1.0"

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "TLS",
    "AsyncLease",
    "AsyncStore",
    "AsyncWatch",
    "CertificateError",
    "Closed",
    "CompactResult",
    "Compacted",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "CorruptData",
    "CreateRevision",
    "DataDirLocked",
    "DefragResult",
    "Delete",
    "DeleteResult",
    "Deleted",
    "Discovery",
    "Error",
    "Event",
    "EventType",
    "FoundingTiming",
    "FutureRevision",
    "Get",
    "Key",
    "KeyValue",
    "Lease",
    "LeaseExists",
    "LeaseGrantResult",
    "LeaseNotFound",
    "LeaseOf",
    "LeaseRevokeResult",
    "MemberInfo",
    "ModRevision",
    "NoSpace",
    "Put",
    "PutResult",
    "RangeResult",
    "Removed",
    "SortOrder",
    "SortTarget",
    "Status",
    "Store",
    "TxnResult",
    "Unavailable",
    "UnsupportedFormat",
    "Value",
    "VerifyReport",
    "Version",
    "Watch",
    "WatchIterator",
    "__version__",
    "check",
    "defrag",
    "open",
    "open_async",
    "restore",
]
