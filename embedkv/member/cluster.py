"""A member among others: ids, the member directory, the peer links and calls between members.

The Raft core knows members by id only; people know them by name and reach them by address.
Names and addresses travel in the context of the membership change that adds a member (the
log writer records them in the storage's member directory in the transaction that applies the
change, so they survive log compaction and travel in snapshots). Founding members derive their
ids from the cluster token and their names, as etcd does, so that every founder, given the same
`peers`, agrees on the initial configuration without talking first. A joining member picks a
random id and asks any member to add it.

`Links` runs on the engine loop: it owns the PeerTransport, hands what arrives to the log
writer's queue (the writer owns the Raft node, so the loop never waits for the node's lock),
streams snapshots out of LMDB, and serves the calls other members make: join, lease
keep-alives and TTL queries (only the leader keeps lease deadlines), and progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from embedkv.errors import CorruptData, Unavailable
from embedkv.net import PeerTransport
from embedkv.net.tls import CA_CERT, TLS, CertificateError, Credentials
from embedkv.net.transport import parse_address
from embedkv.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    ProgressState,
    RaftNode,
    Role,
    Snapshot,
)
from embedkv.storage import DataDir, Identity, LocalInfo, PeerInfo, TLSFiles
from embedkv.storage.codec import MAX_ID
from embedkv.storage.directory import is_serial, members_from_rows

from .writer import LogWriter, NodeCall, Removal

log = logging.getLogger("embedkv.member")

MAX_NAME = 64
"""Longest member name (a DNS label, as etcd's names are in practice)."""

TLS_RELOAD_INTERVAL = 1.0
"""Seconds between looks at the TLS files for a renewed certificate or CA bundle."""

PROMOTE_SLACK = 64
"""A learner within this many entries of the leader's commit index counts as caught up."""

Handler = Callable[[int, Any], Awaitable[Any]]

_ids = random.SystemRandom()


def check_name(name: object) -> str:
    """A member name: 1-64 of letters, digits, '-', '_' and '.' (ValueError otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"a member name is a str, not {type(name).__name__}")
    ok = 0 < len(name) <= MAX_NAME and all(c.isascii() and (c.isalnum() or c in "-_.")
                                          for c in name)
    if not ok:
        raise ValueError(
            f"member name {name!r} must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
        )
    return name


def check_address(address: object, what: str = "address") -> str:
    """A peer address "host:port" with a real port (ValueError otherwise)."""
    if not isinstance(address, str):
        raise TypeError(f"{what} must be a 'host:port' str, not {type(address).__name__}")
    if parse_address(address)[1] == 0:
        raise ValueError(f"{what} {address!r} needs a fixed port: the others must reach it")
    return address


def takes_every_address(address: str) -> bool:
    """Whether a listen address is the unspecified one ("0.0.0.0:PORT", "[::]:PORT")."""
    try:
        return ipaddress.ip_address(parse_address(address)[0]).is_unspecified
    except ValueError:  # a host name
        return False


def advertise_address(listen: str, recorded: str | None) -> str:
    """Where the others reach a member listening on `listen` (as etcd's advertise URL to its
    listen URL): `listen` itself, or, when it listens on every address ("0.0.0.0:PORT"),
    the host the directory records for it (`recorded`: its entry in `peers`, or what it
    joined or last moved with) with the listen port; `listen` when nothing better is known."""
    if not takes_every_address(listen) or recorded is None or takes_every_address(recorded):
        return listen
    return f"{parse_address(recorded)[0]}:{parse_address(listen)[1]}"


def route_source(address: str, listen: str) -> str:
    """The address to join with when listening on every address: the local address this host
    sends from towards `address` (a UDP connect only picks the route: nothing is sent),
    with the listen port; `listen` itself when it names a host."""
    if not takes_every_address(listen):
        return listen
    try:
        infos = socket.getaddrinfo(*parse_address(address), type=socket.SOCK_DGRAM)
        family, _, _, _, target = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(target)
            host = s.getsockname()[0]
    except OSError as exc:
        raise ValueError(f"listen={listen!r} takes every address, and no route to the "
                         f"join address {address} shows which one the others reach: "
                         f"{exc}") from None
    port = parse_address(listen)[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hash_id(*parts: str) -> int:
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_ID or 1


def founder_id(token: str, name: str) -> int:
    """The id of a founding member: every founder computes every founder's id alike."""
    return _hash_id("embedkv-member", token, name)


def cluster_id_for(token: str, peers: Mapping[str, str]) -> int:
    """The id of a cluster founded with `peers` under `token` (etcd derives it the same way)."""
    return _hash_id("embedkv-cluster", token, *(f"{n}={a}" for n, a in sorted(peers.items())))


# --- what a membership change carries --------------------------------------------------------


def encode_context(info: PeerInfo | None, origin: tuple[int, int] | None,
                   deny: tuple[str, ...] = (), *, update: bool = False) -> bytes:
    """`update`: the change only updates the member's directory entry (its certificate
    serials); it is void once the member is no longer in the configuration in that role, so
    that it can never add back a member removed while it was in flight."""
    body: dict[str, Any] = {}
    if update:
        body["update"] = True
    if info is not None:
        body["name"] = info.name
        body["address"] = info.address
        if info.promote:
            body["promote"] = True
        if info.serials:
            body["serials"] = list(info.serials)
    if origin is not None:
        body["origin"] = list(origin)
    if deny:
        body["deny"] = sorted(deny)
    return cbor2.dumps(body)


def _serials(value: object) -> tuple[str, ...]:
    if isinstance(value, list) and all(is_serial(v) for v in value):
        return tuple(value)
    return ()


def _context(cc: ConfChange) -> dict[str, Any]:
    """The decoded context, or {} for one that is missing or not ours (never raises: every
    member applies the same entry alike, whatever it holds)."""
    if not cc.context:
        return {}
    try:
        body = cbor2.loads(cc.context)
    except Exception:
        return {}
    return body if isinstance(body, dict) else {}


def context_member(cc: ConfChange) -> PeerInfo | None:
    body = _context(cc)
    name, address = body.get("name"), body.get("address")
    if not isinstance(name, str) or not isinstance(address, str):
        return None
    return PeerInfo(name, address, promote=body.get("promote") is True,
                    serials=_serials(body.get("serials")))


def context_refusal(cc: ConfChange, conf: ConfState) -> str | None:
    """Why a committed change is void: an update of a member no longer in the configuration
    in the role it names."""
    if _context(cc).get("update") is not True:
        return None
    role = conf.voters if cc.type is ConfChangeType.ADD_VOTER else conf.learners
    if cc.type is ConfChangeType.REMOVE or cc.node_id not in role:
        return f"member {cc.node_id:#x} changed role or left before its update applied"
    return None


def context_deny(cc: ConfChange) -> tuple[str, ...]:
    """The certificate serials a removal puts on the deny list."""
    return _serials(_context(cc).get("deny"))


def context_origin(cc: ConfChange) -> tuple[int, int] | None:
    origin = _context(cc).get("origin")
    if (isinstance(origin, list) and len(origin) == 2
            and all(type(v) is int and v >= 0 for v in origin)):
        return origin[0], origin[1]
    return None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member as `Store.members()` reports it. `behind`: how many entries it lacks of the
    leader's log (known on the leader, and asked of it elsewhere; None when unknown)."""

    name: str
    id: int
    address: str
    voter: bool
    leader: bool
    behind: int | None


@dataclass(frozen=True, slots=True)
class JoinReply:
    cluster_id: int
    token: str
    member_id: int  # the joiner's id in the cluster
    members: dict[int, PeerInfo]


def _parse_join_reply(body: object) -> JoinReply:
    bad = Unavailable(f"a malformed answer to a join request: {body!r:.200}")
    if not isinstance(body, dict):
        raise bad
    cluster_id, token, member_id = body.get("cluster_id"), body.get("token"), body.get("id")
    rows = body.get("members")
    if (type(cluster_id) is not int or cluster_id <= 0 or not isinstance(token, str)
            or type(member_id) is not int or not 0 < member_id <= MAX_ID
            or not isinstance(rows, list)):
        raise bad
    try:
        members = members_from_rows(rows)
    except CorruptData:
        raise bad from None
    return JoinReply(cluster_id, token, member_id, members)


def join_cluster(
    addresses: list[str], *, name: str, listen: str, member_id: int, timeout: float,
    token: str | None = None, tls: Credentials | None = None, advertise: str | None = None,
) -> JoinReply:
    """Ask the members at `addresses`, in turn, to add this one as a learner, reached at
    `advertise` (default: `listen`, or when that takes every address the local address of
    the route to the member asked); returns the cluster's identity and directory.
    Unavailable if none of them could. With TLS the member answering must present a
    certificate naming a member of the directory it answers."""

    async def ask() -> JoinReply:
        transport = PeerTransport(
            member_id=member_id, cluster="", listen=listen, peers={},
            on_message=lambda m: None, report_unreachable=lambda p: None,
            on_peer_lost=lambda p: None, report_snapshot=lambda p, ok: None, tls=tls,
        )
        errors = []
        try:
            for address in addresses:
                try:
                    mine = advertise or route_source(address, listen)
                    body = await transport.call(
                        address, "join",
                        {"name": name, "address": mine, "id": member_id, "token": token},
                        timeout=timeout,
                    )
                    reply = _parse_join_reply(body)
                except Exception as exc:
                    errors.append(f"{address}: {exc}")
                    continue
                peer = transport.identities.get(address)
                if tls is not None and (peer is None or peer.name not in {
                        m.name for m in reply.members.values()}):
                    errors.append(f"{address}: its certificate names "
                                  f"{peer.name if peer else 'nobody'}, no member of the "
                                  "cluster it answered for")
                    continue
                return reply
        finally:
            await transport.close()
        raise Unavailable("could not join through any of " + "; ".join(errors))

    return asyncio.run(ask())


# --- opening: founding, joining, growing, restarting ------------------------------------


def random_id() -> int:
    """A random positive int64 (cluster, member and lease ids, as in etcd)."""
    return _ids.randint(1, MAX_ID)


def new_identity() -> Identity:
    """A new cluster with a new member (a fresh data dir, or a restored backup)."""
    return Identity(random_id(), random_id())


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """What `open` was told about the cluster (all None: a one-member store, as before)."""

    name: str | None = None
    listen: str | None = None
    peers: Mapping[str, str] | None = None
    token: str | None = None
    join: Sequence[str] | None = None
    tls: TLS | str | os.PathLike[str] | None = None
    insecure: bool = False

    @property
    def wanted(self) -> bool:
        return any(v is not None for v in (self.name, self.listen, self.peers, self.join))


SECURITY_HINT = (
    "give tls= (a directory with ca.pem, NAME.pem and NAME.key, made with `embedkv certs "
    "init DIR` and `embedkv certs issue DIR NAME`, or embedkv.TLS(ca=, cert=, key=)), or "
    "insecure=True to accept that anyone who can reach the peer port can read, write or "
    "join this store (README \"Security\")"
)


def check_cluster_options(opts: ClusterOptions) -> None:
    """Every cluster option checked before anything is created or changed."""
    if opts.tls is not None and not isinstance(opts.tls, TLS | str | os.PathLike):
        raise TypeError("tls must be a certificate directory or an embedkv.TLS, not "
                        f"{type(opts.tls).__name__}")
    if opts.tls is not None and opts.insecure:
        raise ValueError("give tls= or insecure=True, not both")
    if (opts.listen is not None or opts.peers is not None or opts.join is not None) and not (
            opts.tls is not None or opts.insecure):
        raise ValueError(f"peer links need mutual TLS: {SECURITY_HINT}")
    if opts.name is not None:
        check_name(opts.name)
    if opts.listen is not None:
        check_address(opts.listen, "listen")
    if opts.token is not None and (not isinstance(opts.token, str) or not 0 < len(opts.token)
                                   <= 256):
        raise ValueError(f"cluster must be a token of 1 to 256 characters, not {opts.token!r}")
    if opts.peers is not None:
        if not isinstance(opts.peers, Mapping) or not opts.peers:
            raise TypeError("peers must be a non-empty dict of member name -> 'host:port'")
        for n, a in opts.peers.items():
            check_name(n)
            check_address(a, f"the address of {n}")
        if len(set(opts.peers.values())) != len(opts.peers):
            raise ValueError("two peers share one address")
    if opts.join is not None:
        if isinstance(opts.join, str) or not opts.join:
            raise TypeError("join must be a non-empty list of 'host:port' addresses")
        for a in opts.join:
            check_address(a, "a join address")
        if opts.peers is not None:
            raise ValueError("give peers (to found a cluster) or join (to join one), not both")


def local_info(opts: ClusterOptions, token: str | None, tls: TLSFiles | None) -> LocalInfo:
    if opts.listen is None:
        raise ValueError("a clustered member needs listen='host:port' (its peer address)")
    return LocalInfo(opts.name or "default", opts.listen,
                     token or opts.token or secrets.token_hex(16), tls)


# --- TLS: which files, checked before anything is written ---------------------------------


@dataclass(frozen=True, slots=True)
class Security:
    """How a member's peer links are secured: its TLS files and live credentials, or neither
    (plain TCP, chosen with insecure=True)."""

    files: TLSFiles | None = None
    credentials: Credentials | None = None


def resolve_security(opts: ClusterOptions, local: LocalInfo | None) -> tuple[ClusterOptions,
                                                                             Security]:
    """The TLS a member opens with: `tls=` if given (a directory needs the member's name:
    name=, the one the data dir holds, or the only member whose files it holds), else what
    the data dir persisted. Its certificate
    must name this member; a member that ran over TLS is never reopened without it. Returns
    the options (name= filled from the certificate if it was not given) and the security."""
    if opts.tls is None:
        if local is not None and local.tls is not None:
            if opts.insecure:
                raise ValueError(f"member {local.name!r} runs over TLS: it is never reopened "
                                 "with insecure=True (its peers would refuse it anyway)")
            files = local.tls
            try:
                creds = Credentials(TLS(files.ca, files.cert, files.key))
            except (CertificateError, OSError) as exc:
                raise CertificateError(
                    f"member {local.name!r} runs over mutual TLS with the files it was "
                    f"opened with ({files.ca}, {files.cert}, {files.key}), and they cannot "
                    f"be used: {exc}. Pass tls= with where they are now") from None
            _check_cert_name(creds, local.name)
            return opts, Security(files, creds)
        return opts, Security()
    name = opts.name if opts.name is not None else (local.name if local is not None else None)
    if isinstance(opts.tls, TLS):
        tls = opts.tls
    else:
        tls = TLS.from_dir(opts.tls, check_name(name if name is not None
                                                else only_member(opts.tls)))
    files = TLSFiles(*(os.path.abspath(p) for p in (tls.ca, tls.cert, tls.key)))
    creds = Credentials(TLS(files.ca, files.cert, files.key))
    if name is None:
        opts = dataclasses.replace(opts, name=creds.name)
    else:
        _check_cert_name(creds, name)
    return opts, Security(files, creds)


def only_member(directory: str | os.PathLike[str]) -> str:
    """The one member whose pair (NAME.pem and NAME.key) a certificate directory holds, as on
    a machine given only its own; ValueError if it holds none or several (name= picks)."""
    d = os.fspath(directory)
    try:
        files = set(os.listdir(d))
    except OSError as exc:
        raise CertificateError(f"cannot read the certificate directory {d}: {exc}") from None
    names = sorted(f[:-4] for f in files
                   if f.endswith(".pem") and f != CA_CERT and f[:-4] + ".key" in files)
    if len(names) != 1:
        held = f"the files of {', '.join(names)}" if names else "no member's NAME.pem and NAME.key"
        raise ValueError(f"tls={d!r} holds {held}: give name= to say which member this is")
    return names[0]


def _check_cert_name(creds: Credentials, name: str) -> None:
    if creds.name != name:
        raise CertificateError(f"{creds.tls.cert} is the certificate of member {creds.name!r}, "
                               f"not of {name!r}")


def bootstrap_founder(dd: DataDir, opts: ClusterOptions, security: Security) -> None:
    """A founding member: the same `peers` on every founder give the same ids and cluster."""
    peers = dict(opts.peers or {})
    if opts.name is None:
        raise ValueError("a founding member needs name= (one of the peers)")
    if opts.name not in peers:
        raise ValueError(f"name {opts.name!r} is not one of the peers {sorted(peers)}")
    if opts.token is None:
        raise ValueError("founding a cluster needs cluster='token': it keeps two clusters "
                         "with the same addresses apart")
    listen = opts.listen if opts.listen is not None else peers[opts.name]
    token = opts.token
    ids = {n: founder_id(token, n) for n in peers}
    members = {ids[n]: PeerInfo(n, a) for n, a in peers.items()}
    identity = Identity(cluster_id_for(token, peers), ids[opts.name])
    dd.bootstrap(identity, ConfState(voters=frozenset(ids.values())), members=members,
                 local=LocalInfo(opts.name, listen, token, security.files))


def bootstrap_joiner(dd: DataDir, opts: ClusterOptions, timeout: float,
                     security: Security, advertise: str | None = None) -> None:
    """A fresh member asks a running one to add it (as a learner, promoted once caught up),
    reached at `advertise` (see `join_cluster`)."""
    if opts.name is None or opts.listen is None:
        raise ValueError("joining a cluster needs name= and listen=")
    member_id = random_id()
    reply = join_cluster(list(opts.join or ()), name=opts.name, listen=opts.listen,
                         member_id=member_id, timeout=timeout, token=opts.token,
                         tls=security.credentials, advertise=advertise)
    # An empty configuration: the leader's log (or snapshot) brings the real one. The id is
    # ours, or the one add_member gave this name and address beforehand.
    dd.bootstrap(Identity(reply.cluster_id, reply.member_id), ConfState(), members=reply.members,
                 local=LocalInfo(opts.name, opts.listen, reply.token, security.files))


def check_reopen(dd: DataDir, opts: ClusterOptions, security: Security) -> None:
    """A dir with data: options given again must agree with what it persisted."""
    local = dd.local
    if opts.join is not None:
        raise ValueError(f"{dd.path} already holds a member: join is only for a fresh dir")
    if local is None:
        if opts.peers is not None and set(opts.peers) != {opts.name or "default"}:
            raise ValueError(f"{dd.path} holds a one-member store: it cannot found a cluster "
                             "with other peers; open it with listen= and join the others to it")
        if opts.wanted:
            # grows: it takes joins from now on
            dd.set_local(local_info(opts, None, security.files))
        return
    if opts.name is not None and opts.name != local.name:
        raise ValueError(f"{dd.path} holds member {local.name!r}, not {opts.name!r}")
    if opts.token is not None and opts.token != local.token:
        raise ValueError(f"{dd.path} belongs to another cluster (its token differs)")
    if opts.peers is not None:
        known = {info.name: info.address for info in dd.members().values()}
        for n, a in opts.peers.items():
            if n == local.name and opts.listen is not None:
                continue
            if known.get(n) != a:
                raise ValueError(
                    f"peers disagree with the membership {dd.path} holds: {n!r} is "
                    f"{known.get(n)!r} there, not {a!r} (give only the path to restart)")
    listen = opts.listen if opts.listen is not None else local.listen
    if (listen, security.files) != (local.listen, local.tls):
        # a new address, or TLS files given: from now on the member runs with these
        dd.set_local(LocalInfo(local.name, listen, local.token, security.files))


# --- the links -------------------------------------------------------------------------------


class Links:
    """The member's side of the peer transport; every method runs on the engine loop."""

    def __init__(
        self,
        *,
        dd: DataDir,
        writer: LogWriter,
        node: Callable[[], RaftNode],
        member_id: int,
        token: str,
        listen: str,
        tick_interval: float,
        handlers: Mapping[str, Handler],
        security: Security | None = None,
    ) -> None:
        self._dd = dd
        self._writer = writer
        self._node = node
        self._me = member_id
        self._tick = tick_interval
        self._handlers = dict(handlers)
        self._rng = random.Random()
        self._campaign: asyncio.TimerHandle | None = None
        self._reload: asyncio.Task[None] | None = None
        self.tls = security.credentials if security is not None else None
        peers = {mid: info.address for mid, info in dd.members().items() if mid != member_id}
        self.transport = PeerTransport(
            member_id=member_id,
            cluster=token,
            listen=listen,
            peers=peers,
            on_message=self._on_message,
            report_unreachable=self._report_unreachable,
            on_peer_lost=self._on_peer_lost,
            report_snapshot=self._report_snapshot,
            tls=self.tls,
            member_name=self._name_of,
            revoked=lambda serial: serial in dd.denied,
            removed=lambda mid: mid in dd.removed,
            on_removed=lambda peer, _: self.told_removed(peer, "it refused our link"),
        )
        self.transport.on_call = self._on_call

    def _name_of(self, member_id: int) -> str | None:
        info = self._dd.members().get(member_id)
        return None if info is None else info.name

    async def start(self) -> None:
        await self.transport.start()
        if self.tls is not None:
            self._reload = asyncio.get_running_loop().create_task(self._reload_tls())

    async def _reload_tls(self) -> None:
        """Renewed certificate files are also picked up while no connection is made (the
        listener's next handshakes use them): look at them every second."""
        while True:
            await asyncio.sleep(TLS_RELOAD_INTERVAL)
            self.transport.refresh_tls()

    async def close(self) -> None:
        if self._campaign is not None:
            self._campaign.cancel()
        if self._reload is not None:
            self._reload.cancel()
        await self.transport.close()

    def serials_seen(self, member_id: int) -> tuple[str, ...]:
        """The certificate serials this member knows for `member_id`: those in the directory
        and the one its peer links last saw (this member's own, for itself)."""
        info = self._dd.members().get(member_id)
        known = info.serials if info is not None else ()
        if member_id == self._me:
            current = self.tls.serial if self.tls is not None else None
        else:
            peer = self.transport.identities.get(member_id)
            current = peer.serial if peer is not None else None
        return known + ((current,) if current is not None and current not in known else ())

    def unrecorded_serial(self) -> tuple[int, str] | None:
        """A member of the configuration (this one included) whose current certificate's
        serial the directory does not hold yet: the leader records it, so that removing that
        member later revokes that certificate everywhere."""
        if self.tls is None:
            return None
        conf = self._dd.conf_state
        members = self._dd.members()
        for mid in sorted(conf.voters | conf.learners):
            info = members.get(mid)
            if info is None:
                continue
            if mid == self._me:
                serial: str | None = self.tls.serial
            else:
                peer = self.transport.identities.get(mid)
                serial = peer.serial if peer is not None and peer.name == info.name else None
            if serial is not None and serial not in info.serials:
                return mid, serial
        return None

    # --- out --------------------------------------------------------------------------

    def send(self, messages: list[Message]) -> None:
        """Messages of a Ready; a snapshot goes on a stream of its own, read from LMDB."""
        rest = []
        for m in messages:
            if m.type is MessageType.SNAP:
                task = asyncio.get_running_loop().create_task(self._send_snapshot(m))
                task.add_done_callback(log_outcome("sending a snapshot", logging.ERROR))
            else:
                rest.append(m)
        if rest:
            self.transport.send(rest)

    async def _send_snapshot(self, m: Message) -> None:
        """The core asked for a snapshot as of its applied index; the stream is taken now, in
        one read transaction, and the message carries that stream's own point (index, term,
        membership), never the one the core saw: the two may differ by the entries applied
        meanwhile, and the follower must install exactly what it receives."""
        loop = asyncio.get_running_loop()
        try:
            meta, chunks = await loop.run_in_executor(None, self._dd.snapshot_stream)
        except Exception as exc:
            log.warning("cannot take a snapshot for member %#x: %s", m.to, exc)
            self._report_snapshot(m.to, False)
            return
        out = Message(MessageType.SNAP, to=m.to, from_=m.from_, term=m.term,
                      snapshot=Snapshot(meta))
        log.info("streaming a snapshot at index %d to member %#x", meta.index, m.to)
        self.transport.send_snapshot(out, chunks)

    def follow(self, members: Mapping[int, PeerInfo]) -> None:
        """The directory changed: dial new members at their addresses, forget removed ones."""
        wanted = {mid: info.address for mid, info in members.items() if mid != self._me}
        transport = self.transport
        for mid in list(transport.peers):
            if mid not in wanted:
                transport.remove_peer(mid)
        for mid, address in wanted.items():
            if transport.peers.get(mid) != address:
                transport.set_peer(mid, address)

    def notify_removed(self, member_id: int, index: int) -> None:
        """Tell a member we just removed that it is out: the leader stops sending to it once
        the removal is applied, so it may never learn that the entry committed (etcd answers
        such a member's messages with "removed"). Best effort; its address is still known
        here, because `follow` runs after this."""
        address = self.transport.peers.get(member_id)
        if address is None:
            return
        task = asyncio.get_running_loop().create_task(  # its certificate is revoked by now
            self.transport.call(address, "removed", index, timeout=5.0, revoked_ok=True))
        task.add_done_callback(log_outcome("telling a removed member"))

    # --- in ---------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        self._writer.submit(msg)

    def told_removed(self, peer: int, how: str) -> None:
        """`peer` says this member was removed: it applied the removal and called us, or it
        refused our link (we were down when the removal committed). Believe a member of our
        own configuration, and stop serving."""
        conf = self._dd.conf_state
        if peer in conf.voters | conf.learners:
            self._writer.submit(Removal(f"member {self._me:#x} was removed from its cluster "
                                        f"(told by {peer:#x}: {how})"))

    def _report_unreachable(self, peer: int) -> None:
        self._writer.submit(NodeCall(lambda n: n.report_unreachable(peer)))

    def _report_snapshot(self, peer: int, ok: bool) -> None:
        self._writer.submit(NodeCall(lambda n: n.report_snapshot(peer, ok)))

    def _on_peer_lost(self, peer: int) -> None:
        """The leader's kernel closed our link: its process is gone. Forget it and campaign
        soon, after a random fraction of a few ticks so that the followers which all saw it
        do not split the vote (PreVote keeps an early campaign harmless)."""
        if peer != self._node().leader:
            return
        log.info("the leader %#x closed its link: starting an election", peer)
        self._writer.submit(NodeCall(lambda n: n.forget_leader()))
        if self._campaign is not None:
            self._campaign.cancel()
        delay = self._rng.uniform(0, 3 * self._tick)
        self._campaign = asyncio.get_running_loop().call_later(delay, self._campaign_now)

    def _campaign_now(self) -> None:
        self._campaign = None

        def campaign(n: RaftNode) -> None:
            if n.leader == NONE and n.role is Role.FOLLOWER:
                n.campaign()

        self._writer.submit(NodeCall(campaign))

    async def _on_call(self, caller: int, method: str, body: Any) -> Any:
        handler = self._handlers.get(method)
        if handler is None:
            raise ValueError(f"unknown call {method!r}")
        return await handler(caller, body)

    async def call(self, target: int | str, method: str, body: Any, timeout: float) -> Any:
        return await self.transport.call(target, method, body, timeout=timeout)

    # --- the leader's chores ----------------------------------------------------------

    def learners_to_promote(self) -> list[int]:
        """Learners that joined to become voters and have caught up (leader only)."""
        node = self._node()
        if node.role is not Role.LEADER:
            return []
        status = node.status()
        members = self._dd.members()
        ready = []
        for mid in status.conf_state.learners:
            info = members.get(mid)
            pr = status.progress.get(mid)
            if (info is not None and info.promote and pr is not None
                    and pr.state is ProgressState.REPLICATE
                    and pr.match + PROMOTE_SLACK >= status.commit):
                ready.append(mid)
        return ready


def log_outcome(what: str, level: int = logging.DEBUG) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback for a task nobody awaits: its failure is logged (as `what` failed),
    never left as an unretrieved exception."""

    def done(task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            exc = task.exception()
            if exc is not None:
                log.log(level, "%s failed: %s", what, exc,
                        exc_info=exc if level >= logging.ERROR else None)

    return done
