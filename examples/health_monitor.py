"""Health monitoring with TTL heartbeats: workers keep a lease alive; one hangs and drops out.

    python examples/health_monitor.py [DATA_DIR] [--short]
"""

from __future__ import annotations

import threading

from _common import args, store


def main() -> None:
    a = args(__doc__)
    n = 3 if a.short else 5
    with store(a.data_dir) as s:
        left = threading.Event()

        def on_change(kind: str, member: str, value: object) -> None:
            print(f"  monitor: {value or member} {'is up' if kind == 'join' else 'went silent'}")
            if kind == "leave":
                left.set()

        watch = s.party("workers").watch(on_change)
        workers = [s.party("workers", ttl=1) for _ in range(n)]
        for i, w in enumerate(workers):
            w.join(f"worker-{i}", rejoin=False)
        print("healthy:", sorted(s.party("workers").members().values()))
        print("worker-1 hangs: its heartbeats stop")
        workers[1].session.orphan()
        left.wait(30)
        print("healthy:", sorted(s.party("workers").members().values()))
        watch.cancel()
        for w in workers:
            w.leave()


if __name__ == "__main__":
    main()
