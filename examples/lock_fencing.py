"""A lock with fencing: the old holder stalls, loses the lock, and its late write is refused.

    python examples/lock_fencing.py [DATA_DIR] [--short]

The guarded write is a transaction that compares ``lock.held()``: the store itself refuses
it once the holder's lease is gone, whatever the old holder believes.
"""

from __future__ import annotations

import threading

from _common import args, store

from embedkv import Put


def main() -> None:
    a = args(__doc__)
    with store(a.data_dir) as s:
        old = s.lock("inventory", ttl=1)
        old.acquire()
        print(f"worker-1 holds the lock, token {old.token}")
        guard = old.held()
        r = s.txn(compare=[guard], success=[Put("inventory/count", 10)])
        print("worker-1 writes count=10 under the lock:", "accepted" if r.succeeded else "refused")

        print("worker-1 stalls (a long GC pause): its keep-alives stop")
        old.session.orphan()
        new = s.lock("inventory", ttl=1)
        waiter = threading.Thread(target=new.acquire, kwargs={"timeout": 30})
        waiter.start()
        waiter.join(30)
        print(f"worker-2 acquires the lock after worker-1's lease expired, token {new.token}")
        s.txn(compare=[new.held()], success=[Put("inventory/count", 7)])
        print("worker-2 writes count=7")

        late = s.txn(compare=[guard], success=[Put("inventory/count", 11)])
        print("worker-1 wakes up and writes count=11:",
              "accepted" if late.succeeded else "refused by the store")
        print("count is", s["inventory/count"])
        new.release()


if __name__ == "__main__":
    main()
