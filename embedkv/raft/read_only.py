"""Pending ReadIndex requests at the leader, confirmed by heartbeat acknowledgements.

Modelled on etcd raft's read_only.go (ReadOnlySafe). A request records the commit index when
it arrived; it may be answered once a majority acknowledged a heartbeat round sent after it
arrived (the leader was still leader then, thesis §6.4). Requests are queued in arrival order
and an acknowledgement of a later request's round confirms every earlier one too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class ReadIndexRequest:
    """One read waiting for its heartbeat round: who asked, its context, its read index."""

    requester: int
    context: bytes
    index: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """The leader's queue of read requests awaiting quorum confirmation."""

    __slots__ = ("_pending", "_queue")

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadIndexRequest] = {}
        self._queue: deque[bytes] = deque()

    def add_request(self, index: int, requester: int, context: bytes) -> bool:
        """Queue a read; False if one with the same context is already pending."""
        if context in self._pending:
            return False
        self._pending[context] = ReadIndexRequest(requester, context, index)
        self._queue.append(context)
        return True

    def recv_ack(self, node_id: int, context: bytes) -> set[int] | None:
        """Record that `node_id` acknowledged the round for `context`; the acks so far."""
        request = self._pending.get(context)
        if request is None:
            return None
        request.acks.add(node_id)
        return request.acks

    def advance(self, context: bytes) -> list[ReadIndexRequest]:
        """Pop and return every request up to and including the one for `context`."""
        if context not in self._pending:
            return []
        out: list[ReadIndexRequest] = []
        while self._queue:
            ctx = self._queue.popleft()
            out.append(self._pending.pop(ctx))
            if ctx == context:
                break
        return out

    def last_pending_context(self) -> bytes:
        return self._queue[-1] if self._queue else b""
