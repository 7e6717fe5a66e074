"""The key space against a plain-Python reference model (tests/storage/model.py), driven by
hypothesis: puts, deletes, ranges, transactions, leases, compaction and reads at past
revisions, with batches of several entries per write transaction and reopens in between."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from embedkv.errors import Compacted, FutureRevision
from embedkv.storage.codec import encode_proposal
from embedkv.storage.requests import (
    Compaction,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Request,
    SortOrder,
    SortTarget,
    Txn,
    key_bytes,
)

from .harness import Member
from .model import Model

KEYS: list[str | bytes] = [
    "a", "b", "ab", "b/1", "b/2", "c", "é", b"a", b"b/1", b"\x00", b"\xff", b"\xff\xff"
]
keys = st.sampled_from(KEYS)
values = st.one_of(
    st.integers(-3, 3),
    st.text(alphabet="xyz", max_size=2),
    st.binary(max_size=2),
    st.none(),
    st.booleans(),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.text(alphabet="k", max_size=1), st.integers(0, 2), max_size=1),
)
leases = st.sampled_from([None, None, 1, 2, 3])


@st.composite
def puts(draw: Any) -> Put:
    return Put(draw(keys), draw(values), lease=draw(leases), prev_kv=draw(st.booleans()))


@st.composite
def deletes(draw: Any) -> Delete:
    key = draw(keys)
    mode = draw(st.sampled_from(["single", "prefix", "range", "all"]))
    prev = draw(st.booleans())
    if mode == "prefix":
        return Delete(key, prefix=True, prev_kv=prev)
    if mode == "range":
        return Delete(key, end=draw(keys), prev_kv=prev)
    if mode == "all":
        return Delete(key, end=b"\x00", prev_kv=prev)
    return Delete(key, prev_kv=prev)


def gets(max_revision: int) -> st.SearchStrategy[Get]:
    @st.composite
    def build(draw: Any) -> Get:
        key = draw(keys)
        mode = draw(st.sampled_from(["single", "prefix", "range", "all"]))
        end = None
        prefix = False
        if mode == "prefix":
            prefix = True
        elif mode == "range":
            end = draw(keys)
        elif mode == "all":
            end = b"\x00"
        return Get(
            key, prefix=prefix, end=end,
            limit=draw(st.sampled_from([None, 1, 2])),
            revision=draw(st.one_of(st.none(), st.integers(-1, max_revision + 1))),
            sort_order=draw(st.sampled_from(list(SortOrder))),
            sort_target=draw(st.sampled_from(list(SortTarget))),
            keys_only=draw(st.booleans()),
            count_only=draw(st.booleans()),
        )
    return build()


@st.composite
def compares(draw: Any) -> Compare:
    target = draw(st.sampled_from(list(CompareTarget)))
    operand: Any
    if target is CompareTarget.VALUE:
        operand = draw(values)
    elif target is CompareTarget.LEASE:
        operand = draw(st.sampled_from([None, 0, 1, 2]))
    else:
        operand = draw(st.integers(0, 6))
    return Compare(target, draw(keys), draw(st.sampled_from(list(CompareOp))), operand)


class KeySpaceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="embedkv-model-")
        self.member = Member(self.tmp + "/data")
        self.model = Model()

    def teardown(self) -> None:
        self.member.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _apply(self, requests: list[Request]) -> None:
        applied = self.member.propose_many(requests)
        for request, got in zip(requests, applied, strict=True):
            before = len(self.model.events)
            want = self.model.apply(request)
            assert type(got.result) is type(want), (request, got.result, want)
            if isinstance(want, Exception):
                assert str(got.result) == str(want)
            else:
                assert got.result == want, (request, got.result, want)
            assert got.events == self.model.events[before:]

    @rule(put=puts())
    def put(self, put: Put) -> None:
        self._apply([put])

    @rule(batch=st.lists(st.one_of(puts(), deletes()), min_size=2, max_size=5))
    def batch(self, batch: list[Request]) -> None:
        self._apply(batch)

    @rule(delete=deletes())
    def delete(self, delete: Delete) -> None:
        self._apply([delete])

    @rule(data=st.data())
    def txn(self, data: st.DataObject) -> None:
        ops = st.one_of(puts(), deletes(), gets(self.model.revision))
        txn = Txn(
            tuple(data.draw(st.lists(compares(), max_size=2))),
            tuple(data.draw(st.lists(ops, max_size=3))),
            tuple(data.draw(st.lists(ops, max_size=2))),
        )
        try:
            encode_proposal(1, 1, txn)
        except ValueError as exc:
            assert "duplicate key" in str(exc)
            return
        self._apply([txn])

    @rule(lease_id=st.integers(1, 3), ttl=st.integers(1, 100))
    def grant(self, lease_id: int, ttl: int) -> None:
        self._apply([LeaseGrant(lease_id, ttl)])

    @rule(lease_id=st.integers(1, 3))
    def revoke(self, lease_id: int) -> None:
        self._apply([LeaseRevoke(lease_id)])

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        rev = data.draw(st.integers(1, self.model.revision + 1))
        self._apply([Compaction(rev)])

    @precondition(lambda self: self.model.revision > 1)
    @rule()
    def reopen(self) -> None:
        self.member.reopen()

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        get = data.draw(gets(self.model.revision))
        try:
            want: Any = self.model.range(get)
        except (Compacted, FutureRevision) as exc:
            want = exc
        try:
            got: Any = self.member.dd.kv.range(get)
        except (Compacted, FutureRevision) as exc:
            got = exc
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
        else:
            assert got == want, (get, got, want)

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(1, self.model.revision + 1))
        try:
            want: Any = self.model.replay(start)
        except Compacted as exc:
            want = exc
        try:
            got: Any = list(self.member.dd.kv.events(start, b"\x00", end=b"\x00"))
        except Compacted as exc:
            got = exc
        if isinstance(want, Exception):
            assert type(got) is type(want)
        else:
            assert got == want

    @rule(key=keys, data=st.data())
    def replay_key(self, key: Any, data: st.DataObject) -> None:
        start = data.draw(st.integers(max(1, self.model.compact), self.model.revision + 1))
        kb = key_bytes(key)
        want = [e for e in self.model.replay(start) if key_bytes(e.key) == kb]
        assert list(self.member.dd.kv.events(start, key)) == want

    @invariant()
    def current_state(self) -> None:
        kv = self.member.dd.kv
        assert kv.revision == self.model.revision
        assert kv.compact_revision == self.model.compact
        for key in KEYS:
            assert kv.get(key) == self.model.live.get(key_bytes(key))
        assert sorted(kv.leases()) == sorted(self.model.leases.items())
        for lease_id in (1, 2, 3):
            got = kv.lease(lease_id)
            if lease_id not in self.model.leases:
                assert got is None
            else:
                attached = sorted(
                    kb for kb, v in self.model.live.items() if v.lease == lease_id
                )
                assert got is not None
                assert got[0] == self.model.leases[lease_id]
                assert [key_bytes(k) for k in got[1]] == attached


KeySpaceMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestKeySpace = KeySpaceMachine.TestCase
