"""The Raft state machine: a node that takes ticks, messages and requests, and yields Readys.

Modelled on etcd raft's raft.go and rawnode.go (synchronous storage writes). Nothing here does
I/O: the runtime persists and sends what ``ready()`` returns and then calls ``advance()``; see
docs/internals/raft.md for that contract. Section references are to the Raft paper (§) and Ongaro's
thesis (thesis §).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .log import RaftLog
from .progress import Progress, ProgressState, ProgressTracker, VoteResult
from .read_only import ReadOnly, round_context, round_number
from .types import (
    NONE,
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    DropReason,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDropped,
    RaftError,
    ReadState,
    Ready,
    Rng,
    Role,
    SnapshotTemporarilyUnavailable,
    SoftState,
    Storage,
    UnavailableError,
    entries_size,
)

CAMPAIGN_TRANSFER = b"CampaignTransfer"
"""Context of VOTE messages sent because of TIMEOUT_NOW: voters grant it despite the lease."""

_MT = MessageType

_RESPONSE_TYPES = frozenset({_MT.APP_RESP, _MT.VOTE_RESP, _MT.PRE_VOTE_RESP, _MT.HEARTBEAT_RESP})
_LOCAL_TYPES = frozenset({_MT.HUP, _MT.BEAT, _MT.UNREACHABLE, _MT.SNAP_STATUS, _MT.CHECK_QUORUM})
# Sent with term 0 and handled like local requests by their receiver (etcd does the same).
_TERMLESS_TYPES = frozenset({_MT.PROP, _MT.READ_INDEX})


class _Campaign(enum.Enum):
    PRE_ELECTION = "pre-election"
    ELECTION = "election"
    TRANSFER = "transfer"


@dataclass
class Config:
    """Parameters of one RaftNode; defaults map to etcd's (see docs/internals/raft.md)."""

    id: int
    rng: Rng  # randomized election timeout in [election_tick, 2*election_tick)
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0  # the application's applied index at restart
    max_size_per_msg: int = 1 << 20
    max_committed_size_per_ready: int = 16 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0  # 0 = unlimited
    max_uncommitted_entries_size: int = 0  # 0 = unlimited
    check_quorum: bool = True
    pre_vote: bool = True

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be a positive integer")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be greater than 0")
        if self.max_size_per_msg <= 0 or self.max_committed_size_per_ready <= 0:
            raise ValueError("size limits must be greater than 0")
        if self.max_inflight_bytes < 0 or self.max_uncommitted_entries_size < 0:
            raise ValueError("byte limits must not be negative (0 means unlimited)")
        if self.applied < 0:
            raise ValueError("applied must not be negative")


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    """A snapshot of the leader's Progress for one member."""

    match: int
    next: int
    state: ProgressState
    is_learner: bool
    recent_active: bool
    paused: bool
    inflight: int
    pending_snapshot: int


@dataclass(frozen=True, slots=True)
class Status:
    """What the node knows right now; `progress` is filled on the leader only."""

    id: int
    role: Role
    leader: int
    term: int
    vote: int
    commit: int
    applied: int
    conf_state: ConfState
    progress: Mapping[int, ProgressStatus] = field(default_factory=dict)
    lead_transferee: int = NONE


