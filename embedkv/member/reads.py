"""ReadIndex rounds: readers wait for a round, a round for its answer, an answer for apply.

Each writer turn starts one round for every reader queued since the previous one (a round in
flight is never joined by later readers: its index may predate their call). Contexts never
repeat across members and runs (member id + a random base per run + a counter), so a stray
answer to an earlier request is never taken for the answer to a later one. A round unanswered
for `retry` seconds (an election timeout) is asked again under a new context: the request or
its answer may have been lost.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import Future
from dataclasses import dataclass

from embedkv.raft import ReadState

from .futures import expire, fail


@dataclass(slots=True)
class ReadWaiter:
    future: Future[int]
    deadline: float


class ReadRounds:
    """The readers of one member, from queued to released; used by the Ready loop's thread."""

    def __init__(self, member_id: int, retry: float) -> None:
        self._retry = retry
        self._prefix = member_id.to_bytes(8, "big") + os.urandom(8)
        self._counter = itertools.count(1)
        self.waiting: list[ReadWaiter] = []  # not yet in a round
        self._rounds: dict[bytes, tuple[float, list[ReadWaiter]]] = {}  # ctx -> (asked, readers)
        self._answered: list[tuple[int, list[ReadWaiter]]] = []  # read index known; wait apply

    def next_context(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")

    def started(self, ctx: bytes, now: float) -> None:
        """The core took a round under `ctx` for every reader waiting now."""
        self._rounds[ctx] = (now, self.waiting)
        self.waiting = []

    def answer_now(self, index: int) -> None:
        """Every waiting reader may read at `index` (a single voter that cannot write)."""
        readers, self.waiting = self.waiting, []
        for r in readers:
            if not r.future.done():
                r.future.set_result(index)

    def on_read_states(self, states: list[ReadState], applied: int) -> bool:
        """Answers from the core; True if one of ours is already applied here."""
        applied_one = False
        for rs in states:
            round_ = self._rounds.pop(rs.context, None)
            if round_ is not None:
                self._answered.append((rs.index, round_[1]))
                applied_one = applied_one or rs.index <= applied
        return applied_one

    def release(self, applied: int) -> None:
        """Resolve the readers whose read index is applied."""
        if not self._answered:
            return
        keep: list[tuple[int, list[ReadWaiter]]] = []
        for index, readers in self._answered:
            if index > applied:
                keep.append((index, readers))
                continue
            for r in readers:
                if not r.future.done():
                    r.future.set_result(index)
        self._answered = keep

    def expire(self, now: float, why: str) -> None:
        """Fail readers past their deadline; ask again for rounds unanswered too long."""
        if self.waiting:
            self.waiting = expire(self.waiting, now, why)
        for ctx, (asked, readers) in list(self._rounds.items()):
            left = expire(readers, now, why)
            if not left:
                del self._rounds[ctx]
            elif asked + self._retry <= now:
                # A late answer to this context is ignored from now on.
                del self._rounds[ctx]
                self.waiting.extend(left)
            else:
                self._rounds[ctx] = (asked, left)
        if self._answered:
            answered = []
            for index, readers in self._answered:
                left = expire(readers, now, why)
                if left:
                    answered.append((index, left))
            self._answered = answered

    def ask_again(self) -> None:
        """The core was rebuilt: every round in flight is lost; its readers wait again."""
        for _, readers in self._rounds.values():
            self.waiting.extend(readers)
        self._rounds.clear()

    def fail_all(self, exc: BaseException) -> None:
        """Fail every reader (the writer stopped, or this member was removed)."""
        readers = list(self.waiting)
        for _, waiters in self._rounds.values():
            readers.extend(waiters)
        for _, waiters in self._answered:
            readers.extend(waiters)
        self.waiting = []
        self._rounds.clear()
        self._answered = []
        for r in readers:
            fail(r.future, type(exc)(str(exc)))
