"""Members that find each other with mDNS: three found one cluster, a fourth joins it, and a
setting written on one reaches a watch on another.

On one machine (the default) the members run in this process, each on its own 127.0.0.x with
mDNS pinned to that address (nothing leaves the machine):

    python examples/discovery_lan.py [DATA_DIR]

On three (or more) real devices of one LAN, run on each, with its own name:

    python examples/discovery_lan.py --device n1 [--listen 0.0.0.0:7400] [DATA_DIR]

(the first three started found the cluster "plant-7"; later ones join it; mDNS uses the
device's LAN interfaces). Peer links are plain TCP until mutual TLS lands: use a trusted LAN.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import socket
import tempfile
import threading
from pathlib import Path

import embedkv

TIMEOUT = 60.0


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def device(name: str, listen: str, data: Path) -> None:
    """One member on a real device: found or join "plant-7", then follow the setting."""
    with embedkv.open(data / name, name=name, listen=listen, cluster="plant-7", expect=3,
                      discovery=embedkv.Discovery(timeout=600.0), insecure=True) as store:
        print(f"{name} is in cluster {store.status().cluster_id:x} with "
              f"{[m.name for m in store.members()]}")
        store.watch("config/mode", lambda e: print(f"{name} sees config/mode = {e.kv.value}"))
        store.setdefault("config/mode", "auto")
        print("Ctrl-C to stop")
        threading.Event().wait()


def demo(data: Path) -> None:
    """Three members on 127.0.0.x in this process, then a fourth."""
    cluster = f"plant-7-{secrets.token_hex(3)}"  # a name of this run's own
    service = f"_ekdemo{secrets.token_hex(2)}._tcp.local."
    opened: dict[str, embedkv.Store] = {}

    def start(name: str, ip: str) -> None:
        opened[name] = embedkv.open(
            data / name, name=name, listen=f"{ip}:{free_port(ip)}", cluster=cluster, expect=3,
            discovery=embedkv.Discovery(interfaces=[ip], timeout=TIMEOUT,
                                        service_type=service),
            insecure=True, tick_interval=0.05)

    threads = [threading.Thread(target=start, args=(f"n{i}", f"127.0.0.{10 + i}"))
               for i in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if len(opened) != 3:
            raise SystemExit("the three members did not all open (see the errors above)")
        ids = {s.status().cluster_id for s in opened.values()}
        print(f"n1, n2, n3 started together and formed {len(ids)} cluster")
        seen = threading.Event()

        def on_change(event: embedkv.Event) -> None:
            print(f"n3 sees config/mode = {event.kv.value}")
            seen.set()

        opened["n3"].watch("config/mode", on_change)
        opened["n1"]["config/mode"] = "eco"
        if not seen.wait(TIMEOUT):
            raise SystemExit("n3 never saw the change")
        start("n4", "127.0.0.14")
        n4 = opened["n4"]
        same = n4.status().cluster_id in ids
        print(f"n4 started later and joined the same cluster: {same}; it reads config/mode = "
              f"{n4['config/mode']}")
    finally:
        for store in opened.values():
            store.close()


def main() -> None:
    # While founders switch from the founding transport to the cluster's, each refuses the
    # others' first links for a moment ("belongs to another cluster"): expected, and retried.
    logging.getLogger("embedkv.net").setLevel(logging.ERROR)
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("data_dir", nargs="?", help="where the data dirs go (default: a temp dir)")
    p.add_argument("--device", metavar="NAME", help="run one member on this device")
    p.add_argument("--listen", default="0.0.0.0:7400", help="its peer address (--device)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data_dir or tmp)
        if a.device:
            device(a.device, a.listen, data)
        else:
            demo(data)


if __name__ == "__main__":
    main()
