"""A member's data dir: the lock, the LMDB environment and the write batch.

Everything a member persists changes through ``DataDir.write()``: one LMDB write transaction,
committed (and fsynced when durable) when the block ends. Appending Raft entries, applying
committed ones and recording the applied index share that transaction, so a crash leaves either
all of a batch or none of it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import lmdb

from embedkv.errors import Closed, CorruptData, DataDirLocked, NoSpace
from embedkv.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

from .codec import (
    PUT_TAG,
    U64X2,
    U64X3,
    BadProposal,
    decode_wire,
    encode_conf_state,
    unpack_exact,
)
from .directory import (
    DENIED,
    LOCAL,
    MEMBERS,
    REMOVED,
    LocalInfo,
    PeerInfo,
    decode_denied,
    decode_local,
    decode_members,
    decode_removed,
    encode_denied,
    encode_local,
    encode_members,
    encode_removed,
)
from .lmdbenv import (
    MARKER_FILE,
    META_STATE,
    STATE_DB,
    Env,
    is_disk_full,
    no_space,
)
from .mvcc import (
    Applied,
    Applier,
    KeySpace,
    Tables,
    read_compaction_work,
    read_state,
    write_compaction_work,
)
from .raftlog import CONF_STATE, RaftLog

if TYPE_CHECKING:
    from .verify import VerifyReport

LOCK_FILE: Final = "embedkv.lock"
DEFRAG_TEMP: Final = "data.mdb.defrag"
"""The compacting copy `defrag` writes before swapping it in; a leftover (from a killed defrag)
is removed when the dir is next opened or defragmented."""
IDENTITY: Final = b"identity"
"""`raft_state` key of (cluster_id, member_id)."""
_ABORTED: Final = "the write batch was aborted by an earlier error: nothing in it was written"
_NORMAL: Final = EntryType.NORMAL
MAX_MAP_SIZE: Final = 1 << 44
"""16 TiB of address space: past this, a MapFullError is reported as NoSpace."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Which cluster this data dir belongs to, and which member it is."""

    cluster_id: int
    member_id: int


