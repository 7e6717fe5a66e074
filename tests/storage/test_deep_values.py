"""A value nested far past the limit is refused before cbor2's encoder recurses into it (which
kills the process with a C stack overflow at a few thousand levels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

import embedkv
from embedkv.storage.codec import MAX_VALUE_DEPTH, encode_proposal, encode_value
from embedkv.storage.requests import Compare, CompareOp, CompareTarget, Put, Txn


def _nested(levels: int, make: Any = lambda inner: [inner]) -> Any:
    deep: Any = 1
    for _ in range(levels):
        deep = make(deep)
    return deep


@pytest.mark.parametrize("make", [
    lambda inner: [inner],
    lambda inner: (inner,),
    lambda inner: {"k": inner},
    lambda inner: {(1,): inner},
])
def test_100000_levels_are_refused(make: Any) -> None:
    with pytest.raises(ValueError, match=f"deeper than {MAX_VALUE_DEPTH} levels"):
        encode_value(_nested(100_000, make))


def test_nested_tags_are_refused() -> None:
    # Fewer levels: freeing 100,000 nested CBORTags overflows the C stack in cbor2 itself.
    with pytest.raises(ValueError, match=f"deeper than {MAX_VALUE_DEPTH} levels"):
        encode_value(_nested(2_000, lambda inner: cbor2.CBORTag(4000, [inner])))


def test_the_limit_itself_is_accepted() -> None:
    assert cbor2.loads(encode_value(_nested(MAX_VALUE_DEPTH))) == _nested(MAX_VALUE_DEPTH)
    with pytest.raises(ValueError, match="cannot be stored"):
        encode_value(_nested(MAX_VALUE_DEPTH + 1))


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        encode_value({"a": loop})


def test_store_refuses_it_with_nothing_written(tmp_path: Path) -> None:
    deep = _nested(100_000)
    with embedkv.open(tmp_path / "d") as s:
        s.put("before", 1)
        revision = s.revision
        with pytest.raises(ValueError, match="nests deeper"):
            s.put("k", deep)
        with pytest.raises(ValueError, match="nests deeper"):
            s["k"] = deep
        with pytest.raises(ValueError, match="nests deeper"):
            encode_proposal(1, 1, Txn((Compare(CompareTarget.VALUE, "k", CompareOp.EQUAL,
                                               deep),), (Put("k", 1),), ()))
        assert s.revision == revision
        assert "k" not in s
        s.put("after", 2)  # the store goes on
        assert s.revision == revision + 1
