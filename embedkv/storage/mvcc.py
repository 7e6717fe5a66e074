"""The etcd v3 key space: revisions, ranges at any revision, transactions, leases, compaction.

Databases (see docs/internals/storage.md):

* ``kv``: key bytes -> the key's current record (header + value CBOR), live keys only; the fast
  path for reads at the current revision.
* ``history``: (revision, sub) -> one change (kind, key, previous change of that key, record):
  watch replay and the source of past versions. The "previous change" pointers chain each
  key's versions from newest to oldest.
* ``graves``: key bytes -> (revision, sub) of the tombstone of a deleted key: the head of its
  chain, since it is no longer in ``kv``.
* ``leases``: lease id -> granted ttl; ``lease_keys``: lease id + key -> key flags (the keys
  attached to each lease).

A read at a past revision R starts at a key's head (its ``kv`` record, or its grave) and
follows the chain to the first change at or below R. This costs a lookup per version newer
than R (compaction bounds it), in exchange for writing one random B-tree page per put (``kv``)
instead of two: a put appends to ``history`` and the Raft log, and rewrites its ``kv`` record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple, cast

import cbor2
import lmdb

from embedkv.errors import (
    Compacted,
    CorruptData,
    Error,
    FutureRevision,
    LeaseExists,
    LeaseNotFound,
)

from .codec import (
    CHANGE,
    COMPACTION_WORK,
    CRC_RESIDUE,
    FLAG_STR,
    FLAG_TOMBSTONE,
    KIND_DELETE,
    KIND_PUT,
    MAX_ID,
    MAX_PROPOSAL_BYTES,
    MAX_VALUE_DEPTH,
    OP_COMPACTION,
    OP_DELETE,
    OP_GET,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_TXN,
    PUT_PREV_KV,
    PUT_PROPOSAL,
    PUT_STR_KEY,
    RECORD,
    REV,
    SORT_ORDERS,
    SORT_TARGETS,
    SUM,
    SUM_SIZE,
    TO_THE_END,
    U64,
    U64X3,
    BadProposal,
    crc32,
    damaged,
    decode_proposed_value,
    encode_get,
    seal,
    split_put,
    unpack_change,
    unpack_exact,
    unpack_record,
    unseal,
)
from .lmdbenv import COMPACTING, META_STATE, STATE_DB, Env
from .requests import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    CompactResult,
    DeleteResult,
    Event,
    EventType,
    Get,
    Key,
    KeyValue,
    LeaseGrantResult,
    LeaseRevokeResult,
    PutResult,
    RangeResult,
    Result,
    SortOrder,
    SortTarget,
    TxnResult,
    key_bytes,
    prefix_end,
)


@dataclass(slots=True)
class Applied:
    """What applying one committed entry did.

    `origin` is (member_id, seq) of the proposal, so the proposer can resolve its future;
    `result` is an embedkv.Error when the request failed deterministically (the entry is still
    applied), and None for entries that carry no request (empty or membership entries).
    Not frozen: one is built per applied entry, and a frozen dataclass costs twice as much.
    (Defined here so that the put hot path, ``Applier.apply_put``, can build it.)
    """

    index: int
    origin: tuple[int, int] | None
    result: Result | Error | None
    events: list[Event]


_EVENTS_PER_READ: Final = 256
"""History replay reads this many changes per read transaction, so no reader stays open long."""

_HEADER: Final = RECORD.size
_unpack_record = RECORD.unpack_from
_pack_record = RECORD.pack
_pack_rev = REV.pack
_pack_change = CHANGE.pack
_pack_sum = SUM.pack
_loads = cbor2.loads
_PUT: Final = EventType.PUT
_PUT_HEAD: Final = PUT_PROPOSAL.size
_unpack_put: Final = PUT_PROPOSAL.unpack_from
_MAX_DATA: Final = MAX_PROPOSAL_BYTES + 64


# KeyValue and Event are frozen, slotted dataclasses; their generated __init__ sets each field
# through object.__setattr__, which costs twice what setting the slots directly does, and the
# apply and read hot paths build a few per key. The hot paths build them through "twins":
# plain classes with the very same slots, whose __init__ fills every slot and then turns the
# new object into the frozen class (a __class__ assignment, which CPython allows between
# classes of identical layout). What comes out is an ordinary KeyValue / Event; a test checks
# that it equals what the classes' own constructors build, so a new field cannot be missed
# silently.
_new = object.__new__
_put_revision = vars(PutResult)["revision"].__set__
_put_prev = vars(PutResult)["prev"].__set__


class _KeyValueTwin:
    __slots__ = KeyValue.__slots__

    def __init__(
        self, key: Key, value: Any, create: int, mod: int, version: int, lease: int | None
    ) -> None:
        self.key = key
        self.value = value
        self.create_revision = create
        self.mod_revision = mod
        self.version = version
        self.lease = lease
        self.__class__ = KeyValue  # type: ignore[assignment]


class _EventTwin:
    __slots__ = Event.__slots__

    def __init__(self, kind: EventType, kv: KeyValue, prev_kv: KeyValue | None) -> None:
        self.type = kind
        self.kv = kv
        self.prev_kv = prev_kv
        self.__class__ = Event  # type: ignore[assignment]


_fast_kv: Final = cast(
    "Callable[[Key, Any, int, int, int, int | None], KeyValue]", _KeyValueTwin
)
"""KeyValue(key, value, create_revision, mod_revision, version, lease), built fast."""
_fast_event: Final = cast("Callable[[EventType, KeyValue, KeyValue | None], Event]", _EventTwin)
"""Event(type, kv, prev_kv), built fast."""


def _fast_put_result(revision: int, prev: KeyValue | None) -> PutResult:
    obj = _new(PutResult)
    _put_revision(obj, revision)
    _put_prev(obj, prev)
    return obj


def _body(record: bytes) -> bytes | memoryview:
    """A record's value bytes: a copy is cheaper than a view for small values."""
    return record[_HEADER:] if len(record) < 4096 else memoryview(record)[_HEADER:]


