"""Discovery over mutual TLS on loopback: founding calls, probes and the join run over TLS; a
member of another CA is refused; an announcement that names a member the listener's
certificate does not name changes nothing (mDNS only proposes addresses)."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import embedkv
from embedkv import Unavailable
from embedkv.member.cluster import Security
from embedkv.member.discovery import PEER_PORT, FoundingTransport, founding_token
from embedkv.member.founding import Proposal, Seat
from embedkv.net import tls
from embedkv.net.discovery import Announcement, Mdns
from embedkv.net.tls import TLS, Credentials

from ..ports import free_port
from ..waiting import wait_for
from .test_loopback import FAST, Lan, has_voters, loopback_ip

T = TypeVar("T")


def make_ca(d: Path, *names: str) -> Path:
    tls.init_ca(d)
    for name in names:
        tls.issue(d, name)
    return d


class TlsLan(Lan):
    """A Lan whose members open with tls= (a certificate directory) instead of insecure."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.certs = make_ca(tmp_path / "certs", "a", "b", "c", "x")

    def open_tls(self, member: str, cluster: str, *, certs: Path | None = None,
                 ip: str | None = None, timeout: float = 60.0, **kw: Any) -> embedkv.Store:
        ip = ip or loopback_ip()
        listen = f"{ip}:{free_port(ip)}"
        self.listen[member] = listen
        store = embedkv.open(self.tmp / member, name=member, listen=listen, cluster=cluster,
                             tls=certs or self.certs, discovery=self.disc(ip, timeout),
                             **FAST, **kw)
        self.stores.append(store)
        return store


@pytest.fixture
def lan(tmp_path: Path) -> Any:
    lan = TlsLan(tmp_path)
    yield lan
    lan.close()


def addresses(store: embedkv.Store) -> dict[str, str]:
    return {m.name: m.address for m in store.members()}


class Opening:
    """`open` running in a thread of its own (it blocks until founded or joined)."""

    def __init__(self, open_: Callable[[], embedkv.Store]) -> None:
        self._open = open_
        self._out: embedkv.Store | BaseException | None = None
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out = self._open()
        except BaseException as exc:
            self._out = exc

    def result(self) -> embedkv.Store | BaseException | None:
        self._thread.join(60)
        return self._out


def test_three_members_with_tls_find_each_other_and_form_one_tls_cluster(lan: TlsLan) -> None:
    cluster = lan.name()
    names = ["a", "b", "c"]
    stores = lan.together([functools.partial(lan.open_tls, n, cluster, expect=3)
                           for n in names])
    assert len({s.status().cluster_id for s in stores}) == 1
    for s in stores:
        wait_for(functools.partial(has_voters, s, set(names)), 20, "every founder a voter")
    stores[0]["k"] = "v"
    assert stores[2].get("k") == "v"
    assert addresses(stores[1]) == {n: lan.listen[n] for n in names}
    # The cluster runs over TLS: reopening a member without it is refused.
    stores[2].close()
    with pytest.raises(ValueError, match="over TLS"):
        embedkv.open(lan.tmp / "c", insecure=True, **FAST)


def test_a_member_of_another_ca_is_refused(lan: TlsLan) -> None:
    # "a0" holds a certificate of a CA of its own: it neither votes nor joins; the three
    # others form their cluster without it. (Its name sorts second: the first proposal, a's,
    # holds it, and only TLS keeps it out.)
    cluster = lan.name()
    stranger = make_ca(lan.tmp / "stranger", "a0")
    x = Opening(functools.partial(lan.open_tls, "a0", cluster, certs=stranger, expect=3,
                                  timeout=8.0))
    stores = lan.together([functools.partial(lan.open_tls, n, cluster, expect=3)
                           for n in ["a", "b", "c"]])
    assert isinstance(x.result(), Unavailable), x.result()
    assert len({s.status().cluster_id for s in stores}) == 1
    wait_for(functools.partial(has_voters, stores[0], {"a", "b", "c"}), 20, "a, b, c voters")
    assert set(addresses(stores[0])) == {"a", "b", "c"}


