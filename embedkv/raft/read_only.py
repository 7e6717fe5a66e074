"""Pending ReadIndex requests at the leader, confirmed by rounds of heartbeats.

Modelled on etcd raft's read_only.go (ReadOnlySafe), with one difference: a heartbeat round
is named by a number the leader generates, never by a caller's context. A request records the
commit index when it arrived and may be answered once a majority acknowledged a round sent
after it arrived (the leader was still leader then, thesis §6.4). Keying rounds on contexts
(as etcd does) lets a delayed acknowledgement of an earlier round confirm a later request that
reuses its context, and lets two members that chose the same context collide; here requests
are keyed by (requester, context) and acknowledgements by round number.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

_ROUND_BYTES = 8


def round_context(number: int) -> bytes:
    """The heartbeat context that names round `number`."""
    return number.to_bytes(_ROUND_BYTES, "big")


def round_number(context: bytes) -> int:
    """The round a heartbeat response's context names; 0 if it names none."""
    if len(context) != _ROUND_BYTES:
        return 0
    return int.from_bytes(context, "big")


@dataclass(slots=True)
class ReadIndexRequest:
    """One read waiting for its heartbeat round: who asked, its context, its read index."""

    requester: int
    context: bytes
    index: int
    round: int = 0  # the round that confirms it; 0 until that round is sent


class ReadOnly:
    """The leader's queue of read requests awaiting quorum confirmation.

    Rounds are numbered from `first_round` upwards, never reused by one node (the runtime
    keeps the counter across terms), so an acknowledgement can only confirm the round it
    answered, or an earlier request through it.
    """

    __slots__ = ("_acks", "_next_round", "_pending", "_queue")

    def __init__(self, first_round: int = 1) -> None:
        self._pending: dict[tuple[int, bytes], ReadIndexRequest] = {}
        self._queue: deque[ReadIndexRequest] = deque()  # arrival order (and round order)
        self._acks: dict[int, set[int]] = {}  # round -> who acknowledged it
        self._next_round = first_round

    @property
    def next_round(self) -> int:
        return self._next_round

    def add_request(self, index: int, requester: int, context: bytes) -> bool:
        """Queue a read; False if the same requester has one with this context pending."""
        key = (requester, context)
        if key in self._pending:
            return False
        request = ReadIndexRequest(requester, context, index)
        self._pending[key] = request
        self._queue.append(request)
        return True

    def has_unsent(self) -> bool:
        """Whether a request waits for a round to be started."""
        return bool(self._queue) and self._queue[-1].round == 0

    def start_round(self, self_id: int) -> int:
        """Start a round for every request not in one yet (the leader acknowledges it)."""
        number = self._next_round
        self._next_round += 1
        for request in reversed(self._queue):
            if request.round:
                break
            request.round = number
        self._acks[number] = {self_id}
        return number

    def last_round(self) -> int:
        """The latest round still confirming a request (0: none)."""
        for request in reversed(self._queue):
            if request.round:
                return request.round
        return 0

    def recv_ack(self, node_id: int, number: int) -> set[int] | None:
        """Record that `node_id` acknowledged round `number`; the acks so far (None: not a
        round we are waiting for)."""
        acks = self._acks.get(number)
        if acks is None:
            return None
        acks.add(node_id)
        return acks

    def advance(self, number: int) -> list[ReadIndexRequest]:
        """Pop and return every request confirmed by round `number` (and earlier rounds)."""
        out: list[ReadIndexRequest] = []
        queue = self._queue
        while queue and 0 < queue[0].round <= number:
            request = queue.popleft()
            del self._pending[(request.requester, request.context)]
            out.append(request)
        for done in [r for r in self._acks if r <= number]:
            del self._acks[done]
        return out
