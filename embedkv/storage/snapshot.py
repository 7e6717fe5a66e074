"""A state-machine snapshot as a byte stream, and restoring one into a fresh data dir.

Stream: the magic ``EKVSNAP1``, then frames ``tag (1 byte) | length (u32) | payload``:

* ``H`` once, first: CBOR map of format, applied index and its term, conf state (voters,
  learners), revision and compact revision, (when there is one) the member directory
  ("members": rows of [id, name, address, promote]), and the physical compaction work still
  to do ("compacting", only when there is some);
* ``R`` per record: ``table (1 byte) | key length (u16) | key | value``, the raw LMDB record of
  one of the key-space tables, in (table, key, value) order;
* ``E`` last: the SHA-256 of every byte before this frame.

The stream is cut into chunks of any size. The Raft log and the member's identity are not
part of it: a snapshot is the state machine as of its applied index.
"""

from __future__ import annotations

import errno
import hashlib
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final

import cbor2
import lmdb

from embedkv.errors import CorruptData, NoSpace
from embedkv.raft.types import ConfState, HardState, SnapshotMeta

from .codec import (
    CHANGE,
    COMPACTION_WORK,
    MAX_PROPOSAL_BYTES,
    RECORD,
    REV,
    SUMS_FROM_FORMAT,
    U64,
    U64X2,
    U64X3,
    decode_conf_state,
    encode_conf_state,
    encode_hard_state,
    seal,
    unpack_change,
    unseal,
)
from .directory import (
    DENIED,
    MEMBERS,
    REMOVED,
    decode_denied,
    decode_members,
    decode_removed,
    denied_from_list,
    encode_denied,
    encode_members,
    encode_removed,
    members_from_rows,
    members_rows,
    removed_from_list,
)
from .lmdbenv import (
    COMPACTING,
    FORMAT_VERSION,
    LOG_START,
    META_STATE,
    RESTORING,
    STATE_DB,
    Env,
    is_disk_full,
    no_space,
)
from .mvcc import CompactionWork, read_compaction_work, read_state
from .raftlog import CONF_STATE, HARD_STATE
from .requests import MAX_KEY_BYTES

MAGIC: Final = b"EKVSNAP1"
FRAME: Final = struct.Struct(">BI")
RECORD_HEAD: Final = struct.Struct(">BH")
TAG_HEADER: Final = ord("H")
TAG_RECORD: Final = ord("R")
TAG_END: Final = ord("E")

TABLES: Final = (b"kv", b"graves", b"history", b"leases", b"lease_keys")
"""The tables a snapshot carries, by their number in the stream."""

READS_FORMATS: Final = frozenset({2, 3, FORMAT_VERSION})
"""Snapshot formats a restore accepts. Format 3 only moved a record the stream does not carry;
from format 4 each record's value ends with its checksum (checked on restore; the values of an
older stream are sealed as they are written)."""

MAX_FRAME: Final = MAX_PROPOSAL_BYTES + 4096
MAX_HEADER: Final = 1 << 20
_RESTORE_TXN_BYTES: Final = 32 << 20


def snapshot_chunks(env: Env, log: Any, chunk_size: int) -> Iterator[bytes]:
    """Spool the snapshot to a temporary file under one read transaction, then stream it.

    Spooling keeps the read transaction short (it holds back map growth and page reuse)
    however slowly the consumer reads.
    """
    return snapshot_stream(env, chunk_size)[1]


def snapshot_stream(env: Env, chunk_size: int) -> tuple[SnapshotMeta, Iterator[bytes]]:
    """The stream of `snapshot_chunks` and the Raft point it holds (applied index, its term,
    the membership), read in the same transaction: a follower installs exactly that point."""
    if type(chunk_size) is not int or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, not {chunk_size!r}")
    spool = tempfile.TemporaryFile(dir=env.path, prefix="snapshot-")  # noqa: SIM115 (streamed)
    try:
        try:
            header = _write_snapshot(env, spool)
        except OSError as exc:
            if exc.errno is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space to spool a snapshot in {env.path}: {exc}") from None
            raise
    except BaseException:
        spool.close()
        raise
    return _meta(header), _stream(spool, chunk_size)


