"""Bytes in and out of the storage layer: proposals, values and the on-disk records.

Everything that crosses a trust boundary (a Raft entry from a peer, a page read from disk, a
snapshot chunk) is decoded here, behind size and nesting limits, and fails with CorruptData
rather than with whatever the decoder happened to raise.

A proposal is a CBOR array ``[member_id, seq, op]``. A value travels inside it as a CBOR *byte
string* holding the value's own CBOR encoding, so the state machine stores exactly the bytes the
proposer encoded without decoding and re-encoding them on apply.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final

import cbor2

from embedkv.errors import CorruptData
from embedkv.raft.types import ConfState, Entry, EntryType, HardState

from .requests import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Compaction,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    Key,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Request,
    SortOrder,
    SortTarget,
    Txn,
    key_bytes,
    prefix_end,
)

MAX_VALUE_DEPTH: Final = 128
"""Deepest nesting of arrays, maps and tags accepted in a value (checked on encode and decode)."""

MAX_TXN_OPS: Final = 128
"""Compares, and operations per branch, in one transaction (etcd's --max-txn-ops default)."""

MAX_PROPOSAL_BYTES: Final = 2 * MAX_VALUE_BYTES
"""An encoded proposal's size limit; bigger data is refused before it is decoded."""

MAX_ID: Final = (1 << 63) - 1
"""Member ids, lease ids and revisions are positive int64s, as in etcd."""

_PROPOSAL_DEPTH: Final = 8
_U64: Final = 1 << 64

# --- operation codes inside a proposal -----------------------------------------------------

OP_PUT: Final = 1
OP_DELETE: Final = 2
OP_GET: Final = 3
OP_TXN: Final = 4
OP_LEASE_GRANT: Final = 5
OP_LEASE_REVOKE: Final = 6
OP_COMPACTION: Final = 7

SORT_ORDERS: Final = (SortOrder.NONE, SortOrder.ASCEND, SortOrder.DESCEND)
SORT_TARGETS: Final = (
    SortTarget.KEY,
    SortTarget.VERSION,
    SortTarget.CREATE,
    SortTarget.MOD,
    SortTarget.VALUE,
)
COMPARE_TARGETS: Final = (
    CompareTarget.VALUE,
    CompareTarget.VERSION,
    CompareTarget.CREATE,
    CompareTarget.MOD,
    CompareTarget.LEASE,
)
COMPARE_OPS: Final = (CompareOp.EQUAL, CompareOp.NOT_EQUAL, CompareOp.LESS, CompareOp.GREATER)

TO_THE_END: Final = b""
"""A range's `end` on the wire meaning "every key from `key` on" (an empty key is invalid)."""


# --- values ----------------------------------------------------------------------------------


_NESTING: Final = (list, tuple, dict, set, frozenset, cbor2.CBORTag)
"""What cbor2's encoder recurses into (subclasses included, as it encodes them)."""
_LEAF: Final = frozenset({str, int, float, bool, bytes, type(None)})
"""Exact types that never nest: one set lookup instead of an isinstance walk of _NESTING."""


def check_depth(value: object) -> None:
    """Refuse nesting deeper than MAX_VALUE_DEPTH before cbor2 recurses into it: its C encoder
    overflows the C stack (the process dies) at a few thousand levels. Iterative, so no depth
    can exhaust our own stack; a container that contains itself counts as too deep.

    Each array, map or tag counts one level, which cbor2's decoder counts at least too, so
    everything this refuses would fail the decode check below anyway."""
    level: list[Any] = [value]
    depth = 1
    leaf = _LEAF
    nesting = _NESTING
    while level:
        if depth > MAX_VALUE_DEPTH:
            raise ValueError(
                f"value cannot be stored: it nests deeper than {MAX_VALUE_DEPTH} levels of "
                "lists, tuples, dicts, sets and tags (or contains itself)"
            )
        below: list[Any] = []
        for obj in level:  # one level at a time: memory is the widest level, not the depth
            if type(obj) is dict or isinstance(obj, dict):
                for item in obj.values():
                    if type(item) not in leaf and isinstance(item, nesting):
                        below.append(item)
                for item in obj:
                    if type(item) not in leaf and isinstance(item, nesting):
                        below.append(item)
            elif isinstance(obj, cbor2.CBORTag):
                if isinstance(obj.value, nesting):
                    below.append(obj.value)
            else:
                for item in obj:
                    if type(item) not in leaf and isinstance(item, nesting):
                        below.append(item)
        level = below
        depth += 1


def encode_value(value: Any) -> bytes:
    """Encode a user value, refusing what could not be decoded again under the safe limits."""
    if isinstance(value, _NESTING):
        check_depth(value)
    try:
        data = cbor2.dumps(value)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"value of type {type(value).__name__} cannot be encoded: {exc}") from None
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(f"value is {len(data)} bytes encoded; the limit is {MAX_VALUE_BYTES}")
    # Containers and tags (major types 4, 5, 6) may nest; check that they decode within limits.
    if data[0] >= 0x80 and data[0] < 0xE0:
        try:
            cbor2.loads(data, max_depth=MAX_VALUE_DEPTH)
        except Exception as exc:
            raise ValueError(f"value cannot be stored: {exc}") from None
    return data


