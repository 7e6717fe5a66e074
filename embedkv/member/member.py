"""One Raft member running inside this process: the surface the public Store is built on.

`Member.open` wires the layers: the DataDir (storage), the RaftNode (core) restored from it, the
log writer thread (the Ready loop and every write transaction), the engine thread (an asyncio
loop: Raft time, lease timers, later the transport) and the watch dispatcher thread. A
one-member store is a Raft cluster of one: it campaigns at once, wins its own vote, and every
write goes through the same path as in a cluster. See docs/internals/runtime.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from os import PathLike
from typing import Any, cast

from embedkv.errors import Closed, NoSpace, Unavailable
from embedkv.raft import Config, ConfState, RaftNode
from embedkv.storage import DataDir, Identity
from embedkv.storage.codec import MAX_ID, encode_proposal
from embedkv.storage.requests import (
    Key,
    LeaseGrant,
    LeaseGrantResult,
    LeaseRevoke,
    LeaseRevokeResult,
    Request,
    Result,
)

from .engine import Engine
from .lease import LeaseKeeper
from .watch import WatchCallback, WatchHandle, WatchHub
from .writer import Core, LogWriter, MemberFuture, MemberStats, Proposal, ReadWaiter, Signal

log = logging.getLogger("embedkv.member")

_ids = random.SystemRandom()


def _random_id() -> int:
    """A random positive int64 (cluster, member and lease ids, as in etcd)."""
    return _ids.randint(1, MAX_ID)


def new_identity() -> Identity:
    """A new cluster with a new member (a fresh data dir, or a restored backup)."""
    return Identity(_random_id(), _random_id())


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
    ) -> None:
        identity = dd.identity
        if identity is None:
            raise ValueError("the data dir has no identity: bootstrap it first")
        self._dd = dd
        self._identity = identity
        self._member_id = identity.member_id
        self._timeout = request_timeout
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
    ) -> Member:
        """Open (bootstrapping a fresh dir as a one-member cluster) and wait until it serves.

        `clock` is the monotonic clock lease deadlines are measured with (tests inject one).
        """
        for name, value in (("request_timeout", request_timeout),
                            ("tick_interval", tick_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        dd = DataDir.open(path, durable=durable)
        try:
            if dd.identity is None:
                identity = new_identity()
                dd.bootstrap(identity, ConfState(voters=frozenset({identity.member_id})))
            member = cls(
                dd,
                request_timeout=float(request_timeout),
                tick_interval=float(tick_interval),
                election_tick=election_tick,
                heartbeat_tick=heartbeat_tick,
                clock=clock,
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
        self._hub.start()
        self._writer.start()
        self._engine.start()
        if self._dd.conf_state.voters == {self.member_id}:
            # The only voter need not wait out an election timeout.
            with self._core.lock:
                self._core.node.campaign()
            self._writer.submit(Signal.WAKE)
        if not self._writer.leader_known.wait(self._timeout):
            raise Unavailable(f"no leader within the request timeout ({self._timeout}s)")

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
        return self._hub.watch(key, callback, prefix=prefix, end=end,
                               start_revision=start_revision, prev_kv=prev_kv)

    # --- leases -------------------------------------------------------------------------------

    def grant_lease(self, ttl: int, *, lease_id: int | None = None) -> Future[LeaseGrantResult]:
        """Grant a lease of `ttl` seconds (a random id unless given)."""
        if type(ttl) is not int:
            raise TypeError(f"lease ttl must be an int, not {type(ttl).__name__}")
        lid = _random_id() if lease_id is None else lease_id
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

    def keepalive(self, lease_id: int) -> int:
        """Restart the lease's countdown; returns its TTL (LeaseNotFound if it is gone)."""
        if self._closed:
            raise Closed("the member is closed")
        return self._leases.keepalive(lease_id)

    def set_auto_keepalive(self, lease_id: int, enabled: bool) -> None:
        """Have the engine refresh the lease every ttl/3 while `enabled`."""
        if self._closed:
            raise Closed("the member is closed")
        self._leases.set_auto(lease_id, bool(enabled))

    def lease_time_to_live(self, lease_id: int) -> tuple[int, float] | None:
        """(granted TTL, seconds remaining), or None if the lease does not exist."""
        if self._closed:
            raise Closed("the member is closed")
        return self._leases.time_to_live(lease_id)

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
            self._engine.stop()
            self._writer.stop()
            # Bounded: a watch callback that never returns must not hang close() (or exit).
            self._hub.close(self._timeout)
        finally:
            self._dd.close()
            _untrack(self)
            self._close_done.set()

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
