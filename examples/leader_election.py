"""Leader election with failover: the leader dies, a follower takes over within the TTL.

    python examples/leader_election.py [DATA_DIR] [--short]

Today the candidates are threads of one process (a data dir belongs to one process until
clustering lands); "killing" the leader stops its lease keep-alives, which is what the store
sees when a process dies.
"""

from __future__ import annotations

import threading
import time

from _common import args, store

import embedkv


def main() -> None:
    a = args(__doc__)
    with store(a.data_dir) as s:
        changes: list[object] = []
        seen = threading.Condition()

        def on_leader(value: object) -> None:
            with seen:
                changes.append(value)
                seen.notify_all()
            print(f"  observer: leader is now {value}")

        obs = s.election("scheduler").observe(on_leader)
        candidates = {name: s.election("scheduler", ttl=1) for name in ("node-a", "node-b")}
        won = {name: threading.Event() for name in candidates}

        def run(name: str, e: embedkv.recipes.Election) -> None:
            if e.campaign(name, timeout=60):
                print(f"{name} is the leader")
                won[name].set()

        threads = [threading.Thread(target=run, args=kv) for kv in candidates.items()]
        threads[0].start()
        won["node-a"].wait(30)
        threads[1].start()
        leader = candidates["node-a"]
        print("node-a is killed")
        died = time.monotonic()
        leader.session.orphan()
        threads[1].join(30)
        print(f"node-b took over {time.monotonic() - died:.1f} s later (TTL 1 s);"
              f" node-a leader? {leader.is_leader}")
        candidates["node-b"].resign()
        with seen:
            seen.wait_for(lambda: changes[-1] is None, 30)
        obs.cancel()


if __name__ == "__main__":
    main()
