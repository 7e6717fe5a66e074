"""Drives a DataDir the way a single-voter member does: each request becomes a Raft entry that
is appended and applied in one write transaction."""

from __future__ import annotations

import os
from collections.abc import Sequence

from embedkv.errors import Error
from embedkv.raft.types import Entry, HardState
from embedkv.storage import Applied, DataDir
from embedkv.storage.codec import encode_proposal
from embedkv.storage.requests import Request, Result


class Member:
    """A data dir plus the entry index and term a one-member Raft log would use."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.path = os.fspath(path)
        self.durable = durable
        self.dd = DataDir.open(self.path, durable=durable)
        self.term = 1

    @property
    def index(self) -> int:
        return self.dd.log.last_index()

    def propose_many(self, requests: Sequence[Request]) -> list[Applied]:
        start = self.index
        entries = [
            Entry(self.term, start + i + 1, data=encode_proposal(1, start + i + 1, r))
            for i, r in enumerate(requests)
        ]
        with self.dd.write() as w:
            w.append_entries(entries)
            w.set_hard_state(HardState(self.term, 1, entries[-1].index if entries else start))
            return [w.apply(e) for e in entries]

    def propose(self, request: Request) -> Result | Error:
        applied = self.propose_many([request])[0]
        assert applied.result is not None
        return applied.result

    def reopen(self) -> None:
        self.dd.close()
        self.dd = DataDir.open(self.path, durable=self.durable)

    def close(self) -> None:
        self.dd.close()
