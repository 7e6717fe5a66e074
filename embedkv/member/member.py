"""One Raft member running inside this process: the surface the public Store is built on.

`Member.open` wires the layers: the DataDir (storage), the RaftNode (core) restored from it, the
log writer thread (the Ready loop and every write transaction), the engine thread (an asyncio
loop: Raft time, lease timers, later the transport) and the watch dispatcher thread. A
one-member store is a Raft cluster of one: it campaigns at once, wins its own vote, and every
write goes through the same path as in a cluster. See docs/internals/runtime.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from os import PathLike
from typing import Any, TypeVar, cast

from embedkv.errors import Closed, LeaseNotFound, NoSpace, Removed, Unavailable
from embedkv.net import LinkState, RemoteError
from embedkv.net.transport import caller_identity, parse_address
from embedkv.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    RaftNode,
    Role,
    Status,
)
from embedkv.storage import DataDir, PeerInfo
from embedkv.storage.codec import MAX_ID, encode_proposal
from embedkv.storage.directory import members_rows
from embedkv.storage.requests import (
    Key,
    LeaseGrant,
    LeaseGrantResult,
    LeaseRevoke,
    LeaseRevokeResult,
    Request,
    Result,
)

from .cluster import (
    PROMOTE_SLACK,
    ClusterOptions,
    Links,
    MemberInfo,
    Security,
    advertise_address,
    bootstrap_founder,
    bootstrap_joiner,
    check_address,
    check_cluster_options,
    check_name,
    check_reopen,
    context_deny,
    context_member,
    context_origin,
    context_refusal,
    encode_context,
    local_info,
    log_outcome,
    new_identity,
    random_id,
    resolve_security,
    takes_every_address,
)
from .engine import Engine
from .futures import MemberFuture
from .lease import LeaseKeeper
from .reads import ReadWaiter
from .watch import WatchCallback, WatchHandle, WatchHub
from .writer import (
    NOT_LEADER,
    ConfApplied,
    Core,
    LogWriter,
    MemberStats,
    NodeCall,
    NotLeader,
    Proposal,
    Signal,
)

log = logging.getLogger("embedkv.member")

_T = TypeVar("_T")

_ids = random.SystemRandom()  # the per-run base of proposal numbers


def _progress_of(status: Status) -> tuple[int, dict[int, int]]:
    """(the leader's last index, match per member) from a leader's Status."""
    matches = {mid: pr.match for mid, pr in status.progress.items()}
    return max(matches.values(), default=status.commit), matches


class Member:
    """A running member; create it with `Member.open`. Thread-safe."""

    def __init__(
        self,
        dd: DataDir,
        *,
        request_timeout: float,
        tick_interval: float,
        election_tick: int,
        heartbeat_tick: int,
        clock: Callable[[], float],
        security: Security | None = None,
    ) -> None:
        identity = dd.identity
        if identity is None:
            raise ValueError("the data dir has no identity: bootstrap it first")
        self._dd = dd
        self._identity = identity
        self._member_id = identity.member_id
        self._local = dd.local
        self._timeout = request_timeout
        self._tick_interval = tick_interval
        self._election_tick = election_tick
        self._heartbeat_tick = heartbeat_tick
        # A new random base per run: an entry proposed before a restart and applied after it
        # never matches a proposal of this run.
        self._seq = itertools.count(_ids.randrange(1 << 62))
        self._closed = False
        self._forked = False
        self._close_lock = threading.Lock()
        self._close_done = threading.Event()
        self._core = Core(self._new_node())
        self._hub = WatchHub(dd.kv, dd.kv.revision)
        self._leases = LeaseKeeper(dd.kv, clock, self._propose_revoke, request_timeout)
        self._writer = LogWriter(
            dd,
            self._core,
            member_id=identity.member_id,
            new_node=self._new_node,
            hub=self._hub,
            leases=self._leases,
            request_timeout=request_timeout,
            read_retry=election_tick * tick_interval,
        )
        self._engine = Engine(self._core, self._writer, self._leases, tick_interval)
        self._writer.send = self._engine.send
        self._writer.conf_origin = context_origin
        self._writer.conf_member = context_member
        self._writer.conf_deny = context_deny
        self._writer.conf_refusal = context_refusal
        self._writer.on_conf_applied = self._on_conf_applied
        self._writer.on_installed = self._on_installed
        self._links: Links | None = None
        self._promoting = False
        self._recording = False
        self._closers: list[Callable[[], None]] = []
        self._publishing = threading.Lock()
        recorded = dd.members().get(identity.member_id)
        self._advertised = "" if self._local is None else advertise_address(
            self._local.listen, recorded.address if recorded is not None else None)
        """Where the others reach this member (its listen address, unless that takes every
        address: see `advertise_address`)."""
        if self._local is not None:
            self._links = Links(
                dd=dd,
                writer=self._writer,
                node=lambda: self._core.node,
                member_id=identity.member_id,
                token=self._local.token,
                listen=self._local.listen,
                tick_interval=tick_interval,
                handlers={
                    "join": self._serve_join,
                    "lease.keepalive": self._serve_keepalive,
                    "lease.ttl": self._serve_ttl,
                    "progress": self._serve_progress,
                    "removed": self._serve_removed,
                    "change": self._serve_change,
                    "moved": self._serve_moved,
                },
                security=security,
            )
            self._engine.transport = self._links.send
            self._engine.on_tick = self._leader_chores
            self._leases.forward = self._forward_keepalives

    def _new_node(self) -> RaftNode:
        """A RaftNode restored from what is on disk (at open, and after a failed batch)."""
        config = Config(
            id=self._identity.member_id,
            rng=random.Random(),
            election_tick=self._election_tick,
            heartbeat_tick=self._heartbeat_tick,
            applied=self._dd.applied_index,
        )
        return RaftNode(config, self._dd.log)

    @classmethod
    def open(
        cls,
        path: str | PathLike[str],
        *,
        durable: bool = True,
        request_timeout: float = 5.0,
        tick_interval: float = 0.1,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        clock: Callable[[], float] = time.monotonic,
        cluster: ClusterOptions | None = None,
    ) -> Member:
        """Open (bootstrapping a fresh dir) and start the member.

        Without `cluster` options a fresh dir becomes a one-member cluster and open waits until
        it leads. With them (docs/internals/runtime.md "Clusters"): a fresh dir founds a cluster
        with `peers`, or joins one through `join`; a one-member dir given `listen` starts
        taking joins; a clustered dir restarts with what it persisted. A clustered member does
        not wait for a leader: its operations wait (up to request_timeout) instead.
        `clock` is the monotonic clock lease deadlines are measured with (tests inject one).
        """
        for name, value in (("request_timeout", request_timeout),
                            ("tick_interval", tick_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        opts = cluster if cluster is not None else ClusterOptions()
        check_cluster_options(opts)
        dd = DataDir.open(path, durable=durable)
        try:
            opts, security = resolve_security(opts, dd.local if dd.identity else None)
            if dd.identity is None:
                if opts.peers is not None:
                    bootstrap_founder(dd, opts, security)
                elif opts.join is not None:
                    bootstrap_joiner(dd, opts, float(request_timeout), security)
                else:
                    identity = new_identity()
                    local = None
                    if opts.wanted:
                        local = local_info(opts, None, security.files)
                    dd.bootstrap(identity, ConfState(voters=frozenset({identity.member_id})),
                                 local=local)
            else:
                check_reopen(dd, opts, security)
            member = cls(
                dd,
                request_timeout=float(request_timeout),
                tick_interval=float(tick_interval),
                election_tick=election_tick,
                heartbeat_tick=heartbeat_tick,
                clock=clock,
                security=security if dd.local is not None else None,
            )
        except BaseException:
            dd.close()
            raise
        try:
            member._start()
        except BaseException:
            member.close()
            raise
        return member

    def _start(self) -> None:
        _track(self)
        conf = self._dd.conf_state
        me = self.member_id
        if (conf.voters or conf.learners) and me not in conf.voters | conf.learners:
            raise Removed(f"member {me:#x} was removed from its cluster: it cannot serve "
                          f"again; open a fresh data dir and join to come back")
        self._hub.start()
        self._writer.start()
        self._engine.start()
        links = self._links
        if links is not None:
            # Listening before open returns: a port in use or a bad host is the caller's error.
            try:
                asyncio.run_coroutine_threadsafe(links.start(), self._engine.loop).result(
                    self._timeout)
            except OSError as exc:
                listen = self._local.listen if self._local is not None else "?"
                raise OSError(exc.errno, f"cannot listen for peers on {listen}: "
                                         f"{exc.strerror or exc}") from None
        if conf.voters == {me}:
            # The only voter need not wait out an election timeout.
            with self._core.lock:
                self._core.node.campaign()
            self._writer.submit(Signal.WAKE)
            if not self._writer.leader_known.wait(self._timeout):
                raise Unavailable(f"no leader within the request timeout ({self._timeout}s)")
            self._publish_self()
        elif links is None:
            # Other voters and no way to reach them: nothing could ever be served.
            if not self._writer.leader_known.wait(self._timeout):
                raise Unavailable(f"no leader within the request timeout ({self._timeout}s)")
        elif self._local is not None:
            info = self._dd.members().get(me)
            if info is not None and info.address != self._advertised:
                self._moved_to(self._advertised)

    # --- identity and state ---------------------------------------------------------------

    @property
    def data_dir(self) -> DataDir:
        return self._dd

    @property
    def member_id(self) -> int:
        return self._identity.member_id

    @property
    def cluster_id(self) -> int:
        return self._identity.cluster_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> MemberStats:
        """Counters of batches, entries and proposals (tests and benchmarks)."""
        return self._writer.stats

    @property
    def applied_index(self) -> int:
        """The last Raft index applied and released (durable)."""
        return self._writer.applied_index

    def _check_running(self) -> None:
        if self._closed:
            raise Closed("the member is closed")
        if self._writer.removed is not None:
            raise Removed(self._writer.removed)
        failure = self._writer.failure
        if failure is not None:
            raise Unavailable(f"the member stopped after an internal error: {failure!r}")

    def _check_writable(self) -> None:
        self._check_running()
        no_space = self._writer.no_space
        if no_space is not None:
            raise NoSpace(str(no_space))

    # --- writes and linearizable reads ----------------------------------------------------

    def propose(self, request: Request, *, run: bool = False) -> Future[Result]:
        """Replicate and apply `request`; the future resolves once it is applied here.

        `run=True`: the caller is about to block on the future anyway, so if no batch is in
        progress this thread runs it (and its fsync) before returning (LogWriter.run_here).
        """
        writer = self._writer
        if self._closed or writer.failure is not None or writer.no_space is not None:
            self._check_writable()  # raises
        seq = next(self._seq)
        data = encode_proposal(self._member_id, seq, request)
        future: Future[Result] = MemberFuture()  # running: it cannot be taken back once queued
        proposal = Proposal(seq, data, future, time.monotonic() + self._timeout)
        (writer.run_here if run else writer.submit)(proposal)
        if writer.stopping:
            writer.drain()  # close() (or a failure) raced with us: do not leave it hanging
        return future

    @property
    def local_reads(self) -> bool:
        """True while a linearizable read needs no read barrier: this member is the leader and
        the only voter, so the latest local state is linearizable (LogWriter.local_reads,
        docs/internals/runtime.md "Reads"). False means: call `read_barrier` first."""
        return self._writer.local_reads

    def read_barrier(self, *, run: bool = False) -> Future[int]:
        """ReadIndex through Raft: resolves with the read index once it is applied here.
        `run` as for propose."""
        self._check_running()
        future: Future[int] = MemberFuture()
        writer = self._writer
        waiter = ReadWaiter(future, time.monotonic() + self._timeout)
        (writer.run_here if run else writer.submit)(waiter)
        if writer.stopping:
            writer.drain()
        return future

    # --- watches ------------------------------------------------------------------------------

    def watch(
        self,
        key: Key,
        callback: WatchCallback,
        *,
        prefix: bool = False,
        end: Key | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
    ) -> WatchHandle:
        """Call `callback(event)` on the dispatcher thread for every change in the selection."""
        if self._closed:
            raise Closed("the member is closed")
        if not start_revision and type(start_revision) is not bool:
            # "From now": after what a read would see now. The hub's revision trails the key
            # space's from a batch's commit to its publish; a watch from the hub's revision
            # would report a change the caller may already have read.
            start_revision = self._dd.kv.revision + 1
        return self._hub.watch(key, callback, prefix=prefix, end=end,
                               start_revision=start_revision, prev_kv=prev_kv)

    # --- leases -------------------------------------------------------------------------------

    def grant_lease(self, ttl: int, *, lease_id: int | None = None) -> Future[LeaseGrantResult]:
        """Grant a lease of `ttl` seconds (a random id unless given)."""
        if type(ttl) is not int:
            raise TypeError(f"lease ttl must be an int, not {type(ttl).__name__}")
        lid = random_id() if lease_id is None else lease_id
        return cast("Future[LeaseGrantResult]", self.propose(LeaseGrant(lid, ttl)))

    def revoke_lease(self, lease_id: int) -> Future[LeaseRevokeResult]:
        """Revoke a lease (its keys are deleted); LeaseNotFound if it does not exist."""
        future = self._propose_revoke(LeaseRevoke(lease_id))
        return cast("Future[LeaseRevokeResult]", future)

    def _propose_revoke(self, request: LeaseRevoke) -> Future[Any]:
        future = self.propose(request)
        leases = self._leases

        def done(f: Future[Any]) -> None:
            if f.exception() is None:
                leases.forget(request.id)

        future.add_done_callback(done)
        return future

    def _leader_elsewhere(self) -> int | None:
        """The leader's id when another member leads (leases are timed there only)."""
        if self._links is None:
            return None
        leader = self._core.node.leader
        if leader == self.member_id:
            return None
        if leader == NONE:
            if not self._writer.leader_known.wait(self._timeout):
                raise Unavailable(f"no leader within the request timeout ({self._timeout}s)")
            leader = self._core.node.leader
            if leader in (NONE, self.member_id):
                return None
        return leader

    def keepalive(self, lease_id: int) -> int:
        """Restart the lease's countdown; returns its TTL (LeaseNotFound if it is gone).
        On a follower the leader does it (a keep-alive is not a Raft entry, as in etcd)."""
        self._check_running()
        if type(lease_id) is not int:
            raise TypeError(f"lease ids are ints, not {type(lease_id).__name__}")
        leader = self._leader_elsewhere()
        if leader is None and self._links is not None:
            # Leading, as far as we know: prove it first (a ReadIndex round), as etcd does
            # before a renewal. A leader deposed while paused would otherwise renew a lease
            # whose countdown the new leader keeps, and the caller would believe the lease
            # safe when it is about to expire (found by the fault campaign, seed 901).
            self._wait(self.read_barrier())
            leader = self._leader_elsewhere()
        if leader is None:
            return self._leases.keepalive(lease_id)
        answer = self._call(leader, "lease.keepalive", [lease_id], self._timeout)
        ttl = answer[0] if isinstance(answer, list) and len(answer) == 1 else 0
        if not ttl:
            raise LeaseNotFound(lease_id)
        return int(ttl)

    def set_auto_keepalive(self, lease_id: int, enabled: bool) -> None:
        """Have the engine refresh the lease every ttl/3 while `enabled`."""
        if self._closed:
            raise Closed("the member is closed")
        self._leases.set_auto(lease_id, bool(enabled))

    def lease_time_to_live(self, lease_id: int) -> tuple[int, float] | None:
        """(granted TTL, seconds remaining), or None if the lease does not exist."""
        self._check_running()
        if type(lease_id) is not int:
            raise TypeError(f"lease ids are ints, not {type(lease_id).__name__}")
        leader = self._leader_elsewhere()
        if leader is None:
            return self._leases.time_to_live(lease_id)
        answer = self._call(leader, "lease.ttl", [lease_id], self._timeout)
        if answer is None:
            return None
        return int(answer[0]), float(answer[1])

    # --- the cluster ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This member's name ("default" for a store never given one)."""
        return self._local.name if self._local is not None else "default"

    @property
    def clustered(self) -> bool:
        """Whether this member has peer links (it was given a listen address)."""
        return self._links is not None

    def raft_status(self) -> Status:
        """The Raft node's Status (term, leader, commit, progress on the leader)."""
        with self._core.lock:
            return self._core.node.status()

    def _name_of(self, member_id: int) -> str:
        info = self._dd.members().get(member_id)
        if info is not None:
            return info.name
        return self.name if member_id == self.member_id else f"{member_id:x}"

    @property
    def leader_name(self) -> str | None:
        """The leader's name as this member knows it (None while there is none)."""
        leader = self._core.node.leader
        if self._writer.removed is not None or leader == NONE:
            return None
        return self._name_of(leader)

    def _progress(self) -> tuple[int, dict[int, int]] | None:
        """(leader's last index, match per member) from the leader: here or asked of it."""
        status = self.raft_status()
        if status.role is Role.LEADER:
            return _progress_of(status)
        if self._links is None or status.leader == NONE:
            return None
        try:
            body = self._call(status.leader, "progress", None, min(self._timeout, 1.0))
            last, matches = body
            return int(last), {int(k): int(v) for k, v in matches.items()}
        except Exception as exc:
            log.debug("no progress from the leader: %s", exc)
            return None

    def members(self, *, ask_leader: bool = True) -> list[MemberInfo]:
        """Every member of the configuration, with its name, address and role; how far each
        is behind comes from the leader (asked over the network unless `ask_leader` is
        False, when only a leader fills it in)."""
        self._check_running()
        status = self.raft_status()
        conf = status.conf_state
        directory = self._dd.members()
        progress = (self._progress() if ask_leader or status.role is Role.LEADER else None)
        out = []
        for mid in sorted(conf.voters | conf.learners):
            info = directory.get(mid)
            address = info.address if info is not None else (
                self._advertised if mid == self.member_id else "")
            behind = None
            if progress is not None and mid in progress[1]:
                behind = max(0, progress[0] - progress[1][mid])
            out.append(MemberInfo(self._name_of(mid), mid, address, mid in conf.voters,
                                  mid == status.leader, behind))
        return sorted(out, key=lambda m: m.name)

    def _id_of(self, name: str) -> int:
        check_name(name)
        conf = self._dd.conf_state
        for mid, info in self._dd.members().items():
            if info.name == name and mid in conf.voters | conf.learners:
                return mid
        if name == self.name:
            return self.member_id
        raise KeyError(f"no member named {name!r}")

    def change_membership(self, cc: ConfChange, info: PeerInfo | None = None) -> ConfState:
        """Make one membership change and wait until it is applied here.

        The leader proposes it (a follower asks it to): only the leader knows whether another
        change is still pending, and retries until it is not; a change forwarded inside Raft
        would be dropped silently instead."""
        self._check_writable()
        body = {"type": int(cc.type), "id": cc.node_id,
                "peer": None if info is None else [info.name, info.address, info.promote]}
        deadline = time.monotonic() + self._timeout
        while True:
            leader = self._leader_elsewhere()
            if leader is None:
                try:
                    return self._change_here(cc, info).conf_state
                except NotLeader:  # leadership moved on meanwhile: ask whoever leads now
                    if time.monotonic() >= deadline:
                        raise Unavailable("no leader made the change in time") from None
                    self._wait_leader_other_than(NONE, deadline)  # any leader known
                    continue
            try:
                index = self._call(leader, "change", body,
                                   max(0.1, deadline - time.monotonic()))
                break
            except RemoteError as exc:
                if str(exc).startswith("membership change refused"):
                    raise ValueError(str(exc)) from None
                if str(exc) != NOT_LEADER:
                    raise Unavailable(f"the leader could not make the change: {exc}") from None
                # It no longer leads (or was removed): like a leader gone, below.
                if time.monotonic() >= deadline:
                    raise Unavailable(f"no leader made the change: {exc}") from None
                self._wait_leader_other_than(leader, deadline)
            except Unavailable:
                # The leader went away (it may be the very member this change removed, its
                # link dropped as the change applied here): done if the change shows here,
                # else ask the next leader.
                if self._shows(cc):
                    return self._dd.conf_state
                if time.monotonic() >= deadline:
                    raise
                self._wait_leader_other_than(leader, deadline)
        if type(index) is not int:
            raise Unavailable(f"a malformed answer from the leader: {index!r:.100}")
        while self._writer.applied_index < index:  # applied there: wait until it is here too
            self._wait(self.read_barrier())
        return self._dd.conf_state

    def _wait_leader_other_than(self, gone: int, deadline: float) -> None:
        def moved() -> bool:
            return self._core.node.leader not in (gone, NONE)

        with self._writer.leadership:
            self._writer.leadership.wait_for(moved, max(0.0, deadline - time.monotonic()))

    def _shows(self, cc: ConfChange) -> bool:
        """Whether the applied configuration here already has `cc`'s effect."""
        conf = self._dd.conf_state
        if cc.type is ConfChangeType.REMOVE:
            return cc.node_id not in conf.voters | conf.learners
        if cc.type is ConfChangeType.ADD_VOTER:
            return cc.node_id in conf.voters
        return cc.node_id in conf.learners

    def _change_here(self, cc: ConfChange, info: PeerInfo | None, *,
                     update: bool = False) -> ConfApplied:
        """Propose `cc` as the leader and wait until it applies. `update`: it only updates
        the member's directory entry, and is void if the member has left meanwhile."""
        seq = next(self._seq)
        deny: tuple[str, ...] = ()
        if cc.type is ConfChangeType.REMOVE and self._links is not None:
            # Its certificates are refused from the removal on, on every member.
            deny = self._links.serials_seen(cc.node_id)
        cc = ConfChange(cc.type, cc.node_id,
                        encode_context(info, (self.member_id, seq), deny, update=update))
        future: Future[ConfApplied] = MemberFuture()
        self._writer.submit(Proposal(seq, b"", future, time.monotonic() + self._timeout, cc))
        if self._writer.stopping:
            self._writer.drain()
        return self._wait(future)

    def _wait(self, future: Future[_T]) -> _T:
        try:
            return future.result(self._timeout + 1.0)
        except TimeoutError:
            raise Unavailable(f"no result within the request timeout ({self._timeout}s)") from None

    def add_member(self, name: str, address: str, *, learner: bool = False,
                   member_id: int | None = None, promote: bool = False,
                   serials: tuple[str, ...] = ()) -> MemberInfo:
        """Add a member (a voter, or a learner that votes only once promoted); `serials`:
        its certificate's, when known (a join over TLS)."""
        check_name(name)
        check_address(address)
        for mid, info in self._dd.members().items():
            if mid in self._dd.conf_state.voters | self._dd.conf_state.learners:
                if info.name == name:
                    raise ValueError(f"a member named {name!r} exists already")
                if info.address == address:
                    raise ValueError(f"member {info.name!r} has address {address!r} already")
        mid = random_id() if member_id is None else member_id
        kind = ConfChangeType.ADD_LEARNER if learner else ConfChangeType.ADD_VOTER
        conf = self.change_membership(ConfChange(kind, mid),
                                      PeerInfo(name, address, promote=promote, serials=serials))
        return MemberInfo(name, mid, address, mid in conf.voters, False, None)

    def remove_member(self, name: str) -> None:
        """Remove a member; removing this one leaves it unable to serve (Removed)."""
        mid = self._id_of(name)
        try:
            self.change_membership(ConfChange(ConfChangeType.REMOVE, mid))
        except Removed:
            if mid != self.member_id:
                raise
            # This member, removed while it waited to see the change applied: done.

    def promote_member(self, name: str) -> MemberInfo:
        """Make a learner a voter (refused until it has caught up with the leader)."""
        mid = self._id_of(name)
        if mid in self._dd.conf_state.voters:
            raise ValueError(f"member {name!r} is a voter already")
        progress = self._progress()
        if progress is not None and mid in progress[1]:
            behind = progress[0] - progress[1][mid]
            if behind > PROMOTE_SLACK:
                raise ValueError(f"member {name!r} is {behind} entries behind the leader: "
                                 "promote it once it has caught up")
        info = self._dd.members().get(mid)
        self.change_membership(ConfChange(ConfChangeType.ADD_VOTER, mid),
                               PeerInfo(name, info.address) if info is not None else None)
        return next(m for m in self.members() if m.id == mid)

    def transfer_leadership(self, to: str | None = None) -> str:
        """Hand leadership to `to` (default: the most caught-up other voter); returns the new
        leader's name once this member sees it lead."""
        self._check_running()
        return self._transfer(to)

    def _transfer(self, to: str | None, limit: float | None = None) -> str:
        status = self.raft_status()
        if to is None:
            progress = self._progress()
            candidates = [mid for mid in status.conf_state.voters if mid != status.leader]
            if not candidates:
                raise ValueError("there is no other voter to hand leadership to")
            matches = progress[1] if progress is not None else {}
            target = max(candidates, key=lambda mid: (matches.get(mid, 0), -mid))
        else:
            target = self._id_of(to)
            if target not in status.conf_state.voters:
                raise ValueError(f"member {to!r} is not a voter")
        if status.leader == target:
            return self._name_of(target)
        deadline = time.monotonic() + (self._timeout if limit is None else limit)
        while time.monotonic() < deadline and not self._writer.stopping:
            self._writer.submit(NodeCall(lambda n: n.transfer_leader(target)))
            step_end = min(deadline, time.monotonic() + self._election_tick *
                           self._tick_interval)
            with self._writer.leadership:
                if self._writer.leadership.wait_for(
                        lambda: self._core.node.leader == target,
                        max(0.0, step_end - time.monotonic())):
                    return self._name_of(target)
        waited = self._timeout if limit is None else limit
        raise Unavailable(f"leadership did not move to {self._name_of(target)!r} within "
                          f"{waited:g}s")

    def _publish_self(self) -> None:
        """Record (or correct) this member's name and address in the replicated directory."""
        local = self._local
        if local is None:
            return
        while not self._closed:
            address = self._advertised  # the latest, if it moved again meanwhile
            info = self._dd.members().get(self.member_id)
            if info is not None and info.name == local.name and info.address == address:
                return
            conf = self._dd.conf_state
            kind = (ConfChangeType.ADD_VOTER if self.member_id in conf.voters
                    else ConfChangeType.ADD_LEARNER)
            change = ConfChange(kind, self.member_id)
            peer = PeerInfo(local.name, address, promote=info is not None and info.promote)
            try:
                self.change_membership(change, peer)
                recorded = self._dd.members().get(self.member_id)
                if recorded is not None and recorded.address == self._advertised:
                    return
                # change_membership took an unreachable leader's silence for success (this
                # voter "shows" already): nothing was recorded, so try again.
                log.info("this member's address %s is not recorded yet", address)
            except (Closed, Removed):
                return
            except Exception as exc:  # no quorum yet: the others must learn it eventually
                log.warning("could not record this member's address %s yet: %s",
                            address, exc)
                if conf.voters == {self.member_id}:
                    return  # alone, the next open tries again
            self._close_done.wait(self._election_tick * self._tick_interval)

    def _moved_to(self, address: str) -> None:
        """The others still dial an old address: tell them where we are (they follow at
        once), then record it in the replicated directory (one recorder at a time)."""
        asyncio.run_coroutine_threadsafe(self._announce(address), self._engine.loop)

        def record() -> None:
            with self._publishing:
                self._publish_self()

        threading.Thread(target=record, daemon=True, name="embedkv-address-update").start()

    # --- discovery's hooks (embedkv.member.discovery) ------------------------------------------

    @property
    def advertised(self) -> str:
        """Where the others reach this member ("" without peer links)."""
        return self._advertised

    def advertise(self, address: str) -> bool:
        """This member, listening on every address, is now reached at `address` (its host's
        address changed): tell the others and record it, as a restart with a new `listen`
        does. True if that is news. ValueError unless the listener takes every address on
        the port of `address`."""
        local = self._local
        if local is None or self._links is None or self._closed:
            return False
        check_address(address)
        if not takes_every_address(local.listen) or (
                parse_address(address)[1] != parse_address(local.listen)[1]):
            raise ValueError(f"this member listens on {local.listen}: it cannot be reached "
                             f"at {address}")
        if address == self._advertised:
            return False
        log.info("this member is now reached at %s (was %s)", address, self._advertised)
        self._advertised = address
        links = self._links

        async def redial() -> None:
            # The links up now may be bound to the address this host no longer has: they
            # would hang until TCP gives up. Dial every peer afresh, from the new one.
            transport = links.transport
            for mid, peer in transport.peers.items():
                transport.remove_peer(mid)
                transport.set_peer(mid, peer)

        asyncio.run_coroutine_threadsafe(redial(), self._engine.loop).result(self._timeout)
        self._moved_to(address)
        return True

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run `closer` first when this member closes (discovery withdraws its announcement)."""
        self._closers.append(closer)

    def follow_peer(self, name: str, address: str) -> bool:
        """Dial member `name` at `address` if its link is down at the address known now (an
        announced address never replaces one that works); True if the link moved."""
        links = self._links
        if links is None or self._closed:
            return False
        check_address(address)
        mid = next((m for m, info in self._dd.members().items() if info.name == name), None)
        if mid is None or mid == self.member_id:
            return False
        transport = links.transport

        def move() -> bool:
            if transport.peers.get(mid) in (None, address):
                return False
            if transport.link_state(mid) is not LinkState.DOWN:
                return False
            transport.set_peer(mid, address)
            return True

        async def run() -> bool:
            return move()

        future = asyncio.run_coroutine_threadsafe(run(), self._engine.loop)
        return future.result(self._timeout)

    def _call(self, target: int | str, method: str, body: Any, timeout: float) -> Any:
        links = self._links
        if links is None:
            raise Unavailable("this member has no peers")
        future = asyncio.run_coroutine_threadsafe(links.call(target, method, body, timeout),
                                                  self._engine.loop)
        try:
            return future.result(timeout + 1.0)
        except TimeoutError:
            future.cancel()
            raise Unavailable(f"no answer to {method} within {timeout}s") from None

    # --- from the log writer and the engine -------------------------------------------------

    def _on_conf_applied(self, change: ConfApplied) -> None:
        links = self._links
        if links is not None:
            loop = self._engine.loop
            cc = change.change
            if (change.refusal is None and cc.type is ConfChangeType.REMOVE
                    and cc.node_id != self.member_id):
                loop.call_soon_threadsafe(links.notify_removed, cc.node_id, change.index)
            loop.call_soon_threadsafe(links.follow, self._dd.members())

    def _on_installed(self) -> None:
        """A snapshot replaced the state machine: watches, leases and peers follow it."""
        self._hub.reset(self._dd.kv.revision)
        self._leases.reload()
        conf = self._dd.conf_state
        me = self.member_id
        if me not in conf.voters | conf.learners and (conf.voters or conf.learners):
            members = self._dd.members()
            if me not in members:
                self._writer.set_removed(f"member {me:#x} is not in the configuration of the "
                                         "snapshot it installed: it was removed")
        if self._links is not None:
            self._engine.loop.call_soon_threadsafe(self._links.follow, self._dd.members())

    def _leader_chores(self) -> None:
        """Every tick, on the engine loop (the core lock held): promote caught-up learners."""
        links = self._links
        if links is None or self._writer.removed is not None:
            return
        ready = links.learners_to_promote()
        if ready and not self._promoting:
            self._promoting = True
            threading.Thread(target=self._promote, args=(ready[0],), daemon=True,
                             name="embedkv-promote").start()
        if links.tls is not None and not self._recording and self._core.node.role is Role.LEADER:
            found = links.unrecorded_serial()
            if found is not None:
                self._recording = True
                threading.Thread(target=self._record_serial, args=found, daemon=True,
                                 name="embedkv-record-serial").start()

    def _record_serial(self, member_id: int, serial: str) -> None:
        """Record a member's certificate serial in the replicated directory (the leader does
        it as it sees a certificate first): removing the member revokes it everywhere."""
        try:
            info = self._dd.members().get(member_id)
            conf = self._dd.conf_state
            if info is None or member_id not in conf.voters | conf.learners:
                return
            kind = (ConfChangeType.ADD_VOTER if member_id in conf.voters
                    else ConfChangeType.ADD_LEARNER)
            # On the leader itself (not change_membership): the change must say it is an
            # update, void if a removal of that member applies first.
            self._check_writable()
            self._change_here(ConfChange(kind, member_id), info.with_serials((serial,)),
                              update=True)
            log.info("recorded certificate serial %s of member %s", serial, info.name)
        except Exception as exc:
            log.info("recording the certificate serial of member %#x failed (will retry): %s",
                     member_id, exc)
        finally:
            self._recording = False

    def _promote(self, member_id: int) -> None:
        try:
            info = self._dd.members().get(member_id)
            self.change_membership(ConfChange(ConfChangeType.ADD_VOTER, member_id),
                                   PeerInfo(info.name, info.address) if info else None)
            log.info("member %s caught up: promoted to voter", self._name_of(member_id))
        except Exception as exc:
            log.info("promoting member %#x failed (will retry): %s", member_id, exc)
        finally:
            self._promoting = False

    # --- calls from other members (on the engine loop) -----------------------------------------

    async def _serve_join(self, caller: int, body: Any) -> Any:
        if not isinstance(body, dict):
            raise ValueError("a join request is a map")
        name, address, mid = body.get("name"), body.get("address"), body.get("id")
        check_name(name)
        check_address(address)
        if type(mid) is not int or not 0 < mid <= MAX_ID or mid != caller:
            raise ValueError("a join request needs the joiner's own positive id")
        assert isinstance(name, str) and isinstance(address, str)
        serials: tuple[str, ...] = ()
        peer = caller_identity()
        if self._links is not None and self._links.tls is not None:
            if peer is None:
                raise ValueError("a join needs the joiner's certificate")
            if peer.name != name:
                log.warning("refused a join: the certificate names %s but the join asks for "
                            "member %s", peer.name, name)
                raise ValueError(f"the certificate names {peer.name} but the join asks for "
                                 f"member {name}")
            serials = (peer.serial,)
        local = self._local
        assert local is not None  # calls are served only by a member with links
        wanted = body.get("token")
        if wanted is not None and not hmac.compare_digest(str(wanted), local.token):
            raise ValueError("this member belongs to another cluster (the token differs)")
        conf = self._dd.conf_state
        added = None  # a member added by name and address already (add_member, or a retry)
        for known_id, known in self._dd.members().items():
            if (known.name == name and known.address == address
                    and known_id in conf.learners | conf.voters):
                added = known_id
        if added is None:
            await asyncio.to_thread(self.add_member, name, address, learner=True,
                                    member_id=mid, promote=True, serials=serials)
            added = mid
        members = self._dd.members()
        return {"cluster_id": self.cluster_id, "token": local.token, "id": added,
                "members": members_rows(members)}

    async def _serve_change(self, caller: int, body: Any) -> Any:
        """A member asks the leader to make a membership change; answers its index."""
        self._require_leader()
        try:
            kind = ConfChangeType(body["type"])
            node_id, peer = body["id"], body["peer"]
            if kind is ConfChangeType.BOOTSTRAP or type(node_id) is not int or node_id <= 0:
                raise ValueError
            info = None if peer is None else PeerInfo(check_name(peer[0]),
                                                      check_address(peer[1]), bool(peer[2]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"a malformed membership change: {body!r:.100}") from None
        applied = await asyncio.to_thread(self._change_here, ConfChange(kind, node_id), info)
        return applied.index

    async def _announce(self, address: str) -> None:
        links = self._links
        assert links is not None
        others = [mid for mid in self._dd.members() if mid != self.member_id]
        calls = [links.call(mid, "moved", address, self._timeout) for mid in others]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.info("could not tell a peer our new address: %s", outcome)

    async def _serve_moved(self, caller: int, body: Any) -> Any:
        """A member restarted on a new address: dial it there until the directory says so."""
        conf = self._dd.conf_state
        if caller in conf.voters | conf.learners and self._links is not None:
            self._links.transport.set_peer(caller, check_address(body))
        return None

    async def _serve_removed(self, caller: int, body: Any) -> Any:
        """A member applied our removal (at index `body`)."""
        if type(body) is int and self._links is not None:
            self._links.told_removed(caller, f"removed at index {body}")
        return None

    async def _leading_caught_up(self, body: Any) -> list[int]:
        """A lease call names lease ids. Answered after a ReadIndex round: it proves this
        member still leads (a deposed leader must not renew), and it leaves it applied up to
        its commit index, which covers whatever the caller applied (a lease granted through
        a follower, which may apply before the leader does, is then known here too)."""
        self._require_leader()
        if not isinstance(body, list) or not all(type(i) is int and i >= 0 for i in body):
            raise ValueError("a lease call names lease ids")
        await asyncio.wrap_future(self.read_barrier())
        self._require_leader()
        return body

    async def _serve_keepalive(self, caller: int, body: Any) -> Any:
        out = []  # the TTL of each lease, in order; 0: not found
        for lease_id in await self._leading_caught_up(body):
            try:
                out.append(self._leases.keepalive(lease_id))
            except LeaseNotFound:
                out.append(0)
        return out

    async def _serve_ttl(self, caller: int, body: Any) -> Any:
        ids = await self._leading_caught_up(body)
        if len(ids) != 1:
            raise ValueError("a TTL query names one lease id")
        found = self._leases.time_to_live(ids[0])
        return None if found is None else [found[0], found[1]]

    async def _serve_progress(self, caller: int, body: Any) -> Any:
        self._require_leader()
        last, matches = _progress_of(self.raft_status())
        return [last, {str(mid): match for mid, match in matches.items()}]

    def _require_leader(self) -> None:
        """Calls only the leader serves; a removed leader (still handing over) serves none."""
        if self._core.node.role is not Role.LEADER or self._writer.removed is not None:
            raise NotLeader

    def _forward_keepalives(self, lease_ids: list[int]) -> None:
        """On a follower, on the engine loop: automatic keep-alives go to the leader."""
        links = self._links
        leader = self._core.node.leader
        if links is None or leader == NONE or leader == self.member_id:
            return
        task = self._engine.loop.create_task(
            links.call(leader, "lease.keepalive", lease_ids, self._timeout))
        task.add_done_callback(log_outcome("a forwarded keep-alive"))

    # --- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every thread of this member, fail what waits with Closed, close the data dir.

        Idempotent; also runs at interpreter exit for members that were never closed. Waits
        at most request_timeout for a running watch callback (see WatchHub.close). Does
        nothing in a child of os.fork(): the member's threads and data dir are the parent's.
        """
        if self._forked:
            return
        with self._close_lock:
            first = not self._closed
            self._closed = True
        if not first:
            # Another thread is closing: wait for it, unless we are one of the threads it
            # waits for (a callback closing the member a second time).
            ours = (self._engine.thread, self._writer.thread, self._hub.thread)
            if threading.current_thread() not in ours:
                self._close_done.wait()
            return
        try:
            for closer in self._closers:
                try:
                    closer()
                except Exception:
                    log.exception("closing %r failed", closer)
            self._hand_over()
            links = self._links
            if links is not None and self._engine.thread.is_alive():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(links.close(), self._engine.loop).result(
                        self._timeout)
            self._engine.stop()
            self._writer.stop()
            # Bounded: a watch callback that never returns must not hang close() (or exit).
            self._hub.close(self._timeout)
        finally:
            self._dd.close()
            _untrack(self)
            self._close_done.set()

    def _hand_over(self) -> None:
        """A leader with other voters hands leadership over before it goes, so the cluster
        does not wait out an election timeout (bounded by the request timeout)."""
        if self._links is None or self._writer.failure is not None:
            return
        try:
            status = self.raft_status()
            if status.role is not Role.LEADER or len(status.conf_state.voters) < 2:
                return
            if threading.current_thread() in (self._engine.thread, self._writer.thread):
                return
            active = [mid for mid, pr in status.progress.items()
                      if mid != self.member_id and mid in status.conf_state.voters
                      and pr.recent_active]
            if not active:
                return  # nobody to hand over to (the others are gone already)
            self._transfer(None, limit=2 * self._election_tick * self._tick_interval)
        except Exception as exc:
            log.info("closing without handing leadership over: %s", exc)

    def __enter__(self) -> Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<Member {self.member_id:#x} of cluster {self.cluster_id:#x} "
                f"at {self._dd.path} ({state})>")


