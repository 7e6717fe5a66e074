"""Every recipe example runs in its short mode from a fresh interpreter, on three members of
one cluster, and says what it promises, so none can rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECT = {
    "lock_fencing.py": ["worker-1 wakes up and writes count=11: refused by the store",
                        "count is 7"],
    "work_queue.py": ["is killed with SIGKILL before its ack\n",
                      "consumer-B finished thumbnail-first.png (redelivered: consumer-A's "
                      "claim ended with its lease)",
                      "every job done exactly once: True, 0 left"],
    "service_discovery.py": ["with SIGKILL (no more heartbeats)\n",
                             "  registry (on n1): leave 10.0.0."],
    "leader_election.py": ["node-a is the leader\n  observer (on n3): node-a leads\n",
                           "is killed with SIGKILL\nnode-b is the leader\n"
                           "  observer (on n3): node-b leads\nnode-b took over",
                           "node-b resigns\n  observer (on n3): nobody leads\n"],
    "config_pubsub.py": ["member n2) sees (revision 2): {'log_level': 'info', 'workers': 4}",
                         "the view changed all at once: {'log_level': 'debug', 'workers': 8} "
                         "(on n2, revision 3)\nthe view changed all at once: "
                         "{'log_level': 'debug', 'workers': 8} (on n3, revision 3)"],
    "health_monitor.py": ["healthy: ['worker-0', 'worker-1', 'worker-2']\n",
                          "is killed with SIGKILL: its heartbeats stop\n"
                          "  monitor (on n1): worker-",
                          "'s process is started again"],
}

PROCESSES = {"leader_election.py": 2, "config_pubsub.py": 2, "work_queue.py": 2,
             "service_discovery.py": 2, "health_monitor.py": 3}
"""The examples whose actors run in processes of their own: how many they start (the health
monitor starts its killed worker's process again)."""


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs_in_short_mode(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), str(tmp_path / "data"), "--short"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # a link reset by a closing member is a lost peer, not an error
    # --short reaches every example: three members and 1-second leases
    assert "three members n1, n2, n3 on 127.0.0.1 (short run, leases of 1 s)" in proc.stdout
    for line in EXPECT[name]:
        assert line in proc.stdout, proc.stdout
    if name in PROCESSES:  # its actors ran in processes of their own, one per member
        assert "one process each" in proc.stdout
        pids = {int(p) for p in re.findall(r"process (\d+), member", proc.stdout)}
        assert len(pids) == PROCESSES[name] and os.getpid() not in pids
    if name == "health_monitor.py":  # the killed worker drops out, and is back after
        after = proc.stdout.split("is killed")[1]
        healthy = re.findall(r"healthy: \[(.*)\]", after)
        assert [h.count("worker-") for h in healthy] == [2, 3]
    if name == "service_discovery.py":  # after the kill, the gateway routes around it
        dead = re.findall(r"backend (\S+)'s process", proc.stdout)[0]
        routed = [line for line in proc.stdout.split("is killed")[1].splitlines()
                  if line.startswith("gateway routes")]
        assert routed and not any(dead in line for line in routed)
        assert f"registry (on n1): leave {dead}" in proc.stdout


def test_every_recipe_example_is_covered() -> None:
    others = {"quickstart.py", "_common.py", "three_members.py", "_lan.py"}
    # tests/discovery/test_examples.py runs the LAN examples (members found by discovery)
    lan = {p.name for p in EXAMPLES.glob("lan_*.py")} | {"discovery_lan.py"}
    recipes = {p.name for p in EXAMPLES.glob("*.py")} - others - lan
    assert recipes == set(EXPECT)
