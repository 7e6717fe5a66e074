"""Comparisons on a key that does not exist, as etcd 3.4 evaluates them: every VALUE compare
fails (even `!=`), and Version, CreateRevision, ModRevision and Lease compare against 0."""

from __future__ import annotations

from pathlib import Path

import pytest

import embedkv
from embedkv.storage.requests import (
    Compare,
    CreateRevision,
    LeaseOf,
    ModRevision,
    Put,
    Txn,
    TxnResult,
    Value,
    Version,
)

from .harness import Member


@pytest.mark.parametrize("compare", [
    Value("gone") != "x", Value("gone") == None, Value("gone") != None,  # noqa: E711
    Value("gone") < "zzz", Value("gone") > "", Value("gone") > 0,
])
def test_value_compares_on_a_missing_key_fail(member: Member, compare: Compare) -> None:
    res = member.propose(Txn((compare,), (Put("ok", 1),), (Put("failed", 1),)))
    assert isinstance(res, TxnResult) and not res.succeeded
    assert member.dd.kv.get("failed") is not None and member.dd.kv.get("ok") is None


@pytest.mark.parametrize(("compare", "succeeds"), [
    (Version("gone") == 0, True), (Version("gone") < 1, True), (Version("gone") != 0, False),
    (CreateRevision("gone") == 0, True), (ModRevision("gone") == 0, True),
    (ModRevision("gone") > 0, False), (LeaseOf("gone") == 0, True),
])
def test_other_compares_on_a_missing_key_see_0(
    member: Member, compare: Compare, succeeds: bool
) -> None:
    res = member.propose(Txn((compare,), (), ()))
    assert isinstance(res, TxnResult) and res.succeeded is succeeds


def test_after_a_delete_the_key_is_missing_again(member: Member) -> None:
    member.propose(Put("k", "x"))
    before = member.propose(Txn((Value("k") != "y",), (), ()))
    member.propose(embedkv.Delete("k"))
    after = member.propose(Txn((Value("k") != "y",), (), ()))
    assert isinstance(before, TxnResult) and isinstance(after, TxnResult)
    assert before.succeeded and not after.succeeded


def test_store_compare_and_set_on_a_missing_key(tmp_path: Path) -> None:
    with embedkv.open(tmp_path / "d") as s:
        res = s.txn(compare=[embedkv.Value("k") != "x"], success=[embedkv.Put("k", 1)])
        assert not res.succeeded
        assert not s.compare_and_set("k", None, 1)
        assert "k" not in s
        s.put("k", None)
        assert s.compare_and_set("k", None, 1) and s["k"] == 1
