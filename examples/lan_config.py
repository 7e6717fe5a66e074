"""Shared configuration across devices: a change written on one device reaches a watch
callback on every other.

On one machine (the default): three members n1, n2, n3 on 127.0.0.2, .3, .4 find each other
with mDNS (pinned to those addresses: nothing leaves the machine) and form one cluster over
mutual TLS (a CA and their certificates are made for the run). n2 and n3 follow the
prefix config/plant/ with ``store.config(...)`` and a callback; n1 writes a configuration,
then n3 changes it: every device's callback sees each whole new view.

    python examples/lan_config.py [DATA_DIR] [--short]

On three real devices of one LAN: on an admin machine, which keeps certs/ca.key,

    embedkv certs init certs/
    embedkv certs issue certs/ n1 --ip 192.168.1.11     # n2, n3 likewise, with their addresses

copy certs/ca.pem and the device's own pair (n1.pem, n1.key) to certs/ on each device, and
run on each, with its own name:

    python examples/lan_config.py --device n1 [--certs certs/] [--cluster plant-7] [DATA_DIR]

The three found the cluster (a fourth started later joins it); each prints the configuration
whenever it changes and adds its own entry config/plant/<name>.
"""

from __future__ import annotations

import threading
import time

from _lan import args, device, loopback, say

import embedkv
from embedkv.recipes import ConfigView

PREFIX = "config/plant/"


def on_device(store: embedkv.Store) -> None:
    """A real device: follow the configuration and add this device's entry to it."""
    view = store.config(PREFIX)
    view.on_change(lambda v: say(f"{store.name} sees (revision {v.revision}): {dict(v)}"))
    say(f"{store.name} starts with (revision {view.revision}): {dict(view)}")
    store[f"{PREFIX}{store.name}"] = f"online since {time.strftime('%H:%M:%S')}"
    threading.Event().wait()


def main() -> None:
    a = args(__doc__)
    if a.device:
        with device(a) as store:
            on_device(store)
        return
    with loopback(a) as (_, (n1, n2, n3)):
        seen = threading.Condition()
        views: dict[str, dict[str, object]] = {}

        def follow(store: embedkv.Store) -> ConfigView:
            def on_change(view: ConfigView) -> None:
                say(f"  {store.name}'s callback: {dict(view)} (revision {view.revision})")
                with seen:
                    views[store.name] = dict(view)
                    seen.notify_all()

            view = store.config(PREFIX)
            view.on_change(on_change)
            return view

        def everywhere(expected: dict[str, object]) -> None:
            with seen:
                if not seen.wait_for(lambda: views.get("n2") == views.get("n3") == expected,
                                     60):
                    raise SystemExit(f"the callbacks never saw {expected}")

        with follow(n2), follow(n3):
            first = {"mode": "auto", "interval_s": 5}
            say(f"n1 writes {first} in one transaction")
            n1.txn(success=[embedkv.Put(PREFIX + k, v) for k, v in first.items()])
            everywhere(first)
            say("n3 changes mode to eco")
            n3[PREFIX + "mode"] = "eco"
            everywhere({**first, "mode": "eco"})
            with n1.config(PREFIX) as mine:
                same = dict(mine) == views["n2"] == views["n3"]
            say(f"every device holds the same configuration: {same}")


if __name__ == "__main__":
    main()