def decode_proposed_value(data: bytes) -> Any:
    """Decode a value carried in a proposal (BadProposal if it is garbage)."""
    try:
        return cbor2.loads(data, max_depth=MAX_VALUE_DEPTH)
    except Exception as exc:
        raise BadProposal(f"malformed proposal: value does not decode: {exc}") from None


def decode_value(data: bytes | memoryview) -> Any:
    """Decode a stored value; garbage gives CorruptData, never a crash or a huge allocation."""
    if len(data) > MAX_VALUE_BYTES:
        raise CorruptData(f"stored value is {len(data)} bytes, over the {MAX_VALUE_BYTES} limit")
    try:
        return cbor2.loads(data, max_depth=MAX_VALUE_DEPTH)
    except Exception as exc:
        raise CorruptData(f"stored value does not decode: {exc}") from None


# --- proposals -------------------------------------------------------------------------------


def _check_id(name: str, value: object, *, zero_ok: bool = False) -> int:
    if type(value) is not int or not (0 if zero_ok else 1) <= value <= MAX_ID:
        low = 0 if zero_ok else 1
        raise ValueError(f"{name} must be an int in [{low}, 2**63-1], not {value!r}")
    return value


def _check_key(key: object) -> Key:
    key_bytes(key)
    return key  # type: ignore[return-value]


def _range_end(key: Key, prefix: bool, end: object) -> Key | None:
    """The wire `end`: None for a single key, TO_THE_END, or the (validated) end key."""
    if prefix:
        if end is not None:
            raise ValueError("give either prefix=True or end, not both")
        stop = prefix_end(key_bytes(key))
        return TO_THE_END if stop is None else stop
    if end is None:
        return None
    if end in (b"\x00", "\x00"):  # etcd: end "\0" means every key >= key
        return TO_THE_END
    return _check_key(end)


def _selection(key: object, prefix: object, end: object) -> tuple[Key, Key | None]:
    """A Get's or Delete's wire (key, end). With prefix=True the empty key selects every key,
    as etcd's WithPrefix("") does (and as store.delete("", prefix=True) always has)."""
    if prefix is True and end is None and type(key) in (str, bytes) and not key:
        return _FIRST_KEY, TO_THE_END
    checked = _check_key(key)
    return checked, _range_end(checked, _check_bool("prefix", prefix), end)


_FIRST_KEY: Final = b"\x00"
"""The smallest valid key: from it to TO_THE_END is the whole key space."""


