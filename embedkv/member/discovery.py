"""Discovery: fresh members that find each other with mDNS found one cluster, or join the one
they find; a running member announces itself and follows peers whose address changed.

mDNS only proposes addresses. Founding is decided by founding votes (`founding.Founding`)
exchanged by calls on a temporary peer transport whose token is derived from the cluster name;
whether a proposer founded is proven by its member accepting the new cluster's token (which
only the proposal's members know). With TLS every founding call is mutual TLS and both ends
check names: the caller that the listener's certificate names the member announced at that
address, the callee that the member a call speaks for is the one its certificate names. See
docs/internals/discovery.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2

from embedkv.errors import Unavailable
from embedkv.net import PeerTransport, RemoteError
from embedkv.net.discovery import (
    SERVICE_TYPE,
    Announcement,
    Mdns,
    check_interfaces,
    lan_interfaces,
)
from embedkv.net.tls import CertificateError, peer_identity
from embedkv.net.transport import IdentityRefused, caller_identity, parse_address
from embedkv.storage import DataDir

from .cluster import (
    SECURITY_HINT,
    ClusterOptions,
    Security,
    bootstrap_founder,
    bootstrap_joiner,
    check_name,
    founder_id,
    random_id,
    resolve_security,
    takes_every_address,
)
from .founding import (
    Ask,
    Decide,
    Effect,
    Founding,
    Poll,
    Proposal,
    Release,
    Save,
    Seat,
    Timing,
)
from .member import Member

log = logging.getLogger("embedkv.discovery")

VOTE_FILE = "founding-vote.cbor"
"""In a fresh data dir: the founding vote this member holds (kept across restarts)."""

CALL_TIMEOUT = 2.0
"""Seconds a founding call waits for its answer."""

UNREACHABLE_FOR = 10.0
"""Seconds a formed announcement nobody answers at is left aside."""

PEER_PORT = 7400
"""The peer port a member found by discovery listens on when `listen` is not given."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """How a member finds the others with mDNS (`embedkv.open(discovery=...)`).

    `interfaces`: IPv4 addresses of the interfaces to announce and browse on, or a function
    returning those of now (None: the host's LAN interfaces, looked at again every second
    by a running member, which follows when they change); `timeout`: seconds `open` waits
    to found or join a cluster; `service_type`: the DNS-SD type (tests use one of their
    own); `timing`: the founding vote's delays."""

    interfaces: Sequence[str] | Callable[[], Sequence[str]] | None = None
    timeout: float = 120.0
    service_type: str = SERVICE_TYPE
    timing: Timing = field(default_factory=Timing)


def cluster_name_of(token: str) -> str:
    """The cluster name a token belongs to: a cluster founded by discovery has the token
    "<name>/<nonce>"; any other token is its own name."""
    return token.split("/", 1)[0]


def founding_token(cluster: str) -> str:
    """The token of the temporary transport fresh members of `cluster` vote on."""
    return f"embedkv-founding/{cluster}"


def advertised(listen: str, interfaces: Sequence[str]) -> str:
    """The address to announce: `listen`, or the first interface's with its port when it
    listens on every address."""
    if takes_every_address(listen):
        return f"{interfaces[0]}:{parse_address(listen)[1]}"
    return listen


