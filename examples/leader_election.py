"""Leader election with failover: the leader's process is killed, the other candidate takes
over within the TTL.

    python examples/leader_election.py [DATA_DIR] [--short]

Three members of one cluster, one process each: node-a campaigns in n1's process, node-b in
n2's (this script again, with ``--role``), and the observer watches from n3 (this process).
node-a's process is then SIGKILLed: no resign, no more keep-alives. Its lease ends after its
TTL and node-b, waiting on node-a's key, wins.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from _common import Parent, args, processes, serve

import embedkv
from embedkv.recipes import SessionLost

ELECTION = "scheduler"


def candidate(store: embedkv.Store, a: argparse.Namespace, parent: Parent) -> None:
    """A process that campaigns when told, then leads until told to resign (or killed)."""
    me = a.role
    election = store.election(ELECTION, ttl=a.ttl)
    if parent.command() != "campaign":  # the parent ended before it needed us
        return
    parent.say(f"{me} campaigns (process {os.getpid()}, member {store.name})")
    parent.say("@campaigning")
    while True:
        try:
            won = election.campaign(me, timeout=60)
            break
        except SessionLost:  # our own lease lapsed while waiting (say, in a Raft election)
            parent.say(f"{me} lost its place in line with its lease and campaigns again")
    if not won:
        parent.say(f"{me} gave up campaigning")
        return
    parent.say(f"{me} is the leader")
    parent.say("@won")
    if parent.command() == "resign":
        election.resign()
        parent.say(f"{me} resigns")
        parent.say("@resigned")


def main() -> None:
    a = args(__doc__)
    if serve(a, {"node-a": candidate, "node-b": candidate}):
        return
    with processes(a, __file__, "n3", {"n1": "node-a", "n2": "node-b"}) as (n3, nodes):
        node_a, node_b = nodes["n1"], nodes["n2"]
        changes: list[object] = []
        seen = threading.Condition()

        def on_leader(value: object) -> None:
            with seen:
                changes.append(value)
                seen.notify_all()

        def observed(value: object) -> None:
            """Wait until the observer on n3 has seen `value` lead, and say so."""
            with seen:
                if not seen.wait_for(lambda: value in changes, 60):
                    raise SystemExit(f"the observer never saw {value} lead")
                changes.clear()
            print(f"  observer (on n3): {value or 'nobody'} leads", flush=True)

        with n3.election(ELECTION).observe(on_leader):
            node_a.tell("campaign")
            node_a.expect("@won")
            observed("node-a")
            node_b.tell("campaign")
            node_b.expect("@campaigning")
            queued = f"_embedkv/election/{ELECTION}/"
            while n3.count(queued) < 2:  # node-b's key is in line behind node-a's
                time.sleep(0.01)
            print(f"node-a's process ({node_a.pid}) is killed with SIGKILL", flush=True)
            died = time.monotonic()
            node_a.kill()
            node_b.expect("@won")
            took = time.monotonic() - died
            observed("node-b")
            print(f"node-b took over {took:.1f} s after the kill (TTL {a.ttl} s); "
                  f"n2 and n3 go on without n1 ({n3.leader} leads the cluster)", flush=True)
            node_b.tell("resign")
            node_b.expect("@resigned")
            observed(None)


if __name__ == "__main__":
    main()