def _check_bool(name: str, value: object) -> bool:
    if type(value) is not bool:
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def _encode_put(req: Put) -> list[Any]:
    lease = 0 if req.lease is None else _check_id("lease", req.lease, zero_ok=True)
    return [OP_PUT, _check_key(req.key), encode_value(req.value), lease,
            _check_bool("prev_kv", req.prev_kv)]


def _encode_delete(req: Delete) -> list[Any]:
    key, end = _selection(req.key, req.prefix, req.end)
    return [OP_DELETE, key, end, _check_bool("prev_kv", req.prev_kv)]


def encode_get(req: Get) -> list[Any]:
    key, end = _selection(req.key, req.prefix, req.end)
    limit = 0 if req.limit is None else req.limit
    if type(limit) is not int or not 0 <= limit <= MAX_ID:
        raise ValueError(f"limit must be a non-negative int or None, not {req.limit!r}")
    revision = 0 if req.revision is None else req.revision
    if type(revision) is not int or revision > MAX_ID:
        raise ValueError(f"revision must be an int or None, not {req.revision!r}")
    if not isinstance(req.sort_order, SortOrder) or not isinstance(req.sort_target, SortTarget):
        raise TypeError("sort_order and sort_target must be SortOrder and SortTarget members")
    return [OP_GET, key, end, limit,
            max(revision, 0), SORT_ORDERS.index(req.sort_order),
            SORT_TARGETS.index(req.sort_target), _check_bool("keys_only", req.keys_only),
            _check_bool("count_only", req.count_only)]


def _encode_compare(cmp: Compare) -> list[Any]:
    if not isinstance(cmp, Compare):
        raise TypeError(f"txn compares must be Compare, not {type(cmp).__name__}")
    if not isinstance(cmp.target, CompareTarget) or not isinstance(cmp.op, CompareOp):
        raise TypeError("a Compare needs a CompareTarget and a CompareOp")
    key = _check_key(cmp.key)
    operand: Any
    if cmp.target is CompareTarget.VALUE:
        operand = encode_value(cmp.operand)
    elif cmp.target is CompareTarget.LEASE:
        operand = 0 if cmp.operand is None else _check_id("lease", cmp.operand, zero_ok=True)
    else:
        operand = cmp.operand
        if type(operand) is not int or not -MAX_ID <= operand <= MAX_ID:
            raise ValueError(f"{cmp.target.value} compares need an int, not {operand!r}")
    return [COMPARE_TARGETS.index(cmp.target), key, COMPARE_OPS.index(cmp.op), operand]


def _check_branch_writes(puts: list[bytes], deletes: list[tuple[bytes, bytes | None]]) -> None:
    """Refuse a branch that writes one key twice (etcd: "duplicate key given in txn request").

    `deletes` are [start, end) ranges, end None meaning "to the end"; deletes may overlap.
    """
    if len(set(puts)) != len(puts):
        raise ValueError("duplicate key given in txn request: a key is put twice")
    for kb in puts:
        for start, end in deletes:
            if start <= kb and (end is None or kb < end):
                raise ValueError(f"duplicate key given in txn request: {kb!r} is put and deleted")


def _delete_span(start: bytes, end: Key | None) -> tuple[bytes, bytes | None]:
    """A wire delete's [start, end) in bytes."""
    if end is None:
        return start, start + b"\x00"
    if end == TO_THE_END:
        return start, None
    return start, end.encode() if isinstance(end, str) else end


def _check_wire_branch(ops: list[list[Any]]) -> None:
    puts: list[bytes] = []
    deletes: list[tuple[bytes, bytes | None]] = []
    for op in ops:
        key = op[1]
        kb = key.encode() if isinstance(key, str) else key
        if op[0] == OP_PUT:
            puts.append(kb)
        elif op[0] == OP_DELETE:
            deletes.append(_delete_span(kb, op[2]))
    _check_branch_writes(puts, deletes)


