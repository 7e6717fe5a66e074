"""Clustering over mutual TLS, in-process members on 127.0.0.1: open(tls=) and what the data dir
remembers, and hostile peers refused at a member's peer port (another CA, expired, not yet
valid, naming another member, revoked, plain TCP, TLS 1.2), each with a log line naming the
reason, while the cluster keeps committing writes."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

import embedkv
from embedkv.member.cluster import join_cluster, random_id
from embedkv.net import tls
from embedkv.net.frames import FrameDecoder, Hello, Purpose, Refused, encode
from embedkv.net.tls import TLS, Credentials

from .ports import free_port
from .test_cluster_open import FAST, peers_of
from .waiting import wait_for

TOKEN = "tls-test"
DAY = datetime.timedelta(days=1)


def make_certs(d: Path, *names: str) -> Path:
    tls.init_ca(d)
    for name in names:
        tls.issue(d, name, ips=["127.0.0.1"])
    return d


class Members:
    """Three founders over TLS in this process, and the certificates of strangers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = make_certs(root / "certs", "n1", "n2", "n3", "n4")
        self.peers = peers_of("n1", "n2", "n3")
        self.stores = {n: embedkv.open(root / n, name=n, listen=a, peers=self.peers,
                                       cluster=TOKEN, tls=self.certs, **FAST)
                       for n, a in self.peers.items()}
        wait_for(lambda: all(s.leader for s in self.stores.values()), what="a leader")
        self.writes = 0

    def ids(self) -> dict[str, int]:
        return {m.name: m.id for m in self.stores["n1"].members()}

    def serves(self) -> None:
        """A write through one member is read back linearizably through another."""
        self.writes += 1
        key = f"still/{self.writes}"
        self.stores["n1"][key] = self.writes
        assert self.stores["n3"][key] == self.writes

    def close(self) -> None:
        for s in self.stores.values():
            s.close()


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Members]:
    m = Members(tmp_path_factory.mktemp("tls"))
    try:
        yield m
    finally:
        m.close()


