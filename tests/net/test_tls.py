"""Certificates and TLS 1.3 contexts (embedkv.net.tls): files, SANs, real handshakes on
127.0.0.1, and the `embedkv certs` commands."""

from __future__ import annotations

import datetime
import io
import json
import os
import socket
import ssl
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from embedkv.cli import main
from embedkv.net import tls
from embedkv.net.tls import TLS, CertificateError

TIMEOUT = 10.0


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    tls.init_ca(d)
    tls.issue(d, "n1", ips=["127.0.0.1"])
    tls.issue(d, "n2", dns=["n2.example"])
    return d


# --- files ---------------------------------------------------------------------------------


def test_init_ca_writes_key_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    ca = tls.init_ca(tmp_path / "c")
    assert ca == str(tmp_path / "c" / "ca.pem")
    assert mode(tmp_path / "c" / "ca.key") == 0o600
    before = (tmp_path / "c" / "ca.key").read_bytes()
    with pytest.raises(CertificateError, match="already exists"):
        tls.init_ca(tmp_path / "c")
    assert (tmp_path / "c" / "ca.key").read_bytes() == before


def test_issue_writes_key_0600_with_member_name_and_sans(certs: Path) -> None:
    assert mode(certs / "n1.key") == 0o600
    cert = tls.load_certificates(certs / "n1.pem")[0]
    assert tls.member_name(cert) == "n1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert tls.member_name(tls.load_certificates(certs / "ca.pem")[0]) is None
    n2 = tls.load_certificates(certs / "n2.pem")[0]
    assert n2.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["n2.example"]


@pytest.mark.parametrize("name", ["", "a/b", "n 1", "é", "ca", ".hidden", "x" * 65])
def test_issue_refuses_bad_names(certs: Path, name: str) -> None:
    before = sorted(os.listdir(certs))
    with pytest.raises(CertificateError, match="name"):
        tls.issue(certs, name)
    assert sorted(os.listdir(certs)) == before


def test_issue_refuses_existing_files_bad_sans_and_missing_ca(certs: Path,
                                                              tmp_path: Path) -> None:
    key = (certs / "n1.key").read_bytes()
    with pytest.raises(CertificateError, match="already exists"):
        tls.issue(certs, "n1")
    assert (certs / "n1.key").read_bytes() == key
    with pytest.raises(CertificateError, match="not an IP address"):
        tls.issue(certs, "n3", ips=["300.1.1.1"])
    with pytest.raises(CertificateError, match="not a DNS name"):
        tls.issue(certs, "n3", dns=["bad_host"])
    with pytest.raises(CertificateError, match="no CA"):
        tls.issue(tmp_path / "empty", "n1")
    assert not (certs / "n3.key").exists()


def test_show_prints_public_data_never_key_material(certs: Path) -> None:
    text = tls.show(certs / "n1.pem")
    assert "member: n1" in text
    assert "URI:embedkv://member/n1" in text and "IP:127.0.0.1" in text
    assert "issuer: CN=embedkv cluster CA" in text and "sha256: " in text
    assert "PRIVATE KEY" not in text
    with pytest.raises(CertificateError, match="private key"):
        tls.show(certs / "n1.key")


def test_tls_from_dir_needs_every_file(certs: Path) -> None:
    t = TLS.from_dir(certs, "n1")
    assert t == TLS(ca=str(certs / "ca.pem"), cert=str(certs / "n1.pem"),
                    key=str(certs / "n1.key"))
    with pytest.raises(CertificateError, match="missing"):
        TLS.from_dir(certs, "n9")


# --- handshakes ------------------------------------------------------------------------------


Outcome = str | BaseException


def handshake(server_ctx: ssl.SSLContext,
              client: Callable[[int], Outcome]) -> tuple[Outcome, Outcome]:
    """Accept one connection on 127.0.0.1 with `server_ctx` in a thread while `client(port)`
    connects: (what the server saw, what the client saw). Each side's outcome is the peer's
    member name after a ping/pong exchange, or the exception that ended it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> Outcome:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                name = tls.peer_member_name(s)
                if s.recv(4) == b"ping":
                    s.sendall(b"pong")
                return name
        except Exception as exc:
            return exc

    with listener, ThreadPoolExecutor(1) as pool:
        server = pool.submit(serve)
        client_outcome = client(port)
        return server.result(timeout=TIMEOUT), client_outcome


def tls_client(ctx: ssl.SSLContext) -> Callable[[int], Outcome]:
    def run(port: int) -> Outcome:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
                    ctx.wrap_socket(raw) as s:
                name = tls.peer_member_name(s)
                s.sendall(b"ping")
                if s.recv(4) != b"pong":
                    return ConnectionError("no pong")
                return name
        except Exception as exc:
            return exc
    return run


def plain_client(port: int) -> Outcome:
    """A client speaking plain TCP: whatever comes back (a TLS alert, a reset), it is never
    served."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        try:
            s.sendall(b"ping, in plain text\n")
            data = s.recv(100)
        except OSError as exc:
            return exc
        return ConnectionError(f"plain client read {data!r}")


def test_handshake_between_members_of_one_ca(certs: Path) -> None:
    server, client = handshake(tls.server_context(certs, "n1"),
                               tls_client(tls.client_context(TLS.from_dir(certs, "n2"))))
    assert (server, client) == ("n2", "n1")


