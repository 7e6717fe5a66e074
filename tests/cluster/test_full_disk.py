"""A full disk on one member (its data dir on a small tmpfs that a ballast file fills): it fails
the writes asked of it with NoSpace and still serves serializable reads, the others go on
committing without it, and once space is back it catches up by itself, nothing acknowledged
lost. Skipped where a tmpfs cannot be mounted (CI runs as root)."""

from __future__ import annotations

import pytest

import embedkv

from ..waiting import wait_for
from .conftest import MakeCluster
from .harness import FAST

PAD = "x" * 20_000
"""Values big enough that the full member's LMDB file must grow within a few writes."""


@pytest.mark.parametrize(("whom", "crash"), [("follower", False), ("follower", True),
                                             ("leader", False)],
                         ids=["follower-resumes", "follower-crashed-and-restarted",
                              "leader-hands-over"])
def test_a_member_with_a_full_disk_fails_writes_and_catches_up(
        make_cluster: MakeCluster, whom: str, crash: bool) -> None:
    """`whom`: the leader's disk fills, or a follower's; `crash`: the full member is killed
    and restarted while its disk is still full, before the space comes back. A full leader
    cannot make its entries durable: another member takes over."""
    cluster = make_cluster(3, start=False)
    why = cluster.small_disks(["n3"])
    if why is not None:
        pytest.skip(f"no small disk: {why}")
    try:
        cluster.start()
        full = cluster["n3"]
        leader = cluster.wait_leader()
        if (leader is full) != (whom == "leader"):
            leader.call("transfer_leadership", to="n1" if whom == "follower" else "n3")
            leader = cluster.wait_leader()
        assert (leader is full) == (whom == "leader")
        leader.put("before", 1)
        cluster.wait_converged()
        disk = cluster.disks["n3"]
        assert disk.fill() > 0
        others = [m for m in cluster if m is not full]

        acked: dict[str, int] = {}
        refused: list[BaseException] = []

        def refuses() -> bool:
            for _ in range(20):  # the others commit on; the full member cannot follow
                key = f"k{len(acked)}"
                try:
                    acked[key] = others[0].put(key, PAD)
                except embedkv.Unavailable:
                    break  # a full leader, not replaced yet
            try:
                full.put("through-full", 1)
            except embedkv.NoSpace as exc:
                refused.append(exc)
                return True
            return False

        wait_for(refuses, 60.0, "the full member to refuse a write with NoSpace")
        assert "space" in str(refused[0]).lower()
        assert full.get("before", serializable=True) == 1  # reads go on
        assert acked, "nothing committed without the full member"
        assert cluster.wait_leader(others) in others
        for m in others:
            assert m.get(max(acked)) == PAD
        if crash:
            full.kill()
            full.restart(**{k: v for k, v in cluster.options.items() if k in FAST})
            for m in others:
                acked["during-restart"] = m.put("during-restart", PAD)
        disk.free()
        converged = cluster.wait_converged(timeout=60.0)
        assert converged["count"] >= len(acked) + 1
        for key in acked:
            assert full.get(key, serializable=True) == PAD
        full.put("after", 2)  # it takes writes again
        assert others[0].get("after") == 2
    finally:
        cluster.kill_all()
        cluster.unmount_disks()