# --- closing members the program forgot to close ---------------------------------------------

_open_members: set[Member] = set()
_registry_lock = threading.Lock()
_hooked = False


def _close_all() -> None:
    """Close every member still open. Runs in threading's shutdown, before non-daemon threads
    are joined and before atexit handlers, so our (daemon) threads stop while the interpreter
    is still whole and every data dir is closed cleanly."""
    with _registry_lock:
        members = list(_open_members)
    for member in members:
        try:
            member.close()
        except Exception:
            log.exception("closing %r at exit failed", member)


def _forget_in_child() -> None:
    """After os.fork(), in the child: the members inherited from the parent have no threads
    here, and their LMDB environment must not be used; never close them (at exit or
    otherwise). Only the data dir's inherited lock descriptor is closed, which keeps the
    parent's lock (closing a copy of a flock'd descriptor does not unlock it) but lets the
    lock go when the parent closes, whatever the child does."""
    global _registry_lock
    _registry_lock = threading.Lock()  # another thread may have held it at the fork
    for member in _open_members:
        member._forked = True
        member._closed = True
        member._dd.forget_after_fork()
    _open_members.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _track(member: Member) -> None:
    global _hooked
    with _registry_lock:
        if not _hooked:
            register = getattr(threading, "_register_atexit", None)
            if register is not None:
                register(_close_all)
            else:  # another Python: atexit still runs before the interpreter tears down
                import atexit

                atexit.register(_close_all)
            _hooked = True
        _open_members.add(member)


def _untrack(member: Member) -> None:
    with _registry_lock:
        _open_members.discard(member)
