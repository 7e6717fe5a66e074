"""Log compaction and InstallSnapshot (§7)."""

from __future__ import annotations

from embedkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    Role,
    Snapshot,
    SnapshotMeta,
    SnapshotTemporarilyUnavailable,
)

from .cluster import Cluster, encode_state


def _lagging_cluster() -> Cluster:
    """Leader 1 compacted its log past everything follower 3 has."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    for i in range(10):
        c.propose(1, b"%d" % i)
    c.snapshot_and_compact(1)
    assert c.members[1].storage.first_index() > c.members[3].storage.last_index() + 1
    return c


def test_follower_behind_the_compaction_point_gets_a_snapshot() -> None:
    """§7 InstallSnapshot: entries a follower needs were compacted, so it gets the snapshot,
    installs it (Ready.snapshot), acknowledges it, and replication resumes after it."""
    c = _lagging_cluster()
    c.heal()
    c.tick_all(3)
    snaps = c.sent(1, MessageType.SNAP)
    assert len(snaps) == 1 and snaps[0].to == 3 and snaps[0].snapshot is not None
    installed = [rd.snapshot for rd in c.members[3].readies if rd.snapshot is not None]
    assert len(installed) == 1 and installed[0].meta.index == snaps[0].snapshot.meta.index
    assert c.node(1).status().progress[3].state is ProgressState.REPLICATE
    c.propose(1, b"after")
    assert c.payloads(3) == c.payloads(1) == [*(b"%d" % i for i in range(10)), b"after"]
    assert c.members[3].storage.first_index() == installed[0].meta.index + 1


def test_snapshot_not_ready_yet_is_retried_later() -> None:
    """§7: while the storage reports SnapshotTemporarilyUnavailable no snapshot goes out;
    the leader tries again later."""
    c = _lagging_cluster()
    storage = c.members[1].storage
    real = storage.snapshot
    calls = {"n": 0}

    def busy() -> Snapshot:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise SnapshotTemporarilyUnavailable("still building")
        return real()

    storage.snapshot = busy  # type: ignore[method-assign]
    c.heal()
    c.tick_all(1)
    assert calls["n"] >= 1 and not c.sent(1, MessageType.SNAP)
    c.tick_all(5)
    assert len(c.sent(1, MessageType.SNAP)) == 1
    assert c.payloads(3) == c.payloads(1)


def test_failed_snapshot_is_reported_and_sent_again() -> None:
    """§7: when the transport reports that a snapshot failed, the leader probes and resends."""
    c = _lagging_cluster()
    c.heal()
    drop = c.drop_types(MessageType.SNAP)
    c.tick_all(2)
    assert c.node(1).status().progress[3].state is ProgressState.SNAPSHOT
    c.tick_all(5)
    assert len(c.sent(1, MessageType.SNAP)) == 1  # nothing more while it is in flight
    c.filters.remove(drop)
    c.node(1).report_snapshot(3, False)
    pr = c.node(1).status().progress[3]
    assert pr.state is ProgressState.PROBE and pr.pending_snapshot == 0
    c.tick_all(3)
    assert len(c.sent(1, MessageType.SNAP)) == 2
    assert c.payloads(3) == c.payloads(1)


def test_successful_snapshot_report_waits_for_the_follower_ack() -> None:
    """§7: after a reported success the leader probes from after the snapshot."""
    c = _lagging_cluster()
    c.heal()
    hold = c.drop_types(MessageType.SNAP)  # the transport still holds it
    c.tick_all(2)
    [snap] = [m for m in c.dropped if m.type is MessageType.SNAP]
    assert snap.snapshot is not None
    c.filters.remove(hold)
    c.node(1).report_snapshot(3, True)
    pr = c.node(1).status().progress[3]
    assert pr.state is ProgressState.PROBE and pr.next == snap.snapshot.meta.index + 1
    assert pr.paused
    c.deliver(snap)
    c.stabilize()
    assert c.payloads(3) == c.payloads(1)


def test_snapshot_older_than_the_commit_index_is_ignored() -> None:
    """§7: a follower keeps its log when the snapshot brings nothing new."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a", b"b")
    follower = c.node(2)
    commit = follower.status().commit
    old = Snapshot(SnapshotMeta(1, 1, ConfState(voters=frozenset({1, 2, 3}))), encode_state([]))
    follower.step(Message(MessageType.SNAP, to=2, from_=1, term=1, snapshot=old))
    rd = follower.ready()
    assert rd.snapshot is None
    [resp] = [m for m in rd.messages if m.type is MessageType.APP_RESP]
    assert resp.index == commit and not resp.reject


def test_installed_snapshot_replaces_the_configuration() -> None:
    """§7: the snapshot carries the latest configuration as of its index."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    follower = c.node(3)
    cs = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    snap = Snapshot(SnapshotMeta(50, 1, cs), encode_state([b"a"]))
    follower.step(Message(MessageType.SNAP, to=3, from_=1, term=1, snapshot=snap))
    assert follower.status().conf_state == cs
    rd = follower.ready()
    assert rd.snapshot == snap and rd.must_sync
    assert not rd.committed_entries  # nothing is applied before the snapshot is installed
    [resp] = [m for m in rd.messages if m.type is MessageType.APP_RESP]
    assert resp.index == 50


def test_restart_from_a_snapshot() -> None:
    """§7: a server restarts from its snapshot plus the log that follows it."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a", b"b", b"c")
    c.snapshot_and_compact(2)
    c.propose(1, b"d")
    member = c.members[2]
    c.restart(2)
    assert c.node(2).status().applied == member.applied_index
    c.tick_all(2)
    c.propose(1, b"e")
    assert c.payloads(2) == [b"a", b"b", b"c", b"d", b"e"]


def test_new_member_with_empty_storage_joins_via_a_snapshot_that_predates_it() -> None:
    """§7 / thesis §4.2.1: a newcomer may be caught up by a snapshot taken before it was
    added; the entries after the snapshot then add it."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.snapshot_and_compact(1)  # configuration {1, 2, 3}
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    c.add_member(4)
    c.stabilize()
    c.tick_all(3)
    assert c.payloads(4) == [b"a"]
    assert c.members[4].conf_state == c.members[1].conf_state
    assert c.node(4).status().conf_state.learners == {4}


def test_snapshot_at_bootstrap() -> None:
    """§7: a cluster may also start from a snapshot at index 1 (no BOOTSTRAP entry then)."""
    cs = ConfState(voters=frozenset({1, 2, 3}))
    c = Cluster([])
    for node_id in (1, 2, 3):
        storage = MemoryStorage()
        storage.apply_snapshot(Snapshot(SnapshotMeta(1, 1, cs), encode_state([])))
        storage.set_hard_state(HardState(term=1, commit=1))
        member = c.add_member(node_id, storage)
        member.applied_index = 1
    c.elect(2)
    c.propose(2, b"x")
    assert all(c.payloads(i) == [b"x"] for i in (1, 2, 3))
    assert c.node(2).role is Role.LEADER and c.node(2).term == 2
