"""A work queue: two consumers, one dies mid-item, its item is redelivered to the other.

    python examples/work_queue.py [DATA_DIR] [--short]

``--short`` queues 3 jobs (else 10); the dead consumer's lease is 1 s in both.
"""

from __future__ import annotations

from _common import args, need, say, store

from embedkv.recipes import SessionLost


def main() -> None:
    a = args(__doc__)
    n = 3 if a.short else 10
    with store(a.data_dir) as s:
        producer = s.queue("resize")
        for i in range(n):
            producer.put(f"image-{i}.png")
        producer.put("thumbnail-first.png", priority=-1)
        say(f"producer queued {n + 1} jobs ({producer.qsize()} waiting)")

        doomed = s.queue("resize", ttl=1)
        job = doomed.get(timeout=5)
        say(f"consumer-A took {job.value} ... and crashes before finishing it")
        doomed.session.orphan()

        worker = s.queue("resize", ttl=5)
        done: list[object] = []
        while len(done) < n + 1:
            item = worker.get(timeout=30)
            item.ack()
            done.append(item.value)
            say(f"consumer-B finished {item.value}")
        try:
            job.ack()
            need(False, "consumer-A's late ack was accepted")
        except SessionLost:
            say("consumer-A's late ack is refused: the job was redelivered, done once")
        worker.close()
        say(f"every job done exactly once: {len(done) == len(set(done))}, "
              f"{producer.qsize()} left")


if __name__ == "__main__":
    main()
