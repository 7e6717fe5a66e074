"""mDNS announcements of members (zeroconf), on the interfaces the caller chooses.

An announcement says where a member of a cluster name can be reached and in what state it is
(fresh: no data yet, or formed: the cluster id it belongs to). It proposes addresses, nothing
more: whoever uses one proves the peer's identity on the link (the cluster token today, mutual
TLS later), never by what an announcement claims. Parsing is strict: a record that does not
hold well-formed properties is ignored, whoever sent it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from zeroconf import (
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceListener,
    Zeroconf,
)
from zeroconf._utils.net import get_all_addresses

log = logging.getLogger("embedkv.discovery")

SERVICE_TYPE = "_embedkv._tcp.local."
"""Our own DNS-SD service type."""

VERSION = 1
"""The discovery protocol version announced ("v"); announcements of another are ignored."""

State = Literal["fresh", "formed"]

_LABEL = 63


@dataclass(frozen=True, slots=True)
class Announcement:
    """One member as announced: its cluster name, member name, peer address ("ip:port"),
    state, and the cluster id once formed."""

    cluster: str
    member: str
    address: str
    state: State
    cluster_id: int | None = None
    version: int = VERSION

    def properties(self) -> dict[str, str]:
        props = {"v": str(self.version), "c": self.cluster, "m": self.member, "s": self.state}
        if self.cluster_id is not None:
            props["id"] = f"{self.cluster_id:x}"
        return props


def parse(info: ServiceInfo) -> Announcement | None:
    """The announcement a resolved service holds, or None if it is not a well-formed one of
    ours (another version, a missing property, no IPv4 address)."""
    props: dict[str, str] = {}
    for k, v in info.properties.items():
        if v is None:
            continue
        try:
            props[k.decode()] = v.decode()
        except UnicodeDecodeError:
            return None
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if (props.get("v") != str(VERSION) or not props.get("c") or not props.get("m")
            or props.get("s") not in ("fresh", "formed") or not addresses or not info.port):
        return None
    state: State = "formed" if props["s"] == "formed" else "fresh"
    cluster_id = None
    if state == "formed":
        try:
            cluster_id = int(props.get("id", ""), 16)
        except ValueError:
            return None
        if not 0 < cluster_id < 1 << 64:
            return None
    return Announcement(props["c"], props["m"], f"{addresses[0]}:{info.port}", state,
                        cluster_id)


def lan_interfaces() -> list[str]:
    """The host's IPv4 addresses other than loopback and link-local: the default interfaces."""
    out = []
    for a in get_all_addresses():
        ip = ipaddress.ip_address(a)
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            out.append(a)
    return out


def check_interfaces(interfaces: Iterable[str]) -> list[str]:
    """IPv4 interface addresses (ValueError for anything else, or for none)."""
    if isinstance(interfaces, str):
        raise TypeError("interfaces is a list of IPv4 addresses, not a str")
    out = []
    for a in interfaces:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            raise ValueError(f"interface {a!r} is not an IPv4 address") from None
        if ip.version != 4 or ip.is_unspecified:
            raise ValueError(f"interface {a!r} is not a usable IPv4 address")
        out.append(str(ip))
    if not out:
        raise ValueError("no interface to announce and browse on")
    return out


