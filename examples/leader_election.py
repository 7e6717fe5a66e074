"""Leader election with failover: the leader dies, a follower takes over within the TTL.

    python examples/leader_election.py [DATA_DIR] [--short]

Three members of one cluster: node-a campaigns on n1, node-b on n2, the observer watches on
n3. "Killing" node-a stops its lease keep-alives, which is what the cluster sees when its
process dies (tests/recipes/test_killed_holder.py SIGKILLs a real one).
"""

from __future__ import annotations

import threading
import time

from _common import args, cluster

import embedkv


def main() -> None:
    a = args(__doc__)
    with cluster(a) as (n1, n2, n3):
        changes: list[object] = []
        seen = threading.Condition()

        def on_leader(value: object) -> None:
            with seen:
                changes.append(value)
                seen.notify_all()
            print(f"  observer (on n3): leader is now {value}")

        obs = n3.election("scheduler").observe(on_leader)
        candidates = {"node-a": n1.election("scheduler", ttl=a.ttl),
                      "node-b": n2.election("scheduler", ttl=a.ttl)}
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
        print(f"node-b took over {time.monotonic() - died:.1f} s later (TTL {a.ttl} s);"
              f" node-a leader? {leader.is_leader}")
        candidates["node-b"].resign()
        with seen:
            seen.wait_for(lambda: changes[-1] is None, 30)
        obs.cancel()


if __name__ == "__main__":
    main()
