"""Service discovery behind a gateway: round-robin over live backends, one backend is killed.

    python examples/service_discovery.py [DATA_DIR] [--short]

Three members of one cluster, one process each: the gateway and the registry's watch run on
n1 (this process, which also hosts backend 10.0.0.1); backends 10.0.0.2 and 10.0.0.3 run in
n2's and n3's processes (this script again, with ``--role backend``), each registering
through its own member. The process of a backend whose member is a follower is SIGKILLed:
its registration's lease runs out after its TTL, the registry reports the leave and the
gateway stops routing to it.
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
        addresses: dict[str, str] = {}  # a leave names only the registration id
        left: set[str] = set()
        changed = threading.Condition()

        def on_change(kind: str, ep: Endpoint) -> None:
            address = addresses.setdefault(ep.id, ep.address)
            print(f"  registry (on n1): {kind} {address}", flush=True)
            with changed:
                if kind == "leave":
                    left.add(address)
                changed.notify_all()

        with gateway.register(address_of(n1.name), {"version": "1.4"}, ttl=a.ttl), \
                gateway.watch(on_change):
            print(f"backend {address_of(n1.name)} (this process, member n1) is up", flush=True)
            for b in backends.values():
                b.tell("register")
                b.expect("@registered")
            for _ in range(2 * requests):
                print("gateway routes a request to", gateway.pick().address, flush=True)
            # A backend on a follower dies: the leader's death would also hold up the other
            # backends' heartbeats until a new leader is elected (a story of its own).
            doomed = backends["n3"] if n1.leader == "n2" else backends["n2"]
            address = address_of(doomed.name)
            print(f"backend {address}'s process ({doomed.pid}, member {doomed.name}) is killed "
                  "with SIGKILL (no more heartbeats)", flush=True)
            doomed.kill()
            with changed:  # its lease runs out after its TTL
                if not changed.wait_for(lambda: address in left, 30):
                    raise SystemExit("the dead backend never left the registry")
            for _ in range(requests):
                print("gateway routes a request to", gateway.pick().address, flush=True)
            print("random pick:", gateway.pick(random=True).address, flush=True)

if __name__ == "__main__":
    main()
