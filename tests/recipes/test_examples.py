"""Every recipe example runs in its short mode from a fresh interpreter, on three members of
one cluster, and says what it promises, so none can rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECT = {
    "lock_fencing.py": ["worker-1 wakes up and writes count=11: refused by the store",
                        "count is 7"],
    "work_queue.py": ["consumer-A's late ack is refused: the job was redelivered, done once",
                      "every job done exactly once: True, 0 left"],
    "service_discovery.py": ["backend 10.0.0.2 is killed (no more heartbeats)"],
    "leader_election.py": ["node-b is the leader"],
    "config_pubsub.py": ["the view changed all at once: {'log_level': 'debug', 'workers': 8}"],
    "health_monitor.py": ["healthy: ['worker-0', 'worker-2']"],
}


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
    if name == "service_discovery.py":
        after = proc.stdout.split("is killed")[1]
        assert "10.0.0.2:8080" not in after.replace("registry", "")


def test_every_recipe_example_is_covered() -> None:
    others = {"quickstart.py", "_common.py", "three_members.py"}
    recipes = {p.name for p in EXAMPLES.glob("*.py")} - others
    assert recipes == set(EXPECT)
