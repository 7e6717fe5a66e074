"""Certificates for peer links: a cluster CA, member certificates, and TLS 1.3 contexts.

A member's identity is its name, carried in its certificate as the URI SAN
``embedkv://member/NAME`` (a URI, not a DNS name, so that it can never be confused with the
host names and addresses a certificate also lists). Contexts verify the peer against the cluster
CA both ways and leave host name checking off: after the handshake the caller reads the peer's
name with `peer_member_name` and compares it with the member the peer claims to be.

A certificate directory holds ``ca.pem`` (one CA, or a bundle of old and new CAs during a
rollover), ``ca.key`` and ``NAME.pem``/``NAME.key`` per member. Private keys are created with
mode 0600 (never widened and then narrowed) and are never printed.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from embedkv.errors import Error

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key"
MEMBER_URI_PREFIX: Final = "embedkv://member/"
"""A member's name is the URI SAN ``embedkv://member/NAME``."""
CA_DAYS: Final = 3650
MEMBER_DAYS: Final = 825
"""About 27 months: the longest validity common TLS clients accept for a leaf certificate."""

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate clocks a little behind the issuer's


class CertificateError(Error, ValueError):
    """A certificate, key or certificate directory cannot be used as asked."""


@dataclasses.dataclass(frozen=True)
class TLS:
    """Where a member's TLS material is: the cluster CA file (may be a bundle), its own
    certificate and its own private key."""

    ca: str
    cert: str
    key: str

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], name: str) -> TLS:
        """The files `init_ca` and `issue` wrote for member `name` into `directory`; every one
        must exist."""
        check_name(name)
        d = os.fspath(directory)
        tls = cls(ca=os.path.join(d, CA_CERT), cert=os.path.join(d, f"{name}.pem"),
                  key=os.path.join(d, f"{name}.key"))
        missing = [p for p in (tls.ca, tls.cert, tls.key) if not os.path.isfile(p)]
        if missing:
            raise CertificateError(
                f"missing {', '.join(missing)} (make them with `embedkv certs init {d}` and "
                f"`embedkv certs issue {d} {name}`)"
            )
        return tls


