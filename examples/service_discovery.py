"""Service discovery behind a gateway: round-robin over live backends, one dies.

    python examples/service_discovery.py [DATA_DIR] [--short]
"""

from __future__ import annotations

import threading

from _common import args, store

from embedkv.recipes import Endpoint


def main() -> None:
    a = args(__doc__)
    with store(a.data_dir) as s:
        web = s.services("web")
        gone = threading.Event()

        def on_change(kind: str, ep: Endpoint) -> None:
            print(f"  registry: {kind} {ep.address or ep.id}")
            if kind == "leave":
                gone.set()

        watch = web.watch(on_change)
        backends = [web.register(f"10.0.0.{i}:8080", {"version": "1.4"}, ttl=1)
                    for i in range(1, 4)]
        for _ in range(6):
            print("gateway routes a request to", web.pick().address)
        print("backend 10.0.0.2 is killed (no more heartbeats)")
        backends[1].session.orphan()
        gone.wait(30)  # its lease runs out after its TTL
        for _ in range(4):
            print("gateway routes a request to", web.pick().address)
        print("random pick:", web.pick(random=True).address)
        watch.cancel()
        for b in (backends[0], backends[2]):
            b.deregister()


if __name__ == "__main__":
    main()
