"""A service registry across devices: each device registers its service on a TTL lease,
clients pick among the live ones round-robin, and a device that goes dark drops out.

On one machine (the default): three members n1, n2, n3 on 127.0.0.2, .3, .4 find each other
with mDNS (pinned to those addresses: nothing leaves the machine) and form one cluster over
mutual TLS (a CA and their certificates are made for the run). Each registers its
"sensor-api" at its address, port 8080, with ``store.services("sensor-api").register(...,
ttl=...)``; a client on n1 watches the registry and routes requests round-robin with
``pick()``. n3 then goes dark (its keep-alives stop, as when its power is cut, and its member
closes): its registration ends with its lease, after the TTL, and the client routes around
it. n3 comes back (its member reopens its data dir and catches up) and registers again.

    python examples/lan_services.py [DATA_DIR] [--short]

On three real devices of one LAN: on an admin machine, which keeps certs/ca.key,

    embedkv certs init certs/
    embedkv certs issue certs/ n1 --ip 192.168.1.11     # n2, n3 likewise, with their addresses

copy certs/ca.pem and the device's own pair (n1.pem, n1.key) to certs/ on each device, and
run on each, with its own name:

    python examples/lan_services.py --device n1 [--certs certs/] [--cluster plant-7] [DATA_DIR]

Each device registers its sensor-api at ADDRESS:8080 (ADDRESS: what it listens on), reports
joins and leaves, and routes a request round-robin every few seconds; unplug one and watch
the others drop it after the TTL.
"""

from __future__ import annotations

import threading

from _lan import LOOPBACK, args, device, loopback, say

import embedkv
from embedkv.recipes import Endpoint

SERVICE = "sensor-api"


def endpoint_of(store: embedkv.Store) -> str:
    """Where this device's service listens: its member's host, port 8080."""
    host = next(m.address for m in store.members() if m.name == store.name).rsplit(":", 1)[0]
    return f"{host}:8080"


def on_device(store: embedkv.Store, ttl: int) -> None:
    """A real device: register, report the registry's changes, route now and then."""
    api = store.services(SERVICE)
    addresses: dict[str, str] = {}  # a leave names only the registration id

    def on_change(kind: str, ep: Endpoint) -> None:
        say(f"registry: {kind} {addresses.setdefault(ep.id, ep.address)}")

    with api.watch(on_change), \
            api.register(endpoint_of(store), {"device": store.name}, ttl=ttl):
        while not threading.Event().wait(5):
            say(f"{store.name} routes a request to {api.pick().address}")


def main() -> None:
    a = args(__doc__)
    if a.device:
        with device(a) as store:
            on_device(store, 10)
        return
    requests = 3 if a.short else 6
    with loopback(a) as (lan, (n1, n2, n3)):
        client = n1.services(SERVICE)
        changed = threading.Condition()
        live: set[str] = set()
        addresses: dict[str, str] = {}  # a leave names only the registration id

        def on_change(kind: str, ep: Endpoint) -> None:
            address = addresses.setdefault(ep.id, ep.address)
            say(f"  registry (on n1): {kind} {address}")
            with changed:
                (live.add if kind == "join" else live.discard)(address)
                changed.notify_all()

        def wait_live(expected: set[str]) -> None:
            with changed:
                if not changed.wait_for(lambda: live == expected, 60):
                    raise SystemExit(f"the registry never showed {sorted(expected)}")

        def route(n: int) -> None:
            for _ in range(n):
                say(f"client (on n1) routes a request to {client.pick().address}")

        with client.watch(on_change):
            regs = {s.name: s.services(SERVICE).register(endpoint_of(s), {"device": s.name},
                                                         ttl=a.ttl)
                    for s in (n1, n2, n3)}
            wait_live({endpoint_of(s) for s in (n1, n2, n3)})
            route(2 * requests)
            gone = endpoint_of(n3)
            say(f"n3 goes dark: its registration's keep-alives stop, as when its power is cut "
                f"(TTL {a.ttl} s), and its member closes")
            regs.pop("n3").session.orphan()
            lan.close("n3")
            wait_live({endpoint_of(s) for s in (n1, n2)})
            route(requests)
            say("n3 is powered on again: its member reopens its data dir and registers again")
            n3 = lan.open("n3", LOOPBACK["n3"])
            regs["n3"] = n3.services(SERVICE).register(gone, {"device": "n3"}, ttl=a.ttl)
            wait_live({endpoint_of(s) for s in (n1, n2, n3)})
            route(requests)
            for reg in regs.values():
                reg.deregister()
            wait_live(set())
            say("every device deregistered: the registry is empty")


if __name__ == "__main__":
    main()
