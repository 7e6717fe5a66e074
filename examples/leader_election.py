"""Leader election with failover: the leader dies, a follower takes over within the TTL.

    python examples/leader_election.py [DATA_DIR] [--short]

Today the candidates are threads of one process (a data dir belongs to one process until
clustering lands); "killing" the leader stops its lease keep-alives, which is what the store
sees when a process dies. ``--short`` uses 1-second leases (else 3 s) and does not print
the (varying) failover time.
"""

from __future__ import annotations

import threading
import time

from _common import args, need, say, store

import embedkv


def main() -> None:
    a = args(__doc__)
    ttl = 1 if a.short else 3
    with store(a.data_dir) as s:
        changes: list[object] = []
        seen = threading.Condition()

        def on_leader(value: object) -> None:
            with seen:
                changes.append(value)
                seen.notify_all()
            say(f"  observer: leader is now {value}")

        obs = s.election("scheduler").observe(on_leader)
        candidates = {name: s.election("scheduler", ttl=ttl) for name in ("node-a", "node-b")}
        won = {name: threading.Event() for name in candidates}

        def run(name: str, e: embedkv.recipes.Election) -> None:
            if e.campaign(name, timeout=60):
                say(f"{name} is the leader")
                won[name].set()

        threads = [threading.Thread(target=run, args=kv) for kv in candidates.items()]
        threads[0].start()
        need(won["node-a"].wait(30), "node-a did not win")
        threads[1].start()
        leader = candidates["node-a"]
        need(threads[1].is_alive(), "node-b campaigns")
        say(f"node-a is killed (lease {ttl} s)")
        died = time.monotonic()
        leader.session.orphan()
        need(won["node-b"].wait(60), "node-b did not take over")
        took = time.monotonic() - died
        if not a.short:
            say(f"node-b took over {took:.1f} s later (TTL {ttl} s)")
        say(f"node-b took over; node-a leader? {leader.is_leader}")
        candidates["node-b"].resign()
        with seen:
            need(seen.wait_for(lambda: changes[-1] is None, 30), "the observer saw the resign")
        obs.cancel()
        for t in threads:
            t.join(30)
        say("node-b resigned: nobody leads;", "leaders seen:", changes)


if __name__ == "__main__":
    main()
