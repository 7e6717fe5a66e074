"""Backups, restoring them, and offline defragmentation of a data dir.

A backup file *is* a snapshot stream (snapshot.py: magic, header, records, SHA-256 end frame),
written whole to disk: the format followers already catch up with, checked byte for byte on
restore, independent of LMDB's page layout and free pages (so it is compact), and written from
one read transaction, which never blocks a writer. Restoring one makes a new one-member cluster
(a new identity, the restored member its only voter), as ``etcdctl snapshot restore`` does.

Defragmentation is LMDB's compacting copy of ``data.mdb`` (free pages left out), written to a
temporary file beside it, fsynced, checked and renamed over the original: killed at any step,
the dir holds either the old file or the new one, complete.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Final

import cbor2
import lmdb

from embedkv.errors import CorruptData, NoSpace
from embedkv.raft.types import ConfState

from .datadir import DEFRAG_TEMP, DataDir, Identity, release_lock, take_lock
from .lmdbenv import DB_NAMES, FULL_ERRNOS, Env, fsync_dir, is_disk_full, no_space
from .mvcc import finish_compaction
from .snapshot import FRAME, MAGIC, MAX_HEADER, TAG_HEADER

CHUNK: Final = 1 << 20
"""Bytes per read or write when copying a backup."""
DATA_FILE: Final = "data.mdb"


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup holds, from its header."""

    revision: int
    compact_revision: int
    applied_index: int


@dataclass(frozen=True, slots=True)
class DefragResult:
    """Sizes of ``data.mdb`` in bytes, before and after a defragmentation."""

    path: str
    size_before: int
    size_after: int


def _checkpoint(step: str) -> None:
    """Called after each step of defrag; the kill-safety test replaces it to SIGKILL there."""


# --- backup ------------------------------------------------------------------------------------


