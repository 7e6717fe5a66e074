"""A live, read-only view of a prefix: one consistent revision, kept current by a watch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from embedkv import Compacted, Event, Get, Key, Store

from ._base import Follow, key_text, ranged


class ConfigView(Mapping[str, Any]):
    """``store.config(prefix)``: a Mapping of the keys under `prefix` (without it) to their
    values. The whole view is always the state of the prefix at one revision
    (``.revision``): on each change the view is re-read at the revision of the change, so a
    transaction that changes several keys shows up all at once. ``on_change(callback)`` calls
    ``callback(view)`` after each update, on the watch dispatcher thread (on the recipes'
    watchdog thread for the catch-up after the store ended the watch: see Follow)."""

    def __init__(self, store: Store, prefix: Key) -> None:
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a str")
        self._store = store
        self._prefix = prefix
        self._mu = threading.Lock()
        self._callbacks: list[Callable[[ConfigView], object]] = []
        self._data: dict[str, Any] = {}
        self._revision = 0
        self._follow = Follow(store, prefix, prefix=True, read=self._reread,
                              on_event=self._on_event)

    def _reread(self) -> int:
        """Read the whole prefix afresh (first, and whenever the watch had to start again);
        the callbacks run if the view changed meanwhile."""
        r = self._store.txn(success=[Get(self._prefix, prefix=True)])
        data = self._strip(ranged(r, 0).kvs)
        with self._mu:
            changed = self._revision != 0 and data != self._data
            self._data, self._revision = data, r.revision
        if changed:
            for cb in list(self._callbacks):
                cb(self)
        return r.revision

    def _strip(self, kvs: Any) -> dict[str, Any]:
        out = {}
        for kv in kvs:
            out[key_text(kv)[len(self._prefix):]] = kv.value
        return out

    def _on_event(self, event: Event) -> None:
        if event.revision <= self._revision:
            return  # already in the view: it was re-read at this revision or later
        try:  # a plain read at the event's revision: the prefix after all of that revision
            rev = event.revision
            kvs = self._store.range(prefix=self._prefix, revision=rev)
        except Compacted:
            r = self._store.txn(success=[Get(self._prefix, prefix=True)])
            kvs, rev = list(ranged(r, 0).kvs), r.revision
        with self._mu:
            self._data, self._revision = self._strip(kvs), rev
        for cb in list(self._callbacks):
            cb(self)

    @property
    def revision(self) -> int:
        """The store revision this view shows."""
        return self._revision

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """(revision, a copy of the data) taken together."""
        with self._mu:
            return self._revision, dict(self._data)

    def on_change(self, callback: Callable[[ConfigView], object]) -> None:
        """Call `callback(view)` after each change of the view (see the class)."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._callbacks.append(callback)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        """Stop following the prefix (the view keeps its last state)."""
        self._follow.cancel()

    def __enter__(self) -> ConfigView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
