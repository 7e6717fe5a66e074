"""embedkv.open's cluster options: checked before anything is created, persisted, and held to
on restart; in-process members on 127.0.0.1 for what needs a running cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import embedkv
from embedkv.member.cluster import cluster_id_for, founder_id
from embedkv.raft import ConfState
from embedkv.storage import DataDir, Identity, LocalInfo, PeerInfo

from .ports import free_port, free_ports
from .waiting import wait_for

FAST = {"tick_interval": 0.02, "request_timeout": 3.0}


def peers_of(*names: str) -> dict[str, str]:
    return {n: f"127.0.0.1:{p}" for n, p in zip(names, free_ports(len(names)), strict=True)}


def found(tmp_path: Path, peers: dict[str, str], token: str = "t",
          **options: Any) -> dict[str, embedkv.Store]:
    """Founders in this process, with FAST timing unless `options` say otherwise."""
    timing = dict(FAST, **options)
    return {n: embedkv.open(tmp_path / n, name=n, listen=a, peers=peers, cluster=token,
                            insecure=True, **timing) for n, a in peers.items()}


@pytest.mark.parametrize("option", [{"listen": "127.0.0.1:7400"},
                                    {"peers": {"n1": "127.0.0.1:7400"}, "name": "n1"},
                                    {"join": ["127.0.0.1:7400"], "name": "n2"}])
def test_peer_links_need_insecure(tmp_path: Path, option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="insecure=True"):
        embedkv.open(tmp_path / "d", **option)
    assert not (tmp_path / "d").exists()  # checked before anything is created


@pytest.mark.parametrize("options, error", [
    ({"name": "n1", "peers": {"n2": "127.0.0.1:7401"}, "cluster": "t"}, "not one of the peers"),
    ({"name": "n1", "peers": {"n1": "127.0.0.1:7400"}}, "cluster='token'"),
    ({"peers": {"n1": "127.0.0.1:7400"}, "cluster": "t"}, "needs name="),
    ({"name": "n 1", "listen": "127.0.0.1:7400"}, "member name"),
    ({"name": "n1", "listen": "nowhere"}, "host:port"),
    ({"name": "n1", "listen": "127.0.0.1:0"}, "fixed port"),
    ({"name": "n1", "peers": {"n1": "127.0.0.1:7400", "n2": "127.0.0.1:7400"}, "cluster": "t"},
     "share one address"),
    ({"name": "n1", "listen": "127.0.0.1:7400", "join": ["127.0.0.1:7401"],
      "peers": {"n1": "127.0.0.1:7400"}}, "not both"),
])
def test_bad_cluster_options_are_refused(tmp_path: Path, options: dict[str, Any],
                                         error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        embedkv.open(tmp_path / "d", insecure=True, **options)


def test_join_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="list"):
        embedkv.open(tmp_path / "d", name="n1", listen="127.0.0.1:7400",
                      join="127.0.0.1:7401", insecure=True)


def test_founders_agree_on_ids_without_talking() -> None:
    peers = {"n1": "a:1", "n2": "b:2", "n3": "c:3"}
    assert cluster_id_for("t", peers) == cluster_id_for("t", dict(reversed(peers.items())))
    assert cluster_id_for("t", peers) != cluster_id_for("u", peers)
    assert founder_id("t", "n1") == founder_id("t", "n1") != founder_id("t", "n2")
    assert founder_id("t", "n1") != founder_id("u", "n1")


def test_join_through_nobody_fails_and_leaves_the_dir_fresh(tmp_path: Path) -> None:
    with pytest.raises(embedkv.Unavailable, match="could not join"):
        listen, nobody = free_ports(2)
        embedkv.open(tmp_path / "d", name="n2", listen=f"127.0.0.1:{listen}",
                     join=[f"127.0.0.1:{nobody}"], insecure=True, **FAST)
    with embedkv.open(tmp_path / "d") as store:  # never bootstrapped: a fresh store
        store["k"] = 1
        assert store.name == "default"


def test_a_removed_member_cannot_open(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "d") as dd:
        dd.bootstrap(Identity(7, 1), ConfState(voters=frozenset({2, 3})),
                     members={2: PeerInfo("n2", "127.0.0.1:7402")},
                     local=LocalInfo("n1", "127.0.0.1:7401", "t"))
    with pytest.raises(embedkv.Removed, match="removed"):
        embedkv.open(tmp_path / "d", insecure=True, **FAST)


def test_three_founders_replicate_and_restart_with_the_path_alone(tmp_path: Path) -> None:
    peers = peers_of("n1", "n2", "n3")
    stores = found(tmp_path, peers)
    try:
        wait_for(lambda: all(s.leader for s in stores.values()), what="a leader")
        stores["n2"]["k"] = "v"
        assert stores["n3"]["k"] == "v"  # linearizable on another member
        members = stores["n1"].members()
        assert [(m.name, m.address, m.voter) for m in members] == [
            (n, peers[n], True) for n in sorted(peers)]
        assert sum(m.leader for m in members) == 1
        status = stores["n3"].status()
        assert status.name == "n3" and status.leader in peers and status.term >= 1
        assert status.commit_index is not None and status.commit_index >= status.applied_index
        stores.pop("n3").close()
    finally:
        for s in stores.values():
            s.close()
    # Peers given again must agree; a restart needs only the path.
    moved = dict(peers, n2="127.0.0.1:1")
    with pytest.raises(ValueError, match="disagree"):
        embedkv.open(tmp_path / "n3", name="n3", peers=moved, cluster="t", insecure=True)
    with pytest.raises(ValueError, match="another cluster"):
        embedkv.open(tmp_path / "n3", cluster="other", insecure=True)
    with pytest.raises(ValueError, match="holds member 'n3'"):
        embedkv.open(tmp_path / "n3", name="n9", insecure=True)
    stores = {n: embedkv.open(tmp_path / n, insecure=True, **FAST) for n in peers}
    try:
        assert stores["n1"]["k"] == "v"
        assert stores["n3"].name == "n3"
    finally:
        for s in stores.values():
            s.close()


def test_membership_changes_return_once_applied(tmp_path: Path) -> None:
    peers = peers_of("n1", "n2", "n3")
    stores = found(tmp_path, peers)
    try:
        wait_for(lambda: all(s.leader for s in stores.values()), what="a leader")
        follower = next(s for n, s in stores.items() if s.leader != n)
        address = f"127.0.0.1:{free_port()}"
        info = follower.add_member("n4", address, learner=True)
        assert (info.name, info.address, info.voter) == ("n4", address, False)
        with pytest.raises(ValueError, match="exists already"):
            follower.add_member("n4", f"127.0.0.1:{free_port()}")
        assert [m.name for m in stores["n1"].members()] == ["n1", "n2", "n3", "n4"]
        follower.remove_member("n4")
        assert [m.name for m in follower.members()] == ["n1", "n2", "n3"]
        with pytest.raises(KeyError, match="n9"):
            follower.remove_member("n9")
        leader = follower.leader
        assert leader is not None
        new = follower.transfer_leadership()
        assert new != leader
        wait_for(lambda: all(s.leader == new for s in stores.values()), what="one leader")
    finally:
        for s in stores.values():
            s.close()


def test_three_members_example_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    example = Path(__file__).parent.parent / "examples" / "three_members.py"
    done = subprocess.run([sys.executable, str(example), "--short", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "the watch on" in out and "config/mode=auto" in out
    assert "hands leadership over first" in out
    assert "config/mode is 'manual'" in out


def test_a_member_removes_itself(tmp_path: Path) -> None:
    peers = peers_of("n1", "n2", "n3")
    stores = found(tmp_path, peers)
    try:
        wait_for(lambda: all(s.leader for s in stores.values()), what="a leader")
        name = next(n for n, s in stores.items() if s.leader != n)  # a follower
        stores[name].remove_member(name)  # returns once done, though it can serve no more
        with pytest.raises(embedkv.Removed):
            stores[name]["k"] = 1
        rest = [s for n, s in stores.items() if n != name]
        rest[0]["k"] = 2
        assert rest[1]["k"] == 2
        assert name not in [m.name for m in rest[1].members()]
    finally:
        for s in stores.values():
            s.close()


def test_join_with_another_clusters_token_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    peers = peers_of("n1", "n2", "n3")
    stores = found(tmp_path, peers)
    try:
        wait_for(lambda: all(s.leader for s in stores.values()), what="a leader")
        with pytest.raises(embedkv.Unavailable, match="another cluster"):
            embedkv.open(tmp_path / "n4", name="n4", listen=f"127.0.0.1:{free_port()}",
                         join=[peers["n1"]], cluster="not-t", insecure=True, **FAST)
        assert [m.name for m in stores["n2"].members()] == ["n1", "n2", "n3"]
    finally:
        for s in stores.values():
            s.close()


def test_a_listen_address_in_use_is_named(tmp_path: Path) -> None:
    import socket as _socket

    with _socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=f"cannot listen for peers on {address}"):
            embedkv.open(tmp_path / "d", name="n1", listen=address, insecure=True, **FAST)
    with embedkv.open(tmp_path / "d") as store:  # released, and still a usable store
        store["k"] = 1


def test_removing_the_leader_through_a_follower_then_adding_through_it(tmp_path: Path) -> None:
    """The follower's call to the leader may break as the removal applies (the removed leader
    is dropped from its peers); the removal still returns, and the next change goes to the
    next leader instead of the removed one (found by the fault campaign)."""
    peers = peers_of("n1", "n2", "n3")
    stores = found(tmp_path, peers)
    try:
        wait_for(lambda: all(s.leader for s in stores.values()), what="a leader")
        leader = stores["n1"].leader
        assert leader is not None
        follower = next(s for n, s in stores.items() if n != leader)
        follower.remove_member(leader)
        follower.add_member("n4", f"127.0.0.1:{free_port()}", learner=True)
        names = [m.name for m in follower.members()]
        assert leader not in names and "n4" in names
    finally:
        for s in stores.values():
            s.close()