def read_vote(path: str) -> Proposal | None:
    """The founding vote persisted in data dir `path` (ValueError if the file is damaged)."""
    target = os.path.join(path, VOTE_FILE)
    try:
        with open(target, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return Proposal.decode(cbor2.loads(data))
    except Exception as exc:
        raise ValueError(
            f"{target} (this member's founding vote) is damaged: {exc}. Deleting it could let "
            "two clusters form if that vote was counted: remove it only once the proposal it "
            "held is known to have failed, or start from a fresh data dir") from None


def write_vote(path: str, vote: Proposal | None) -> None:
    """Persist the vote (fsync'd, atomically replaced) before any answer reveals it."""
    target = os.path.join(path, VOTE_FILE)
    if vote is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
    else:
        tmp = target + ".tmp"
        with open(tmp, "wb") as f:
            f.write(cbor2.dumps(vote.encode()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Founder:
    """One fresh member's bootstrap by discovery: runs on an asyncio loop of its own (in the
    thread that opens the store) until the data dir is bootstrapped, by founding or joining."""

    def __init__(self, dd: DataDir, mdns: Mdns, *, cluster: str, name: str, listen: str,
                 address: str, expect: int | None, timing: Timing,
                 join_timeout: float, security: Security) -> None:
        self.dd = dd
        self.security = security
        self.mdns = mdns
        self.cluster = cluster
        self.name = name
        self.listen = listen
        self.me = Seat(name, address)
        self.expect = expect
        self.join_timeout = join_timeout
        path = str(dd.path)
        self.core = Founding(me=self.me, expect=expect or 1, rng=random.Random(),
                             vote=read_vote(path), timing=timing)
        self.outcome: str | None = None  # "founded" or "joined"
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_join = 0.0
        self._joining = False
        self._unreachable: dict[str, float] = {}  # formed addresses nobody answers at: until

    async def run(self, deadline: float) -> str:
        loop = asyncio.get_running_loop()

        def changed() -> None:
            loop.call_soon_threadsafe(self._changed.set)

        self.mdns.on_change = changed
        self.transport = calls_only(founding_token(self.cluster), self.listen, self.security)
        self.transport.on_call = self._on_call
        await self.transport.start()
        commits: list[Proposal] = []
        try:
            while self.outcome is None:
                if time.monotonic() > deadline:
                    raise Unavailable(self._stuck())
                await self._step()
                if self.outcome is not None:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._changed.wait()
            decided = self.core.decided
            if decided is not None and decided.proposer == self.name:
                commits.append(decided)
            for p in commits:  # the others learn it now (or ask, or probe, later)
                calls = [self.transport.call_member(s.name, s.address, "found.commit",
                                                    {"nonce": p.nonce})
                         for s in p.members if s != self.me]
                await asyncio.gather(*calls, return_exceptions=True)
            return self.outcome
        finally:
            self.mdns.on_change = None
            for task in self._tasks:
                task.cancel()
            await self.transport.close()

    def _stuck(self) -> str:
        vote = self.core.vote
        seen = sorted(a.member for a in self.mdns.seen(self.cluster) if a.member != self.name)
        if vote is not None:
            return (f"no cluster {self.cluster!r} formed in time: this member voted for the "
                    f"proposal of {vote.proposer} ({', '.join(s.name for s in vote.members)}) "
                    "and waits to learn whether it was founded; it keeps that vote (restart "
                    "it to go on waiting)")
        return (f"no cluster {self.cluster!r} formed or found in time: this member saw "
                f"{len(seen)} other fresh member(s) {seen}; it expects {self.expect}")

    async def _step(self) -> None:
        now = time.monotonic()
        seen = [a for a in self.mdns.seen(self.cluster) if a.member != self.name]
        formed = [a for a in seen if a.state == "formed"
                  and self._unreachable.get(a.address, 0.0) <= now]
        if formed and self.core.vote is None and self.core.decided is None:
            if now >= self._next_join:
                await self._join(formed)
            return
        if self.expect is None:
            return
        self.core.see([Seat(a.member, a.address) for a in seen if a.state == "fresh"], now)
        self._run(self.core.tick(now))

    async def _join(self, formed: list[Announcement]) -> None:
        ids = {a.cluster_id for a in formed}
        if len(ids) > 1:
            log.warning("several clusters announce the name %r (%s): waiting for one",
                        self.cluster, ", ".join(f"{i:#x}" for i in ids if i is not None))
            self._next_join = time.monotonic() + 2.0
            return
        seats = sorted({(a.address, a.member) for a in formed})
        live: list[str] = []
        for address, member in seats:
            if await self.transport.reachable(member, address):
                live.append(address)
            else:
                # Announced as formed, yet nobody (or, with TLS, not the member announced)
                # answers there (gone, or forged): it does not hold founding back
                # (docs/internals/discovery.md says what that costs).
                self._unreachable[address] = time.monotonic() + UNREACHABLE_FOR
        if not live:
            return
        live = list(dict.fromkeys(live))
        opts = ClusterOptions(name=self.name, listen=self.listen, join=live)
        self._joining = True  # no vote is granted meanwhile: a joiner must not found too
        try:  # it joins with the address it announces (listen may take every address)
            await asyncio.to_thread(bootstrap_joiner, self.dd, opts, self.join_timeout,
                                    self.security, self.me.address)
        except Exception as exc:
            log.info("could not join cluster %r through %s yet: %s", self.cluster, live, exc)
            self._next_join = time.monotonic() + 1.0
            return
        finally:
            self._joining = False
        self.outcome = "joined"

    # --- effects ----------------------------------------------------------------------

    def _run(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Save):
                write_vote(str(self.dd.path), e.vote)
            elif isinstance(e, Decide):
                # Durable before anyone learns it: the bootstrap is the decision.
                p = e.proposal
                opts = ClusterOptions(name=self.name, listen=self.listen, peers=p.peers(),
                                      token=p.token(self.cluster))
                bootstrap_founder(self.dd, opts, self.security)
                write_vote(str(self.dd.path), None)
                self.outcome = "founded"
                self._changed.set()  # leave the founding transport at once: the others dial
                log.info("founded cluster %r with %s", self.cluster,
                         ", ".join(s.name for s in p.members))
            elif isinstance(e, Ask):
                self._spawn(self._ask(e))
            elif isinstance(e, Release):
                self._spawn(self._quiet_call(e.to, "found.release", {"nonce": e.nonce}))
            elif isinstance(e, Poll):
                self._spawn(self._poll(e.proposal))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, e: Ask) -> None:
        granted: bool | None
        try:
            body = await self.transport.call_member(e.to.name, e.to.address, "found.ask",
                                                    e.proposal.encode())
            granted = isinstance(body, dict) and body.get("granted") is True
            if not isinstance(body, dict) or body.get("name") != e.to.name:
                # Another member answers at that address: the seat was announced falsely.
                log.info("%s does not answer at %s: leaving it out", e.to.name, e.to.address)
                granted = None
            elif not granted:
                log.debug("%s refused proposal %s: %s", e.to.name, e.proposal.nonce,
                          body.get("why") if isinstance(body, dict) else body)
        except RemoteError as exc:
            log.debug("%s refused proposal %s: %s", e.to.name, e.proposal.nonce, exc)
            granted = False
        except Unavailable:
            granted = None
        if self.outcome is None:
            self._run(self.core.on_answer(e.proposal.nonce, e.to.name, granted,
                                          time.monotonic()))

    async def _quiet_call(self, to: Seat, method: str, body: object) -> None:
        with contextlib.suppress(Unavailable, RemoteError):
            await self.transport.call_member(to.name, to.address, method, body)

    async def _poll(self, p: Proposal) -> None:
        """Ask the proposer of our vote; if it no longer answers founding calls, probe it with
        the new cluster's token: accepted means it founded."""
        announced = [a.address for a in self.mdns.seen(self.cluster) if a.member == p.proposer]
        seat = p.seat(p.proposer)
        addresses = list(dict.fromkeys([*announced, *([seat.address] if seat else [])]))
        for address in addresses:
            try:
                body = await self.transport.call_member(p.proposer, address, "found.status",
                                                        {"nonce": p.nonce})
            except (Unavailable, RemoteError):
                if await probe(address, p.proposer, p.token(self.cluster), self.name,
                               self.security):
                    self._answer_poll(p, "decided")
                    return
                continue
            answer = body.get("answer") if isinstance(body, dict) else None
            if not isinstance(body, dict) or body.get("name") != p.proposer:
                continue  # not the proposer answering there
            if answer in ("collecting", "decided", "unknown"):
                self._answer_poll(p, answer)
                return

    def _answer_poll(self, p: Proposal, answer: Any) -> None:
        if self.outcome is None:
            self._run(self.core.on_status(p.nonce, answer))

    # --- calls from other fresh members -------------------------------------------------

    async def _on_call(self, caller: int, method: str, body: Any) -> Any:
        if self.outcome is not None:
            raise ValueError("this member has left the founding")
        who = caller_identity()  # with TLS: the member the caller's certificate names
        if self.security.credentials is not None and who is None:
            raise ValueError("a founding call over TLS carries no certificate identity")
        if method == "found.ask":
            try:
                proposal = Proposal.decode(body)
            except ValueError as exc:
                return {"granted": False, "why": str(exc), "name": self.name}
            if who is not None and proposal.proposer != who.name:
                log.warning("refused a founding proposal of %s from a certificate of %s",
                            proposal.proposer, who.name)
                return {"granted": False, "name": self.name,
                        "why": f"the proposal is {proposal.proposer}'s but the caller's "
                               f"certificate names {who.name}"}
            if self._joining:
                return {"granted": False, "why": "this member is joining a formed cluster",
                        "name": self.name}
            granted, why, effects = self.core.on_ask(proposal, time.monotonic())
            self._run(effects)  # the vote is durable before the answer leaves
            return {"granted": granted, "why": why, "name": self.name}
        nonce = body.get("nonce") if isinstance(body, dict) else None
        if not isinstance(nonce, str):
            raise ValueError(f"a founding call {method!r} names a nonce")
        vote = self.core.vote
        if (who is not None and method in ("found.release", "found.commit")
                and vote is not None and vote.nonce == nonce and vote.proposer != who.name):
            log.warning("refused %s of %s's proposal from a certificate of %s", method,
                        vote.proposer, who.name)
            raise ValueError(f"only {vote.proposer} speaks for its proposal, not {who.name}")
        if method == "found.release":
            self._run(self.core.on_release(nonce))
        elif method == "found.commit":
            self._run(self.core.on_commit(nonce))
        elif method == "found.status":
            return {"answer": self.core.status(nonce), "name": self.name}
        else:
            raise ValueError(f"unknown call {method!r}")
        return None


class FoundingTransport(PeerTransport):
    """A transport for calls only (no Raft peers) between members that are in no directory
    yet. With TLS it accepts calls from any certificate of the CA (the handler checks the name
    with `caller_identity`), and a call to a member at an address (`call_member`) goes only to
    a listener whose certificate names that member: an announcement cannot make this member
    talk to another than the one it names."""

    def __init__(self, token: str, listen: str, security: Security,
                 member_id: int | None = None) -> None:
        super().__init__(
            member_id=member_id if member_id is not None else random_id(), cluster=token,
            listen=listen, peers={}, on_message=lambda m: None,
            report_unreachable=lambda p: None, on_peer_lost=lambda p: None,
            report_snapshot=lambda p, ok: None, tls=security.credentials, any_member=True,
        )
        self.named: dict[str, str] = {}
        """Address -> the member the latest call to that address is for."""

    def check_listener(self, writer: asyncio.StreamWriter, target: int | str, address: str,
                       *, revoked_ok: bool = False) -> None:
        super().check_listener(writer, target, address, revoked_ok=revoked_ok)
        if self.tls is None or not isinstance(target, str):
            return
        want, peer = self.named.get(target), self.identities.get(target)
        if want is None or peer is None or peer.name != want:
            log.warning("refused the listener at %s: its certificate names %s, not %s",
                        address, peer.name if peer else "nobody", want)
            writer.close()
            raise IdentityRefused(f"the certificate at {address} names "
                                  f"{peer.name if peer else 'nobody'}, not {want}")

    async def call_member(self, name: str, address: str, method: str, body: object) -> object:
        """Call member `name` at `address`; with TLS, Unavailable unless the listener that
        answered presented `name`'s certificate (checked when it was dialed, and again here:
        a pooled connection may have been dialed for another name announced there)."""
        self.named[address] = name
        answer = await self.call(address, method, body, timeout=CALL_TIMEOUT)
        if self.tls is not None:
            peer = self.identities.get(address)
            if peer is None or peer.name != name:
                raise Unavailable(f"{name} does not answer at {address} (the certificate "
                                  f"there names {peer.name if peer else 'nobody'})")
        return answer

    async def reachable(self, name: str, address: str) -> bool:
        """Whether member `name` listens at `address`: anything accepting a TCP connection
        there, or with TLS a listener presenting `name`'s certificate."""
        host, port = parse_address(address)
        try:
            if self.tls is not None:
                _, writer = await self.dial(address)
            else:
                async with asyncio.timeout(CALL_TIMEOUT):
                    _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        try:
            if self.tls is None:
                return True
            try:
                return peer_identity(writer.get_extra_info("ssl_object")).name == name
            except CertificateError:
                return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def calls_only(token: str, listen: str, security: Security,
               member_id: int | None = None) -> FoundingTransport:
    """A transport for calls only (no Raft peers) under `token`."""
    return FoundingTransport(token, listen, security, member_id)


async def probe(address: str, proposer: str, token: str, me: str, security: Security) -> bool:
    """Whether `proposer`, at `address`, founded the cluster of `token` (it accepted a call
    connection with that token: its handler answered, even with an error). The probe speaks
    as this member's id in that cluster (`me` is in its directory, which a member over TLS
    requires of a certificate speaking for an id)."""
    transport = calls_only(token, "127.0.0.1:0", security,  # never started: it only dials
                           founder_id(token, me))
    try:
        await transport.call_member(proposer, address, "progress", None)
        return True
    except RemoteError:
        return True
    except Unavailable:
        return False
    finally:
        await transport.close()


def bootstrap_by_discovery(dd: DataDir, mdns: Mdns, *, cluster: str, name: str, listen: str,
                           expect: int | None, disc: Discovery, request_timeout: float,
                           security: Security) -> str:
    """Found (with `expect` fresh members) or join a cluster named `cluster`, bootstrapping
    the fresh `dd`; "founded" or "joined". Unavailable after `disc.timeout` seconds."""
    address = advertised(listen, mdns.interfaces)
    mdns.announce(Announcement(cluster, name, address, "fresh"))
    founder = Founder(dd, mdns, cluster=cluster, name=name, listen=listen, address=address,
                      expect=expect, timing=disc.timing, join_timeout=request_timeout,
                      security=security)
    return asyncio.run(founder.run(time.monotonic() + disc.timeout))


# --- a running member: announce, follow ------------------------------------------------------


class Agent:
    """A running member's discovery: announces it as formed, and points the link to a peer
    that cannot be reached at its known address to where mDNS last saw that peer (an
    announcement never replaces an address that works). When the interfaces are looked up
    (`interfaces`), it follows theirs changing: mDNS moves to the new ones, and a member
    listening on every address is announced, and tells its peers, at the new address."""

    def __init__(self, mdns: Mdns, member: Member, *, cluster: str, listen: str,
                 interfaces: Callable[[], Sequence[str]] | None = None) -> None:
        self.mdns = mdns
        self.cluster = cluster
        self.cluster_id = member.cluster_id
        self._member = member
        self._name = member.name
        self._listen = listen
        self._interfaces = interfaces
        self._lock = threading.Lock()  # the mdns instance, against close
        self._stop = threading.Event()
        self.address = self._where(mdns.interfaces)
        self._tell(self.address)
        mdns.announce(self._announcement())
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name="embedkv-discovery")
        self._thread.start()

    def _announcement(self) -> Announcement:
        return Announcement(self.cluster, self._name, self.address, "formed", self.cluster_id)

    def _where(self, interfaces: Sequence[str]) -> str:
        """Where this member is reached: `listen`, or when that takes every address, the
        address it is known at while that is still one of `interfaces`, else the first
        interface's."""
        known = self._member.advertised
        if (takes_every_address(self._listen) and known
                and parse_address(known)[0] in interfaces):
            return known
        return advertised(self._listen, interfaces)

    def _tell(self, address: str) -> None:
        """A member listening on every address is reached where discovery says it is: the
        others learn it (a no-op when that is where they reach it already)."""
        if takes_every_address(self._listen) and self._member.advertise(address):
            log.info("member %s is now reached at %s", self._name, address)

    def _rebind(self) -> None:
        """The host's interfaces changed: announce (and browse) on those of now."""
        if self._interfaces is None:
            return
        try:
            now = check_interfaces(self._interfaces())
        except (TypeError, ValueError) as exc:
            log.debug("no interface to announce on now: %s", exc)
            return
        if now == self.mdns.interfaces:
            return
        address = self._where(now)
        log.info("the interfaces changed (%s to %s): announcing %s at %s",
                 ", ".join(self.mdns.interfaces), ", ".join(now), self._name, address)
        with self._lock:
            if self._stop.is_set():
                return
            self.mdns = self.mdns.moved(now)
            self.address = address
            self._tell(address)
            self.mdns.announce(self._announcement())

    def _follow(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._rebind()
            except Exception as exc:
                log.warning("following the interfaces' change failed: %s", exc)
            for a in self.mdns.seen(self.cluster):
                if a.state == "formed" and a.cluster_id == self.cluster_id:
                    try:
                        if self._member.follow_peer(a.member, a.address):
                            log.info("following member %s to %s (announced)", a.member,
                                     a.address)
                    except Exception as exc:
                        log.debug("following %s failed: %s", a.member, exc)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        self._thread.join(5.0)
        self.mdns.close()


def interfaces_source(disc: Discovery) -> Callable[[], Sequence[str]] | None:
    """Where a running member looks the interfaces up again (None: they are fixed)."""
    if disc.interfaces is None:
        return lan_interfaces
    return disc.interfaces if callable(disc.interfaces) else None


def make_mdns(disc: Discovery) -> Mdns:
    source = interfaces_source(disc)
    fixed = disc.interfaces if not callable(disc.interfaces) else None
    interfaces = list(source() if source is not None else fixed or ())
    if not interfaces:
        raise ValueError("discovery found no LAN interface: pass "
                         "discovery=Discovery(interfaces=[...])")
    return Mdns(interfaces, service_type=disc.service_type)


# --- open's side ------------------------------------------------------------------------------


MAX_EXPECT = 99


def check_discovery(opts: ClusterOptions, expect: object, discovery: object) -> Discovery | None:
    """The discovery `open` runs with (None: none), every option checked first. Discovery is
    on when `expect` is given or `discovery` is True or a Discovery; False turns it off."""
    if discovery is not None and not isinstance(discovery, bool | Discovery):
        raise TypeError(f"discovery must be a bool or an embedkv.Discovery, not "
                        f"{type(discovery).__name__}")
    if expect is not None:
        if isinstance(expect, bool) or not isinstance(expect, int):
            raise TypeError(f"expect must be an int number of members, not "
                            f"{type(expect).__name__}")
        if not 1 <= expect <= MAX_EXPECT:
            raise ValueError(f"expect must be 1 to {MAX_EXPECT} members, not {expect}")
        if discovery is False:
            raise ValueError("expect= founds a cluster by discovery: it cannot be given with "
                             "discovery=False")
        if opts.peers is not None:
            raise ValueError("give peers (a fixed founding set) or expect (found by "
                             "discovery), not both")
    if discovery is False or (discovery is None and expect is None):
        return None
    disc = discovery if isinstance(discovery, Discovery) else Discovery()
    if opts.token is None:
        raise ValueError("discovery needs cluster='name': members find the others of that name")
    check_name_like(opts.token, "cluster name")
    if opts.tls is None and not opts.insecure:
        raise ValueError(f"discovery links members by mutual TLS: {SECURITY_HINT}")
    if opts.name is None and opts.tls is None:
        raise ValueError("discovery needs name= (or tls=, whose certificate names the member)")
    if disc.interfaces is not None and not callable(disc.interfaces):
        check_interfaces(disc.interfaces)
    t = disc.timeout
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < 1e6:
        raise ValueError(f"discovery timeout must be a positive number of seconds, not {t!r}")
    if not (isinstance(disc.service_type, str) and disc.service_type.endswith("._tcp.local.")
            and disc.service_type.startswith("_")):
        raise ValueError(f"service_type must look like '_name._tcp.local.', not "
                         f"{disc.service_type!r}")
    return disc


def check_name_like(value: str, what: str) -> str:
    try:
        return check_name(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} must be 1 to 64 letters, digits, '-', '_' or "
                         "'.'") from None


def open_with_discovery(path: str, opts: ClusterOptions, expect: int | None, disc: Discovery,
                        open_member: Callable[[ClusterOptions], Member],
                        request_timeout: float) -> Member:
    """Bootstrap a fresh dir by discovery (unless static peers or join are given), open the
    member, then announce it and follow its peers until it closes."""
    mdns = make_mdns(disc)
    try:
        dd = DataDir.open(path)
        try:
            local = dd.local
            # The name may come from the certificate (tls=embedkv.TLS(...)).
            opts, security = resolve_security(opts, local if dd.identity else None)
            if opts.listen is None:  # where it listened, or the first interface's address
                opts = replace(opts, listen=local.listen if local is not None and dd.identity
                               else f"{mdns.interfaces[0]}:{PEER_PORT}")
            cluster, name, listen = opts.token, opts.name, opts.listen
            assert cluster is not None and name is not None and listen is not None  # checked
            if dd.identity is None:
                if opts.peers is None and opts.join is None:
                    bootstrap_by_discovery(dd, mdns, cluster=cluster, name=name,
                                           listen=listen, expect=expect, disc=disc,
                                           request_timeout=request_timeout,
                                           security=security)
                    opts = ClusterOptions(name=name, listen=listen, tls=opts.tls,
                                          insecure=opts.insecure)
                elif opts.join is not None:
                    opts = replace(opts, token=None)  # a discovered cluster's token is longer
            elif local is not None and cluster_name_of(local.token) != cluster:
                raise ValueError(f"{path} belongs to cluster {cluster_name_of(local.token)!r}, "
                                 f"not {cluster!r}")
            elif local is not None:
                opts = replace(opts, token=None)  # checked above, by its name
        finally:
            dd.close()
        member = open_member(opts)
    except BaseException:
        mdns.close()
        raise
    try:
        agent = Agent(mdns, member, cluster=cluster, listen=listen,
                      interfaces=interfaces_source(disc))
    except BaseException:
        mdns.close()
        member.close()
        raise
    member.on_close(agent.close)
    return member