def _key_obj(kb: bytes, flags: int) -> Key:
    if flags & FLAG_STR:
        try:
            return kb.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptData(f"stored str key {kb!r} is not UTF-8") from None
    return kb


def _value(record: bytes) -> Any:
    try:
        return _loads(_body(record), max_depth=MAX_VALUE_DEPTH)
    except Exception as exc:
        raise CorruptData(f"stored value does not decode: {exc}") from None


def record_to_kv(kb: bytes, record: bytes, keys_only: bool = False) -> KeyValue:
    """The KeyValue a stored record stands for."""
    if len(record) < _HEADER:
        raise CorruptData(f"record of key {kb!r} is shorter than its header")
    create, mod, _sub, version, lease, flags = _unpack_record(record)
    if flags & FLAG_TOMBSTONE:
        raise CorruptData(f"live record of key {kb!r} is marked deleted")
    return _fast_kv(
        _key_obj(kb, flags),
        None if keys_only else _value(record),
        create,
        mod,
        version,
        lease or None,
    )


def read_state(txn: lmdb.Transaction[bytes], state_db: lmdb._Database) -> tuple[int, int, int]:
    """(applied index, revision, compact revision) as of `txn` (`state_db`: `raft_state`)."""
    raw = txn.get(META_STATE, db=state_db)
    if raw is None:
        raise CorruptData("the meta state record is missing")
    applied, revision, compact = unpack_exact(U64X3, raw, "meta state")
    return applied, revision, compact


class CompactionWork(NamedTuple):
    """The physical compaction a Compaction left to do (``Applier.compact_step`` does it).

    Below `physical` the history is compacted; the changes from history position (rev, sub)
    up to `target` (the compact revision) are still to be visited."""

    physical: int
    rev: int
    sub: int
    target: int

    def check(self, compact: int) -> CompactionWork:
        """This work, if it is consistent with the compact revision; CorruptData if not."""
        if not self.physical <= self.rev <= self.target == compact:
            raise CorruptData(f"the compaction work {tuple(self)} does not fit the compact "
                              f"revision {compact}")
        return self


def write_compaction_work(
    txn: lmdb.Transaction[bytes], state_db: lmdb._Database, work: CompactionWork | None
) -> None:
    """Record `work` (None: none left) in `txn`."""
    if work is None:
        txn.delete(COMPACTING, db=state_db)
    else:
        txn.put(COMPACTING, COMPACTION_WORK.pack(*work), db=state_db)


def finish_compaction(env: Env, max_changes: int = 10_000) -> int:
    """Do all pending compaction work of an environment nobody else writes to (defrag), in
    transactions of `max_changes` visits; the number of transactions."""
    t = Tables(env)
    done = 0
    while True:
        try:
            with env.env.begin(write=True) as txn:
                _, revision, compact = read_state(txn, t.state)
                work = read_compaction_work(txn, t.state, compact)
                if work is None:
                    return done
                applier = Applier(txn, t, revision, compact, work)
                applier.compact_step(max_changes)
                write_compaction_work(txn, t.state, applier.work)
        except lmdb.MapFullError:
            env.grow()
            continue
        done += 1


def read_compaction_work(
    txn: lmdb.Transaction[bytes], state_db: lmdb._Database, compact: int
) -> CompactionWork | None:
    """The physical compaction still to do as of `txn`, None if there is none."""
    raw = txn.get(COMPACTING, db=state_db)
    if raw is None:
        return None
    return CompactionWork(*unpack_exact(COMPACTION_WORK, raw, "compaction work")).check(compact)


def _in_range(kb: bytes, start: bytes, end: bytes | None) -> bool:
    """Whether kb is in the wire range: end None = just `start`, b"" = to the end."""
    if end is None:
        return kb == start
    return start <= kb and (end == TO_THE_END or kb < end)


def _wire_bytes(key: Key) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


class Tables:
    """The key space's database handles, looked up once."""

    __slots__ = ("graves", "history", "kv", "lease_keys", "leases", "state")

    def __init__(self, env: Env) -> None:
        self.kv = env.dbs[b"kv"]
        self.graves = env.dbs[b"graves"]
        self.history = env.dbs[b"history"]
        self.leases = env.dbs[b"leases"]
        self.lease_keys = env.dbs[b"lease_keys"]
        self.state = env.dbs[STATE_DB]  # META_STATE lives here


# --- reads shared by KeySpace and transactions -----------------------------------------------


def _head(txn: lmdb.Transaction[bytes], t: Tables, kb: bytes) -> tuple[int, int, bytes | None]:
    """The newest change of key kb: (revision, sub, live record or None); (0, 0, None) if the
    key has no history."""
    raw = txn.get(kb, db=t.kv)
    if raw is not None:
        raw = unseal("kv", kb, raw)
        if len(raw) < _HEADER:
            raise CorruptData(f"record of key {kb!r} is shorter than its header")
        _, mod, sub, _, _, _ = _unpack_record(raw)
        return mod, sub, raw
    grave = txn.get(kb, db=t.graves)
    if grave is None:
        return 0, 0, None
    r, s = unpack_exact(REV, unseal("graves", kb, grave), "grave")
    return r, s, None