def _encode_branch(ops: object, name: str) -> list[Any]:
    if not isinstance(ops, tuple | list):
        raise TypeError(f"txn {name} must be a tuple of Put, Delete and Get")
    if len(ops) > MAX_TXN_OPS:
        raise ValueError(f"txn {name} has {len(ops)} operations; the limit is {MAX_TXN_OPS}")
    out: list[Any] = []
    for op in ops:
        if isinstance(op, Put):
            out.append(_encode_put(op))
        elif isinstance(op, Delete):
            out.append(_encode_delete(op))
        elif isinstance(op, Get):
            out.append(encode_get(op))
        else:
            raise TypeError(f"txn operations must be Put, Delete or Get, not {type(op).__name__}")
    _check_wire_branch(out)
    return out


def _encode_txn(req: Txn) -> list[Any]:
    if not isinstance(req.compare, tuple | list):
        raise TypeError("txn compare must be a tuple of Compare")
    if len(req.compare) > MAX_TXN_OPS:
        raise ValueError(f"txn has {len(req.compare)} compares; the limit is {MAX_TXN_OPS}")
    return [OP_TXN, [_encode_compare(c) for c in req.compare],
            _encode_branch(req.success, "success"), _encode_branch(req.failure, "failure")]


def encode_request(request: Request) -> list[Any]:
    """Validate a request and turn it into its wire form (TypeError/ValueError when invalid)."""
    if isinstance(request, Put):
        return _encode_put(request)
    if isinstance(request, Delete):
        return _encode_delete(request)
    if isinstance(request, Txn):
        return _encode_txn(request)
    if isinstance(request, LeaseGrant):
        ttl = request.ttl
        if type(ttl) is not int or not 1 <= ttl <= MAX_ID:
            raise ValueError(f"lease ttl must be a positive int, not {ttl!r}")
        return [OP_LEASE_GRANT, _check_id("lease id", request.id), ttl]
    if isinstance(request, LeaseRevoke):
        return [OP_LEASE_REVOKE, _check_id("lease id", request.id)]
    if isinstance(request, Compaction):
        return [OP_COMPACTION, _check_id("compaction revision", request.revision)]
    raise TypeError(f"not a request: {type(request).__name__}")


PUT_PROPOSAL: Final = struct.Struct(">BQQQBH")
"""A plain Put's proposal header (the write hot path skips CBOR for it): tag PUT_TAG, member_id,
seq, lease, flags (PUT_PREV_KV, PUT_STR_KEY), key length; the key and the value's CBOR follow.
Any other proposal is a CBOR array, whose first byte is 0x83, never PUT_TAG."""
PUT_TAG: Final = 0x01
PUT_PREV_KV: Final = 1
PUT_STR_KEY: Final = 2


def _encode_put_proposal(member_id: int, seq: int, req: Put) -> bytes:
    # The common case (str or bytes key, lease None or an int, prev_kv a bool) without building
    # the wire op; anything else takes _encode_put, which raises the right error in the right
    # order (lease, key, value, prev_kv).
    key = req.key
    lease = req.lease
    prev = req.prev_kv
    kflags = PUT_STR_KEY
    if type(key) is str:
        try:
            kb = key.encode("utf-8")
        except UnicodeEncodeError:
            kb = b""
    elif type(key) is bytes:
        kb = key
        kflags = 0
    else:
        kb = b""
    if lease is None:
        lease = 0
    if (0 < len(kb) <= MAX_KEY_BYTES and type(lease) is int and 0 <= lease <= MAX_ID
            and type(prev) is bool):
        return (PUT_PROPOSAL.pack(PUT_TAG, member_id, seq, lease,
                                  kflags | (PUT_PREV_KV if prev else 0), len(kb))
                + kb + encode_value(req.value))
    op = _encode_put(req)
    wkey: Key = op[1]
    kb = wkey.encode("utf-8") if isinstance(wkey, str) else wkey
    flags = (PUT_PREV_KV if op[4] else 0) | (PUT_STR_KEY if isinstance(wkey, str) else 0)
    value: bytes = op[2]
    return PUT_PROPOSAL.pack(PUT_TAG, member_id, seq, op[3], flags, len(kb)) + kb + value