def check_name(name: str) -> str:
    """`name` if it can be a member name (1-64 of A-Z a-z 0-9 . _ -, not starting with a dot,
    not "ca"); CertificateError otherwise. The name is also a file name, hence the limits."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CertificateError(
            f"member name must be 1 to 64 characters from A-Z a-z 0-9 . _ -, not {name!r}"
        )
    if name.startswith("."):
        raise CertificateError(f"member name must not start with a dot: {name!r}")
    if name == "ca":
        raise CertificateError('"ca" is the CA\'s file name, not a member name')
    return name


def _check_dns(name: str) -> str:
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if not name or len(name) > 253 or not labels or not all(
        _DNS_LABEL.fullmatch(label) for label in labels
    ):
        raise CertificateError(f"not a DNS name: {name!r}")
    return name


def _check_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise CertificateError(f"not an IP address: {text!r}") from None


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (O_EXCL: an existing file is never replaced)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertificateError(f"{path} already exists; refusing to overwrite it") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(path)
        raise


def _write_pair(cert_path: str, cert: x509.Certificate, key_path: str,
                key: ec.EllipticCurvePrivateKey) -> None:
    """Write the key (0600) and then the certificate; if the certificate cannot be written the
    key goes too, so that a retry does not find half a pair in its way."""
    _write_new(key_path, _key_pem(key), 0o600)
    try:
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        os.unlink(key_path)
        raise


def _refuse_existing(*paths: str) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise CertificateError(f"{path} already exists; refusing to overwrite it")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _validity(days: int, not_before: datetime.datetime | None,
              not_after: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    if days <= 0:
        raise CertificateError(f"days must be positive, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    start = not_before if not_before is not None else now - _BACKDATE
    end = not_after if not_after is not None else now + datetime.timedelta(days=days)
    if end <= start:
        raise CertificateError(f"certificate would end ({end}) before it starts ({start})")
    return start, end


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a member signs TLS handshakes (ECDHE needs no key
    encipherment)."""
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def init_ca(directory: str | os.PathLike[str], *, name: str = "embedkv cluster CA",
            days: int = CA_DAYS) -> str:
    """Make a cluster CA (ECDSA P-256) in `directory` (created if missing): ``ca.pem`` and
    ``ca.key`` (mode 0600). Refuses to replace an existing CA, which would orphan every
    certificate it signed. Returns the path of ca.pem."""
    d = os.fspath(directory)
    cert_path, key_path = os.path.join(d, CA_CERT), os.path.join(d, CA_KEY)
    _refuse_existing(cert_path, key_path)
    start, end = _validity(days, None, None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(d, mode=0o700, exist_ok=True)
    _write_pair(cert_path, cert, key_path, key)
    return cert_path


def _load_ca(d: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate in ca.pem whose public key matches ca.key (ca.pem may be a bundle)."""
    cert_path, key_path = os.path.join(d, CA_CERT), os.path.join(d, CA_KEY)
    for path in (cert_path, key_path):
        if not os.path.isfile(path):
            raise CertificateError(
                f"no CA in {d}: {path} is missing (make one with `embedkv certs init {d}`)"
            )
    certs = load_certificates(cert_path)
    with open(key_path, "rb") as f:
        try:
            key = serialization.load_pem_private_key(f.read(), password=None)
        except (ValueError, TypeError):
            raise CertificateError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an ECDSA key")
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    for cert in certs:
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == public:
            return cert, key
    raise CertificateError(f"no certificate in {cert_path} matches the key {key_path}")


def issue(directory: str | os.PathLike[str], name: str, *, ips: Iterable[str] = (),
          dns: Iterable[str] = (), days: int = MEMBER_DAYS,
          not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None, renew: bool = False) -> tuple[str, str]:
    """Issue member `name` a certificate signed by the CA in `directory`: ``NAME.pem`` and
    ``NAME.key`` (mode 0600), with the SANs ``embedkv://member/NAME`` plus `ips` and `dns`,
    usable as both TLS server and client. `not_before`/`not_after` override the validity (for
    tests of expired and not-yet-valid certificates). `renew=True` replaces an existing pair
    (a new key and serial; each file is swapped in by a rename, so a member reloading it
    never reads half a file). Returns (certificate path, key path)."""
    check_name(name)
    addresses = [_check_ip(ip) for ip in ips]
    dns_names = [_check_dns(n) for n in dns]
    d = os.fspath(directory)
    cert_path, key_path = os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")
    ca_cert, ca_key = _load_ca(d)
    if renew:
        final = cert_path, key_path
        cert_path, key_path = cert_path + ".new", key_path + ".new"
        for path in (cert_path, key_path):  # left over by an interrupted renewal
            if os.path.lexists(path):
                os.unlink(path)
    _refuse_existing(cert_path, key_path)
    start, end = _validity(days, not_before, not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(MEMBER_URI_PREFIX + name)]
    sans += [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(cert_path, cert, key_path, key)
    if renew:
        os.replace(key_path, final[1])
        os.replace(cert_path, final[0])
        return final
    return cert_path, key_path


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate in a PEM file; CertificateError for a key file or anything else."""
    with open(path, "rb") as f:
        data = f.read()
    if b"PRIVATE KEY-----" in data:
        raise CertificateError(f"{os.fspath(path)} holds a private key, not a certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CertificateError(f"{os.fspath(path)} holds no PEM certificate")
    return certs


def member_name(cert: x509.Certificate) -> str | None:
    """The member name in `cert`'s ``embedkv://member/NAME`` URI SAN; None if it has none (or
    the name is not a valid member name)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(MEMBER_URI_PREFIX):
            name = uri[len(MEMBER_URI_PREFIX):]
            try:
                return check_name(name)
            except CertificateError:
                return None
    return None


def describe(cert: x509.Certificate) -> dict[str, str]:
    """What `show` prints about one certificate (public data only), as strings."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
        sans += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "subject": cert.subject.rfc4514_string(),
        "member": member_name(cert) or "-",
        "ca": "yes" if is_ca else "no",
        "sans": ", ".join(sans) or "-",
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "issuer": cert.issuer.rfc4514_string(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


def show(path: str | os.PathLike[str]) -> str:
    """A readable summary of every certificate in `path`; refuses key files, so it never prints
    key material."""
    blocks = []
    for cert in load_certificates(path):
        blocks.append("\n".join(f"{k}: {v}" for k, v in describe(cert).items()))
    return "\n\n".join(blocks)


def _resolve(source: TLS | str | os.PathLike[str], name: str | None) -> TLS:
    if isinstance(source, TLS):
        return source
    if name is None:
        raise CertificateError("a certificate directory needs the member name too")
    return TLS.from_dir(source, name)


def _context(protocol: int, tls: TLS) -> ssl.SSLContext:
    """TLS 1.3 only, the peer's certificate required and checked against the cluster CA, this
    member's certificate (which must carry a member name) presented."""
    own = load_certificates(tls.cert)[0]
    if member_name(own) is None:
        raise CertificateError(f"{tls.cert} carries no embedkv member name "
                               f"(a URI SAN {MEMBER_URI_PREFIX}NAME)")
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=tls.ca)
        ctx.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        raise CertificateError(f"cannot use {tls.cert}/{tls.key} with CA {tls.ca}: {exc}") \
            from None
    return ctx


def server_context(source: TLS | str | os.PathLike[str], name: str | None = None
                   ) -> ssl.SSLContext:
    """The context a member's peer port accepts with: `source` is a TLS or a certificate
    directory (then `name` picks the member's files)."""
    return _context(ssl.PROTOCOL_TLS_SERVER, _resolve(source, name))


def client_context(source: TLS | str | os.PathLike[str], name: str | None = None
                   ) -> ssl.SSLContext:
    """The context a member dials peers with. Host name checking is off: the identity that
    counts is the member name, which the caller checks with `peer_member_name`."""
    tls = _resolve(source, name)
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, tls)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclasses.dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is at the other end of a handshaken connection: the member name and the serial
    (lower-case hex, as `show` prints it) of the certificate it presented."""

    name: str
    serial: str


def serial_of(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity:
    """The identity of the peer on this handshaken connection (its certificate verified
    against the CA by the handshake). CertificateError if there is no TLS, no certificate,
    or no member name in it."""
    if ssl_object is None:
        raise CertificateError("the connection is not TLS")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise CertificateError("the peer presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    name = member_name(cert)
    if name is None:
        raise CertificateError(
            f"the peer's certificate ({cert.subject.rfc4514_string()}, serial "
            f"{serial_of(cert)}) carries no embedkv member name"
        )
    return PeerIdentity(name, serial_of(cert))


def peer_member_name(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The member name in the certificate the peer presented on this (handshaken) connection;
    CertificateError if there is no certificate or it names no member."""
    return peer_identity(ssl_object).name


# --- a running member's side ------------------------------------------------------------------


class Credentials:
    """A member's TLS material while it runs: the contexts it accepts and dials with, rebuilt
    from the files whenever one of them changed (`refresh`), so that a renewed certificate or
    a new CA bundle is used from the next handshake on without a restart.

    A failed reload (a half-copied file, a key that does not match its certificate) is
    logged by the caller and the last good contexts stay in use; the files are tried again at
    the next refresh."""

    def __init__(self, tls: TLS) -> None:
        self.tls = tls
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self.server: ssl.SSLContext
        self.client: ssl.SSLContext
        self.name: str
        self.serial: str
        self._load()

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in (self.tls.ca, self.tls.cert, self.tls.key):
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _load(self) -> None:
        tls = self.tls
        for path in (tls.ca, tls.cert, tls.key):
            if not os.path.isfile(path):
                raise CertificateError(f"missing {path}")
        stamp = self._stamps()
        own = load_certificates(tls.cert)[0]
        name = member_name(own)
        if name is None:
            raise CertificateError(f"{tls.cert} carries no embedkv member name "
                                   f"(a URI SAN {MEMBER_URI_PREFIX}NAME)")
        server = server_context(tls)
        client = client_context(tls)
        self.server, self.client = server, client
        self.name, self.serial = name, serial_of(own)
        self._stamp = stamp

    def refresh(self) -> bool:
        """Reload the files if any changed since the last load; True if they were reloaded.
        CertificateError/OSError if they changed but cannot be used (the old contexts stay)."""
        try:
            stamp = self._stamps()
        except OSError as exc:
            raise CertificateError(f"cannot read the TLS files: {exc}") from None
        if stamp == self._stamp:
            return False
        self._load()
        return True