def _meta(header: dict[str, Any]) -> SnapshotMeta:
    conf = ConfState(frozenset(header["voters"]), frozenset(header["learners"]))
    return SnapshotMeta(header["applied"], header["term"], conf)


def _stream(spool: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    with spool:
        spool.seek(0)
        while chunk := spool.read(chunk_size):
            yield chunk


def _write_snapshot(env: Env, out: IO[bytes]) -> dict[str, Any]:
    digest = hashlib.sha256()

    def emit(data: bytes) -> None:
        digest.update(data)
        out.write(data)

    with env.read() as txn:
        applied, revision, compact = read_state(txn, env.dbs[STATE_DB])
        raw = txn.get(CONF_STATE, db=env.dbs[b"raft_state"])
        conf = ConfState() if raw is None else decode_conf_state(raw)
        fields: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "applied": applied,
            "term": _term_at(txn, env, applied),
            "voters": sorted(conf.voters),
            "learners": sorted(conf.learners),
            "revision": revision,
            "compact": compact,
        }
        work = read_compaction_work(txn, env.dbs[STATE_DB], compact)
        if work is not None:
            # The history still holds what this work drops (invisible to reads): the
            # receiver records the same work and finishes it (docs/internals/storage.md).
            fields["compacting"] = list(work)
        raw = txn.get(MEMBERS, db=env.dbs[b"raft_state"])
        if raw is not None:
            # The member directory travels in the header: it is small, and a follower
            # installing the snapshot must learn every member's name and address.
            fields["members"] = members_rows(decode_members(raw))
        raw = txn.get(DENIED, db=env.dbs[b"raft_state"])
        if raw is not None:
            fields["denied"] = sorted(decode_denied(raw))  # revoked certificates, likewise
        raw = txn.get(REMOVED, db=env.dbs[b"raft_state"])
        if raw is not None:
            fields["removed"] = sorted(decode_removed(raw))  # and removed members
        header = cbor2.dumps(fields)
        emit(MAGIC)
        emit(FRAME.pack(TAG_HEADER, len(header)) + header)
        for table_no, name in enumerate(TABLES):
            for key, value in txn.cursor(db=env.dbs[name]):
                body = RECORD_HEAD.pack(table_no, len(key)) + key + value
                emit(FRAME.pack(TAG_RECORD, len(body)) + body)
    end = digest.digest()
    out.write(FRAME.pack(TAG_END, len(end)) + end)
    out.flush()
    return fields


def _term_at(txn: lmdb.Transaction[bytes], env: Env, index: int) -> int:
    key = U64.pack(index)
    raw = txn.get(key, db=env.dbs[b"raft_log"])
    if raw is not None:
        raw = unseal("raft_log", key, raw)
    if raw is not None and len(raw) >= 8:
        term: int = U64.unpack_from(raw)[0]
        return term
    raw = txn.get(LOG_START, db=env.dbs[STATE_DB])
    if raw is not None and len(raw) == U64X2.size:
        start, start_term = U64X2.unpack(raw)
        if start == index:
            return int(start_term)
    if index == 0:
        return 0
    raise CorruptData(f"the term of applied entry {index} is not in the log")


# --- restore ---------------------------------------------------------------------------------


