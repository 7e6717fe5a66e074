"""A work queue: two consumers, one dies mid-item, its item is redelivered to the other.

    python examples/work_queue.py [DATA_DIR] [--short]

Three members of one cluster: the producer uses n1, consumer-A n2, consumer-B n3.
"""

from __future__ import annotations

from _common import args, cluster

from embedkv.recipes import SessionLost


def main() -> None:
    a = args(__doc__)
    n = 3 if a.short else 10
    with cluster(a) as (n1, n2, n3):
        producer = n1.queue("resize")
        for i in range(n):
            producer.put(f"image-{i}.png")
        producer.put("thumbnail-first.png", priority=-1)
        print(f"producer (on n1) queued {n + 1} jobs ({producer.qsize()} waiting)")

        doomed = n2.queue("resize", ttl=a.ttl)
        job = doomed.get(timeout=5)
        print(f"consumer-A (on n2) took {job.value} ... and crashes before finishing it")
        doomed.session.orphan()

        worker = n3.queue("resize", ttl=5)
        done: list[object] = []
        while len(done) < n + 1:
            item = worker.get(timeout=30)
            item.ack()
            done.append(item.value)
            print(f"consumer-B (on n3) finished {item.value}")
        try:
            job.ack()
        except SessionLost:
            print("consumer-A's late ack is refused: the job was redelivered, done once")
        print(f"every job done exactly once: {len(done) == len(set(done))}, "
              f"{producer.qsize()} left")
        worker.close()


if __name__ == "__main__":
    main()
