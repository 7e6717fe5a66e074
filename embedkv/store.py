"""The public face of embedkv: Store (sync, thread-safe, a MutableMapping) and AsyncStore.

Both are thin layers over one ``embedkv.member.Member``: every write is a Raft proposal whose
concurrent future resolves once the entry is committed and applied locally; reads are local
LMDB reads, preceded by a read barrier (ReadIndex) unless the caller asks for a serializable
read. Nothing here talks to LMDB directly except through ``member.data_dir.kv``, so the same
code serves a one-member store today and a cluster member tomorrow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import inspect
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import Closed, LeaseNotFound, Unavailable
from .member import ClusterOptions, Member, MemberInfo, check_cluster_options, new_identity
from .storage import DataDir
from .storage.backup import DefragResult, restore_backup, write_backup
from .storage.backup import defrag as _defrag
from .storage.codec import MAX_PROPOSAL_BYTES, MAX_TXN_OPS, encode_value
from .storage.requests import (
    Compaction,
    Compare,
    Delete,
    DeleteResult,
    Event,
    Get,
    Key,
    KeyValue,
    LeaseGrantResult,
    Put,
    PutResult,
    RangeResult,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
    Value,
    Version,
    key_bytes,
)
from .storage.verify import VerifyReport

if TYPE_CHECKING:  # the recipes import this module; the methods below import them lazily
    from .recipes import aio as _aio
    from .recipes.config import ConfigView
    from .recipes.election import Election
    from .recipes.lock import Lock, RWLock
    from .recipes.queue import Queue
    from .recipes.services import Services
    from .recipes.sync import Barrier, Counter, DoubleBarrier, Party, Semaphore

__all__ = [
    "AsyncLease",
    "AsyncStore",
    "AsyncWatch",
    "Deleted",
    "Lease",
    "Status",
    "Store",
    "Watch",
    "WatchIterator",
    "defrag",
    "open",
    "open_async",
    "restore",
]

log = logging.getLogger("embedkv")

_T = TypeVar("_T")

_PAGE = 1000
"""Keys fetched per page when iterating: a huge store is never loaded at once."""

_FIRST = b"\x00"
_TO_END = b"\x00"
"""As a Get's or Delete's `end`, "to the end of the keyspace"; with key _FIRST it selects every
key (etcd's convention: the empty key is not a valid key)."""

_WATCH_ALL = b""
"""A watch with prefix=True and the empty key sees every key (docs/internals/member-api.md)."""

_GRACE = 5.0
"""Seconds a caller waits beyond request_timeout before giving up on a future itself; the member
fails its futures with Unavailable at request_timeout, so this only guards against a member
that died without resolving them."""

_SORT_TARGETS = {
    "key": SortTarget.KEY,
    "version": SortTarget.VERSION,
    "create": SortTarget.CREATE,
    "mod": SortTarget.MOD,
    "value": SortTarget.VALUE,
}

TxnOp = Put | Delete | Get

_UPDATE_BYTES = MAX_PROPOSAL_BYTES - 64 * 1024
"""Most bytes of puts that ``update()`` puts in one transaction: a proposal's limit, less room
for its framing."""


# --- small results --------------------------------------------------------------------------


class Deleted(int):
    """How many keys a delete removed. It is an ``int`` (``store.delete(k) == 1``), and also
    carries the delete's `revision` and, when asked with ``prev_kv=True``, the removed records
    in `prev_kvs`: ``delete`` stays a count, and nothing is lost by asking for more."""

    revision: int
    prev_kvs: tuple[KeyValue, ...]

    def __new__(cls, count: int, revision: int, prev_kvs: tuple[KeyValue, ...] = ()) -> Deleted:
        self = super().__new__(cls, count)
        self.revision = revision
        self.prev_kvs = prev_kvs
        return self


@dataclass(frozen=True, slots=True)
class Status:
    """What ``store.status()`` (and ``embedkv status``) reports about the local member."""

    path: str
    member_id: int
    cluster_id: int
    revision: int
    compact_revision: int
    applied_index: int
    durable: bool
    name: str = "default"
    term: int | None = None  # None: no member runs on the dir (the read-only CLI commands)
    leader: str | None = None
    commit_index: int | None = None
    members: tuple[MemberInfo, ...] = ()


def data_dir_status(dd: DataDir) -> Status:
    """The Status of a data dir, whether a member runs on it (Store.status) or not (the
    read-only commands of ``embedkv``, which open the data dir without starting Raft)."""
    identity = dd.identity
    if identity is None:
        raise ValueError(f"{dd.path} has no identity: it was never opened as a store")
    return Status(
        path=str(dd.path),
        member_id=identity.member_id,
        cluster_id=identity.cluster_id,
        revision=int(dd.kv.revision),
        compact_revision=int(dd.kv.compact_revision),
        applied_index=int(dd.applied_index),
        durable=bool(dd.durable),
        name=dd.local.name if dd.local is not None else "default",
    )


# --- request building shared by Store and AsyncStore ----------------------------------------


def _lease_id(lease: Lease | AsyncLease | int | None) -> int | None:
    if lease is None:
        return None
    if isinstance(lease, Lease | AsyncLease):
        return lease.id
    if isinstance(lease, bool) or not isinstance(lease, int):
        raise TypeError(f"lease must be a Lease or a lease id, not {type(lease).__name__}")
    return lease


def _parse_sort(sort: str | None) -> tuple[SortOrder, SortTarget]:
    """``"key"`` ascending, ``"-mod"`` descending by mod revision, None: key order. One sign
    at most: ``"--key"`` is refused, not read as ``"-key"``."""
    if sort is None:
        return SortOrder.NONE, SortTarget.KEY
    if not isinstance(sort, str):
        raise TypeError(f"sort must be a str such as 'key' or '-mod', not {type(sort).__name__}")
    order = SortOrder.DESCEND if sort.startswith("-") else SortOrder.ASCEND
    target = _SORT_TARGETS.get(sort[1:] if sort[:1] in ("+", "-") else sort)
    if target is None:
        raise ValueError(
            f"sort must be one of {sorted(_SORT_TARGETS)} with an optional '-', not {sort!r}"
        )
    return order, target


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, not {limit!r}")


def _check_revision(revision: int | None) -> None:
    """A read's revision: None or 0 mean the current one (etcd: revision <= 0 reads the latest,
    but a negative one is always a mistake here, so it is refused rather than read as 0)."""
    if revision is None:
        return
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise TypeError(f"revision must be an int or None, not {type(revision).__name__}")
    if revision < 0:
        raise ValueError(f"revision must be >= 0 (0 or None: the current one), not {revision}")


def _check_flag(name: str, value: object) -> None:
    """A keyword flag must be a real bool: ``durable="no"`` would otherwise count as true."""
    if value is not True and value is not False:
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")


def _materialise(name: str, items: Iterable[_T]) -> tuple[_T, ...]:
    """Read an iterable argument exactly once: generators and other one-shot iterables give the
    same result as lists (they would otherwise be used up by validation and read as empty)."""
    if isinstance(items, str | bytes):  # a key where a list of them was meant
        raise TypeError(f"{name} must be an iterable of operations, not {type(items).__name__}")
    try:
        return tuple(items)
    except TypeError:
        if not hasattr(items, "__iter__"):
            raise TypeError(
                f"{name} must be an iterable (a list, a tuple...), not {type(items).__name__}"
            ) from None
        raise


def _range_request(
    prefix: Key | None,
    start: Key | None,
    end: Key | None,
    limit: int | None,
    revision: int | None,
    sort: str | None,
    keys_only: bool,
) -> Get:
    """Build the Get for ``range()``: exactly one of `prefix` or `start` (with optional `end`)."""
    if (prefix is None) == (start is None):
        raise TypeError("range() takes exactly one of prefix= or start=")
    _check_limit(limit)
    _check_revision(revision)
    _check_flag("keys_only", keys_only)
    order, target = _parse_sort(sort)
    if prefix is not None:
        if end is not None:
            raise TypeError("end= goes with start=, not with prefix=")
        if prefix in ("", b""):
            return Get(_FIRST, end=_TO_END, limit=limit, revision=revision, sort_order=order,
                       sort_target=target, keys_only=keys_only)
        return Get(key_bytes(prefix), prefix=True, limit=limit, revision=revision,
                   sort_order=order, sort_target=target, keys_only=keys_only)
    assert start is not None
    raw_start = key_bytes(start)
    if end is None:
        # [start, end of the keyspace): every key >= start.
        return Get(raw_start, end=_TO_END, limit=limit, revision=revision, sort_order=order,
                   sort_target=target, keys_only=keys_only)
    return Get(raw_start, end=key_bytes(end), limit=limit, revision=revision, sort_order=order,
               sort_target=target, keys_only=keys_only)


def _delete_request(key: Key, prefix: bool, prev_kv: bool) -> Delete:
    _check_flag("prefix", prefix)
    _check_flag("prev_kv", prev_kv)
    return Delete(key, prefix=prefix, prev_kv=prev_kv)


def _txn_request(
    compare: Iterable[Compare], success: Iterable[TxnOp], failure: Iterable[TxnOp]
) -> Txn:
    """Each argument is read once (a generator works like a list), then checked."""
    compares = _materialise("compare", compare)
    then = _materialise("success", success)
    otherwise = _materialise("failure", failure)
    for c in compares:
        if not isinstance(c, Compare):
            raise TypeError(
                "txn compare= takes comparisons such as embedkv.Value(k) == v, "
                f"not {type(c).__name__}"
            )
    for op in (*then, *otherwise):
        if not isinstance(op, Put | Delete | Get):
            raise TypeError(
                f"txn operations must be embedkv.Put, Delete or Get, not {type(op).__name__}"
            )
    return Txn(compares, then, otherwise)


def _update_requests(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Txn]:
    """``update()``'s writes: one Txn of Puts, or several if the pairs exceed one
    transaction's limits (MAX_TXN_OPS operations, MAX_PROPOSAL_BYTES). Every key and value is
    checked before anything is written, and a key given twice keeps its last value, as in
    dict.update."""
    if len(args) > 1:
        raise TypeError(f"update expected at most 1 positional argument, got {len(args)}")
    pairs: list[tuple[Any, Any]] = []
    if args:
        other = args[0]
        if hasattr(other, "keys"):  # a mapping, as dict.update decides: it calls keys()
            pairs.extend((k, other[k]) for k in other.keys())  # noqa: SIM118
        else:
            for i, item in enumerate(_materialise("update()'s argument", other)):
                try:
                    pair = tuple(item)
                except TypeError:
                    raise TypeError(
                        f"update() sequence element #{i} is not a (key, value) pair"
                    ) from None
                if len(pair) != 2:
                    raise ValueError(
                        f"update() sequence element #{i} has length {len(pair)}; 2 is required"
                    )
                pairs.append((pair[0], pair[1]))
    pairs.extend(kwargs.items())
    latest: dict[bytes, tuple[Key, Any, int]] = {}
    for key, value in pairs:
        kb = key_bytes(key)
        # A put's share of a proposal: its encoded value, its key and some CBOR framing.
        cost = len(encode_value(value)) + len(kb) + 32
        latest[kb] = (key, value, cost)  # a later pair wins, as in a dict
    txns: list[Txn] = []
    batch: list[Put] = []
    size = 0
    for key, value, cost in latest.values():
        if batch and (len(batch) == MAX_TXN_OPS or size + cost > _UPDATE_BYTES):
            txns.append(Txn(success=tuple(batch)))
            batch, size = [], 0
        batch.append(Put(key, value))
        size += cost
    if batch:
        txns.append(Txn(success=tuple(batch)))
    return txns


def _deleted(result: DeleteResult) -> Deleted:
    return Deleted(result.deleted, result.revision, result.prev_kvs)


def _cas_request(key: Key, expected: Any, new: Any) -> Txn:
    return Txn(compare=(Value(key) == expected,), success=(Put(key, new),))


def _create_request(key: Key, value: Any, lease: int | None) -> Txn:
    return Txn(compare=(Version(key) == 0,), success=(Put(key, value, lease=lease),))


def _setdefault_request(key: Key, default: Any) -> Txn:
    return Txn(
        compare=(Version(key) == 0,), success=(Put(key, default),), failure=(Get(key),)
    )


# --- Store ---------------------------------------------------------------------------------


MIN_TICK_INTERVAL = 0.001
"""Shortest tick_interval accepted (1 ms): shorter ticks only burn CPU while the store idles."""

MAX_TICK_INTERVAL = 1.0
"""Longest tick_interval accepted: leases are checked once a tick, and the shortest lease lives
1 s, so a longer tick would let leases outlive their TTL."""


def _seconds(name: str, value: object, high: float, low: float = 0.0) -> float:
    """A duration option: a finite number of seconds in (0, high], and >= low if low > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (0 < value <= high and value >= low):  # NaN fails every comparison
        bounds = f"[{low:g}, {high:g}]" if low else f"(0, {high:g}]"
        raise ValueError(f"{name} must be in {bounds} seconds, not {value!r}")
    return float(value)


def _ticks(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of ticks, not {type(value).__name__}")
    return value


def _check_options(
    durable: object, serializable_reads: object, request_timeout: object, tick_interval: object,
    election_tick: object, heartbeat_tick: object, name: object = None, listen: object = None,
    peers: object = None, cluster: object = None, join: object = None, insecure: object = False,
) -> ClusterOptions:
    """Check ``open``'s options before anything touches the disk (open_async checks them at
    its call too, not when awaited)."""
    _check_flag("insecure", insecure)
    opts = ClusterOptions(name, listen, peers, cluster, join)  # type: ignore[arg-type]
    if (listen is not None or peers is not None or join is not None) and not insecure:
        raise ValueError(
            "peer links would be plain TCP: anyone on the network could read, write or join "
            "this store. Pass insecure=True to accept that (mutual TLS is coming; until then "
            "keep peer addresses on a trusted network)"
        )
    _check_flag("durable", durable)
    _check_flag("serializable_reads", serializable_reads)
    # The longest a thread may wait, less the grace a caller adds (see _GRACE).
    _seconds("request_timeout", request_timeout, threading.TIMEOUT_MAX - 2 * _GRACE)
    _seconds("tick_interval", tick_interval, MAX_TICK_INTERVAL, MIN_TICK_INTERVAL)
    heartbeat = _ticks("heartbeat_tick", heartbeat_tick)
    election = _ticks("election_tick", election_tick)
    if heartbeat < 1:
        raise ValueError(f"heartbeat_tick must be at least 1, not {heartbeat}")
    if election <= heartbeat:
        raise ValueError(
            f"election_tick ({election}) must be greater than heartbeat_tick ({heartbeat})"
        )
    check_cluster_options(opts)
    return opts


def open(
    path: str | os.PathLike[str],
    *,
    durable: bool = True,
    serializable_reads: bool = False,
    request_timeout: float = 5.0,
    tick_interval: float = 0.1,
    election_tick: int = 10,
    heartbeat_tick: int = 1,
    name: str | None = None,
    listen: str | None = None,
    peers: Mapping[str, str] | None = None,
    cluster: str | None = None,
    join: Sequence[str] | None = None,
    insecure: bool = False,
) -> Store:
    """Open (creating if needed) the store in directory `path` and return a Store.

    Clustering (README "Clusters"): ``name``, ``listen="host:port"`` (this member's peer
    address), ``peers={"n1": "host:port", ...}`` and ``cluster="token"`` found a cluster of
    exactly these voters (every founder gets the same peers and token); ``join=["host:port"]``
    joins a running cluster through any member (as a learner, promoted once caught up); a
    one-member store reopened with ``listen`` takes joins. A restart needs only `path` (and
    ``listen`` if it changed). Peer links are plain TCP for now, so each of these needs
    ``insecure=True``.

    ``durable=True``: a write returns once it is fsync'd. ``durable=False`` skips the fsync per
    commit: a crash of the process loses nothing, a crash of the machine may lose the last
    writes and, on a file system that reorders writes, damage the data file (README
    "Durability"). ``serializable_reads=True`` makes every read serializable (no read barrier).
    ``request_timeout`` (seconds, > 0, finite) bounds every wait on the member, and ``close()``.
    ``tick_interval`` (seconds, 1 ms to 1 s), ``election_tick`` and ``heartbeat_tick`` (ints,
    heartbeat_tick >= 1, election_tick > heartbeat_tick) tune the Raft runtime (README
    "Options"). Every option is checked here: TypeError or ValueError before anything is
    created.

    A Store belongs to the process that opened it: after ``os.fork()`` every operation in the
    child raises Closed (the store's threads do not exist there, and LMDB must not be used
    across a fork), and the child never closes or unlocks the parent's data dir.
    """
    opts = _check_options(durable, serializable_reads, request_timeout, tick_interval,
                          election_tick, heartbeat_tick, name, listen, peers, cluster, join,
                          insecure)
    member = Member.open(
        os.fspath(path),
        durable=durable,
        request_timeout=request_timeout,
        tick_interval=tick_interval,
        election_tick=election_tick,
        heartbeat_tick=heartbeat_tick,
        cluster=opts,
    )
    return Store(member, serializable_reads=serializable_reads, request_timeout=request_timeout)


def restore(
    backup: str | os.PathLike[str], path: str | os.PathLike[str], *, durable: bool = True
) -> int:
    """Create a new data dir at `path` (missing or empty) from a file written by
    ``Store.backup``, and return the revision it holds.

    The restored store has the backup's keys, values, revisions, history and leases (whose
    countdowns restart at their full TTL when it opens); it is a new one-member cluster, with a
    new identity, whatever the membership it was backed up from. FileExistsError (nothing
    touched) if `path` is not empty; CorruptData if the backup is damaged anywhere (`path` is
    then left missing or empty).
    """
    return restore_backup(backup, path, new_identity(), durable=durable).revision


def defrag(path: str | os.PathLike[str]) -> DefragResult:
    """Compact the closed store at `path` offline: LMDB's compacting copy of its file, swapped
    in atomically (safe if killed at any step). DataDirLocked if a Store has it open.

    The file of a data dir never shrinks by itself: pages freed by compaction or deletes are
    reused, not returned. Returns the file's size before and after, in bytes.
    """
    return _defrag(path)


class Store(MutableMapping[Key, Any]):
    """A durable, transactional key-value store that feels like a dict.

    Thread-safe: any number of threads may call any method at once; concurrent writes are
    group-committed (one fsync per batch). Reads are linearizable by default.
    """

    def __init__(
        self, member: Member, *, serializable_reads: bool = False, request_timeout: float = 5.0
    ) -> None:
        self._m = member
        self._kv = member.data_dir.kv
        self._serializable_reads = serializable_reads
        self._wait_limit = request_timeout + _GRACE
        self._lock = threading.Lock()
        self._closed = False
        self._watches: set[_WatchBase] = set()
        self._pid = os.getpid()
        self._forked = False
        """Set in a child of os.fork(): the store is closed there, and close() touches nothing."""
        _stores[id(self)] = self

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel every watch, stop keep-alives and the member's threads; idempotent.

        Returns within about the request timeout even behind a watch callback that never
        returns: that callback's thread is left behind, with a warning logged (logger
        ``embedkv``); no further callback starts. In a forked child it does nothing (the
        parent's store is not the child's to close)."""
        if self._forked:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
            self._watches.clear()
        for w in watches:
            # No waiting here for a callback that is running: the member's close waits for the
            # dispatcher, once, for at most the request timeout.
            w._cancel(wait=False)
        self._m.close()

    @property
    def closed(self) -> bool:
        return self._closed or self._m.closed

    def __enter__(self) -> Store:
        self._check()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"revision={self._kv.revision}"
        return f"<embedkv.Store {str(self._m.data_dir.path)!r} {state}>"

    def _check(self) -> None:
        if self._closed:
            if self._forked:
                raise Closed(
                    f"this Store was opened by process {self._pid} and cannot be used after "
                    "os.fork(): open the data dir in the process that uses it"
                )
            raise Closed("the store is closed")

    def _closed_instead(self, exc: BaseException) -> None:
        """A read that failed because close() ran meanwhile reports Closed, not LMDB noise."""
        if self._closed or self._m.closed:
            raise Closed("the store is closed") from exc

    def _wait(self, fut: concurrent.futures.Future[_T]) -> _T:
        try:
            return fut.result(self._wait_limit)
        except concurrent.futures.TimeoutError:
            raise Unavailable("no answer from the member within the request timeout") from None

    def _propose(self, request: Any, *, run: bool = True) -> concurrent.futures.Future[Any]:
        """run: this thread waits for the outcome, so it may run the batch itself
        (AsyncStore._propose passes False)."""
        self._check()
        return self._m.propose(request, run=run)

    def _barrier(self) -> None:
        self._wait(self._m.read_barrier(run=True))

    def _needs_barrier(self, serializable: bool) -> bool:
        """Whether a read must wait for a read barrier first: not when it is serializable,
        nor while the member may serve linearizable reads locally (the only voter)."""
        if serializable is not False and serializable is not True:
            _check_flag("serializable", serializable)
        return not (serializable or self._serializable_reads or self._m.local_reads)

    def _linearize(self, serializable: bool) -> None:
        self._check()
        if self._needs_barrier(serializable):
            self._barrier()

    # --- reads --------------------------------------------------------------------------------

    def get(
        self,
        key: Key,
        default: Any = None,
        *,
        revision: int | None = None,
        serializable: bool = False,
    ) -> Any:
        """The value of `key` (at `revision`, if given: 0 or None mean the current one, a
        negative revision is a ValueError), or `default`."""
        if self._closed:
            self._check()
        if revision is None:
            if self._needs_barrier(serializable):
                self._barrier()
            try:
                kv = self._kv.get(key)
            except Exception as exc:
                self._closed_instead(exc)
                raise
        else:
            kv = self._get_kv_at(key, revision, serializable)
        return default if kv is None else kv.value

    def get_kv(
        self, key: Key, *, revision: int | None = None, serializable: bool = False
    ) -> KeyValue | None:
        """The full record of `key` (value, revisions, version, lease) or None; `revision`
        as for ``get``."""
        if revision is not None:
            return self._get_kv_at(key, revision, serializable)
        self._linearize(serializable)
        try:
            return self._kv.get(key)
        except Exception as exc:
            self._closed_instead(exc)
            raise

    def _get_kv_at(self, key: Key, revision: int, serializable: bool) -> KeyValue | None:
        """`key`'s record at `revision` (get and get_kv with a revision)."""
        _check_revision(revision)
        key_bytes(key)
        kvs = self._range(Get(key, revision=revision), serializable).kvs
        return kvs[0] if kvs else None

    def _range(self, get: Get, serializable: bool, *, count: bool = True) -> RangeResult:
        """count=False: a page (`more` is set, `count` is not the range's count)."""
        self._linearize(serializable)
        try:
            return self._kv.range(get, count=count)
        except Exception as exc:
            self._closed_instead(exc)
            raise

    def range(
        self,
        prefix: Key | None = None,
        *,
        start: Key | None = None,
        end: Key | None = None,
        limit: int | None = None,
        revision: int | None = None,
        sort: str | None = None,
        keys_only: bool = False,
        serializable: bool = False,
    ) -> list[KeyValue]:
        """Records under `prefix` (``""`` for all), or in [start, end) (end None: to the last
        key), in key order unless `sort` says ``"key"``/``"version"``/``"create"``/``"mod"``/
        ``"value"``, prefixed with one ``-`` for descending. ``keys_only`` leaves values None.
        `limit`: a positive int or None; `revision` as for ``get``. Checked at the call."""
        get = _range_request(prefix, start, end, limit, revision, sort, keys_only)
        return list(self._range(get, serializable).kvs)

    def count(self, prefix: Key = "", *, serializable: bool = False) -> int:
        """How many keys start with `prefix` (all keys by default), without reading values."""
        if prefix in ("", b""):
            get = Get(_FIRST, end=_TO_END, count_only=True)
        else:
            get = Get(key_bytes(prefix), prefix=True, count_only=True)
        return self._range(get, serializable).count

    @property
    def revision(self) -> int:
        """The store's current revision: the revision of the last applied write."""
        self._check()
        return int(self._kv.revision)

    def status(self) -> Status:
        """Revision, compaction point, Raft term, commit and applied index, leader, members
        and identity of the local member."""
        self._check()
        m = self._m
        raft = m.raft_status()
        base = data_dir_status(m.data_dir)
        return dataclasses.replace(
            base, name=m.name, term=raft.term, leader=m.leader_name, commit_index=raft.commit,
            members=tuple(m.members(ask_leader=False)),
        )

    # --- the cluster ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This member's name ("default" for a store that was never given one)."""
        return self._m.name

    @property
    def leader(self) -> str | None:
        """The name of the cluster's leader as this member knows it (None during elections)."""
        self._check()
        return self._m.leader_name

    def members(self) -> list[MemberInfo]:
        """Every member: name, id, peer address, voter or learner, leader flag, and how many
        log entries it is behind the leader (None where the leader cannot be asked)."""
        self._check()
        return self._m.members()

    def add_member(self, name: str, address: str, *, learner: bool = False) -> MemberInfo:
        """Add a member by name and peer address; returns once the change is applied here.
        Start the new member with ``embedkv.open(path, name=..., listen=address,
        join=[...])``, or prefer that alone: a join adds itself."""
        self._check()
        _check_flag("learner", learner)
        return self._m.add_member(name, address, learner=learner)

    def remove_member(self, name: str) -> None:
        """Remove a member; it then fails every operation with ``embedkv.Removed``."""
        self._check()
        self._m.remove_member(name)

    def promote_member(self, name: str) -> MemberInfo:
        """Make a learner a voter (ValueError while it is far behind the leader)."""
        self._check()
        return self._m.promote_member(name)

    def transfer_leadership(self, to: str | None = None) -> str:
        """Move leadership to member `to` (default: the most caught-up other voter); returns
        the new leader's name. Unavailable if it did not move within the request timeout."""
        self._check()
        return self._m.transfer_leadership(to)

    def backup(self, dest: str | os.PathLike[str]) -> int:
        """Write a consistent, compact copy of the store to the file `dest` and return the
        revision it holds (every write acknowledged before the call, perhaps a few after).

        Writers keep running: the copy comes from one LMDB read transaction. The file appears
        whole or not at all (an existing one is replaced); restore it with ``embedkv.restore``.
        """
        self._linearize(False)
        try:
            return write_backup(self._m.data_dir, dest).revision
        except Exception as exc:
            self._closed_instead(exc)
            raise

    def verify(self) -> VerifyReport:
        """Scan the whole data dir for damage (every B-tree page, every record's checksum and
        shape) as of one read snapshot, while writes go on; see also embedkv.check()."""
        self._check()
        return self._m.data_dir.verify()

    # --- the mapping protocol -----------------------------------------------------------------

    def __getitem__(self, key: Key) -> Any:
        kv = self.get_kv(key)
        if kv is None:
            raise KeyError(key)
        return kv.value

    def __setitem__(self, key: Key, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Key) -> None:
        if self.delete(key) == 0:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        # Like a dict of str: something that cannot be a key is simply not in the store. But a
        # closed store answers nothing, like every other operation.
        self._check()
        if not isinstance(key, str | bytes):
            return False
        try:
            key_bytes(key)
        except ValueError:
            self._check()
            return False
        return self._range(Get(key, count_only=True), False).count > 0

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[Key]:
        for kv in self._snapshot(keys_only=True):
            yield kv.key

    def keys(self) -> KeysView[Key]:
        return KeysView(self)

    def values(self) -> ValuesView[Any]:
        return _ValuesView(self)

    def items(self) -> ItemsView[Key, Any]:
        return _ItemsView(self)

    def _snapshot(self, *, keys_only: bool) -> Iterator[KeyValue]:
        """Every record in key order, a page at a time, all pages read at the revision of the
        first one: iteration sees one consistent snapshot even while writers go on. Pages are
        read without counting the keys after them, so each costs what it returns and a whole
        iteration is linear in the store's size (and holds one page in memory)."""
        get = Get(_FIRST, end=_TO_END, limit=_PAGE, keys_only=keys_only)
        result = self._range(get, False, count=False)
        revision = result.revision
        while True:
            yield from result.kvs
            if not result.more or not result.kvs:
                return
            after = key_bytes(result.kvs[-1].key) + b"\x00"
            get = Get(after, end=_TO_END, limit=_PAGE, revision=revision, keys_only=keys_only)
            result = self._range(get, True, count=False)

    def pop(self, key: Key, *args: Any) -> Any:
        """Remove `key` and return its value, atomically (one delete with prev_kv)."""
        if len(args) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(args)}")
        deleted = self.delete(key, prev_kv=True)
        if deleted.prev_kvs:
            return deleted.prev_kvs[0].value
        if args:
            return args[0]
        raise KeyError(key)

    def setdefault(self, key: Key, default: Any = None) -> Any:
        """The value of `key`, storing `default` first if absent, atomically (one txn)."""
        result: TxnResult = self._wait(self._propose(_setdefault_request(key, default)))
        if result.succeeded:
            return default
        response = result.responses[0]
        assert isinstance(response, RangeResult)
        return response.kvs[0].value if response.kvs else default

    def clear(self) -> None:
        """Delete every key in one write."""
        self.delete("", prefix=True)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update``, written as one transaction (one revision, all or nothing) when it
        fits a transaction's limits (128 keys, about 3 MiB of values); more is written as
        several transactions in turn, each atomic. Every key and value is checked first: a bad
        one raises before anything is written. Iterables are read once."""
        for request in _update_requests(args, kwargs):
            self._wait(self._propose(request))

    # --- writes -------------------------------------------------------------------------------

    def put(
        self,
        key: Key,
        value: Any,
        *,
        lease: Lease | AsyncLease | int | None = None,
        prev_kv: bool = False,
    ) -> PutResult:
        """Store `value` under `key`; the result has ``.revision`` (and ``.prev`` if asked)."""
        request = Put(key, value, lease=_lease_id(lease), prev_kv=prev_kv)
        result: PutResult = self._wait(self._propose(request))
        return result

    def delete(self, key: Key, *, prefix: bool = False, prev_kv: bool = False) -> Deleted:
        """Delete `key` (or every key under it with `prefix`); returns how many were deleted,
        an int that also has ``.revision`` and, with `prev_kv`, ``.prev_kvs``."""
        result: DeleteResult = self._wait(self._propose(_delete_request(key, prefix, prev_kv)))
        return _deleted(result)

    def compact(self, revision: int) -> None:
        """Discard history below `revision`: reads and watches before it raise Compacted."""
        self._wait(self._propose(Compaction(revision)))

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnResult:
        """If every comparison holds, apply `success`, else `failure`, atomically; the result
        has ``.succeeded`` and one response per operation in ``.responses``. Each argument
        may be any iterable (a generator too): it is read once."""
        result: TxnResult = self._wait(self._propose(_txn_request(compare, success, failure)))
        return result

    def compare_and_set(self, key: Key, expected: Any, new: Any) -> bool:
        """Set `key` to `new` only if its value is `expected`; True if it was set."""
        result: TxnResult = self._wait(self._propose(_cas_request(key, expected, new)))
        return result.succeeded

    def create(
        self, key: Key, value: Any, *, lease: Lease | AsyncLease | int | None = None
    ) -> bool:
        """Put `key` only if it does not exist; True if it was created."""
        result: TxnResult = self._wait(self._propose(_create_request(key, value, _lease_id(lease))))
        return result.succeeded

    # --- watches ------------------------------------------------------------------------------

    def watch(
        self,
        key: Key,
        callback: Callable[[Event], object],
        *,
        prefix: bool = False,
        end: Key | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
    ) -> Watch:
        """Call `callback(event)` for every change to `key` (or under it with `prefix`, or in
        [key, end)) from `start_revision` (default: from now on), exactly once, in revision
        order, on the dispatcher thread. Compacted if `start_revision` was compacted; TypeError
        at once if `callback` is not callable."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        w = Watch(self, callback)
        self._start_watch(w, key, prefix, end, start_revision, prev_kv)
        return w

    def watch_iter(
        self,
        key: Key,
        *,
        prefix: bool = False,
        end: Key | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> WatchIterator:
        """A blocking iterator over the same events as ``watch``. Each ``next()`` waits at most
        `timeout` seconds (None: no limit; else a number >= 0, checked here) and then raises
        TimeoutError; the iteration ends after ``.cancel()``/close."""
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
            if not timeout >= 0:  # NaN too
                raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        w = WatchIterator(self, timeout)
        self._start_watch(w, key, prefix, end, start_revision, prev_kv)
        return w

    def _start_watch(
        self,
        w: _WatchBase,
        key: Key,
        prefix: bool,
        end: Key | None,
        start_revision: int | None,
        prev_kv: bool,
    ) -> None:
        if not (prefix and key in ("", b"")):
            key_bytes(key)
        if end is not None:
            if prefix:
                raise TypeError("end= and prefix=True are exclusive")
            key_bytes(end)
        _check_flag("prefix", prefix)
        _check_flag("prev_kv", prev_kv)
        self._check()
        # Not under self._lock: a callback cancelling its own watch takes that lock.
        w._handle = self._m.watch(
            _WATCH_ALL if prefix and key in ("", b"") else key,
            w._deliver,
            prefix=prefix,
            end=end,
            start_revision=start_revision,
            prev_kv=prev_kv,
        )
        with self._lock:
            if not self._closed:
                self._watches.add(w)
                return
        # close() ran meanwhile and did not see this watch: end it here, as close would have.
        w.cancel()
        raise Closed("the store is closed")

    def _forget(self, w: _WatchBase) -> None:
        with self._lock:
            self._watches.discard(w)

    # --- leases -------------------------------------------------------------------------------

    def lease(self, ttl: int, *, keepalive: bool = True) -> Lease:
        """Grant a lease of `ttl` seconds through Raft. With `keepalive` the member refreshes it
        every ttl/3 until it is revoked or the store closes. Keys put with ``lease=`` vanish
        (DELETE events) when it expires or is revoked."""
        return self._leased(self._wait(self._grant(ttl, keepalive)), keepalive)

    def _grant(self, ttl: int, keepalive: bool) -> concurrent.futures.Future[Any]:
        """Check a lease's arguments and propose its grant (for Store.lease and
        AsyncStore.lease)."""
        _check_ttl(ttl)
        _check_flag("keepalive", keepalive)
        self._check()
        return self._m.grant_lease(ttl)

    def _leased(self, grant: LeaseGrantResult, keepalive: bool) -> Lease:
        """The Lease of a granted lease, kept alive by the member if asked."""
        if keepalive:
            self._m.set_auto_keepalive(grant.id, True)
        return Lease(self, grant.id, grant.ttl, keepalive)

    # --- coordination recipes (embedkv.recipes, on the public API above) ----------------------

    def lock(self, name: str, *, ttl: int = 10) -> Lock:
        """A fair, lease-backed lock with a fencing token (embedkv.recipes.Lock)."""
        from .recipes.lock import Lock

        return Lock(self, name, ttl=ttl)

    def rwlock(self, name: str, *, ttl: int = 10) -> RWLock:
        """A read-write lock: ``.read()`` and ``.write()`` locks over one fair queue."""
        from .recipes.lock import RWLock

        return RWLock(self, name, ttl=ttl)

    def election(self, name: str, *, ttl: int = 10) -> Election:
        """Leader election: campaign, leader, observe, proclaim, resign."""
        from .recipes.election import Election

        return Election(self, name, ttl=ttl)

    def queue(self, name: str, *, ttl: int = 10) -> Queue:
        """A work queue with lease-backed claims (redelivered if a consumer dies)."""
        from .recipes.queue import Queue

        return Queue(self, name, ttl=ttl)

    def barrier(self, name: str, n: int, *, ttl: int = 10) -> Barrier:
        """Releases all `n` participants together."""
        from .recipes.sync import Barrier

        return Barrier(self, name, n, ttl=ttl)

    def double_barrier(self, name: str, n: int, *, ttl: int = 10) -> DoubleBarrier:
        """``enter()`` until `n` have entered, ``leave()`` until all have left."""
        from .recipes.sync import DoubleBarrier

        return DoubleBarrier(self, name, n, ttl=ttl)

    def semaphore(self, name: str, n: int, *, ttl: int = 10) -> Semaphore:
        """At most `n` lease-backed holders at once."""
        from .recipes.sync import Semaphore

        return Semaphore(self, name, n, ttl=ttl)

    def counter(self, name: str) -> Counter:
        """An integer changed atomically (compare-and-set retries)."""
        from .recipes.sync import Counter

        return Counter(self, name)

    def party(self, name: str, *, ttl: int = 10) -> Party:
        """Who is present, each member on its own lease."""
        from .recipes.sync import Party

        return Party(self, name, ttl=ttl)

    def services(self, name: str) -> Services:
        """A service registry: register, endpoints, watch, pick."""
        from .recipes.services import Services

        return Services(self, name)

    def config(self, prefix: str) -> ConfigView:
        """A read-only mapping of the keys under `prefix`, kept current by a watch."""
        from .recipes.config import ConfigView

        return ConfigView(self, prefix)



def _check_ttl(ttl: int) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"ttl must be an int number of seconds, not {type(ttl).__name__}")
    if ttl < 1:
        raise ValueError("ttl must be at least 1 second")


