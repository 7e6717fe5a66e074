"""A lock with fencing: the old holder stalls, loses the lock, and its late write is refused.

    python examples/lock_fencing.py [DATA_DIR] [--short]

Three members of one cluster: worker-1 uses n1, worker-2 uses n2, and the store itself (any
member) refuses a write guarded by ``lock.held()`` once the holder's lease is gone, whatever
the old holder believes.
"""

from __future__ import annotations

import threading

from _common import args, cluster

from embedkv import Put


def main() -> None:
    a = args(__doc__)
    with cluster(a) as (n1, n2, n3):
        old = n1.lock("inventory", ttl=a.ttl)
        old.acquire()
        print(f"worker-1 (on n1) holds the lock, token {old.token}")
        guard = old.held()
        r = n1.txn(compare=[guard], success=[Put("inventory/count", 10)])
        print("worker-1 writes count=10 under the lock:", "accepted" if r.succeeded else "refused")

        print("worker-1 stalls (a long GC pause): its keep-alives stop")
        old.session.orphan()
        new = n2.lock("inventory", ttl=a.ttl)
        waiter = threading.Thread(target=new.acquire, kwargs={"timeout": 30})
        waiter.start()
        waiter.join(30)
        print(f"worker-2 (on n2) acquires the lock after worker-1's lease expired, "
              f"token {new.token}")
        n2.txn(compare=[new.held()], success=[Put("inventory/count", 7)])
        print("worker-2 writes count=7")

        late = n1.txn(compare=[guard], success=[Put("inventory/count", 11)])
        print("worker-1 wakes up and writes count=11:",
              "accepted" if late.succeeded else "refused by the store")
        print("count is", n3["inventory/count"], "(read on n3)")
        new.release()


if __name__ == "__main__":
    main()
