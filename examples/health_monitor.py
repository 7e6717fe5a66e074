"""Health monitoring with TTL heartbeats: workers keep a lease alive; one hangs and drops out.

    python examples/health_monitor.py [DATA_DIR] [--short]

Three members of one cluster: worker i heartbeats through member n<i mod 3 + 1>, the monitor
watches on n1.
"""

from __future__ import annotations

import threading

from _common import args, cluster


def main() -> None:
    a = args(__doc__)
    n = 3 if a.short else 5
    with cluster(a) as members:
        monitor = members[0].party("workers")
        left = threading.Event()

        def on_change(kind: str, member: str, value: object) -> None:
            print(f"  monitor: {value or member} {'is up' if kind == 'join' else 'went silent'}")
            if kind == "leave":
                left.set()

        watch = monitor.watch(on_change)
        workers = [members[i % 3].party("workers", ttl=a.ttl) for i in range(n)]
        for i, w in enumerate(workers):
            w.join(f"worker-{i}", rejoin=False)
        print("healthy:", sorted(monitor.members().values()))
        print("worker-1 hangs: its heartbeats stop")
        workers[1].session.orphan()
        left.wait(30)
        print("healthy:", sorted(monitor.members().values()))
        watch.cancel()
        for w in workers:
            w.leave()


if __name__ == "__main__":
    main()