def refused_by_server(outcome: Outcome, reason: str) -> None:
    assert isinstance(outcome, ssl.SSLError), outcome
    assert reason in str(outcome)


def test_client_from_another_ca_is_refused(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tls.init_ca(other)
    tls.issue(other, "n2")
    # a stranger who trusts the cluster CA but holds a certificate from its own CA
    stranger = TLS(ca=str(certs / "ca.pem"), cert=str(other / "n2.pem"),
                   key=str(other / "n2.key"))
    server, client = handshake(tls.server_context(certs, "n1"),
                               tls_client(tls.client_context(stranger)))
    refused_by_server(server, "unable to get local issuer certificate")
    assert isinstance(client, Exception)
    # and a server from another CA is refused by the client
    server, client = handshake(tls.server_context(other, "n2"),
                               tls_client(tls.client_context(certs, "n1")))
    assert isinstance(client, ssl.SSLCertVerificationError), client
    assert isinstance(server, Exception)


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_certificate_outside_its_validity_is_refused(certs: Path, when: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    start, end = (now - 10 * day, now - day) if when == "expired" else (now + day, now + 10 * day)
    tls.issue(certs, "n3", not_before=start, not_after=end)
    server, client = handshake(tls.server_context(certs, "n1"),
                               tls_client(tls.client_context(certs, "n3")))
    refused_by_server(server, f"certificate is {when}" if when == "not yet valid"
                      else "certificate has expired")
    assert isinstance(client, Exception)
    server, client = handshake(tls.server_context(certs, "n3"),
                               tls_client(tls.client_context(certs, "n1")))
    assert isinstance(client, ssl.SSLCertVerificationError), client


def test_tls12_client_is_refused(certs: Path) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.load_verify_locations(certs / "ca.pem")
    ctx.load_cert_chain(certs / "n2.pem", certs / "n2.key")
    server, client = handshake(tls.server_context(certs, "n1"), tls_client(ctx))
    refused_by_server(server, "UNSUPPORTED_PROTOCOL")
    assert isinstance(client, ssl.SSLError)


def test_plain_tcp_client_is_refused(certs: Path) -> None:
    server, client = handshake(tls.server_context(certs, "n1"), plain_client)
    assert isinstance(server, ssl.SSLError), server
    assert isinstance(client, OSError)
    assert "pong" not in str(client)


def test_a_certificate_without_a_member_name_is_not_used(certs: Path) -> None:
    ca_as_member = TLS(ca=str(certs / "ca.pem"), cert=str(certs / "ca.pem"),
                       key=str(certs / "ca.key"))
    with pytest.raises(CertificateError, match="no embedkv member name"):
        tls.client_context(ca_as_member)


def test_ca_bundle_trusts_members_of_old_and_new_ca(certs: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    tls.init_ca(new)
    tls.issue(new, "n3")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((certs / "ca.pem").read_bytes() + (new / "ca.pem").read_bytes())
    server_ctx = tls.server_context(TLS(ca=str(bundle), cert=str(certs / "n1.pem"),
                                        key=str(certs / "n1.key")))
    client_ctx = tls.client_context(TLS(ca=str(bundle), cert=str(new / "n3.pem"),
                                        key=str(new / "n3.key")))
    assert handshake(server_ctx, tls_client(client_ctx)) == ("n3", "n1")


# --- the command line --------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), stdout=out)
    return code, out.getvalue()


def test_certs_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "c")
    code, out = cli("certs", "init", d)
    assert code == 0 and "ca.pem" in out
    code, out = cli("certs", "issue", d, "n1", "--ip", "127.0.0.1", "--dns", "n1.lan")
    assert code == 0 and "n1.pem" in out
    assert mode(os.path.join(d, "n1.key")) == 0o600
    code, out = cli("certs", "show", os.path.join(d, "n1.pem"))
    assert code == 0
    assert "member: n1" in out and "DNS:n1.lan" in out and "PRIVATE KEY" not in out
    code, out = cli("-w", "json", "certs", "show", os.path.join(d, "n1.pem"))
    assert code == 0 and json.loads(out)["member"] == "n1"
    capsys.readouterr()

    assert cli("certs", "init", d)[0] == 1
    assert "already exists" in capsys.readouterr().err
    assert cli("certs", "issue", d, "bad/name")[0] == 1
    assert "member name" in capsys.readouterr().err
    assert cli("certs", "issue", str(tmp_path / "none"), "n1")[0] == 1
    assert "no CA" in capsys.readouterr().err
    assert cli("certs", "show", os.path.join(d, "n1.key"))[0] == 1
    err = capsys.readouterr().err
    assert "private key" in err and "BEGIN" not in err
    assert cli("certs", "show", os.path.join(d, "missing.pem"))[0] == 1
    assert "missing.pem" in capsys.readouterr().err


def test_peer_without_member_name_is_refused_after_the_handshake(certs: Path,
                                                                 tmp_path: Path) -> None:
    """A certificate the CA signed that names no member passes TLS verification, so the name
    check after the handshake is what refuses it."""
    ca_cert = tls.load_certificates(certs / "ca.pem")[0]
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anonymous")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "anon.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "anon.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(certs / "ca.pem")
    ctx.load_cert_chain(tmp_path / "anon.pem", tmp_path / "anon.key")
    server, _ = handshake(tls.server_context(certs, "n1"), tls_client(ctx))
    assert isinstance(server, CertificateError), server
    assert "carries no embedkv member name" in str(server)
