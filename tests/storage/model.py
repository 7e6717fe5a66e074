"""A plain-Python reference model of the etcd key space, written for clarity, not speed: every
revision's whole state is kept, so a read at a past revision is a dictionary lookup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from embedkv.errors import Compacted, Error, FutureRevision, LeaseNotFound
from embedkv.storage import LeaseExists
from embedkv.storage.requests import (
    Compaction,
    CompactResult,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteResult,
    Event,
    EventType,
    Get,
    KeyValue,
    LeaseGrant,
    LeaseGrantResult,
    LeaseRevoke,
    LeaseRevokeResult,
    Put,
    PutResult,
    RangeResult,
    Request,
    Result,
    SortOrder,
    SortTarget,
    Txn,
    TxnResult,
    key_bytes,
    prefix_end,
)

State = dict[bytes, KeyValue]


def _span(key: Any, prefix: bool, end: Any) -> tuple[bytes, bytes | None, bool]:
    """(start, end, single): end None = to the end."""
    start = key_bytes(key)
    if prefix:
        return start, prefix_end(start), False
    if end is None:
        return start, None, True
    if end in (b"\x00", "\x00"):
        return start, None, False
    return start, key_bytes(end), False


def _in(kb: bytes, span: tuple[bytes, bytes | None, bool]) -> bool:
    start, end, single = span
    if single:
        return kb == start
    return start <= kb and (end is None or kb < end)


def _cmp(actual: Any, op: CompareOp, operand: Any) -> bool:
    try:
        if op is CompareOp.EQUAL:
            return bool(actual == operand)
        if op is CompareOp.NOT_EQUAL:
            return bool(actual != operand)
        if op is CompareOp.LESS:
            return bool(actual < operand)
        return bool(actual > operand)
    except TypeError:
        return False


@dataclass
class Model:
    revision: int = 1
    compact: int = 0
    live: State = field(default_factory=dict)
    states: dict[int, State] = field(default_factory=lambda: {1: {}})
    leases: dict[int, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    # --- reads ---------------------------------------------------------------------------

    def range(
        self, get: Get, *, state: State | None = None, header: int | None = None
    ) -> RangeResult:
        current = self.revision
        rev = get.revision or 0
        if rev <= 0:
            data = self.live if state is None else state
        elif rev > current:
            raise FutureRevision(rev, current)
        elif rev < self.compact:
            raise Compacted(rev, self.compact)
        else:
            data = self.states[rev]
        span = _span(get.key, get.prefix, get.end)
        rows = [data[k] for k in sorted(data) if _in(k, span)]
        if span[1] is not None and not span[2] and span[1] <= span[0]:
            rows = []
        header = current if header is None else header
        if get.count_only:
            return RangeResult(header, (), len(rows))
        order, target = get.sort_order, get.sort_target
        if target is not SortTarget.KEY and order is SortOrder.NONE:
            order = SortOrder.ASCEND
        desc = order is SortOrder.DESCEND
        if target is SortTarget.KEY:
            if desc:
                rows = rows[::-1]
        elif target is SortTarget.VALUE:
            try:
                rows = sorted(rows, key=lambda kv: kv.value, reverse=desc)
            except TypeError:
                rows = sorted(rows, key=lambda kv: cbor2.dumps(kv.value), reverse=desc)
        else:
            attr = {SortTarget.VERSION: "version", SortTarget.CREATE: "create_revision",
                    SortTarget.MOD: "mod_revision"}[target]
            rows = sorted(rows, key=lambda kv: getattr(kv, attr), reverse=desc)
        count = len(rows)
        if get.limit:
            rows = rows[: get.limit]
        if get.keys_only:
            rows = [KeyValue(kv.key, None, kv.create_revision, kv.mod_revision, kv.version,
                             kv.lease) for kv in rows]
        return RangeResult(header, tuple(rows), count, count > len(rows))

    def replay(self, start: int) -> list[Event]:
        """What dd.kv.events(start, every key) gives: prev_kv only where rev-1 >= compact."""
        if start < self.compact:
            raise Compacted(start, self.compact)
        out = []
        for ev in self.events:
            if ev.revision < start:
                continue
            if ev.prev_kv is not None and ev.revision <= self.compact:
                ev = Event(ev.type, ev.kv, None)
            out.append(ev)
        return out

    # --- writes --------------------------------------------------------------------------

    def apply(self, request: Request) -> Result | Error:
        try:
            if isinstance(request, Put):
                return self._single(lambda rev: self._put(request, rev, True))
            if isinstance(request, Delete):
                return self._single(lambda rev: self._delete(request, rev))
            if isinstance(request, Txn):
                return self._txn(request)
            if isinstance(request, LeaseGrant):
                if request.id in self.leases:
                    raise LeaseExists(request.id)
                self.leases[request.id] = request.ttl
                return LeaseGrantResult(request.id, request.ttl, self.revision)
            if isinstance(request, LeaseRevoke):
                return self._revoke(request.id)
            if isinstance(request, Compaction):
                if request.revision > self.revision:
                    raise FutureRevision(request.revision, self.revision)
                if request.revision <= self.compact:
                    raise Compacted(request.revision, self.compact)
                self.compact = request.revision
                return CompactResult(self.revision)
        except (LeaseNotFound, LeaseExists, Compacted, FutureRevision) as exc:
            return exc
        raise AssertionError(request)

    def _single(self, fn: Any) -> Result:
        rev = self.revision + 1
        before = len(self.events)
        res: Result = fn(rev)
        if len(self.events) > before:
            self._commit(rev)
        elif isinstance(res, DeleteResult):
            res = DeleteResult(self.revision, 0)
        return res

    def _commit(self, rev: int) -> None:
        self.revision = rev
        self.states[rev] = dict(self.live)

    def _put(self, req: Put, rev: int, check_lease: bool) -> PutResult:
        if check_lease and req.lease and req.lease not in self.leases:
            raise LeaseNotFound(req.lease)
        kb = key_bytes(req.key)
        old = self.live.get(kb)
        key = req.key if isinstance(req.key, str) else bytes(req.key)
        kv = KeyValue(key, req.value, old.create_revision if old else rev, rev,
                      old.version + 1 if old else 1, req.lease or None)
        self.live[kb] = kv
        self.events.append(Event(EventType.PUT, kv, old))
        return PutResult(rev, old if req.prev_kv else None)

    def _delete(self, req: Delete, rev: int) -> DeleteResult:
        span = _span(req.key, req.prefix, req.end)
        victims = [k for k in sorted(self.live) if _in(k, span)]
        prevs = []
        for kb in victims:
            old = self.live.pop(kb)
            prevs.append(old)
            self.events.append(Event(EventType.DELETE, KeyValue(old.key, None, 0, rev, 0), old))
        return DeleteResult(rev, len(victims), tuple(prevs) if req.prev_kv else ())

    def _revoke(self, lease_id: int) -> LeaseRevokeResult:
        if lease_id not in self.leases:
            raise LeaseNotFound(lease_id)
        del self.leases[lease_id]
        rev = self.revision + 1
        victims = [k for k in sorted(self.live) if self.live[k].lease == lease_id]
        for kb in victims:
            old = self.live.pop(kb)
            self.events.append(Event(EventType.DELETE, KeyValue(old.key, None, 0, rev, 0), old))
        if victims:
            self._commit(rev)
        return LeaseRevokeResult(self.revision, len(victims))

    def _compare_ok(self, txn: Txn) -> bool:
        for c in txn.compare:
            kv = self.live.get(key_bytes(c.key))
            if c.target is CompareTarget.VALUE:
                if kv is None:
                    return False  # etcd: a VALUE compare on a missing key always fails
                actual = kv.value
            elif kv is None:
                actual = 0
            else:
                actual = {CompareTarget.VERSION: kv.version, CompareTarget.CREATE:
                          kv.create_revision, CompareTarget.MOD: kv.mod_revision,
                          CompareTarget.LEASE: kv.lease or 0}[c.target]
            operand = 0 if c.target is CompareTarget.LEASE and c.operand is None else c.operand
            if not _cmp(actual, c.op, operand):
                return False
        return True

    def _txn(self, txn: Txn) -> TxnResult:
        ok = self._compare_ok(txn)
        branch = txn.success if ok else txn.failure
        current = self.revision
        for op in branch:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise LeaseNotFound(op.lease)
            if isinstance(op, Get) and op.revision and op.revision > 0:
                if op.revision > current:
                    raise FutureRevision(op.revision, current)
                if op.revision < self.compact:
                    raise Compacted(op.revision, self.compact)
        rev = current + 1
        before = len(self.events)
        responses: list[Any] = []
        for op in branch:
            if isinstance(op, Put):
                responses.append(self._put(op, rev, False))
            elif isinstance(op, Delete):
                responses.append(self._delete(op, rev))
            else:
                responses.append(self.range(op))
        if len(self.events) > before:
            self._commit(rev)
        final = self.revision
        fixed: list[PutResult | DeleteResult | RangeResult] = []
        for r in responses:
            if isinstance(r, PutResult):
                fixed.append(PutResult(final, r.prev))
            elif isinstance(r, DeleteResult):
                fixed.append(DeleteResult(final, r.deleted, r.prev_kvs))
            else:
                fixed.append(RangeResult(final, r.kvs, r.count, r.more))
        return TxnResult(final, ok, tuple(fixed))
