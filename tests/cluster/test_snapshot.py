"""A member that fell behind the retained log catches up by a snapshot streamed from the
leader: after a restart, or live (without a restart), its open watches continuing from the
installed history, or ending with Compacted when their next revision is gone.

The children keep a short Raft log (a few dozen entries instead of 15,000) so that a few
hundred writes compact it past the lagging member."""

from __future__ import annotations

from typing import Any

import pytest

from tests.waiting import wait_for

from .conftest import MakeCluster
from .harness import Cluster, Member

SHORT_LOG = {"log_retain": 20, "log_compact_every": 50}


def compact_past(cluster: Cluster, leader: Member, behind: int, prefix: str,
                 lagging: Member) -> None:
    """Write (one Raft entry each) until the log of every member but `lagging` starts past
    index `behind`, so that `lagging`, which applied only up to `behind`, can catch up by a
    snapshot alone."""
    def compacted() -> bool:
        return all(m.call("log_bounds")["first"] > behind + 1
                   for m in cluster.running() if m is not lagging)

    for round_ in range(20):
        if compacted():
            return
        leader.call("put_many", prefix=prefix, count=100, start=100 * round_)
    raise AssertionError(f"the leader's log never started past index {behind}")


def lagging_cluster(make_cluster: MakeCluster,
                    tls: bool = False) -> tuple[Cluster, Member, Member]:
    """Three members keeping a short log, one write applied on all: the cluster, its leader
    and the follower that is to fall behind."""
    cluster = make_cluster(3, child_options=SHORT_LOG, tls=tls)
    leader = cluster.wait_leader()
    lagging = cluster.followers(leader)[0]
    leader.put("first", 1)
    cluster.wait_converged()
    return cluster, leader, lagging


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_member_down_while_the_log_is_compacted_catches_up_by_snapshot(
    make_cluster: MakeCluster, tls: bool,
) -> None:
    cluster, leader, lagging = lagging_cluster(make_cluster, tls)
    behind = lagging.call("log_bounds")["applied"]
    lagging.kill()
    compact_past(cluster, leader, behind, "s/", lagging)
    lagging.restart()
    assert lagging.get("first") == 1
    converged = cluster.wait_converged()
    assert converged["count"] > 100
    # It caught up by a snapshot: it did not replay the entries it missed.
    assert lagging.call("installs") >= 1
    assert lagging.call("log_bounds")["first"] > behind + 1
    lagging.put("after", 1)
    assert leader.get("after") == 1


def events(member: Member, wid: int) -> dict[str, Any]:
    reply: dict[str, Any] = member.call("watch_events", wid=wid)
    return reply


def test_cut_off_member_installs_a_snapshot_live_and_its_watch_continues(
    make_cluster: MakeCluster,
) -> None:
    cluster, leader, lagging = lagging_cluster(make_cluster)
    pid = lagging.call("ping")
    wids = {m.name: m.call("watch_start", key="s/", prefix=True) for m in cluster}
    # Cut off, not stopped: a stopped process still gets every entry the leader pipelines
    # into its socket buffers before the log is compacted, and would not need a snapshot.
    cluster.partition([lagging])
    # What it holds, applied or not: the entries after it must be compacted away.
    behind = lagging.call("log_bounds")["last"]
    compact_past(cluster, leader, behind, "s/", lagging)
    last = leader.put("s/last", "end")
    cluster.heal()
    cluster.wait_converged()
    assert lagging.call("ping") == pid  # installed without a restart
    assert lagging.call("installs") >= 1

    expected = leader.watch_until(wids[leader.name], last)
    # Every event once, in order, across the install.
    assert lagging.watch_until(wids[lagging.name], last) == expected
    lagging.put("s/after", 1)
    assert leader.get("s/after") == 1


def test_watch_ends_with_compacted_when_the_snapshot_skips_its_next_revision(
    make_cluster: MakeCluster,
) -> None:
    cluster, leader, lagging = lagging_cluster(make_cluster)
    wid = lagging.call("watch_start", key="c/", prefix=True)
    # Cut off by the fault hook, not frozen: a frozen member would still read the appends
    # its socket buffered, and see the revisions this test wants compacted away from it.
    cluster.partition([lagging])
    # What it holds, applied or not: the entries after it must be compacted away.
    behind = lagging.call("log_bounds")["last"]
    compact_past(cluster, leader, behind, "c/", lagging)
    leader.call("compact", revision=leader.call("revision"))  # history below it is gone
    compact_past(cluster, leader, leader.call("log_bounds")["applied"], "c/", lagging)
    assert lagging.call("revision") == 2  # it saw none of it
    cluster.heal()
    cluster.wait_converged()
    assert lagging.call("installs") >= 1
    ended = wait_for(lambda: (r := events(lagging, wid))["error"] and r,
                     what="the watch to end")
    assert ended["error"] == "Compacted", ended
    assert ended["events"] == []  # nothing was skipped silently: it never saw a later event
