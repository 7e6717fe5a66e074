"""Founding votes: how `expect` fresh members that found each other agree on one initial member
set (sans-I/O: no sockets, clocks or threads; the driver in `embedkv.member.discovery` feeds
it what mDNS shows and what peers answer, and carries out the effects it returns).

Each fresh member holds at most one *founding vote* (a lock on one proposal) at a time and
persists it before it answers. A proposal names its proposer and exactly `expect` members; it
is decided only by its proposer, once every member in it granted it. A vote is given up only
when the proposer says the proposal can never be decided (it aborted it, or never knew it):
so two decided proposals never share a member, and with fewer than 2 * expect fresh members
of one cluster name at once at most one can be decided (docs/internals/discovery.md).
"""

from __future__ import annotations

import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

NONCE = re.compile(r"[0-9a-f]{32}")

Answer = Literal["collecting", "decided", "unknown"]
"""A proposer's answer about one of its proposals ("unknown": aborted, or never made here)."""


@dataclass(frozen=True, slots=True, order=True)
class Seat:
    """A fresh member as another sees it: its name and peer address."""

    name: str
    address: str


@dataclass(frozen=True, slots=True)
class Proposal:
    """An initial member set: `members` sorted by name, `proposer` one of them, `nonce` its
    own random id (the founded cluster's token is "<cluster>/<nonce>")."""

    nonce: str
    proposer: str
    members: tuple[Seat, ...]

    def token(self, cluster: str) -> str:
        return f"{cluster}/{self.nonce}"

    def peers(self) -> dict[str, str]:
        return {s.name: s.address for s in self.members}

    def seat(self, name: str) -> Seat | None:
        return next((s for s in self.members if s.name == name), None)

    def encode(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "proposer": self.proposer,
                "members": [[s.name, s.address] for s in self.members]}

    @classmethod
    def decode(cls, body: object) -> Proposal:
        """A proposal from the wire or the vote file; ValueError if malformed."""
        try:
            assert isinstance(body, dict)
            nonce, proposer, rows = body["nonce"], body["proposer"], body["members"]
            assert isinstance(nonce, str) and NONCE.fullmatch(nonce)
            assert isinstance(proposer, str) and isinstance(rows, list)
            seats = []
            for row in rows:
                assert isinstance(row, list) and len(row) == 2
                assert all(isinstance(v, str) for v in row)
                seats.append(Seat(row[0], row[1]))
        except (AssertionError, KeyError, TypeError) as exc:
            raise ValueError(f"a malformed founding proposal: {body!r:.200}") from exc
        members = tuple(sorted(seats))
        names = {s.name for s in members}
        if (len(names) != len(members) or len({s.address for s in members}) != len(members)
                or proposer not in names):
            raise ValueError(f"a founding proposal with repeated members or a foreign "
                             f"proposer: {body!r:.200}")
        return cls(nonce, proposer, members)


# --- effects: what the driver must do -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask `to` for its vote on `proposal`; answer with `Founding.on_answer`."""

    to: Seat
    proposal: Proposal


@dataclass(frozen=True, slots=True)
class Release:
    """Tell `to` that `nonce` is aborted: it may vote again."""

    to: Seat
    nonce: str


@dataclass(frozen=True, slots=True)
class Save:
    """Persist the vote (None: no vote) before anything else is sent or answered."""

    vote: Proposal | None


@dataclass(frozen=True, slots=True)
class Decide:
    """Found the cluster of `proposal` now (persist it first); a proposer then tells the
    others (`Commit`ting is the driver's, after the bootstrap is durable)."""

    proposal: Proposal


@dataclass(frozen=True, slots=True)
class Poll:
    """Ask the proposer of our vote what became of it; answer with `Founding.on_status`."""

    proposal: Proposal


