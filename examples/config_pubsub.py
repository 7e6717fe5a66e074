"""Configuration publish/subscribe: a publisher changes settings, subscribers' views follow.

    python examples/config_pubsub.py [DATA_DIR] [--short]

Subscribers here are threads of the publishing process: until the client endpoint lands, a
data dir belongs to one process, so "across processes" waits for it.
"""

from __future__ import annotations

import threading

from _common import args, store

from embedkv import Put
from embedkv.recipes import ConfigView


def main() -> None:
    a = args(__doc__)
    with store(a.data_dir) as s:
        s.update({"config/app/log_level": "info", "config/app/workers": 4})
        view = s.config("config/app/")
        print(f"subscriber sees (revision {view.revision}):", dict(view))
        updated = threading.Event()

        def on_change(v: ConfigView) -> None:
            revision, data = v.snapshot()
            print(f"  subscriber: revision {revision}: {data}")
            if data.get("workers") == 8:
                updated.set()

        view.on_change(on_change)
        print("publisher sets log_level=debug and workers=8 in one transaction")
        s.txn(success=[Put("config/app/log_level", "debug"), Put("config/app/workers", 8)])
        updated.wait(30)
        print("the view changed all at once:", dict(view))
        view.close()


if __name__ == "__main__":
    main()