_PUT_HEAD: Final = PUT_PROPOSAL.size
_unpack_put: Final = PUT_PROPOSAL.unpack_from
_MAX_DATA: Final = MAX_PROPOSAL_BYTES + 64


def split_put(data: bytes) -> tuple[int, int, Key, bytes, bytes, int, int, bool]:
    """Check a plain Put proposal (data[0] == PUT_TAG) and split it, without building a wire op:
    (member_id, seq, key, key bytes, value CBOR, lease, key flags (FLAG_STR or 0), prev_kv).

    The write hot path applies it from these directly (``Applier.apply_put``); decode_wire
    builds the wire op from them. BadProposal when the data is not a valid Put.
    """
    n = len(data)
    if n > _MAX_DATA:
        raise _corrupt(f"{n} bytes; the limit is {MAX_PROPOSAL_BYTES}")
    if n <= _PUT_HEAD:
        raise _corrupt("truncated put")
    _, member_id, seq, lease, flags, klen = _unpack_put(data)
    end = _PUT_HEAD + klen
    if (not 0 < member_id <= MAX_ID or lease > MAX_ID or flags > 3 or not 0 < klen <= MAX_KEY_BYTES
            or n <= end or n - end > MAX_VALUE_BYTES):
        raise _corrupt("bad put header")
    kb = data[_PUT_HEAD:end]
    if flags & PUT_STR_KEY:
        try:
            return (member_id, seq, kb.decode("utf-8"), kb, data[end:], lease, FLAG_STR,
                    flags & PUT_PREV_KV != 0)
        except UnicodeDecodeError:
            raise _corrupt("key is not UTF-8") from None
    return member_id, seq, kb, kb, data[end:], lease, 0, flags & PUT_PREV_KV != 0


def _decode_put_proposal(data: bytes) -> tuple[int, int, list[Any]]:
    member_id, seq, key, _, value, lease, _, prev_kv = split_put(data)
    return member_id, seq, [OP_PUT, key, value, lease, prev_kv]


def encode_proposal(member_id: int, seq: int, request: Request) -> bytes:
    """The Raft entry data for `request`; validates everything before anything is written."""
    _check_id("member_id", member_id)
    if type(seq) is not int or not 0 <= seq < _U64:
        raise ValueError(f"seq must be an int in [0, 2**64), not {seq!r}")
    if type(request) is Put:
        return _encode_put_proposal(member_id, seq, request)
    data = cbor2.dumps([member_id, seq, encode_request(request)])
    if len(data) > MAX_PROPOSAL_BYTES:
        raise ValueError(f"request is {len(data)} bytes; the limit is {MAX_PROPOSAL_BYTES}")
    return data


# --- decoding proposals: strict structural checks, CorruptData on anything else -------------


class BadProposal(CorruptData):
    """Raft entry data that is not a valid proposal. Every member decodes the same bytes the
    same way, so the state machine records this as the entry's result and moves on."""


def _corrupt(why: str) -> BadProposal:
    return BadProposal(f"malformed proposal: {why}")


def _wire_key(key: object) -> Key:
    if type(key) is str:
        if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise _corrupt("bad key length")
        return key
    if type(key) is bytes:
        if not key or len(key) > MAX_KEY_BYTES:
            raise _corrupt("bad key length")
        return key
    raise _corrupt(f"key of type {type(key).__name__}")


def _wire_end(end: object) -> Key | None:
    if end is None:
        return None
    if end == TO_THE_END:
        return TO_THE_END
    return _wire_key(end)


def _wire_int(value: object, low: int = 0, high: int = MAX_ID) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _corrupt(f"bad integer {value!r}")
    return value


