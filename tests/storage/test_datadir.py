"""The data dir: exclusive ownership, bootstrap and identity, the write batch's all-or-nothing
behaviour, map growth under concurrent readers, stale reader slots, durability switch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from embedkv.errors import Closed, CorruptData, DataDirLocked
from embedkv.raft.types import ConfState, Entry
from embedkv.storage import DataDir, Identity, lmdbenv
from embedkv.storage.codec import encode_proposal
from embedkv.storage.requests import Get, Put, PutResult

from .harness import Member

ROOT = Path(__file__).resolve().parents[2]


def test_second_open_in_this_process(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
        DataDir.open(tmp_path)
    dd.close()
    DataDir.open(tmp_path).close()  # released on close


def test_second_open_from_another_process(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    code = (
        "import sys\n"
        "from embedkv.errors import DataDirLocked\n"
        "from embedkv.storage import DataDir\n"
        "try:\n"
        f"    DataDir.open({str(tmp_path)!r})\n"
        "except DataDirLocked as exc:\n"
        "    print('locked:', exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert done.returncode == 0, done.stderr
    assert "already open" in done.stdout
    dd.close()


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    dd.close()
    dd.close()
    with pytest.raises(Closed):
        dd.kv.get("a")
    with pytest.raises(Closed), dd.write():
        pass


def test_bootstrap_once(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    assert dd.identity is None
    cs = ConfState(frozenset({11}))
    dd.bootstrap(Identity(5, 11), cs)
    with pytest.raises(ValueError, match="not fresh"):
        dd.bootstrap(Identity(5, 11), cs)
    dd.close()
    dd = DataDir.open(tmp_path)
    assert dd.identity == Identity(5, 11)
    assert dd.conf_state == cs
    assert dd.log.initial_state()[1] == cs
    with pytest.raises(ValueError):
        dd.bootstrap(Identity(0, 1), cs)
    dd.close()


def test_failed_batch_leaves_nothing(member: Member) -> None:
    member.propose(Put("a", 1))
    entries = [Entry(1, 2, data=encode_proposal(1, 2, Put("b", 2)))]
    with pytest.raises(ZeroDivisionError), member.dd.write() as w:
        w.append_entries(entries)
        w.apply(entries[0])
        raise ZeroDivisionError
    assert member.dd.kv.get("b") is None
    assert (member.dd.applied_index, member.dd.kv.revision, member.dd.log.last_index()) == (
        1, 2, 1)
    with pytest.raises(Closed, match="aborted"), member.dd.write() as w:
        with pytest.raises(ValueError):
            w.apply(Entry(1, 5))
        with pytest.raises(Closed, match="aborted"):  # a failed operation ends the batch
            w.apply(Entry(1, 2))
    assert member.dd.applied_index == 1


def test_map_grows_during_a_batch_and_under_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE", 1 << 20)
    m = Member(tmp_path)
    m.propose(Put("seed", 0))
    start = m.dd._env.env.info()["map_size"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                assert m.dd.kv.get("seed") is not None
                m.dd.kv.range(Get("k", prefix=True, keys_only=True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        blob = b"z" * 20_000
        results = []
        for batch in range(6):
            results += m.propose_many([Put(f"k{batch}-{i}", blob) for i in range(60)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert m.dd._env.env.info()["map_size"] > start
    # Results handed out before a grow-and-replay are the ones that were committed.
    assert [r.result for r in results] == [PutResult(rev) for rev in range(3, 3 + 360)]
    assert m.dd.kv.range(Get("k", prefix=True, count_only=True)).count == 360
    m.reopen()
    assert m.dd.kv.range(Get("k", prefix=True, count_only=True)).count == 360
    m.close()


def test_stale_reader_slots_are_cleared(tmp_path: Path) -> None:
    Member(tmp_path).close()
    code = (
        "import lmdb, sys\n"
        f"env = lmdb.open({str(tmp_path)!r}, max_dbs=16, max_readers=1024)\n"
        "txn = env.begin()\n"
        "print('reading', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "reading"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    dd = DataDir.open(tmp_path)
    assert f"{child.pid}" not in dd._env.env.readers().split()
    dd.close()


def test_no_fsync_switch(tmp_path: Path) -> None:
    fast = Member(tmp_path / "fast", durable=False)
    assert fast.dd.durable is False
    assert fast.dd._env.env.flags()["sync"] is False
    fast.propose(Put("a", 1))
    fast.dd.sync()
    fast.reopen()
    assert fast.dd.kv.get("a") is not None
    fast.close()
    safe = DataDir.open(tmp_path / "safe")
    assert safe.durable is True and safe._env.env.flags()["sync"] is True
    safe.close()


def test_incomplete_restore_refuses_to_open(tmp_path: Path) -> None:
    Member(tmp_path).close()
    import lmdb

    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(lmdbenv.RESTORING, b"1", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(CorruptData, match="incomplete snapshot restore"):
        DataDir.open(tmp_path)


def test_nested_write_batch_fails_instead_of_hanging(member: Member) -> None:
    with member.dd.write(), pytest.raises(RuntimeError, match="already open"), member.dd.write():
        pass
    with member.dd.write(), pytest.raises(RuntimeError):
        member.dd.close()
    member.propose(Put("still", "works"))
