"""What a leader knows about each member's log, the membership itself, and quorum arithmetic.

Modelled on etcd raft's tracker/ (progress.go, inflights.go, tracker.go), quorum/ (majority
commit index, vote tally) and confchange/ for single-server changes (one voter added or
removed at a time, so any majority of the old and of the new configuration overlap; thesis
§4.1).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .types import ConfChange, ConfChangeType, ConfState


class ProgressState(enum.Enum):
    """How the leader replicates to a follower (etcd tracker.StateType)."""

    PROBE = "probe"  # one append at a time until the match point is found
    REPLICATE = "replicate"  # optimistic pipelining, bounded by the inflight window
    SNAPSHOT = "snapshot"  # a snapshot is on its way; nothing else is sent


class VoteResult(enum.Enum):
    PENDING = "pending"
    LOST = "lost"
    WON = "won"


class Inflights:
    """The window of appends sent to one follower but not yet acknowledged.

    Bounded by a count and (optionally) by bytes; each element is the last index a message
    carried and that message's size. Acknowledging index i frees every message up to i.
    """

    __slots__ = ("_buf", "_bytes", "_max_bytes", "_size")

    def __init__(self, size: int, max_bytes: int = 0) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._buf: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def add(self, index: int, nbytes: int) -> None:
        if self.full():
            raise AssertionError("cannot add to a full inflights window")
        self._buf.append((index, nbytes))
        self._bytes += nbytes

    def free_le(self, index: int) -> None:
        buf = self._buf
        while buf and buf[0][0] <= index:
            self._bytes -= buf.popleft()[1]

    def full(self) -> bool:
        return len(self._buf) >= self._size or (
            self._max_bytes > 0 and self._bytes >= self._max_bytes
        )

    def count(self) -> int:
        return len(self._buf)

    def bytes(self) -> int:
        return self._bytes

    def reset(self) -> None:
        self._buf.clear()
        self._bytes = 0


@dataclass(slots=True)
class Progress:
    """The leader's view of one member: how far it matches and what to send it next.

    Invariant: match < next. Transitions follow etcd's tracker.Progress.
    """

    match: int
    next: int
    inflights: Inflights
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    # In SNAPSHOT state: the index of the snapshot sent; 0 if its delivery failed.
    pending_snapshot: int = 0
    # Heard from since the last CheckQuorum round (or added recently).
    recent_active: bool = False
    # PROBE: an append is outstanding. REPLICATE: the inflight window is full.
    msg_app_flow_paused: bool = False
    # The highest commit index sent to this member.
    sent_commit: int = 0

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # Resume after the snapshot if it was delivered; else from the match point.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1
        self.sent_commit = min(self.sent_commit, self.next - 1)

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1
        self.sent_commit = snapshot_index

    def sent_entries(self, count: int, nbytes: int) -> None:
        """Account for an append carrying `count` entries just sent."""
        if self.state is ProgressState.REPLICATE:
            if count > 0:
                self.next += count
                self.inflights.add(self.next - 1, nbytes)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state is ProgressState.PROBE:
            if count > 0:
                self.msg_app_flow_paused = True
        else:
            raise AssertionError(f"sending an append in state {self.state}")

    def can_bump_commit(self, commit: int) -> bool:
        """Whether an (empty) append would tell this member a newer commit index."""
        return commit > self.sent_commit and self.sent_commit < self.next - 1

    def maybe_update(self, index: int) -> bool:
        """The member acknowledged `index`; False if that was old news."""
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.msg_app_flow_paused = False
        return True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The member rejected an append at `rejected`; back off next. False if stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            # A rejection of an append we did not just send in this probe round.
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold appends to this member for now."""
        if self.state is ProgressState.SNAPSHOT:
            return True
        return self.msg_app_flow_paused


