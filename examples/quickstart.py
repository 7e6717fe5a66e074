"""embedkv in one minute: shared configuration, a watch, and a key that lives only as long as
its lease.

    python examples/quickstart.py            # in a temporary directory
    python examples/quickstart.py data/      # in data/ (kept, so you can reopen it)
"""

from __future__ import annotations

import sys
import tempfile
import threading

import embedkv


def main(path: str) -> None:
    # tick_interval: how often the runtime checks lease deadlines (and drives Raft).
    with embedkv.open(path, tick_interval=0.05) as store:
        # 1. Share configuration: a dict that survives restarts and is fsync'd on every write.
        store["config/db/url"] = "postgres://db.internal/app"
        store["config/db/pool"] = 10
        print("config:", dict(store.items()))

        # 2. Watch it: callbacks run on embedkv's dispatcher thread, in revision order.
        changed = threading.Event()

        def on_config(event: embedkv.Event) -> None:
            # A key is str or bytes (these were written as str); print shows either as it is.
            print("watch:", event.type.value, event.key, "=", repr(event.value),
                  f"(revision {event.revision})")
            if event.key == "config/db/pool" and event.value == 20:
                changed.set()

        with store.watch("config/", on_config, prefix=True):
            store["config/db/pool"] = 20
            if not changed.wait(10):
                sys.exit("the watch did not see the change")

        # Transactions and compare-and-set, as in etcd.
        assert store.compare_and_set("config/db/pool", 20, 30)
        assert not store.create("config/db/url", "ignored: the key exists")
        print("pool is now", store["config/db/pool"])

        # 3. A key that lives only as long as its lease: service registration.
        gone = threading.Event()

        def on_service(event: embedkv.Event) -> None:
            print("watch:", event.type.value, event.key)
            if event.type is embedkv.EventType.DELETE:
                gone.set()

        lease = store.lease(1, keepalive=False)  # 1 s and no refresh: it will run out
        put = store.put("services/web-1", "10.0.0.7:8080", lease=lease)
        print("registered:", store.range(prefix="services/")[0].key,
              f"(lease {lease.id:#x}, ttl {lease.ttl}s)")
        # start_revision: see every event after the put, even one that came before this line.
        with store.watch("services/", on_service, prefix=True,
                         start_revision=put.revision + 1):
            if not gone.wait(10):
                sys.exit("the lease did not expire")
        print("services/web-1 vanished when its lease ended:", "services/web-1" not in store)
        print("revision", store.revision)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory(prefix="embedkv-quickstart-") as tmp:
            main(tmp)
