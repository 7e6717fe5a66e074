"""A member on a fake host of the namespace lab (tests/discovery/test_netns.py): opens a store
with discovery on the host's default (LAN) interfaces, then reports its cluster id and the
voters it sees to a JSON file, until a stop file appears."""

from __future__ import annotations

import json
import os
import sys
import time

import embedkv


def main() -> None:
    path, name, listen, cluster, expect, report, stop = sys.argv[1:8]
    store = embedkv.open(path, name=name, listen=listen, cluster=cluster, expect=int(expect),
                         discovery=embedkv.Discovery(timeout=60.0), insecure=True,
                         tick_interval=0.05)
    try:
        while not os.path.exists(stop):
            try:
                voters = sorted(m.name for m in store.members() if m.voter)
            except embedkv.Error:
                voters = []
            tmp = report + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"cluster_id": store.status().cluster_id, "voters": voters}, f)
            os.replace(tmp, report)
            time.sleep(0.2)  # a reporting period, not a synchronisation
    finally:
        store.close()


if __name__ == "__main__":
    main()
