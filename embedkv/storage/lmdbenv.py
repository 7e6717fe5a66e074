"""The LMDB environment of one data dir: its named databases, map growth and error translation.

LMDB remaps its file when the map grows, and a reader that touches the old mapping meanwhile
would crash the process. Every read transaction therefore passes a ReadGate, which map growth
(and close) shut for the few microseconds it takes; readers never wait for each other.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import lmdb

from embedkv.errors import Closed, CorruptData, NoSpace, UnsupportedFormat

from .codec import SUMMED_TABLES, U32, U64X3, seal, unpack_exact
from .lmdbfile import needed_size

FORMAT_VERSION: Final = 4
"""The data-dir format this code writes; stored in `meta` under b"format". Formats 2 and 3 are
upgraded in place on open: format 3 moved `log_start` from `raft_state` to the main database,
format 4 appended a checksum to every value of the state-machine tables (codec.SUM)."""
UPGRADES_FROM: Final = frozenset({2, 3})

INITIAL_MAP_SIZE = 256 << 20
"""The map a new environment starts with (tests lower it to exercise growth)."""
MAX_READERS: Final = 1024

DB_NAMES: Final = (
    b"meta", b"raft_log", b"raft_state", b"kv", b"graves", b"history", b"leases", b"lease_keys"
)
META_FORMAT: Final = b"format"
MAIN_DB: Final = b""
"""`Env.dbs` key of LMDB's main (unnamed) database: the catalog of the named databases, which
every commit that changes a named database rewrites anyway."""
STATE_DB: Final = MAIN_DB
"""Where the two records every write batch changes live: META_STATE and the Raft hard state.
Keeping them in the main database, whose page each commit writes anyway (the catalog), instead
of in a named database of their own saves writing (and fsyncing) one B-tree per commit
(format 2; format 1 kept META_STATE in `meta` and the hard state in `raft_state`). LOG_START
joined them in format 3."""
LOG_START: Final = b"log_start"
"""STATE_DB key of (index, term) of the last Raft entry compacted away (the snapshot point).
In the main database since format 3: a member with nobody to replicate to moves it every
batch (docs/internals/storage.md)."""
META_STATE: Final = b"applied"
"""STATE_DB key of (applied index, revision, compact revision)."""
COMPACTING: Final = b"compacting"
"""STATE_DB key of the physical compaction still to do (codec.COMPACTION_WORK), present only
while some is: a Compaction records it, WriteBatch.compact_step does it in bounded steps."""
MARKER_FILE: Final = "embedkv.datadir"
"""Created in the data dir once data.mdb durably holds its format record (and added on the
first open of a dir made before format 4): from then on a missing, empty or blank data.mdb is
damage, not a new store."""
_MARKER_TEXT: Final = b"embedkv data dir: data.mdb holds its data\n"
RESTORING: Final = b"restoring"
"""`meta` key present while a restore is incomplete; such a data dir refuses to open."""

FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_LOW_DISK_BYTES: Final = 8 << 20


class ReadGate:
    """Lets any number of readers in at once, and map growth or close in alone.

    A reader registers itself first and looks at the `shut` flag second; the exclusive side
    sets the flag first and counts readers second. Each step is one atomic operation under the
    GIL (a deque append or pop, an attribute read), so either the reader sees the flag and
    backs out, or the exclusive side sees the reader and waits for it: the fast path takes no
    lock at all.
    """

    __slots__ = ("_closed", "_cond", "active", "shut")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.active: deque[None] = deque()
        self.shut = False
        self._closed = False

    def enter(self) -> None:
        self.active.append(None)
        if self.shut:
            self.wait_open()

    def wait_open(self) -> None:
        """Slow path: back out, wait for the exclusive section to end, then register again."""
        while True:
            self.leave()
            with self._cond:
                while self.shut and not self._closed:
                    self._cond.wait()
                if self._closed:
                    raise Closed("the data dir is closed")
            self.active.append(None)
            if not self.shut:
                return

    def leave(self) -> None:
        self.active.pop()
        if self.shut:
            self.wake()

    def wake(self) -> None:
        """Tell a waiting exclusive section that a reader has left."""
        with self._cond:
            self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Wait until no reader is inside, and keep new ones out until the block ends."""
        with self._cond:
            while self.shut:
                self._cond.wait()
            self.shut = True
            while self.active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                if not self._closed:
                    self.shut = False
                self._cond.notify_all()

    def close(self) -> None:
        """Refuse every later reader (called inside exclusive())."""
        self._closed = True