class _Reader:
    """Reads exact byte counts from a chunk iterator, hashing everything it hands out."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self.digest = hashlib.sha256()

    def read(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                raise CorruptData("snapshot stream is truncated") from None
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"snapshot chunks must be bytes, not {type(chunk).__name__}")
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        self.digest.update(out)
        return out

    def at_end(self) -> bool:
        if len(self._buf) > self._pos:
            return False
        return all(not chunk for chunk in self._chunks)


def _frame(reader: _Reader, limit: int) -> tuple[int, bytes]:
    tag, length = FRAME.unpack(reader.read(FRAME.size))
    if length > limit:
        raise CorruptData(f"snapshot frame of {length} bytes is over the {limit} limit")
    return tag, reader.read(length)


def _header(payload: bytes) -> dict[str, Any]:
    try:
        header = cbor2.loads(payload, max_depth=4)
    except Exception as exc:
        raise CorruptData(f"snapshot header does not decode: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptData("snapshot header is not a map")
    if header.get("format") not in READS_FORMATS:
        raise CorruptData(f"snapshot has format {header.get('format')!r}; this embedkv "
                          f"restores formats {sorted(READS_FORMATS)}")
    for name in ("applied", "term", "revision", "compact"):
        value = header.get(name)
        if type(value) is not int or not 0 <= value < 1 << 63:
            raise CorruptData(f"snapshot header field {name} is invalid")
    for name in ("voters", "learners"):
        ids = header.get(name)
        if type(ids) is not list or any(type(i) is not int or not 0 < i < 1 << 64 for i in ids):
            raise CorruptData(f"snapshot header field {name} is invalid")
    if header["revision"] < 1 or header["compact"] > header["revision"]:
        raise CorruptData("snapshot header revisions are inconsistent")
    if "members" in header:
        header["members"] = members_from_rows(header["members"])
    if "denied" in header:
        header["denied"] = denied_from_list(header["denied"])
    if "removed" in header:
        header["removed"] = removed_from_list(header["removed"])
    if "compacting" in header:
        work = header["compacting"]
        if (type(work) is not list or len(work) != len(CompactionWork._fields)
                or any(type(n) is not int or not 0 <= n < 1 << 63 for n in work)
                or work[2] >= 1 << 32):
            raise CorruptData("snapshot header field compacting is invalid")
        header["compacting"] = CompactionWork(*work).check(header["compact"])
    return header


def _check_record(table: bytes, key: bytes, value: bytes) -> None:
    """Structural checks, so a restored dir holds only records the reader understands."""
    ok: bool
    if table == b"kv":
        ok = len(value) >= RECORD.size
    elif table == b"graves":
        ok = len(value) == REV.size
    elif table == b"history":
        ok = len(key) == REV.size and len(value) >= CHANGE.size
        if ok:
            unpack_change(value)
    elif table == b"leases":
        ok = len(key) == 8 and len(value) == 8
    else:
        ok = len(key) > 8 and len(value) <= 1
    if not ok:
        raise CorruptData(f"snapshot has a malformed {table.decode()} record")


def open_stream(chunks: Iterable[bytes]) -> tuple[_Reader, dict[str, Any]]:
    """Start reading a snapshot stream: its checked header (CorruptData if damaged)."""
    reader = _Reader(chunks)
    if reader.read(len(MAGIC)) != MAGIC:
        raise CorruptData("not an embedkv snapshot (bad magic)")
    tag, payload = _frame(reader, MAX_HEADER)
    if tag != TAG_HEADER:
        raise CorruptData("snapshot does not start with its header")
    return reader, _header(payload)


def stream_records(reader: _Reader, header: dict[str, Any]) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(table, key, sealed value) of every record, each checked, in stream order; the digest
    at the end is checked before the iterator finishes (CorruptData on any damage: a caller
    commits nothing it read until the iterator is exhausted)."""
    last: tuple[int, bytes, bytes] = (-1, b"", b"")
    while True:
        expected = reader.digest.digest()
        tag, payload = _frame(reader, MAX_FRAME)
        if tag == TAG_END:
            if payload != expected:
                raise CorruptData("snapshot checksum mismatch")
            break
        if tag != TAG_RECORD or len(payload) < RECORD_HEAD.size:
            raise CorruptData(f"unexpected snapshot frame {tag!r}")
        table_no, klen = RECORD_HEAD.unpack_from(payload)
        if table_no >= len(TABLES) or not 0 < klen <= MAX_KEY_BYTES + 16:
            raise CorruptData("snapshot record has a bad table or key length")
        key = payload[RECORD_HEAD.size : RECORD_HEAD.size + klen]
        value = payload[RECORD_HEAD.size + klen :]
        if len(key) != klen:
            raise CorruptData("snapshot record is truncated")
        order = (table_no, key, value)
        if order <= last:
            raise CorruptData("snapshot records are out of order")
        last = order
        table = TABLES[table_no]
        if header["format"] >= SUMS_FROM_FORMAT:
            try:
                unsealed = unseal(table.decode(), key, value)
            except CorruptData:  # unseal's words blame the data file; here the stream is bad
                raise CorruptData(
                    f"snapshot's {table.decode()} record of key {key!r} fails its checksum: "
                    "the stream is damaged"
                ) from None
            _check_record(table, key, unsealed)
        else:
            _check_record(table, key, value)
            value = seal(key, value)
        yield table, key, value
    if not reader.at_end():
        raise CorruptData("snapshot has data after its end")


