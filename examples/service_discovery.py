"""Service discovery behind a gateway: round-robin over live backends, one dies.

    python examples/service_discovery.py [DATA_DIR] [--short]

Three members of one cluster: backend i registers through member n<i>, the gateway picks on
n1 and the registry's watch runs on n3.
"""

from __future__ import annotations

import threading

from _common import args, cluster

from embedkv.recipes import Endpoint


def main() -> None:
    a = args(__doc__)
    requests = 3 if a.short else 6
    with cluster(a) as members:
        gateway = members[0].services("web")
        gone = threading.Event()

        def on_change(kind: str, ep: Endpoint) -> None:
            print(f"  registry: {kind} {ep.address or ep.id}")
            if kind == "leave":
                gone.set()

        watch = members[2].services("web").watch(on_change)
        backends = [s.services("web").register(f"10.0.0.{i}:8080", {"version": "1.4"},
                                               ttl=a.ttl)
                    for i, s in enumerate(members, start=1)]
        for _ in range(2 * requests):
            print("gateway routes a request to", gateway.pick().address)
        print("backend 10.0.0.2 is killed (no more heartbeats)")
        backends[1].session.orphan()
        gone.wait(30)  # its lease runs out after its TTL
        for _ in range(requests):
            print("gateway routes a request to", gateway.pick().address)
        print("random pick:", gateway.pick(random=True).address)
        watch.cancel()
        for b in (backends[0], backends[2]):
            b.deregister()


if __name__ == "__main__":
    main()
