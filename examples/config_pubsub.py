"""Configuration publish/subscribe: a publisher changes settings, subscribers' views follow.

    python examples/config_pubsub.py [DATA_DIR] [--short]

Three members of one cluster: the publisher writes on n1, a subscriber's view lives on each
of n2 and n3 (on three machines: three processes).
"""

from __future__ import annotations

import threading

from _common import args, cluster

from embedkv import Put
from embedkv.recipes import ConfigView


def main() -> None:
    a = args(__doc__)
    with cluster(a) as (n1, *subscribers):
        n1.update({"config/app/log_level": "info", "config/app/workers": 4})
        views = {f"n{i}": s.config("config/app/") for i, s in enumerate(subscribers, start=2)}
        updated = {name: threading.Event() for name in views}
        for name, view in views.items():
            print(f"subscriber on {name} sees (revision {view.revision}):", dict(view))

            def on_change(v: ConfigView, name: str = name) -> None:
                revision, data = v.snapshot()
                if not a.short:
                    print(f"  subscriber on {name}: revision {revision}: {data}")
                if data.get("workers") == 8:
                    updated[name].set()

            view.on_change(on_change)
        print("publisher (on n1) sets log_level=debug and workers=8 in one transaction")
        n1.txn(success=[Put("config/app/log_level", "debug"), Put("config/app/workers", 8)])
        for name, view in views.items():
            updated[name].wait(30)
            print(f"the view changed all at once: {dict(view)} (on {name})")
            view.close()


if __name__ == "__main__":
    main()