def _change(
    txn: lmdb.Transaction[bytes], t: Tables, r: int, s: int, compact: int
) -> tuple[int, bytes, int, int, bytes] | None:
    """History change (r, s); None if compaction dropped it (only changes below the compact
    revision are ever dropped, so a missing one above it is corruption)."""
    pos = REV.pack(r, s)
    raw = txn.get(pos, db=t.history)
    if raw is None:
        if r < compact:
            return None
        raise CorruptData(f"history record ({r}, {s}) is missing")
    return unpack_change(unseal("history", pos, raw))


def _record_at(
    txn: lmdb.Transaction[bytes], t: Tables, kb: bytes, rev: int, compact: int
) -> bytes | None:
    """The record of key kb as of revision rev (>= compact), None if it did not exist then:
    walk the key's chain from its head to the first change at or below rev."""
    r, s, live = _head(txn, t, kb)
    if live is not None and r <= rev:
        return live
    while r:
        change = _change(txn, t, r, s, compact)
        if change is None:
            return None  # a dropped tombstone
        kind, _, prev_r, prev_s, record = change
        if r <= rev:
            return record if kind == KIND_PUT else None
        r, s = prev_r, prev_s
    return None


def _range_keys(
    txn: lmdb.Transaction[bytes], t: Tables, start: bytes, stop: bytes | None
) -> Iterator[bytes]:
    """Every key in [start, stop) with a head, live (kv) or deleted (graves), in order."""
    cursors = [txn.cursor(db=t.kv), txn.cursor(db=t.graves)]
    heads: list[bytes | None] = []
    for cursor in cursors:
        heads.append(cursor.key() if cursor.set_range(start) else None)
    while True:
        live, dead = heads
        if live is None and dead is None:
            return
        i = 0 if dead is None or (live is not None and live < dead) else 1
        kb = heads[i]
        assert kb is not None
        if stop is not None and kb >= stop:
            return
        yield kb
        heads[i] = cursors[i].key() if cursors[i].next() else None


def _scan(
    txn: lmdb.Transaction[bytes],
    t: Tables,
    start: bytes,
    end: bytes | None,
    rev: int,
    live: bool,
    compact: int,
) -> Iterator[tuple[bytes, bytes]]:
    """(key, record) of every key in the wire range as of rev, in key order; `live`: read the
    current records (kv) only."""
    if end is None:
        if live:
            raw = txn.get(start, db=t.kv)
            if raw is not None:
                yield start, unseal("kv", start, raw)
        else:
            record = _record_at(txn, t, start, rev, compact)
            if record is not None:
                yield start, record
        return
    stop = None if end == TO_THE_END else end
    if live:
        cursor = txn.cursor(db=t.kv)
        if not cursor.set_range(start):
            return
        for kb, raw in cursor:
            if stop is not None and kb >= stop:
                return
            yield kb, unseal("kv", kb, raw)
        return
    for kb in _range_keys(txn, t, start, stop):
        record = _record_at(txn, t, kb, rev, compact)
        if record is not None:
            yield kb, record


def run_range(
    txn: lmdb.Transaction[bytes],
    t: Tables,
    op: list[Any],
    current: int,
    compact: int,
    *,
    pending: bool = False,
    count: bool = True,
) -> RangeResult:
    """A range read (a wire Get op) in `txn`, whose current revision is `current`.

    `pending`: the transaction has written changes not yet counted in `current` (a txn's own
    writes), which a read at an explicit revision must not see.
    `count=False` (paging): with a limit in key order, read one record past the limit to set
    `more` instead of counting every key after the page, so a page costs what it returns and
    paging through a range stays linear; `count` is then the number of records returned.
    """
    _, key, end, limit, rev, order_i, target_i, keys_only, count_only = op
    live = rev <= 0 or (rev == current and not pending)
    if rev <= 0:
        rev = current
    elif rev > current:
        raise FutureRevision(rev, current)
    elif rev < compact:
        raise Compacted(rev, compact)
    start = _wire_bytes(key)
    stop = None if end is None or end == TO_THE_END else _wire_bytes(end)
    if stop is not None and stop <= start:
        return RangeResult(current, (), 0)
    wire_end: bytes | None = TO_THE_END if end == TO_THE_END else stop
    order = SORT_ORDERS[order_i]
    target = SORT_TARGETS[target_i]
    if target is not SortTarget.KEY and order is SortOrder.NONE:
        order = SortOrder.ASCEND
    it = _scan(txn, t, start, wire_end, rev, live, compact)
    if count_only:
        if live and wire_end is not None:
            return RangeResult(current, (), _count_live(txn, t, start, stop))
        return RangeResult(current, (), sum(1 for _ in it))
    natural = order is SortOrder.NONE or (
        order is SortOrder.ASCEND and target is SortTarget.KEY
    )
    rows: list[tuple[bytes, bytes]] = []
    if natural and limit and not count:
        for row in it:
            if len(rows) == limit:
                kvs = tuple(record_to_kv(kb, record, keys_only) for kb, record in rows)
                return RangeResult(current, kvs, len(kvs), True)
            rows.append(row)
        kvs = tuple(record_to_kv(kb, record, keys_only) for kb, record in rows)
        return RangeResult(current, kvs, len(kvs), False)
    total = 0
    if natural and limit:
        for row in it:
            rows.append(row)
            if len(rows) == limit:
                break
        if live and wire_end is not None and len(rows) == limit:
            total = len(rows) + _count_live(txn, t, rows[-1][0] + b"\x00", stop)
        else:
            total = len(rows) + sum(1 for _ in it)
    else:
        rows = list(it)
        total = len(rows)
        if not natural:
            rows = _sorted_rows(rows, order, target)
        if limit:
            rows = rows[:limit]
    kvs = tuple(record_to_kv(kb, record, keys_only) for kb, record in rows)
    return RangeResult(current, kvs, total, total > len(kvs))


