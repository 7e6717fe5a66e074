"""Service discovery behind a gateway: round-robin over live backends, one dies.

    python examples/service_discovery.py [DATA_DIR] [--short]

``--short`` runs 3 backends with 1-second leases and a few requests (else 4 backends,
3-second leases, more requests and a random pick).
"""

from __future__ import annotations

import threading

from _common import args, need, say, store

from embedkv.recipes import Endpoint


def main() -> None:
    a = args(__doc__)
    n, ttl, requests = (3, 1, 6) if a.short else (4, 3, 12)
    with store(a.data_dir) as s:
        web = s.services("web")
        gone = threading.Event()

        def on_change(kind: str, ep: Endpoint) -> None:
            say(f"  registry: {kind} {ep.address or ep.id}")
            if kind == "leave":
                gone.set()

        watch = web.watch(on_change)
        backends = [web.register(f"10.0.0.{i}:8080", {"version": "1.4"}, ttl=ttl)
                    for i in range(1, n + 1)]
        for _ in range(requests):
            say("gateway routes a request to", web.pick().address)
        say(f"backend 10.0.0.2 is killed (no more heartbeats; lease {ttl} s)")
        backends[1].session.orphan()
        need(gone.wait(30), "the dead backend's lease did not run out")
        watch.cancel()
        routed = [web.pick().address for _ in range(requests)]
        for address in routed:
            say("gateway routes a request to", address)
        if not a.short:
            say("random pick:", web.pick(random=True).address)
        for b in backends[:1] + backends[2:]:
            b.deregister()
        need("10.0.0.2:8080" not in routed, "a request went to the dead backend")
        say(f"after the death: {requests} requests over {n - 1} live backends, "
              "none to 10.0.0.2")


if __name__ == "__main__":
    main()
