"""Backup and restore (issue 15): ``Store.backup`` while writers run, ``embedkv.restore`` into a
new one-member cluster that reads exactly like the source did at the backup's revision, and
every bad input (non-empty target, damaged backup, full disk) refused with nothing lost."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest

import embedkv
from embedkv import Delete, Put, Version
from embedkv.member import Member
from embedkv.raft.types import ConfState
from embedkv.storage import DataDir, backup, snapshot
from tests.member.conftest import FakeClock
from tests.waiting import wait_for

TICK = 0.01


def _open(path: Path, clock: FakeClock | None = None, **options: Any) -> embedkv.Store:
    """A store whose lease clock the test may drive by hand."""
    if clock is None:
        return embedkv.open(path, tick_interval=TICK, **options)
    member = Member.open(path, tick_interval=TICK, clock=clock, **options)
    return embedkv.Store(member)


def _everything(store: embedkv.Store, revision: int | None = None) -> list[embedkv.KeyValue]:
    return store.range("", revision=revision)


def _history(store: embedkv.Store) -> list[list[embedkv.KeyValue]]:
    """Every key at every revision the store still holds."""
    first = max(1, store.status().compact_revision)
    return [_everything(store, rev) for rev in range(first, store.revision + 1)]


def _leases(store: embedkv.Store) -> list[tuple[int, int, list[Any]]]:
    kv = store._m.data_dir.kv
    out = []
    for lease_id, ttl in sorted(kv.leases()):
        found = kv.lease(lease_id)
        assert found is not None
        out.append((lease_id, ttl, sorted(map(str, found[1]))))
    return out


def _remaining(store: embedkv.Store) -> list[tuple[int, float]]:
    """(TTL, seconds left) of every lease."""
    out = []
    for lease_id, _, _ in _leases(store):
        ttl = store._m.lease_time_to_live(lease_id)
        assert ttl is not None
        out.append(ttl)
    return sorted(out)


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[tuple[embedkv.Store, FakeClock]]:
    """A store with history, a compaction, deletes, txns, str and bytes keys and leases."""
    clock = FakeClock()
    store = _open(tmp_path / "src", clock, durable=False)
    try:
        held = store.lease(100, keepalive=False)
        idle = store.lease(50, keepalive=False)  # a lease without keys survives too
        for i in range(120):
            store.put(f"k/{i % 17:02d}", {"i": i, "pad": "x" * (i % 40)},
                      lease=held if i % 5 == 0 else None)
            if i % 30 == 29:
                store.delete(f"k/{i % 7:02d}")
        store.put(b"\x00bytes\xff", b"raw")
        store.txn(compare=[Version("k/01") > 0], success=[Put("t", 1), Delete("k/02")])
        store.compact(store.revision - 40)
        store.put("after", [1, 2, 3])
        assert held.ttl_remaining() == 100 and idle.ttl_remaining() == 50
        clock.advance(45)  # countdowns are part way through when the backup is taken
        yield store, clock
    finally:
        store.close()


def test_restore_round_trip(tmp_path: Path,
                            populated: tuple[embedkv.Store, FakeClock]) -> None:
    src, _ = populated
    revision = src.backup(tmp_path / "b.snap")
    assert revision == src.revision
    assert embedkv.restore(tmp_path / "b.snap", tmp_path / "dst") == revision
    assert sorted(os.listdir(tmp_path)) == ["b.snap", "dst", "src"]  # no temporary left
    clock = FakeClock()
    with _open(tmp_path / "dst", clock) as dst:
        assert dst.revision == src.revision
        assert dst.status().compact_revision == src.status().compact_revision
        assert _everything(dst) == _everything(src)
        assert [dst.get_kv(kv.key) for kv in _everything(src)] == _everything(src)
        assert _history(dst) == _history(src)
        assert _leases(dst) == _leases(src) and len(_leases(src)) == 2
        # Countdowns restart at the full TTL (etcd does the same on restore).
        assert _remaining(src) == [(50, 5.0), (100, 55.0)]
        assert _remaining(dst) == [(50, 50.0), (100, 100.0)]
        # A new identity, and the restored store keeps working: writes, and lease expiry.
        assert dst.status().member_id != src.status().member_id
        assert dst.status().cluster_id != src.status().cluster_id
        dst.put("new", 1)
        assert dst.revision == revision + 1
        held_keys = [kv.key for kv in _everything(dst) if kv.lease]
        assert held_keys
        clock.advance(101)
        wait_for(lambda: not any(k in dst for k in held_keys), what="the lease to expire")


def test_backup_is_a_consistent_cut_while_four_writers_write(tmp_path: Path) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    with _open(tmp_path / "src", durable=False) as src:

        def writer(n: int) -> None:
            try:
                i = 0
                while not stop.is_set():
                    src.put(f"w{n}/{i % 25}", {"n": n, "i": i})
                    if i % 10 == 9:
                        src.delete(f"w{n}/{(i * 7) % 25}")
                    i += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: src.revision > 300, what="writes before the backup")
            revision = src.backup(tmp_path / "b.snap")
            wait_for(lambda: src.revision > revision + 200, what="writes after the backup")
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors
        embedkv.restore(tmp_path / "b.snap", tmp_path / "dst")
        with _open(tmp_path / "dst") as dst:
            assert dst.revision == revision
            assert _everything(dst) == _everything(src, revision)
            for rev in range(max(2, revision - 50), revision + 1):
                assert _everything(dst, rev) == _everything(src, rev)


def test_writers_run_while_the_backup_reads(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A put completes while the backup's read transaction is open, and is not in it."""
    original = snapshot._write_snapshot
    with _open(tmp_path / "src", durable=False) as src:
        src.put("before", 1)
        put_done = threading.Event()

        def put_during() -> None:
            src.put("during", 2)
            put_done.set()

        class Out:
            def __init__(self, out: Any) -> None:
                self.out = out

            def write(self, data: bytes) -> None:
                if not put_done.is_set():  # inside the read transaction
                    t = threading.Thread(target=put_during)
                    t.start()
                    assert put_done.wait(10), "a put was blocked by the backup"
                    t.join()
                self.out.write(data)

            def flush(self) -> None:
                self.out.flush()

        monkeypatch.setattr(snapshot, "_write_snapshot",
                            lambda env, out: original(env, cast(IO[bytes], Out(out))))
        revision = src.backup(tmp_path / "b.snap")
        assert put_done.is_set() and src.revision == revision + 1
    embedkv.restore(tmp_path / "b.snap", tmp_path / "dst")
    with _open(tmp_path / "dst") as dst:
        assert dst["before"] == 1 and "during" not in dst


