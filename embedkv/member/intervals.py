"""Indexes over key selections: which of many prefixes, or [low, high) ranges, hold a key.

The watch hub keeps its prefix watches in a PrefixIndex and its other range watches in an
IntervalIndex (exact-key watches are a dict), so that the cost of routing an event follows the
watches it matches, not the watches that exist (etcd's watchable store does the same with an
interval tree).

* PrefixIndex: a dict from prefix to its watches, and the distinct prefix lengths in use; a key
  is looked up once per distinct length not longer than itself (many watches on distinct
  prefixes usually share a few lengths: one lookup each).
* IntervalIndex: a treap (a binary search tree on (low, id), heap-ordered on random priorities,
  so expected depth O(log n) whatever the order of insertion; changed by split and merge) in
  which every node also knows the largest `high` in its subtree: a stabbing query skips every
  subtree whose ranges all end at or before the key, and every right subtree whose ranges all
  start after it.
"""

from __future__ import annotations

import random
from typing import Generic, TypeVar

_V = TypeVar("_V")


def _max_high(a: bytes | None, b: bytes | None) -> bytes | None:
    """The larger of two upper bounds; None is unbounded."""
    if a is None or b is None:
        return None
    return a if a >= b else b


class PrefixIndex(Generic[_V]):
    """Values under byte-string prefixes, each with a unique int id. Not thread-safe."""

    __slots__ = ("_by_prefix", "_len", "_lengths", "_sorted_lengths", "visited")

    def __init__(self) -> None:
        self._by_prefix: dict[bytes, dict[int, _V]] = {}
        self._lengths: dict[int, int] = {}  # prefix length -> prefixes of that length
        self._sorted_lengths: list[int] = []
        self._len = 0
        self.visited = 0
        """Prefixes looked up by stab() so far (tests check the cost per key)."""

    def __len__(self) -> int:
        return self._len

    def add(self, prefix: bytes, ident: int, value: _V) -> None:
        """Index `value` under `prefix`; `ident` must not be in the index already."""
        values = self._by_prefix.get(prefix)
        if values is None:
            values = self._by_prefix[prefix] = {}
            n = len(prefix)
            self._lengths[n] = self._lengths.get(n, 0) + 1
            if self._lengths[n] == 1:
                self._sorted_lengths = sorted(self._lengths)
        values[ident] = value
        self._len += 1

    def remove(self, prefix: bytes, ident: int) -> bool:
        """Drop `ident` from under `prefix`; False if it is not there."""
        values = self._by_prefix.get(prefix)
        if values is None or values.pop(ident, None) is None:
            return False
        self._len -= 1
        if not values:
            del self._by_prefix[prefix]
            n = len(prefix)
            self._lengths[n] -= 1
            if not self._lengths[n]:
                del self._lengths[n]
                self._sorted_lengths = sorted(self._lengths)
        return True

    def stab(self, key: bytes) -> list[_V]:
        """The values of every prefix of `key` (the empty prefix included)."""
        out: list[_V] = []
        get = self._by_prefix.get
        n = len(key)
        looked = 0
        for length in self._sorted_lengths:
            if length > n:
                break
            looked += 1
            values = get(key[:length])
            if values:
                out.extend(values.values())
        self.visited += looked
        return out

    def values(self) -> list[_V]:
        return [v for values in self._by_prefix.values() for v in values.values()]

    def clear(self) -> None:
        self._by_prefix.clear()
        self._lengths.clear()
        self._sorted_lengths = []
        self._len = 0


class _Node(Generic[_V]):
    __slots__ = ("high", "ident", "left", "low", "max_high", "priority", "right", "value")

    def __init__(self, low: bytes, high: bytes | None, ident: int, value: _V,
                 priority: float) -> None:
        self.low = low
        self.high = high
        self.ident = ident
        self.value = value
        self.priority = priority
        self.left: _Node[_V] | None = None
        self.right: _Node[_V] | None = None
        self.max_high = high

    def fix(self) -> None:
        """Recompute max_high from the children (after they changed)."""
        m = self.high
        left, right = self.left, self.right
        if left is not None:
            m = _max_high(m, left.max_high)
        if right is not None:
            m = _max_high(m, right.max_high)
        self.max_high = m


