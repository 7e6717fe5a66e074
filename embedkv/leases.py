"""Leases: Lease (from ``store.lease``) and AsyncLease (from ``await astore.lease``).

The member grants, refreshes and revokes leases and keeps them alive (``set_auto_keepalive``);
these are the caller's handles on one lease, sync and async over the same operations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import Closed, LeaseNotFound
from .operations import check_flag
from .storage.requests import Key, LeaseGrantResult

if TYPE_CHECKING:
    from .store import Store


def _check_ttl(ttl: int) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"ttl must be an int number of seconds, not {type(ttl).__name__}")
    if ttl < 1:
        raise ValueError("ttl must be at least 1 second")


def propose_grant(store: Store, ttl: int, keepalive: bool) -> concurrent.futures.Future[Any]:
    """Check a lease's arguments and propose its grant (Store.lease and AsyncStore.lease
    wait on the future each in its own way, then call ``granted``)."""
    _check_ttl(ttl)
    check_flag("keepalive", keepalive)
    store._check()
    return store._m.grant_lease(ttl)


def granted(store: Store, grant: LeaseGrantResult, keepalive: bool) -> Lease:
    """The Lease of a granted lease, kept alive by the member if asked."""
    if keepalive:
        store._m.set_auto_keepalive(grant.id, True)
    return Lease(store, grant.id, grant.ttl, keepalive)


def lease_id(lease: Lease | AsyncLease | int | None) -> int | None:
    """The id a write's ``lease=`` argument names: a Lease, an AsyncLease or an id."""
    if lease is None:
        return None
    if isinstance(lease, Lease | AsyncLease):
        return lease.id
    if isinstance(lease, bool) or not isinstance(lease, int):
        raise TypeError(f"lease must be a Lease or a lease id, not {type(lease).__name__}")
    return lease


class Lease:
    """A lease granted by ``store.lease(ttl)``; a context manager that revokes it on exit."""

    def __init__(self, store: Store, lease_id: int, ttl: int, keepalive: bool) -> None:
        self._store = store
        self.id = lease_id
        self.ttl = ttl
        self._keepalive = keepalive
        self._revoked = False

    def __repr__(self) -> str:
        return f"<embedkv.Lease id={self.id:#x} ttl={self.ttl}>"

    def refresh(self) -> int:
        """Restart the countdown now; returns the TTL. LeaseNotFound if it already ended."""
        self._store._check()
        return int(self._store._m.keepalive(self.id))

    def revoke(self) -> None:
        """End the lease now, deleting its keys; a second call on this object does nothing.
        LeaseNotFound if it had already expired."""
        revoking = self._propose_revoke()
        if revoking is not None:
            self._store._wait(revoking)
            self._revoked = True

    def _propose_revoke(self) -> concurrent.futures.Future[Any] | None:
        """Stop the keep-alive and propose the revoke (for revoke() here and in AsyncLease);
        None if this object revoked the lease already."""
        if self._revoked:
            return None
        store = self._store
        store._check()
        if self._keepalive:
            store._m.set_auto_keepalive(self.id, False)
        return store._m.revoke_lease(self.id)

    def ttl_remaining(self) -> float:
        """Seconds until the lease expires unless refreshed; LeaseNotFound if it has ended."""
        self._store._check()
        ttl = self._store._m.lease_time_to_live(self.id)
        if ttl is None:
            raise LeaseNotFound(self.id)
        return float(ttl[1])

    def keys(self) -> list[Key]:
        """The keys currently attached to this lease; LeaseNotFound if it has ended."""
        self._store._check()
        found = self._store._kv.lease(self.id)
        if found is None:
            raise LeaseNotFound(self.id)
        return list(found[1])

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Whether it expired already or the store closed first, the lease is over either way.
        with contextlib.suppress(LeaseNotFound, Closed):
            self.revoke()


class AsyncLease:
    """A lease from ``await astore.lease(ttl)``; ``async with`` revokes it on exit."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self.id = lease.id
        self.ttl = lease.ttl

    def __repr__(self) -> str:
        return f"<embedkv.AsyncLease id={self.id:#x} ttl={self.ttl}>"

    async def refresh(self) -> int:
        return self._lease.refresh()

    async def revoke(self) -> None:
        revoking = self._lease._propose_revoke()
        if revoking is not None:
            await asyncio.wrap_future(revoking)
            self._lease._revoked = True

    async def ttl_remaining(self) -> float:
        return self._lease.ttl_remaining()

    async def keys(self) -> list[Key]:
        return self._lease.keys()

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(LeaseNotFound, Closed):
            await self.revoke()
