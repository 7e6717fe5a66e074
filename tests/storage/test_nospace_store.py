"""A Store on a genuinely full disk (a small tmpfs): the NoSpace message says what happens, and
writes resume by themselves once space is freed, without reopening or any call."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import embedkv
from embedkv.errors import NoSpace
from tests.waiting import wait_for


def test_writes_resume_by_themselves_once_space_is_freed(small_disk: Path) -> None:
    s = embedkv.open(small_disk / "data", request_timeout=5)
    try:
        committed: dict[str, int] = {}
        err: NoSpace | None = None
        for i in range(10_000):
            try:
                s.put(f"k{i % 500:04d}", {"i": i, "pad": b"x" * 50_000})
            except NoSpace as exc:
                err = exc
                break
            committed[f"k{i % 500:04d}"] = i
        assert err is not None and committed
        assert "clear_no_space" not in str(err)
        assert "resume by themselves" in str(err)
        with pytest.raises(NoSpace):
            s.put("refused", 1)
        assert s.get(next(iter(committed)), serializable=True) is not None  # reads work
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)

        def writable() -> bool:
            try:
                s.put("after", 1)
            except NoSpace:
                return False
            return True

        wait_for(writable, what="writes to resume once space is freed")
        assert s["after"] == 1
        for key, i in committed.items():
            assert s[key]["i"] == i
    finally:
        s.close()
