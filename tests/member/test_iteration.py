"""Iterating a store (keys, values, items) reads page after page at one revision: each page
must cost what it returns, whatever follows it, or a full iteration turns quadratic. Counted
in LMDB records touched (cursor steps and lookups), not timed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest

import embedkv
import embedkv.store

from .conftest import TICK

PAGE = 50
N = 2000


class _Counter:
    def __init__(self) -> None:
        self.touched = 0
        self.reads: list[int] = []  # records touched by each read transaction


class _CountingCursor:
    """Counts every record a cursor positions on or yields."""

    def __init__(self, cursor: lmdb.Cursor[bytes], counter: _Counter) -> None:
        self._cursor = cursor
        self._counter = counter

    def set_range(self, key: bytes) -> bool:
        self._counter.touched += 1
        return bool(self._cursor.set_range(key))

    def key(self) -> bytes:
        return bytes(self._cursor.key())

    def value(self) -> bytes:
        return bytes(self._cursor.value())

    def next(self) -> bool:
        self._counter.touched += 1
        return bool(self._cursor.next())

    def __iter__(self) -> Iterator[Any]:
        for item in self._cursor:
            self._counter.touched += 1
            yield item

    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
        for item in self._cursor.iternext(keys=keys, values=values):
            self._counter.touched += 1
            yield item


class _CountingTxn:
    def __init__(self, txn: lmdb.Transaction[bytes], counter: _Counter) -> None:
        self._txn = txn
        self._counter = counter

    def get(self, key: bytes, default: Any = None, db: Any = None) -> Any:
        self._counter.touched += 1
        return self._txn.get(key, default, db=db)

    def cursor(self, db: Any = None) -> _CountingCursor:
        return _CountingCursor(self._txn.cursor(db=db), self._counter)


class _CountingEnv:
    """Stands in for the key space's Env: its read transactions count what they touch."""

    def __init__(self, env: Any, counter: _Counter) -> None:
        self._env = env
        self._counter = counter

    @contextmanager
    def read(self) -> Iterator[_CountingTxn]:
        before = self._counter.touched
        with self._env.read() as txn:
            yield _CountingTxn(txn, self._counter)
        self._counter.reads.append(self._counter.touched - before)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[embedkv.Store,
                                                                               _Counter]]:
    monkeypatch.setattr(embedkv.store, "_PAGE", PAGE)
    with embedkv.open(tmp_path / "d", durable=False, tick_interval=TICK) as store:
        store.update({f"k/{i:05d}": i for i in range(N)})
        counter = _Counter()
        kv = store._m.data_dir.kv
        monkeypatch.setattr(kv, "_env", _CountingEnv(kv._env, counter))
        yield store, counter


@pytest.mark.parametrize("view", ["keys", "values", "items"])
def test_each_page_touches_only_its_own_records(
    counted: tuple[embedkv.Store, _Counter], view: str
) -> None:
    store, counter = counted
    got = [x for x in getattr(store, view)()]  # list() would count the keys first (len)
    assert len(got) == N
    pages = -(-N // PAGE)
    assert len(counter.reads) in (pages, pages + 1)  # + the read that finds no more
    # A page reads its PAGE records, one more to know whether more follow, and the meta state.
    assert max(counter.reads) <= PAGE + 3, counter.reads
    assert counter.touched <= N + 3 * len(counter.reads)


def test_pages_at_a_past_revision_stay_linear(counted: tuple[embedkv.Store, _Counter]) -> None:
    """Once writers move on, later pages are read at the iteration's revision (through the
    history): still a cost per page proportional to the page and the changes in it."""
    store, counter = counted
    it = iter(store)
    first = [next(it) for _ in range(PAGE)]
    store["k/00000x"] = "new key inside the first page"  # not seen: after the snapshot
    store[f"k/{N - 1:05d}"] = "changed"  # the last key: one newer version to walk past
    del store[f"k/{N // 2:05d}"]  # a grave in the middle
    rest = list(it)
    assert first + rest == [f"k/{i:05d}" for i in range(N)]
    later = counter.reads[1:]
    # Per key: its cursor step, its head lookup; per page: the meta state, two cursors' seeks,
    # and the one changed or deleted key's history records.
    assert max(later) <= 2 * (PAGE + 1) + 8, later
    assert counter.touched <= 2 * N + 10 * len(counter.reads)
