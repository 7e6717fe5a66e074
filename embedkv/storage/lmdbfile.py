"""Reading an LMDB 0.9 data file with pread, never through the memory map.

LMDB maps ``data.mdb`` and trusts it: a page number past the end of the file kills the process
with SIGBUS on first touch, and a damaged branch page can send it anywhere. This module reads
the file's own structures (meta pages, B-tree pages, the free list) with ``os.pread`` so that
damage shows up as an exception, not a crash. Two uses:

* on open, ``needed_size`` says how many bytes of the file can be touched at all: every page up
  to the last allocated one (the meta's ``last_pgno``) except those on the free list. LMDB
  allocates pages from ``last_pgno + 1`` and writes a page only when its transaction commits;
  a page allocated and freed again in one transaction ("loose") is put on the free list
  without ever being written, so the file may legitimately end before ``last_pgno``. Only free
  pages can lie past the end; a page still in use there means the file was truncated.
* the verifier (``walk``) visits every page reachable from the B-trees and checks its header.

The layout (64-bit LMDB 0.9, native byte order) is from LMDB's mdb.c: a page starts with a
16-byte header (pgno u64, pad u16, flags u16, lower u16, upper u16 — or, on an overflow page,
a u32 page count in place of lower/upper), followed by u16 node offsets; a node is
lo u16, hi u16, flags u16, key size u16, key, data. A branch node's child page number is
lo | hi << 16 | flags << 32; a leaf node's data size is lo | hi << 16.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from embedkv.errors import CorruptData

MAGIC: Final = 0xBEEFC0DE
_PAGE_HEAD: Final = struct.Struct("=QHHHH")
_OVERFLOW_HEAD: Final = struct.Struct("=QHHI")
_NODE: Final = struct.Struct("=HHHH")
_DB: Final = struct.Struct("=IHHQQQQQ")
"""MDB_db: pad (the page size, in the meta's free DB), flags, depth, branch/leaf/overflow page
counts, entries, root."""
_META: Final = struct.Struct("=IIQQ")
"""MDB_meta's head: magic, version, address, map size; two MDB_db, last_pgno, txnid follow."""
_U64: Final = struct.Struct("=Q")
_PAGE_HEAD_SIZE: Final = 16
_NODE_SIZE: Final = 8
P_BRANCH: Final = 0x01
P_LEAF: Final = 0x02
P_OVERFLOW: Final = 0x04
P_META: Final = 0x08
P_LEAF2: Final = 0x20
F_BIGDATA: Final = 0x01
F_SUBDATA: Final = 0x02
F_DUPDATA: Final = 0x04
_NODE_FLAG: Final = 0x10000
"""Set on what ``_Reader.tree`` yields for a leaf node, to tell it from a page."""
P_INVALID: Final = (1 << 64) - 1
_MAX_DEPTH: Final = 64


@dataclass(frozen=True, slots=True)
class Meta:
    """The newest of the two meta pages: what a new transaction starts from."""

    page_size: int
    last_pgno: int
    txnid: int
    free_root: int
    main_root: int


@dataclass(frozen=True, slots=True)
class Walked:
    """What ``walk`` found: pages by kind, values on overflow pages, and the highest page
    number any of them covers."""

    branch_pages: int
    leaf_pages: int
    overflow_values: int
    databases: int
    max_pgno: int


def _pread(fd: int, size: int, offset: int, path: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise CorruptData(
            f"{path} is truncated: {os.fstat(fd).st_size} bytes, but a page in use needs "
            f"{offset + size}"
        )
    return data


def read_meta(fd: int, path: str) -> Meta:
    """The newest valid meta page (LMDB picks the higher txnid)."""
    best: Meta | None = None
    psize = 0
    for n in (0, 1):
        if n == 1:
            if not psize:
                break
            offset = psize
        else:
            offset = 0
        head = os.pread(fd, _PAGE_HEAD_SIZE + _META.size + 2 * _DB.size + 16, offset)
        if len(head) < _PAGE_HEAD_SIZE + _META.size + 2 * _DB.size + 16:
            continue
        flags = _PAGE_HEAD.unpack_from(head)[2]
        magic, _version, _addr, _mapsize = _META.unpack_from(head, _PAGE_HEAD_SIZE)
        if magic != MAGIC or not flags & P_META:
            continue
        pos = _PAGE_HEAD_SIZE + _META.size
        free_db = _DB.unpack_from(head, pos)
        main_db = _DB.unpack_from(head, pos + _DB.size)
        last_pgno, txnid = struct.unpack_from("=QQ", head, pos + 2 * _DB.size)
        if n == 0:
            psize = free_db[0]
            if psize < 512 or psize & (psize - 1):
                raise CorruptData(f"{path}: meta page 0 has page size {psize}")
        meta = Meta(psize, last_pgno, txnid, free_db[7], main_db[7])
        if best is None or meta.txnid > best.txnid:
            best = meta
    if best is None:
        raise CorruptData(f"{path} has no valid LMDB meta page")
    return best


class _Reader:
    def __init__(self, fd: int, path: str, meta: Meta) -> None:
        self.fd = fd
        self.path = path
        self.meta = meta

    def page(self, pgno: int, what: str) -> bytes:
        meta = self.meta
        if not 2 <= pgno <= meta.last_pgno:
            raise CorruptData(
                f"{self.path}: {what} points at page {pgno}, outside 2..{meta.last_pgno}"
            )
        data = _pread(self.fd, meta.page_size, pgno * meta.page_size, self.path)
        if _PAGE_HEAD.unpack_from(data)[0] != pgno:
            raise CorruptData(f"{self.path}: page {pgno} ({what}) carries another page number")
        return data

    def nodes(self, page: bytes, pgno: int) -> Iterator[tuple[int, int, int, int]]:
        """(flags, key offset, key size, lo | hi << 16) of every node of a branch or leaf page."""
        _, _, _, lower, upper = _PAGE_HEAD.unpack_from(page)
        psize = self.meta.page_size
        if not _PAGE_HEAD_SIZE <= lower <= upper <= psize or (lower - _PAGE_HEAD_SIZE) % 2:
            raise CorruptData(f"{self.path}: page {pgno} has a bad header ({lower}, {upper})")
        for i in range((lower - _PAGE_HEAD_SIZE) // 2):
            (off,) = struct.unpack_from("=H", page, _PAGE_HEAD_SIZE + 2 * i)
            if not upper <= off <= psize - _NODE_SIZE:
                raise CorruptData(f"{self.path}: page {pgno} has a node outside its page")
            lo, hi, flags, ksize = _NODE.unpack_from(page, off)
            if off + _NODE_SIZE + ksize > psize:
                raise CorruptData(f"{self.path}: page {pgno} has a key outside its page")
            yield flags, off + _NODE_SIZE, ksize, lo | hi << 16

    def leaf_data(self, page: bytes, pgno: int, flags: int, koff: int, ksize: int,
                  size: int) -> tuple[bytes, int, int]:
        """A leaf node's data, and the first and number of overflow pages holding it (0, 0
        when inline)."""
        start = koff + ksize
        if flags & F_BIGDATA:
            if start + 8 > len(page):
                raise CorruptData(f"{self.path}: page {pgno} has a node outside its page")
            (opg,) = _U64.unpack_from(page, start)
            head = self.page(opg, f"a value on page {pgno}")
            _, _, oflags, count = _OVERFLOW_HEAD.unpack_from(head)
            psize = self.meta.page_size
            if (not oflags & P_OVERFLOW or count < 1 or opg + count - 1 > self.meta.last_pgno
                    or size > count * psize - _PAGE_HEAD_SIZE):
                raise CorruptData(f"{self.path}: overflow page {opg} has a bad header")
            rest = _pread(self.fd, size + _PAGE_HEAD_SIZE - psize, (opg + 1) * psize,
                          self.path) if size + _PAGE_HEAD_SIZE > psize else b""
            return (head[_PAGE_HEAD_SIZE:] + rest)[:size], opg, count
        if start + size > len(page):
            raise CorruptData(f"{self.path}: page {pgno} has a value outside its page")
        return page[start : start + size], 0, 0

    def tree(self, root: int, what: str) -> Iterator[tuple[int, int, bytes, bytes, int]]:
        """Walk a B-tree, depth first: (pgno, P_BRANCH or P_LEAF, b"", b"", 0) per page, then
        (pgno, node flags, key, data, last page it covers) per leaf node."""
        if root == P_INVALID:
            return
        stack = [(root, 0)]
        while stack:
            pgno, depth = stack.pop()
            if depth > _MAX_DEPTH:
                raise CorruptData(f"{self.path}: {what} is deeper than {_MAX_DEPTH} levels")
            page = self.page(pgno, what)
            pflags = _PAGE_HEAD.unpack_from(page)[2]
            if pflags & P_BRANCH:
                yield pgno, P_BRANCH, b"", b"", 0
                children = [(lo | (flags << 32), depth + 1)
                            for flags, _, _, lo in self.nodes(page, pgno)]
                stack.extend(reversed(children))
            elif pflags & P_LEAF and not pflags & P_LEAF2:
                yield pgno, P_LEAF, b"", b"", 0
                for flags, koff, ksize, size in self.nodes(page, pgno):
                    if flags & F_DUPDATA:
                        raise CorruptData(f"{self.path}: {what} has duplicate-sorted data")
                    data, first, count = self.leaf_data(page, pgno, flags, koff, ksize, size)
                    yield (pgno, flags | _NODE_FLAG, page[koff : koff + ksize], data,
                           first + count - 1 if count else pgno)
            else:
                raise CorruptData(f"{self.path}: page {pgno} of {what} has flags {pflags:#x}")


def free_pages(fd: int, path: str, meta: Meta) -> set[int]:
    """Every page number on the free list (pages a later transaction may reuse)."""
    reader = _Reader(fd, path, meta)
    free: set[int] = set()
    for pgno, flags, _key, data, _last in reader.tree(meta.free_root, "the free list"):
        if not flags & _NODE_FLAG:
            continue
        if len(data) < 8 or len(data) % 8:
            raise CorruptData(f"{path}: a free-list record on page {pgno} is malformed")
        n = _U64.unpack_from(data)[0]
        if n != len(data) // 8 - 1:
            raise CorruptData(f"{path}: a free-list record on page {pgno} is malformed")
        free.update(struct.unpack_from(f"={n}Q", data, 8))
    return free


def needed_size(path: str) -> tuple[int, int]:
    """(bytes of data.mdb that LMDB may touch, bytes the file has).

    The bound is the end of the highest page that is allocated and not free; pages past it are
    free and never read. CorruptData if the free list itself lies past the end.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        have = os.fstat(fd).st_size
        meta = read_meta(fd, path)
        top = meta.last_pgno
        if (top + 1) * meta.page_size > have:
            free = free_pages(fd, path, meta)
            while top > 1 and top in free:
                top -= 1
        return (top + 1) * meta.page_size, have
    finally:
        os.close(fd)


def walk(path: str) -> tuple[Walked, list[tuple[bytes, int]]]:
    """Visit every page reachable from the main and free B-trees and from each named
    database; returns the counts and the named databases as (name, root page).

    CorruptData at the first structural damage (bad page number, header or node bounds).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        meta = read_meta(fd, path)
        reader = _Reader(fd, path, meta)
        counts = {P_BRANCH: 0, P_LEAF: 0}
        overflow = 0
        top = 1
        named: list[tuple[bytes, int]] = []

        def visit(root: int, what: str, main: bool) -> None:
            nonlocal overflow, top
            for pgno, flags, key, data, last in reader.tree(root, what):
                if not flags & _NODE_FLAG:
                    counts[flags] += 1
                    top = max(top, pgno)
                    continue
                if last != pgno:
                    overflow += 1
                    top = max(top, last)
                if main and flags & F_SUBDATA:
                    if len(data) != _DB.size:
                        raise CorruptData(f"{path}: database record {key!r} is malformed")
                    named.append((key, _DB.unpack(data)[7]))

        visit(meta.free_root, "the free list", False)
        visit(meta.main_root, "the main database", True)
        for name, root in named:
            visit(root, f"database {name.decode('ascii', 'replace')}", False)
        return Walked(counts[P_BRANCH], counts[P_LEAF], overflow, len(named), top), named
    finally:
        os.close(fd)