def _count_live(txn: lmdb.Transaction[bytes], t: Tables, start: bytes, stop: bytes | None) -> int:
    """Live keys in [start, stop): a keys-only cursor walk, for counts past a limit."""
    cursor = txn.cursor(db=t.kv)
    if not cursor.set_range(start):
        return 0
    n = 0
    if stop is None:
        for _ in cursor.iternext(values=False):
            n += 1
        return n
    for kb in cursor.iternext(values=False):
        if kb >= stop:
            break
        n += 1
    return n


def _sorted_rows(
    rows: list[tuple[bytes, bytes]], order: SortOrder, target: SortTarget
) -> list[tuple[bytes, bytes]]:
    """Sort as etcd does; ties keep key order. Values sort by Python order when comparable,
    otherwise by their encoded bytes (a total order that never fails)."""
    descending = order is SortOrder.DESCEND
    if target is SortTarget.KEY:
        return rows[::-1] if descending else rows
    if target is SortTarget.VALUE:
        try:
            return sorted(rows, key=lambda r: _value(r[1]), reverse=descending)
        except TypeError:
            return sorted(rows, key=lambda r: r[1][_HEADER:], reverse=descending)
    field = {SortTarget.VERSION: 3, SortTarget.CREATE: 0, SortTarget.MOD: 1}[target]
    return sorted(rows, key=lambda r: unpack_record(r[1])[field], reverse=descending)


def _event(
    t: Tables, txn: lmdb.Transaction[bytes], pos: bytes, raw: bytes, compact: int
) -> Event:
    """A replayed change. Its prev_kv is the key as of rev-1, as etcd gives it: absent when
    rev-1 is below the compact revision (that version may be gone), or was a deletion."""
    kind, kb, prev_rev, prev_sub, record = unpack_change(raw)
    rev, _ = REV.unpack(pos)
    prev_kv = None
    if prev_rev and rev > compact:
        prev = _change(txn, t, prev_rev, prev_sub, compact)
        if prev is not None and prev[0] == KIND_PUT:
            prev_kv = record_to_kv(kb, prev[4])
    if kind == KIND_PUT:
        return Event(EventType.PUT, record_to_kv(kb, record), prev_kv)
    flags = unpack_record(record)[5]
    return Event(EventType.DELETE, KeyValue(_key_obj(kb, flags), None, 0, rev, 0), prev_kv)


# --- KeySpace: the read side ------------------------------------------------------------------


