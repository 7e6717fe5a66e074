"""Peer links on an asyncio loop: one long-lived outbound connection per peer, inbound
connections delivering decoded messages, snapshot streams on connections of their own, and
request/reply calls on pooled connections of their own.

Everything runs on the loop the transport was started on (the member's engine loop); every
public method except the constructor must be called there. Nothing a peer sends can raise out
of the transport: a bad frame drops that connection and is logged on "embedkv.net".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import hmac
import itertools
import logging
import random
import ssl as _ssl
import weakref
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from embedkv.errors import Error, Unavailable
from embedkv.raft.types import Message, MessageType, Snapshot

from .admission import Admission, Pending, ThrottledLog
from .faults import FaultPlan
from .frames import (
    DEFAULT_MAX_FRAME,
    MAX_HELLO,
    PROTOCOL_VERSION,
    Call,
    Frame,
    FrameDecoder,
    Hello,
    ProtocolError,
    Purpose,
    Refused,
    Reply,
    SnapshotAck,
    SnapshotChunk,
    SnapshotEnd,
    encode,
)
from .tls import CertificateError, Credentials, PeerIdentity, peer_identity

log = logging.getLogger("embedkv.net")

OnMessage = Callable[[Message], None]
OnPeer = Callable[[int], None]
OnSnapshot = Callable[[int, bool], None]
OnCall = Callable[[int, str, object], Awaitable[object]]
Chunks = Iterable[bytes] | AsyncIterable[bytes]
Target = int | str

_READ_SIZE = 256 << 10

JOIN = "join"
"""The one method a call connection without the cluster token may carry."""

_CALLER: contextvars.ContextVar[PeerIdentity | None] = contextvars.ContextVar(
    "embedkv_caller", default=None)


def caller_identity() -> PeerIdentity | None:
    """Inside an `on_call` handler: the certificate identity of the member calling (None
    without TLS). The join handler takes the joiner's name from it."""
    return _CALLER.get()


class IdentityRefused(ConnectionError):
    """A peer's TLS identity does not match the member it speaks for (or it is revoked)."""


MAX_STRANGER_FRAME = 64 << 10
"""Cap on the frames of a connection whose hello carries no cluster token (a joiner's: its
join call is small), so that strangers cannot make the listener buffer max_frame each."""


class RemoteError(Error):
    """The called member's handler raised (or there was none); the message is its str()."""


def _target_name(target: Target) -> str:
    return f"member {target}" if isinstance(target, int) else target


def _describe(exc: BaseException) -> str:
    """An exception's message for the caller: its str(), or its type when that says nothing."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return text or type(exc).__name__


def parse_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" (IPv6 hosts in brackets); ValueError names the input."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"peer address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect number `attempt` (0-based): exponential, capped, with
    jitter in [d/2, d] so that peers that lost each other do not redial in lockstep."""
    d = min(cap, base * 2 ** min(attempt, 32))
    return rng.uniform(d / 2, d)


def _after(delay: float | None, fn: Callable[..., None], *args: Any) -> None:
    """Run `fn` now, after `delay` seconds, or never (None: the fault plan dropped it)."""
    if delay is None:
        return
    if delay > 0:
        asyncio.get_running_loop().call_later(delay, fn, *args)
    else:
        fn(*args)


def _call(what: str, fn: Callable[..., None], *args: Any) -> None:
    """Run a callback; its failure is logged, never allowed to break a link."""
    try:
        fn(*args)
    except Exception:
        log.exception("%s callback failed", what)


class _Reader:
    """Frames from a stream, through one strict decoder; None at end of stream.

    `one_by_one` decodes a frame only when asked for it, so that `limit` can change the cap
    for the frames after it (a listener reads the hello that way)."""

    def __init__(
        self, reader: asyncio.StreamReader, max_frame: int, *, one_by_one: bool = False
    ) -> None:
        self._reader = reader
        self._decoder = FrameDecoder(max_frame)
        self._most: int | None = 1 if one_by_one else None
        self._pending: deque[Frame] = deque()

    def limit(self, max_frame: int) -> None:
        """The cap for every later frame; frames are decoded in batches again from now on."""
        self._most = None
        self._decoder.limit(max_frame)

    async def next(self) -> Frame | None:
        if not self._pending and self._decoder.buffered:
            self._pending.extend(self._decoder.feed(b"", self._most))
        while not self._pending:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                if self._decoder.buffered:
                    raise ProtocolError("connection closed inside a frame")
                return None
            self._pending.extend(self._decoder.feed(data, self._most))
        return self._pending.popleft()


class _Accepting(asyncio.StreamReaderProtocol):
    """An inbound connection's protocol. With TLS it reads nothing until `_serve` starts the
    handshake: a ClientHello read into the plain stream's buffer would be lost to it."""

    def __init__(self, reader: asyncio.StreamReader,
                 serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                 Coroutine[Any, Any, None]], *, tls: bool) -> None:
        super().__init__(reader, serve)
        self._tls = tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._tls:
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()  # start_tls resumes it
        super().connection_made(transport)

    def eof_received(self) -> bool:
        # The base keeps a plain stream half-open on EOF (True) and a TLS one not; it took
        # this for plain TCP, since TLS started after connection_made. asyncio warns when a
        # TLS stream's protocol asks to stay open.
        keep_open = bool(super().eof_received())
        return keep_open and not self._tls