def client_context(certs: Path, name: str, *, ca: Path | None = None,
                   tls12: bool = False) -> ssl.SSLContext:
    """What a hostile peer dials with: `name`'s certificate from `certs`, trusting `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca or certs / "ca.pem")
    ctx.load_cert_chain(certs / f"{name}.pem", certs / f"{name}.key")
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def attempt(address: str, ctx: ssl.SSLContext | None, hello: Hello) -> str:
    """Dial `address` (TLS with `ctx`, plain TCP without), send `hello`, and say what came
    back: "refused: reason", "closed", or the exception that ended it."""
    host, port = address.rsplit(":", 1)

    async def go() -> str:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=ctx), 10)
        except (OSError, TimeoutError) as exc:
            return f"failed: {exc!r}"
        try:
            writer.write(encode(hello))
            decoder = FrameDecoder(1 << 20)
            while True:
                data = await asyncio.wait_for(reader.read(4096), 10)
                if not data:
                    return "closed"
                for frame in decoder.feed(data):
                    if isinstance(frame, Refused):
                        return f"refused: {frame.reason}"
                    return f"answered: {frame!r}"
        except Exception as exc:
            return f"failed: {exc!r}"
        finally:
            writer.close()

    return asyncio.run(go())


def member_logged(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    """Wait until one warning of the embedkv.net logger holds every one of `texts`."""
    def found() -> bool:
        return any(r.levelno >= logging.WARNING and all(t in r.getMessage() for t in texts)
                   for r in caplog.records if r.name == "embedkv.net")

    wait_for(found, 10, f"a log line with {texts}")


@pytest.fixture
def netlog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="embedkv.net")
    return caplog


# --- refused at the peer port ----------------------------------------------------------------


def test_a_certificate_from_another_ca_is_refused(members: Members, tmp_path: Path,
                                                  netlog: pytest.LogCaptureFixture) -> None:
    other = make_certs(tmp_path / "other", "n2")
    ids = members.ids()
    outcome = attempt(members.peers["n1"], client_context(other, "n2", ca=members.certs /
                                                          "ca.pem"),
                      Hello(ids["n2"], TOKEN, Purpose.RAFT))
    assert not outcome.startswith("answered"), outcome
    member_logged(netlog, "TLS handshake failed", "certificate verify failed")
    members.serves()


@pytest.mark.parametrize("when, reason", [("expired", "certificate has expired"),
                                          ("future", "certificate is not yet valid")])
def test_a_certificate_outside_its_validity_is_refused(
    members: Members, tmp_path: Path, netlog: pytest.LogCaptureFixture, when: str,
    reason: str,
) -> None:
    d = tmp_path / when
    d.mkdir()
    for f in ("ca.pem", "ca.key"):
        shutil.copy(members.certs / f, d / f)
    now = datetime.datetime.now(datetime.UTC)
    if when == "expired":
        tls.issue(d, "n2", not_before=now - 10 * DAY, not_after=now - DAY)
    else:
        tls.issue(d, "n2", not_before=now + DAY, not_after=now + 10 * DAY)
    outcome = attempt(members.peers["n1"], client_context(d, "n2"),
                      Hello(members.ids()["n2"], TOKEN, Purpose.RAFT))
    assert not outcome.startswith("answered"), outcome
    member_logged(netlog, "TLS handshake failed", reason)
    members.serves()


def test_a_certificate_naming_another_member_is_refused(
    members: Members, netlog: pytest.LogCaptureFixture
) -> None:
    ids = members.ids()
    outcome = attempt(members.peers["n1"], client_context(members.certs, "n2"),
                      Hello(ids["n3"], TOKEN, Purpose.RAFT))  # n2's certificate, n3's id
    reason = f"the certificate names n2 but the hello claims member {ids['n3']} (n3)"
    assert outcome == f"refused: {reason}"
    member_logged(netlog, "refused a connection", reason)
    members.serves()


def test_plain_tcp_is_refused(members: Members, netlog: pytest.LogCaptureFixture) -> None:
    outcome = attempt(members.peers["n1"], None, Hello(members.ids()["n2"], TOKEN,
                                                       Purpose.RAFT))
    assert not outcome.startswith("answered"), outcome
    member_logged(netlog, "TLS handshake failed", "wrong version number")
    members.serves()


def test_a_tls12_client_is_refused(members: Members, netlog: pytest.LogCaptureFixture) -> None:
    outcome = attempt(members.peers["n1"], client_context(members.certs, "n2", tls12=True),
                      Hello(members.ids()["n2"], TOKEN, Purpose.RAFT))
    assert not outcome.startswith("answered"), outcome
    member_logged(netlog, "TLS handshake failed", "unsupported protocol")
    members.serves()


def test_a_joiner_gets_its_name_from_its_certificate(members: Members, tmp_path: Path,
                                                     netlog: pytest.LogCaptureFixture) -> None:
    creds = Credentials(TLS.from_dir(members.certs, "n4"))
    with pytest.raises(embedkv.Unavailable,
                       match="the certificate names n4 but the join asks for member n5"):
        join_cluster([members.peers["n2"]], name="n5", listen=f"127.0.0.1:{free_port()}",
                     member_id=random_id(), timeout=10, tls=creds)
    assert "n5" not in {m.name for m in members.stores["n1"].members()}
    members.serves()


def test_the_leader_records_every_members_certificate_serial(members: Members) -> None:
    """Founders' serials are known to nobody at bootstrap: the leader records each one it
    sees (its own included) in the replicated directory, so that a removal can revoke it."""
    ids = members.ids()
    want = {ids[n]: Credentials(TLS.from_dir(members.certs, n)).serial for n in members.peers}

    def recorded() -> bool:
        return all(all(serial in s._m.data_dir.members()[mid].serials
                       for mid, serial in want.items())
                   for s in members.stores.values())

    wait_for(recorded, 10, "every founder's serial in every member's directory")


def test_a_removed_members_certificate_is_refused_everywhere(
    members: Members, netlog: pytest.LogCaptureFixture
) -> None:
    """n4 joins over TLS (its serial is recorded at the join), is removed, and its
    certificate can neither rejoin nor speak as n4 on any member."""
    n4 = embedkv.open(members.root / "n4", name="n4", listen=f"127.0.0.1:{free_port()}",
                      join=[members.peers["n1"]], tls=members.certs, **FAST)
    try:
        serial = Credentials(TLS.from_dir(members.certs, "n4")).serial
        wait_for(lambda: {m.name: m.voter for m in members.stores["n1"].members()}.get("n4"),
                 what="n4 promoted")
        members.stores["n2"].remove_member("n4")
        wait_for(lambda: all(serial in s._m.data_dir.denied for s in members.stores.values()),
                 what="n4's serial denied on every member")
        with pytest.raises(embedkv.Unavailable):  # told it is out, though revoked
            wait_for(lambda: n4.put("from/n4", 1) and False, 10, "n4 to fail")
    finally:
        n4.close()
    creds = Credentials(TLS.from_dir(members.certs, "n4"))
    for address in members.peers.values():
        with pytest.raises(embedkv.Unavailable, match="revoked"):
            join_cluster([address], name="n4", listen=f"127.0.0.1:{free_port()}",
                         member_id=random_id(), timeout=10, tls=creds)
        member_logged(netlog, "refused a connection", f"the certificate of n4 (serial "
                      f"{serial}) is revoked")
        netlog.clear()
    members.serves()


# --- opening ------------------------------------------------------------------------------


@pytest.mark.parametrize("option", [{"listen": "127.0.0.1:7400"},
                                    {"peers": {"n1": "127.0.0.1:7400"}, "name": "n1"},
                                    {"join": ["127.0.0.1:7400"], "name": "n2"}])
def test_clustering_without_tls_says_how_to_make_certificates(tmp_path: Path,
                                                              option: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="mutual TLS") as err:
        embedkv.open(tmp_path / "d", **option)  # type: ignore[arg-type]
    assert "embedkv certs init DIR" in str(err.value)
    assert "embedkv certs issue DIR NAME" in str(err.value)
    assert "insecure=True" in str(err.value)
    with pytest.raises(ValueError, match="not both"):
        embedkv.open(tmp_path / "d", tls=tmp_path, insecure=True, **option)  # type: ignore
    assert not (tmp_path / "d").exists()


def test_a_tls_member_restarts_with_its_path_and_never_without_tls(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", "n1", "n2")
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(tls.CertificateError, match="certificate of member 'n2', not of 'n1'"):
        embedkv.open(tmp_path / "d", name="n1", listen=address,
                     tls=TLS(str(certs / "ca.pem"), str(certs / "n2.pem"),
                             str(certs / "n2.key")))
    with embedkv.open(tmp_path / "d", name="n1", listen=address, tls=certs, **FAST) as s:
        s["k"] = 1
    with embedkv.open(tmp_path / "d", **FAST) as s:  # the path alone: still TLS
        assert s["k"] == 1
        recorded = s._m.data_dir.local
        assert recorded is not None and recorded.tls is not None
        assert recorded.tls.cert == os.path.abspath(certs / "n1.pem")
    with pytest.raises(ValueError, match="never reopened with insecure=True"):
        embedkv.open(tmp_path / "d", insecure=True, **FAST)
    moved = tmp_path / "moved"
    os.rename(certs, moved)
    with pytest.raises(tls.CertificateError, match="Pass tls= with where they are now"):
        embedkv.open(tmp_path / "d", **FAST)
    with embedkv.open(tmp_path / "d", tls=moved, **FAST) as s:
        assert s["k"] == 1
    with embedkv.open(tmp_path / "d", **FAST) as s:  # the new place is remembered
        recorded = s._m.data_dir.local
        assert recorded is not None and recorded.tls is not None
        assert recorded.tls.ca == os.path.abspath(moved / "ca.pem")


def test_a_name_can_come_from_the_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", "n7")
    files = TLS(str(certs / "ca.pem"), str(certs / "n7.pem"), str(certs / "n7.key"))
    port = free_port()
    with embedkv.open(tmp_path / "d", listen=f"127.0.0.1:{port}", tls=files, **FAST) as s:
        assert s.name == "n7"


def test_open_async_takes_tls(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", "n1")

    async def go() -> None:
        async with embedkv.open_async(tmp_path / "d", name="n1",
                                      listen=f"127.0.0.1:{free_port()}", tls=certs,
                                      **FAST) as s:
            await s.put("k", 1)
            assert s.store._m.data_dir.local.tls is not None  # type: ignore[union-attr]

    asyncio.run(go())
    with pytest.raises(ValueError, match="mutual TLS"):
        embedkv.open_async(tmp_path / "e", name="n1", listen=f"127.0.0.1:{free_port()}")



def test_a_joiner_refuses_an_answer_from_a_certificate_outside_the_cluster(
    tmp_path: Path,
) -> None:
    """The member a joiner dials by address must present a certificate naming a member of
    the directory it answers with: a stranger holding some member certificate of the CA
    cannot hand the joiner a cluster of its own making."""
    import threading

    from embedkv.net import PeerTransport

    certs = make_certs(tmp_path / "certs", "n1", "n9")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def forged(caller: int, method: str, body: object) -> object:
        return {"cluster_id": 1, "token": "t", "id": caller,
                "members": [[caller, "n1", "127.0.0.1:1", True], [5, "n5", "127.0.0.1:2", False]]}

    async def serve() -> PeerTransport:
        t = PeerTransport(member_id=9, cluster="t", listen="127.0.0.1:0", peers={},
                          on_message=lambda m: None, report_unreachable=lambda p: None,
                          on_peer_lost=lambda p: None, report_snapshot=lambda p, ok: None,
                          on_call=forged, tls=Credentials(TLS.from_dir(certs, "n9")))
        await t.start()
        return t

    stranger = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    try:
        address = f"127.0.0.1:{stranger.address[1]}"
        with pytest.raises(embedkv.Unavailable, match="its certificate names n9, no member"):
            join_cluster([address], name="n1", listen=f"127.0.0.1:{free_port()}",
                         member_id=random_id(), timeout=10,
                         tls=Credentials(TLS.from_dir(certs, "n1")))
    finally:
        asyncio.run_coroutine_threadsafe(stranger.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
