"""The compaction embedkv did before issue 13, in one go inside the apply of its entry: the
reference the bounded steps (``WriteBatch.compact_step``) are checked against.

This is that code (``Applier._compact`` and ``_compact_key`` at 291087a), made into functions
of a write transaction, and `compact_at_once`, which records the compact revision the way the
apply did.
"""

from __future__ import annotations

import lmdb

from embedkv.errors import CorruptData
from embedkv.storage.codec import CHANGE, KIND_DELETE, REV, U64X3, unpack_change, unseal
from embedkv.storage.lmdbenv import COMPACTING, META_STATE
from embedkv.storage.mvcc import Tables, _change, _head, read_state


def compact_at_once(txn: lmdb.Transaction[bytes], t: Tables, rev: int) -> None:
    """Compact the key space of `txn` to `rev` as a Compaction's apply used to, and record
    it (a dir with pending work from the new code is refused: the old code knew none)."""
    if txn.get(COMPACTING, db=t.state) is not None:
        raise ValueError("the old compaction cannot run over pending compaction work")
    applied, revision, old = read_state(txn, t.state)
    assert old < rev <= revision
    _compact(txn, t, old, rev)
    txn.put(META_STATE, U64X3.pack(applied, revision, rev), db=t.state)


def _compact(txn: lmdb.Transaction[bytes], t: Tables, old: int, rev: int) -> None:
    end = REV.pack(rev, 0)
    pos = REV.pack(old, 0)
    while True:
        keys: dict[bytes, None] = {}
        cursor = txn.cursor(db=t.history)
        more = cursor.set_range(pos)
        while more and len(keys) < 4096:
            here = cursor.key()
            if here >= end:
                more = False
                break
            raw = unseal("history", here, cursor.value())
            if len(raw) < CHANGE.size:
                raise CorruptData("history record is malformed")
            klen = CHANGE.unpack_from(raw)[1]
            keys[raw[CHANGE.size : CHANGE.size + klen]] = None
            more = cursor.next()
        if more:
            pos = cursor.key()
        for kb in keys:
            _compact_key(txn, t, kb, rev)
        if not more:
            break


def _compact_key(txn: lmdb.Transaction[bytes], t: Tables, kb: bytes, rev: int) -> None:
    r, s, live = _head(txn, t, kb)
    newest = True
    while r:
        change = _change(txn, t, r, s, rev)
        if change is None:
            return
        kind, _, prev_r, prev_s, _ = change
        if r <= rev:
            break
        r, s, newest = prev_r, prev_s, False
    else:
        return
    keep = (r, s)
    while prev_r:
        here = REV.pack(prev_r, prev_s)
        raw = txn.get(here, db=t.history)
        if raw is None:
            break
        _, _, prev_r, prev_s, _ = unpack_change(unseal("history", here, raw))
        txn.delete(here, db=t.history)
    if kind == KIND_DELETE and keep[0] < rev:
        txn.delete(REV.pack(*keep), db=t.history)
        if newest and live is None:
            txn.delete(kb, db=t.graves)
