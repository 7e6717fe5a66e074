"""Snapshot streams: a restored data dir reads exactly like its source (current and past
revisions, leases, watch history), and any damage to the stream is detected."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkv.errors import CorruptData, DataDirLocked
from embedkv.raft.types import ConfState
from embedkv.storage import DataDir, Identity, snapshot
from embedkv.storage.requests import Compaction, Delete, Get, LeaseGrant, Put

from .harness import Member

EVERYTHING = Get(b"\x00", end=b"\x00")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Chunks of a snapshot with history, a compaction, leases and several members."""
    m = Member(tmp_path_factory.mktemp("source"))
    m.dd.bootstrap(Identity(7, 1), ConfState(frozenset({1, 2}), frozenset({3})))
    m.propose(LeaseGrant(5, 60))
    for i in range(300):
        m.propose(Put(f"k{i % 40:02d}", {"i": i, "blob": b"b" * (i % 300)},
                      lease=5 if i % 7 == 0 else None))
        if i % 50 == 49:
            m.propose(Delete(f"k{i % 10}", prefix=True))
    m.propose(Compaction(100))
    chunks = list(m.dd.snapshot_chunks(chunk_size=4096))
    m.close()
    return chunks


def _reads(dd: DataDir, revisions: tuple[int, ...] = (100, 150, 250)) -> tuple[object, ...]:
    kv = dd.kv
    return (
        kv.revision,
        kv.compact_revision,
        kv.range(EVERYTHING),
        [kv.range(Get(b"\x00", end=b"\x00", revision=r)) for r in revisions],
        kv.leases(),
        kv.lease(5),
        list(kv.events(100, b"\x00", end=b"\x00")),
        dd.conf_state,
    )


def test_round_trip(tmp_path: Path, source: list[bytes]) -> None:
    original = DataDir.restore(tmp_path / "a", source)
    assert original.identity is None
    copy = DataDir.restore(tmp_path / "b", list(original.snapshot_chunks(chunk_size=777)),
                           identity=Identity(7, 9))
    assert _reads(copy) == _reads(original)
    assert copy.identity == Identity(7, 9)
    assert copy.applied_index == original.applied_index > 0
    snap = copy.log.snapshot()
    assert snap.meta.index == copy.applied_index
    assert (copy.log.first_index(), copy.log.last_index()) == (snap.meta.index + 1,
                                                               snap.meta.index)
    assert copy.log.initial_state()[0].commit == snap.meta.index
    copy.close()
    reopened = DataDir.open(tmp_path / "b")
    assert _reads(reopened) == _reads(original)
    original.close()
    reopened.close()


def test_restored_dir_keeps_working(tmp_path: Path, source: list[bytes]) -> None:
    DataDir.restore(tmp_path, source).close()
    m = Member(tmp_path)
    before = m.dd.kv.revision
    m.propose(Put("new", 1))
    assert m.dd.kv.get("new") is not None
    assert m.dd.kv.revision == before + 1
    m.close()


def test_restore_into_a_non_empty_dir(tmp_path: Path, source: list[bytes]) -> None:
    (tmp_path / "x").write_text("hello")
    with pytest.raises(FileExistsError):
        DataDir.restore(tmp_path, source)


def test_restore_holds_the_lock(tmp_path: Path, source: list[bytes]) -> None:
    dd = DataDir.restore(tmp_path / "r", source)
    with pytest.raises(DataDirLocked):
        DataDir.open(tmp_path / "r")
    dd.close()


def _fails(path: Path, chunks: list[bytes]) -> None:
    with pytest.raises(CorruptData):
        DataDir.restore(path, chunks)
    assert not path.exists()  # the partial dir is removed