class LinkState(enum.Enum):
    CONNECTING = "connecting"  # messages queue up
    UP = "up"  # messages queue up and are written in batches
    DOWN = "down"  # waiting out the backoff: messages are dropped and reported


class _Link:
    """The outbound connection to one peer, its bounded queue and its reconnect loop."""

    def __init__(self, t: PeerTransport, peer: int, address: str) -> None:
        self.t = t
        self.peer = peer
        self.address = address
        self.state = LinkState.CONNECTING
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        self.redial = asyncio.Event()  # set: the peer is evidently up, end the backoff now
        self.attempt = 0
        self.told_removed = False  # the peer said this member was removed from the cluster
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"embedkv-net-link-{peer}"
        )

    def enqueue(self, frame: bytes) -> bool:
        t = self.t
        if self.state is LinkState.DOWN:
            return False
        if len(self.queue) >= t.queue_frames or self.queued_bytes + len(frame) > t.queue_bytes:
            return False
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        self.wake.set()
        return True

    def _drop_queue(self) -> None:
        if self.queue:
            self.queue.clear()
            self.queued_bytes = 0
            _call("report_unreachable", self.t.report_unreachable, self.peer)

    async def _run(self) -> None:
        t = self.t
        while True:
            self.state = LinkState.CONNECTING
            lost = False
            try:
                lost = await self._connected()
            except asyncio.CancelledError:
                raise
            except (OSError, EOFError, ProtocolError, TimeoutError) as exc:
                log.info("link to peer %d at %s failed: %s", self.peer, self.address, exc)
            except Exception:  # a bug must not end the link for good: log it and redial
                log.exception("link to peer %d at %s failed", self.peer, self.address)
            self.state = LinkState.DOWN
            self._drop_queue()
            if lost:
                _call("on_peer_lost", t.on_peer_lost, self.peer)
            delay = backoff_delay(self.attempt, t.backoff_base, t.backoff_cap, t.rng)
            self.attempt += 1
            self.redial.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # never wait_for: see pyproject.toml, TID251
                    await self.redial.wait()

    def heard_from(self) -> None:
        """The peer just sent us something: if this link waits out a backoff (the peer was
        not listening yet, as when a cluster starts), dial now rather than drop what we
        send meanwhile (a forwarded proposal dropped there is lost until its deadline)."""
        if self.state is LinkState.DOWN:
            self.attempt = 0
            self.redial.set()

    async def _connected(self) -> bool:
        """Connect, greet and write batches until the link breaks; True if it was up and the
        peer closed it (the runtime may start an election at once)."""
        t = self.t
        reader, writer = await t.dial(self.address)
        t.check_listener(writer, self.peer, self.address)
        watch: asyncio.Task[Refused | str | None] | None = None
        try:
            writer.write(encode(Hello(t.member_id, t.cluster, Purpose.RAFT), t.max_frame))
            await writer.drain()
            self.state = LinkState.UP
            self.attempt = 0
            watch = asyncio.get_running_loop().create_task(self._watch(reader))
            while True:
                if not self.queue:
                    self.wake.clear()
                    waiter = asyncio.get_running_loop().create_task(self.wake.wait())
                    try:
                        await asyncio.wait({waiter, watch}, return_when=asyncio.FIRST_COMPLETED)
                    finally:  # also when the link is cancelled here: no task left pending
                        waiter.cancel()
                if watch.done():
                    refusal = watch.result()
                    if isinstance(refusal, Refused):
                        # Told once that we were removed: the redials that follow are quiet.
                        level = logging.DEBUG if self.told_removed else logging.WARNING
                        log.log(level, "peer %d refused our link: %s", self.peer,
                                refusal.reason)
                        if refusal.removed and t.on_removed is not None:
                            self.told_removed = True
                            _call("on_removed", t.on_removed, self.peer, refusal.reason)
                        return False
                    if refusal is not None:
                        log.warning("peer %d refused our link: %s", self.peer, refusal)
                        return False
                    log.info("peer %d at %s closed the link", self.peer, self.address)
                    return True
                batch: list[bytes] = []
                size = 0
                while self.queue and size < t.batch_bytes:
                    frame = self.queue.popleft()
                    batch.append(frame)
                    size += len(frame)
                self.queued_bytes -= size
                writer.write(b"".join(batch))
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            return self.state is LinkState.UP
        finally:
            if watch is not None:
                watch.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _watch(self, reader: asyncio.StreamReader) -> Refused | str | None:
        """Waits for the peer to close our outbound link; returns its refusal if it sent one,
        what went wrong if it sent something else, None if it just closed."""
        frames = _Reader(reader, self.t.max_frame)
        try:
            frame = await frames.next()
        except ProtocolError as exc:
            return f"garbage on the link: {exc}"
        except OSError:
            # Reset rather than closed: a peer that died with unread data in its receive
            # buffer resets the connection. It is gone all the same (on_peer_lost).
            return None
        if isinstance(frame, Refused):
            return frame
        if frame is not None:
            return f"unexpected {type(frame).__name__} frame on an outbound link"
        return None


