"""A member listening on every address ("0.0.0.0:PORT", etcd's listen URL) is recorded, and
dialed, at an address the others can reach (etcd's advertise URL): a founder at its entry in
`peers`, a joiner at the local address of its route to the member it joins through. Never
0.0.0.0, which would make every other member dial itself. In-process members on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import embedkv
from embedkv.member.cluster import advertise_address, route_source

from .ports import free_ports
from .waiting import wait_for

FAST = {"tick_interval": 0.02, "request_timeout": 3.0}


def addresses(store: embedkv.Store) -> dict[str, str]:
    return {m.name: m.address for m in store.members()}


def test_advertised_address_of_a_listener_on_every_address() -> None:
    assert advertise_address("10.0.0.1:7400", "10.0.0.9:7400") == "10.0.0.1:7400"
    assert advertise_address("0.0.0.0:7400", "10.0.0.9:7400") == "10.0.0.9:7400"
    assert advertise_address("0.0.0.0:7401", "10.0.0.9:7400") == "10.0.0.9:7401"
    assert advertise_address("0.0.0.0:7400", None) == "0.0.0.0:7400"
    assert advertise_address("localhost:7400", "10.0.0.9:7400") == "localhost:7400"
    assert route_source("127.0.0.1:9", "0.0.0.0:7400") == "127.0.0.1:7400"
    assert route_source("127.0.0.1:9", "127.0.0.7:7400") == "127.0.0.7:7400"


def test_founders_listening_on_every_address_keep_their_peers_addresses(
        tmp_path: Path) -> None:
    # Free on every address: the members listen on all of them.
    ports = dict(zip(("a", "b", "c"), free_ports(3, "0.0.0.0"), strict=True))
    peers = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    stores = [embedkv.open(tmp_path / n, name=n, listen=f"0.0.0.0:{p}", peers=peers,
                           cluster="t", insecure=True, **FAST) for n, p in ports.items()]
    try:
        stores[0]["k"] = "v"
        for s in stores:
            wait_for(lambda s=s: s.get("k") == "v", 20, "the write everywhere")
            assert addresses(s) == peers
        # A restart with the path only listens on every address again, and is still
        # recorded where the others reach it.
        stores[1].close()
        stores[1] = embedkv.open(tmp_path / "b", **FAST)
        stores[1]["k2"] = "v2"
        for s in stores:
            wait_for(lambda s=s: s.get("k2") == "v2", 20, "the write everywhere")
            assert addresses(s) == peers
    finally:
        for s in stores:
            s.close()


def test_a_joiner_listening_on_every_address_is_recorded_where_it_is_reached(
        tmp_path: Path) -> None:
    port, d_port = free_ports(2, "0.0.0.0")
    a = embedkv.open(tmp_path / "a", name="a", listen=f"127.0.0.1:{port}",
                     peers={"a": f"127.0.0.1:{port}"}, cluster="t", insecure=True, **FAST)
    try:
        d = embedkv.open(tmp_path / "d", name="d", listen=f"0.0.0.0:{d_port}",
                         join=[f"127.0.0.1:{port}"], insecure=True, **FAST)
        try:
            want = {"a": f"127.0.0.1:{port}", "d": f"127.0.0.1:{d_port}"}
            wait_for(lambda: addresses(a) == want, 20, "d recorded")
            wait_for(lambda: addresses(d) == want, 20, "d sees itself recorded")
            wait_for(lambda: {m.name for m in a.members() if m.voter} == {"a", "d"}, 20,
                     "d promoted")
        finally:
            d.close()
    finally:
        a.close()

