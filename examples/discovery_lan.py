"""Members that find each other with mDNS: three found one cluster, a fourth joins it, and a
setting written on one reaches a watch on another.

On one machine (the default) the members run in this process, each on its own 127.0.0.x with
mDNS pinned to that address (nothing leaves the machine), over mutual TLS (a CA and their
certificates are made for the run):

    python examples/discovery_lan.py [DATA_DIR] [--short]

On three (or more) real devices of one LAN: on an admin machine, which keeps certs/ca.key,

    embedkv certs init certs/
    embedkv certs issue certs/ n1 --ip 192.168.1.11     # n2, n3... likewise

copy certs/ca.pem and the device's own pair (n1.pem, n1.key) to certs/ on each device, and
run on each, with its own name:

    python examples/discovery_lan.py --device n1 [--certs certs/] [--listen 0.0.0.0:7400] [DATA_DIR]

(the first three started found the cluster "plant-7"; later ones join it; mDNS uses the
device's LAN interfaces). The LAN examples lan_config.py, lan_services.py and
lan_leader_job.py build the recipes' use cases on the same start.
"""

from __future__ import annotations

import threading

from _lan import args, device, loopback, say

import embedkv


def main() -> None:
    a = args(__doc__)
    if a.device:
        with device(a) as store:
            store.watch("config/mode", lambda e: say(f"{a.device} sees config/mode = "
                                                     f"{e.kv.value}"))
            store.setdefault("config/mode", "auto")
            threading.Event().wait()
        return
    with loopback(a) as (lan, (n1, _, n3)):
        seen = threading.Event()

        def on_change(event: embedkv.Event) -> None:
            say(f"n3 sees config/mode = {event.kv.value}")
            seen.set()

        n3.watch("config/mode", on_change)
        n1["config/mode"] = "eco"
        if not seen.wait(60):
            raise SystemExit("n3 never saw the change")
        n4 = lan.open("n4", "127.0.0.5")
        same = n4.status().cluster_id == n1.status().cluster_id
        say(f"n4 started later and joined the same cluster: {same}; it reads config/mode = "
            f"{n4['config/mode']}")


if __name__ == "__main__":
    main()
