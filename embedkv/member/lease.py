"""Lease timers: expiry deadlines in memory, keep-alives, and expiry by proposing LeaseRevoke.

Grants and revokes are replicated (they go through Raft); deadlines are not. As in etcd only the
leader expires leases, and when a member becomes leader (a restart of a one-member store
included) every existing lease's countdown starts again at its full TTL: a deadline from a
previous leader's clock is meaningless here.

Deadlines live in a heap with lazy invalidation: a keep-alive pushes a new entry and the stale
one is skipped when it surfaces, so a tick costs O(log n) per due lease, not a scan of all.
"""

from __future__ import annotations

import functools
import heapq
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from embedkv.errors import Closed, LeaseNotFound, NoSpace
from embedkv.storage.requests import Key, LeaseRevoke

log = logging.getLogger("embedkv.lease")

Clock = Callable[[], float]
ProposeRevoke = Callable[[LeaseRevoke], "Future[Any]"]


class LeaseTable(Protocol):
    """The replicated lease table (the storage key space)."""

    def leases(self) -> list[tuple[int, int]]: ...

    def lease(self, lease_id: int) -> tuple[int, list[Key]] | None: ...


class LeaseKeeper:
    """Tracks every lease's deadline; the engine calls `tick`, callers `keepalive`."""

    def __init__(
        self, table: LeaseTable, clock: Clock, propose: ProposeRevoke, retry_after: float
    ) -> None:
        self._table = table
        self._clock = clock
        self._propose = propose
        self._retry_after = retry_after  # how long a revoke proposal may take before retrying
        self._lock = threading.Lock()
        self._leader = False
        self._ttl: dict[int, int] = {}
        self._deadline: dict[int, float] = {}
        self._expiry: list[tuple[float, int]] = []  # (deadline, id); stale entries skipped
        self._revoking: dict[int, float] = {}  # id -> when to propose again if still there
        self._auto: dict[int, float] = {}  # id -> next automatic refresh
        self._refresh: list[tuple[float, int]] = []  # (next refresh, id); stale entries skipped
        self.forward: Callable[[list[int]], None] | None = None
        """On a member of a cluster: sends automatic keep-alives to the leader while another
        member leads (called from `tick`, with the ids due)."""

    # --- from the log writer: what was applied, who leads -----------------------------------

    def on_granted(self, lease_id: int, ttl: int) -> None:
        """A grant was applied (by any member's proposal): its countdown starts now."""
        with self._lock:
            self._track(lease_id, ttl, self._clock())

    def on_leadership(self, leader: bool) -> None:
        """This member became (or stopped being) leader: restart every countdown at full TTL."""
        leases = self._table.leases() if leader else []
        with self._lock:
            self._leader = leader
            self._revoking.clear()
            if not leader:
                return
            now = self._clock()
            self._ttl.clear()
            self._deadline.clear()
            self._expiry.clear()
            for lease_id, ttl in leases:
                self._track(lease_id, ttl, now)

    def forget(self, lease_id: int) -> None:
        """The lease was revoked (the revoke's result is in): stop tracking it."""
        with self._lock:
            self._untrack(lease_id)

    def _track(self, lease_id: int, ttl: int, now: float) -> None:
        self._ttl[lease_id] = ttl
        deadline = now + ttl
        self._deadline[lease_id] = deadline
        heapq.heappush(self._expiry, (deadline, lease_id))
        self._revoking.pop(lease_id, None)
        if lease_id in self._auto:
            self._auto_next(lease_id, now)

    def _untrack(self, lease_id: int) -> None:
        self._ttl.pop(lease_id, None)
        self._deadline.pop(lease_id, None)
        self._revoking.pop(lease_id, None)
        self._auto.pop(lease_id, None)

    def _auto_next(self, lease_id: int, now: float) -> None:
        due = now + self._ttl[lease_id] / 3
        self._auto[lease_id] = due
        heapq.heappush(self._refresh, (due, lease_id))

    # --- from caller threads --------------------------------------------------------------

    def _known_ttl(self, lease_id: int) -> int:
        """The lease's TTL if it exists and is not being revoked; LeaseNotFound otherwise."""
        if type(lease_id) is not int:
            raise TypeError(f"lease ids are ints, not {type(lease_id).__name__}")
        found = self._table.lease(lease_id)
        if found is None or lease_id in self._revoking:
            raise LeaseNotFound(lease_id)
        return found[0]

    def keepalive(self, lease_id: int) -> int:
        """Restart the lease's countdown; returns its TTL. LeaseNotFound if it is gone."""
        ttl = self._known_ttl(lease_id)
        with self._lock:
            if lease_id in self._revoking:
                raise LeaseNotFound(lease_id)
            self._track(lease_id, ttl, self._clock())
        return ttl

    def set_auto(self, lease_id: int, enabled: bool) -> None:
        """Let the engine refresh the lease every ttl/3 (or stop doing so)."""
        if not enabled:
            with self._lock:
                self._auto.pop(lease_id, None)
            return
        ttl = self._known_ttl(lease_id)
        with self._lock:
            now = self._clock()
            if lease_id not in self._ttl:
                self._track(lease_id, ttl, now)
            self._auto[lease_id] = now
            self._auto_next(lease_id, now)

    def time_to_live(self, lease_id: int) -> tuple[int, float] | None:
        """(granted TTL, seconds left) or None if the lease does not exist."""
        if type(lease_id) is not int:
            raise TypeError(f"lease ids are ints, not {type(lease_id).__name__}")
        found = self._table.lease(lease_id)
        with self._lock:
            if found is None or lease_id in self._revoking:
                return None
            deadline = self._deadline.get(lease_id)
            if deadline is None:
                return found[0], float(found[0])
            return found[0], max(0.0, deadline - self._clock())

    # --- from the engine thread, every tick ---------------------------------------------------

    def reload(self) -> None:
        """The lease table was replaced (a snapshot was installed): track what it holds now."""
        leases = self._table.leases()
        with self._lock:
            now = self._clock()
            known = {lease_id for lease_id, _ in leases}
            for lease_id in list(self._ttl):
                if lease_id not in known:
                    self._untrack(lease_id)
            for lease_id, ttl in leases:
                if lease_id not in self._ttl:
                    self._track(lease_id, ttl, now)

    def tick(self) -> None:
        """Refresh auto keep-alive leases; as leader, propose a revoke for each expired lease."""
        with self._lock:
            now = self._clock()
            refreshed = self._refresh_due(now)
            if not self._leader:
                forward = self.forward
                if refreshed and forward is not None:
                    forward(refreshed)
                return
            due = self._expired(now)
        for lease_id in due:
            if self._table.lease(lease_id) is None:
                self.forget(lease_id)  # revoked meanwhile (by a proposal of another member)
                continue
            try:
                future = self._propose(LeaseRevoke(lease_id))
            except (Closed, NoSpace) as exc:
                log.debug("lease %#x expired but cannot be revoked now: %s", lease_id, exc)
                continue
            future.add_done_callback(functools.partial(self._revoked, lease_id))

    def _refresh_due(self, now: float) -> list[int]:
        heap = self._refresh
        refreshed: list[int] = []
        while heap and heap[0][0] <= now:
            due, lease_id = heapq.heappop(heap)
            if self._auto.get(lease_id) != due:
                continue  # stale: auto keep-alive turned off or rescheduled
            if lease_id in self._revoking or lease_id not in self._ttl:
                self._auto.pop(lease_id, None)
                continue
            self._track(lease_id, self._ttl[lease_id], now)
            refreshed.append(lease_id)
        return refreshed

    def _expired(self, now: float) -> list[int]:
        heap = self._expiry
        due: list[int] = []
        while heap and heap[0][0] <= now:
            deadline, lease_id = heapq.heappop(heap)
            if self._deadline.get(lease_id) != deadline:
                continue  # stale: refreshed, re-granted or forgotten since
            del self._deadline[lease_id]
            self._revoking[lease_id] = now + self._retry_after
            due.append(lease_id)
        for lease_id, retry in list(self._revoking.items()):
            if retry <= now and lease_id not in due:
                self._revoking[lease_id] = now + self._retry_after
                due.append(lease_id)
        return due

    def _revoked(self, lease_id: int, future: Future[Any]) -> None:
        """A revoke proposal finished: forget the lease, or retry later if its fate is unknown."""
        exc = future.exception()
        if exc is None or isinstance(exc, LeaseNotFound):
            self.forget(lease_id)
        else:
            log.debug("revoke of expired lease %#x failed (%s); retrying", lease_id, exc)