def restore_into(
    env: Env, chunks: Iterable[bytes], identity: Any, conf_state: ConfState | None = None
) -> None:
    """Fill a freshly created environment from a snapshot stream, verifying its checksum
    before the final commit. Raises CorruptData (the caller removes the dir). `conf_state`
    replaces the stream's membership when given."""
    reader, header = open_stream(chunks)
    meta_db = env.dbs[b"meta"]
    _commit(env, [(meta_db, RESTORING, b"1")])
    pending: list[tuple[Any, bytes, bytes]] = []
    pending_bytes = 0
    for table, key, value in stream_records(reader, header):
        pending.append((env.dbs[table], key, value))
        pending_bytes += len(key) + len(value)
        if pending_bytes >= _RESTORE_TXN_BYTES:
            _commit(env, pending)
            pending, pending_bytes = [], 0
    conf = conf_state
    if conf is None:
        conf = ConfState(frozenset(header["voters"]), frozenset(header["learners"]))
    state_db = env.dbs[b"raft_state"]
    applied = header["applied"]
    pending += [
        (env.dbs[STATE_DB], META_STATE, U64X3.pack(applied, header["revision"], header["compact"])),
        (state_db, CONF_STATE, encode_conf_state(conf)),
        (env.dbs[STATE_DB], LOG_START, U64X2.pack(applied, header["term"])),
        (env.dbs[STATE_DB], HARD_STATE, encode_hard_state_for(applied, header["term"])),
    ]
    if conf_state is None and header.get("members"):
        # The same cluster: its directory comes along (a new membership, as a backup
        # restores to, makes a new cluster whose directory starts empty).
        pending.append((state_db, MEMBERS, encode_members(header["members"])))
    if conf_state is None and header.get("denied"):
        pending.append((state_db, DENIED, encode_denied(header["denied"])))
    if conf_state is None and header.get("removed"):
        pending.append((state_db, REMOVED, encode_removed(header["removed"])))
    if "compacting" in header:
        pending.append((env.dbs[STATE_DB], COMPACTING,
                        COMPACTION_WORK.pack(*header["compacting"])))
    if identity is not None:
        pending.append((state_db, b"identity", U64X2.pack(identity.cluster_id,
                                                          identity.member_id)))
    _commit(env, pending, finish=True)


def encode_hard_state_for(applied: int, term: int) -> bytes:
    """A restored member has voted for nobody, and has committed up to the snapshot."""
    return encode_hard_state(HardState(term=term, vote=0, commit=applied))


def _commit(
    env: Env, items: list[tuple[Any, bytes, bytes]], *, finish: bool = False
) -> None:
    """Write records in one transaction, growing the map as needed."""
    while True:
        try:
            with env.env.begin(write=True) as txn:
                for db, key, value in items:
                    txn.put(key, value, db=db)
                if finish:
                    txn.delete(RESTORING, db=env.dbs[b"meta"])
            return
        except lmdb.MapFullError:
            env.grow()
        except lmdb.Error as exc:
            if is_disk_full(exc, env.path):
                raise no_space(exc, env.path) from None
            raise

