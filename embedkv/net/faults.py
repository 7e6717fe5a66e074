"""A fault hook for tests: drop, delay, duplicate or partition traffic by peer and direction.

The transport asks the plan about every message, call and reply it is about to send and every
one it has just received; the plan answers with a delay in seconds (0 = now) or None (drop).
For a Raft message received and not dropped it also asks `again`: whether to deliver a second
copy, and when (Raft must take a message twice, as after a link redials and resends; calls and
replies are never repeated: a call's id is unique on its connection, and TCP repeats nothing).
Nothing here touches sockets, so a partition is a silent loss as on a cut network, not a closed
connection. Peers are member ids, or "host:port" for calls dialed by address (a joiner's).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from embedkv.raft.types import Message

from .frames import Call, Reply

Peer = int | str
Traffic = Message | Call | Reply

DUPLICATE_LAG = 0.05
"""Seconds, at most, between a duplicated message and its copy."""


class Direction(enum.Flag):
    SEND = enum.auto()
    RECEIVE = enum.auto()
    BOTH = SEND | RECEIVE


@dataclass
class _Rule:
    drop: float = 0.0  # probability of dropping
    delay: float = 0.0  # seconds
    duplicate: float = 0.0  # probability of delivering a received Raft message twice


@dataclass
class FaultPlan:
    """Per-peer rules for each direction; mutate it at any time from the transport's loop."""

    rng: random.Random = field(default_factory=random.Random)
    _send: dict[Peer, _Rule] = field(default_factory=dict)
    _recv: dict[Peer, _Rule] = field(default_factory=dict)

    def _rules(self, direction: Direction) -> list[dict[Peer, _Rule]]:
        out = []
        if Direction.SEND in direction:
            out.append(self._send)
        if Direction.RECEIVE in direction:
            out.append(self._recv)
        return out

    def partition(self, peer: Peer, direction: Direction = Direction.BOTH) -> None:
        """Drop every message to and/or from `peer`."""
        self.drop(peer, 1.0, direction)

    def drop(self, peer: Peer, probability: float, direction: Direction = Direction.BOTH) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], not {probability!r}")
        for rules in self._rules(direction):
            rules.setdefault(peer, _Rule()).drop = probability

    def delay(self, peer: Peer, seconds: float, direction: Direction = Direction.BOTH) -> None:
        if not seconds >= 0:
            raise ValueError(f"delay must be non-negative, not {seconds!r}")
        for rules in self._rules(direction):
            rules.setdefault(peer, _Rule()).delay = seconds

    def duplicate(self, peer: Peer, probability: float) -> None:
        """Deliver this share of the Raft messages received from `peer` twice, the copy up to
        `DUPLICATE_LAG` seconds after the original (so possibly after later messages)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], not {probability!r}")
        self._recv.setdefault(peer, _Rule()).duplicate = probability

    def heal(self, peer: Peer | None = None, direction: Direction = Direction.BOTH) -> None:
        """Remove the rules for `peer` (every peer when None)."""
        for rules in self._rules(direction):
            if peer is None:
                rules.clear()
            else:
                rules.pop(peer, None)

    def _verdict(self, rules: dict[Peer, _Rule], peer: Peer) -> float | None:
        rule = rules.get(peer)
        if rule is None:
            return 0.0
        if rule.drop >= 1.0 or (rule.drop > 0.0 and self.rng.random() < rule.drop):
            return None
        return rule.delay

    def on_send(self, peer: Peer, msg: Traffic) -> float | None:
        """Delay before sending `msg` to `peer`, or None to drop it."""
        return self._verdict(self._send, peer)

    def on_receive(self, peer: Peer, msg: Traffic) -> float | None:
        """Delay before delivering `msg` from `peer`, or None to drop it."""
        return self._verdict(self._recv, peer)

    def again(self, peer: Peer, msg: Message) -> float | None:
        """Seconds after the original's delivery to deliver a copy of `msg`, just received
        from `peer`, or None for no copy."""
        rule = self._recv.get(peer)
        if rule is None or rule.duplicate <= 0.0 or self.rng.random() >= rule.duplicate:
            return None
        return self.rng.uniform(0.0, DUPLICATE_LAG)
