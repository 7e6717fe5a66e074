"""Service discovery behind a gateway: round-robin over live backends, one backend is killed.

    python examples/service_discovery.py [DATA_DIR] [--short]

Three members of one cluster, one process each: the gateway and the registry's watch run on
n1 (this process, which also hosts backend 10.0.0.1); backends 10.0.0.2 and 10.0.0.3 run in
n2's and n3's processes (this script again, with ``--role backend``), each registering
through its own member. 10.0.0.2's process is SIGKILLed: its registration's lease runs out
after its TTL, the registry reports the leave and the gateway stops routing to it.
"""

from __future__ import annotations

import argparse
import os
import threading

from _common import Parent, args, processes, serve

import embedkv
from embedkv.recipes import Endpoint

SERVICE = "web"


def address_of(member: str) -> str:
    return f"10.0.0.{member[1:]}:8080"


def backend(store: embedkv.Store, a: argparse.Namespace, parent: Parent) -> None:
    """Registers when told and keeps its registration alive until the end (or its death)."""
    if parent.command() != "register":
        return
    address = address_of(store.name)
    with store.services(SERVICE).register(address, {"version": "1.4"}, ttl=a.ttl):
        parent.say(f"backend {address} (process {os.getpid()}, member {store.name}) is up")
        parent.say("@registered")
        parent.command()  # serve until the gateway is done


def main() -> None:
    a = args(__doc__)
    if serve(a, {"backend": backend}):
        return
    requests = 3 if a.short else 6
    with processes(a, __file__, "n1", {"n2": "backend", "n3": "backend"}) as (n1, backends):
        gateway = n1.services(SERVICE)
        gone = threading.Event()
        addresses: dict[str, str] = {}  # a leave names only the registration id

        def on_change(kind: str, ep: Endpoint) -> None:
            address = addresses.setdefault(ep.id, ep.address)
            print(f"  registry (on n1): {kind} {address}", flush=True)
            if kind == "leave":
                gone.set()

        with gateway.register(address_of(n1.name), {"version": "1.4"}, ttl=a.ttl), \
                gateway.watch(on_change):
            print(f"backend {address_of(n1.name)} (this process, member n1) is up", flush=True)
            for b in backends.values():
                b.tell("register")
                b.expect("@registered")
            for _ in range(2 * requests):
                print("gateway routes a request to", gateway.pick().address, flush=True)
            doomed = backends["n2"]
            print(f"backend 10.0.0.2's process ({doomed.pid}) is killed with SIGKILL "
                  "(no more heartbeats)", flush=True)
            doomed.kill()
            if not gone.wait(30):  # its lease runs out after its TTL
                raise SystemExit("the dead backend never left the registry")
            for _ in range(requests):
                print("gateway routes a request to", gateway.pick().address, flush=True)
            print("random pick:", gateway.pick(random=True).address, flush=True)

if __name__ == "__main__":
    main()
