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
from typing import Any

import pytest

from ..waiting import wait_for

LAB = Path(__file__).parent.parent / "tools" / "netns-lab.sh"
CHILD = Path(__file__).parent / "ns_child.py"


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


def test_three_hosts_form_one_cluster_and_a_fourth_joins(netns: NetnsLab,
                                                         tmp_path: Path) -> None:
    cluster = f"plant-{secrets.token_hex(4)}"
    stop = tmp_path / "stop"
    procs = []

    def start(i: int) -> Path:
        out = tmp_path / f"h{i}.json"
        addr = netns.run("addr", str(i))
        procs.append(subprocess.Popen(
            ["bash", str(LAB), "exec", str(i), sys.executable, str(CHILD),
             str(tmp_path / f"h{i}"), f"h{i}", f"{addr}:7400", cluster, "3", str(out),
             str(stop)], env=netns.env))
        return out

    try:
        outs = [start(i) for i in (1, 2, 3)]

        def formed() -> bool:
            reports = [report(o) for o in outs]
            return all(r is not None and r["voters"] == ["h1", "h2", "h3"] for r in reports)

        wait_for(formed, 60, "three hosts to form one cluster")
        ids = {r["cluster_id"] for r in map(report, outs) if r is not None}
        assert len(ids) == 1
        fourth = start(4)

        def joined() -> bool:
            r = report(fourth)
            return r is not None and r["voters"] == ["h1", "h2", "h3", "h4"]

        wait_for(joined, 60, "the fourth host to join and be promoted")
        r4 = report(fourth)
        assert r4 is not None and r4["cluster_id"] in ids
    finally:
        stop.touch()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
