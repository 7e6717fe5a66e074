"""A healthy data dir always reopens; a truncated one is refused before LMDB touches it.

LMDB may leave its last allocated pages unwritten (pages allocated and freed in one
transaction), so the data file can end before its last page number; the open-time check
allows exactly the free pages past the end (docs/internals/storage.md, "Truncated files")."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedkv
from embedkv.errors import CorruptData
from embedkv.storage import DataDir
from embedkv.storage.lmdbenv import Env
from embedkv.storage.lmdbfile import free_pages, needed_size, read_meta, walk
from embedkv.storage.mvcc import Tables
from embedkv.storage.requests import Put

from .harness import Member
from .oneshot import compact_at_once


def test_issue_script_reopens(tmp_path: Path) -> None:
    """The issue's script: its last commit leaves free pages past the end of the file. That
    commit was a compaction done in one go (as a Compaction's apply did before issue 13), which
    frees pages it allocated; it is now run by the test, from the old code (oneshot.py)."""
    rnd = random.Random(7)
    path = tmp_path / "m"
    with embedkv.open(path) as s:
        for r in range(3):
            for i in range(1500):
                s.put(f"key/{i:05d}", {"i": i, "r": r, "s": "".join(
                    rnd.choice("abcdef") for _ in range(rnd.randrange(10, 300)))})
        revision = s.revision
    env = Env(str(path), durable=True)
    try:
        with env.env.begin(write=True) as txn:
            compact_at_once(txn, Tables(env), revision - 1000)
    finally:
        env.close()
    data = str(path / "data.mdb")
    fd = os.open(data, os.O_RDONLY)
    try:
        meta = read_meta(fd, data)
        free = free_pages(fd, data, meta)
    finally:
        os.close(fd)
    # The situation the old check refused: the last allocated page lies past the end...
    assert (meta.last_pgno + 1) * meta.page_size > os.path.getsize(data)
    # ...and it is free: every page is a meta page, reachable from a B-tree, or free.
    walked, _ = walk(data)
    assert meta.last_pgno in free
    assert 2 + walked.branch_pages + walked.leaf_pages + len(free) == meta.last_pgno + 1
    with embedkv.open(path) as s:
        assert s.revision == revision
        assert s.get("key/01499") is not None


def test_truncated_file_is_refused_before_it_is_mapped(tmp_path: Path) -> None:
    """Cutting off the last page still in use is refused (it would SIGBUS when touched)."""
    m = Member(tmp_path)
    for i in range(300):
        m.propose(Put(f"key{i:04d}", "v" * 200))
    m.close()
    data = str(tmp_path / "data.mdb")
    need, have = needed_size(data)
    assert need <= have
    walked, _ = walk(data)
    psize = 4096
    assert (walked.max_pgno + 1) * psize <= need
    os.truncate(data, walked.max_pgno * psize)  # the highest page a B-tree uses is cut off
    with pytest.raises(CorruptData, match="truncated"):
        DataDir.open(tmp_path)


_step = st.one_of(
    st.tuples(st.just("put"), st.integers(50, 600), st.integers(10, 300), st.integers(1, 3)),
    st.tuples(st.just("delete"), st.integers(0, 9), st.just(0), st.just(0)),
    st.tuples(st.just("lease"), st.integers(1, 50), st.integers(10, 300), st.just(0)),
    st.tuples(st.just("revoke"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("compact"), st.integers(0, 600), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(_step, min_size=1, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_random_workloads_always_reopen(ops: list[tuple[str, int, int, int]],
                                        seed: int) -> None:
    """Random runs of puts (values 10-300 bytes, as the issue's script), prefix deletes, keys
    on leases, revokes and compactions through the Store, closed and reopened in between and
    at the end: every reopen succeeds and reads back the model."""
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d")
        s = embedkv.open(path, durable=False)
        model: dict[str, str] = {}
        leases: list[tuple[embedkv.Lease, list[str]]] = []
        compacted = 1
        try:
            for op, n, size, rounds in ops:
                if op == "put":
                    for _ in range(rounds):
                        for i in range(n):
                            value = "x" * rnd.randrange(size // 2, size + 1)
                            s.put(f"k/{i % 10}/{i:04d}", value)
                            model[f"k/{i % 10}/{i:04d}"] = value
                elif op == "delete":
                    s.delete(f"k/{n}/", prefix=True)
                    model = {k: v for k, v in model.items() if not k.startswith(f"k/{n}/")}
                elif op == "lease":
                    lease = s.lease(600, keepalive=False)
                    keys = [f"l/{lease.id}/{i:03d}" for i in range(n)]
                    for k in keys:
                        s.put(k, "y" * size, lease=lease.id)
                        model[k] = "y" * size
                    leases.append((lease, keys))
                elif op == "revoke" and leases:
                    lease, keys = leases.pop(0)
                    lease.revoke()
                    for k in keys:
                        model.pop(k, None)
                elif op == "compact" and s.revision - n > compacted:
                    compacted = s.revision - n
                    s.compact(compacted)
                elif op == "reopen":
                    leases.clear()  # their keys stay: the leases outlive the test
                    s.close()
                    s = embedkv.open(path, durable=False)
            s.close()
            s = embedkv.open(path, durable=False)
            assert dict(s.items()) == model
        finally:
            s.close()
