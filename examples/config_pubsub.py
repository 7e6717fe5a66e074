"""Configuration publish/subscribe: a publisher changes settings, subscribers' views follow.

    python examples/config_pubsub.py [DATA_DIR] [--short]

Three members of one cluster, one process each: the publisher writes on n1 (this process),
a subscriber's live view runs in each of the processes of n2 and n3 (this script again,
with ``--role subscriber``).
"""

from __future__ import annotations

import argparse
import os

from _common import Parent, args, processes, serve

import embedkv
from embedkv import Put
from embedkv.recipes import ConfigView


def subscriber(store: embedkv.Store, a: argparse.Namespace, parent: Parent) -> None:
    """A process that follows the config: its view shows the prefix at one revision."""
    me = store.name
    parent.command()  # "subscribe": once the publisher has set the first values
    with store.config("config/app/") as view:
        parent.say(f"subscriber (process {os.getpid()}, member {me}) sees "
                   f"(revision {view.revision}): {dict(view)}")

        def on_change(v: ConfigView) -> None:
            revision, data = v.snapshot()
            if not a.short:
                parent.say(f"  subscriber on {me}: revision {revision}: {data}")
            if data.get("workers") == 8:
                parent.say(f"the view changed all at once: {data} (on {me}, revision {revision})")
                parent.say("@updated")

        view.on_change(on_change)
        parent.say("@subscribed")
        parent.command()  # follow until the parent is done


def main() -> None:
    a = args(__doc__)
    if serve(a, {"subscriber": subscriber}):
        return
    roles = {"n2": "subscriber", "n3": "subscriber"}
    with processes(a, __file__, "n1", roles) as (n1, subscribers):
        n1.update({"config/app/log_level": "info", "config/app/workers": 4})
        print("publisher (on n1) sets log_level=info and workers=4", flush=True)
        for sub in subscribers.values():
            sub.tell("subscribe")
            sub.expect("@subscribed")
        print("publisher (on n1) sets log_level=debug and workers=8 in one transaction",
              flush=True)
        n1.txn(success=[Put("config/app/log_level", "debug"), Put("config/app/workers", 8)])
        for sub in subscribers.values():
            sub.expect("@updated")


if __name__ == "__main__":
    main()
