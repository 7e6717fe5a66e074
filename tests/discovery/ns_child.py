"""A member on a fake host of the namespace lab (tests/discovery/test_netns.py): opens a store
with discovery on the host's default (LAN) interfaces (over mutual TLS with --tls DIR), then,
until a stop file appears, writes a counter of its own (`alive/NAME`) and reports its cluster
id, the voters and their addresses, and the counters it holds (read locally) to a JSON file."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from typing import Any

import embedkv


def main() -> None:
    p = argparse.ArgumentParser()
    for arg in ("path", "name", "listen", "cluster", "expect", "report", "stop"):
        p.add_argument(arg)
    p.add_argument("--tls", default=None, help="certificate directory (default: insecure)")
    args = p.parse_args()
    logging.basicConfig(level=os.environ.get("EK_CHILD_LOG", "WARNING"),
                        format=f"%(asctime)s {args.name} %(name)s %(message)s")
    security: dict[str, Any] = {"tls": args.tls} if args.tls else {"insecure": True}
    store = embedkv.open(args.path, name=args.name, listen=args.listen, cluster=args.cluster,
                         expect=int(args.expect), discovery=embedkv.Discovery(timeout=60.0),
                         tick_interval=0.05, request_timeout=1.0, serializable_reads=True,
                         **security)
    count = 0
    try:
        while not os.path.exists(args.stop):
            count += 1
            with contextlib.suppress(embedkv.Error):  # cut off: the report shows it stalls
                store[f"alive/{args.name}"] = count
            try:
                members = store.members()
            except embedkv.Error:
                members = []
            alive = {}
            for kv in store.range("alive/", serializable=True):
                key = kv.key.decode() if isinstance(kv.key, bytes) else kv.key
                alive[key.split("/", 1)[1]] = kv.value
            tmp = args.report + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"cluster_id": store.status().cluster_id,
                           "voters": sorted(m.name for m in members if m.voter),
                           "addresses": {m.name: m.address for m in members},
                           "alive": alive}, f)
            os.replace(tmp, args.report)
            time.sleep(0.2)  # a reporting period, not a synchronisation
    finally:
        store.close()


if __name__ == "__main__":
    main()