def _wire_bool(value: object) -> bool:
    if type(value) is not bool:
        raise _corrupt("bad flag")
    return value


def _wire_bytes(value: object) -> bytes:
    if type(value) is not bytes or len(value) > MAX_VALUE_BYTES:
        raise _corrupt("bad value bytes")
    return value


def _wire_list(value: object, length: int | None = None) -> list[Any]:
    if type(value) is not list or (length is not None and len(value) != length):
        raise _corrupt("bad structure")
    return value


def check_op(op: object, *, in_txn: bool = False) -> list[Any]:
    """Validate one decoded wire operation in place and return it (CorruptData otherwise)."""
    ops = _wire_list(op)
    if not ops:
        raise _corrupt("empty operation")
    code = ops[0]
    if code == OP_PUT and len(ops) == 5:
        _wire_key(ops[1])
        _wire_bytes(ops[2])
        _wire_int(ops[3])
        _wire_bool(ops[4])
    elif code == OP_DELETE and len(ops) == 4:
        _wire_key(ops[1])
        _wire_end(ops[2])
        _wire_bool(ops[3])
    elif code == OP_GET and len(ops) == 9 and in_txn:
        _wire_key(ops[1])
        _wire_end(ops[2])
        _wire_int(ops[3])
        _wire_int(ops[4])
        _wire_int(ops[5], 0, len(SORT_ORDERS) - 1)
        _wire_int(ops[6], 0, len(SORT_TARGETS) - 1)
        _wire_bool(ops[7])
        _wire_bool(ops[8])
    elif code == OP_TXN and len(ops) == 4 and not in_txn:
        compares = _wire_list(ops[1])
        if len(compares) > MAX_TXN_OPS:
            raise _corrupt("too many compares")
        for cmp in compares:
            c = _wire_list(cmp, 4)
            target = _wire_int(c[0], 0, len(COMPARE_TARGETS) - 1)
            _wire_key(c[1])
            _wire_int(c[2], 0, len(COMPARE_OPS) - 1)
            if target == 0:
                _wire_bytes(c[3])
            else:
                _wire_int(c[3], -MAX_ID)
        for branch in (ops[2], ops[3]):
            items = _wire_list(branch)
            if len(items) > MAX_TXN_OPS:
                raise _corrupt("too many txn operations")
            for item in items:
                check_op(item, in_txn=True)
            try:
                _check_wire_branch(items)
            except ValueError as exc:
                raise _corrupt(str(exc)) from None
    elif code == OP_LEASE_GRANT and len(ops) == 3 and not in_txn:
        _wire_int(ops[1], 1)
        _wire_int(ops[2], 1)
    elif code in (OP_LEASE_REVOKE, OP_COMPACTION) and len(ops) == 2 and not in_txn:
        _wire_int(ops[1], 1)
    else:
        raise _corrupt(f"unknown operation {code!r}")
    return ops


def decode_wire(data: bytes | memoryview) -> tuple[int, int, list[Any]]:
    """Decode a proposal into (member_id, seq, wire op) without decoding the values in it."""
    if data and data[0] == PUT_TAG:
        return _decode_put_proposal(bytes(data))
    if len(data) > _MAX_DATA:
        raise _corrupt(f"{len(data)} bytes; the limit is {MAX_PROPOSAL_BYTES}")
    try:
        decoded = cbor2.loads(data, max_depth=_PROPOSAL_DEPTH)
    except Exception as exc:
        raise _corrupt(f"does not decode: {exc}") from None
    top = _wire_list(decoded, 3)
    member_id = _wire_int(top[0], 1)
    seq = _wire_int(top[1], 0, _U64 - 1)
    return member_id, seq, check_op(top[2])


def _request_end(end: Key | None) -> Key | None:
    """Wire `end` back to a request's `end` (prefix ranges come back as [key, end) ranges)."""
    return b"\x00" if end == TO_THE_END else end