def write_backup(dd: DataDir, dest: str | os.PathLike[str]) -> BackupInfo:
    """Write the data dir's state machine, as of one read transaction, to the file `dest`.

    The file appears whole or not at all (temporary file, fsync, rename, fsync of the dir); an
    existing file at `dest` is replaced. NoSpace if the disk fills (nothing is left behind).
    """
    dest = os.fspath(dest)
    if os.path.isdir(dest):
        raise IsADirectoryError(f"backup destination {dest} is a directory; name a file")
    directory = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(dest)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            # Spooled under one short read transaction, then copied out.
            for chunk in dd.snapshot_chunks(CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        info = read_backup_info(tmp)
        os.replace(tmp, dest)
        fsync_dir(directory)
    except BaseException as exc:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            raise NoSpace(f"no space left to write the backup {dest}: {exc}") from None
        raise
    return info


def backup_data_dir(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> BackupInfo:
    """Back up a closed data dir (offline: no member is started, nothing is written to it).

    DataDirLocked if a Store has it open (call ``store.backup`` from that program instead).
    """
    path = _existing_data_dir(path)
    with DataDir.open(path) as dd:
        return write_backup(dd, dest)


def read_backup_info(backup: str | os.PathLike[str]) -> BackupInfo:
    """The revisions a backup file holds, from its header (the rest is checked on restore)."""
    with open(backup, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise CorruptData(f"{os.fspath(backup)} is not an embedkv backup (bad magic)")
        frame = f.read(FRAME.size)
        if len(frame) < FRAME.size:
            raise CorruptData(f"backup {os.fspath(backup)} is truncated")
        tag, length = FRAME.unpack(frame)
        if tag != TAG_HEADER or length > MAX_HEADER:
            raise CorruptData(f"backup {os.fspath(backup)} does not start with its header")
        payload = f.read(length)
    try:
        header = cbor2.loads(payload, max_depth=4)
        info = BackupInfo(header["revision"], header["compact"], header["applied"])
    except Exception as exc:
        raise CorruptData(f"backup {os.fspath(backup)} has a damaged header ({exc})") from None
    if not all(type(v) is int and v >= 0 for v in (info.revision, info.compact_revision,
                                                  info.applied_index)):
        raise CorruptData(f"backup {os.fspath(backup)} has a damaged header")
    return info


def restore_backup(
    backup: str | os.PathLike[str],
    path: str | os.PathLike[str],
    identity: Identity,
    *,
    durable: bool = True,
) -> BackupInfo:
    """Create the data dir `path` (missing or empty) from a backup file, as a one-member
    cluster with `identity`.

    FileExistsError (nothing touched) if `path` is not empty; CorruptData if the backup is
    damaged anywhere, and then `path` is left as it was (removed if this created it).
    """
    backup, path = os.fspath(backup), os.fspath(path)
    info = read_backup_info(backup)  # a missing or foreign file fails before `path` is touched
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise NotADirectoryError(f"cannot restore into {path}: it is not a directory")
        if os.listdir(path):
            raise FileExistsError(
                f"cannot restore into {path}: the directory is not empty (restore makes a new "
                "data dir; name a missing or empty directory)"
            )
    conf = ConfState(voters=frozenset({identity.member_id}))
    with open(backup, "rb") as f:
        chunks: Iterator[bytes] = iter(functools.partial(f.read, CHUNK), b"")
        try:
            DataDir.restore(path, chunks, durable=durable, identity=identity,
                            conf_state=conf).close()
        except CorruptData as exc:
            # The stream's own words speak of "the snapshot": name the backup file too.
            raise CorruptData(f"the backup {backup} is damaged: {exc}") from exc
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return info


# --- defragmentation ---------------------------------------------------------------------------


def defrag(path: str | os.PathLike[str]) -> DefragResult:
    """Rewrite a closed data dir's ``data.mdb`` without its free pages.

    Takes the data dir's lock (DataDirLocked while a Store has it open). First finishes any
    pending compaction work (ordinary transactions, as the member's writer would: reads do not
    change), so that the copy leaves out what compaction drops. The compacting copy goes to
    ``data.mdb.defrag``, is fsynced, checked against the original (entry counts of every
    database) and renamed over it, and the directory is fsynced. Until the rename the original
    holds the same data; a copy left by a killed run is removed by the next open or defrag.
    """
    path = _existing_data_dir(path)
    lock_fd = take_lock(path)
    try:
        data, tmp = os.path.join(path, DATA_FILE), os.path.join(path, DEFRAG_TEMP)
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        before = os.path.getsize(data)
        _checkpoint("locked")
        env = Env(path, durable=True)  # checks the format, truncation, an unfinished restore
        try:
            finish_compaction(env)
            counts = _entry_counts(env.env)
            _copy(env, tmp)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            env.close()
        try:
            _checkpoint("copied")
            _verify_copy(tmp, counts)
            _checkpoint("verified")
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.replace(tmp, data)
        _checkpoint("renamed")
        fsync_dir(path)
        _checkpoint("synced")
        return DefragResult(path, before, os.path.getsize(data))
    finally:
        release_lock(lock_fd)


def _copy(env: Env, tmp: str) -> None:
    """LMDB's compacting copy into `tmp`, fsynced."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        env.env.copyfd(fd, compact=True)
        os.fsync(fd)
    except lmdb.Error as exc:
        if is_disk_full(exc, env.path):
            raise no_space(exc, env.path) from None
        raise CorruptData(f"{env.path}: the compacting copy failed: {exc}") from None
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise NoSpace(f"no space left for the compacting copy in {env.path}: {exc}") from None
        raise
    finally:
        os.close(fd)


def _entry_counts(env: lmdb.Environment) -> dict[bytes, int]:
    with env.begin() as txn:
        return {
            name: txn.stat(env.open_db(name, txn=txn, create=False))["entries"]
            for name in DB_NAMES
        } | {b"": txn.stat()["entries"]}


def _verify_copy(tmp: str, counts: dict[bytes, int]) -> None:
    """The copy opens as LMDB and every database has as many entries as the original."""
    try:
        copy = lmdb.open(tmp, subdir=False, readonly=True, lock=False, max_dbs=len(DB_NAMES))
    except lmdb.Error as exc:
        raise CorruptData(f"the compacting copy {tmp} does not open: {exc}") from None
    try:
        got = _entry_counts(copy)
    finally:
        copy.close()
    if got != counts:
        raise CorruptData(f"the compacting copy {tmp} differs from the original: {got} != {counts}")


# --- helpers -----------------------------------------------------------------------------------


def _existing_data_dir(path: str | os.PathLike[str]) -> str:
    """`path` as a str, if it is a data dir; never creates one (a mistyped path is an error)."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, DATA_FILE)):
        raise FileNotFoundError(f"no embedkv data dir at {path} (no {DATA_FILE} in it)")
    return path