class _CallConn:
    """One pooled connection carrying calls to a target; replies are matched by call id.

    Never redials: once it fails (cannot connect, refused, closed, garbage) every pending call
    gets Unavailable and it leaves the pool, so the next call dials afresh."""

    def __init__(self, t: PeerTransport, target: Target, address: str,
                 revoked_ok: bool = False) -> None:
        self.t = t
        self.target = target
        self.address = address
        self.revoked_ok = revoked_ok
        self.token = t.cluster  # a changed token retires the connection (see PeerTransport.call)
        self.pending: dict[int, asyncio.Future[object]] = {}
        self.up = asyncio.Event()  # set once the hello is written, or once failed
        self.error: str | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"embedkv-net-calls-{target}"
        )

    def close(self, error: str) -> None:
        """End the connection: every pending call and waiting caller gets Unavailable(error)."""
        if self.error is None:
            self.error = error
        self.up.set()
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(error))
        if self.t._calls.get(self.target) is self:
            del self.t._calls[self.target]
        if self.writer is not None:
            self.writer.close()
        if asyncio.current_task() is not self.task:
            self.task.cancel()

    def write(self, data: bytes) -> None:
        if self.writer is not None and self.error is None and not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        """Wait while the peer is behind; a broken connection ends it (and its calls)."""
        if self.writer is None or self.error is not None:
            return
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self.close(f"connection to {_target_name(self.target)} lost: {exc}")

    def deliver(self, reply: Reply) -> None:
        fut = self.pending.get(reply.call_id)
        if fut is None or fut.done():  # its caller gave up (timeout) or it is not ours
            log.debug("reply to unknown call %d from %s", reply.call_id, self.address)
            return
        if reply.ok:
            fut.set_result(reply.body)
        else:
            assert isinstance(reply.body, str)  # the decoder checks it
            fut.set_exception(RemoteError(reply.body))

    async def _run(self) -> None:
        t = self.t
        name = _target_name(self.target)
        error = f"connection to {name} closed"
        try:
            reader, self.writer = await t.dial(self.address)
            t.check_listener(self.writer, self.target, self.address, revoked_ok=self.revoked_ok)
            self.writer.write(encode(Hello(t.member_id, self.token, Purpose.CALL), t.max_frame))
            self.up.set()
            frames = _Reader(reader, t.max_frame)
            while True:
                frame = await frames.next()
                if frame is None:
                    error = f"{name} closed the call connection"
                    break
                if isinstance(frame, Refused):
                    error = f"{name} at {self.address} refused the call connection: {frame.reason}"
                    log.warning("%s", error)
                    break
                if not isinstance(frame, Reply):
                    raise ProtocolError(f"unexpected {type(frame).__name__} on a call connection")
                t._receive_reply(self, frame)
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            error = f"dropped the call connection to {name}: {exc}"
            log.warning("%s", error)
        except (OSError, EOFError, TimeoutError) as exc:
            error = f"cannot reach {name} at {self.address}: {_describe(exc)}"
            log.info("%s", error)
        except Exception as exc:  # a bug must fail the calls, not leave them hanging
            error = f"call connection to {name} failed: {exc}"
            log.exception("call connection to %s failed", name)
        finally:
            self.close(error)