class KeySpace:
    """``dd.kv``: reads from any thread, each in its own LMDB read transaction."""

    def __init__(self, env: Env, revision: int, compact_revision: int) -> None:
        self._env = env
        self._t = Tables(env)
        self._kv_db = self._t.kv
        self._gate = env.gate
        self._begin = env.env.begin
        self.revision = revision
        """The current revision as of the last committed write batch."""
        self.compact_revision = compact_revision
        """Reads and watches below this revision fail with Compacted."""

    def get(self, key: Key) -> KeyValue | None:
        """The key's current record: the serializable-read fast path."""
        if type(key) is str:
            kb = key.encode("utf-8")
            if not kb or len(kb) > MAX_KEY_BYTES:
                key_bytes(key)
        else:
            kb = key_bytes(key)
        gate = self._gate
        gate.active.append(None)
        if gate.shut:
            gate.wait_open()
        try:
            txn = self._begin(db=self._kv_db)
            try:
                raw = txn.get(kb)
            finally:
                txn.abort()
        finally:
            gate.active.pop()
            if gate.shut:
                gate.wake()
        if raw is None:
            return None
        n = len(raw) - SUM_SIZE
        if n < 0 or crc32(raw, crc32(kb)) != CRC_RESIDUE:
            raise damaged("kv", kb)
        if n < _HEADER:
            raise CorruptData(f"record of key {kb!r} is shorter than its header")
        create, mod, _sub, version, lease, flags = _unpack_record(raw)
        try:
            value = _loads(raw[_HEADER:n] if n < 4096 else memoryview(raw)[_HEADER:n],
                           max_depth=MAX_VALUE_DEPTH)
        except Exception as exc:
            raise CorruptData(f"stored value of key {kb!r} does not decode: {exc}") from None
        if not flags & FLAG_STR:
            key = kb
        elif type(key) is not str:
            key = _key_obj(kb, flags)
        return _fast_kv(key, value, create, mod, version, lease or None)

    def range(self, get: Get, *, count: bool = True) -> RangeResult:
        """A range read at the current or a past revision (Compacted, FutureRevision).
        `count=False`: a page of a longer read (see run_range): `more` without a count."""
        op = encode_get(get)
        with self._env.read() as txn:
            _, current, compact = read_state(txn, self._t.state)
            return run_range(txn, self._t, op, current, compact, count=count)

    def events(
        self, start_revision: int, key: Key, end: Key | None = None, *, prefix: bool = False
    ) -> Iterator[Event]:
        """Every change to `key` (or [key, end), or the prefix) at revision >= start_revision,
        in revision order; Compacted if that history is gone. end=b"\\x00": all keys >= key."""
        if type(start_revision) is not int or start_revision < 1:
            raise ValueError(f"start_revision must be a positive int, not {start_revision!r}")
        start = key_bytes(key)
        stop: bytes | None
        if prefix:
            if end is not None:
                raise ValueError("give either prefix=True or end, not both")
            pe = prefix_end(start)
            stop = TO_THE_END if pe is None else pe
        elif end is None:
            stop = None
        elif end in (b"\x00", "\x00"):
            stop = TO_THE_END
        else:
            stop = key_bytes(end)
        with self._env.read() as txn:
            compact = read_state(txn, self._t.state)[2]
        if start_revision < compact:
            raise Compacted(start_revision, compact)
        return self._replay(REV.pack(start_revision, 0), start, stop)

    def _replay(self, pos: bytes, start: bytes, stop: bytes | None) -> Iterator[Event]:
        """Scan history from pos; events are yielded only after each read transaction ends,
        so a consumer that writes (and grows the map) cannot deadlock against its own read."""
        if stop is None:
            yield from self._replay_key(pos, start)
            return
        t = self._t
        done = False
        while not done:
            batch: list[Event] = []
            with self._env.read() as txn:
                compact = read_state(txn, t.state)[2]
                rev = REV.unpack(pos)[0]
                if rev < compact:
                    raise Compacted(rev, compact)
                cursor = txn.cursor(db=t.history)
                done = True
                if cursor.set_range(pos):
                    for seen, (k, raw) in enumerate(cursor):
                        if seen == _EVENTS_PER_READ:
                            pos = k
                            done = False
                            break
                        raw = unseal("history", k, raw)
                        if len(k) != REV.size or len(raw) < CHANGE.size:
                            raise CorruptData("history record is malformed")
                        klen = CHANGE.unpack_from(raw)[1]
                        if _in_range(raw[CHANGE.size : CHANGE.size + klen], start, stop):
                            batch.append(_event(t, txn, k, raw, compact))
            yield from batch

    def _replay_key(self, pos: bytes, kb: bytes) -> Iterator[Event]:
        """One key's changes from pos: collect their positions along the key's chain (newest
        first), then read them oldest first. A chain longer than a few read batches is left
        for the history scan, so memory stays bounded."""
        t = self._t
        start = REV.unpack(pos)
        positions: list[tuple[int, int]] = []
        with self._env.read() as txn:
            compact = read_state(txn, t.state)[2]
            if start[0] < compact:
                raise Compacted(start[0], compact)
            r, s, _ = _head(txn, t, kb)
            while r and (r, s) >= start:
                if len(positions) == 4 * _EVENTS_PER_READ:
                    break
                positions.append((r, s))
                change = _change(txn, t, r, s, compact)
                if change is None:
                    break
                r, s = change[2], change[3]
            else:
                positions.reverse()
                positions.append((0, 0))  # marks a complete chain
        if not positions or positions[-1] != (0, 0):
            yield from self._replay(pos, kb, kb + b"\x00")
            return
        positions.pop()
        for lo in range(0, len(positions), _EVENTS_PER_READ):
            batch: list[Event] = []
            with self._env.read() as txn:
                compact = read_state(txn, t.state)[2]
                if positions[lo][0] < compact:
                    raise Compacted(positions[lo][0], compact)
                for r, s in positions[lo : lo + _EVENTS_PER_READ]:
                    here = REV.pack(r, s)
                    raw = txn.get(here, db=t.history)
                    if raw is None:
                        raise CorruptData(f"history lacks change ({r}, {s}) of key {kb!r}")
                    batch.append(_event(t, txn, here, unseal("history", here, raw), compact))
            yield from batch

    def leases(self) -> list[tuple[int, int]]:
        """(id, granted ttl) of every lease."""
        with self._env.read() as txn:
            return [
                (unpack_exact(U64, k, "lease id")[0],
                 unpack_exact(U64, unseal("leases", k, v), "lease ttl")[0])
                for k, v in txn.cursor(db=self._t.leases)
            ]

    def lease(self, lease_id: int) -> tuple[int, list[Key]] | None:
        """(granted ttl, attached keys) of a lease, None if it does not exist."""
        if type(lease_id) is not int or not 0 < lease_id < 1 << 63:
            return None
        lid = U64.pack(lease_id)
        with self._env.read() as txn:
            raw = txn.get(lid, db=self._t.leases)
            if raw is None:
                return None
            (ttl,) = unpack_exact(U64, unseal("leases", lid, raw), "lease ttl")
            keys: list[Key] = []
            cursor = txn.cursor(db=self._t.lease_keys)
            if cursor.set_range(lid):
                for k, v in cursor:
                    if k[:8] != lid:
                        break
                    v = unseal("lease_keys", k, v)
                    keys.append(_key_obj(k[8:], v[0] if v else 0))
            return ttl, keys


# --- Applier: the write side, one per write batch ----------------------------------------------


