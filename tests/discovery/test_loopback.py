"""Discovery on loopback: members on distinct 127.0.0.x addresses, zeroconf pinned to them
(never to the host's interfaces), a service type and cluster name of their own per test."""

from __future__ import annotations

import functools
import io
import json
import random
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import embedkv
from embedkv import Discovery, cli
from embedkv.member.founding import Timing
from embedkv.net.discovery import Announcement, Mdns

from ..ports import free_port
from ..waiting import wait_for

FAST: dict[str, Any] = {"tick_interval": 0.02, "request_timeout": 5.0}
TIMING = Timing(settle=0.5, stagger=0.3, backoff=1.0, suspect=3.0, poll=0.5)

RUNS = 5

_used: set[str] = set()


def loopback_ip() -> str:
    """An address of 127.0.0.0/8 no other member of this process uses."""
    while True:
        ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        if ip not in _used:
            _used.add(ip)
            return ip


class Lan:
    """One test's LAN: its own service type and cluster names."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.service = f"_ek{secrets.token_hex(4)}._tcp.local."
        self.stores: list[embedkv.Store] = []
        self.listen: dict[str, str] = {}  # member -> its latest listen address

    def name(self, base: str = "plant") -> str:
        return f"{base}-{secrets.token_hex(4)}"

    def disc(self, ip: str, timeout: float = 60.0) -> Discovery:
        return Discovery(interfaces=[ip], timeout=timeout, service_type=self.service,
                         timing=TIMING)

    def open(self, member: str, cluster: str, *, ip: str | None = None, port: int | None = None,
             dir: str | None = None, **kw: Any) -> embedkv.Store:
        ip = ip or loopback_ip()
        port = port or free_port(ip)
        kw.setdefault("discovery", self.disc(ip))
        self.listen[member] = f"{ip}:{port}"
        store = embedkv.open(self.tmp / (dir or member), name=member, listen=f"{ip}:{port}",
                             cluster=cluster, insecure=True, **FAST, **kw)
        self.stores.append(store)
        return store

    def together(self, opens: list[Callable[[], embedkv.Store]]) -> list[embedkv.Store]:
        """Open members at once, each in a thread (open blocks until founded or joined)."""
        out: list[embedkv.Store | BaseException | None] = [None] * len(opens)

        def run(i: int) -> None:
            try:
                out[i] = opens[i]()
            except BaseException as exc:
                out[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(opens))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for o in out:
            if isinstance(o, BaseException):
                raise o
        return [o for o in out if isinstance(o, embedkv.Store)]

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def lan(tmp_path: Path) -> Any:
    lan = Lan(tmp_path)
    yield lan
    lan.close()


def voters(store: embedkv.Store) -> set[str]:
    return {m.name for m in store.members() if m.voter}


def opener(lan: Lan, member: str, cluster: str, **kw: Any) -> Callable[[], embedkv.Store]:
    return functools.partial(lan.open, member, cluster, **kw)


def form(lan: Lan, cluster: str, names: list[str], **kw: Any) -> list[embedkv.Store]:
    """Start `names` together with expect=len(names); check they formed one cluster."""
    stores = lan.together([opener(lan, n, cluster, expect=len(names), **kw) for n in names])
    assert len({s.status().cluster_id for s in stores}) == 1
    for s in stores:
        wait_for(functools.partial(has_voters, s, set(names)), 20, "every founder a voter")
    return stores


def holds(store: embedkv.Store, key: str, value: str) -> bool:
    return bool(store.get(key) == value)


def has_voters(store: embedkv.Store, names: set[str]) -> bool:
    return {m.name for m in store.members() if m.voter} == names


def test_three_members_started_together_form_one_cluster(lan: Lan) -> None:
    for run in range(RUNS):
        names = [f"r{run}m{i}" for i in range(3)]
        stores = form(lan, lan.name(), names)
        stores[0][f"k{run}"] = "v"
        for s in stores:
            assert s.get(f"k{run}") == "v"
        for s in stores:
            s.close()


def test_more_fresh_members_than_expected_make_one_cluster(lan: Lan) -> None:
    # 2 * expect - 1 fresh members at once: one proposal of three is founded, the other two
    # find it formed and join.
    cluster = lan.name()
    names = [f"m{i}" for i in range(5)]
    stores = lan.together([opener(lan, n, cluster, expect=3) for n in names])
    assert len({s.status().cluster_id for s in stores}) == 1
    wait_for(functools.partial(has_voters, stores[0], set(names)), 60, "all five voters")


def test_a_fourth_member_joins_and_a_restart_does_not_found_again(lan: Lan) -> None:
    cluster = lan.name()
    stores = form(lan, cluster, ["a", "b", "c"])
    cid = stores[0].status().cluster_id
    stores[0]["x"] = 1
    d = lan.open("d", cluster, expect=3)
    assert d.status().cluster_id == cid
    wait_for(functools.partial(has_voters, stores[0], {"a", "b", "c", "d"}), 30, "d promoted")
    assert d.get("x") == 1
    # A member with data restarts into its cluster, whatever expect says.
    stores[1].close()
    b = lan.open("b", cluster, expect=3)
    assert b.status().cluster_id == cid
    b["y"] = 2
    assert d.get("y") == 2


def test_members_that_all_moved_find_each_other_again(lan: Lan) -> None:
    cluster = lan.name()
    names = ["a", "b", "c"]
    stores = form(lan, cluster, names)
    stores[0]["k"] = "before"
    cid = stores[0].status().cluster_id
    for s in stores:
        s.close()
    # Every member comes back on a new address: the directory holds only the old ones, so
    # only the announcements can tell them where the others are.
    moved = lan.together([opener(lan, n, cluster, expect=3) for n in names])
    assert {s.status().cluster_id for s in moved} == {cid}

    def writes() -> bool:
        try:
            moved[0]["k"] = "after"
            return True
        except embedkv.Unavailable:
            return False

    wait_for(writes, 60, "a write after every member moved")
    for s in moved:
        wait_for(functools.partial(holds, s, "k", "after"), 20, "the write everywhere")

    def addresses_follow() -> bool:
        return {m.name: m.address for m in moved[0].members()} == {
            n: lan.listen[n] for n in names}

    wait_for(addresses_follow, 30, "the directory to hold the new addresses")


def every_address(lan: Lan, member: str, cluster: str, interfaces: Any,
                  port: int, **kw: Any) -> embedkv.Store:
    """A member listening on every address ("0.0.0.0:PORT"), zeroconf pinned to
    `interfaces` (a list, or a function of the ones of now)."""
    disc = Discovery(interfaces=interfaces, timeout=60.0, service_type=lan.service,
                     timing=TIMING)
    store = embedkv.open(lan.tmp / member, name=member, listen=f"0.0.0.0:{port}",
                         cluster=cluster, insecure=True, discovery=disc, **FAST, **kw)
    lan.stores.append(store)
    return store


def free_port_everywhere() -> int:
    return free_port("0.0.0.0")


def address_of(store: embedkv.Store, member: str) -> str | None:
    return next((m.address for m in store.members() if m.name == member), None)


def test_a_member_on_every_address_follows_its_interface_address_changing(lan: Lan) -> None:
    # c listens on 0.0.0.0 and announces the address of its interface; the interface's
    # address changes while it runs: it is announced, and recorded, at the new one.
    cluster = lan.name()
    old, new = loopback_ip(), loopback_ip()
    now = [old]
    port = free_port_everywhere()
    stores = lan.together([opener(lan, "a", cluster, expect=3),
                           opener(lan, "b", cluster, expect=3),
                           functools.partial(every_address, lan, "c", cluster,
                                             lambda: list(now), port, expect=3)])
    a, b, c = stores
    assert len({s.status().cluster_id for s in stores}) == 1
    wait_for(lambda: address_of(a, "c") == f"{old}:{port}", 20, "c recorded at its interface")
    seen = Mdns([loopback_ip()], service_type=lan.service)
    try:
        now[:] = [new]
        for s in (a, b, c):
            wait_for(lambda s=s: address_of(s, "c") == f"{new}:{port}", 30,
                     "c recorded at its new address")
        wait_for(lambda: [x.address for x in seen.seen(cluster) if x.member == "c"]
                 == [f"{new}:{port}"], 30, "c announced at its new address only")
    finally:
        seen.close()
    c["after"] = "moved"
    wait_for(functools.partial(holds, a, "after", "moved"), 20, "a write through c")


def test_a_joiner_on_every_address_is_recorded_at_its_interface(lan: Lan) -> None:
    cluster = lan.name()
    stores = form(lan, cluster, ["a", "b"])
    ip, port = loopback_ip(), free_port_everywhere()
    d = every_address(lan, "d", cluster, [ip], port, expect=2)
    assert d.status().cluster_id == stores[0].status().cluster_id
    for s in (*stores, d):
        wait_for(lambda s=s: address_of(s, "d") == f"{ip}:{port}", 20,
                 "d recorded at its interface's address, not 0.0.0.0")
    wait_for(functools.partial(has_voters, stores[0], {"a", "b", "d"}), 30, "d promoted")


def test_two_cluster_names_stay_apart(lan: Lan) -> None:
    one, two = lan.name("one"), lan.name("two")
    stores = lan.together([opener(lan, f"{c[:3]}{i}", c, expect=3)
                           for c in (one, two) for i in range(3)])
    first, second = stores[:3], stores[3:]
    assert len({s.status().cluster_id for s in first}) == 1
    assert len({s.status().cluster_id for s in second}) == 1
    assert first[0].status().cluster_id != second[0].status().cluster_id
    wait_for(functools.partial(has_voters, first[0], {"one0", "one1", "one2"}), 20, "one")
    wait_for(functools.partial(has_voters, second[0], {"two0", "two1", "two2"}), 20, "two")


def test_forged_announcements_change_nothing(lan: Lan) -> None:
    cluster = lan.name()
    ips = [loopback_ip() for _ in range(3)]
    ports = [free_port(ip) for ip in ips]
    nobody = loopback_ip()
    forger = Mdns([loopback_ip()], service_type=lan.service)
    forger2 = Mdns([loopback_ip()], service_type=lan.service)
    forger3 = Mdns([loopback_ip()], service_type=lan.service)
    try:
        # A fresh member that does not exist (the lowest name: it would propose first), a
        # formed cluster nobody runs, and a fresh member claiming a real member's address.
        forger.announce(Announcement(cluster, "aaa", f"{nobody}:{free_port(nobody)}", "fresh"))
        forger2.announce(Announcement(cluster, "formed-ghost", f"{nobody}:1", "formed", 77))
        forger3.announce(Announcement(cluster, "aab", f"{ips[1]}:{ports[1]}", "fresh"))
        names = ["m0", "m1", "m2"]
        stores = lan.together([opener(lan, n, cluster, expect=3, ip=ip, port=port,
                                      discovery=lan.disc(ip))
                               for n, ip, port in zip(names, ips, ports, strict=True)])
        assert len({s.status().cluster_id for s in stores}) == 1
        assert stores[0].status().cluster_id != 77
        for s in stores:
            wait_for(functools.partial(has_voters, s, set(names)), 20, "the real three only")
    finally:
        for f in (forger, forger2, forger3):
            f.close()


def test_static_join_combines_with_discovery(lan: Lan) -> None:
    cluster = lan.name()
    stores = form(lan, cluster, ["a", "b"])
    address = next(m.address for m in stores[0].members() if m.name == "a")
    ip = loopback_ip()
    c = lan.open("c", cluster, ip=ip, join=[address])
    assert c.status().cluster_id == stores[0].status().cluster_id
    seen = Mdns([loopback_ip()], service_type=lan.service)
    try:
        wait_for(lambda: "c" in {a.member for a in seen.seen(cluster) if a.state == "formed"},
                 20, "c announced as formed")
    finally:
        seen.close()


def test_a_clean_close_withdraws_the_announcement(lan: Lan) -> None:
    cluster = lan.name()
    stores = form(lan, cluster, ["a"])
    seen = Mdns([loopback_ip()], service_type=lan.service)
    try:
        wait_for(lambda: [a.member for a in seen.seen(cluster)] == ["a"], 20, "a announced")
        stores[0].close()
        wait_for(lambda: not seen.seen(cluster), 20, "a withdrawn")
    finally:
        seen.close()


def test_discovery_false_announces_nothing(lan: Lan) -> None:
    cluster = lan.name()
    ip = loopback_ip()
    peers = {"solo": f"{ip}:{free_port(ip)}"}
    seen = Mdns([loopback_ip()], service_type=lan.service)
    try:
        lan.open("solo", cluster, ip=ip, port=int(peers["solo"].rsplit(":")[1]), peers=peers,
                 discovery=False)
        with pytest.raises(AssertionError):
            wait_for(lambda: seen.seen(cluster), 3, "an announcement")
    finally:
        seen.close()


def test_cli_discover_lists_what_is_announced(lan: Lan) -> None:
    cluster, other = lan.name(), lan.name("other")
    ip = loopback_ip()
    announcer = Mdns([ip], service_type=lan.service)
    try:
        announcer.announce(Announcement(cluster, "n1", f"{ip}:7400", "formed", 0xABC))
        out = io.StringIO()
        code = cli.main(["discover", "--cluster", cluster, "--interface", loopback_ip(),
                         "--timeout", "3", "--service-type", lan.service, "-w", "json"],
                        stdout=out)
        assert code == 0
        assert [json.loads(line) for line in out.getvalue().splitlines()] == [
            {"cluster": cluster, "member": "n1", "address": f"{ip}:7400", "state": "formed",
             "cluster_id": 0xABC}]
        out = io.StringIO()
        assert cli.main(["discover", "--cluster", other, "--interface", loopback_ip(),
                         "--timeout", "1", "--service-type", lan.service], stdout=out) == 0
        assert out.getvalue() == ""
    finally:
        announcer.close()
    assert cli.main(["discover", "--interface", "not-an-ip", "--timeout", "1"]) == 1


@pytest.mark.parametrize(("options", "error"), [
    ({"expect": 3, "discovery": False}, ValueError),
    ({"expect": 0}, ValueError),
    ({"expect": True}, TypeError),
    ({"expect": 3, "cluster": None}, ValueError),
    ({"expect": 3, "cluster": "bad/name"}, ValueError),
    ({"expect": 3, "name": None}, ValueError),
    ({"expect": 3, "peers": {"a": "127.0.0.1:7400"}}, ValueError),
    ({"discovery": "yes"}, TypeError),
    ({"discovery": Discovery(interfaces=["eth0"])}, ValueError),
    ({"discovery": Discovery(interfaces=["127.0.0.1"], timeout=0)}, ValueError),
    ({"discovery": Discovery(interfaces=["127.0.0.1"], service_type="x")}, ValueError),
])
def test_bad_discovery_options_are_refused_before_anything(
        tmp_path: Path, options: dict[str, Any], error: type[Exception]) -> None:
    kw: dict[str, Any] = {"name": "a", "listen": "127.0.0.1:7400", "cluster": "c",
                          "insecure": True, **options}
    with pytest.raises(error):
        embedkv.open(tmp_path / "d", **kw)
    with pytest.raises(error):
        embedkv.open_async(tmp_path / "d", **kw)
    assert not (tmp_path / "d").exists()

