"""Three members of one cluster, here in one process on 127.0.0.1 (narrated).

On three machines, run the same open() on each with its own name and the machines' addresses
in `peers`, and its certificates in certs/ (README "Clusters" and "Security"); the rest of
this program is what any of them can do:

    peers = {"n1": "192.168.1.11:7400", "n2": "192.168.1.12:7400", "n3": "192.168.1.13:7400"}
    store = embedkv.open("data/", name="n1", listen="0.0.0.0:7400", peers=peers,
                         cluster="plant-7", tls="certs/")

Here the cluster CA and the three member certificates are made in the data root first (what
`embedkv certs init certs/` and `embedkv certs issue certs/ n1` do).

    python examples/three_members.py [--short] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import tempfile
import threading
import time
from pathlib import Path

import embedkv
from embedkv.net import tls


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1: all bound at once, as one at a time the kernel
    may hand the same port out twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def wait_until(what: str, cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not (cond() if callable(cond) else cond):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a quick run (the test suite's)")
    parser.add_argument("--dir", type=Path, default=None, help="where the data dirs go")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="embedkv-three-"))
    tick = 0.05 if args.short else 0.1  # seconds per Raft tick (0.1: the default)

    names = ("n1", "n2", "n3")
    peers = {name: f"127.0.0.1:{port}" for name, port in zip(names, free_ports(3), strict=True)}
    certs = root / "certs"
    if not (certs / "ca.pem").exists():  # a second run in the same --dir reuses them
        tls.init_ca(certs)  # ca.pem, ca.key (0600): keep ca.key off the members
        for name in peers:
            tls.issue(certs, name, ips=["127.0.0.1"])  # NAME.pem, NAME.key (0600)
    stores = {
        name: embedkv.open(root / name, name=name, listen=address, peers=peers,
                           cluster="example", tls=certs, tick_interval=tick)
        for name, address in peers.items()
    }
    print("three members linked by mutual TLS 1.3, each known by the name in its certificate")
    try:
        wait_until("a leader", lambda: all(s.leader for s in stores.values()))
        leader = stores["n1"].leader
        assert leader is not None
        print(f"three members up; {leader} leads")
        follower = next(name for name in stores if name != leader)

        seen: list[str] = []
        got = threading.Event()

        def on_change(event: embedkv.Event) -> None:
            seen.append(f"{event.kv.key!s}={event.kv.value}")
            got.set()

        watching = next(name for name in stores if name not in (leader, follower))
        with stores[watching].watch("config/", on_change, prefix=True):
            stores[follower]["config/mode"] = "auto"  # forwarded to the leader, applied here
            print(f"wrote config/mode on follower {follower}; "
                  f"read on {leader}: {stores[leader]['config/mode']!r}")
            got.wait(10)
            print(f"the watch on {watching} saw: {', '.join(seen)}")

        for m in stores[follower].members():
            role = "leader" if m.leader else ("voter" if m.voter else "learner")
            print(f"  member {m.name} at {m.address}: {role}")

        print(f"closing the leader {leader}: it hands leadership over first")
        stores.pop(leader).close()
        wait_until("a new leader", lambda: all(
            s.leader not in (None, leader) for s in stores.values()))
        new = stores[follower].leader
        print(f"{new} leads now; writes go on with two of three members")
        stores[follower]["config/mode"] = "manual"
        print(f"config/mode is {stores[watching]['config/mode']!r} on {watching}")
    finally:
        for s in stores.values():
            s.close()


if __name__ == "__main__":
    main()
