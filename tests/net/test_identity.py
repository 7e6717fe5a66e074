"""Mutual TLS on the transport: the certificate's member name must match the member a peer
speaks for, both ways; revoked serials are refused both ways; renewed certificates and a CA
bundle are picked up on the next connection. Real handshakes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from embedkv.errors import Unavailable
from embedkv.net import tls
from embedkv.net.tls import TLS, Credentials
from embedkv.net.transport import caller_identity

from .test_transport import Node, close, msg, run, until

NAMES = {1: "n1", 2: "n2", 3: "n3"}
LONG = 30.0


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    tls.init_ca(d)
    for name in NAMES.values():
        tls.issue(d, name)
    return d


def creds(certs: Path, name: str) -> Credentials:
    return Credentials(TLS.from_dir(certs, name))


async def pair(certs: Path, as1: str = "n1", as2: str = "n2",
               **kw: Any) -> tuple[Node, Node]:
    """Node 1 and node 2 with mutual TLS, node 1 using `as1`'s certificate and node 2
    `as2`'s; each looks peers up in NAMES. Node 2 listens; node 1 dials it."""
    b = await Node(2).start({}, tls=creds(certs, as2), member_name=NAMES.get,
                            **kw.get("kw2", {}))
    a = await Node(1).start({2: f"127.0.0.1:{b.port}"}, tls=creds(certs, as1),
                            member_name=NAMES.get, **kw.get("kw1", {}))
    return a, b


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


def test_members_of_one_ca_link_and_know_each_other(certs: Path) -> None:
    async def go() -> None:
        a, b = await pair(certs)
        try:
            a.transport.send([msg(1, 2, b"hello")])
            await until(lambda: b.bodies() == [b"hello"], "the message over TLS")
            assert b.transport.identities[1].name == "n1"
            assert a.transport.identities[2].name == "n2"
            assert a.transport.identities[2].serial == creds(certs, "n2").serial
        finally:
            await close([a, b])

    run(go)


@pytest.mark.parametrize("as1, as2, refusal", [
    # node 2 presents n3's certificate: node 1, dialing member 2 (n2), refuses it
    ("n1", "n3", "the certificate names n3 but member 2 is n2"),
    # node 1 presents n3's certificate with its own id 1 (n1): node 2 refuses its hello
    ("n3", "n2", "the certificate names n3 but the hello claims member 1 (n1)"),
], ids=["dialer", "listener"])
def test_a_certificate_naming_another_member_is_refused(
    certs: Path, caplog: pytest.LogCaptureFixture, as1: str, as2: str, refusal: str
) -> None:
    caplog.set_level(logging.INFO, logger="embedkv.net")

    async def go() -> None:
        a, b = await pair(certs, as1=as1, as2=as2)
        try:
            a.transport.send([msg(1, 2, b"secret")])
            await until(lambda: logged(caplog, refusal), "the refusal")
            assert b.got == []
        finally:
            await close([a, b])

    run(go)


def test_a_revoked_certificate_is_refused_both_ways(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="embedkv.net")
    n1, n2 = creds(certs, "n1").serial, creds(certs, "n2").serial

    async def go() -> None:
        # The listener knows n1's certificate as revoked.
        a, b = await pair(certs, kw2={"revoked": lambda s: s == n1})
        try:
            a.transport.send([msg(1, 2, b"from a removed member")])
            await until(lambda: logged(caplog, f"the certificate of n1 (serial {n1}) is "
                                               "revoked"), "the listener's refusal")
            assert b.got == []
        finally:
            await close([a, b])
        caplog.clear()
        # The dialer knows n2's certificate as revoked: it sends nothing there.
        a, b = await pair(certs, kw1={"revoked": lambda s: s == n2})
        try:
            a.transport.send([msg(1, 2, b"to a removed member")])
            await until(lambda: logged(caplog, f"refused member 2 at 127.0.0.1:{b.port}: the "
                                               f"certificate of n2 (serial {n2}) is revoked"),
                        "the dialer's refusal")
            assert b.got == []
            with pytest.raises(Unavailable, match="revoked"):
                await a.transport.call(2, "x", None, timeout=LONG)
            # ... except to tell a removed member that it is out.
            seen: list[object] = []

            async def handler(caller: int, method: str, body: object) -> object:
                seen.append(caller_identity())
                return None

            b.transport.on_call = handler
            await a.transport.call(f"127.0.0.1:{b.port}", "removed", 1, timeout=LONG,
                                   revoked_ok=True)
            assert seen == [tls.PeerIdentity("n1", creds(certs, "n1").serial)]
        finally:
            await close([a, b])

    run(go)


async def serial_seen(a: Node, b: Node) -> str:
    """The serial of node 2's certificate on a fresh call connection from node 1."""
    a.transport.remove_peer(2)  # drops the pooled call connection
    a.transport.set_peer(2, f"127.0.0.1:{b.port}")
    await a.transport.call(2, "ping", None, timeout=LONG)
    return a.transport.identities[2].serial


