"""Scan a whole data dir for damage: every B-tree page, every record's checksum and shape.

Reads never return damaged data (each value's checksum is checked when it is read), but they
only look at what they read. ``verify`` looks at everything: first the LMDB file's structure,
read with pread (lmdbfile.walk: page numbers, headers, node bounds), since LMDB itself would
crash on a damaged page; then, only if that is sound, every record of every database through
LMDB, in one read transaction. It reports what it finds instead of stopping at the first
problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import lmdb

from embedkv.errors import CorruptData

from .codec import (
    COMPACTION_WORK,
    FLAG_STR,
    FLAG_TOMBSTONE,
    KIND_PUT,
    RECORD,
    REV,
    SUMMED_TABLES,
    SUMS_FROM_FORMAT,
    U32,
    U64,
    U64X2,
    U64X3,
    decode_conf_state,
    decode_entry,
    decode_hard_state,
    decode_value,
    unpack_change,
    unpack_exact,
    unseal,
)
from .lmdbenv import COMPACTING, DB_NAMES, FORMAT_VERSION, LOG_START, META_FORMAT, META_STATE, Env
from .lmdbfile import walk
from .requests import MAX_KEY_BYTES

MAX_PROBLEMS: Final = 1000
"""Problems listed one by one; past this many, the report counts the rest."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a scan of a data dir found. `ok` is true when `problems` is empty."""

    path: str
    format: int
    records: dict[str, int] = field(default_factory=dict)
    """Records read, per database ("" is LMDB's main database)."""
    pages: int = 0
    """B-tree pages walked (branch and leaf pages; values on overflow pages not counted)."""
    problems: tuple[str, ...] = ()
    """Each problem found, naming the database and key (at most MAX_PROBLEMS, then a count)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"{self.path}: {'ok' if self.ok else 'DAMAGED'}, format {self.format}, "
                f"{sum(self.records.values())} records, {self.pages} pages")
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.more = 0

    def add(self, what: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(what)
        else:
            self.more += 1

    def result(self) -> tuple[str, ...]:
        if self.more:
            return (*self.items, f"... and {self.more} more problems")
        return tuple(self.items)


def verify_env(env: Env) -> VerifyReport:
    """Verify an open data dir (a live one too: everything is read as of one read transaction,
    begun before the file is walked, so no page the walk reads can be reused meanwhile)."""
    with env.read() as txn:
        return _verify(env.path, txn, lambda name: env.dbs[name])


def check(path: str | os.PathLike[str]) -> VerifyReport:
    """Verify a data dir that no Store has open, without changing it: DataDirLocked if one has;
    FileNotFoundError if there is no such dir. Formats before 4 have no checksums to check;
    their records are checked for shape and decodability."""
    from .datadir import release_lock, take_lock  # datadir imports this module's users

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no data dir at {path}")
    fd = take_lock(path)
    try:
        data_file = os.path.join(path, "data.mdb")
        if not os.path.exists(data_file) or os.path.getsize(data_file) == 0:
            return VerifyReport(path, 0, problems=(f"{data_file} is missing or empty",))
        try:
            env = lmdb.open(path, readonly=True, lock=False, subdir=True,
                            max_dbs=len(DB_NAMES), readahead=False)
        except lmdb.Error as exc:
            return VerifyReport(path, 0, problems=(f"{data_file} is not an LMDB file: {exc}",))
        try:
            with env.begin() as txn:
                return _verify(path, txn, lambda name: env.open_db(name or None, txn=txn,
                                                                  create=False))
        finally:
            env.close()
    finally:
        release_lock(fd)


def _verify(
    path: str,
    txn: lmdb.Transaction[bytes],
    open_db: Callable[[bytes], lmdb._Database],
) -> VerifyReport:
    problems = _Problems()
    data_file = os.path.join(path, "data.mdb")
    try:
        walked, _ = walk(data_file)
    except CorruptData as exc:
        problems.add(f"B-tree: {exc}; records were not read (LMDB could crash on this page)")
        return VerifyReport(path, 0, problems=problems.result())
    pages = walked.branch_pages + walked.leaf_pages
    dbs: dict[bytes, lmdb._Database] = {b"": open_db(b"")}
    for name in DB_NAMES:
        try:
            dbs[name] = open_db(name)
        except lmdb.Error:
            problems.add(f"database {name.decode()} is missing")
    raw = txn.get(META_FORMAT, db=dbs[b"meta"]) if b"meta" in dbs else None
    version = 0
    if raw is None or len(raw) != U32.size:
        problems.add("meta: the format record is missing or malformed")
    else:
        (version,) = U32.unpack(raw)
        if not 2 <= version <= FORMAT_VERSION:
            problems.add(f"meta: unknown format {version}")
    records: dict[str, int] = {}
    for name, db in dbs.items():
        table = name.decode()
        count = 0
        check = _CHECKS.get(table)
        summed = version >= SUMS_FROM_FORMAT and table in SUMMED_TABLES
        for key, value in txn.cursor(db=db):
            count += 1
            try:
                if summed:
                    value = unseal(table, key, value)
                if check is not None:
                    check(key, value)
            except CorruptData as exc:
                problems.add(f"{table or 'main'} record {key!r}: {exc}")
        records[table] = count
    _check_state(txn, dbs, problems)
    return VerifyReport(path, version, records, pages, problems.result())


def _check_record(record: bytes, live: bool) -> None:
    if len(record) < RECORD.size:
        raise CorruptData("the record is shorter than its header")
    flags = RECORD.unpack_from(record)[5]
    if flags & ~(FLAG_STR | FLAG_TOMBSTONE):
        raise CorruptData(f"unknown record flags {flags:#x}")
    if live and flags & FLAG_TOMBSTONE:
        raise CorruptData("a live record is marked deleted")
    if not flags & FLAG_TOMBSTONE:
        decode_value(record[RECORD.size :])


def _check_key(kb: bytes) -> None:
    if not 0 < len(kb) <= MAX_KEY_BYTES:
        raise CorruptData(f"key of {len(kb)} bytes")


def _kv(key: bytes, value: bytes) -> None:
    _check_key(key)
    _check_record(value, True)
    if RECORD.unpack_from(value)[5] & FLAG_STR:
        try:
            key.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptData("a str key is not UTF-8") from None


def _history(key: bytes, value: bytes) -> None:
    if len(key) != REV.size:
        raise CorruptData("the position is not (revision, sub)")
    kind, kb, _, _, record = unpack_change(value)
    _check_key(kb)
    _check_record(record, kind == KIND_PUT)


def _graves(key: bytes, value: bytes) -> None:
    _check_key(key)
    unpack_exact(REV, value, "grave")


def _leases(key: bytes, value: bytes) -> None:
    unpack_exact(U64, key, "lease id")
    unpack_exact(U64, value, "lease ttl")


def _lease_keys(key: bytes, value: bytes) -> None:
    _check_key(key[8:])
    if len(value) > 1:
        raise CorruptData("lease key flags are malformed")


def _raft_log(key: bytes, value: bytes) -> None:
    (index,) = unpack_exact(U64, key, "raft log key")
    decode_entry(index, value)


_CHECKS: Final[dict[str, Callable[[bytes, bytes], None]]] = {
    "kv": _kv,
    "history": _history,
    "graves": _graves,
    "leases": _leases,
    "lease_keys": _lease_keys,
    "raft_log": _raft_log,
}


def _check_state(
    txn: lmdb.Transaction[bytes], dbs: dict[bytes, lmdb._Database], problems: _Problems
) -> None:
    """The fixed records of the main database and raft_state: present ones decode (and
    pending compaction work fits the compact revision)."""
    from .directory import (
        DENIED,
        LOCAL,
        MEMBERS,
        REMOVED,
        decode_denied,
        decode_local,
        decode_members,
        decode_removed,
    )
    from .mvcc import read_compaction_work
    from .raftlog import CONF_STATE, HARD_STATE  # raftlog imports lmdbenv; keep this light

    main = dbs[b""]
    checks: list[tuple[bytes, bytes, lmdb._Database, Callable[[bytes], object]]] = [
        (b"", META_STATE, main, lambda v: unpack_exact(U64X3, v, "applied state")),
        (b"", COMPACTING, main, lambda v: unpack_exact(COMPACTION_WORK, v, "compaction work")),
        (b"", HARD_STATE, main, decode_hard_state),
        (b"", LOG_START, main, lambda v: unpack_exact(U64X2, v, "log start")),
    ]
    if b"raft_state" in dbs:
        state = dbs[b"raft_state"]
        checks += [
            (b"raft_state", CONF_STATE, state, decode_conf_state),
            (b"raft_state", b"identity", state, lambda v: unpack_exact(U64X2, v, "identity")),
            (b"raft_state", MEMBERS, state, decode_members),
            (b"raft_state", LOCAL, state, decode_local),
            (b"raft_state", DENIED, state, decode_denied),
            (b"raft_state", REMOVED, state, decode_removed),
        ]
    damaged: set[bytes] = set()
    for table, key, db, decode in checks:
        raw = txn.get(key, db=db)
        if raw is None:
            if key == META_STATE:
                problems.add("main record b'applied': the applied state is missing")
            continue
        try:
            decode(raw)
        except CorruptData as exc:
            problems.add(f"{table.decode() or 'main'} record {key!r}: {exc}")
            damaged.add(key)
    raw = txn.get(META_STATE, db=main)
    if raw is not None and not damaged & {META_STATE, COMPACTING}:
        try:
            read_compaction_work(txn, main, U64X3.unpack(raw)[2])
        except CorruptData as exc:
            problems.add(f"main record {COMPACTING!r}: {exc}")