class IntervalIndex(Generic[_V]):
    """Ranges [low, high) of byte strings (high None: no upper bound), each with a unique int
    id and a value. Not thread-safe: the hub calls it under its lock."""

    __slots__ = ("_len", "_rng", "_root", "visited")

    def __init__(self, seed: int | None = None) -> None:
        self._root: _Node[_V] | None = None
        self._len = 0
        self._rng = random.Random(seed)
        self.visited = 0
        """Nodes looked at by stab() so far (tests check the index is output-sensitive)."""

    def __len__(self) -> int:
        return self._len

    def add(self, low: bytes, high: bytes | None, ident: int, value: _V) -> None:
        """Index `value` under [low, high); `ident` must not be in the index already."""
        if high is not None and high <= low:
            raise ValueError("an interval needs low < high")
        node = _Node(low, high, ident, value, self._rng.random())
        below, above = self._split(self._root, (low, ident))
        self._root = self._merge(self._merge(below, node), above)
        self._len += 1

    def _split(
        self, root: _Node[_V] | None, key: tuple[bytes, int]
    ) -> tuple[_Node[_V] | None, _Node[_V] | None]:
        """Cut a treap into the nodes below `key` and those at or above it."""
        if root is None:
            return None, None
        if (root.low, root.ident) < key:
            root.right, above = self._split(root.right, key)
            root.fix()
            return root, above
        below, root.left = self._split(root.left, key)
        root.fix()
        return below, root

    def remove(self, low: bytes, ident: int) -> bool:
        """Drop the interval starting at `low` with `ident`; False if it is not there."""
        root, found = self._delete(self._root, (low, ident))
        self._root = root
        if found:
            self._len -= 1
        return found

    def _delete(
        self, root: _Node[_V] | None, key: tuple[bytes, int]
    ) -> tuple[_Node[_V] | None, bool]:
        if root is None:
            return None, False
        here = (root.low, root.ident)
        if key < here:
            root.left, found = self._delete(root.left, key)
        elif key > here:
            root.right, found = self._delete(root.right, key)
        else:
            return self._merge(root.left, root.right), True
        root.fix()
        return root, found

    def _merge(self, a: _Node[_V] | None, b: _Node[_V] | None) -> _Node[_V] | None:
        """Join two treaps, every key of `a` below every key of `b`."""
        if a is None:
            return b
        if b is None:
            return a
        if a.priority > b.priority:
            a.right = self._merge(a.right, b)
            a.fix()
            return a
        b.left = self._merge(a, b.left)
        b.fix()
        return b

    def stab(self, key: bytes) -> list[_V]:
        """The values of every interval holding `key` (low <= key < high), in no set order."""
        out: list[_V] = []
        root = self._root
        if root is None:
            return out
        stack = [root]
        pop, push = stack.pop, stack.append
        visited = 0
        while stack:
            n = pop()
            visited += 1
            m = n.max_high
            if m is not None and m <= key:
                continue  # every range below here ends at or before the key
            if n.left is not None:
                push(n.left)
            if n.low <= key:
                high = n.high
                if high is None or key < high:
                    out.append(n.value)
                if n.right is not None:
                    push(n.right)
            # else: n and its right subtree start after the key
        self.visited += visited
        return out

    def values(self) -> list[_V]:
        """Every value, in (low, id) order."""
        out: list[_V] = []
        stack: list[_Node[_V]] = []
        n = self._root
        while stack or n is not None:
            while n is not None:
                stack.append(n)
                n = n.left
            n = stack.pop()
            out.append(n.value)
            n = n.right
        return out

    def clear(self) -> None:
        self._root = None
        self._len = 0
