"""Discovery on loopback: members on distinct 127.0.0.x addresses, zeroconf pinned to them
(never to the host's interfaces), a service type and cluster name of their own per test."""

from __future__ import annotations

import random
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import embedkv
from embedkv import Discovery
from embedkv.member.founding import Timing

from ..waiting import wait_for

FAST = {"tick_interval": 0.02, "request_timeout": 5.0}
TIMING = Timing(settle=0.5, stagger=0.3, backoff=1.0, suspect=3.0, poll=0.5)

_used: set[str] = set()


def loopback_ip() -> str:
    """An address of 127.0.0.0/8 no other member of this process uses."""
    while True:
        ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        if ip not in _used:
            _used.add(ip)
            return ip


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


class Lan:
    """One test's LAN: its own service type and cluster names."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.service = f"_ek{secrets.token_hex(4)}._tcp.local."
        self.stores: list[embedkv.Store] = []

    def name(self, base: str = "plant") -> str:
        return f"{base}-{secrets.token_hex(4)}"

    def disc(self, ip: str, timeout: float = 60.0) -> Discovery:
        return Discovery(interfaces=[ip], timeout=timeout, service_type=self.service,
                         timing=TIMING)

    def open(self, member: str, cluster: str, *, ip: str | None = None, port: int | None = None,
             dir: str | None = None, **kw: Any) -> embedkv.Store:
        ip = ip or loopback_ip()
        port = port or free_port(ip)
        kw.setdefault("discovery", self.disc(ip))
        store = embedkv.open(self.tmp / (dir or member), name=member, listen=f"{ip}:{port}",
                             cluster=cluster, insecure=True, **FAST, **kw)
        self.stores.append(store)
        return store

    def together(self, opens: list[Callable[[], embedkv.Store]]) -> list[embedkv.Store]:
        """Open members at once, each in a thread (open blocks until founded or joined)."""
        out: list[embedkv.Store | BaseException | None] = [None] * len(opens)

        def run(i: int) -> None:
            try:
                out[i] = opens[i]()
            except BaseException as exc:
                out[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(opens))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for o in out:
            if isinstance(o, BaseException):
                raise o
        return [o for o in out if isinstance(o, embedkv.Store)]

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def lan(tmp_path: Path) -> Any:
    lan = Lan(tmp_path)
    yield lan
    lan.close()


def voters(store: embedkv.Store) -> set[str]:
    return {m.name for m in store.members() if m.voter}


def test_three_members_started_together_form_one_cluster(lan: Lan) -> None:
    for run in range(3):
        cluster = lan.name()
        names = [f"r{run}m{i}" for i in range(3)]
        stores = lan.together([lambda n=n: lan.open(n, cluster, expect=3)  # type: ignore[misc]
                               for n in names])
        assert len({s.status().cluster_id for s in stores}) == 1
        for s in stores:
            wait_for(lambda s=s: voters(s) == set(names), 20, "three voters")  # type: ignore[misc]
        stores[0][f"k{run}"] = "v"
        for s in stores:
            assert s.get(f"k{run}") == "v"
        for s in stores:
            s.close()