class RaftNode:
    """One member's Raft state machine (etcd's raft + RawNode), driven by the runtime."""

    __slots__ = (
        "_check_quorum",
        "_election_elapsed",
        "_election_timeout",
        "_heartbeat_elapsed",
        "_heartbeat_timeout",
        "_id",
        "_lead",
        "_lead_transferee",
        "_log",
        "_max_committed_size_per_ready",
        "_max_msg_size",
        "_max_uncommitted_size",
        "_msgs",
        "_pending_conf_index",
        "_pending_read_index",
        "_pre_vote",
        "_prev_hard_state",
        "_prev_soft_state",
        "_randomized_election_timeout",
        "_read_only",
        "_read_round_pending",
        "_read_states",
        "_rng",
        "_role",
        "_term",
        "_trk",
        "_uncommitted_size",
        "_vote",
    )

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self._id = config.id
        self._rng = config.rng
        self._election_timeout = config.election_tick
        self._heartbeat_timeout = config.heartbeat_tick
        self._check_quorum = config.check_quorum
        self._pre_vote = config.pre_vote
        self._max_msg_size = config.max_size_per_msg
        self._max_committed_size_per_ready = config.max_committed_size_per_ready
        self._max_uncommitted_size = config.max_uncommitted_entries_size

        self._log = RaftLog(storage)
        hard_state, conf_state = storage.initial_state()
        self._trk = ProgressTracker(config.max_inflight_msgs, config.max_inflight_bytes)
        self._trk.restore(conf_state, self._log.last_index())

        self._term = 0
        self._vote = NONE
        self._lead = NONE
        self._role = Role.FOLLOWER
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._read_only = ReadOnly()
        self._read_round_pending = False
        self._pending_read_index: list[tuple[int, bytes]] = []
        self._lead_transferee = NONE
        self._pending_conf_index = 0
        self._uncommitted_size = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self._election_timeout

        if hard_state != HardState():
            self._load_state(hard_state)
        self._restore_applied(config.applied)
        self._become_follower(self._term, NONE)
        self._prev_soft_state = self._soft_state()
        self._prev_hard_state = self._hard_state()

    def _load_state(self, hs: HardState) -> None:
        log = self._log
        if hs.commit < log.committed or hs.commit > log.last_index():
            raise RaftError(
                f"hard state commit {hs.commit} is out of range "
                f"[{log.committed}, {log.last_index()}]: storage is corrupt"
            )
        log.committed = hs.commit
        self._term = hs.term
        self._vote = hs.vote

    def _restore_applied(self, applied: int) -> None:
        log = self._log
        if applied <= log.applied:
            # At or below the snapshot: the app restored the snapshot's state.
            return
        if applied > log.last_index():
            raise RaftError(
                f"applied index {applied} is past the last log index {log.last_index()}"
            )
        # Only committed entries are ever applied, so a commit index that was persisted
        # lazily (without sync) may safely catch up with what the app applied.
        log.commit_to(max(log.committed, applied))
        log.applied_to(applied)

    # -- observation ---------------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader(self) -> int:
        return self._lead

    @property
    def conf_state(self) -> ConfState:
        """The configuration in force (as applied), without the cost of `status()`."""
        return self._trk.conf_state()

    def status(self) -> Status:
        progress: dict[int, ProgressStatus] = {}
        if self._role is Role.LEADER:
            for node_id, pr in self._trk.progress.items():
                progress[node_id] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    is_learner=pr.is_learner,
                    recent_active=pr.recent_active,
                    paused=pr.is_paused(),
                    inflight=pr.inflights.count(),
                    pending_snapshot=pr.pending_snapshot,
                )
        return Status(
            id=self._id,
            role=self._role,
            leader=self._lead,
            term=self._term,
            vote=self._vote,
            commit=self._log.committed,
            applied=self._log.applied,
            conf_state=self._trk.conf_state(),
            progress=progress,
            lead_transferee=self._lead_transferee,
        )

    def _soft_state(self) -> SoftState:
        return SoftState(leader=self._lead, role=self._role)

    def _hard_state(self) -> HardState:
        return HardState(term=self._term, vote=self._vote, commit=self._log.committed)

    # -- inputs from the runtime ---------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (heartbeats, elections, CheckQuorum)."""
        if self._role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def step(self, msg: Message) -> None:
        """Handle a message from the network; stale or unknown senders are ignored."""
        if msg.type in _LOCAL_TYPES or msg.to != self._id:
            return
        if msg.type in _RESPONSE_TYPES and msg.from_ not in self._trk.progress:
            return
        if msg.term == 0 and msg.type not in _TERMLESS_TYPES:
            return
        self._step(msg)

    def campaign(self) -> None:
        """Start an election now (a pre-election first when PreVote is on)."""
        self._hup(_Campaign.PRE_ELECTION if self._pre_vote else _Campaign.ELECTION)

    def propose(self, data: bytes) -> None:
        """Propose one normal entry; raises ProposalDropped when it cannot be accepted."""
        self._propose_local(EntryType.NORMAL, (data,))

    def propose_batch(self, data: Sequence[bytes]) -> None:
        """Propose many normal entries as one append (all or nothing)."""
        if data:
            self._propose_local(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a single-server membership change (thesis §4.1)."""
        if cc.type is ConfChangeType.BOOTSTRAP:
            raise ProposalDropped(DropReason.INVALID_CONF_CHANGE, "only the core bootstraps")
        reason = self._trk.check_change(cc)
        if reason is not None:
            raise ProposalDropped(DropReason.INVALID_CONF_CHANGE, reason)
        self._propose_local(EntryType.CONF_CHANGE, (cc.encode(),))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed CONF_CHANGE entry (the app calls this when it applies it)."""
        if self._trk.check_change(cc) is not None:
            # Never proposed by a correct leader; every member ignores it alike.
            return self._trk.conf_state()
        self._trk.apply_change(cc, self._log.last_index())
        return self._switch_to_config()

    def conf_change_refusal(self, cc: ConfChange) -> str | None:
        """Why `cc` would be ignored if applied now (None: it takes effect). The runtime asks
        before `apply_conf_change` so that a refused change leaves its side tables alone too
        and its proposer learns why."""
        return self._trk.check_change(cc)

    def forget_leader(self) -> None:
        """A follower learned out of band that its leader is gone (its process died and the
        kernel closed the connection): forget it, so that this node grants votes at once
        instead of protecting the dead leader's lease (etcd's ForgetLeader). Safe: only the
        lease check changes, elections still need a majority, and a live leader's next
        heartbeat restores it."""
        if self._role is Role.FOLLOWER and self._lead != NONE:
            self._lead = NONE

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read index; answered later as ReadState(index, context)."""
        if not context:
            raise ValueError("read_index needs a non-empty, unique context")
        if self._role is Role.LEADER:
            self._leader_read_index(self._id, context)
        elif self._role is Role.FOLLOWER and self._lead != NONE:
            self._send(Message(_MT.READ_INDEX, to=self._lead, from_=self._id, context=context))
        else:
            raise ProposalDropped(DropReason.NO_LEADER)

    def transfer_leader(self, target: int) -> None:
        """Ask the leader to hand leadership to `target` (thesis §3.10)."""
        if self._role is Role.LEADER:
            self._leader_transfer(target)
        elif self._lead != NONE:
            # The transferee travels in `index`: `from_` is the (authenticated) sender.
            self._send(Message(_MT.TRANSFER_LEADER, to=self._lead, from_=self._id, index=target))

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver to `node_id`: stop pipelining to it."""
        if self._role is not Role.LEADER:
            return
        pr = self._trk.progress.get(node_id)
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node_id: int, success: bool) -> None:
        """The transport finished (or failed) sending a snapshot to `node_id`."""
        if self._role is not Role.LEADER:
            return
        pr = self._trk.progress.get(node_id)
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not success:
            # Forget the snapshot first, or probing would resume after it.
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the member's APP_RESP (or, after a failure, a heartbeat) before probing.
        pr.msg_app_flow_paused = True

    # -- Ready / advance --------------------------------------------------------------------------

    def has_ready(self) -> bool:
        # Called several times per write batch: compare fields in place rather than build a
        # SoftState and a HardState to compare with the previous ones.
        if self._read_round_pending or self._msgs or self._read_states:
            return True
        soft = self._prev_soft_state
        if self._lead != soft.leader or self._role is not soft.role:
            return True
        log = self._log
        hard = self._prev_hard_state
        if self._term != hard.term or self._vote != hard.vote or log.committed != hard.commit:
            return True
        unstable = log.unstable
        if unstable.snapshot is not None and not unstable.snapshot_in_progress:
            return True
        if unstable.offset_in_progress < unstable.offset + len(unstable.entries):
            return True
        return log.has_next_committed_entries()

    def ready(self) -> Ready:
        """The work the runtime must do next (docs/internals/raft.md); hand it back to advance()."""
        self._flush_read_round()
        log = self._log
        unstable = log.unstable
        soft_state: SoftState | None = None
        prev_soft = self._prev_soft_state
        if self._lead != prev_soft.leader or self._role is not prev_soft.role:
            soft_state = self._prev_soft_state = SoftState(leader=self._lead, role=self._role)
        hard_state: HardState | None = None
        must_sync = False
        prev_hard = self._prev_hard_state
        term, vote, commit = self._term, self._vote, log.committed
        if term != prev_hard.term or vote != prev_hard.vote or commit != prev_hard.commit:
            hard_state = self._prev_hard_state = HardState(term=term, vote=vote, commit=commit)
            must_sync = term != prev_hard.term or vote != prev_hard.vote
        snapshot = unstable.next_snapshot()
        entries = unstable.next_entries()
        unstable.accept_in_progress()
        if entries or snapshot is not None:
            must_sync = True
        committed = log.next_committed_entries(self._max_committed_size_per_ready)
        if committed:
            log.accept_applying(committed[-1].index)
        messages, self._msgs = self._msgs, []
        read_states, self._read_states = self._read_states, []
        return Ready(soft_state, hard_state, entries, snapshot, committed, messages, read_states,
                     must_sync)

    def advance(self, ready: Ready) -> None:
        """The runtime persisted, sent and applied everything in `ready`."""
        log = self._log
        if ready.snapshot is not None and not ready.snapshot.is_empty():
            index = ready.snapshot.meta.index
            log.stable_snap_to(index)
            if index > log.applied:
                log.applied_to(index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
            if self._role is Role.LEADER:
                self._self_ack()
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)
            if self._role is Role.LEADER:
                self._reduce_uncommitted_size(ready.committed_entries)

    def _self_ack(self) -> None:
        """Count the leader's own replica of what the app just persisted (never earlier)."""
        pr = self._trk.progress.get(self._id)
        if pr is None:
            return
        if pr.maybe_update(self._log.persisted_index()) and self._maybe_commit():
            self._release_pending_read_index()
            self._bcast_append()

    # -- ticks -------------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self.campaign()

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_timeout:
            self._election_elapsed = 0
            if self._check_quorum:
                self._leader_check_quorum()
            if self._role is Role.LEADER:
                # A transfer that did not finish within an election timeout is abandoned...
                self._lead_transferee = NONE
                if not self._trk.is_voter(self._id):
                    # ...but a leader that is no longer a voter tries again to hand over.
                    self._hand_off_leadership()
        if self._role is not Role.LEADER:
            return
        if self._heartbeat_elapsed >= self._heartbeat_timeout:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _leader_check_quorum(self) -> None:
        """Step down unless a majority was heard from in the last election timeout (§6.2)."""
        if not self._trk.quorum_active():
            self._become_follower(self._term, NONE)
            return
        for node_id, pr in self._trk.progress.items():
            if node_id != self._id:
                pr.recent_active = False

    # -- role changes ------------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self._term != term:
            self._term = term
            self._vote = NONE
        self._lead = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self._election_timeout + self._rng.randint(
            0, self._election_timeout - 1
        )
        self._lead_transferee = NONE
        self._trk.reset_votes()
        self._trk.reset_progress(self._log.last_index(), self._id, self._log.persisted_index())
        self._pending_conf_index = 0
        self._uncommitted_size = 0
        # Round numbers go on across terms: an acknowledgement names only its own round.
        self._read_only = ReadOnly(self._read_only.next_round)
        self._read_round_pending = False
        self._pending_read_index = []

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Neither the term nor the vote changes: a pre-election is only a poll (thesis §9.6).
        self._trk.reset_votes()
        self._lead = NONE
        self._role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        pr = self._trk.progress[self._id]
        pr.become_replicate()
        pr.recent_active = True
        index = self._log.last_index() + 1
        if index == 1:
            # The first leader of a new cluster writes the initial configuration into the log.
            cs = self._trk.conf_state()
            bootstrap = ConfChange(
                ConfChangeType.BOOTSTRAP, NONE, voters=cs.voters, learners=cs.learners
            )
            first = Entry(self._term, index, EntryType.CONF_CHANGE, bootstrap.encode())
        else:
            first = Entry(self._term, index)
        # This entry lets the leader commit (and learn) everything before its term (§5.4.2,
        # thesis §6.4). It does not count toward the uncommitted-size limit. No membership
        # change is accepted until it is applied: the whole earlier log is applied by then
        # (etcd's pendingConfIndex) and an entry of this term is committed (the thesis §4.1
        # fix for single-server changes).
        self._log.append([first])
        self._pending_conf_index = index

    def _promotable(self) -> bool:
        """Whether this node may campaign: a voter, not waiting to install a snapshot."""
        pr = self._trk.progress.get(self._id)
        return (
            pr is not None
            and not pr.is_learner
            and not self._log.has_next_or_in_progress_snapshot()
        )

    # -- elections -----------------------------------------------------------------------------

    def _hup(self, kind: _Campaign) -> None:
        if self._role is Role.LEADER or not self._promotable():
            return
        if self._has_unapplied_conf_changes():
            # The configuration we would campaign in is about to change.
            return
        self._campaign(kind)

    def _has_unapplied_conf_changes(self) -> bool:
        log = self._log
        lo = max(log.applied + 1, log.first_index())
        hi = log.committed + 1
        page = self._max_committed_size_per_ready
        while lo < hi:
            entries = log.slice(lo, hi, page)
            for entry in entries:
                if entry.type is EntryType.CONF_CHANGE:
                    return True
            lo = entries[-1].index + 1
        return False

    def _campaign(self, kind: _Campaign) -> None:
        if kind is _Campaign.PRE_ELECTION:
            self._become_pre_candidate()
            vote_type = _MT.PRE_VOTE
            # Pre-votes ask for the next term without moving to it.
            term = self._term + 1
        else:
            self._become_candidate()
            vote_type = _MT.VOTE
            term = self._term
        # Our own vote: it reaches nobody before the Ready persisting it has been processed.
        if self._poll(self._id, True) is VoteResult.WON:
            self._on_vote_won()
            return
        last_index = self._log.last_index()
        last_term = self._log.last_term()
        context = CAMPAIGN_TRANSFER if kind is _Campaign.TRANSFER else b""
        # Learners are asked too, though only voters count: their answers carry commit hints.
        for member in sorted(self._trk.progress):
            if member == self._id:
                continue
            self._msgs.append(
                Message(
                    vote_type,
                    to=member,
                    from_=self._id,
                    term=term,
                    index=last_index,
                    log_term=last_term,
                    context=context,
                )
            )

    def _poll(self, node_id: int, granted: bool) -> VoteResult:
        self._trk.record_vote(node_id, granted)
        return self._trk.tally_votes()

    def _on_vote_won(self) -> None:
        if not self._promotable() or self._has_unapplied_conf_changes():
            # Our campaign outlived our configuration: a change applied meanwhile, or one we
            # learned is committed (from a vote's commit hint) and have not applied, which
            # may remove us. Abandon it, as _hup would not have started it; once the change
            # is applied we campaign (or not) in the new configuration.
            self._become_follower(self._term, NONE)
        elif self._role is Role.PRE_CANDIDATE:
            self._campaign(_Campaign.ELECTION)
        else:
            self._become_leader()
            self._bcast_append()

    def _handle_vote_request(self, m: Message) -> None:
        """Grant or refuse a (pre-)vote: §5.2 one vote per term, §5.4.1 election restriction."""
        resp_type = _MT.VOTE_RESP if m.type is _MT.VOTE else _MT.PRE_VOTE_RESP
        can_vote = (
            self._vote == m.from_
            or (self._vote == NONE and self._lead == NONE)
            or (m.type is _MT.PRE_VOTE and m.term > self._term)
        )
        # Learners answer too: one may have been promoted without having applied it yet. A
        # candidate only counts the votes of the voters in its own configuration.
        if can_vote and self._log.is_up_to_date(m.index, m.log_term):
            resp = Message(resp_type, to=m.from_, from_=self._id, term=m.term)
            if m.type is _MT.VOTE:
                self._election_elapsed = 0
                self._vote = m.from_
        else:
            resp = Message(resp_type, to=m.from_, from_=self._id, term=self._term, reject=True)
        self._msgs.append(self._with_commit_hint(resp, m.index))

    def _with_commit_hint(self, resp: Message, candidate_last: int) -> Message:
        """Tell a candidate that (commit, log_term) is committed, where commit <= its last index.

        Committed entries never change, so a candidate holding that entry knows its log is
        committed up to there. This is how voters that have not yet learned that a
        membership change committed find out when its leader is gone: otherwise they could
        keep campaigning in the old configuration, needing the vote of a member the change
        removed (whose longer log refuses them), forever.
        """
        index = min(self._log.committed, candidate_last)
        term = self._log.term_or_zero(index)
        if term:
            resp.commit = index
            resp.log_term = term
        return resp

    def _learn_commit(self, m: Message) -> None:
        """Use a vote response's commit hint (see _with_commit_hint)."""
        log = self._log
        if m.commit > log.committed and log.match_term(m.commit, m.log_term):
            log.commit_to(m.commit)

    # -- message dispatch ----------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        """Queue a message for the next Ready, stamping the current term as etcd does."""
        if m.type not in _TERMLESS_TYPES:
            m.term = self._term
        self._msgs.append(m)

    def _step(self, m: Message) -> None:
        if m.term == 0:
            pass
        elif m.term > self._term:
            if m.type in (_MT.VOTE, _MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self._check_quorum
                    and self._lead != NONE
                    and self._election_elapsed < self._election_timeout
                )
                if not force and in_lease:
                    # Heard from a leader within the minimum election timeout: do not let
                    # this (possibly removed or partitioned) node disrupt it (thesis §4.2.3).
                    return
            if m.type is _MT.PRE_VOTE:
                pass  # never change term because of a pre-vote
            elif m.type is _MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term we asked for
            elif m.type in (_MT.APP, _MT.HEARTBEAT, _MT.SNAP):
                self._become_follower(m.term, m.from_)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self._term:
            if m.type in (_MT.HEARTBEAT, _MT.APP):
                # §5.1: reject a stale leader's request with our term so that it steps down.
                # etcd answers only with CheckQuorum or PreVote, counting on our campaigns to
                # spread the term otherwise; but a learner never campaigns, and one that a
                # removed member's vote request moved to a higher term would be stuck.
                self._send(Message(_MT.APP_RESP, to=m.from_, from_=self._id))
            elif m.type is _MT.PRE_VOTE:
                resp = Message(
                    _MT.PRE_VOTE_RESP, to=m.from_, from_=self._id, term=self._term, reject=True
                )
                self._msgs.append(self._with_commit_hint(resp, m.index))
            return

        if m.type in (_MT.VOTE_RESP, _MT.PRE_VOTE_RESP) and self._role is not Role.LEADER:
            self._learn_commit(m)

        if m.type in (_MT.VOTE, _MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self._role is Role.LEADER:
            self._step_leader(m)
        elif self._role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is _MT.APP:
            self._election_elapsed = 0
            self._lead = m.from_
            self._handle_append_entries(m)
        elif t is _MT.HEARTBEAT:
            self._election_elapsed = 0
            self._lead = m.from_
            self._handle_heartbeat(m)
        elif t is _MT.SNAP:
            self._election_elapsed = 0
            self._lead = m.from_
            self._handle_snapshot(m)
        elif t is _MT.PROP:
            if self._lead != NONE:
                self._send(Message(_MT.PROP, to=self._lead, from_=self._id, entries=m.entries))
        elif t is _MT.TRANSFER_LEADER:
            if self._lead != NONE:
                self._send(
                    Message(_MT.TRANSFER_LEADER, to=self._lead, from_=self._id, index=m.index)
                )
        elif t is _MT.TIMEOUT_NOW:
            # A transfer: skip the pre-vote, the leader itself asked us to campaign.
            self._hup(_Campaign.TRANSFER)
        elif t is _MT.READ_INDEX:
            if self._lead != NONE:
                self._send(Message(_MT.READ_INDEX, to=self._lead, from_=m.from_, context=m.context))
        elif t is _MT.READ_INDEX_RESP:
            self._read_states.append(ReadState(index=m.index, context=m.context))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = _MT.PRE_VOTE_RESP if self._role is Role.PRE_CANDIDATE else _MT.VOTE_RESP
        if t is _MT.APP:
            self._become_follower(m.term, m.from_)
            self._handle_append_entries(m)
        elif t is _MT.HEARTBEAT:
            self._become_follower(m.term, m.from_)
            self._handle_heartbeat(m)
        elif t is _MT.SNAP:
            self._become_follower(m.term, m.from_)
            self._handle_snapshot(m)
        elif t is my_resp:
            result = self._poll(m.from_, not m.reject)
            if result is VoteResult.WON:
                self._on_vote_won()
            elif result is VoteResult.LOST:
                # A rejected pre-vote may carry a future term; keep ours.
                self._become_follower(self._term, NONE)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is _MT.PROP:
            # A forwarded proposal is dropped silently when refused; its proposer retries.
            for kind, run in itertools.groupby(m.entries, key=_entry_type):
                with contextlib.suppress(ProposalDropped):
                    self._leader_propose(kind, [e.data for e in run], local=False)
            return
        if t is _MT.READ_INDEX:
            self._leader_read_index(m.from_, m.context)
            return
        if t is _MT.TRANSFER_LEADER:
            self._leader_transfer(m.index if m.index != NONE else m.from_)
            return
        pr = self._trk.progress.get(m.from_)
        if pr is None:
            return
        if t is _MT.APP_RESP:
            self._handle_append_response(m, pr)
        elif t is _MT.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m, pr)

    # -- follower side of replication -----------------------------------------------------

    def _handle_append_entries(self, m: Message) -> None:
        """The consistency check and conflict resolution of AppendEntries (§5.3)."""
        log = self._log
        if m.index < log.committed:
            self._send(Message(_MT.APP_RESP, to=m.from_, from_=self._id, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(_MT.APP_RESP, to=m.from_, from_=self._id, index=last_new))
            return
        # Tell the leader the largest (index, term) that might match: it skips whole terms of
        # our divergent tail at once (etcd findConflictByTerm; end of §5.3).
        hint_index, hint_term = log.find_conflict_by_term(
            min(m.index, log.last_index()), m.log_term
        )
        self._send(
            Message(
                _MT.APP_RESP,
                to=m.from_,
                from_=self._id,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self._log.commit_to(m.commit)
        self._send(Message(_MT.HEARTBEAT_RESP, to=m.from_, from_=self._id, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        """InstallSnapshot (§7): the answer is an APP_RESP with our new last index."""
        snap = m.snapshot
        if snap is None or snap.is_empty():
            return
        log = self._log
        restored = self._restore(m)
        if restored is None:
            # Refused for now: the leader sends it again later (see _handle_append_response).
            self._send(
                Message(
                    _MT.APP_RESP,
                    to=m.from_,
                    from_=self._id,
                    index=snap.meta.index,
                    reject=True,
                    reject_hint=log.committed,
                )
            )
            return
        index = log.last_index() if restored else log.committed
        self._send(Message(_MT.APP_RESP, to=m.from_, from_=self._id, index=index))

    def _restore(self, m: Message) -> bool | None:
        """Install the snapshot (True), ignore it (False) or refuse it for now (None)."""
        snap = m.snapshot
        assert snap is not None
        log = self._log
        meta = snap.meta
        if meta.index <= log.committed:
            return False
        if self._role is not Role.FOLLOWER:
            # Defense in depth (as etcd): never install a snapshot while not a follower.
            self._become_follower(self._term + 1, NONE)
            return False
        if log.match_term(meta.index, meta.term):
            # We already have the snapshot's last entry: just learn the commit index.
            log.commit_to(meta.index)
            return False
        if log.applying > log.applied:
            # Committed entries handed out in a Ready are not applied yet: their membership
            # changes would then be applied (apply_conf_change) over the snapshot's newer
            # configuration. The configuration changes only in log order, so refuse; the
            # leader sends the snapshot again once we have caught up with our applies.
            return None
        # The snapshot's configuration need not include us (it may predate our addition);
        # the entries that follow it will, and until then we simply cannot campaign.
        log.restore(snap)
        self._trk.restore(meta.conf_state, log.last_index())
        return True

    # -- leader side -------------------------------------------------------------------------------

    def _propose_local(self, kind: EntryType, payloads: Sequence[bytes]) -> None:
        if self._role is Role.LEADER:
            self._leader_propose(kind, payloads, local=True)
            return
        if not self._trk.is_member(self._id) and self._trk.progress:
            raise ProposalDropped(DropReason.NOT_MEMBER)
        if self._role is not Role.FOLLOWER or self._lead == NONE:
            raise ProposalDropped(DropReason.NO_LEADER)
        entries = tuple(Entry(0, 0, kind, data) for data in payloads)
        self._send(Message(_MT.PROP, to=self._lead, from_=self._id, entries=entries))

    def _leader_propose(self, kind: EntryType, payloads: Sequence[bytes], local: bool) -> None:
        """Append a proposal; a refusal raises (the caller drops it silently unless `local`)."""
        if not payloads:
            return
        if not self._trk.is_voter(self._id):
            # Removed or demoted while leading: we are handing leadership over.
            raise ProposalDropped(DropReason.NOT_MEMBER)
        if self._lead_transferee != NONE:
            raise ProposalDropped(DropReason.TRANSFERRING)
        first = self._log.last_index() + 1
        term = self._term
        pending_conf_index = self._pending_conf_index
        if kind is EntryType.CONF_CHANGE:
            entries: list[Entry] = []
            for data in payloads:
                refusal = self._conf_change_refusal(data, pending_conf_index)
                if refusal is None:
                    pending_conf_index = first + len(entries)
                    entries.append(Entry(term, pending_conf_index, kind, data))
                elif local:
                    raise ProposalDropped(*refusal)
            if not entries:
                return
        else:
            entries = [Entry(term, first + i, kind, data) for i, data in enumerate(payloads)]
        if not self._increase_uncommitted_size(entries):
            raise ProposalDropped(DropReason.UNCOMMITTED_SIZE)
        self._log.append(entries)
        # Our own replica counts only once the app persisted it (see advance / _self_ack).
        self._pending_conf_index = pending_conf_index
        self._bcast_append()

    def _conf_change_refusal(
        self, data: bytes, pending_conf_index: int
    ) -> tuple[DropReason, str] | None:
        if pending_conf_index > self._log.applied:
            return (
                DropReason.PENDING_CONF_CHANGE,
                f"a change at index {pending_conf_index} is not applied yet "
                f"(applied {self._log.applied})",
            )
        try:
            cc = ConfChange.decode(data)
        except ValueError as e:
            return DropReason.INVALID_CONF_CHANGE, str(e)
        if cc.type is ConfChangeType.BOOTSTRAP:
            return DropReason.INVALID_CONF_CHANGE, "only the core bootstraps a cluster"
        reason = self._trk.check_change(cc)
        if reason is not None:
            return DropReason.INVALID_CONF_CHANGE, reason
        return None

    def _increase_uncommitted_size(self, entries: Sequence[Entry]) -> bool:
        limit = self._max_uncommitted_size
        if limit == 0:
            return True  # unlimited: not tracked
        size = entries_size(entries)
        if self._uncommitted_size > 0 and self._uncommitted_size + size > limit:
            # An empty uncommitted tail accepts a proposal of any size, so progress is possible.
            return False
        self._uncommitted_size += size
        return True

    def _reduce_uncommitted_size(self, entries: Sequence[Entry]) -> None:
        if self._max_uncommitted_size == 0:
            return
        # Entries of earlier terms were never counted: saturate instead of going negative.
        self._uncommitted_size = max(0, self._uncommitted_size - entries_size(entries))

    def _maybe_commit(self) -> bool:
        """Advance commit to what a majority has, if that entry is of our term (§5.4.2)."""
        return self._log.maybe_commit(self._trk.committed(), self._term)

    def _bcast_append(self) -> None:
        for node_id in self._trk.progress:
            if node_id != self._id:
                self._send_append(node_id)

    def _send_append(self, to: int) -> None:
        """Send an append (possibly empty, to carry the commit index), then fill the window."""
        if self._maybe_send_append(to, send_if_empty=True):
            while self._maybe_send_append(to, send_if_empty=False):
                pass

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self._trk.progress[to]
        if pr.is_paused():
            return False
        log = self._log
        prev_index = pr.next - 1
        try:
            prev_term = log.term(prev_index)
        except (CompactedError, UnavailableError):
            return self._maybe_send_snapshot(to, pr)
        entries: list[Entry] = []
        # With a full window only empty appends go out: they get acknowledged or rejected,
        # which clears the window even if every message that filled it was lost.
        if pr.state is not ProgressState.REPLICATE or not pr.inflights.full():
            try:
                entries = log.entries(pr.next, self._max_msg_size)
            except CompactedError:
                return self._maybe_send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        commit = log.committed
        self._send(
            Message(
                _MT.APP,
                to=to,
                from_=self._id,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(entries),
                commit=commit,
            )
        )
        nbytes = entries_size(entries) if self._trk.max_inflight_bytes else 0
        pr.sent_entries(len(entries), nbytes)
        pr.sent_commit = max(pr.sent_commit, commit)
        return True

    def _maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        """The entries `to` needs are compacted: send Storage's snapshot instead (§7)."""
        if not pr.recent_active:
            return False
        try:
            snapshot = self._log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snapshot.is_empty():
            raise RaftError("entries are compacted but storage has no snapshot")
        pr.become_snapshot(snapshot.meta.index)
        self._send(Message(_MT.SNAP, to=to, from_=self._id, snapshot=snapshot))
        return True

    def _bcast_heartbeat(self) -> None:
        """The periodic heartbeat; it starts a read round if reads wait for one, else it
        repeats the latest unconfirmed round (any later acknowledgement confirms it too)."""
        read_only = self._read_only
        if read_only.has_unsent():
            read_only.start_round(self._id)
        number = read_only.last_round()
        self._bcast_heartbeat_with_context(round_context(number) if number else b"")

    def _bcast_heartbeat_with_context(self, context: bytes) -> None:
        self._read_round_pending = False
        committed = self._log.committed
        for node_id, pr in self._trk.progress.items():
            if node_id == self._id:
                continue
            # Never claim a commit index beyond what the member is known to hold.
            self._send(
                Message(
                    _MT.HEARTBEAT,
                    to=node_id,
                    from_=self._id,
                    commit=min(pr.match, committed),
                    context=context,
                )
            )

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        log = self._log
        if m.reject:
            if pr.state is ProgressState.SNAPSHOT:
                if m.index == pr.pending_snapshot:
                    # The member refused the snapshot for now (it was still applying):
                    # forget it and send it again after the next heartbeat answer.
                    pr.pending_snapshot = 0
                    pr.become_probe()
                    pr.msg_app_flow_paused = True
                return
            next_probe = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of ours whose term the follower cannot have.
                next_probe, _ = log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.from_)
            return
        if not (pr.maybe_update(m.index) or (pr.match == m.index and pr.state is _PROBE)):
            return
        if pr.state is _PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= log.first_index():
            # Caught up through the snapshot (whichever one it installed): resume the log.
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._release_pending_read_index()
            self._bcast_append()
        elif pr.can_bump_commit(log.committed):
            self._maybe_send_append(m.from_, send_if_empty=True)
        # The window may have opened up: send as much as it allows.
        while self._maybe_send_append(m.from_, send_if_empty=False):
            pass
        if m.from_ == self._lead_transferee and pr.match == log.last_index():
            self._send(Message(_MT.TIMEOUT_NOW, to=m.from_, from_=self._id))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.msg_app_flow_paused = False
        # Resume a stalled or probing follower (the heartbeat itself carried the commit).
        if pr.match < self._log.last_index() or pr.state is _PROBE:
            self._maybe_send_append(m.from_, send_if_empty=True)
        number = round_number(m.context)
        if not number:
            return
        acks = self._read_only.recv_ack(m.from_, number)
        if acks is None or not self._trk.has_quorum(acks):
            return
        for request in self._read_only.advance(number):
            self._answer_read(request.requester, request.context, request.index)

    # -- reads -------------------------------------------------------------------------------------

    def _leader_read_index(self, requester: int, context: bytes) -> None:
        """ReadIndex (thesis §6.4): record commit now, confirm leadership with a heartbeat round."""
        if not self._committed_entry_in_current_term():
            # Our commit index may lag the true one until an entry of our term commits. This
            # holds for a single voter too: an earlier leader (of a larger configuration, or
            # one that removed itself) may have committed entries we do not know are.
            self._pending_read_index.append((requester, context))
            return
        self._queue_read(requester, context)

    def _queue_read(self, requester: int, context: bytes) -> None:
        if self._trk.voters == {self._id}:
            # A single voter is the majority: no round is needed to confirm leadership.
            self._answer_read(requester, context, self._log.committed)
            return
        if self._read_only.add_request(self._log.committed, requester, context):
            # One heartbeat round, sent at the next ready(), confirms every read queued by then.
            self._read_round_pending = True

    def _flush_read_round(self) -> None:
        if self._read_round_pending and self._role is Role.LEADER:
            read_only = self._read_only
            if read_only.has_unsent():
                number = read_only.start_round(self._id)
                self._bcast_heartbeat_with_context(round_context(number))
        self._read_round_pending = False

    def _committed_entry_in_current_term(self) -> bool:
        return self._log.term_or_zero(self._log.committed) == self._term

    def _release_pending_read_index(self) -> None:
        if not self._pending_read_index or not self._committed_entry_in_current_term():
            return
        pending, self._pending_read_index = self._pending_read_index, []
        for requester, context in pending:
            self._queue_read(requester, context)

    def _answer_read(self, requester: int, context: bytes, index: int) -> None:
        if requester == self._id:
            self._read_states.append(ReadState(index=index, context=context))
        else:
            self._send(
                Message(
                    _MT.READ_INDEX_RESP, to=requester, from_=self._id, index=index, context=context
                )
            )

    # -- leadership transfer -----------------------------------------------------------------------

    def _leader_transfer(self, transferee: int) -> None:
        """Catch the transferee up, then tell it to campaign at once (thesis §3.10)."""
        pr = self._trk.progress.get(transferee)
        if pr is None or pr.is_learner:
            return
        if self._lead_transferee != NONE:
            if self._lead_transferee == transferee:
                return
            self._lead_transferee = NONE
        if transferee == self._id:
            return
        # The transfer must finish within an election timeout or it is abandoned.
        self._election_elapsed = 0
        self._lead_transferee = transferee
        if pr.match == self._log.last_index():
            self._send(Message(_MT.TIMEOUT_NOW, to=transferee, from_=self._id))
        else:
            self._send_append(transferee)

    # -- membership --------------------------------------------------------------------------

    def _switch_to_config(self) -> ConfState:
        cs = self._trk.conf_state()
        if self._role in (Role.CANDIDATE, Role.PRE_CANDIDATE) and not self._promotable():
            self._become_follower(self._term, NONE)  # no longer a voter: stop campaigning
        if self._role is not Role.LEADER or not cs.voters:
            return cs
        if self._maybe_commit():
            # Fewer voters may mean a smaller majority already holds newer entries.
            self._release_pending_read_index()
            self._bcast_append()
        else:
            for node_id in self._trk.progress:
                if node_id != self._id:
                    self._maybe_send_append(node_id, send_if_empty=False)
        if self._lead_transferee != NONE and self._lead_transferee not in self._trk.voters:
            self._lead_transferee = NONE
        if not self._trk.is_voter(self._id) and self._lead_transferee == NONE:
            self._hand_off_leadership()
        return cs

    def _hand_off_leadership(self) -> None:
        """A leader that was removed or demoted hands over to the most caught-up voter.

        It keeps leading meanwhile, without counting itself (thesis §4.2.2), and refuses new
        proposals. Stepping down at once could deadlock: the voters may not know yet that
        the change committed, so they still need our vote, which our longer log refuses.
        """
        best: tuple[int, int] | None = None
        for node_id in self._trk.voters:
            key = (self._trk.progress[node_id].match, -node_id)
            if best is None or key > best:
                best = key
        if best is not None:
            self._leader_transfer(-best[1])


_PROBE = ProgressState.PROBE


def _entry_type(entry: Entry) -> EntryType:
    return entry.type


__all__ = [
    "CAMPAIGN_TRANSFER",
    "Config",
    "ProgressState",
    "ProgressStatus",
    "RaftNode",
    "Status",
]