class Mdns:
    """One zeroconf instance bound to `interfaces`: announces at most one member and keeps the
    announcements of `service_type` it sees (resolved on a thread of its own).

    Never bind it to every interface of a host from a test: it would send mDNS out of the
    machine. `on_change` is called (on an internal thread) whenever what `seen` returns may
    have changed."""

    def __init__(self, interfaces: Sequence[str], *, service_type: str = SERVICE_TYPE,
                 on_change: Callable[[], None] | None = None) -> None:
        self.interfaces = check_interfaces(interfaces)
        self.service_type = service_type
        self.on_change = on_change
        self._zc = Zeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._lock = threading.Lock()
        self._seen: dict[str, Announcement] = {}
        self._pending: set[str] = set()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._mine: ServiceInfo | None = None
        self._names: tuple[str, str] | None = None  # (instance, server) announced under
        self._resolver = threading.Thread(target=self._resolve_loop, daemon=True,
                                          name="embedkv-mdns-resolve")
        self._resolver.start()
        self._browser = ServiceBrowser(self._zc, service_type, _Listener(self))

    # --- announcing -------------------------------------------------------------------

    def announce(self, a: Announcement) -> None:
        """Announce (or update the announcement of) this member; blocks while zeroconf
        probes a new name (about 1.5 s)."""
        host, port = a.address.rsplit(":", 1)
        instance, server = self._names or (self._instance(a), self._server(a))
        info = ServiceInfo(
            self.service_type,
            instance,
            addresses=[socket.inet_aton(host)],
            port=int(port),
            properties=a.properties(),
            server=server,
        )
        if self._mine is None:
            self._zc.register_service(info, allow_name_change=True)
        else:
            self._zc.update_service(info)
        self._mine = info
        self._names = (info.name, info.server or server)

    def moved(self, interfaces: Sequence[str]) -> Mdns:
        """This host's addresses changed: a new instance on `interfaces` that announces under
        the same names (so the others see the announcement change, not a second member);
        this one is closed. Announce on the new one (the address changed too)."""
        names = self._names
        self.close()
        new = Mdns(interfaces, service_type=self.service_type, on_change=self.on_change)
        new._names = names
        return new

    def withdraw(self) -> None:
        """Say goodbye: the others drop this member at once."""
        mine, self._mine = self._mine, None
        if mine is not None:
            self._zc.unregister_service(mine)

    def _instance(self, a: Announcement) -> str:
        tag = hashlib.sha256(f"{a.cluster}\0{secrets.token_hex(8)}".encode()).hexdigest()[:8]
        label = f"{a.member[:_LABEL - 9]}-{tag}"
        return f"{label}.{self.service_type}"

    def _server(self, a: Announcement) -> str:
        return f"ek-{secrets.token_hex(6)}.local."

    # --- browsing ---------------------------------------------------------------------

    def seen(self, cluster: str | None = None) -> list[Announcement]:
        """The announcements seen now (of `cluster` only, if given), this member's too."""
        with self._lock:
            out = list(self._seen.values())
        return [a for a in out if cluster is None or a.cluster == cluster]

    def _changed(self, name: str, gone: bool) -> None:
        with self._lock:
            if gone:
                self._pending.discard(name)
                removed = self._seen.pop(name, None) is not None
            else:
                self._pending.add(name)
                self._wake.notify()
                removed = False
        if removed:
            self._notify()

    def _notify(self) -> None:
        callback = self.on_change
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("discovery change callback failed")

    def _resolve_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                name = self._pending.pop()
            info = ServiceInfo(self.service_type, name)
            try:
                found = info.request(self._zc, 1500)
            except Exception as exc:  # zeroconf closing under us, or a bad record
                log.debug("resolving %s failed: %s", name, exc)
                found = False
            a = parse(info) if found else None
            with self._lock:
                if self._closed:
                    return
                if a is None:
                    changed = self._seen.pop(name, None) is not None
                else:
                    changed = self._seen.get(name) != a
                    self._seen[name] = a
            if a is None and found:
                log.debug("ignored a malformed announcement %s", name)
            if changed:
                self._notify()

    def close(self) -> None:
        """Withdraw the announcement and stop; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        try:
            self.withdraw()
        except Exception as exc:
            log.info("withdrawing the announcement failed: %s", exc)
        self._browser.cancel()
        self._zc.close()
        self._resolver.join(5.0)


class _Listener(ServiceListener):
    def __init__(self, mdns: Mdns) -> None:
        self._mdns = mdns

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._mdns._changed(name, gone=False)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._mdns._changed(name, gone=False)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._mdns._changed(name, gone=True)
