"""A genuinely full disk (a small tmpfs): NoSpace, writes refused, reads still working, and
everything committed before still there once space is freed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from embedkv.errors import NoSpace
from embedkv.storage import DataDir
from embedkv.storage.requests import Get, Put

from .harness import Member


def _grow(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)


def _fill_until_full(m: Member) -> dict[str, int]:
    committed: dict[str, int] = {}
    for i in range(10_000):
        key = f"k{i % 500:04d}"
        try:
            m.propose_many([Put(key, {"i": i, "pad": b"x" * 50_000})])
        except NoSpace:
            return committed
        committed[key] = i
    raise AssertionError("the disk never filled up")


def test_full_disk(small_disk: Path) -> None:
    m = Member(small_disk / "data", durable=True)
    committed = _fill_until_full(m)
    assert committed
    dd = m.dd
    applied = dd.applied_index
    # Writes are refused at once, reads keep working.
    with pytest.raises(NoSpace, match="no space left"), dd.write():
        pass
    for key, i in committed.items():
        kv = dd.kv.get(key)
        assert kv is not None and kv.value["i"] == i
    assert dd.kv.range(Get("k", prefix=True, count_only=True)).count == len(committed)
    # Free space: writes work again once cleared, on the same open data dir.
    _grow(small_disk)
    dd.clear_no_space()  # the Store's member does this by itself, once a second
    m.propose(Put("after", 1))
    assert dd.kv.get("after") is not None
    assert dd.applied_index == applied + 1
    m.close()


def test_everything_committed_survives_reopen(small_disk: Path) -> None:
    m = Member(small_disk / "data", durable=True)
    committed = _fill_until_full(m)
    applied = m.dd.applied_index
    m.close()
    _grow(small_disk)
    dd = DataDir.open(small_disk / "data")
    assert dd.applied_index == applied
    for key, i in committed.items():
        kv = dd.kv.get(key)
        assert kv is not None and kv.value["i"] == i
    dd.close()
