"""Health monitoring with TTL heartbeats: workers keep a lease alive; one's process dies and
drops out, and is back once restarted.

    python examples/health_monitor.py [DATA_DIR] [--short]

Three members of one cluster, one process each: the monitor and worker-0 run on n1 (this
process), worker-1 in n2's process and worker-2 in n3's (this script again, with ``--role
worker``). Each worker is present in the party "workers" on a lease that its process keeps
alive: its heartbeat. The process of a worker whose member is a follower is SIGKILLed: its
heartbeats stop, its lease runs out after its TTL and the monitor sees it go silent. The
process is started again: its member reopens its data dir and catches up, and the worker
joins again.
"""

from __future__ import annotations

import argparse
import os
import threading

from _common import Parent, args, processes, serve

import embedkv

PARTY = "workers"


def worker(store: embedkv.Store, a: argparse.Namespace, parent: Parent) -> None:
    """Joins when told and stays present (re-joining after a lost lease) until the end."""
    me = f"worker-{int(store.name[1:]) - 1}"  # n2 runs worker-1, n3 worker-2
    if parent.command() != "join":
        return
    party = store.party(PARTY, ttl=a.ttl)
    party.join(me)
    parent.say(f"{me} (process {os.getpid()}, member {store.name}) heartbeats")
    parent.say("@joined")
    parent.command()  # work until the monitor is done
    party.leave()


def main() -> None:
    a = args(__doc__)
    if serve(a, {"worker": worker}):
        return
    with processes(a, __file__, "n1", {"n2": "worker", "n3": "worker"}) as (n1, workers):
        monitor = n1.party(PARTY)
        names: dict[str, str] = {}  # a leave names only the member id
        changed = threading.Condition()
        reported: list[tuple[str, str]] = []

        def on_change(kind: str, member: str, value: object) -> None:
            with changed:
                reported.append((kind, names.setdefault(member, str(value))))
                changed.notify_all()

        def seen(kind: str, name: str) -> None:
            """Wait for the monitor to report `name` joining or leaving, and say so (here,
            so that the story keeps one order)."""
            with changed:
                if not changed.wait_for(lambda: (kind, name) in reported, 60):
                    raise SystemExit(f"the monitor never saw {name} {kind}")
                reported.remove((kind, name))
            print(f"  monitor (on n1): {name} {'is up' if kind == 'join' else 'went silent'}",
                  flush=True)

        def healthy() -> None:
            print("healthy:", sorted(monitor.members().values()), flush=True)

        local = n1.party(PARTY, ttl=a.ttl)
        with monitor.watch(on_change):
            local.join("worker-0")
            print("worker-0 (this process, member n1) heartbeats", flush=True)
            seen("join", "worker-0")
            for w in workers.values():
                w.tell("join")
                w.expect("@joined")
                seen("join", f"worker-{int(w.name[1:]) - 1}")
            healthy()
            # A follower's process dies: the leader's would also hold up every other
            # worker's heartbeats until a new leader is elected (a story of its own).
            dead = workers["n3"] if n1.leader == "n2" else workers["n2"]
            who = f"worker-{int(dead.name[1:]) - 1}"
            print(f"{who}'s process ({dead.pid}, member {dead.name}) is killed with SIGKILL: "
                  "its heartbeats stop", flush=True)
            dead.kill()
            seen("leave", who)
            healthy()
            dead.restart()
            print(f"{who}'s process is started again (process {dead.pid})", flush=True)
            dead.tell("join")
            dead.expect("@joined")
            seen("join", who)
            healthy()
        local.leave()

if __name__ == "__main__":
    main()