def wire_to_request(op: list[Any]) -> Put | Delete | Get | Request:
    """Rebuild the request dataclass from a validated wire op (values are decoded here)."""
    code = op[0]
    if code == OP_PUT:
        return Put(op[1], decode_proposed_value(op[2]), op[3] or None, op[4])
    if code == OP_DELETE:
        return Delete(op[1], end=_request_end(op[2]), prev_kv=op[3])
    if code == OP_GET:
        return Get(op[1], end=_request_end(op[2]), limit=op[3] or None, revision=op[4] or None,
                   sort_order=SORT_ORDERS[op[5]], sort_target=SORT_TARGETS[op[6]],
                   keys_only=op[7], count_only=op[8])
    if code == OP_TXN:
        compares = tuple(
            Compare(COMPARE_TARGETS[c[0]], c[1], COMPARE_OPS[c[2]],
                    decode_proposed_value(c[3]) if c[0] == 0 else c[3])
            for c in op[1]
        )
        return Txn(compares, tuple(wire_to_request(o) for o in op[2]),  # type: ignore[misc]
                   tuple(wire_to_request(o) for o in op[3]))  # type: ignore[misc]
    if code == OP_LEASE_GRANT:
        return LeaseGrant(op[1], op[2])
    if code == OP_LEASE_REVOKE:
        return LeaseRevoke(op[1])
    return Compaction(op[1])


def decode_proposal(data: bytes | memoryview) -> tuple[int, int, Request]:
    """Decode Raft entry data into (member_id, seq, request); CorruptData on garbage."""
    member_id, seq, op = decode_wire(data)
    return member_id, seq, wire_to_request(op)  # type: ignore[return-value]


# --- on-disk records -------------------------------------------------------------------------

U64: Final = struct.Struct(">Q")
U64X2: Final = struct.Struct(">QQ")
U64X3: Final = struct.Struct(">QQQ")
U32: Final = struct.Struct(">I")

RECORD: Final = struct.Struct(">QQIQQB")
"""A key's record header: create_rev, mod_rev, sub, version, lease, flags; value bytes follow."""
FLAG_STR: Final = 1
"""The key was written as str (read back as str)."""
FLAG_TOMBSTONE: Final = 2
"""The record marks a deletion (history only)."""

REV: Final = struct.Struct(">QI")
"""A change's position: (revision, sub) — the history key, and a grave's value."""
CHANGE: Final = struct.Struct(">BHQI")
"""A history value's header: kind, key length, previous change (rev, sub); key and record follow."""
KIND_PUT: Final = 1
KIND_DELETE: Final = 2
COMPACTION_WORK: Final = struct.Struct(">QQIQ")
"""The physical compaction still to do (main database, key b"compacting", present only while
some is): the revision history is physically compacted to, the history position (revision,
sub) the work resumes at, and the target (the compact revision)."""

LOG_ENTRY: Final = struct.Struct(">QB")
"""A raft_log value's header: term, entry type; the entry data follows."""


SUM: Final = struct.Struct("<I")
"""The checksum every value of the state-machine tables ends with (format 4): CRC-32 (zlib)
of the record's LMDB key followed by the value, little-endian, so that the CRC-32 of
key + value + checksum is the constant CRC_RESIDUE and a check is one crc32 call."""
SUM_SIZE: Final = SUM.size
SUMS_FROM_FORMAT: Final = 4
"""The first data-dir and snapshot format whose values carry SUM."""
CRC_RESIDUE: Final = 0x2144DF1C
crc32: Final = zlib.crc32
_pack_sum: Final = SUM.pack
SUMMED_TABLES: Final = ("kv", "history", "graves", "leases", "lease_keys", "raft_log")
"""The tables whose values carry a checksum: the state machine and the Raft log, every record
that holds user data (docs/internals/storage.md)."""


def seal(key: bytes, value: bytes) -> bytes:
    """`value` followed by its checksum (see SUM)."""
    return value + _pack_sum(crc32(value, crc32(key)))