class Applier:
    """Applies wire operations in one LMDB write transaction, tracking the revision."""

    def __init__(
        self,
        txn: lmdb.Transaction[bytes],
        t: Tables,
        revision: int,
        compact: int,
        work: CompactionWork | None,
    ) -> None:
        self.txn = txn
        self.t = t
        self.revision = revision
        self.compact = compact
        self.work = work
        """The physical compaction still to do (None: the history is compacted to `compact`);
        replaced, never changed in place, so a commit sees a change by identity."""
        self._kv = txn.cursor(db=t.kv)
        # Bound methods of cursors reused by every put of the batch (the hot path). A put's
        # get and put of its key go through one cursor: LMDB then finds the key again on the
        # page the get left the cursor on, instead of searching the tree from its root.
        put_cursor = txn.cursor(db=t.kv)
        self._kv_get = put_cursor.get
        self._kv_put = put_cursor.put
        self._history_put = txn.cursor(db=t.history).put
        self._grave_pop = txn.cursor(db=t.graves).pop

    def apply(self, op: list[Any]) -> tuple[Result | Error, list[Event]]:
        """Apply one validated wire request; deterministic errors become the result."""
        code = op[0]
        events: list[Event] = []
        try:
            if code == OP_PUT:
                return self._put_request(op, events), events
            if code == OP_DELETE:
                rev = self.revision + 1
                res = self._delete(op, rev, 0, events)
                if res.deleted:
                    self.revision = rev
                    return res, events
                return DeleteResult(self.revision, 0), events
            if code == OP_TXN:
                return self._txn(op, events), events
            if code == OP_LEASE_GRANT:
                return self._lease_grant(op[1], op[2]), events
            if code == OP_LEASE_REVOKE:
                return self._lease_revoke(op[1], events), events
            if code == OP_COMPACTION:
                return self._compaction(op[1]), events
        except (LeaseNotFound, LeaseExists, Compacted, FutureRevision, BadProposal) as exc:
            return exc, []
        raise CorruptData(f"unknown operation {code!r}")

    # -- put / delete ---------------------------------------------------------------------

    def _lease_exists(self, lease: int) -> bool:
        return self.txn.get(U64.pack(lease), db=self.t.leases) is not None

    def apply_put(self, index: int, data: bytes) -> Applied:
        """Apply the entry at `index` whose data is a plain Put proposal (data[0] == PUT_TAG):
        decode_wire + apply, fused for the write hot path, with the same results."""
        # codec.split_put, inlined (the tests check that both paths give the same answers).
        n = len(data)
        if n > _MAX_DATA or n <= _PUT_HEAD:
            try:
                split_put(data)  # raises BadProposal with the reason
            except BadProposal as exc:
                return Applied(index, None, exc, [])
        _, member_id, seq, lease, pflags, klen = _unpack_put(data)
        end = _PUT_HEAD + klen
        if (not 0 < member_id <= MAX_ID or lease > MAX_ID or pflags > 3
                or not 0 < klen <= MAX_KEY_BYTES or n <= end or n - end > MAX_VALUE_BYTES):
            return Applied(index, None, BadProposal("malformed proposal: bad put header"), [])
        kb = data[_PUT_HEAD:end]
        key: Key
        if pflags & PUT_STR_KEY:
            try:
                key = kb.decode("utf-8")
            except UnicodeDecodeError:
                return Applied(index, None, BadProposal("malformed proposal: key is not UTF-8"),
                               [])
            flags = FLAG_STR
        else:
            key = kb
            flags = 0
        vbytes = data[end:]
        origin = (member_id, seq)
        if lease and self.txn.get(U64.pack(lease), db=self.t.leases) is None:
            return Applied(index, origin, LeaseNotFound(lease), [])
        try:
            value = _loads(vbytes, max_depth=MAX_VALUE_DEPTH)
        except Exception:
            try:
                value = decode_proposed_value(vbytes)  # raises BadProposal with the reason
            except BadProposal as exc:
                return Applied(index, origin, exc, [])
        rev = self.revision + 1
        events: list[Event] = []
        res = self._write(key, kb, flags, vbytes, value, lease, pflags & PUT_PREV_KV != 0, rev, 0,
                          events)
        self.revision = rev
        return Applied(index, origin, res, events)

    def _put_request(self, op: list[Any], events: list[Event]) -> PutResult:
        lease = op[3]
        if lease and not self._lease_exists(lease):
            raise LeaseNotFound(lease)
        try:
            value = _loads(op[2], max_depth=MAX_VALUE_DEPTH)
        except Exception:
            value = decode_proposed_value(op[2])  # raises BadProposal with the reason
        rev = self.revision + 1
        res = self._put(op, value, rev, 0, events)
        self.revision = rev
        return res

    def _put(
        self, op: list[Any], value: Any, rev: int, sub: int, events: list[Event]
    ) -> PutResult:
        _, key, vbytes, lease, want_prev = op
        if type(key) is str:
            return self._write(key, key.encode("utf-8"), FLAG_STR, vbytes, value, lease,
                               want_prev, rev, sub, events)
        return self._write(key, key, 0, vbytes, value, lease, want_prev, rev, sub, events)

    def _write(
        self,
        key: Key,
        kb: bytes,
        flags: int,
        vbytes: bytes,
        value: Any,
        lease: int,
        want_prev: bool,
        rev: int,
        sub: int,
        events: list[Event],
    ) -> PutResult:
        """Put key (kb its bytes, flags FLAG_STR when it is a str) = value (vbytes its CBOR)
        at (rev, sub); appends the event, returns the result."""
        old = self._kv_get(kb)
        prev_kv: KeyValue | None = None
        seed = crc32(kb)  # the checksums of the old and the new record start alike
        if old is None:
            create = rev
            version = 1
            old_lease = 0
            grave = self._grave_pop(kb)  # a re-created key: its chain goes on from the grave
            prev_rev, prev_sub = (0, 0) if grave is None else unpack_exact(
                REV, unseal("graves", kb, grave), "grave")
        else:
            n = len(old) - SUM_SIZE
            if n < 0 or crc32(old, seed) != CRC_RESIDUE:
                raise damaged("kv", kb)
            if n < _HEADER:
                raise CorruptData(f"record of key {kb!r} is shorter than its header")
            create, prev_rev, prev_sub, version, old_lease, old_flags = _unpack_record(old)
            try:
                old_value = _loads(
                    old[_HEADER:n] if n < 4096 else memoryview(old)[_HEADER:n],
                    max_depth=MAX_VALUE_DEPTH,
                )
            except Exception as exc:
                raise CorruptData(f"stored value of key {kb!r} does not decode: {exc}") from None
            prev_kv = _fast_kv(
                key if old_flags & FLAG_STR == flags else _key_obj(kb, old_flags),
                old_value, create, prev_rev, version, old_lease or None,
            )
            version += 1
        record = _pack_record(create, rev, sub, version, lease, flags) + vbytes
        self._kv_put(kb, record + _pack_sum(crc32(record, seed)))
        pos = _pack_rev(rev, sub)
        change = _pack_change(KIND_PUT, len(kb), prev_rev, prev_sub) + kb + record
        self._history_put(pos, change + _pack_sum(crc32(change, crc32(pos))), append=True)
        if old_lease != lease:
            t = self.t
            if old_lease:
                self.txn.delete(U64.pack(old_lease) + kb, db=t.lease_keys)
            if lease:
                lk = U64.pack(lease) + kb
                self.txn.put(lk, seal(lk, bytes((flags,))), db=t.lease_keys)
        kv = _fast_kv(key, value, create, rev, version, lease or None)
        events.append(_fast_event(_PUT, kv, prev_kv))
        return _fast_put_result(rev, prev_kv if want_prev else None)

    def _delete(self, op: list[Any], rev: int, sub: int, events: list[Event]) -> DeleteResult:
        _, key, end, want_prev = op
        start = _wire_bytes(key)
        txn = self.txn
        t = self.t
        victims: list[tuple[bytes, bytes]]
        if end is None:
            raw = txn.get(start, db=t.kv)
            victims = [] if raw is None else [(start, unseal("kv", start, raw))]
        else:
            stop = None if end == TO_THE_END else _wire_bytes(end)
            victims = []
            cursor = self._kv
            if cursor.set_range(start):
                for kb, raw in cursor:
                    if stop is not None and kb >= stop:
                        break
                    victims.append((kb, unseal("kv", kb, raw)))
        prevs: list[KeyValue] = []
        for kb, raw in victims:
            self._tombstone(kb, raw, rev, sub, events)
            prevs.append(events[-1].prev_kv)  # type: ignore[arg-type]
            sub += 1
        return DeleteResult(rev, len(victims), tuple(prevs) if want_prev else ())

    def _tombstone(self, kb: bytes, old: bytes, rev: int, sub: int, events: list[Event]) -> None:
        txn = self.txn
        t = self.t
        if len(old) < _HEADER:
            raise CorruptData(f"record of key {kb!r} is shorter than its header")
        _, prev_rev, prev_sub, _, old_lease, flags = _unpack_record(old)
        txn.delete(kb, db=t.kv)
        tomb = RECORD.pack(0, rev, sub, 0, 0, (flags & FLAG_STR) | FLAG_TOMBSTONE)
        pos = REV.pack(rev, sub)
        txn.put(pos, seal(pos, CHANGE.pack(KIND_DELETE, len(kb), prev_rev, prev_sub) + kb + tomb),
                db=t.history, append=True)
        txn.put(kb, seal(kb, pos), db=t.graves)
        if old_lease:
            txn.delete(U64.pack(old_lease) + kb, db=t.lease_keys)
        key = _key_obj(kb, flags)
        events.append(
            _fast_event(EventType.DELETE, _fast_kv(key, None, 0, rev, 0, None),
                        record_to_kv(kb, old))
        )

    # -- txn ------------------------------------------------------------------------------

    def _compare(self, cmp: list[Any]) -> bool:
        target, key, op, operand = cmp
        kb = _wire_bytes(key)
        raw = self.txn.get(kb, db=self.t.kv)
        if raw is not None:
            raw = unseal("kv", kb, raw)
        actual: Any
        if target == 0:
            if raw is None:
                return False  # etcd: any VALUE compare on a missing key fails, even !=
            actual = _value(raw)
            operand = decode_proposed_value(operand)
        elif raw is None:
            actual = 0
        else:
            create, mod, _, version, lease, _ = unpack_record(raw)
            actual = (0, version, create, mod, lease)[target]
        try:
            if op == 0:
                return bool(actual == operand)
            if op == 1:
                return bool(actual != operand)
            if op == 2:
                return bool(actual < operand)
            return bool(actual > operand)
        except TypeError:
            return False

    def _txn(self, op: list[Any], events: list[Event]) -> TxnResult:
        _, compares, success, failure = op
        succeeded = all(self._compare(c) for c in compares)
        branch = success if succeeded else failure
        current = self.revision
        values: list[Any] = []
        for item in branch:  # refuse the whole txn before changing anything, as etcd does
            if item[0] == OP_PUT:
                if item[3] and not self._lease_exists(item[3]):
                    raise LeaseNotFound(item[3])
                values.append(decode_proposed_value(item[2]))
            if item[0] == OP_GET and item[4] > 0:
                if item[4] > current:
                    raise FutureRevision(item[4], current)
                if item[4] < self.compact:
                    raise Compacted(item[4], self.compact)
        rev = current + 1
        sub = 0
        pending = iter(values)
        responses: list[PutResult | DeleteResult | RangeResult] = []
        for item in branch:
            code = item[0]
            if code == OP_PUT:
                responses.append(self._put(item, next(pending), rev, sub, events))
                sub += 1
            elif code == OP_DELETE:
                res = self._delete(item, rev, sub, events)
                sub += res.deleted
                responses.append(res)
            else:
                responses.append(run_range(self.txn, self.t, item, current, self.compact,
                                           pending=sub > 0))
        if sub:
            self.revision = rev
        final = self.revision
        return TxnResult(final, succeeded, tuple(
            r if r.revision == final else replace(r, revision=final) for r in responses
        ))

    # -- leases ---------------------------------------------------------------------------

    def _lease_grant(self, lease_id: int, ttl: int) -> LeaseGrantResult:
        if self._lease_exists(lease_id):
            raise LeaseExists(lease_id)
        lid = U64.pack(lease_id)
        self.txn.put(lid, seal(lid, U64.pack(ttl)), db=self.t.leases)
        return LeaseGrantResult(lease_id, ttl, self.revision)

    def _lease_revoke(self, lease_id: int, events: list[Event]) -> LeaseRevokeResult:
        lid = U64.pack(lease_id)
        txn = self.txn
        t = self.t
        if not txn.delete(lid, db=t.leases):
            raise LeaseNotFound(lease_id)
        cursor = txn.cursor(db=t.lease_keys)
        keys: list[bytes] = []
        if cursor.set_range(lid):
            for k in cursor.iternext(values=False):
                if k[:8] != lid:
                    break
                keys.append(k[8:])
        rev = self.revision + 1
        for sub, kb in enumerate(keys):
            raw = txn.get(kb, db=t.kv)
            if raw is None:
                raise CorruptData(f"lease {lease_id:#x} lists key {kb!r}, which does not exist")
            self._tombstone(kb, unseal("kv", kb, raw), rev, sub, events)
        if keys:
            self.revision = rev
        return LeaseRevokeResult(self.revision, len(keys))

    # -- compaction -----------------------------------------------------------------------

    def _compaction(self, rev: int) -> CompactResult:
        """Record the new compact revision (reads below it fail from now on) and the physical
        work it leaves, which compact_step does later in bounded steps. A compaction that
        arrives while earlier work is pending takes it over: the scan goes on to the new
        target (the result is the same as compacting to each target in turn, see
        compact_step), resuming no later than the old target's own revision, whose
        tombstones were kept for the old target and go for the new one."""
        if rev > self.revision:
            raise FutureRevision(rev, self.revision)
        if rev <= self.compact:
            raise Compacted(rev, self.compact)
        work = self.work
        if work is None:
            self.work = CompactionWork(self.compact, self.compact, 0, rev)
        else:
            resume = min((work.rev, work.sub), (work.target, 0))
            self.work = CompactionWork(work.physical, resume[0], resume[1], rev)
        self.compact = rev
        return CompactResult(self.revision)

    def compact_step(self, max_changes: int) -> bool:
        """Visit up to `max_changes` history changes of the pending compaction work, in
        position order, and drop what the compaction drops; True while work remains.

        Compacting to T keeps every change at T or above, and below T each key's latest change
        at or below T if it is a put. A change at or below T therefore makes its key's previous
        change (its chain pointer) garbage, and a tombstone below T is garbage itself (with its
        grave, when it is still the key's head). So each visited change costs at most a
        pointer delete, and for a tombstone its own delete and a grave look-up, whatever the
        length of its key's chain: the work of a step is bounded. Changes below the work's
        start need no visit: the previous compaction left at most each key's latest change
        below it, and the first change of the key after it, if at or below T, is visited and
        drops it. Writes made meanwhile are above T and never visited; a key re-created
        meanwhile continues its chain from a tombstone that this drops (a dangling pointer
        below the compact revision, which readers take as the chain's end, as always).
        Deterministic, and idempotent per change, like every batch operation."""
        work = self.work
        if work is None:
            return False
        txn = self.txn
        history = self.t.history
        target = work.target
        end = _pack_rev(target + 1, 0)
        news = _pack_rev(target, 0)  # tombstones from here on are kept
        cursor = txn.cursor(db=history)
        visited: list[tuple[bytes, int, bytes, int, int]] = []
        here = b""
        more = cursor.set_range(_pack_rev(work.rev, work.sub))
        while more:
            here = cursor.key()
            if here >= end:
                more = False
            elif len(visited) == max_changes:
                break
            else:
                kind, kb, prev_rev, prev_sub, _ = unpack_change(
                    unseal("history", here, cursor.value()))
                visited.append((here, kind, kb, prev_rev, prev_sub))
                more = cursor.next()
        for pos, kind, kb, prev_rev, prev_sub in visited:  # no cursor is used past here
            if prev_rev:
                txn.delete(_pack_rev(prev_rev, prev_sub), db=history)
            if kind == KIND_DELETE and pos < news:
                txn.delete(pos, db=history)
                grave = txn.get(kb, db=self.t.graves)
                if grave is not None and unseal("graves", kb, grave) == pos:
                    txn.delete(kb, db=self.t.graves)
        if more:
            rev, sub = REV.unpack(here)
            self.work = work._replace(rev=rev, sub=sub)
            return True
        self.work = None
        return False
