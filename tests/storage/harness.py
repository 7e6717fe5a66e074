"""Drives a DataDir the way a single-voter member does: each request becomes a Raft entry that
is appended and applied in one write transaction, which also runs one bounded step of pending
compaction work (as the member's writer does)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from embedkv.errors import Error
from embedkv.raft.types import Entry, HardState
from embedkv.storage import Applied, DataDir
from embedkv.storage.codec import encode_proposal
from embedkv.storage.requests import Request, Result

STEP = 64
"""History changes each batch's compaction step visits, unless told otherwise."""


class Member:
    """A data dir plus the entry index and term a one-member Raft log would use.

    `step`: the compaction step each batch runs (WriteBatch.compact_step), None for none."""

    def __init__(
        self, path: str | os.PathLike[str], *, durable: bool = False, step: int | None = STEP
    ) -> None:
        self.path = os.fspath(path)
        self.durable = durable
        self.step = step
        self.dd = DataDir.open(self.path, durable=durable)
        self.term = 1

    @property
    def index(self) -> int:
        return self.dd.log.last_index()

    def propose_many(
        self,
        requests: Sequence[Request],
        *,
        step: int | bool | None = True,
        first_step: int | None = None,
    ) -> list[Applied]:
        """Append and apply `requests` in one batch, then run a compaction step of `step`
        changes (True: the member's own; None: none); `first_step`: one before them too."""
        if step is True:
            step = self.step
        start = self.index
        entries = [
            Entry(self.term, start + i + 1, data=encode_proposal(1, start + i + 1, r))
            for i, r in enumerate(requests)
        ]
        with self.dd.write() as w:
            if first_step:
                w.compact_step(first_step)
            w.append_entries(entries)
            w.set_hard_state(HardState(self.term, 1, entries[-1].index if entries else start))
            applied = [w.apply(e) for e in entries]
            if step:
                w.compact_step(step)
            return applied

    def propose(self, request: Request, *, step: int | bool | None = True) -> Result | Error:
        applied = self.propose_many([request], step=step)[0]
        assert applied.result is not None
        return applied.result

    def finish_compaction(self, step: int = 1000) -> int:
        """Run compaction steps (each in its own batch) until no work is left; the number of
        batches that did some."""
        batches = 0
        while self.dd.compaction_pending:
            with self.dd.write() as w:
                w.compact_step(step)
            batches += 1
        return batches

    def reopen(self) -> None:
        self.dd.close()
        self.dd = DataDir.open(self.path, durable=self.durable)

    def close(self) -> None:
        self.dd.close()