def unseal(table: str, key: bytes, raw: bytes) -> bytes:
    """A stored value without its checksum; CorruptData naming the table and key if the
    checksum does not match (the record was damaged on disk)."""
    if len(raw) < SUM_SIZE or crc32(raw, crc32(key)) != CRC_RESIDUE:
        raise damaged(table, key)
    return raw[:-SUM_SIZE]


def damaged(table: str, key: bytes) -> CorruptData:
    return CorruptData(
        f"the {table} record of key {key!r} fails its checksum: the data file is damaged "
        "(embedkv check reports all damage)"
    )


def unpack_record(data: bytes) -> tuple[int, int, int, int, int, int]:
    """Header fields of a stored record; CorruptData if it is too short."""
    if len(data) < RECORD.size:
        raise CorruptData(f"key record is {len(data)} bytes, shorter than its header")
    create, mod, sub, version, lease, flags = RECORD.unpack_from(data)
    return create, mod, sub, version, lease, flags


def unpack_change(data: bytes) -> tuple[int, bytes, int, int, bytes]:
    """A history value as (kind, key, prev_rev, prev_sub, record)."""
    if len(data) < CHANGE.size:
        raise CorruptData("history record is shorter than its header")
    kind, klen, prev_rev, prev_sub = CHANGE.unpack_from(data)
    start = CHANGE.size + klen
    if kind not in (KIND_PUT, KIND_DELETE) or klen == 0 or len(data) < start + RECORD.size:
        raise CorruptData("history record is malformed")
    return kind, data[CHANGE.size : start], prev_rev, prev_sub, data[start:]


def encode_entry(entry: Entry) -> bytes:
    return LOG_ENTRY.pack(entry.term, int(entry.type)) + entry.data


def decode_entry(index: int, data: bytes) -> Entry:
    if len(data) < LOG_ENTRY.size:
        raise CorruptData(f"raft log entry {index} is truncated")
    term, kind = LOG_ENTRY.unpack_from(data)
    try:
        entry_type = EntryType(kind)
    except ValueError:
        raise CorruptData(f"raft log entry {index} has unknown type {kind}") from None
    return Entry(term=term, index=index, type=entry_type, data=data[LOG_ENTRY.size :])


def encode_hard_state(hs: HardState) -> bytes:
    try:
        return U64X3.pack(hs.term, hs.vote, hs.commit)
    except struct.error:
        raise ValueError(f"hard state fields must be ints in [0, 2**64): {hs}") from None


def decode_hard_state(data: bytes) -> HardState:
    if len(data) != U64X3.size:
        raise CorruptData("hard state record has the wrong size")
    term, vote, commit = U64X3.unpack(data)
    return HardState(term, vote, commit)


def encode_conf_state(cs: ConfState) -> bytes:
    voters, learners = sorted(cs.voters), sorted(cs.learners)
    try:
        return struct.pack(f">II{len(voters) + len(learners)}Q", len(voters), len(learners),
                           *voters, *learners)
    except struct.error:
        raise ValueError(f"member ids must be ints in [0, 2**64): {cs}") from None


def decode_conf_state(data: bytes) -> ConfState:
    if len(data) < 8:
        raise CorruptData("conf state record is truncated")
    nv, nl = struct.unpack_from(">II", data)
    if len(data) != 8 + 8 * (nv + nl):
        raise CorruptData("conf state record has the wrong size")
    ids = struct.unpack_from(f">{nv + nl}Q", data, 8)
    return ConfState(frozenset(ids[:nv]), frozenset(ids[nv:]))


def unpack_exact(fmt: struct.Struct, data: bytes, what: str) -> tuple[int, ...]:
    """Unpack a fixed-size record, CorruptData if its size is wrong."""
    if len(data) != fmt.size:
        raise CorruptData(f"{what} record has the wrong size ({len(data)} bytes)")
    return fmt.unpack(data)
