"""Leases: expiry by the leader with DELETE events, keep-alives, countdown restart on a new
leader. Deadlines run on a hand-driven clock; the test waits for engine ticks, never sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkv.errors import Closed, LeaseNotFound
from embedkv.member import Member
from embedkv.storage.requests import EventType, LeaseGrantResult, Put
from tests.waiting import wait_for

from .conftest import TICK, Collector, FakeClock


def settle(m: Member) -> None:
    """Let the engine check lease deadlines at least once after the clock moved, and let any
    revoke it proposed meanwhile be applied (it is queued before the put below)."""
    ticks = m.stats.ticks
    wait_for(lambda: m.stats.ticks >= ticks + 2, what="two engine ticks")
    m.propose(Put("settle", 0)).result(5)


def grant(m: Member, ttl: int) -> int:
    res = m.grant_lease(ttl).result(5)
    assert isinstance(res, LeaseGrantResult) and res.ttl == ttl
    return res.id


def test_expired_lease_deletes_its_keys_with_delete_events(
    member: Member, clock: FakeClock
) -> None:
    seen = Collector()
    member.watch("svc/", seen, prefix=True)
    lease = grant(member, 10)
    member.propose(Put("svc/a", 1, lease=lease)).result(5)
    member.propose(Put("svc/b", 2, lease=lease)).result(5)
    member.propose(Put("svc/static", 3)).result(5)
    assert member.lease_time_to_live(lease) == (10, 10.0)
    clock.advance(9)
    settle(member)
    assert member.lease_time_to_live(lease) == (10, 1.0)
    assert member.data_dir.kv.get("svc/a") is not None
    clock.advance(1)
    events = seen.wait(5)
    assert [(e.type, e.key) for e in events[3:]] == [
        (EventType.DELETE, "svc/a"),
        (EventType.DELETE, "svc/b"),
    ]
    assert member.data_dir.kv.get("svc/a") is None
    assert member.data_dir.kv.get("svc/static") is not None
    assert member.lease_time_to_live(lease) is None
    wait_for(lambda: lease not in member._leases._ttl, what="the keeper to forget the lease")
    with pytest.raises(LeaseNotFound):
        member.keepalive(lease)


def test_keepalive_restarts_the_countdown(member: Member, clock: FakeClock) -> None:
    lease = grant(member, 10)
    member.propose(Put("k", 1, lease=lease)).result(5)
    for _ in range(4):
        clock.advance(7)
        settle(member)
        assert member.keepalive(lease) == 10
        assert member.lease_time_to_live(lease) == (10, 10.0)
    assert member.data_dir.kv.get("k") is not None  # 28 s on a 10 s lease, still alive
    clock.advance(10)
    wait_for(lambda: member.data_dir.kv.get("k") is None, what="the lease to expire")


def test_auto_keepalive_refreshes_every_third_of_the_ttl(member: Member, clock: FakeClock) -> None:
    lease = grant(member, 9)
    member.propose(Put("k", 1, lease=lease)).result(5)
    member.set_auto_keepalive(lease, True)
    for _ in range(6):
        clock.advance(3)
        wait_for(lambda: member.lease_time_to_live(lease) == (9, 9.0), what="a refresh")
    assert member.data_dir.kv.get("k") is not None  # 18 s on a 9 s lease
    member.set_auto_keepalive(lease, False)
    clock.advance(9)
    wait_for(lambda: member.data_dir.kv.get("k") is None, what="the lease to expire")
    with pytest.raises(LeaseNotFound):
        member.set_auto_keepalive(lease, True)


def test_new_leader_restarts_every_countdown(path: Path, clock: FakeClock) -> None:
    with Member.open(path, durable=False, tick_interval=TICK, clock=clock) as m:
        lease = grant(m, 10)
        m.propose(Put("k", 1, lease=lease)).result(5)
        clock.advance(8)
        settle(m)
        assert m.lease_time_to_live(lease) == (10, 2.0)
    with Member.open(path, durable=False, tick_interval=TICK, clock=clock) as m:
        assert m.lease_time_to_live(lease) == (10, 10.0)  # full TTL again
        clock.advance(8)
        settle(m)
        assert m.data_dir.kv.get("k") is not None  # 16 s since the grant: alive
        clock.advance(2)
        wait_for(lambda: m.data_dir.kv.get("k") is None, what="the lease to expire")


def test_revoke_deletes_keys_and_unknown_leases_are_not_found(member: Member) -> None:
    seen = Collector()
    member.watch("l/", seen, prefix=True)
    lease = grant(member, 60)
    member.propose(Put("l/1", 1, lease=lease)).result(5)
    res = member.revoke_lease(lease).result(5)
    assert res.deleted == 1
    assert [(e.type, e.key) for e in seen.wait(2)] == [
        (EventType.PUT, "l/1"),
        (EventType.DELETE, "l/1"),
    ]
    with pytest.raises(LeaseNotFound):
        member.revoke_lease(lease).result(5)
    with pytest.raises(LeaseNotFound):
        member.keepalive(lease)
    assert member.lease_time_to_live(lease) is None
    with pytest.raises(LeaseNotFound):
        member.keepalive(0x4242)


def test_grant_with_a_chosen_id_and_argument_checks(member: Member) -> None:
    res = member.grant_lease(30, lease_id=0x77).result(5)
    assert res.id == 0x77
    assert member.data_dir.kv.lease(0x77) == (30, [])
    with pytest.raises(TypeError):
        member.grant_lease(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        member.grant_lease(0)
    with pytest.raises(TypeError):
        member.keepalive("lease")  # type: ignore[arg-type]
    member.close()
    with pytest.raises(Closed):
        member.keepalive(0x77)
    with pytest.raises(Closed):
        member.grant_lease(5)