async def answer(caller: int, method: str, body: object) -> object:
    return None


def test_a_renewed_certificate_is_used_from_the_next_connection(certs: Path) -> None:
    async def go() -> None:
        a, b = await pair(certs)
        b.transport.on_call = answer
        try:
            first = await serial_seen(a, b)
            assert first == creds(certs, "n2").serial
            tls.issue(certs, "n2", renew=True)  # same CA, new key and serial
            assert (certs / "n2.key").stat().st_mode & 0o777 == 0o600
            renewed = creds(certs, "n2").serial
            assert renewed != first
            assert await serial_seen(a, b) == renewed
            tls.issue(certs, "n1", renew=True)  # the dialer's own, presented on its next dial
            await serial_seen(a, b)
            assert b.transport.identities[1].serial == creds(certs, "n1").serial
        finally:
            await close([a, b])

    run(go)


def test_ca_rollover_through_a_bundle(certs: Path, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """Old CA -> bundle (old + new) everywhere -> new certificates -> new CA alone: links
    keep working at every step, and once the old CA is gone its certificates are refused."""
    caplog.set_level(logging.INFO, logger="embedkv.net")
    new = tmp_path / "new"
    tls.init_ca(new)
    old_ca = (certs / "ca.pem").read_bytes()
    new_ca = (new / "ca.pem").read_bytes()

    async def go() -> None:
        d1, d2 = tmp_path / "m1", tmp_path / "m2"  # each member's own copy of its files
        for d, name in ((d1, "n1"), (d2, "n2")):
            d.mkdir()
            for f in ("ca.pem", f"{name}.pem", f"{name}.key"):
                shutil.copy(certs / f, d / f)
        b = await Node(2).start({}, tls=creds(d2, "n2"), member_name=NAMES.get)
        a = await Node(1).start({2: f"127.0.0.1:{b.port}"}, tls=creds(d1, "n1"),
                                member_name=NAMES.get)
        b.transport.on_call = answer
        try:
            await serial_seen(a, b)
            for d in (d1, d2):  # step 1: both trust both CAs
                (d / "ca.pem").write_bytes(old_ca + new_ca)
            await serial_seen(a, b)
            tls.issue(new, "n2")  # step 2: n2 gets its certificate from the new CA
            for f in ("n2.pem", "n2.key"):
                shutil.copy(new / f, d2 / f)
            assert await serial_seen(a, b) == creds(new, "n2").serial  # n1 trusts it
            assert b.transport.identities[1].name == "n1"  # n2 still trusts n1's old one
            (d2 / "ca.pem").write_bytes(new_ca)  # step 3: n2 drops the old CA
            caplog.clear()
            a.transport.remove_peer(2)
            a.transport.set_peer(2, f"127.0.0.1:{b.port}")
            with pytest.raises(Unavailable):
                await a.transport.call(2, "ping", None, timeout=LONG)
            await until(lambda: logged(caplog, "TLS handshake failed"), "n2's refusal")
            tls.issue(new, "n1")  # n1 moves to the new CA too: the link is back
            for f in ("n1.pem", "n1.key"):
                shutil.copy(new / f, d1 / f)
            (d1 / "ca.pem").write_bytes(new_ca)
            assert await serial_seen(a, b) == creds(new, "n2").serial
        finally:
            await close([a, b])

    run(go)


def test_certs_issue_renew_replaces_the_pair(certs: Path) -> None:
    from .test_tls import cli

    before = creds(certs, "n1").serial
    assert cli("certs", "issue", str(certs), "n1")[0] == 1  # never replaced by accident
    code, out = cli("certs", "issue", str(certs), "n1", "--renew")
    assert code == 0 and "Renewed" in out
    assert creds(certs, "n1").serial != before
    assert (certs / "n1.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        ["ca.pem", "ca.key"] + [f"{n}.{e}" for n in NAMES.values() for e in ("pem", "key")])



def test_a_tls_connection_closed_by_its_peer_ends_without_an_asyncio_warning(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An accepted connection turns TLS only after accept (start_tls): its protocol must not
    # ask to keep a TLS stream the peer closed half-open, which asyncio logs as a warning
    # (on stderr, in a program without logging set up).
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def go() -> None:
        b = await Node(2).start({}, tls=creds(certs, "n2"), member_name=NAMES.get)
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", b.port, ssl=tls.client_context(certs, "n1"),
                server_hostname="127.0.0.1")
            await until(lambda: b.transport._inbound, "node 2 to accept the connection")
            writer.close()  # close_notify, then EOF
            await writer.wait_closed()
            await until(lambda: not b.transport._inbound, "node 2 to see it end")
        finally:
            await close([b])

    run(go)
    assert not logged(caplog, "eof_received")