def test_truncated_stream(tmp_path: Path, source: list[bytes]) -> None:
    whole = b"".join(source)
    for cut in (0, 5, 8, 20, len(whole) // 2, len(whole) - 1):
        _fails(tmp_path / f"cut{cut}", [whole[:cut]])


def test_trailing_garbage(tmp_path: Path, source: list[bytes]) -> None:
    _fails(tmp_path / "r", [*source, b"x"])


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_flipped_byte_is_detected(tmp_path_factory: pytest.TempPathFactory,
                                      source: list[bytes], data: st.DataObject) -> None:
    whole = bytearray(b"".join(source))
    pos = data.draw(st.integers(0, len(whole) - 1))
    whole[pos] ^= data.draw(st.integers(1, 255))
    _fails(tmp_path_factory.mktemp("flip") / "r", [bytes(whole)])


def _with_format(source: list[bytes], fmt: int, **fields: object) -> bytes:
    """The same stream labelled format `fmt` (and with `fields` in its header), its digest made
    right again; for formats before 4 its records lose their checksums, as those formats wrote
    them."""
    whole = b"".join(source)
    magic = snapshot.MAGIC
    pos = len(magic)
    body = bytearray(magic)
    while True:
        tag, size = snapshot.FRAME.unpack_from(whole, pos)
        payload = whole[pos + snapshot.FRAME.size : pos + snapshot.FRAME.size + size]
        pos += snapshot.FRAME.size + size
        if tag == ord("E"):
            break
        if tag == ord("H"):
            payload = cbor2.dumps({**cbor2.loads(payload), "format": fmt, **fields})
        elif fmt < 4:
            payload = payload[:-4]
        body += snapshot.FRAME.pack(tag, len(payload)) + payload
    digest = hashlib.sha256(body).digest()
    return bytes(body) + snapshot.FRAME.pack(ord("E"), len(digest)) + digest


def test_snapshot_formats(tmp_path: Path, source: list[bytes]) -> None:
    """Format-2 and -3 streams (no checksums) restore to the same store; unknown formats and
    a format-4 stream whose records lack checksums are refused."""
    expected = DataDir.restore(tmp_path / "as-is", source)
    for fmt in (2, 3):
        older = DataDir.restore(tmp_path / f"format-{fmt}", [_with_format(source, fmt)])
        assert _reads(older) == _reads(expected)
        older.close()
    expected.close()
    with pytest.raises(CorruptData, match="snapshot has format 99; this embedkv restores"):
        DataDir.restore(tmp_path / "format-99", [_with_format(source, 99)])
    assert not (tmp_path / "format-99").exists()
    unsealed = _with_format([_with_format(source, 3)], 4)
    with pytest.raises(CorruptData, match=r"snapshot's \w+ record .* the stream is damaged"):
        DataDir.restore(tmp_path / "unsealed", [unsealed])
    assert not (tmp_path / "unsealed").exists()


def test_compaction_work_in_the_header(tmp_path: Path, source: list[bytes]) -> None:
    """Pending compaction work travels in the header ("compacting"): a restore records it,
    and a header whose work is malformed or does not fit its compact revision is refused."""
    work = [50, 60, 0, 100]  # the source's compact revision is 100
    dd = DataDir.restore(tmp_path / "pending", [_with_format(source, 4, compacting=work)])
    assert dd.compaction_pending
    with DataDir.restore(tmp_path / "plain", source) as plain:
        assert _reads(dd) == _reads(plain)
        with dd.write() as w:
            while w.compact_step(100):
                pass
        assert not dd.compaction_pending and dd.verify().ok
        assert _reads(dd) == _reads(plain)
    dd.close()
    for bad in ([50, 60, 0, 99], [61, 60, 0, 100], [0, 0, 1 << 32, 100], [1, 2, 3], "x",
                [0, 0, 0, -1]):
        with pytest.raises(CorruptData, match="compact"):
            DataDir.restore(tmp_path / "bad", [_with_format(source, 4, compacting=bad)])
        assert not (tmp_path / "bad").exists()


def test_garbage_stream(tmp_path: Path) -> None:
    _fails(tmp_path / "r", [os.urandom(10_000)])
    _fails(tmp_path / "s", [b"EKVSNAP1" + b"\x48\xff\xff\xff\xff"])  # header claims 4 GiB


def test_interrupted_restore_is_not_mistaken_for_a_store(tmp_path: Path,
                                                         source: list[bytes]) -> None:
    def dies() -> object:
        yield from source[: len(source) // 2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DataDir.restore(tmp_path / "r", dies())  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path)
    with pytest.raises(ValueError):
        dd.snapshot_chunks(0)
    dd.close()


def test_snapshot_is_consistent_while_writes_continue(tmp_path: Path) -> None:
    m = Member(tmp_path / "src")
    for i in range(50):
        m.propose(Put(f"k{i}", i))
    chunks = m.dd.snapshot_chunks(chunk_size=100)
    first = next(chunks)
    for i in range(50):
        m.propose(Put(f"later{i}", i))
    restored = DataDir.restore(tmp_path / "dst", [first, *chunks])
    assert restored.kv.revision == 51
    assert restored.kv.range(EVERYTHING).count == 50
    restored.close()
    m.close()