@dataclass(slots=True)
class ProgressTracker:
    """The current configuration (voters, learners), each member's Progress, and votes."""

    max_inflight: int
    max_inflight_bytes: int
    voters: set[int] = field(default_factory=set)
    learners: set[int] = field(default_factory=set)
    progress: dict[int, Progress] = field(default_factory=dict)
    votes: dict[int, bool] = field(default_factory=dict)

    def restore(self, conf_state: ConfState, last_index: int) -> None:
        """Adopt `conf_state` wholesale (at start or when installing a snapshot)."""
        self.voters = set(conf_state.voters)
        self.learners = set(conf_state.learners) - self.voters
        self.progress = {}
        for node_id in self.voters:
            self.progress[node_id] = self._new_progress(last_index, is_learner=False)
        for node_id in self.learners:
            self.progress[node_id] = self._new_progress(last_index, is_learner=True)
        self.votes = {}

    def _new_progress(self, last_index: int, is_learner: bool) -> Progress:
        # A new member is probed at the end of the log and counts as recently active, so a
        # CheckQuorum right after adding it does not make the leader step down.
        return Progress(
            match=0,
            next=last_index + 1,
            inflights=Inflights(self.max_inflight, self.max_inflight_bytes),
            is_learner=is_learner,
            recent_active=True,
        )

    def reset_progress(self, last_index: int, self_id: int, persisted_index: int) -> None:
        """Fresh Progress for everyone, as at the start of a term (etcd raft.reset)."""
        for node_id, old in self.progress.items():
            pr = Progress(
                match=0,
                next=last_index + 1,
                inflights=Inflights(self.max_inflight, self.max_inflight_bytes),
                is_learner=old.is_learner,
            )
            if node_id == self_id:
                # Only what the app has persisted counts as our own replica.
                pr.match = persisted_index
                pr.next = max(pr.next, persisted_index + 1)
            self.progress[node_id] = pr

    def conf_state(self) -> ConfState:
        return ConfState(voters=frozenset(self.voters), learners=frozenset(self.learners))

    def is_member(self, node_id: int) -> bool:
        return node_id in self.progress

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.voters

    # -- quorum arithmetic ------------------------------------------------------------------

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def committed(self) -> int:
        """The largest index acknowledged by a majority of voters (quorum/majority.go)."""
        if not self.voters:
            return 0
        matches = sorted((self.progress[v].match for v in self.voters), reverse=True)
        return matches[self.quorum() - 1]

    def has_quorum(self, ids: Iterable[int]) -> bool:
        """Whether `ids` include a majority of the voters."""
        voters = self.voters
        return sum(1 for i in set(ids) if i in voters) >= self.quorum()

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        granted = rejected = 0
        for voter in self.voters:
            vote = votes.get(voter)
            if vote is None:
                continue
            if vote:
                granted += 1
            else:
                rejected += 1
        quorum = self.quorum()
        if granted >= quorum:
            return VoteResult.WON
        if rejected > len(self.voters) - quorum:
            return VoteResult.LOST
        return VoteResult.PENDING

    def quorum_active(self) -> bool:
        """Whether a majority of voters was heard from recently (CheckQuorum, thesis §6.2)."""
        active = {v: self.progress[v].recent_active for v in self.voters}
        return self.vote_result(active) is VoteResult.WON

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> VoteResult:
        return self.vote_result(self.votes)

    # -- membership changes -------------------------------------------------------------------

    def check_change(self, cc: ConfChange) -> str | None:
        """Why `cc` may not be applied to this configuration, or None if it may."""
        if cc.type is ConfChangeType.BOOTSTRAP:
            if not cc.voters or cc.voters & cc.learners or min(cc.voters | cc.learners) <= 0:
                return "a bootstrap configuration needs voters, each id in one role"
            if (self.voters or self.learners) and (
                self.voters != cc.voters or self.learners != cc.learners
            ):
                return "a bootstrap configuration only applies to the initial one"
            return None
        if cc.node_id <= 0:
            return f"node id {cc.node_id} is not a valid member id"
        voters = self.voters
        if cc.type in (ConfChangeType.REMOVE, ConfChangeType.ADD_LEARNER) and voters == {
            cc.node_id
        }:
            return f"removing or demoting {cc.node_id} would leave no voters"
        return None

    def apply_change(self, cc: ConfChange, last_index: int) -> None:
        """Apply one single-server change (validated with check_change)."""
        if cc.type is ConfChangeType.BOOTSTRAP:
            # The founders already have this configuration; a joiner replaying the log from
            # index 1 starts from nothing and gets it here.
            for voter in cc.voters:
                self.apply_change(ConfChange(ConfChangeType.ADD_VOTER, voter), last_index)
            for learner in cc.learners:
                self.apply_change(ConfChange(ConfChangeType.ADD_LEARNER, learner), last_index)
            return
        node_id = cc.node_id
        if cc.type is ConfChangeType.ADD_VOTER:
            self.learners.discard(node_id)
            self.voters.add(node_id)
            pr = self.progress.get(node_id)
            if pr is None:
                self.progress[node_id] = self._new_progress(last_index, is_learner=False)
            else:
                pr.is_learner = False
        elif cc.type is ConfChangeType.ADD_LEARNER:
            self.voters.discard(node_id)
            self.learners.add(node_id)
            pr = self.progress.get(node_id)
            if pr is None:
                self.progress[node_id] = self._new_progress(last_index, is_learner=True)
            else:
                pr.is_learner = True
        else:
            self.voters.discard(node_id)
            self.learners.discard(node_id)
            self.progress.pop(node_id, None)
            self.votes.pop(node_id, None)
