"""Shared by the recipe examples: three members of one cluster on 127.0.0.1 — in this process
(``cluster``), or one per process (``processes``: the example runs itself again as each other
member, with ``--role``) — and the run's mode (``--short``: the test suite's quick run, with
1-second leases)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import embedkv


def args(doc: str | None) -> argparse.Namespace:
    """The example's arguments; ``.ttl`` is the leases' TTL for the mode (1 s when short)."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("data_dir", nargs="?",
                   help="a new dir for the members' data dirs (default: a temporary one)")
    p.add_argument("--short", action="store_true", help="a quick run (the test suite's)")
    # A member process started by `processes`: its role, its member's name, and the peers.
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--member", help=argparse.SUPPRESS)
    p.add_argument("--peers", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.ttl = 1 if a.short else 3
    return a


def _founders() -> dict[str, str]:
    """Three founders' addresses on 127.0.0.1, on distinct free ports: bound all at once, as
    one at a time the kernel may hand the same port out twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(3)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return {f"n{i}": f"127.0.0.1:{s.getsockname()[1]}" for i, s in enumerate(socks, 1)}


def _member(a: argparse.Namespace, root: Path, name: str, peers: dict[str, str]) -> embedkv.Store:
    """Open member `name` of the founders `peers` (on three machines, each runs the same
    open() with its own name: README "Clusters")."""
    # Short ticks: 1-second leases are noticed promptly; an election timeout of 25 ticks
    # (0.5 s) still rides out a loaded machine (the test suite's) without needless elections.
    tick = 0.02 if a.short else 0.05
    return embedkv.open(root / name, name=name, listen=peers[name], peers=peers,
                        cluster="recipe-example", insecure=True, tick_interval=tick,
                        election_tick=25 if a.short else 10)


def _wait_leader(stores: list[embedkv.Store]) -> None:
    deadline = time.monotonic() + 30
    while not all(s.leader for s in stores):
        if time.monotonic() > deadline:
            raise SystemExit("no leader within 30 s")
        time.sleep(0.02)


def _wait_serving(store: embedkv.Store) -> None:
    """Wait until `store` knows a leader and has served a request forwarded through it."""
    _wait_leader([store])
    store.txn()  # an empty transaction: a proposal like any write, changing nothing


def _started(a: argparse.Namespace, leader: str | None, how: str = "") -> None:
    mode = "short run, " if a.short else ""
    print(f"three members n1, n2, n3 on 127.0.0.1 ({mode}leases of {a.ttl} s){how}; "
          f"{leader} leads", flush=True)


@contextmanager
def cluster(a: argparse.Namespace) -> Iterator[list[embedkv.Store]]:
    """Three founders n1, n2, n3 in this process; the example puts its actors on different
    members."""
    peers = _founders()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.data_dir or tmp)
        stores: list[embedkv.Store] = []
        try:
            for name in peers:
                stores.append(_member(a, root, name, peers))
            _wait_leader(stores)
            _started(a, stores[0].leader)
            yield stores
        finally:
            for s in stores:
                s.close()


class Child:
    """Another member's process, running this same example with ``--role``: it talks in
    lines on its stdout (those starting with "@" are signals, the rest narration, which
    this process prints when it reaches them, so the story keeps one order), and takes
    commands on its stdin."""

    def __init__(self, a: argparse.Namespace, script: str, role: str, name: str,
                 peers: dict[str, str], root: Path) -> None:
        self.role, self.name = role, name
        self._cmd = [sys.executable, script, str(root), "--role", role, "--member", name,
                     "--peers", json.dumps(peers)] + (["--short"] if a.short else [])
        self._start()

    def _start(self) -> None:
        self._proc = subprocess.Popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, bufsize=1)
        self.pid = self._proc.pid
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(self._proc, self._lines), daemon=True).start()

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.SimpleQueue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)  # the process ended

    def restart(self) -> None:
        """Start the killed process again: its member reopens its data dir and catches up
        with the cluster; its role starts afresh."""
        if self._proc.poll() is None:
            raise RuntimeError(f"{self.name}'s process is still running")
        self._start()
        self.expect("@open")

    def tell(self, command: str) -> None:
        """Send `command` (one line) to the process."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()

    def expect(self, signal_: str, timeout: float = 60) -> None:
        """Print the process's narration until it signals `signal_` ("@..."); SystemExit if
        it ends or stays silent for `timeout` seconds first."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise SystemExit(f"{self.role} ({self.name}) did not say {signal_!r}") from None
            if line is None:
                self._lines.put(None)  # still ended for stop()
                raise SystemExit(f"{self.role} ({self.name}) ended before saying {signal_!r}")
            if line == signal_:
                return
            if not line.startswith("@"):
                print(line, flush=True)

    def kill(self) -> None:
        """SIGKILL: the process ends at once, without closing anything."""
        os.kill(self.pid, signal.SIGKILL)
        self._proc.wait(30)

    def stop(self) -> None:
        """End of input: the process closes its member and exits; its last words are printed."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(30)
        while (line := self._lines.get(timeout=30)) is not None:
            if not line.startswith("@"):
                print(line, flush=True)
        if self._proc.returncode not in (0, -signal.SIGKILL):
            raise SystemExit(f"{self.role} ({self.name}) exited with {self._proc.returncode}")


@contextmanager
def processes(a: argparse.Namespace, script: str, here: str,
              roles: Mapping[str, str]) -> Iterator[tuple[embedkv.Store, dict[str, Child]]]:
    """Three founders n1, n2, n3, one per process: this one is member `here`; for each
    ``member: role`` of `roles`, a process runs `script` again as that member, acting
    `role` (see ``serve``). Yields our store and the children by member name."""
    peers = _founders()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.data_dir or tmp)
        children: dict[str, Child] = {}
        store: embedkv.Store | None = None
        try:
            store = _member(a, root, here, peers)
            for name, role in roles.items():
                children[name] = Child(a, script, role, name, peers, root)
            for child in children.values():
                child.expect("@open")
            _wait_serving(store)
            _started(a, store.leader, ", one process each")
            yield store, children
        finally:
            try:
                for child in children.values():
                    child.stop()
            finally:
                if store is not None:
                    store.close()


class Parent:
    """What a member process's role has of the process that started it: ``say`` narrates
    (or signals, with "@..."), ``command`` waits for its next instruction."""

    def say(self, line: str) -> None:
        print(line, flush=True)

    def command(self) -> str:
        """The next command line; "" once the parent is done with us (end of input)."""
        return sys.stdin.readline().strip()


Role = Callable[[embedkv.Store, argparse.Namespace, Parent], None]


def serve(a: argparse.Namespace, roles: Mapping[str, Role]) -> bool:
    """In a process started by ``processes``: open our member, act our role, close; True.
    False in the example's first process (no ``--role``)."""
    if a.role is None:
        return False
    peers = json.loads(a.peers)
    store = _member(a, Path(a.data_dir), a.member, peers)
    try:
        parent = Parent()
        parent.say("@open")
        roles[a.role](store, a, parent)
        while parent.command():  # stay a member until the parent is done
            pass
    finally:
        store.close()
    return True
