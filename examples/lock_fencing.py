"""A lock with fencing: the old holder stalls, loses the lock, and its late write is refused.

    python examples/lock_fencing.py [DATA_DIR] [--short]

The guarded write is a transaction that compares ``lock.held()``: the store itself refuses
it once the holder's lease is gone, whatever the old holder believes. ``--short`` uses a
1-second lease (else 3 s).
"""

from __future__ import annotations

import threading

from _common import args, need, say, store

from embedkv import Put


def main() -> None:
    a = args(__doc__)
    ttl = 1 if a.short else 3
    with store(a.data_dir) as s:
        old = s.lock("inventory", ttl=ttl)
        old.acquire()
        say(f"worker-1 holds the lock, token {old.token}")
        guard = old.held()
        r = s.txn(compare=[guard], success=[Put("inventory/count", 10)])
        say("worker-1 writes count=10 under the lock:", "accepted" if r.succeeded else "refused")

        say(f"worker-1 stalls (a long GC pause): its keep-alives stop (lease {ttl} s)")
        old.session.orphan()
        new = s.lock("inventory", ttl=ttl)
        got: list[bool] = []
        waiter = threading.Thread(target=lambda: got.append(new.acquire(timeout=30)))
        waiter.start()
        waiter.join(60)
        need(got == [True], "worker-2 did not get the lock")
        say("worker-2 acquires the lock after worker-1's lease expired, a higher token:",
              new.token > old.token)
        need(s.txn(compare=[new.held()], success=[Put("inventory/count", 7)]).succeeded,
             "worker-2's guarded write")
        say("worker-2 writes count=7")

        late = s.txn(compare=[guard], success=[Put("inventory/count", 11)])
        say("worker-1 wakes up and writes count=11:",
              "accepted" if late.succeeded else "refused by the store")
        new.release()
        say("count is", s["inventory/count"])


if __name__ == "__main__":
    main()
