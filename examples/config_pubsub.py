"""Configuration publish/subscribe: a publisher changes settings, subscribers' views follow.

    python examples/config_pubsub.py [DATA_DIR] [--short]

Subscribers here are threads of the publishing process: until the client endpoint lands, a
data dir belongs to one process, so "across processes" waits for it. ``--short`` publishes
only the last change.
"""

from __future__ import annotations

import threading

from _common import args, need, say, store

from embedkv import Put
from embedkv.recipes import ConfigView


def main() -> None:
    a = args(__doc__)
    # Each round: (log_level, workers), published in one transaction.
    rounds = [("debug", 8)] if a.short else [("info", 5), ("warning", 6), ("debug", 8)]
    with store(a.data_dir) as s:
        s.update({"config/app/log_level": "info", "config/app/workers": 4})
        view = s.config("config/app/")
        say(f"subscriber sees (revision {view.revision}):", dict(view))
        seen: list[dict[str, object]] = []
        updated = threading.Condition()

        def on_change(v: ConfigView) -> None:
            revision, data = v.snapshot()
            say(f"  subscriber: revision {revision}: {data}")
            with updated:
                seen.append(data)
                updated.notify_all()

        view.on_change(on_change)
        for level, workers in rounds:
            say(f"publisher sets log_level={level} and workers={workers} in one transaction")
            s.txn(success=[Put("config/app/log_level", level),
                           Put("config/app/workers", workers)])
            want: dict[str, object] = {"log_level": level, "workers": workers}

            def arrived(w: dict[str, object] = want) -> bool:
                return w in seen

            with updated:
                need(updated.wait_for(arrived, 30), "the view did not follow")
        view.close()
        # Never a half-applied transaction: every view had both settings of one round.
        need(all((d["log_level"], d["workers"]) in rounds for d in seen), "a torn view")
        say("the view changed all at once:", dict(view))


if __name__ == "__main__":
    main()
