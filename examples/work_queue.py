"""A work queue: two consumers, one is killed mid-item, its item is redelivered to the other.

    python examples/work_queue.py [DATA_DIR] [--short]

Three members of one cluster, one process each: the producer uses n1 (this process),
consumer-A runs in n2's process and consumer-B in n3's (this script again, with ``--role``).
consumer-A claims a job and its process is SIGKILLed before it acks: no release, no more
keep-alives. Its claim ends with its lease, after its TTL, and consumer-B gets the job.
"""

from __future__ import annotations

import argparse
import os

from _common import Parent, args, processes, serve

import embedkv
from embedkv import Put, Version

QUEUE = "resize"


def consumer_a(store: embedkv.Store, a: argparse.Namespace, parent: Parent) -> None:
    """Claims one job when told, then "works" on it until it is killed."""
    q = store.queue(QUEUE, ttl=a.ttl)
    if parent.command() != "take":
        return
    job = q.get(timeout=30)
    parent.say(f"consumer-A (process {os.getpid()}, member {store.name}) took {job.value} "
               f"and starts on it")
    parent.say("@took")
    parent.command()  # never answered: the process is killed mid-item


def consumer_b(store: embedkv.Store, a: argparse.Namespace, parent: Parent) -> None:
    """Does jobs until it has done as many as it is told; records each one done (created
    once: a job done twice would fail the example)."""
    q = store.queue(QUEUE, ttl=max(5, a.ttl))
    told = parent.command()  # "work <jobs> <the killed consumer's job>"
    if not told.startswith("work "):
        return
    _, total, lost = told.split(" ", 2)
    parent.say(f"consumer-B (process {os.getpid()}, member {store.name}) starts working")
    done = 0
    while done < int(total):
        item = q.get(timeout=60)
        first = store.txn(compare=[Version(f"done/{item.value}") == 0],
                          success=[Put(f"done/{item.value}", store.name)]).succeeded
        item.ack()
        if not first:
            raise SystemExit(f"{item.value} was done twice")
        done += 1
        again = " (redelivered: consumer-A's claim ended with its lease)" \
            if item.value == lost else ""
        parent.say(f"consumer-B finished {item.value}{again}")
    q.close()
    parent.say("@done")


def main() -> None:
    a = args(__doc__)
    if serve(a, {"consumer-A": consumer_a, "consumer-B": consumer_b}):
        return
    n = 3 if a.short else 10
    roles = {"n2": "consumer-A", "n3": "consumer-B"}
    with processes(a, __file__, "n1", roles) as (n1, consumers):
        ca, cb = consumers["n2"], consumers["n3"]
        producer = n1.queue(QUEUE)
        producer.put("thumbnail-first.png", priority=-1)
        for i in range(n):
            producer.put(f"image-{i}.png")
        print(f"producer (on n1) queued {n + 1} jobs ({producer.qsize()} waiting)", flush=True)
        ca.tell("take")
        ca.expect("@took")
        print(f"consumer-A's process ({ca.pid}) is killed with SIGKILL before its ack",
              flush=True)
        ca.kill()
        cb.tell(f"work {n + 1} thumbnail-first.png")
        cb.expect("@done")
        done = n1.range(prefix="done/")
        print(f"every job done exactly once: {len(done) == n + 1}, "
              f"{producer.qsize()} left (read on n1)", flush=True)


if __name__ == "__main__":
    main()