def take_lock(path: str) -> int:
    """Take the data dir's exclusive flock, or raise DataDirLocked at once."""
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f" (pid {holder})" if holder else ""
            raise DataDirLocked(
                f"data dir {path} is already open in another Store{who}; a data dir belongs "
                "to one Store at a time"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    """Unlock, then close. A flock belongs to the open file description, which a child of
    os.fork() shares until it closes its copy: closing alone would leave the data dir locked
    for as long as such a child has not yet done so."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class DataDir:
    """One member's durable state: Raft log and hard state, and the key-value state machine."""

    def __init__(self, path: str, env: Env, lock_fd: int) -> None:
        self.path = path
        self.durable = env.durable
        self._env = env
        self._lock_fd = lock_fd
        self._write_lock = threading.Lock()
        self._writer = 0
        """Thread id holding the write lock, so that a nested write() fails instead of hanging."""
        self._no_space: NoSpace | None = None
        self._closed = False
        with env.read() as txn:
            applied, revision, compact = read_state(txn, env.dbs[STATE_DB])
            self._compaction_work = read_compaction_work(txn, env.dbs[STATE_DB], compact)
            raw = txn.get(IDENTITY, db=env.dbs[b"raft_state"])
            self._identity = (
                None if raw is None else Identity(*unpack_exact(U64X2, raw, "identity"))
            )
            raw = txn.get(MEMBERS, db=env.dbs[b"raft_state"])
            self._members: dict[int, PeerInfo] = {} if raw is None else decode_members(raw)
            raw = txn.get(LOCAL, db=env.dbs[b"raft_state"])
            self._local = None if raw is None else decode_local(raw)
            raw = txn.get(DENIED, db=env.dbs[b"raft_state"])
            self._denied = frozenset[str]() if raw is None else decode_denied(raw)
            raw = txn.get(REMOVED, db=env.dbs[b"raft_state"])
            self._removed = frozenset[int]() if raw is None else decode_removed(raw)
        self.kv = KeySpace(env, revision, compact)
        self.log = RaftLog.load(env, applied)
        self._tables = Tables(env)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, durable: bool = True) -> DataDir:
        """Open (creating if missing) a data dir; DataDirLocked if it is open elsewhere.

        durable=False skips the fsync of each commit: a crash of the machine (not of the
        process) may lose the most recent commits and, on a file system that reorders writes,
        damage the data file (LMDB's MDB_NOSYNC; README "Durability").
        """
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        fd = take_lock(path)
        try:
            with suppress(FileNotFoundError):
                os.unlink(os.path.join(path, DEFRAG_TEMP))
            env = Env(path, durable=durable)
        except BaseException:
            release_lock(fd)
            raise
        try:
            return cls(path, env, fd)
        except BaseException:
            env.close()
            release_lock(fd)
            raise

    def close(self) -> None:
        """Close the environment and release the lock; idempotent."""
        if self._writer == threading.get_ident():
            raise RuntimeError("close() inside a write batch of the same thread")
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._env.close()
            release_lock(self._lock_fd)

    def forget_after_fork(self) -> None:
        """In a child of os.fork(): close the inherited lock descriptor (the parent keeps its
        lock: a flock lasts while any copy is open) and never use or close anything else."""
        if not self._closed:
            self._closed = True
            os.close(self._lock_fd)

    def __enter__(self) -> DataDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state --------------------------------------------------------------------------

    @property
    def identity(self) -> Identity | None:
        return self._identity

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def conf_state(self) -> ConfState:
        """The membership as of the applied index."""
        return self.log.conf_state

    @property
    def compaction_pending(self) -> bool:
        """Whether a compaction left physical work to do (as of the last commit): the writer
        then runs ``WriteBatch.compact_step`` until this is False."""
        return self._compaction_work is not None

    def members(self) -> dict[int, PeerInfo]:
        """The member directory (id -> name, address) as of the applied index (a copy)."""
        return dict(self._members)

    @property
    def denied(self) -> frozenset[str]:
        """Serials (hex) of the certificates of removed members, as of the applied index:
        refused on every peer connection."""
        return self._denied

    @property
    def removed(self) -> frozenset[int]:
        """Ids of the members removed from the cluster, as of the applied index: ids are
        never reused, so one of them dialing in is a member that missed its removal."""
        return self._removed

    @property
    def local(self) -> LocalInfo | None:
        """This member's name, listen address and cluster token (None: never clustered)."""
        return self._local

    def set_local(self, local: LocalInfo) -> None:
        """Record this member's own settings (a new listen address, or a store growing into
        a cluster), in one write transaction."""
        with self.write() as w:
            w.set_local(local)

    def bootstrap(
        self,
        identity: Identity,
        conf_state: ConfState,
        *,
        members: Mapping[int, PeerInfo] | None = None,
        local: LocalInfo | None = None,
    ) -> None:
        """Record identity, initial membership, the member directory and this member's own
        settings in a fresh data dir (one transaction)."""
        for name, value in (("cluster_id", identity.cluster_id),
                            ("member_id", identity.member_id)):
            if type(value) is not int or not 0 < value < 1 << 64:
                raise ValueError(f"{name} must be a positive 64-bit int, not {value!r}")
        with self.write() as w:
            w.bootstrap(identity, conf_state)
            for mid, info in (members or {}).items():
                w.set_member(mid, info)
            if local is not None:
                w.set_local(local)
        self._identity = identity

    def clear_no_space(self) -> None:
        """Accept writes again after the operator has freed space."""
        self._no_space = None

    def verify(self) -> VerifyReport:
        """Scan everything for damage, as of one read transaction (storage/verify.py)."""
        from .verify import verify_env

        return verify_env(self._env)

    def sync(self) -> None:
        """Force what has been committed to disk (useful with durable=False)."""
        self._env.env.sync(True)

    # --- writing ------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[WriteBatch]:
        """One write transaction: committed on normal exit, aborted on an exception. Batches
        from several threads run one after the other; nesting one in another is an error."""
        me = threading.get_ident()
        if self._writer == me:
            raise RuntimeError("a write batch is already open in this thread")
        with self._write_lock:
            if self._closed:
                raise Closed("the data dir is closed")
            if self._no_space is not None:
                raise self._no_space
            self._writer = me
            try:
                batch = WriteBatch(self)
                try:
                    yield batch
                except BaseException:
                    batch.abort()
                    raise
                batch.commit()
            finally:
                self._writer = 0

    def refuse_writes(self, exc: NoSpace) -> None:
        """Refuse every write batch with `exc` until clear_no_space() (the disk is full)."""
        self._no_space = exc

    # --- snapshots ----------------------------------------------------------------------

    def snapshot_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The state machine as checksummed chunks, from one consistent read transaction."""
        return self.snapshot_stream(chunk_size)[1]

    def snapshot_stream(self, chunk_size: int = 1 << 20) -> tuple[SnapshotMeta, Iterator[bytes]]:
        """`snapshot_chunks` and the Raft point the stream holds (applied index, its term,
        membership), read in the same transaction: what a follower installs."""
        from .snapshot import snapshot_stream

        return snapshot_stream(self._env, chunk_size)

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str],
        chunks: Iterable[bytes],
        *,
        durable: bool = True,
        identity: Identity | None = None,
        conf_state: ConfState | None = None,
    ) -> DataDir:
        """Create a data dir at `path` (missing or empty) from snapshot chunks.

        `conf_state`, if given, replaces the snapshot's membership (a backup restores as a new
        one-member cluster). CorruptData if the stream is damaged; the partial dir is then
        removed.
        """
        from .snapshot import restore_into

        path = os.fspath(path)
        if os.path.exists(path) and os.listdir(path):
            raise FileExistsError(f"cannot restore into {path}: the directory is not empty")
        created = not os.path.exists(path)
        os.makedirs(path, exist_ok=True)
        try:
            fd = take_lock(path)
        except BaseException:
            _remove_dir(path, created)
            raise
        try:
            env = Env(path, durable=durable)
            try:
                restore_into(env, chunks, identity, conf_state)
                dd = cls(path, env, fd)
            except BaseException:
                env.close()
                raise
        except BaseException:
            release_lock(fd)
            _remove_dir(path, created)
            raise
        return dd


def _remove_dir(path: str, created: bool) -> None:
    """Remove what a failed restore wrote (the dir too if the restore created it)."""
    for name in ("data.mdb", "lock.mdb", MARKER_FILE, LOCK_FILE):
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    if created:
        with suppress(OSError):
            os.rmdir(path)


class WriteBatch:
    """The operations of one write transaction (see ``DataDir.write``).

    Each operation is recorded, so that when LMDB's map is full the batch can abort, grow the
    map and run the same operations again: they are deterministic, so the results already
    handed out stay true.
    """

    def __init__(self, dd: DataDir) -> None:
        self._dd = dd
        self._env = dd._env
        self._log = dd.log
        self._view0 = dd.log.view
        self._ops: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._apply_op = self._apply
        self._txn: lmdb.Transaction[bytes] | None = None
        self._begin()

    def _begin(self) -> None:
        dd = self._dd
        try:
            self._txn = self._env.env.begin(write=True)
        except lmdb.Error as exc:
            raise self._translate(exc) from None
        self._applier = Applier(self._txn, dd._tables, dd.kv.revision, dd.kv.compact_revision,
                                dd._compaction_work)
        self._applied = dd.log.applied
        self._conf_state = dd.log.conf_state
        self._members = dd._members
        self._local = dd._local
        self._denied = dd._denied
        self._removed = dd._removed
        self._state_dirty = False

    # --- the operations -----------------------------------------------------------------

    def append_entries(self, entries: list[Entry]) -> None:
        """Append Raft entries, replacing a conflicting suffix."""
        self._run(self._append_entries, (list(entries),))

    def set_hard_state(self, hard_state: HardState) -> None:
        self._run(self._set_hard_state, (hard_state,))

    def set_member(self, member_id: int, info: PeerInfo) -> None:
        """Add or change a member directory entry (with the membership change it follows).
        Certificate serials accumulate: those of `info` are added to the entry's."""
        self._run(self._set_member, (member_id, info))

    def remove_member(self, member_id: int) -> None:
        self._run(self._remove_member, (member_id,))

    def deny(self, serials: Iterable[str]) -> None:
        """Add certificate serials to the deny list (with the removal of their member)."""
        self._run(self._deny, (frozenset(serials),))

    def set_local(self, local: LocalInfo) -> None:
        self._run(self._set_local, (local,))

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole state machine (key space, history, leases, member directory,
        applied index, membership) and the log by a leader's snapshot stream, in this
        transaction. CorruptData if the stream is damaged or is not at `snapshot.meta`: the
        batch then aborts and nothing changes."""
        self._run(self._install_snapshot, (snapshot,))

    def install_snapshot_meta(self, meta: SnapshotMeta) -> None:
        """Replace the log by a snapshot point; the state machine must already be at it
        (``DataDir.restore``), since this does not change the key space."""
        self._run(self._install_snapshot_meta, (meta,))

    def apply(self, entry: Entry) -> Applied:
        """Apply a committed entry and record it as the applied index."""
        if self._txn is None:
            raise Closed(_ABORTED)
        # _run() inlined: this runs once per applied entry.
        self._ops.append((self._apply_op, (entry,)))
        try:
            # _apply() inlined for the hot path, a plain Put in order.
            index = entry.index
            data = entry.data
            if (type(data) is bytes and data and data[0] == PUT_TAG
                    and index == self._applied + 1 and entry.type is _NORMAL):
                self._applied = index
                self._state_dirty = True
                return self._applier.apply_put(index, data)
            return self._apply(entry)
        except lmdb.MapFullError:
            result: Applied = self._grow_and_replay()
            return result
        except lmdb.Error as exc:
            self.abort()
            raise self._translate(exc) from None
        except BaseException:
            self.abort()
            raise

    def apply_conf_change(self, index: int, conf_state: ConfState) -> None:
        """Record the membership after the conf-change entry at `index` (applied+1, or the
        entry just passed to apply())."""
        self._run(self._apply_conf_change, (index, conf_state))

    def compact_log(self, index: int) -> None:
        """Drop log entries <= index (which must be <= the applied index)."""
        self._run(self._compact_log, (index,))

    def bootstrap(self, identity: Identity, conf_state: ConfState) -> None:
        self._run(self._bootstrap, (identity, conf_state))

    def compact_step(self, max_keys: int) -> bool:
        """Do a bounded part of the physical compaction work left by Compaction entries:
        visit at most `max_keys` history changes (key versions), dropping those the
        compaction drops; True while work remains (False at once when there is none).

        Reads never depend on it: the compact revision is recorded when the Compaction is
        applied, and what the work drops is below it. Deterministic and safe to replay, like
        every batch operation; a compaction applied earlier in this batch counts."""
        if type(max_keys) is not int or max_keys < 1:
            raise ValueError(f"max_keys must be a positive int, not {max_keys!r}")
        if self._txn is None:
            raise Closed(_ABORTED)
        if self._applier.work is None:
            return False
        result: bool = self._run(self._compact_step, (max_keys,))
        return result

    # --- implementations, run (and re-run after map growth) against self._txn -------------

    def _append_entries(self, entries: list[Entry]) -> None:
        assert self._txn is not None
        self._log.append(self._txn, entries)

    def _set_hard_state(self, hard_state: HardState) -> None:
        assert self._txn is not None
        self._log.set_hard_state(self._txn, hard_state)

    def _install_snapshot_meta(self, meta: SnapshotMeta) -> None:
        assert self._txn is not None
        if meta.index != self._applied:
            raise ValueError(
                f"snapshot index {meta.index} differs from the applied index {self._applied}: "
                "restore the snapshot's data (DataDir.restore) before installing its meta"
            )
        self._log.install(self._txn, meta.index, meta.term)
        self._set_conf_state(meta.conf_state)

    def _apply(self, entry: Entry) -> Applied:
        index = entry.index
        if index != self._applied + 1:
            raise ValueError(f"entry {index} applied out of order (applied {self._applied})")
        self._applied = index
        self._state_dirty = True
        data = entry.data
        if entry.type is not _NORMAL or not data:
            return Applied(index, None, None, [])
        if data[0] == PUT_TAG and type(data) is bytes:
            return self._applier.apply_put(index, data)  # the hot path: a plain Put
        try:
            member_id, seq, op = decode_wire(data)
        except BadProposal as exc:
            return Applied(index, None, exc, [])
        result, events = self._applier.apply(op)
        return Applied(index, (member_id, seq), result, events)

    def _apply_conf_change(self, index: int, conf_state: ConfState) -> None:
        if index == self._applied + 1:
            self._applied = index
            self._state_dirty = True
        elif index != self._applied:
            raise ValueError(f"conf change {index} applied out of order (applied {self._applied})")
        self._set_conf_state(conf_state)

    def _set_conf_state(self, conf_state: ConfState) -> None:
        assert self._txn is not None
        self._txn.put(CONF_STATE, encode_conf_state(conf_state), db=self._env.dbs[b"raft_state"])
        self._conf_state = conf_state

    def _set_member(self, member_id: int, info: PeerInfo) -> None:
        assert self._txn is not None
        members = dict(self._members)
        old = members.get(member_id)
        if old is not None and old.serials:
            info = PeerInfo(info.name, info.address, info.promote, old.serials).with_serials(
                info.serials)
        members[member_id] = info
        self._put_members(members)

    def _remove_member(self, member_id: int) -> None:
        if member_id in self._members:
            members = dict(self._members)
            del members[member_id]
            self._put_members(members)
        if member_id not in self._removed:
            self._put_removed(self._removed | {member_id})

    def _put_members(self, members: dict[int, PeerInfo]) -> None:
        assert self._txn is not None
        self._txn.put(MEMBERS, encode_members(members), db=self._env.dbs[b"raft_state"])
        self._members = members

    def _deny(self, serials: frozenset[str]) -> None:
        assert self._txn is not None
        if not serials <= self._denied:
            self._put_denied(self._denied | serials)

    def _put_denied(self, denied: frozenset[str]) -> None:
        self._put_state(DENIED, encode_denied(denied) if denied else None)
        self._denied = denied

    def _put_removed(self, removed: frozenset[int]) -> None:
        self._put_state(REMOVED, encode_removed(removed) if removed else None)
        self._removed = removed

    def _put_state(self, key: bytes, raw: bytes | None) -> None:
        """Write a raft_state record; None: no record, as in a dir that never had one."""
        assert self._txn is not None
        db = self._env.dbs[b"raft_state"]
        if raw is not None:
            self._txn.put(key, raw, db=db)
        else:
            self._txn.delete(key, db=db)

    def _set_local(self, local: LocalInfo) -> None:
        assert self._txn is not None
        self._txn.put(LOCAL, encode_local(local), db=self._env.dbs[b"raft_state"])
        self._local = local

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        from .snapshot import TABLES, open_stream, stream_records

        txn = self._txn
        assert txn is not None
        meta = snapshot.meta
        reader, header = open_stream([snapshot.data])
        conf = ConfState(frozenset(header["voters"]), frozenset(header["learners"]))
        if (header["applied"], header["term"], conf) != (meta.index, meta.term, meta.conf_state):
            raise CorruptData(
                f"a snapshot stream at index {header['applied']} (term {header['term']}) came "
                f"with the point of index {meta.index} (term {meta.term}): refused"
            )
        dbs = self._env.dbs
        for table in TABLES:
            txn.drop(dbs[table], delete=False)
        for table, key, value in stream_records(reader, header):
            txn.put(key, value, db=dbs[table])
        self._applier = Applier(txn, self._dd._tables, header["revision"], header["compact"],
                                header.get("compacting"))
        self._applied = meta.index
        self._state_dirty = True
        self._log.install(txn, meta.index, meta.term)
        self._set_conf_state(meta.conf_state)
        self._put_members(header.get("members", {}))
        self._put_denied(header.get("denied", frozenset()))
        self._put_removed(header.get("removed", frozenset()))

    def _compact_step(self, max_keys: int) -> bool:
        return self._applier.compact_step(max_keys)  # the current applier (after a replay too)

    def _compact_log(self, index: int) -> None:
        assert self._txn is not None
        self._log.compact(self._txn, index, self._applied)

    def _bootstrap(self, identity: Identity, conf_state: ConfState) -> None:
        assert self._txn is not None
        raft_state = self._env.dbs[b"raft_state"]
        if (self._txn.get(IDENTITY, db=raft_state) is not None or self._applied
                or self._log.view.last):
            raise ValueError(f"data dir {self._dd.path} is not fresh: it cannot be bootstrapped")
        self._txn.put(IDENTITY, U64X2.pack(identity.cluster_id, identity.member_id),
                      db=raft_state)
        self._set_conf_state(conf_state)

    # --- running, growing, committing ---------------------------------------------------

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._txn is None:
            raise Closed(_ABORTED)
        self._ops.append((fn, args))
        try:
            return fn(*args)
        except lmdb.MapFullError:
            return self._grow_and_replay()
        except lmdb.Error as exc:
            self.abort()
            raise self._translate(exc) from None
        except BaseException:
            self.abort()  # a failed operation may have written part of its changes
            raise

    def _grow_and_replay(self) -> Any:
        while True:
            if self._env.env.info()["map_size"] >= MAX_MAP_SIZE:
                self.abort()
                exc = NoSpace(f"the LMDB map of {self._dd.path} reached its maximum size")
                self._dd.refuse_writes(exc)
                raise exc
            self._env.grow(self._discard)
            self._begin()
            try:
                result = None
                for fn, args in self._ops:
                    result = fn(*args)
                return result
            except lmdb.MapFullError:
                continue
            except lmdb.Error as exc:
                self.abort()
                raise self._translate(exc) from None

    def _translate(self, exc: lmdb.Error) -> Exception:
        path = self._dd.path
        if is_disk_full(exc, path):
            err = no_space(exc, path)
            self._dd.refuse_writes(err)
            return err
        if isinstance(exc, lmdb.CorruptedError | lmdb.PageNotFoundError | lmdb.InvalidError):
            return CorruptData(f"{path}: {exc}")
        return exc

    def _discard(self) -> None:
        """Abort the transaction and undo what the operations did in memory."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self._log.view = self._view0
        self._log.discard_unwritten()

    def abort(self) -> None:
        """Abort, with readers held back for that moment (see Env.grow: busy readers can
        starve py-lmdb's abort of a write transaction)."""
        if self._txn is None:
            self._discard()  # only the memory to undo
            return
        with self._env.gate.exclusive():
            self._discard()

    def commit(self) -> None:
        """Record the applied state, commit (fsync when durable), then publish the new
        applied index, revision and log shape to readers."""
        while True:
            txn = self._txn
            if txn is None:
                raise Closed(_ABORTED)
            try:
                if self._state_dirty or self._applier.revision != self._dd.kv.revision or (
                    self._applier.compact != self._dd.kv.compact_revision
                ):
                    txn.put(META_STATE, U64X3.pack(
                        self._applied, self._applier.revision, self._applier.compact
                    ), db=self._dd._tables.state)
                if self._applier.work is not self._dd._compaction_work:
                    write_compaction_work(txn, self._dd._tables.state, self._applier.work)
                self._log.flush(txn)
                txn.commit()
                break
            except lmdb.MapFullError:
                self._grow_and_replay()
            except lmdb.Error as exc:
                self.abort()
                raise self._translate(exc) from None
        self._txn = None
        dd = self._dd
        log = self._log
        log.applied = self._applied
        log.conf_state = self._conf_state
        dd._members = self._members
        dd._local = self._local
        dd._denied = self._denied
        dd._removed = self._removed
        log.trim_tail()
        dd.kv.revision = self._applier.revision
        dd.kv.compact_revision = self._applier.compact
        dd._compaction_work = self._applier.work
