"""The member directory and this member's own settings (raft_state records `members` and
`local`): written at bootstrap or in a write batch, rolled back with it, sealed like every
other record, carried by snapshot streams and dropped by a backup restore."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from embedkv.errors import CorruptData
from embedkv.raft.types import ConfState
from embedkv.storage import DataDir, Identity, LocalInfo, PeerInfo, backup
from embedkv.storage.directory import LOCAL, MEMBERS, REMOVED
from embedkv.storage.requests import Put

from .harness import Member

MEMBERS_3 = {
    1: PeerInfo("n1", "127.0.0.1:7001"),
    2: PeerInfo("n2", "127.0.0.1:7002"),
    3: PeerInfo("n3", "127.0.0.1:7003", promote=True),
}
LOCAL_1 = LocalInfo("n1", "127.0.0.1:7001", "token")
CONF = ConfState(frozenset({1, 2}), frozenset({3}))


def _founded(path: Path) -> Member:
    m = Member(path)
    m.dd.bootstrap(Identity(7, 1), CONF, members=MEMBERS_3, local=LOCAL_1)
    return m


def test_bootstrap_records_the_directory_and_local(tmp_path: Path) -> None:
    m = _founded(tmp_path)
    assert m.dd.members() == MEMBERS_3
    assert m.dd.local == LOCAL_1
    m.dd.members()[9] = PeerInfo("x", "y")  # a copy
    assert m.dd.members() == MEMBERS_3
    m.propose(Put("k", 1))
    m.reopen()
    assert m.dd.members() == MEMBERS_3
    assert m.dd.local == LOCAL_1
    assert m.dd.conf_state == CONF
    assert m.dd.verify().ok
    m.close()


def test_a_plain_bootstrap_has_no_directory(tmp_path: Path) -> None:
    m = Member(tmp_path)
    m.dd.bootstrap(Identity(7, 1), ConfState(frozenset({1})))
    m.reopen()
    assert m.dd.members() == {}
    assert m.dd.local is None
    m.close()


def test_members_change_in_a_batch_and_roll_back_with_it(tmp_path: Path) -> None:
    m = _founded(tmp_path)
    with m.dd.write() as w:
        w.set_member(4, PeerInfo("n4", "127.0.0.1:7004"))
        w.set_member(2, PeerInfo("n2", "127.0.0.1:7102"))
        w.remove_member(3)
        w.remove_member(99)  # absent: nothing to do
    expected = {1: MEMBERS_3[1], 2: PeerInfo("n2", "127.0.0.1:7102"),
                4: PeerInfo("n4", "127.0.0.1:7004")}
    assert m.dd.members() == expected
    with pytest.raises(RuntimeError, match="boom"), m.dd.write() as w:
        w.set_member(5, PeerInfo("n5", "127.0.0.1:7005"))
        w.remove_member(1)
        raise RuntimeError("boom")
    assert m.dd.members() == expected
    m.reopen()
    assert m.dd.members() == expected
    m.close()


def test_set_local_in_a_batch_or_alone(tmp_path: Path) -> None:
    m = _founded(tmp_path)
    moved = LocalInfo("n1", "127.0.0.1:7101", "token")
    m.dd.set_local(moved)
    assert m.dd.local == moved
    again = LocalInfo("n1", "127.0.0.1:7201", "token")
    with m.dd.write() as w:
        w.set_local(again)
    assert m.dd.local == again  # what is committed is what the data dir reports
    with pytest.raises(RuntimeError), m.dd.write() as w:
        w.set_local(moved)
        raise RuntimeError
    assert m.dd.local == again
    m.reopen()
    assert m.dd.local == again
    m.close()


@pytest.mark.parametrize("record", [MEMBERS, LOCAL, REMOVED])
@pytest.mark.parametrize("how", ["flip", "garbage"])
def test_a_damaged_record_is_reported(tmp_path: Path, record: bytes, how: str) -> None:
    m = _founded(tmp_path)
    with m.dd.write() as w:
        w.remove_member(3)  # a REMOVED record to damage
    env = m.dd._env
    with env.env.begin(write=True) as txn:
        db = env.dbs[b"raft_state"]
        raw = txn.get(record, db=db)
        assert raw is not None
        if how == "flip":
            damaged = bytearray(raw)
            damaged[2] ^= 0x40
            txn.put(record, bytes(damaged), db=db)
        else:  # sealed correctly but not a directory: a bug or a foreign writer
            from embedkv.storage.codec import seal

            txn.put(record, seal(record, cbor2.dumps({"no": "rows"})), db=db)
    report = m.dd.verify()
    assert not report.ok
    assert any(repr(record) in p for p in report.problems), report.problems
    m.close()
    with pytest.raises(CorruptData, match=repr(record)[2:-1]):
        DataDir.open(tmp_path)


def test_directory_rows_are_checked() -> None:
    from embedkv.storage.directory import members_from_rows

    good = [[1, "n1", "a:1", False]]
    assert members_from_rows(good) == {1: PeerInfo("n1", "a:1")}
    for bad in ({}, [[0, "n", "a", False]], [[1, "n", "a"]], [[1, 2, "a", False]],
                [[1, "n", "a", 1]], [[1, "n", "a", False], [1, "m", "b", False]],
                [[1 << 64, "n", "a", False]], [[True, "n", "a", False]]):
        with pytest.raises(CorruptData):
            members_from_rows(bad)


def test_snapshot_stream_meta_is_its_header_and_carries_the_directory(tmp_path: Path) -> None:
    m = _founded(tmp_path / "src")
    for i in range(20):
        m.propose(Put(f"k{i}", i))
    meta, chunks = m.dd.snapshot_stream(chunk_size=100)
    data = b"".join(chunks)
    from embedkv.storage.snapshot import open_stream

    _, header = open_stream([data])
    assert (meta.index, meta.term) == (header["applied"], header["term"])
    assert meta.index == m.dd.applied_index == 20
    assert meta.term == m.dd.log.term(meta.index) == 1
    assert meta.conf_state == CONF == ConfState(frozenset(header["voters"]),
                                               frozenset(header["learners"]))
    assert header["members"] == MEMBERS_3
    # A restore keeps the directory (a member made from a stream), never the local settings.
    copy = DataDir.restore(tmp_path / "copy", [data], identity=Identity(7, 2))
    assert copy.members() == MEMBERS_3
    assert copy.local is None
    assert copy.conf_state == CONF
    copy.close()
    with DataDir.open(tmp_path / "copy") as again:
        assert again.members() == MEMBERS_3
    # A backup restores as a new one-member cluster: the old directory is dropped.
    backup.write_backup(m.dd, tmp_path / "b.ekv")
    m.close()
    backup.restore_backup(tmp_path / "b.ekv", tmp_path / "restored", Identity(8, 5))
    with DataDir.open(tmp_path / "restored") as restored:
        assert restored.members() == {}
        assert restored.local is None
        assert restored.conf_state == ConfState(frozenset({5}))
        assert restored.kv.get("k19") is not None


def test_a_stream_without_members_restores_with_an_empty_directory(tmp_path: Path) -> None:
    m = _founded(tmp_path / "src")
    m.propose(Put("k", 1))
    _, chunks = m.dd.snapshot_stream()
    m.close()
    older = _without_members(b"".join(chunks))
    dd = DataDir.restore(tmp_path / "r", [older])
    assert dd.members() == {}
    assert dd.kv.get("k") is not None
    dd.close()


def _without_members(data: bytes) -> bytes:
    """The same stream as an older embedkv wrote it: no "members" in the header."""
    import hashlib

    from embedkv.storage import snapshot

    pos = len(snapshot.MAGIC)
    body = bytearray(snapshot.MAGIC)
    while True:
        tag, size = snapshot.FRAME.unpack_from(data, pos)
        payload = data[pos + snapshot.FRAME.size: pos + snapshot.FRAME.size + size]
        pos += snapshot.FRAME.size + size
        if tag == snapshot.TAG_END:
            break
        if tag == snapshot.TAG_HEADER:
            header = cbor2.loads(payload)
            assert "members" in header
            del header["members"]
            payload = cbor2.dumps(header)
        body += snapshot.FRAME.pack(tag, len(payload)) + payload
    digest = hashlib.sha256(body).digest()
    return bytes(body) + snapshot.FRAME.pack(snapshot.TAG_END, len(digest)) + digest


def test_a_removal_records_the_member_id_for_good(tmp_path: Path) -> None:
    """Ids are never reused: a removed id dialing back is a member that missed its removal.
    The set is replicated state: committed with the batch, carried by snapshot streams, and
    installed or restored with them."""
    from embedkv.raft.types import Snapshot
    from embedkv.storage.snapshot import open_stream

    m = _founded(tmp_path / "src")
    assert m.dd.removed == frozenset()
    with m.dd.write() as w:
        w.remove_member(3)
        w.remove_member(99)  # in no directory (a joiner refused at apply): still never again
    assert m.dd.removed == {3, 99}
    with pytest.raises(RuntimeError, match="boom"), m.dd.write() as w:
        w.remove_member(2)
        raise RuntimeError("boom")
    assert m.dd.removed == {3, 99}
    m.propose(Put("k", 1))
    m.reopen()
    assert m.dd.removed == {3, 99}
    assert m.dd.verify().ok
    meta, chunks = m.dd.snapshot_stream()
    data = b"".join(chunks)
    assert open_stream([data])[1]["removed"] == {3, 99}
    with DataDir.restore(tmp_path / "copy", [data], identity=Identity(7, 2)) as copy:
        assert copy.removed == {3, 99}
    target = Member(tmp_path / "target")
    target.dd.bootstrap(Identity(7, 2), CONF)
    with target.dd.write() as w:
        w.install_snapshot(Snapshot(meta, data))
    assert target.dd.removed == {3, 99}
    target.reopen()
    assert target.dd.removed == {3, 99}
    target.close()
    m.close()


def test_removed_ids_are_checked() -> None:
    from embedkv.storage.directory import decode_removed, encode_removed, removed_from_list

    assert decode_removed(encode_removed(frozenset({5, 1 << 63}))) == {5, 1 << 63}
    for bad in ({}, [0], [1 << 64], [True], ["1"], [1.0]):
        with pytest.raises(CorruptData):
            removed_from_list(bad)