class PeerTransport:
    """Raft message transport between cluster members (see docs/internals/transport.md).

    `send` matches ``embedkv.member.engine.Transport``: hand it the messages of a durable Ready.
    Callbacks run on the loop and must not block: `on_message(msg)` for each inbound message,
    `report_unreachable(peer)` when a message to `peer` was dropped (queue full or link down),
    `on_peer_lost(peer)` when an established link was closed by the peer, and
    `report_snapshot(peer, ok)` when a snapshot stream ends, and `on_removed(peer, reason)`
    when `peer` refused our link because this member was removed from the cluster.
    `removed(member_id)` says which dialers to tell so.

    `call` sends a request to another member and awaits its reply; `on_call` (settable any
    time) answers the calls other members make to this one.
    """

    def __init__(
        self,
        *,
        member_id: int,
        cluster: str,
        listen: str,
        peers: Mapping[int, str],
        on_message: OnMessage,
        report_unreachable: OnPeer,
        on_peer_lost: OnPeer,
        report_snapshot: OnSnapshot,
        on_call: OnCall | None = None,
        server_ssl: _ssl.SSLContext | None = None,
        client_ssl: _ssl.SSLContext | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_snapshot: int = 1 << 32,
        snapshot_chunk: int = 1 << 20,
        queue_frames: int = 4096,
        queue_bytes: int = 64 << 20,
        batch_bytes: int = 1 << 20,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        connect_timeout: float = 5.0,
        hello_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        max_pending: int = 128,
        max_pending_per_source: int = 16,
        snapshot_ack_timeout: float = 60.0,
        max_calls: int = 1024,
        rng: random.Random | None = None,
        faults: FaultPlan | None = None,
        tls: Credentials | None = None,
        member_name: Callable[[int], str | None] | None = None,
        revoked: Callable[[str], bool] | None = None,
        removed: Callable[[int], bool] | None = None,
        on_removed: Callable[[int, str], None] | None = None,
        any_member: bool = False,
    ) -> None:
        if member_id <= 0:
            raise ValueError(f"member_id must be positive, not {member_id!r}")
        if not 0 < snapshot_chunk < max_frame - 64:
            raise ValueError("snapshot_chunk must be positive and well below max_frame")
        if max_calls < 1:
            raise ValueError(f"max_calls must be positive, not {max_calls!r}")
        if not (hello_timeout > 0 and handshake_timeout > 0):
            raise ValueError("hello_timeout and handshake_timeout must be positive")
        self.member_id = member_id
        self.cluster = cluster
        self.listen = parse_address(listen)
        self._peers = {p: (parse_address(a), a)[1] for p, a in peers.items()}
        self.on_message = on_message
        self.report_unreachable = report_unreachable
        self.on_peer_lost = on_peer_lost
        self.report_snapshot = report_snapshot
        self.on_call = on_call
        self.tls = tls
        if tls is not None:  # never plain TCP once a member has certificates
            server_ssl, client_ssl = tls.server, tls.client
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.member_name = member_name if member_name is not None else (lambda _: None)
        self.revoked = revoked if revoked is not None else (lambda _: False)
        self.removed = removed if removed is not None else (lambda _: False)
        self.on_removed = on_removed
        self.any_member = any_member
        """With TLS: accept a hello from any certificate of the CA, whatever member id it
        claims (members that are in no directory yet: founding by discovery, whose handler
        checks the caller's name with `caller_identity`)."""
        self.identities: dict[Target, PeerIdentity] = {}
        """The TLS identity last seen for each peer id (both ways) and call target address."""
        self._inbound_ids: weakref.WeakKeyDictionary[asyncio.StreamWriter, PeerIdentity] = (
            weakref.WeakKeyDictionary())
        self.max_frame = max_frame
        self.max_snapshot = max_snapshot
        self.snapshot_chunk = snapshot_chunk
        self.queue_frames = queue_frames
        self.queue_bytes = queue_bytes
        self.batch_bytes = batch_bytes
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.connect_timeout = connect_timeout
        self.hello_timeout = hello_timeout
        self.handshake_timeout = handshake_timeout
        self._admission = Admission(max_pending_per_source, max_pending)
        self._strangers = ThrottledLog(log)  # what unauthenticated connections cause
        self.snapshot_ack_timeout = snapshot_ack_timeout
        self.max_calls = max_calls
        self.rng = rng if rng is not None else random.Random()
        self.faults = faults
        self._links: dict[int, _Link] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: set[asyncio.Task[Any]] = set()  # one per inbound connection
        self._inbound: set[asyncio.StreamWriter] = set()
        self._calls: dict[Target, _CallConn] = {}
        self._call_ids = itertools.count(1)  # unique per transport, so per connection too
        self._closed = False

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen and dial every peer; returns once the listening socket is bound."""
        host, port = self.listen
        loop = asyncio.get_running_loop()
        tls = self.server_ssl is not None

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # A task close() cancels: a TLS connection closed by close() ends only after its
            # close_notify exchange, which may outlive the loop.
            if self._closed:  # accepted as close() ran: close() did not see this task
                writer.close()
                return
            task = asyncio.current_task()
            if task is not None:
                self._serving.add(task)
                task.add_done_callback(self._serving.discard)
            await self._serve(reader, writer)

        def accept() -> asyncio.StreamReaderProtocol:
            return _Accepting(asyncio.StreamReader(limit=_READ_SIZE), serve, tls=tls)

        # With TLS the handshake runs in _serve (start_tls), so that a failure is logged.
        self._server = await loop.create_server(accept, host, port, reuse_address=True)
        for peer, address in self._peers.items():
            self._links[peer] = _Link(self, peer, address)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is real even if `listen` asked for 0."""
        if self._server is None:
            raise RuntimeError("the transport is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        """Stop listening, close every link and stream; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        calls = list(self._calls.values())
        for conn in calls:
            conn.close("the transport is closed")
        tasks = [link.task for link in self._links.values()] + list(self._tasks)
        tasks += [conn.task for conn in calls] + list(self._serving)
        self._links.clear()
        for w in list(self._inbound):
            w.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # ------------------------------------------------------------------------- peers

    @property
    def peers(self) -> dict[int, str]:
        return dict(self._peers)

    def link_state(self, peer: int) -> LinkState | None:
        link = self._links.get(peer)
        return None if link is None else link.state

    def set_peer(self, peer: int, address: str) -> None:
        """Add a peer or change its address (the link redials at once)."""
        parse_address(address)
        if peer == self.member_id:
            raise ValueError("a member is not its own peer")
        if self._peers.get(peer) == address and peer in self._links:
            return
        self.remove_peer(peer)  # calls in flight to its old address fail with Unavailable
        self._peers[peer] = address
        if self._server is not None and not self._closed:
            self._links[peer] = _Link(self, peer, address)

    def remove_peer(self, peer: int) -> None:
        self._peers.pop(peer, None)
        link = self._links.pop(peer, None)
        if link is not None:
            link.task.cancel()
        conn = self._calls.get(peer)
        if conn is not None:
            conn.close(f"member {peer} was removed or moved")

    # ------------------------------------------------------------------------- calls

    async def call(self, target: Target, method: str, body: object, *, timeout: float,
                   revoked_ok: bool = False) -> object:
        """Send `method(body)` to `target` (a peer id, or a "host:port" for a member whose id
        is not known yet) and return its handler's reply body. `revoked_ok`: the target's
        certificate may be revoked (telling a removed member that it is out).

        Raises Unavailable (cannot connect, connection lost or refused, transport closed, or
        no reply within `timeout` seconds), RemoteError (the handler raised), ProtocolError
        (`method` or `body` cannot be sent: see frames.check_body), ValueError (`timeout`)."""
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        call = Call(next(self._call_ids), method, body)
        data = encode(call, self.max_frame)  # a bad body fails here, before any dialing
        name = _target_name(target)
        if self._closed:
            raise Unavailable(f"cannot call {name}: the transport is closed")
        fut: asyncio.Future[object] | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = self._call_conn(target, revoked_ok)
                await conn.up.wait()
                if conn.error is not None:
                    raise Unavailable(conn.error)
                fut = asyncio.get_running_loop().create_future()
                conn.pending[call.call_id] = fut
                try:
                    self._send_call(conn, call, data)
                    await conn.drain()
                    return await fut
                finally:
                    conn.pending.pop(call.call_id, None)
        except TimeoutError:
            raise Unavailable(
                f"no reply from {name} to {method!r} within {timeout:g} s"
            ) from None
        finally:
            if fut is not None and fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a failure nobody awaited is not worth a warning

    def _call_conn(self, target: Target, revoked_ok: bool = False) -> _CallConn:
        """The pooled call connection to `target`, dialing one if there is none."""
        conn = self._calls.get(target)
        if conn is not None and conn.token != self.cluster:  # e.g. a joiner that now has it
            conn.close("the cluster token changed")
            conn = None
        if conn is not None and conn.revoked_ok != revoked_ok:
            conn.close("another identity check is wanted")
            conn = None
        if conn is None:
            if isinstance(target, str):
                parse_address(target)
                address = target
            else:
                found = self._peers.get(target)
                if found is None:
                    raise Unavailable(f"no address for member {target}")
                address = found
            conn = self._calls[target] = _CallConn(self, target, address, revoked_ok)
        return conn

    def _send_call(self, conn: _CallConn, call: Call, data: bytes) -> None:
        """Write a call (through the fault plan: a dropped call is answered by the timeout)."""
        delay = 0.0 if self.faults is None else self.faults.on_send(conn.target, call)
        _after(delay, conn.write, data)

    def _receive_reply(self, conn: _CallConn, reply: Reply) -> None:
        delay = 0.0 if self.faults is None else self.faults.on_receive(conn.target, reply)
        _after(delay, conn.deliver, reply)

    # ------------------------------------------------------------------------- sending

    async def dial(self, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new outbound connection to `address` (TLS when `client_ssl` is set; the caller
        then checks who answered with `check_listener`)."""
        host, port = parse_address(address)
        self.refresh_tls()
        async with asyncio.timeout(self.connect_timeout):
            return await asyncio.open_connection(
                host,
                port,
                ssl=self.client_ssl,
                server_hostname=host if self.client_ssl else None,
                ssl_handshake_timeout=self.handshake_timeout if self.client_ssl else None,
            )

    def check_listener(self, writer: asyncio.StreamWriter, target: Target, address: str, *,
                       revoked_ok: bool = False) -> None:
        """With TLS, on a connection just dialed for `target` (a peer id, or the address
        itself): the listener's certificate must name the member `target` is (any member
        for an address) and must not be revoked, else IdentityRefused (logged, and the
        connection closed). The identity is recorded in `identities`."""
        if self.tls is None:
            return
        try:
            self.identities[target] = self._check_listener(writer, target, revoked_ok)
        except IdentityRefused as exc:
            log.warning("refused %s at %s: %s", _target_name(target), address, exc)
            writer.close()
            raise

    def refresh_tls(self) -> None:
        """Pick up renewed certificate files (see tls.Credentials); the next handshakes use
        them. A change that cannot be used is logged and the old material stays."""
        if self.tls is None:
            return
        try:
            if self.tls.refresh():
                log.info("reloaded the TLS files: certificate %s (serial %s)",
                         self.tls.tls.cert, self.tls.serial)
        except (CertificateError, OSError) as exc:
            log.warning("cannot reload the TLS files (keeping the previous ones): %s", exc)
        self.server_ssl, self.client_ssl = self.tls.server, self.tls.client

    def _identity(self, writer: asyncio.StreamWriter, revoked_ok: bool = False) -> PeerIdentity:
        assert self.tls is not None
        try:
            peer = peer_identity(writer.get_extra_info("ssl_object"))
        except CertificateError as exc:
            raise IdentityRefused(str(exc)) from None
        if not revoked_ok and self.revoked(peer.serial):
            raise IdentityRefused(f"the certificate of {peer.name} (serial {peer.serial}) is "
                                  "revoked: that member was removed from the cluster")
        return peer

    def _check_listener(self, writer: asyncio.StreamWriter, target: Target,
                        revoked_ok: bool) -> PeerIdentity:
        peer = self._identity(writer, revoked_ok)
        if isinstance(target, int):
            expected = self.member_name(target)
            if expected is None:
                raise IdentityRefused(f"member {target} is not in this member's directory "
                                      f"(its certificate names {peer.name})")
            if peer.name != expected:
                raise IdentityRefused(f"the certificate names {peer.name} but member {target} "
                                      f"is {expected}")
        return peer

    def send(self, messages: list[Message]) -> None:
        """Queue `messages` for their peers; never blocks, drops and reports what cannot go."""
        loop = asyncio.get_running_loop()
        for msg in messages:
            if self.faults is not None:
                verdict = self.faults.on_send(msg.to, msg)
                if verdict is None:
                    continue
                if verdict > 0:
                    loop.call_later(verdict, self._send_one, msg)
                    continue
            self._send_one(msg)

    def _send_one(self, msg: Message) -> None:
        if self._closed:
            return
        snap = msg.snapshot
        if msg.type is MessageType.SNAP and snap is not None:
            data = snap.data
            size = self.snapshot_chunk
            chunks = (data[i : i + size] for i in range(0, len(data), size))
            self._start_stream(msg, chunks, faults_checked=True)
            return
        link = self._links.get(msg.to)
        if link is None:
            log.debug("no address for peer %d; dropping %s", msg.to, msg.type.name)
            _call("report_unreachable", self.report_unreachable, msg.to)
            return
        try:
            frame = encode(msg, self.max_frame)
        except ProtocolError:
            log.exception("cannot send %s to peer %d", msg.type.name, msg.to)
            _call("report_unreachable", self.report_unreachable, msg.to)
            return
        if not link.enqueue(frame):
            _call("report_unreachable", self.report_unreachable, msg.to)

    def send_snapshot(self, msg: Message, chunks: Chunks) -> None:
        """Stream a snapshot to `msg.to` on a connection of its own: `msg` (a SNAP message whose
        snapshot data is ignored) then the data from `chunks`; `report_snapshot` tells how it
        went. Heartbeats and appends keep flowing on the peer's link meanwhile."""
        if msg.type is not MessageType.SNAP or msg.snapshot is None:
            raise ValueError("send_snapshot needs a SNAP message with snapshot metadata")
        self._start_stream(msg, chunks, faults_checked=False)

    def _start_stream(self, msg: Message, chunks: Chunks, *, faults_checked: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._stream(msg, chunks, faults_checked))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, msg: Message, chunks: Chunks, faults_checked: bool) -> None:
        peer = msg.to
        ok = False
        writer: asyncio.StreamWriter | None = None
        try:
            faults = None if faults_checked else self.faults
            if faults is not None and faults.on_send(peer, msg) is None:
                raise ConnectionError("dropped by the fault plan")
            address = self._peers.get(peer)
            if address is None:
                raise ConnectionError(f"no address for peer {peer}")
            reader, w = await self.dial(address)
            writer = w
            self.check_listener(w, peer, address)
            assert msg.snapshot is not None
            head = dataclasses.replace(msg, snapshot=Snapshot(msg.snapshot.meta, b""))
            w.write(encode(Hello(self.member_id, self.cluster, Purpose.SNAPSHOT)))
            w.write(encode(head, self.max_frame))
            total = 0
            async for chunk in _iterate(chunks):
                for i in range(0, len(chunk), self.snapshot_chunk):
                    piece = bytes(chunk[i : i + self.snapshot_chunk])
                    w.write(encode(SnapshotChunk(piece), self.max_frame))
                    total += len(piece)
                    await w.drain()  # flow control: wait while the peer is behind
            w.write(encode(SnapshotEnd(total)))
            await w.drain()
            async with asyncio.timeout(self.snapshot_ack_timeout):
                answer = await _Reader(reader, self.max_frame).next()
            if isinstance(answer, Refused):
                raise ConnectionError(f"refused: {answer.reason}")
            ok = isinstance(answer, SnapshotAck) and answer.ok
            if not ok:
                log.warning("peer %d did not accept snapshot %d", peer, msg.snapshot.meta.index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("snapshot stream to peer %d failed: %s", peer, exc)
        finally:
            if writer is not None:
                writer.close()
            if not self._closed:
                _call("report_snapshot", self.report_snapshot, peer, ok)

    # ------------------------------------------------------------------------- receiving

    def _admit(self, writer: asyncio.StreamWriter) -> Pending | None:
        """Count a new inbound connection against the limits on unauthenticated ones; None
        (and the connection closed) when it is over them. An evicted one is cancelled."""
        peername = writer.get_extra_info("peername")
        source = str(peername[0]) if isinstance(peername, tuple) and peername else "unknown"
        task = asyncio.current_task()

        def evict(reason: str) -> None:
            self._strangers.log(logging.WARNING, "dropped a connection from %s still without "
                                "a hello: %s", peername, reason)
            if task is not None:
                task.cancel()

        ticket = self._admission.admit(source, evict)
        if isinstance(ticket, str):
            self._strangers.log(logging.WARNING, "refused a connection from %s: %s",
                                peername, ticket)
            writer.close()
            return None
        return ticket

    async def _greeting(self, frames: _Reader, writer: asyncio.StreamWriter, pending: Pending,
                        peername: object) -> Frame | None:
        """The TLS handshake if any, then the first frame: within hello_timeout of the accept
        in all, so a stranger that stalls or trickles one byte at a time cannot hold on. None
        when the handshake failed (logged) or the peer left."""
        try:
            async with asyncio.timeout(self.hello_timeout):
                if self.server_ssl is not None and not await self._accept_tls(
                        writer, pending, peername):
                    return None
                return await frames.next()
        except TimeoutError:
            raise TimeoutError(f"no hello within {self.hello_timeout:g} s") from None

    def _log(self, pending: Pending, level: int, msg: str, *args: object) -> None:
        """Log about a connection: throttled while it has not authenticated."""
        if pending.released:
            log.log(level, msg, *args)
        else:
            self._strangers.log(level, msg, *args)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = self._admit(writer)
        if pending is None:
            return
        self._inbound.add(writer)
        peername = writer.get_extra_info("peername")
        frames = _Reader(reader, min(MAX_HELLO, self.max_frame), one_by_one=True)
        try:
            hello = await self._greeting(frames, writer, pending, peername)
            if hello is None:
                return
            refusal = self._refusal(hello)
            removed = None if refusal is not None else self._removed_refusal(hello)
            refusal = refusal or removed or self._identity_refusal(hello, writer)
            if refusal is not None:
                self._log(pending, logging.WARNING, "refused a connection from %s: %s",
                          peername, refusal)
                writer.write(encode(Refused(refusal, removed=removed is not None)))
                await writer.drain()
                return
            assert isinstance(hello, Hello)
            if hello.cluster:  # authenticated: no longer counted (a joiner's stays pending)
                pending.release()
                frames.limit(self.max_frame)
            else:
                frames.limit(min(MAX_STRANGER_FRAME, self.max_frame))
            if hello.purpose is Purpose.RAFT:
                await self._receive_raft(hello.member, frames)
            elif hello.purpose is Purpose.CALL:
                await self._receive_calls(hello, frames, writer)
            else:
                await self._receive_snapshot(hello.member, frames, writer)
        except ProtocolError as exc:
            self._log(pending, logging.WARNING, "dropped the connection from %s: %s",
                      peername, _describe(exc))
        except _ssl.SSLError as exc:  # mostly a refused handshake: the reason is in exc
            self._log(pending, logging.WARNING, "TLS failed on the connection from %s: %s",
                      peername, _describe(exc))
        except (OSError, TimeoutError) as exc:
            self._log(pending, logging.INFO, "connection from %s ended: %s", peername,
                      _describe(exc))
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection from %s failed", peername)
        finally:
            pending.release()
            self._inbound.discard(writer)
            writer.close()

    async def _accept_tls(self, writer: asyncio.StreamWriter, pending: Pending,
                          peername: object) -> bool:
        """The server side of the TLS handshake; False (logged with OpenSSL's reason: another
        CA, an expired certificate, TLS 1.2, plain TCP...) if it failed."""
        self.refresh_tls()
        assert self.server_ssl is not None
        plain = writer.transport
        try:
            await writer.start_tls(self.server_ssl, ssl_handshake_timeout=self.handshake_timeout)
        except (OSError, TimeoutError, AttributeError) as exc:
            # AttributeError: the peer left mid-handshake and asyncio (3.11) found no TLS
            # transport to swap in; the writer keeps the plain one, so close() works.
            if getattr(writer, "_transport", plain) is None:
                writer._transport = plain  # type: ignore[attr-defined]
            self._log(pending, logging.WARNING, "refused a connection from %s: TLS handshake "
                      "failed: %s", peername, _describe(exc))
            return False
        return True

    def _identity_refusal(self, hello: Frame, writer: asyncio.StreamWriter) -> str | None:
        """With TLS: why the certificate cannot speak for the member the hello claims (None
        if it can). A joiner (no token yet, calling join) is known by its certificate's name
        alone; anyone else must be the member of that name in this member's directory."""
        if self.tls is None:
            return None
        assert isinstance(hello, Hello)
        try:
            peer = self._identity(writer)
        except IdentityRefused as exc:
            return str(exc)
        if hello.cluster and not self.any_member:
            expected = self.member_name(hello.member)
            if expected is None:
                return (f"the certificate names {peer.name} but the hello claims member "
                        f"{hello.member}, which is not in this member's directory")
            if expected != peer.name:
                return (f"the certificate names {peer.name} but the hello claims member "
                        f"{hello.member} ({expected})")
            self.identities[hello.member] = peer
        self._inbound_ids[writer] = peer
        return None

    def _removed_refusal(self, hello: Frame) -> str | None:
        """For a hello `_refusal` passed: if it comes from a member of this cluster (it has the
        token; with TLS, a certificate of its CA) removed while it could not hear of it, the
        refusal that tells it so (it then stops)."""
        if isinstance(hello, Hello) and hello.cluster and self.removed(hello.member):
            return f"member {hello.member} was removed from the cluster"
        return None

    def _refusal(self, hello: Frame) -> str | None:
        if not isinstance(hello, Hello):
            return f"expected a hello, got {type(hello).__name__}"
        if hello.version != PROTOCOL_VERSION:
            return f"protocol version {hello.version} (this member speaks {PROTOCOL_VERSION})"
        if not hello.cluster:  # a joiner's: it may only call "join" (checked per call)
            if hello.purpose is not Purpose.CALL:
                return "a connection without the cluster token may only call join"
        elif not hmac.compare_digest(hello.cluster.encode(), self.cluster.encode()):
            return "the member belongs to another cluster (cluster token differs)"
        if hello.member == self.member_id:
            return f"the dialer claims this member's own id {self.member_id}"
        return None

    def _check(self, sender: int, frame: Frame | None) -> Message:
        if not isinstance(frame, Message):
            raise ProtocolError(f"expected a message, got {type(frame).__name__}")
        if frame.from_ != sender or frame.to != self.member_id:
            raise ProtocolError(
                f"message from {frame.from_} to {frame.to} on the link {sender} -> {self.member_id}"
            )
        return frame

    def _deliver(self, sender: int, msg: Message) -> bool:
        """Hand `msg` to on_message (now or after the fault plan's delay); False if dropped."""
        delay = 0.0
        if self.faults is not None:
            verdict = self.faults.on_receive(sender, msg)
            if verdict is None:
                return False
            delay = verdict
            again = self.faults.again(sender, msg)
            if again is not None:  # a copy, later (the core may keep the original's parts)
                copy = dataclasses.replace(msg)
                asyncio.get_running_loop().call_later(delay + again, self._deliver_now, copy)
        link = self._links.get(sender)
        if link is not None:
            link.heard_from()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._deliver_now, msg)
            return True
        self._deliver_now(msg)
        return True

    def _deliver_now(self, msg: Message) -> None:
        if not self._closed:
            _call("on_message", self.on_message, msg)

    async def _receive_raft(self, sender: int, frames: _Reader) -> None:
        while True:
            frame = await frames.next()
            if frame is None:
                return
            self._deliver(sender, self._check(sender, frame))

    async def _receive_snapshot(
        self, sender: int, frames: _Reader, writer: asyncio.StreamWriter
    ) -> None:
        head = self._check(sender, await frames.next())
        if head.type is not MessageType.SNAP or head.snapshot is None:
            raise ProtocolError("a snapshot stream must start with a SNAP message")
        parts: list[bytes] = []
        total = 0
        while True:  # a stalled sender must not hold the connection and its buffer forever
            async with asyncio.timeout(self.snapshot_ack_timeout):
                frame = await frames.next()
            if isinstance(frame, SnapshotChunk):
                total += len(frame.data)
                if total > self.max_snapshot:
                    raise ProtocolError(f"snapshot exceeds {self.max_snapshot} bytes")
                parts.append(frame.data)
            elif isinstance(frame, SnapshotEnd):
                if frame.size != total:
                    raise ProtocolError(f"snapshot of {total} bytes announced as {frame.size}")
                break
            elif frame is None:
                raise ProtocolError("snapshot stream closed before its end")
            else:
                raise ProtocolError(f"unexpected {type(frame).__name__} in a snapshot stream")
        head.snapshot = Snapshot(head.snapshot.meta, b"".join(parts))
        writer.write(encode(SnapshotAck(self._deliver(sender, head))))
        await writer.drain()

    async def _receive_calls(
        self, hello: Hello, frames: _Reader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer the calls on one connection, each in a task of its own so that a slow
        handler holds up neither the other calls nor the Raft links."""
        running: dict[int, asyncio.Task[None]] = {}
        try:
            while True:
                frame = await frames.next()
                if frame is None:
                    return
                if not isinstance(frame, Call):
                    raise ProtocolError(f"expected a call, got {type(frame).__name__}")
                if frame.call_id in running:
                    raise ProtocolError(f"call id {frame.call_id} reused while in flight")
                if self.faults is not None:
                    verdict = self.faults.on_receive(hello.member, frame)
                    if verdict is None:
                        continue
                    if verdict > 0:
                        asyncio.get_running_loop().call_later(
                            verdict, self._dispatch, hello, frame, writer, running
                        )
                        continue
                self._dispatch(hello, frame, writer, running)
        finally:  # nobody is left to hear the answers
            for task in list(running.values()):
                task.cancel()

    def _dispatch(
        self,
        hello: Hello,
        call: Call,
        writer: asyncio.StreamWriter,
        running: dict[int, asyncio.Task[None]],
    ) -> None:
        if self._closed or writer.is_closing():
            return
        refusal = None
        if not hello.cluster and call.method != JOIN:
            refusal = f"call {call.method!r} needs the cluster token; without it only join"
            log.warning("refused a call from member %d: %s", hello.member, refusal)
        elif len(running) >= self.max_calls:
            refusal = f"busy: {len(running)} calls from member {hello.member} in flight"
            log.warning("refused a call: %s", refusal)
        if refusal is not None:
            self._start(self._reply(hello.member, writer, Reply(call.call_id, False, refusal)))
            return
        task = self._start(self._answer(hello.member, call, writer))
        running[call.call_id] = task
        task.add_done_callback(lambda _: running.pop(call.call_id, None))

    def _start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task close() cancels and awaits."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _answer(self, sender: int, call: Call, writer: asyncio.StreamWriter) -> None:
        _CALLER.set(self._inbound_ids.get(writer))  # this task's own context
        handler = self.on_call
        if handler is None:
            reply = Reply(call.call_id, False, "no handler")
        else:
            try:
                reply = Reply(call.call_id, True, await handler(sender, call.method, call.body))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("call %r from member %d failed: %r", call.method, sender, exc)
                reply = Reply(call.call_id, False, _describe(exc))
        try:
            encode(reply, self.max_frame)
        except ProtocolError as exc:
            log.warning("cannot send the reply to %r to member %d: %s", call.method, sender, exc)
            error = f"the reply to {call.method!r} cannot be sent: {exc}"
            reply = Reply(call.call_id, False, error)
        await self._reply(sender, writer, reply)

    async def _reply(self, sender: int, writer: asyncio.StreamWriter, reply: Reply) -> None:
        """Write `reply` (through the fault plan); a caller that went away is no error."""
        data = encode(reply, self.max_frame)
        if self.faults is not None:
            verdict = self.faults.on_send(sender, reply)
            if verdict is None:
                return
            if verdict > 0:
                await asyncio.sleep(verdict)
        if writer.is_closing():
            return
        writer.write(data)
        try:
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("could not answer member %d: %s", sender, exc)


async def _iterate(chunks: Chunks) -> AsyncIterable[bytes]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk
