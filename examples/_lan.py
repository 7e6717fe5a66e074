"""Shared by the LAN examples: members found by mDNS discovery, over mutual TLS.

On one machine (the default), three members n1, n2, n3 run in the example's process on
127.0.0.2, .3 and .4, each with mDNS pinned to its own address (nothing leaves the machine),
under a cluster name and service type of the run's own (parallel runs never see each other),
with a CA and member certificates made for the run. With ``--device NAME``, one member
runs on this device of a real LAN, with the certificates of ``--certs`` (made with
``embedkv certs``, see the examples' headers) and mDNS on the device's LAN interfaces.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import embedkv
from embedkv.net import tls

LOOPBACK = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4"}
"""The demo's members and their addresses (a member started later takes 127.0.0.5, ...)."""

TIMEOUT = 60.0


def args(doc: str | None, *, ttl: bool = True) -> argparse.Namespace:
    """The example's arguments; ``.ttl`` is the leases' TTL for the mode (2 s when short:
    three members with TLS in one process share its interpreter, and a keep-alive late by
    a whole TTL on a loaded machine would change the story)."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("data_dir", nargs="?",
                   help="where the members' data dirs go (default: a temporary dir)")
    p.add_argument("--short", action="store_true", help="a quick run (the test suite's)")
    p.add_argument("--device", metavar="NAME", help="run one member, NAME, on this device")
    p.add_argument("--certs", default="certs",
                   help="--device: the dir with ca.pem, NAME.pem, NAME.key (default: certs)")
    p.add_argument("--cluster", default="plant-7", help="--device: the cluster name")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="--device: the peer address (default: the first LAN address, :7400)")
    p.add_argument("--interface", metavar="ADDRESS", action="append",
                   help="--device: an IPv4 address to run mDNS on, repeatable (default: the "
                        "device's LAN interfaces)")
    a = p.parse_args()
    a.ttl = 2 if a.short else 3
    # While founders switch from the founding transport to the cluster's, each refuses the
    # others' first links for a moment ("belongs to another cluster"): expected, and retried.
    logging.getLogger("embedkv.net").setLevel(logging.ERROR)
    return a


def say(line: str) -> None:
    """Narrate (flushed at once: callbacks narrate from other threads)."""
    print(line, flush=True)


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


class Lan:
    """The demo's LAN on loopback: its cluster name, service type, CA and data dirs."""

    def __init__(self, a: argparse.Namespace, root: Path) -> None:
        self.root = root
        self.cluster = f"{a.cluster}-{secrets.token_hex(3)}"  # a name of this run's own
        self.service = f"_ekdemo{secrets.token_hex(2)}._tcp.local."
        self.certs = root / "certs"
        # What `embedkv certs init certs/` does on an admin machine.
        tls.init_ca(self.certs)
        self.short = a.short
        # Quicker founding votes when short: members on one machine see each other at once.
        self.timing = (embedkv.FoundingTiming(settle=0.5, stagger=0.3, backoff=1.0, suspect=3.0,
                                              poll=0.5)
                       if a.short else embedkv.FoundingTiming())
        self.listen: dict[str, str] = {}
        self.stores: dict[str, embedkv.Store] = {}

    def open(self, name: str, ip: str, expect: int = 3) -> embedkv.Store:
        """Open member `name` on `ip` (its data dir again if it has one): as fresh, it
        founds a cluster with `expect` members or joins the one it finds."""
        if not (self.certs / f"{name}.pem").exists():
            # `embedkv certs issue certs/ NAME --ip IP`, then copy to the device.
            tls.issue(self.certs, name, ips=[ip])
        if name not in self.listen:  # a member reopened keeps its address
            self.listen[name] = f"{ip}:{_free_port(ip)}"
        store = embedkv.open(
            self.root / name, name=name, listen=self.listen[name], cluster=self.cluster,
            expect=expect, tls=self.certs,
            discovery=embedkv.Discovery(interfaces=[ip], timeout=TIMEOUT,
                                        service_type=self.service, timing=self.timing),
            # Short ticks: 1-second leases are noticed promptly; an election timeout of 25
            # ticks (0.5 s) still rides out a loaded machine without needless elections.
            tick_interval=0.02 if self.short else 0.05, election_tick=25 if self.short else 10)
        self.stores[name] = store
        return store

    def together(self, members: dict[str, str]) -> list[embedkv.Store]:
        """Start `members` (name: ip) at once, one thread each: open blocks until the
        cluster is founded or joined."""
        errors: list[BaseException] = []

        def start(name: str, ip: str) -> None:
            try:
                self.open(name, ip)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=item) for item in members.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"a member did not open: {errors[0]!r}")
        return [self.stores[name] for name in members]

    def close(self, name: str) -> None:
        self.stores.pop(name).close()


@contextmanager
def loopback(a: argparse.Namespace) -> Iterator[tuple[Lan, list[embedkv.Store]]]:
    """Three members n1, n2, n3 on 127.0.0.2-4, started together: they find each other and
    found one cluster. Yields the LAN and the stores; closes every member still open."""
    with tempfile.TemporaryDirectory() as tmp:
        lan = Lan(a, Path(a.data_dir or tmp))
        try:
            stores = lan.together(LOOPBACK)
            ids = {s.status().cluster_id for s in stores}
            mode = " (short run)" if a.short else ""
            say(f"n1, n2, n3 on {', '.join(LOOPBACK.values())} found each other over mutual "
                f"TLS and formed {len(ids)} cluster{mode}")
            yield lan, stores
        finally:
            for name in list(lan.stores):
                lan.close(name)


@contextmanager
def device(a: argparse.Namespace) -> Iterator[embedkv.Store]:
    """This device's member: founds the cluster `--cluster` with two other devices, or joins
    it if it runs already; a restart reopens its data dir. Ctrl-C closes it (a clean
    close: its announcement is withdrawn)."""
    data = Path(a.data_dir or "data")
    with embedkv.open(data / a.device, name=a.device, listen=a.listen, cluster=a.cluster,
                      expect=3, tls=a.certs,
                      discovery=embedkv.Discovery(interfaces=a.interface,
                                                  timeout=600.0)) as store:
        say(f"{a.device} is in cluster {a.cluster} ({store.status().cluster_id:x}) with "
            f"{sorted(m.name for m in store.members())}; Ctrl-C to stop")
        try:
            yield store
        except KeyboardInterrupt:
            say(f"{a.device} stops")

