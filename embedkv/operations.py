"""Each operation of the public API defined once, for Store and AsyncStore alike.

A write is an ``Op``: the request to propose (its arguments checked when the Op is built) and
how the applied result becomes what the caller gets. Store runs an Op by waiting on the
member's future, AsyncStore by awaiting it; neither repeats an operation's logic. The read
helpers here build the Get of ``range()`` and check the arguments reads share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .storage.codec import MAX_PROPOSAL_BYTES, MAX_TXN_OPS, encode_value
from .storage.requests import (
    Compaction,
    Compare,
    Delete,
    DeleteResult,
    Get,
    Key,
    KeyValue,
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

_T = TypeVar("_T")
_R = TypeVar("_R")

FIRST = b"\x00"
TO_END = b"\x00"
"""As a Get's or Delete's `end`, "to the end of the keyspace"; with key FIRST it selects every
key (etcd's convention: the empty key is not a valid key)."""

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


# --- argument checks and reads --------------------------------------------------------------


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


def check_revision(revision: int | None) -> None:
    """A read's revision: None or 0 mean the current one (etcd: revision <= 0 reads the latest,
    but a negative one is always a mistake here, so it is refused rather than read as 0)."""
    if revision is None:
        return
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise TypeError(f"revision must be an int or None, not {type(revision).__name__}")
    if revision < 0:
        raise ValueError(f"revision must be >= 0 (0 or None: the current one), not {revision}")


def check_flag(name: str, value: object) -> None:
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


def range_request(
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
    check_revision(revision)
    check_flag("keys_only", keys_only)
    order, target = _parse_sort(sort)
    if prefix is not None:
        if end is not None:
            raise TypeError("end= goes with start=, not with prefix=")
        if prefix in ("", b""):
            return Get(FIRST, end=TO_END, limit=limit, revision=revision, sort_order=order,
                       sort_target=target, keys_only=keys_only)
        return Get(key_bytes(prefix), prefix=True, limit=limit, revision=revision,
                   sort_order=order, sort_target=target, keys_only=keys_only)
    assert start is not None
    raw_start = key_bytes(start)
    if end is None:
        # [start, end of the keyspace): every key >= start.
        return Get(raw_start, end=TO_END, limit=limit, revision=revision, sort_order=order,
                   sort_target=target, keys_only=keys_only)
    return Get(raw_start, end=key_bytes(end), limit=limit, revision=revision, sort_order=order,
               sort_target=target, keys_only=keys_only)


def count_request(prefix: Key) -> Get:
    """The Get of ``count()``: how many keys start with `prefix` ("" for every key)."""
    if prefix in ("", b""):
        return Get(FIRST, end=TO_END, count_only=True)
    return Get(key_bytes(prefix), prefix=True, count_only=True)


# --- writes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op(Generic[_R]):
    """One write: the request to propose, and how its applied result becomes the caller's."""

    request: Any
    shape: Callable[[Any], _R]


def _as_is(result: Any) -> Any:
    return result


def _nothing(result: Any) -> None:
    return None


def _succeeded(result: TxnResult) -> bool:
    return result.succeeded


def _deleted(result: DeleteResult) -> Deleted:
    return Deleted(result.deleted, result.revision, result.prev_kvs)


def put(key: Key, value: Any, lease: int | None, prev_kv: bool) -> Op[PutResult]:
    """`lease`: the id (``leases.lease_id`` of the caller's argument)."""
    return Op(Put(key, value, lease=lease, prev_kv=prev_kv), _as_is)


def delete(key: Key, prefix: bool, prev_kv: bool) -> Op[Deleted]:
    check_flag("prefix", prefix)
    check_flag("prev_kv", prev_kv)
    return Op(Delete(key, prefix=prefix, prev_kv=prev_kv), _deleted)


def compact(revision: int) -> Op[None]:
    return Op(Compaction(revision), _nothing)


def txn(
    compare: Iterable[Compare], success: Iterable[TxnOp], failure: Iterable[TxnOp]
) -> Op[TxnResult]:
    return Op(_txn_request(compare, success, failure), _as_is)


def compare_and_set(key: Key, expected: Any, new: Any) -> Op[bool]:
    return Op(Txn(compare=(Value(key) == expected,), success=(Put(key, new),)), _succeeded)


def create(key: Key, value: Any, lease: int | None) -> Op[bool]:
    request = Txn(compare=(Version(key) == 0,), success=(Put(key, value, lease=lease),))
    return Op(request, _succeeded)


def setdefault(key: Key, default: Any) -> Op[Any]:
    """The value of `key`, storing `default` first if absent (one txn)."""

    def shape(result: TxnResult) -> Any:
        if result.succeeded:
            return default
        response = result.responses[0]
        assert isinstance(response, RangeResult)
        return response.kvs[0].value if response.kvs else default

    request = Txn(compare=(Version(key) == 0,), success=(Put(key, default),), failure=(Get(key),))
    return Op(request, shape)


def update(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Op[None]]:
    """``update()``'s transactions, written in turn (see _update_requests)."""
    return [Op(request, _nothing) for request in _update_requests(args, kwargs)]


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