class Impostor:
    """A member of the right CA with the certificate of "x", announced as fresh member "b"
    of the cluster: its founding transport grants every call, answering as "b"."""

    def __init__(self, lan: TlsLan, cluster: str) -> None:
        self.ip = loopback_ip()
        self.address = f"{self.ip}:{free_port(self.ip)}"
        self.calls: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        creds = Credentials(TLS.from_dir(lan.certs, "x"))
        self.transport = self.run(self._start(cluster, Security(credentials=creds)))
        self.mdns = Mdns([self.ip], service_type=lan.service)
        self.mdns.announce(Announcement(cluster, "b", self.address, "fresh"))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self, cluster: str, security: Security) -> FoundingTransport:
        transport = FoundingTransport(founding_token(cluster), self.address, security)

        async def grant(caller: int, method: str, body: Any) -> Any:
            self.calls.append(method)
            return {"granted": True, "name": "b", "answer": "collecting"}

        transport.on_call = grant
        await transport.start()
        return transport

    def close(self) -> None:
        self.mdns.close()
        self.run(self.transport.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_an_announcement_the_certificate_there_does_not_back_changes_nothing(
        lan: TlsLan, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "embedkv")
    cluster = lan.name()
    impostor = Impostor(lan, cluster)
    try:
        opening = Opening(functools.partial(lan.open_tls, "a", cluster, ip=loopback_ip(),
                                            expect=2, timeout=40.0))
        # a proposes {a, b} to the "b" announced at the impostor's address, whose certificate
        # names x: a refuses that listener before any call reaches it.
        wait_for(lambda: any(f"refused the listener at {impostor.address}" in r.getMessage()
                             for r in caplog.records), 20, "a to refuse the impostor")
        # The impostor, speaking for "b" with x's certificate, gets no vote from a.
        proposal = Proposal("f" * 32, "b", (Seat("a", lan.listen["a"]),
                                            Seat("b", impostor.address)))

        async def ask() -> Any:
            return await impostor.transport.call_member("a", lan.listen["a"], "found.ask",
                                                        proposal.encode())

        answer: list[Any] = []

        def asked() -> bool:
            try:
                answer.append(impostor.run(ask()))
                return True
            except Unavailable:
                return False

        wait_for(asked, 20, "a to answer the impostor's proposal")
        assert answer[0]["granted"] is False and "certificate names x" in answer[0]["why"]
        # The real b comes: a and b form the cluster, with b at its own address.
        b = lan.open_tls("b", cluster, expect=2, timeout=40.0)
        a = opening.result()
        assert isinstance(a, embedkv.Store), a
        assert a.status().cluster_id == b.status().cluster_id
        assert addresses(a) == {"a": lan.listen["a"], "b": lan.listen["b"]}
        assert impostor.calls == []
    finally:
        impostor.close()


def test_name_from_the_only_pair_and_listen_from_the_interface(lan: TlsLan) -> None:
    # A machine holding ca.pem and its own pair needs neither name= nor listen=.
    own = lan.tmp / "own"
    own.mkdir()
    for f in ("ca.pem", "c.pem", "c.key"):
        shutil.copy2(lan.certs / f, own / f)
    ip = loopback_ip()
    store = embedkv.open(lan.tmp / "c", cluster=lan.name(), tls=own, expect=1,
                         discovery=lan.disc(ip), **FAST)
    lan.stores.append(store)
    assert addresses(store) == {"c": f"{ip}:{PEER_PORT}"}
    # Several members' files: which one this is must be said.
    with pytest.raises(ValueError, match="give name="):
        embedkv.open(lan.tmp / "d", cluster=lan.name(), tls=lan.certs, expect=1,
                     discovery=lan.disc(loopback_ip()), **FAST)


def test_discovery_without_tls_or_insecure_is_refused_before_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mutual TLS"):
        embedkv.open(tmp_path / "d", cluster="plant", expect=3)
    with pytest.raises(ValueError, match="needs name="):
        embedkv.open(tmp_path / "d", cluster="plant", insecure=True, expect=3)
    assert not (tmp_path / "d").exists()
