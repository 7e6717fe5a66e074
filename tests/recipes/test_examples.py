"""Every recipe example runs in its short mode from a fresh interpreter and narrates what it
promises, in order, to its last line, so none can rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECT = {  # lines that must appear in this order; the last is the example's last line
    "lock_fencing.py": [
        "worker-1 writes count=10 under the lock: accepted",
        "worker-1 stalls (a long GC pause): its keep-alives stop (lease 1 s)",
        "worker-2 acquires the lock after worker-1's lease expired, a higher token: True",
        "worker-1 wakes up and writes count=11: refused by the store",
        "count is 7",
    ],
    "work_queue.py": [
        "producer queued 4 jobs (4 waiting)",
        "consumer-A took thumbnail-first.png ... and crashes before finishing it",
        "consumer-B finished image-0.png",
        "consumer-B finished thumbnail-first.png",
        "consumer-A's late ack is refused: the job was redelivered, done once",
        "every job done exactly once: True, 0 left",
    ],
    "service_discovery.py": [
        "backend 10.0.0.2 is killed (no more heartbeats; lease 1 s)",
        "  registry: leave ",
        "after the death: 6 requests over 2 live backends, none to 10.0.0.2",
    ],
    "leader_election.py": [
        "node-a is the leader",
        "node-a is killed (lease 1 s)",
        "node-b is the leader",
        "node-b took over; node-a leader? False",
        "node-b resigned: nobody leads; leaders seen: [None, 'node-a', 'node-b', None]",
    ],
    "config_pubsub.py": [
        "subscriber sees (revision 2): {'log_level': 'info', 'workers': 4}",
        "publisher sets log_level=debug and workers=8 in one transaction",
        "  subscriber: revision 3: {'log_level': 'debug', 'workers': 8}",
        "the view changed all at once: {'log_level': 'debug', 'workers': 8}",
    ],
    "health_monitor.py": [
        "healthy: ['worker-0', 'worker-1', 'worker-2']",
        "worker-1 hangs: its heartbeats stop (lease 1 s)",
        "  monitor: ",
        "healthy: ['worker-0', 'worker-2']",
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs_in_short_mode(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), str(tmp_path / "data"), "--short"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    at = 0
    for want in EXPECT[name]:
        # Callback lines are matched by their start (their member ids vary).
        found = [i for i in range(at, len(lines))
                 if lines[i] == want or (want.startswith("  ") and lines[i].startswith(want))]
        assert found, f"{want!r} missing (after line {at}) in:\n{proc.stdout}"
        at = found[0] + 1
    assert lines[-1] == EXPECT[name][-1], proc.stdout
    if name == "service_discovery.py":
        after = proc.stdout.split("is killed")[1]
        assert "10.0.0.2:8080" not in after


def test_every_recipe_example_is_covered() -> None:
    not_recipes = {"quickstart.py", "_common.py", "three_members.py"}
    recipes = {p.name for p in EXAMPLES.glob("*.py")} - not_recipes
    assert recipes == set(EXPECT)
