"""The writer the crash test kills: applies batches of requests to a data dir and prints each
committed applied index, flushing, so the parent knows what was acknowledged."""

from __future__ import annotations

import random
import sys

from embedkv.raft.types import Entry, HardState
from embedkv.storage import DataDir, lmdbenv
from embedkv.storage.codec import encode_proposal
from embedkv.storage.requests import (
    Compaction,
    Delete,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Request,
    Txn,
    Version,
)


def requests(rng: random.Random, n: int, revision: int) -> list[Request]:
    out: list[Request] = []
    if revision > 100 and rng.random() < 0.1:
        out.append(Compaction(revision - 50))
    for _ in range(n):
        roll = rng.random()
        key = f"k{rng.randrange(40):02d}"
        if roll < 0.7:
            value = {"n": rng.randrange(10**6), "pad": "x" * rng.randrange(2000)}
            lease = rng.choice([None, None, None, 1, 2])
            out.append(Put(key, value, lease=lease))
        elif roll < 0.8:
            out.append(Delete(key, prefix=rng.random() < 0.3))
        elif roll < 0.9:
            out.append(Txn((Version(key) == 0,), (Put(key, "created"),), (Delete(key),)))
        elif roll < 0.95:
            out.append(LeaseGrant(rng.choice([1, 2]), 60))
        else:
            out.append(LeaseRevoke(rng.choice([1, 2])))
    return out


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    lmdbenv.INITIAL_MAP_SIZE = 1 << 20  # small, so the map grows while we may be killed
    rng = random.Random(seed)
    dd = DataDir.open(path, durable=True)
    index = dd.log.last_index()
    print(f"start {index}", flush=True)
    while True:
        batch = requests(rng, rng.randrange(1, 30), dd.kv.revision)
        entries = [Entry(1, index + i + 1, data=encode_proposal(1, index + i + 1, r))
                   for i, r in enumerate(batch)]
        with dd.write() as w:
            w.append_entries(entries)
            w.set_hard_state(HardState(1, 1, entries[-1].index))
            for e in entries:
                w.apply(e)
            w.compact_step(rng.randrange(1, 40))  # as the member's writer: killed mid-way too
        index = entries[-1].index
        print(f"committed {index}", flush=True)


if __name__ == "__main__":
    main()
