"""The harness itself, on a one-member store in a child process: commands, watches, leases,
the key-space hash, SIGKILL and restart, SIGSTOP, errors carried back with their class and
the child's stderr quoted when it dies."""

from __future__ import annotations

import pytest

import embedkv
from tests.waiting import wait_for

from .harness import ChildError, Member, remote_error


def test_commands_round_trip(lone_member: Member) -> None:
    m = lone_member
    r1 = m.put("a", 1)
    assert m.get("a") == 1
    assert m.get("a", serializable=True) == 1
    assert m.call("cas", key="a", expected=1, new=2) is True
    assert m.call("cas", key="a", expected=1, new=3) is False
    txn = m.call("txn", compare=[["a", 2]], success=[["b", "x"]], failure=[])
    assert txn["succeeded"] is True
    assert m.call("range", prefix="") == [["a", 2], ["b", "x"]]
    assert m.call("delete", key="b")["deleted"] == 1
    assert m.get("b") is None
    assert m.call("revision") > r1
    assert m.status()["revision"] == m.call("revision")


def test_hash_tracks_the_key_space(lone_member: Member) -> None:
    m = lone_member
    m.call("fill", prefix="k/", count=4500, batch=1000)  # several pages of the hash's range
    first = m.hash()
    assert first["count"] == 4500
    assert m.hash(revision=first["revision"]) == first
    m.put("k/00000007", "changed")
    second = m.hash()
    assert second["hash"] != first["hash"] and second["count"] == 4500
    assert m.hash(revision=first["revision"]) == first  # history still holds the old state


def test_watch_and_lease(lone_member: Member) -> None:
    m = lone_member
    wid = m.call("watch_start", key="w/", prefix=True)
    lease = m.call("lease_grant", ttl=30)
    m.put("w/1", "one", lease=lease["id"])
    m.call("delete", key="w/1")
    rows = wait_for(lambda: (r := m.call("watch_events", wid=wid))["events"][1:] and r,
                    what="two events")["events"]
    assert [(r[0], r[1], r[2]) for r in rows] == [("PUT", "w/1", "one"), ("DELETE", "w/1", None)]
    assert m.call("watch_events", wid=wid, since=1)["events"] == rows[1:]
    assert m.call("lease_keepalive", lease=lease["id"]) == 30
    assert 0 < m.call("lease_ttl", lease=lease["id"]) <= 30
    m.call("lease_revoke", lease=lease["id"])
    with pytest.raises(embedkv.LeaseNotFound):
        m.call("lease_ttl", lease=lease["id"])


def test_load_runs_in_the_child(lone_member: Member) -> None:
    m = lone_member
    puts = m.call("load", kind="put", threads=4, count=25, prefix="load/")
    assert puts["ops"] == 100 and not puts["errors"]
    m.call("load_start", name="bg", threads=2, prefix="bg/")
    wait_for(lambda: m.call("load_progress", name="bg") >= 10, what="background puts")
    state = m.call("load_stop", name="bg")
    assert len(state["acked"]) >= 10 and not state["failed"]
    assert all(m.get(key) is not None for key in state["acked"])


def test_kill_restart_keeps_acknowledged_writes(lone_member: Member) -> None:
    m = lone_member
    m.call("put_many", prefix="p/", count=50)
    before = m.hash()
    m.kill()
    assert not m.alive
    with pytest.raises(ChildError, match="not running"):
        m.put("x", 1)
    m.restart()
    assert m.hash() == before


def test_stopped_child_times_out_then_answers(lone_member: Member) -> None:
    m = lone_member
    m.stop()
    fut = m.send("ping")
    with pytest.raises(ChildError, match="no answer"):
        m.result(fut, "ping", timeout=0.2)
    m.cont()
    assert fut.result(10)["ok"]


def test_errors_keep_their_class_and_quote_stderr(lone_member: Member) -> None:
    m = lone_member
    with pytest.raises(embedkv.Compacted):
        m.call("compact", revision=m.put("c", 1))
        m.call("hash", revision=1)
    with pytest.raises(ChildError, match="unknown command"):
        m.call("no_such_command")
    m.kill()
    m.stderr_path.write_text(m.stderr_path.read_text() + "a line of child stderr\n")
    with pytest.raises(ChildError, match="a line of child stderr"):
        m.call("ping")


def test_removed_maps_to_unavailable_where_missing() -> None:
    reply = {"error": "Removed", "mro": ["Removed", "Unavailable", "Error", "Exception"],
             "message": "this member was removed"}
    exc = remote_error(reply, "n3 put")
    assert isinstance(exc, embedkv.Unavailable)
    assert "this member was removed" in str(exc)


def test_failed_open_is_reported_with_stderr(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    m = Member("bad", root / "bad", root, {"no_such_option": 1})
    with pytest.raises(ChildError, match="failed to open: TypeError"):
        m.start()
    assert not m.alive

