"""The public face of embedkv: Store (sync, thread-safe, a MutableMapping), ``open``,
``restore``, ``defrag`` and Status.

Store is a thin layer over one ``embedkv.member.Member``: every write is a Raft proposal whose
concurrent future resolves once the entry is committed and applied locally; reads are local
LMDB reads, preceded by a read barrier (ReadIndex) unless the caller asks for a serializable
read. Nothing here talks to LMDB directly except through ``member.data_dir.kv``, so the same
code serves a one-member store and a cluster member.

The rest of the public API lives beside it, each defined once for the sync and async faces:
``embedkv.operations`` (each write's checks, request and result; the read helpers),
``embedkv.watches``, ``embedkv.leases`` and ``embedkv.aio`` (AsyncStore, ``open_async``).
Their public names are importable from here too, as they always were.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
import weakref
from collections.abc import (
    Callable,
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

from . import operations as ops
from .aio import AsyncStore, open_async  # re-exported: the asyncio face, in embedkv.aio
from .errors import Closed, Unavailable
from .leases import AsyncLease, Lease, granted, lease_id, propose_grant
from .member import ClusterOptions, Member, MemberInfo, check_cluster_options, new_identity
from .member.discovery import Discovery, check_discovery, open_with_discovery
from .net.tls import TLS
from .operations import (
    FIRST,
    TO_END,
    Deleted,
    TxnOp,
    check_flag,
    check_revision,
    range_request,
)
from .storage import DataDir
from .storage.backup import DefragResult, restore_backup, write_backup
from .storage.backup import defrag as _defrag
from .storage.requests import (
    Compare,
    Event,
    Get,
    Key,
    KeyValue,
    PutResult,
    RangeResult,
    TxnResult,
    key_bytes,
)
from .storage.verify import VerifyReport
from .watches import AsyncWatch, Watch, WatchIterator, _WatchBase, check_timeout

if TYPE_CHECKING:  # the recipes import this module; the methods below import them lazily
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

_T = TypeVar("_T")
_R = TypeVar("_R")

_range_request = range_request
"""The CLI's name for it (``embedkv.cli`` imports it from here)."""

_PAGE = 1000
"""Keys fetched per page when iterating: a huge store is never loaded at once."""

_WATCH_ALL = b""
"""A watch with prefix=True and the empty key sees every key (docs/internals/member-api.md)."""

_GRACE = 5.0
"""Seconds a caller waits beyond request_timeout before giving up on a future itself; the member
fails its futures with Unavailable at request_timeout, so this only guards against a member
that died without resolving them."""


