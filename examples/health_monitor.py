"""Health monitoring with TTL heartbeats: workers keep a lease alive; one hangs and drops out.

    python examples/health_monitor.py [DATA_DIR] [--short]

``--short`` runs 3 workers with 1-second heartbeats' leases (else 5 with 3-second ones).
"""

from __future__ import annotations

import threading

from _common import args, need, say, store


def main() -> None:
    a = args(__doc__)
    n, ttl = (3, 1) if a.short else (5, 3)
    with store(a.data_dir) as s:
        left = threading.Event()

        def on_change(kind: str, member: str, value: object) -> None:
            say(f"  monitor: {value or member} {'is up' if kind == 'join' else 'went silent'}")
            if kind == "leave":
                left.set()

        watch = s.party("workers").watch(on_change)
        workers = [s.party("workers", ttl=ttl) for _ in range(n)]
        for i, w in enumerate(workers):
            w.join(f"worker-{i}", rejoin=False)
        say("healthy:", sorted(s.party("workers").members().values()))
        say(f"worker-1 hangs: its heartbeats stop (lease {ttl} s)")
        workers[1].session.orphan()
        need(left.wait(30), "worker-1 was not noticed")
        watch.cancel()
        healthy = sorted(s.party("workers").members().values())
        for w in workers:
            w.leave()
        say("healthy:", healthy)


if __name__ == "__main__":
    main()