class _ValuesView(ValuesView[Any]):
    """Values in key order from one snapshot (not one read per key)."""

    _mapping: Store

    def __iter__(self) -> Iterator[Any]:
        for kv in self._mapping._snapshot(keys_only=False):
            yield kv.value


class _ItemsView(ItemsView[Key, Any]):
    """(key, value) pairs in key order from one snapshot."""

    _mapping: Store

    def __iter__(self) -> Iterator[tuple[Key, Any]]:
        for kv in self._mapping._snapshot(keys_only=False):
            yield kv.key, kv.value


# --- watches --------------------------------------------------------------------------------


class _WatchBase:
    """What every kind of watch shares: the member's handle, cancel, context manager."""

    _handle: Any

    def __init__(self, store: Store) -> None:
        self._store = store
        self._handle = None
        self._cancelled = False

    def _deliver(self, event: Event) -> None:
        raise NotImplementedError

    @property
    def cancelled(self) -> bool:
        """True once cancelled, by ``cancel()``, by closing the store, or by the member."""
        return self._cancelled or (self._handle is not None and bool(self._handle.cancelled))

    @property
    def error(self) -> BaseException | None:
        """Why the watch ended on its own, else None: Compacted if a compaction overtook a long
        history replay (the watch then stops rather than skip events, as in etcd)."""
        if self._handle is None:
            return None
        error: BaseException | None = self._handle.error
        return error

    def _ended_by_member(self) -> bool:
        """The member ended the watch (error, or member closed) without our cancel()."""
        return not self._cancelled and self._handle is not None and bool(self._handle.cancelled)

    def cancel(self) -> None:
        """Stop the watch; idempotent. No callback starts after this returns, and one running
        on the dispatcher (unless this is it) has finished."""
        self._cancel(wait=True)

    def _cancel(self, *, wait: bool) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        if self._store._forked:
            return  # the member's threads and locks are the parent's: touch nothing
        if self._handle is not None:
            self._handle.cancel(wait=wait)
        self._store._forget(self)
        self._on_cancel()

    def _on_cancel(self) -> None:
        """Subclasses wake up their consumer here."""

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