def test_a_multi_voter_backup_restores_as_one_member(tmp_path: Path) -> None:
    with _open(tmp_path / "src") as src:
        src.put("k", "v")
        me = src.status().member_id
    with DataDir.open(tmp_path / "src") as dd, dd.write() as w:
        w.apply_conf_change(dd.applied_index, ConfState(frozenset({me, 2, 3})))
    assert backup.backup_data_dir(tmp_path / "src", tmp_path / "b.snap").revision == 2
    embedkv.restore(tmp_path / "b.snap", tmp_path / "dst")
    with DataDir.open(tmp_path / "dst") as dd:
        assert dd.identity is not None and dd.identity.member_id != me
        assert dd.conf_state == ConfState(frozenset({dd.identity.member_id}))
    with _open(tmp_path / "dst", request_timeout=10) as dst:  # elects itself alone
        dst.put("k2", "v2")
        assert dst["k"] == "v" and dst.revision == 3


def test_restore_refuses_a_non_empty_target(tmp_path: Path) -> None:
    with _open(tmp_path / "src") as src:
        src.put("k", "v")
        src.backup(tmp_path / "b.snap")
    target = tmp_path / "dst"
    target.mkdir()
    (target / "precious").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        embedkv.restore(tmp_path / "b.snap", target)
    assert os.listdir(target) == ["precious"]
    assert (target / "precious").read_text() == "keep me"
    with pytest.raises(NotADirectoryError):
        embedkv.restore(tmp_path / "b.snap", target / "precious")
    assert (target / "precious").read_text() == "keep me"
    with pytest.raises(FileNotFoundError):
        embedkv.restore(tmp_path / "missing.snap", tmp_path / "other")
    assert not (tmp_path / "other").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    embedkv.restore(tmp_path / "b.snap", empty)  # an empty directory is fine
    with _open(empty) as dst:
        assert dst["k"] == "v"


@pytest.mark.parametrize("damage", ["truncate-header", "truncate-middle", "truncate-end",
                                    "flip", "append", "empty", "foreign"])
@pytest.mark.parametrize("target_exists", [False, True])
def test_a_damaged_backup_is_corrupt_data(tmp_path: Path, damage: str,
                                          target_exists: bool) -> None:
    with _open(tmp_path / "src") as src:
        for i in range(50):
            src.put(f"k{i}", "v" * i)
        src.backup(tmp_path / "b.snap")
    good = (tmp_path / "b.snap").read_bytes()
    bad = {
        "truncate-header": good[:12],
        "truncate-middle": good[: len(good) // 2],
        "truncate-end": good[:-1],
        "flip": good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 1])
        + good[len(good) // 2 + 1 :],
        "append": good + b"\x00",
        "empty": b"",
        "foreign": b"SQLite format 3\x00" + good[16:],
    }[damage]
    (tmp_path / "bad.snap").write_bytes(bad)
    target = tmp_path / "dst"
    if target_exists:
        target.mkdir()
    with pytest.raises(embedkv.CorruptData):
        embedkv.restore(tmp_path / "bad.snap", target)
    if target_exists:
        assert os.listdir(target) == []
    else:
        assert not target.exists()


def test_backup_replaces_dest_atomically_and_a_full_disk_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out" / "b.snap"
    dest.parent.mkdir()
    with _open(tmp_path / "src") as src:
        src.put("k", 1)
        first = src.backup(dest)
        old = dest.read_bytes()
        src.put("k", 2)

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(embedkv.NoSpace, match=r"b\.snap"):
            src.backup(dest)
        assert dest.read_bytes() == old and os.listdir(dest.parent) == ["b.snap"]
        monkeypatch.undo()
        second = src.backup(dest)
        assert second == first + 1 and os.listdir(dest.parent) == ["b.snap"]
        assert backup.read_backup_info(dest).revision == second
        with pytest.raises(IsADirectoryError):
            src.backup(tmp_path / "out")
    src_closed = src
    with pytest.raises(embedkv.Closed):
        src_closed.backup(tmp_path / "closed.snap")
    assert not (tmp_path / "closed.snap").exists()


def test_async_backup(tmp_path: Path) -> None:
    async def main() -> int:
        async with embedkv.open_async(tmp_path / "src", tick_interval=TICK) as store:
            await store.put("k", "async")
            return await store.backup(tmp_path / "b.snap")

    revision = asyncio.run(main())
    assert embedkv.restore(tmp_path / "b.snap", tmp_path / "dst") == revision
    with _open(tmp_path / "dst") as dst:
        assert dst["k"] == "async"