Effect = Ask | Release | Save | Decide | Poll


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds. `settle`: how long the view must stay unchanged before proposing; `stagger`:
    added per rank (the lowest name proposes first, so that views that agree rarely
    collide); `backoff`: the most a proposer waits after an aborted proposal; `suspect`: how
    long a member that did not answer is left out of proposals; `poll`: how often a vote
    whose fate is unknown is asked about."""

    settle: float = 1.0
    stagger: float = 0.5
    backoff: float = 1.5
    suspect: float = 5.0
    poll: float = 1.0


@dataclass(slots=True)
class _Own:
    proposal: Proposal
    granted: set[str] = field(default_factory=set)


class Founding:
    """One fresh member's side of the founding vote."""

    def __init__(
        self,
        *,
        me: Seat,
        expect: int,
        rng: random.Random,
        vote: Proposal | None = None,
        timing: Timing = Timing(),
    ) -> None:
        if expect < 1:
            raise ValueError(f"expect must be at least 1, not {expect}")
        self.me = me
        self.expect = expect
        self.timing = timing
        self._rng = rng
        # A vote for our own proposal did not survive a restart: it was never decided (a
        # decision is persisted as the bootstrap itself, before anyone learns it), and only
        # we could decide it. Forget it (the first tick saves that).
        self.vote = vote if vote is None or vote.proposer != me.name else None
        self._dirty = vote is not None and self.vote is None
        self.decided: Proposal | None = None
        self._own: _Own | None = None
        self._view: tuple[Seat, ...] = ()
        self._view_since = 0.0
        self._not_before = 0.0
        self._suspects: dict[Seat, float] = {}  # by seat: a name forged elsewhere loses
        self._next_poll = 0.0
        self._aborted: dict[str, Proposal] = {}  # recent ones: a late grant is given back

    # --- inputs -----------------------------------------------------------------------

    def see(self, fresh: list[Seat], now: float) -> None:
        """The fresh members of our cluster name mDNS shows now (ourselves included or not)."""
        view = tuple(sorted({s for s in fresh if s.name != self.me.name} | {self.me}))
        if view != self._view:
            self._view = view
            self._view_since = now

    def tick(self, now: float) -> list[Effect]:
        """Time passed: propose when due, ask about a vote of unknown fate."""
        out: list[Effect] = []
        if self._dirty:
            self._dirty = False
            out.append(Save(self.vote))
        if self.decided is not None:
            return out
        if self.vote is not None:
            if self._own is None and now >= self._next_poll:
                self._next_poll = now + self.timing.poll
                out.append(Poll(self.vote))
            return out
        candidates = [s for s in self._view
                      if s == self.me or self._suspects.get(s, -1.0) <= now]
        if len(candidates) < self.expect or now < self._not_before:
            return out
        rank = candidates.index(self.me)
        if now < self._view_since + self.timing.settle + rank * self.timing.stagger:
            return out
        others: list[Seat] = []
        taken, named = {self.me.address}, {self.me.name}
        for s in candidates:  # one seat per address and per name: a forged one loses
            if (s != self.me and s.address not in taken and s.name not in named
                    and len(others) < self.expect - 1):
                others.append(s)
                taken.add(s.address)
                named.add(s.name)
        if len(others) < self.expect - 1:
            return out
        proposal = Proposal(secrets.token_hex(16), self.me.name,
                            tuple(sorted([self.me, *others])))
        self._own = _Own(proposal, {self.me.name})
        self.vote = proposal
        out.append(Save(proposal))
        if len(proposal.members) == 1:
            return out + self._decide(proposal)
        out.extend(Ask(s, proposal) for s in proposal.members if s != self.me)
        return out

    def on_ask(self, proposal: Proposal, now: float) -> tuple[bool, str, list[Effect]]:
        """A proposer asks for our vote: (granted, why not, effects). The effects (a Save
        among them) must be carried out before the answer leaves."""
        if self.decided is not None:
            ok = self.decided.nonce == proposal.nonce
            return ok, "" if ok else "this member has founded its cluster already", []
        if len(proposal.members) != self.expect:
            return False, (f"the proposal has {len(proposal.members)} members; this member "
                           f"expects {self.expect}"), []
        if proposal.seat(self.me.name) != self.me:
            return False, f"the proposal does not hold {self.me.name} at {self.me.address}", []
        vote = self.vote
        if vote is not None and vote.nonce == proposal.nonce:
            return True, "", []
        out: list[Effect] = []
        if vote is not None:
            own = self._own
            if own is None or own.proposal.nonce != vote.nonce or not proposal.proposer < \
                    self.me.name:
                return False, f"this member voted for a proposal of {vote.proposer}", []
            out.extend(self._abort(now, retry_soon=False))  # a lower name goes first
        self.vote = proposal
        out.append(Save(proposal))
        return True, "", out

    def on_answer(self, nonce: str, name: str, granted: bool | None,
                  now: float) -> list[Effect]:
        """`name` answered our `Ask` (None: it could not be reached)."""
        own = self._own
        if own is None or own.proposal.nonce != nonce:
            # A late grant of a proposal we aborted: give that vote back.
            aborted = self._aborted.get(nonce)
            seat = aborted.seat(name) if aborted is not None else None
            return [Release(seat, nonce)] if granted and seat is not None else []
        if granted:
            own.granted.add(name)
            if own.granted >= {s.name for s in own.proposal.members}:
                return self._decide(own.proposal)
            return []
        seat = own.proposal.seat(name)
        if granted is None and seat is not None:
            self._suspects[seat] = now + self.timing.suspect
        return self._abort(now, retry_soon=True)

    def on_release(self, nonce: str) -> list[Effect]:
        """The proposer of our vote aborted it."""
        vote = self.vote
        if self.decided is None and vote is not None and vote.nonce == nonce and \
                vote.proposer != self.me.name:
            self.vote = None
            return [Save(None)]
        return []

    def on_commit(self, nonce: str) -> list[Effect]:
        """The proposer of our vote decided it (told once its own bootstrap was durable)."""
        vote = self.vote
        if self.decided is None and vote is not None and vote.nonce == nonce:
            return self._decide(vote)
        return []

    def status(self, nonce: str) -> Answer:
        """What we say about our proposal `nonce` to a member that voted for it."""
        if self.decided is not None and self.decided.nonce == nonce and \
                self.decided.proposer == self.me.name:
            return "decided"
        if self._own is not None and self._own.proposal.nonce == nonce:
            return "collecting"
        return "unknown"

    def on_status(self, nonce: str, answer: Answer) -> list[Effect]:
        """The proposer of our vote answered a `Poll`."""
        if answer == "decided":
            return self.on_commit(nonce)
        if answer == "unknown":
            return self.on_release(nonce)
        return []

    # --- internals --------------------------------------------------------------------

    def _decide(self, proposal: Proposal) -> list[Effect]:
        self.decided = proposal
        self._own = None
        return [Decide(proposal)]

    def _abort(self, now: float, *, retry_soon: bool) -> list[Effect]:
        own = self._own
        assert own is not None
        self._own = None
        self.vote = None
        self._aborted[own.proposal.nonce] = own.proposal
        while len(self._aborted) > 16:
            del self._aborted[next(iter(self._aborted))]
        wait = self._rng.uniform(0.0, self.timing.backoff) if retry_soon else 0.0
        self._not_before = now + wait
        return [Save(None), *(Release(s, own.proposal.nonce) for s in own.proposal.members
                              if s != self.me)]