def is_disk_full(exc: lmdb.Error, path: str) -> bool:
    """Whether an LMDB error means the disk is full.

    LMDB 0.9 reports a short write (what a full disk causes) as EIO, so EIO counts as full when
    the file system has almost no space left.
    """
    code = getattr(exc, "code", 0)
    if code in FULL_ERRNOS or "No space left" in str(exc):
        return True
    if code == errno.EIO:
        try:
            st = os.statvfs(path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _LOW_DISK_BYTES
    return False


def no_space(exc: lmdb.Error, path: str) -> NoSpace:
    """The error a full disk gives users. A Store retries writing about once a second
    (member.writer.NO_SPACE_RETRY), so writes resume by themselves once space is freed."""
    return NoSpace(
        f"no space left on the device holding {path} ({exc}); writes are refused until space "
        "is freed, and then resume by themselves (the store tries again about once a second); "
        "reads keep working; nothing committed is lost"
    )


class Env:
    """An open LMDB environment with the data dir's named databases."""

    def __init__(self, path: str, *, durable: bool) -> None:
        self.path = path
        map_size = INITIAL_MAP_SIZE
        self.durable = durable
        self.gate = ReadGate()
        data_file = os.path.join(path, "data.mdb")
        marker = os.path.join(path, MARKER_FILE)
        initialised = os.path.exists(marker)
        size = os.path.getsize(data_file) if os.path.exists(data_file) else -1
        if initialised and size <= 0:
            raise CorruptData(
                f"{data_file} is {'missing' if size < 0 else 'empty'}, but {path} has held a "
                f"data dir ({MARKER_FILE} is there): refusing to open it as a new, empty store"
            )
        map_size = max(map_size, _round_up(size * 2))
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size,
                subdir=True,
                max_dbs=len(DB_NAMES),
                max_readers=MAX_READERS,
                sync=durable,
                metasync=durable,
                readahead=False,
                meminit=False,
            )
        except lmdb.VersionMismatchError as exc:
            raise UnsupportedFormat(f"{path}: LMDB version mismatch ({exc})") from None
        except (lmdb.InvalidError, lmdb.CorruptedError) as exc:
            raise CorruptData(f"{path} does not hold a valid LMDB environment: {exc}") from None
        except lmdb.Error as exc:
            if is_disk_full(exc, path):
                raise no_space(exc, path) from None
            raise CorruptData(f"{path}: cannot open the LMDB environment: {exc}") from None
        try:
            self._check_file_size(data_file)
            self.env.reader_check()
            self._open_dbs(initialised)
            if not initialised:
                self._write_marker(marker)
        except BaseException:
            self.env.close()
            raise

    def _write_marker(self, marker: str) -> None:
        """Mark the dir as holding data, once the format record is on disk (so a crash in
        between leaves an unmarked dir that opens, never a marked one without its data)."""
        self.env.sync(True)
        tmp = marker + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _MARKER_TEXT)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, marker)
        fsync_dir(self.path)

    def _check_file_size(self, data_file: str) -> None:
        """A truncated data file would crash the process (SIGBUS) on first touch: refuse it.

        The file may end before LMDB's last allocated page (pages allocated and freed in one
        transaction are never written), but only free pages may lie past its end
        (lmdbfile.needed_size; docs/internals/storage.md)."""
        need, have = needed_size(data_file)
        if have < need:
            raise CorruptData(
                f"{data_file} is truncated: {have} bytes, but its pages need {need} bytes"
            )

    def _open_dbs(self, initialised: bool) -> None:
        while True:
            try:
                self._open_dbs_once(initialised)
                return
            except lmdb.MapFullError:  # an upgrade rewrites every record: more map, again
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def _open_dbs_once(self, initialised: bool) -> None:
        try:
            with self.env.begin(write=True) as txn:
                self.dbs = {name: self.env.open_db(name, txn=txn) for name in DB_NAMES}
                self.dbs[MAIN_DB] = self.env.open_db(None, txn=txn)
                meta = self.dbs[b"meta"]
                stored = txn.get(META_FORMAT, db=meta)
                if stored is None:
                    state = self.dbs[STATE_DB]
                    if (txn.get(META_STATE, db=state) is not None
                            or txn.get(b"state", db=meta) is not None):  # format 1's record
                        raise CorruptData(f"{self.path}: the format version record is missing")
                    if initialised:
                        raise CorruptData(
                            f"{self.path}/data.mdb holds no embedkv data, but the dir has "
                            f"held a data dir ({MARKER_FILE} is there): refusing to open it "
                            "as a new, empty store"
                        )
                    txn.put(META_FORMAT, U32.pack(FORMAT_VERSION), db=meta)
                    txn.put(META_STATE, U64X3.pack(0, 1, 0), db=state)
                elif txn.get(RESTORING, db=meta) is not None:
                    raise CorruptData(f"{self.path} holds an incomplete snapshot restore")
                else:
                    (version,) = unpack_exact(U32, stored, "format version")
                    if version in UPGRADES_FROM:
                        self._upgrade(txn, version)
                    elif version != FORMAT_VERSION:
                        raise UnsupportedFormat(
                            f"{self.path} has data-dir format {version}; this embedkv reads "
                            f"format {FORMAT_VERSION}"
                        )
        except lmdb.MapFullError:
            raise
        except lmdb.Error as exc:
            if is_disk_full(exc, self.path):
                raise no_space(exc, self.path) from None
            raise CorruptData(f"{self.path}: cannot open the databases: {exc}") from None

    def _upgrade(self, txn: lmdb.Transaction[bytes], version: int) -> None:
        """Formats 2 and 3 to 4, in the transaction that opens the databases (all or
        nothing). 2 to 3: move the log's compaction point next to the records every batch
        writes. 3 to 4: seal every state-machine value with its checksum."""
        if version == 2:
            raft_state = self.dbs[b"raft_state"]
            raw = txn.pop(LOG_START, db=raft_state)
            if raw is not None:
                txn.put(LOG_START, raw, db=self.dbs[STATE_DB])
        for table in SUMMED_TABLES:
            cursor = txn.cursor(db=self.dbs[table.encode()])
            more = cursor.first()
            while more:
                key = cursor.key()
                cursor.put(key, seal(key, cursor.value()))  # overwrites: the cursor stays
                more = cursor.next()
        txn.put(META_FORMAT, U32.pack(FORMAT_VERSION), db=self.dbs[b"meta"])

    def grow(self, abort: Callable[[], None] = lambda: None) -> None:
        """Double the map. `abort` ends the caller's write transaction first, inside the
        exclusive section: py-lmdb's abort competes for an environment lock with every read
        transaction, and busy readers can starve it for seconds."""
        with self.gate.exclusive():
            abort()
            size = self.env.info()["map_size"]
            self.env.set_mapsize(size * 2)

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction[bytes]]:
        """A read transaction, admitted by the gate."""
        gate = self.gate
        gate.enter()
        try:
            txn = self.env.begin()
            try:
                yield txn
            finally:
                txn.abort()
        finally:
            gate.leave()

    def close(self) -> None:
        with self.gate.exclusive():
            self.gate.close()
            self.env.close()


def _round_up(n: int) -> int:
    size = INITIAL_MAP_SIZE
    while size < n:
        size *= 2
    return size


def fsync_dir(directory: str) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
