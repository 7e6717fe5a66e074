"""Discovery with real multicast between fake hosts: network namespaces on a private bridge
(tests/tools/netns-lab.sh), each member on its host's default (LAN) interface. Needs root;
skipped with the reason otherwise."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from embedkv.net import tls

from ..waiting import wait_for

LAB = Path(__file__).parent.parent / "tools" / "netns-lab.sh"
CHILD = Path(__file__).parent / "ns_child.py"
PORT = 7400


class NetnsLab:
    def __init__(self, prefix: str) -> None:
        self.env = {**os.environ, "EKLAB_PREFIX": prefix}

    def run(self, *args: str) -> str:
        done = subprocess.run(["bash", str(LAB), *args], env=self.env, capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"netns-lab {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()


@pytest.fixture
def netns() -> Iterator[NetnsLab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    lab = NetnsLab("d" + secrets.token_hex(2))
    try:
        lab.run("up", "4")
    except RuntimeError as exc:
        lab.run("down")
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield lab
    finally:
        lab.run("down")


def report(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return None


class Hosts:
    """Members on the lab's hosts, started as children (ns_child.py) over mutual TLS."""

    def __init__(self, lab: NetnsLab, tmp: Path, cluster: str, certs: Path) -> None:
        self.lab, self.tmp, self.cluster, self.certs = lab, tmp, cluster, certs
        self.stop = tmp / "stop"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []

    def start(self, i: int, listen: str) -> None:
        log = open(self.tmp / f"h{i}.log", "wb")  # noqa: SIM115 (the child's, closed below)
        self.logs.append(log)
        self.procs.append(subprocess.Popen(
            ["bash", str(LAB), "exec", str(i), sys.executable, str(CHILD),
             str(self.tmp / f"h{i}"), f"h{i}", listen, self.cluster, "3",
             str(self.report_path(i)), str(self.stop), "--tls", str(self.certs)],
            env=self.lab.env, stderr=log))

    def report_path(self, i: int) -> Path:
        return self.tmp / f"h{i}.json"

    def report(self, i: int) -> dict[str, Any]:
        return report(self.report_path(i)) or {}

    def alive(self, i: int, of: int) -> int:
        """The counter of host `of` as host i holds it (0: none yet)."""
        return int(self.report(i).get("alive", {}).get(f"h{of}", 0))

    def finish(self) -> list[int | None]:
        self.stop.touch()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()
        return [p.returncode for p in self.procs]


def discover(lab: NetnsLab, i: int, cluster: str) -> list[dict[str, Any]]:
    """What `embedkv discover` run on host i sees announced for `cluster`."""
    out = lab.run("exec", str(i), sys.executable, "-m", "embedkv", "discover", "--cluster",
                  cluster, "--timeout", "2", "-w", "json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_tls_hosts_form_join_survive_a_partition_and_follow_an_address_change(
        netns: NetnsLab, tmp_path: Path) -> None:
    """Three hosts form one cluster over mutual TLS with real multicast and a fourth joins;
    a host cut off and healed catches up and is still found; a host listening on every
    address whose address changes is announced, recorded and reached at the new one."""
    certs = tmp_path / "certs"
    tls.init_ca(certs)
    for i in range(1, 5):
        tls.issue(certs, f"h{i}")
    cluster = f"plant-{secrets.token_hex(4)}"
    hosts = Hosts(netns, tmp_path, cluster, certs)
    addr = {i: netns.run("addr", str(i)) for i in range(1, 5)}
    everyone = ["h1", "h2", "h3", "h4"]
    codes: list[int | None] = []
    try:
        for i in (1, 2, 3):  # h2 listens on every address: its address changes below
            hosts.start(i, f"0.0.0.0:{PORT}" if i == 2 else f"{addr[i]}:{PORT}")

        def formed() -> bool:
            return all(hosts.report(i).get("voters") == ["h1", "h2", "h3"] for i in (1, 2, 3))

        wait_for(formed, 30, "three hosts to form one TLS cluster")
        assert len({hosts.report(i)["cluster_id"] for i in (1, 2, 3)}) == 1
        hosts.start(4, f"{addr[4]}:{PORT}")
        wait_for(lambda: all(hosts.report(i).get("voters") == everyone for i in range(1, 5)),
                 30, "the fourth host to join and be promoted")
        assert hosts.report(4)["cluster_id"] == hosts.report(1)["cluster_id"]
        assert hosts.report(1)["addresses"]["h2"] == f"{addr[2]}:{PORT}"  # never 0.0.0.0

        # A partition: h3 is cut off while the others (3 of 4 voters) go on writing.
        netns.run("cut", "3")
        mark = hosts.alive(1, of=1)
        wait_for(lambda: hosts.alive(1, of=1) > mark + 5, 15, "writes without h3")
        assert hosts.alive(3, of=1) <= mark + 5  # h3 heard nothing meanwhile
        netns.run("heal", "3")
        healed, h3_before = hosts.alive(1, of=1), hosts.alive(1, of=3)
        wait_for(lambda: hosts.alive(3, of=1) >= healed, 20, "h3 to catch up")
        wait_for(lambda: hosts.alive(1, of=3) > h3_before, 20, "h3 to write again")
        found = {(a["member"], a["address"], a["state"]) for a in discover(netns, 1, cluster)}
        assert ("h3", f"{addr[3]}:{PORT}", "formed") in found

        # h2's address changes under it (DHCP gave it another): it is found there again.
        new = "10.77.0.32"
        # (the old one goes first: a second address of the subnet would be a secondary one,
        # which the kernel deletes along with the primary)
        netns.run("exec", "2", "ip", "addr", "del", f"{addr[2]}/24", "dev", "eth0")
        netns.run("exec", "2", "ip", "addr", "add", f"{new}/24", "dev", "eth0")
        wait_for(lambda: all(hosts.report(i).get("addresses", {}).get("h2")
                             == f"{new}:{PORT}" for i in (1, 3, 4)),
                 20, "h2 recorded at its new address")
        moved = hosts.alive(1, of=2)
        wait_for(lambda: hosts.alive(1, of=2) > moved + 3, 20, "h2 to write from there")
        found = {(a["member"], a["address"]) for a in discover(netns, 1, cluster)}
        assert ("h2", f"{new}:{PORT}") in found
        assert ("h2", f"{addr[2]}:{PORT}") not in found
    finally:
        codes = hosts.finish()
    assert codes == [0, 0, 0, 0]
