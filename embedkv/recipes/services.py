"""Service registry: instances register on their own leases, clients list, watch and pick."""

from __future__ import annotations

import itertools
import random as _random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedkv import Store, Watch

from ._base import check_ttl, prefix
from .sync import Party


@dataclass(frozen=True)
class Endpoint:
    """One live instance: its registration ``id``, ``address`` and ``metadata``."""

    id: str
    address: str
    metadata: dict[str, Any] | None = field(default=None, compare=False)


class _Instances(Party):
    _kind = "services"


class Registration:
    """A registered instance; kept alive (and re-registered after a lost lease) until
    ``deregister()``. ``registration.session.orphan()`` simulates the instance dying."""

    def __init__(self, party: Party) -> None:
        self._party = party

    @property
    def id(self) -> str:
        """The registration's id (changes when it re-registers on a new lease)."""
        assert self._party.id is not None
        return self._party.id

    @property
    def live(self) -> bool:
        """True while registered on a lease that cannot have expired."""
        return self._party.present

    @property
    def session(self) -> Any:
        """The lease session of the current registration."""
        return self._party.session

    def deregister(self) -> None:
        """Leave the registry now (ends a re-registration under way)."""
        self._party.leave()

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.deregister()


class Services:
    """``store.services(name)``: ``register(address, metadata=None, ttl=10)``,
    ``endpoints()``, ``watch(callback)`` and ``pick(random=False)`` (round-robin)."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self.name = name
        prefix("services", name)
        self._turn = itertools.count()
        self._mu = threading.Lock()

    def register(
        self, address: str, metadata: dict[str, Any] | None = None, *, ttl: int = 10
    ) -> Registration:
        """Register `address` on a lease of `ttl` seconds kept alive (and renewed on a new
        lease if lost) until ``deregister()``."""
        if not isinstance(address, str) or not address:
            raise TypeError("address must be a non-empty str")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError("metadata must be a dict or None")
        party = _Instances(self._store, self.name, ttl=check_ttl(ttl))
        party.join({"address": address, "metadata": metadata})
        return Registration(party)

    def endpoints(self) -> list[Endpoint]:
        """Live instances, oldest registration first."""
        members = _Instances(self._store, self.name).members()
        return [Endpoint(i, v["address"], v["metadata"]) for i, v in members.items()]

    def pick(self, *, random: bool = False) -> Endpoint:
        """The next live endpoint in turn (or one at random); LookupError if none."""
        live = self.endpoints()
        if not live:
            raise LookupError(f"no live endpoint for service {self.name!r}")
        if random:
            return _random.choice(live)
        with self._mu:
            return live[next(self._turn) % len(live)]

    def watch(self, callback: Callable[[str, Endpoint], object]) -> Watch:
        """``callback("join"|"leave", endpoint)`` on each change (a leave carries only the
        id, with an empty address)."""
        if not callable(callback):
            raise TypeError("callback must be callable")

        def on_change(kind: str, member: str, value: Any) -> None:
            if value is None:
                callback(kind, Endpoint(member, ""))
            else:
                callback(kind, Endpoint(member, value["address"], value["metadata"]))

        return _Instances(self._store, self.name).watch(on_change)