_W = TypeVar("_W", bound=_WatchBase)


class Watch(_WatchBase):
    """A callback watch from ``store.watch``; ``cancel()`` it or use it as a context manager."""

    def __init__(self, store: Store, callback: Callable[[Event], object]) -> None:
        super().__init__(store)
        self._callback = callback

    def _deliver(self, event: Event) -> None:
        # A failing callback must not take the dispatcher (and every other watch) down with it.
        try:
            self._callback(event)
        except Exception:
            log.exception("embedkv watch callback %r failed on %r", self._callback, event)


_END = object()

_POLL = 0.25
"""Seconds between checks for a watch that the member ended on its own (see Watch.error)."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """Queued to an async iterator: the member ended the watch with `error`."""

    error: BaseException


class WatchIterator(_WatchBase, Iterator[Event]):
    """The blocking iterator from ``store.watch_iter``, fed by a queue from the dispatcher."""

    def __init__(self, store: Store, timeout: float | None) -> None:
        super().__init__(store)
        self._timeout = timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def _deliver(self, event: Event) -> None:
        self._queue.put(event)

    def _on_cancel(self) -> None:
        self._queue.put(_END)

    def __iter__(self) -> WatchIterator:
        return self

    def __next__(self) -> Event:
        if self._store._forked:
            self._store._check()  # raises Closed: no dispatcher feeds this queue in a child
        if self._cancelled and self._queue.empty():
            raise StopIteration
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=max(wait, 0.0))
                break
            except queue.Empty:
                # Events wake us at once; the slices only notice a watch that the member ended
                # on its own (it has no event to say so): every event before that is delivered.
                if self._ended_by_member() and self._queue.empty():
                    error = self.error
                    self.cancel()
                    if error is not None:
                        raise error from None
                    raise StopIteration from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"no watch event within {self._timeout} s") from None
        if item is _END:
            self._queue.put(_END)  # later next() calls end too
            raise StopIteration
        event: Event = item
        return event

    def close(self) -> None:
        """The same as cancel(), for code that closes iterators."""
        self.cancel()


# --- leases ---------------------------------------------------------------------------------


class Lease:
    """A lease granted by ``store.lease(ttl)``; a context manager that revokes it on exit."""

    def __init__(self, store: Store, lease_id: int, ttl: int, keepalive: bool) -> None:
        self._store = store
        self.id = lease_id
        self.ttl = ttl
        self._keepalive = keepalive
        self._revoked = False

    def __repr__(self) -> str:
        return f"<embedkv.Lease id={self.id:#x} ttl={self.ttl}>"

    def refresh(self) -> int:
        """Restart the countdown now; returns the TTL. LeaseNotFound if it already ended."""
        self._store._check()
        return int(self._store._m.keepalive(self.id))

    def revoke(self) -> None:
        """End the lease now, deleting its keys; a second call on this object does nothing.
        LeaseNotFound if it had already expired."""
        if self._revoked:
            return
        store = self._store
        store._check()
        if self._keepalive:
            store._m.set_auto_keepalive(self.id, False)
        store._wait(store._m.revoke_lease(self.id))
        self._revoked = True

    def ttl_remaining(self) -> float:
        """Seconds until the lease expires unless refreshed; LeaseNotFound if it has ended."""
        self._store._check()
        ttl = self._store._m.lease_time_to_live(self.id)
        if ttl is None:
            raise LeaseNotFound(self.id)
        return float(ttl[1])

    def keys(self) -> list[Key]:
        """The keys currently attached to this lease; LeaseNotFound if it has ended."""
        self._store._check()
        found = self._store._kv.lease(self.id)
        if found is None:
            raise LeaseNotFound(self.id)
        return list(found[1])

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Whether it expired already or the store closed first, the lease is over either way.
        with contextlib.suppress(LeaseNotFound, Closed):
            self.revoke()


# --- os.fork() --------------------------------------------------------------------------------

_stores: weakref.WeakValueDictionary[int, Store] = weakref.WeakValueDictionary()
"""Every Store of this process by id() (a Store, a mapping, is unhashable), so that a forked
child can mark them unusable."""


def _after_fork_in_child() -> None:
    """In the child of os.fork(): no member thread exists here and the LMDB environment must
    not be used, so every Store inherited from the parent is closed (Closed says why) without
    touching its member; the member layer drops them from its exit-time close."""
    for store in list(_stores.values()):
        store._forked = True
        store._closed = True


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- AsyncStore -----------------------------------------------------------------------------


async def _awaited(fut: concurrent.futures.Future[_T]) -> _T:
    return await asyncio.wrap_future(fut)


class _AsyncOpen:
    """What ``open_async`` returns: ``await`` it for an AsyncStore, or ``async with`` it."""

    def __init__(self, path: str | os.PathLike[str], options: dict[str, Any]) -> None:
        self._path = path
        self._options = options
        self._store: AsyncStore | None = None

    async def _open(self) -> AsyncStore:
        # Member.open blocks while it starts threads and elects itself: keep the loop free.
        store = await asyncio.to_thread(open, self._path, **self._options)
        return AsyncStore(store)

    def __await__(self) -> Generator[Any, None, AsyncStore]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.close()


def open_async(path: str | os.PathLike[str], **options: Any) -> _AsyncOpen:
    """Open a store for asyncio: ``store = await embedkv.open_async(path)`` or
    ``async with embedkv.open_async(path) as store:``. Options are those of ``open``, checked
    at this call (not when awaited)."""
    bound = inspect.signature(open).bind(path, **options)  # TypeError for an unknown option
    bound.apply_defaults()
    _check_options(**{k: v for k, v in bound.arguments.items() if k != "path"})
    return _AsyncOpen(os.fspath(path), options)


class AsyncStore:
    """The Store's operations as coroutines, for asyncio code.

    Writes await the member's futures (``asyncio.wrap_future``: no thread per call); reads
    await the read barrier, then read LMDB inline (a local read that does not block on I/O
    beyond the page cache). The mapping protocol is sync-only: use ``.store`` from threads.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def close(self) -> None:
        """Close the store (idempotent); the threads are joined off the event loop."""
        if self.store._closed:
            return
        await asyncio.to_thread(self.store.close)

    @property
    def closed(self) -> bool:
        return self.store.closed

    async def __aenter__(self) -> AsyncStore:
        self.store._check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "<embedkv.AsyncStore " + repr(self.store)[len("<embedkv.Store ") :]

    async def _linearize(self, serializable: bool) -> None:
        s = self.store
        s._check()
        if s._needs_barrier(serializable):
            await asyncio.wrap_future(s._m.read_barrier())

    # --- reads --------------------------------------------------------------------------------

    async def get(
        self,
        key: Key,
        default: Any = None,
        *,
        revision: int | None = None,
        serializable: bool = False,
    ) -> Any:
        kv = await self.get_kv(key, revision=revision, serializable=serializable)
        return default if kv is None else kv.value

    async def get_kv(
        self, key: Key, *, revision: int | None = None, serializable: bool = False
    ) -> KeyValue | None:
        await self._linearize(serializable)
        return self.store.get_kv(key, revision=revision, serializable=True)

    async def range(
        self,
        prefix: Key | None = None,
        *,
        start: Key | None = None,
        end: Key | None = None,
        limit: int | None = None,
        revision: int | None = None,
        sort: str | None = None,
        keys_only: bool = False,
        serializable: bool = False,
    ) -> list[KeyValue]:
        get = _range_request(prefix, start, end, limit, revision, sort, keys_only)
        await self._linearize(serializable)
        return list(self.store._range(get, True).kvs)

    async def count(self, prefix: Key = "", *, serializable: bool = False) -> int:
        await self._linearize(serializable)
        return self.store.count(prefix, serializable=True)

    async def contains(self, key: Key, *, serializable: bool = False) -> bool:
        """``key in store``, as a coroutine."""
        await self._linearize(serializable)
        return self.store._range(Get(key, count_only=True), True).count > 0

    @property
    def revision(self) -> int:
        return self.store.revision

    async def backup(self, dest: str | os.PathLike[str]) -> int:
        """``Store.backup``, in a worker thread (it writes the whole store to a file)."""
        return await asyncio.to_thread(self.store.backup, dest)

    def status(self) -> Status:
        return self.store.status()

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def leader(self) -> str | None:
        return self.store.leader

    async def members(self) -> list[MemberInfo]:
        """``Store.members``, in a worker thread (it may ask the leader)."""
        return await asyncio.to_thread(self.store.members)

    async def add_member(self, name: str, address: str, *, learner: bool = False) -> MemberInfo:
        return await asyncio.to_thread(self.store.add_member, name, address, learner=learner)

    async def remove_member(self, name: str) -> None:
        await asyncio.to_thread(self.store.remove_member, name)

    async def promote_member(self, name: str) -> MemberInfo:
        return await asyncio.to_thread(self.store.promote_member, name)

    async def transfer_leadership(self, to: str | None = None) -> str:
        return await asyncio.to_thread(self.store.transfer_leadership, to)

    async def verify(self) -> VerifyReport:
        """Store.verify(), in a worker thread: it reads the whole data dir."""
        return await asyncio.to_thread(self.store.verify)

    # --- writes -------------------------------------------------------------------------------

    def _propose(self, request: Any) -> concurrent.futures.Future[Any]:
        """Never runs the batch here: the event loop must not block on an fsync."""
        return self.store._propose(request, run=False)

    async def put(
        self,
        key: Key,
        value: Any,
        *,
        lease: Lease | AsyncLease | int | None = None,
        prev_kv: bool = False,
    ) -> PutResult:
        request = Put(key, value, lease=_lease_id(lease), prev_kv=prev_kv)
        result: PutResult = await _awaited(self._propose(request))
        return result

    async def delete(self, key: Key, *, prefix: bool = False, prev_kv: bool = False) -> Deleted:
        fut = self._propose(_delete_request(key, prefix, prev_kv))
        result: DeleteResult = await _awaited(fut)
        return _deleted(result)

    async def compact(self, revision: int) -> None:
        await _awaited(self._propose(Compaction(revision)))

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnResult:
        fut = self._propose(_txn_request(compare, success, failure))
        result: TxnResult = await _awaited(fut)
        return result

    async def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update`` as Store.update does it: one transaction when within the limits."""
        for request in _update_requests(args, kwargs):
            await _awaited(self._propose(request))

    async def compare_and_set(self, key: Key, expected: Any, new: Any) -> bool:
        request = _cas_request(key, expected, new)
        result: TxnResult = await _awaited(self._propose(request))
        return result.succeeded

    async def create(
        self, key: Key, value: Any, *, lease: Lease | AsyncLease | int | None = None
    ) -> bool:
        fut = self._propose(_create_request(key, value, _lease_id(lease)))
        result: TxnResult = await _awaited(fut)
        return result.succeeded

    # --- watches and leases -------------------------------------------------------------------

    def watch(
        self,
        key: Key,
        *,
        prefix: bool = False,
        end: Key | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
    ) -> AsyncWatch:
        """``async for event in astore.watch(key):`` — call from a coroutine (it binds to the
        running loop). Compacted at once if `start_revision` was compacted."""
        w = AsyncWatch(self.store, asyncio.get_running_loop())
        self.store._start_watch(w, key, prefix, end, start_revision, prev_kv)
        w._start_polling()
        return w

    async def lease(self, ttl: int, *, keepalive: bool = True) -> AsyncLease:
        grant = await _awaited(self.store._grant(ttl, keepalive))
        return AsyncLease(self.store._leased(grant, keepalive))

    # --- coordination recipes: the sync recipes' logic, run in worker threads ---------------

    def lock(self, name: str, *, ttl: int = 10) -> _aio.AsyncLock:
        from .recipes import aio

        return aio.AsyncLock(self.store.lock(name, ttl=ttl))

    def rwlock(self, name: str, *, ttl: int = 10) -> _aio.AsyncRWLock:
        from .recipes import aio

        return aio.AsyncRWLock(self.store.rwlock(name, ttl=ttl))

    def election(self, name: str, *, ttl: int = 10) -> _aio.AsyncElection:
        from .recipes import aio

        return aio.AsyncElection(self.store.election(name, ttl=ttl))

    def queue(self, name: str, *, ttl: int = 10) -> _aio.AsyncQueue:
        from .recipes import aio

        return aio.AsyncQueue(self.store.queue(name, ttl=ttl))

    def barrier(self, name: str, n: int, *, ttl: int = 10) -> _aio.AsyncBarrier:
        from .recipes import aio

        return aio.AsyncBarrier(self.store.barrier(name, n, ttl=ttl))

    def double_barrier(self, name: str, n: int, *, ttl: int = 10) -> _aio.AsyncDoubleBarrier:
        from .recipes import aio

        return aio.AsyncDoubleBarrier(self.store.double_barrier(name, n, ttl=ttl))

    def semaphore(self, name: str, n: int, *, ttl: int = 10) -> _aio.AsyncLock:
        from .recipes import aio

        return aio.AsyncLock(self.store.semaphore(name, n, ttl=ttl))

    def counter(self, name: str) -> _aio.AsyncCounter:
        from .recipes import aio

        return aio.AsyncCounter(self.store.counter(name))

    def party(self, name: str, *, ttl: int = 10) -> _aio.AsyncParty:
        from .recipes import aio

        return aio.AsyncParty(self.store.party(name, ttl=ttl))

    def services(self, name: str) -> _aio.AsyncServices:
        from .recipes import aio

        return aio.AsyncServices(self.store.services(name))

    async def config(self, prefix: str) -> ConfigView:
        """The live view (its initial read runs in a worker thread); reading it is sync."""
        return await asyncio.to_thread(self.store.config, prefix)


class AsyncWatch(_WatchBase, AsyncIterator[Event]):
    """An async iterator of events; ``cancel()`` (or leaving ``async with``) ends it."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(store)
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._check_handle: asyncio.TimerHandle | None = None

    def _start_polling(self) -> None:
        """Called once the member accepted the watch (not if it raised Compacted)."""
        if not self._cancelled:
            self._check_handle = self._loop.call_later(_POLL, self._poll_member)

    def _poll_member(self) -> None:
        """Every _POLL seconds on the loop: end the iteration if the member ended the watch on
        its own (it has no event to say so); events queued before that are delivered first."""
        if self._cancelled:
            return
        if self._ended_by_member():
            # Every event the dispatcher posted before it ended the watch is already in the
            # loop's ready queue; call_soon goes behind them, so none is overtaken.
            self._loop.call_soon(self._finish_ended)
            return
        self._check_handle = self._loop.call_later(_POLL, self._poll_member)

    def _finish_ended(self) -> None:
        error = self.error
        if error is not None:
            self._queue.put_nowait(_Failed(error))  # before cancel() queues the end
        self.cancel()

    def _on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn` on the watch's loop: now if this is that loop's thread, else soon."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            # The loop is closed: nobody can consume any more events.
            self._cancelled = True

    def _deliver(self, event: Event) -> None:
        self._on_loop(self._queue.put_nowait, event)

    def _on_cancel(self) -> None:
        self._on_loop(self._stop)

    def _stop(self) -> None:
        if self._check_handle is not None:
            self._check_handle.cancel()
        self._queue.put_nowait(_END)

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Event:
        if self._store._forked:
            self._store._check()  # raises Closed: no dispatcher feeds this queue in a child
        item = await self._queue.get()
        if isinstance(item, _Failed):
            raise item.error
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        event: Event = item
        return event

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


class AsyncLease:
    """A lease from ``await astore.lease(ttl)``; ``async with`` revokes it on exit."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self.id = lease.id
        self.ttl = lease.ttl

    def __repr__(self) -> str:
        return f"<embedkv.AsyncLease id={self.id:#x} ttl={self.ttl}>"

    async def refresh(self) -> int:
        return self._lease.refresh()

    async def revoke(self) -> None:
        lease = self._lease
        if lease._revoked:
            return
        store = lease._store
        store._check()
        if lease._keepalive:
            store._m.set_auto_keepalive(lease.id, False)
        await _awaited(store._m.revoke_lease(lease.id))
        lease._revoked = True

    async def ttl_remaining(self) -> float:
        return self._lease.ttl_remaining()

    async def keys(self) -> list[Key]:
        return self._lease.keys()

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(LeaseNotFound, Closed):
            await self.revoke()