# --- status ---------------------------------------------------------------------------------


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
    tls: object = None, expect: object = None, discovery: object = None,
) -> ClusterOptions:
    """Check ``open``'s options before anything touches the disk (open_async checks them at
    its call too, not when awaited)."""
    check_flag("insecure", insecure)
    opts = ClusterOptions(name, listen, peers, cluster, join,  # type: ignore[arg-type]
                          tls, bool(insecure))  # type: ignore[arg-type]
    check_flag("durable", durable)
    check_flag("serializable_reads", serializable_reads)
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
    check_discovery(opts, expect, discovery)
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
    tls: TLS | str | os.PathLike[str] | None = None,
    expect: int | None = None,
    discovery: bool | Discovery | None = None,
) -> Store:
    """Open (creating if needed) the store in directory `path` and return a Store.

    Clustering (README "Clusters"): ``name``, ``listen="host:port"`` (this member's peer
    address), ``peers={"n1": "host:port", ...}`` and ``cluster="token"`` found a cluster of
    exactly these voters (every founder gets the same peers and token); ``join=["host:port"]``
    joins a running cluster through any member (as a learner, promoted once caught up); a
    one-member store reopened with ``listen`` takes joins. A restart needs only `path` (and
    ``listen`` if it changed). Each of these needs ``tls=`` (README "Security"): a directory
    holding ``ca.pem``, ``NAME.pem`` and ``NAME.key`` (NAME: this member's name), or an
    ``embedkv.TLS(ca=, cert=, key=)``; peer links are then mutual TLS 1.3 and the member's name
    is the one in its certificate. The data dir remembers the files (absolute paths; give
    ``tls=`` again if they moved). ``insecure=True`` instead runs them over plain TCP.

    Discovery (README "Discovery"): ``cluster="name", tls="certs/", expect=3`` on fresh
    members (the name from the certificate, or ``name``; ``listen`` defaults to the first
    interface's address, port 7400; founding and joining run over mutual TLS, or plain TCP with
    ``insecure=True``) finds the others of that name with mDNS and founds one cluster
    once `expect` of them agree, or joins the cluster of that name it finds; a running member
    announces itself and follows peers whose address changed. ``discovery=Discovery(
    interfaces=[...], timeout=...)`` tunes it; ``discovery=False`` turns it off.

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
                          insecure, tls, expect, discovery)
    open_member = functools.partial(
        Member.open,
        os.fspath(path),
        durable=durable,
        request_timeout=request_timeout,
        tick_interval=tick_interval,
        election_tick=election_tick,
        heartbeat_tick=heartbeat_tick,
    )
    disc = check_discovery(opts, expect, discovery)
    if disc is None:
        member = open_member(cluster=opts)
    else:
        member = open_with_discovery(os.fspath(path), opts, expect, disc,
                                     lambda o: open_member(cluster=o), request_timeout)
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

    def _run(self, op: ops.Op[_R]) -> _R:
        """Propose `op`'s request, wait for its outcome, shape the result (AsyncStore._run
        awaits the same)."""
        return op.shape(self._wait(self._propose(op.request)))

    def _barrier(self) -> None:
        self._wait(self._m.read_barrier(run=True))

    def _needs_barrier(self, serializable: bool) -> bool:
        """Whether a read must wait for a read barrier first: not when it is serializable,
        nor while the member may serve linearizable reads locally (the only voter)."""
        if serializable is not False and serializable is not True:
            check_flag("serializable", serializable)
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
        check_revision(revision)
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
        get = range_request(prefix, start, end, limit, revision, sort, keys_only)
        return list(self._range(get, serializable).kvs)

    def count(self, prefix: Key = "", *, serializable: bool = False) -> int:
        """How many keys start with `prefix` (all keys by default), without reading values."""
        return self._range(ops.count_request(prefix), serializable).count

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
        check_flag("learner", learner)
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
        get = Get(FIRST, end=TO_END, limit=_PAGE, keys_only=keys_only)
        result = self._range(get, False, count=False)
        revision = result.revision
        while True:
            yield from result.kvs
            if not result.more or not result.kvs:
                return
            after = key_bytes(result.kvs[-1].key) + b"\x00"
            get = Get(after, end=TO_END, limit=_PAGE, revision=revision, keys_only=keys_only)
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
        return self._run(ops.setdefault(key, default))

    def clear(self) -> None:
        """Delete every key in one write."""
        self.delete("", prefix=True)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update``, written as one transaction (one revision, all or nothing) when it
        fits a transaction's limits (128 keys, about 3 MiB of values); more is written as
        several transactions in turn, each atomic. Every key and value is checked first: a bad
        one raises before anything is written. Iterables are read once."""
        for op in ops.update(args, kwargs):
            self._run(op)

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
        return self._run(ops.put(key, value, lease_id(lease), prev_kv))

    def delete(self, key: Key, *, prefix: bool = False, prev_kv: bool = False) -> Deleted:
        """Delete `key` (or every key under it with `prefix`); returns how many were deleted,
        an int that also has ``.revision`` and, with `prev_kv`, ``.prev_kvs``."""
        return self._run(ops.delete(key, prefix, prev_kv))

    def compact(self, revision: int) -> None:
        """Discard history below `revision`: reads and watches before it raise Compacted."""
        self._run(ops.compact(revision))

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnResult:
        """If every comparison holds, apply `success`, else `failure`, atomically; the result
        has ``.succeeded`` and one response per operation in ``.responses``. Each argument
        may be any iterable (a generator too): it is read once."""
        return self._run(ops.txn(compare, success, failure))

    def compare_and_set(self, key: Key, expected: Any, new: Any) -> bool:
        """Set `key` to `new` only if its value is `expected`; True if it was set."""
        return self._run(ops.compare_and_set(key, expected, new))

    def create(
        self, key: Key, value: Any, *, lease: Lease | AsyncLease | int | None = None
    ) -> bool:
        """Put `key` only if it does not exist; True if it was created."""
        return self._run(ops.create(key, value, lease_id(lease)))

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
        check_timeout(timeout)
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
        check_flag("prefix", prefix)
        check_flag("prev_kv", prev_kv)
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
        return granted(self, self._wait(propose_grant(self, ttl, keepalive)), keepalive)

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
