"""The parent side of the multi-process cluster tests: members as child processes.

A `Member` is one ``python -m tests.cluster.child`` process on 127.0.0.1: it can be asked
anything the child serves (``member.put("k", 1)``, ``member.call("status")``), killed with
SIGKILL, frozen with SIGSTOP and thawed, restarted on its data dir, closed. Every wait has a
deadline, and every failure quotes the child's stderr. A `Cluster` starts founders on free
ports with a token of its own, finds the leader, adds joiners, checks convergence, and kills
every child when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import embedkv.errors

from ..ports import free_port, free_ports
from ..waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
"""The checkout the children import embedkv and tests.cluster.child from."""

START_TIMEOUT = 30.0
"""Seconds a child may take to open its store (a joiner's open waits for its admission)."""

REQUEST_TIMEOUT = 30.0
"""Default seconds the parent waits for an answer; the store's own request_timeout is
shorter, so a member that cannot reach a quorum answers Unavailable well within it."""

FAST = {"tick_interval": 0.05, "election_tick": 20, "heartbeat_tick": 2, "request_timeout": 6.0}
"""Raft timing for the suite: the default 1 s election timeout (shorter ones make members on a
loaded 2-core CI machine call elections that drop forwarded writes), with ticks of 50 ms."""

STDERR_TAIL = 4000


class SmallDisk:
    """A tmpfs of its own for one member's data dir, which a ballast file fills on demand: a
    disk that really fills (ENOSPC), on one member only. Mounting needs root (CI is root);
    `mount` says why not elsewhere. The data dir is ``<mountpoint>/data``: the ballast beside
    it, never in it."""

    BALLAST = "ballast"

    def __init__(self, mountpoint: Path, size_mb: int = 64) -> None:
        self.mountpoint = mountpoint
        self.size_mb = size_mb
        self.data = mountpoint / "data"
        self.mounted = False

    def mount(self) -> str | None:
        """Mount it (an empty data dir inside); None, or why it cannot be had here."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m",
                                   "tmpfs", str(self.mountpoint)],
                                  capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return "no mount command"
        if done.returncode != 0:
            return f"mounting a tmpfs is not permitted here ({done.stderr.strip()})"
        self.mounted = True
        self.data.mkdir()
        return None

    def fill(self) -> int:
        """Take every free byte with the ballast; returns how many it took."""
        path = self.mountpoint / self.BALLAST
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            for chunk in (1 << 20, 4096):  # the member writes meanwhile: until nothing fits
                while True:
                    try:
                        os.posix_fallocate(fd, size, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    size += chunk
            return size
        finally:
            os.close(fd)

    def free(self) -> None:
        """Space back: the ballast removed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.mountpoint / self.BALLAST)

    def full(self) -> bool:
        return (self.mountpoint / self.BALLAST).exists()

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False,
                           capture_output=True)
            self.mounted = False


class ChildError(AssertionError):
    """The child died, did not answer in time, or failed a command with a non-embedkv error."""


class PortInUse(ChildError):
    """The child could not listen on its address (another process took the port)."""


def remote_error(reply: dict[str, Any], where: str) -> BaseException:
    """The exception a failed command raises here: the embedkv error class of the same name
    (or its nearest embedkv base, so ``Removed`` is an ``Unavailable`` even where this
    checkout has no ``Removed``), else a ChildError naming the child's exception."""
    message = f"{where}: {reply.get('error')}: {reply.get('message')}"
    for name in reply.get("mro", []):
        cls = getattr(embedkv.errors, name, None)
        if isinstance(cls, type) and issubclass(cls, embedkv.errors.Error):
            exc = cls.__new__(cls)
            Exception.__init__(exc, message)
            exc.remote = reply.get("error")  # type: ignore[attr-defined]
            return exc
    return ChildError(message)


class Member:
    """One member process. `options` are ``embedkv.open``'s keyword arguments for the next
    start; `child_options` go to the child itself (log_retain, log_level...)."""

    def __init__(self, name: str, path: Path, logdir: Path, options: dict[str, Any],
                 child_options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.path = path
        self.options = dict(options)
        self.child_options = dict(child_options or {})
        self.stderr_path = logdir / f"{name}.stderr.log"
        self._address: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.stopped = False
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._ready: Future[dict[str, Any]] = Future()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.on_stream: Callable[[Member, dict[str, Any]], None] | None = None
        """Called on the reader thread with each unsolicited ``{"stream": ...}`` line (the
        fault campaign's clients report their operations that way)."""

    def __repr__(self) -> str:
        state = "down" if not self.alive else ("stopped" if self.stopped else "up")
        return f"<Member {self.name} {self.address} {state}>"

    @property
    def address(self) -> str | None:
        """The peer address it listens on: the last one it was given (a restart with only
        the path keeps it)."""
        listen = self.options.get("listen")
        if listen is not None:
            self._address = str(listen)
        return self._address

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- process lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the child and wait for its store to open (see `spawn` and `wait_ready`)."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the child process; its store opens meanwhile (founders are spawned together,
        since a founder's open may wait for the others).

        The child dies with the thread that spawns it (PR_SET_PDEATHSIG): spawn members from
        the test's own thread, not from a short-lived helper thread."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        config = dict(self.child_options, path=str(self.path), open=self.options,
                      label=self.name)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("PYTHONFAULTHANDLER", "1")
        with open(self.stderr_path, "a") as err:
            err.write(f"--- start {self.name} {json.dumps(self.options)}\n")
            err.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster.child", json.dumps(config)],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, text=True, bufsize=1,
            )
        self.stopped = False
        self._ready = Future()
        self._pending = {}
        self._reader = threading.Thread(target=self._read, args=(self.proc, self._ready),
                                        daemon=True, name=f"read-{self.name}")
        self._reader.start()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the spawned child's store to open. PortInUse if its listen address was
        taken; ChildError (with stderr) if it failed to open otherwise or took too long."""
        assert self.proc is not None, f"{self.name} was never spawned"
        try:
            ready = self._ready.result(timeout)
        except FutureTimeout:
            self.kill()
            raise ChildError(self._explain(f"{self.name} did not open within {timeout} s")) \
                from None
        except ChildError as exc:
            raise ChildError(self._explain(str(exc))) from None
        if not ready.get("ready"):
            self.proc.wait(10)
            if ready.get("errno") == errno.EADDRINUSE or "already in use" in str(
                ready.get("message")
            ):
                raise PortInUse(self._explain(f"{self.name}: {self.address} is in use"))
            raise ChildError(self._explain(
                f"{self.name} failed to open: {ready.get('error')}: {ready.get('message')}"
            ))

    def _read(self, proc: subprocess.Popen[str], ready: Future[dict[str, Any]]) -> None:
        """The reader thread: answers to their futures; at EOF fail whatever still waits."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "stream" in message:
                on_stream = self.on_stream
                if on_stream is not None:
                    on_stream(self, message)
                continue
            if "ready" in message:
                if not ready.done():
                    ready.set_result(message)
                continue
            with self._lock:
                fut = self._pending.pop(message.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(message)
        code = proc.wait()
        gone = ChildError(f"{self.name} exited (code {code})")
        if not ready.done():
            ready.set_exception(gone)
        with self._lock:
            pending = list(self._pending.values())
            if proc is self.proc:
                self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(gone)

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed, no leadership handed over) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stopped = False

    def stop(self) -> None:
        """SIGSTOP: the process is frozen, its sockets stay open (a silent member)."""
        assert self.proc is not None and self.alive, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        """SIGCONT after stop()."""
        assert self.proc is not None and self.alive, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def restart(self, **changes: Any) -> None:
        """Start again on the same data dir. With no arguments the child opens just ``path``
        (a restart needs nothing else); keyword arguments become open()'s options."""
        self.kill()
        self._address = self.address
        self.options = dict(changes)
        self.start()

    def close(self, timeout: float = REQUEST_TIMEOUT) -> None:
        """Close the store (a leader hands leadership over first) and wait for the exit."""
        if not self.alive:
            return
        if self.stopped:
            self.cont()
        self.call("close", timeout=timeout)
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ChildError(self._explain(f"{self.name} did not exit after close")) from None

    # --- commands ----------------------------------------------------------------------------

    def send(self, op: str, **args: Any) -> Future[dict[str, Any]]:
        """Send a command; the future holds the raw reply (see `result`)."""
        if self.proc is None or not self.alive:
            raise ChildError(self._explain(f"{self.name} is not running"))
        cid = next(self._ids)
        fut: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[cid] = fut
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(dict(args, id=cid, op=op)) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            with self._lock:
                self._pending.pop(cid, None)
            raise ChildError(self._explain(f"{self.name} is gone")) from None
        return fut

    def result(self, fut: Future[dict[str, Any]], op: str,
               timeout: float = REQUEST_TIMEOUT) -> Any:
        try:
            reply = fut.result(timeout)
        except FutureTimeout:
            raise ChildError(
                self._explain(f"{self.name}: no answer to {op!r} within {timeout} s")
            ) from None
        except ChildError as exc:
            raise ChildError(self._explain(f"{exc} while running {op!r}")) from None
        if reply.get("ok"):
            return reply.get("result")
        error = remote_error(reply, f"{self.name} {op}")
        if isinstance(error, ChildError):
            raise ChildError(self._explain(str(error)))
        raise error

    def call(self, op: str, *, timeout: float = REQUEST_TIMEOUT, **args: Any) -> Any:
        """Run one command and return its result; an embedkv error in the child is raised here
        as the same class (with the child's message)."""
        return self.result(self.send(op, **args), op, timeout)

    def put(self, key: str, value: Any, **args: Any) -> int:
        revision: int = self.call("put", key=key, value=value, **args)
        return revision

    def get(self, key: str, *, serializable: bool = False) -> Any:
        found = self.call("get", key=key, serializable=serializable)
        return None if found is None else found["value"]

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call("status")
        return status

    def leader(self) -> str | None:
        leader: str | None = self.call("leader")
        return leader

    def members(self) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = self.call("members")
        return members

    def hash(self, **args: Any) -> dict[str, Any]:
        digest: dict[str, Any] = self.call("hash", **args)
        return digest

    def watch_until(self, wid: int, revision: int, timeout: float = 30.0) -> list[Any]:
        """Every event of watch `wid` once it has seen `revision` (AssertionError if the
        watch ended before)."""
        def seen() -> list[Any] | None:
            reply = self.call("watch_events", wid=wid)
            assert reply["error"] is None, f"{self.name}'s watch ended: {reply}"
            rows: list[Any] = reply["events"]
            return rows if rows and rows[-1][3] >= revision else None

        found: list[Any] = wait_for(seen, timeout, f"{self.name}'s watch to reach {revision}")
        return found

    def wait_load(self, name: str, acked: int, timeout: float = 30.0) -> int:
        """Wait until the background load `name` has had `acked` puts acknowledged."""
        def progress() -> int | None:
            done: int = self.call("load_progress", name=name)
            return done if done >= acked else None

        done: int = wait_for(progress, timeout, f"{acked} puts of load {name} on {self.name}")
        return done

    # --- diagnostics -------------------------------------------------------------------------

    def stderr_tail(self, limit: int = STDERR_TAIL) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-limit:]

    def _explain(self, message: str) -> str:
        tail = self.stderr_tail()
        return f"{message}\n--- {self.name} stderr (last {STDERR_TAIL} chars) ---\n{tail}"


class Cluster:
    """Members of one cluster under `root`, each in its own process on 127.0.0.1.

    ``Cluster(root, 3).start()`` starts three founders (same peers, a token unique to this
    cluster) and waits for a leader; `join` starts one more member that joins through the
    running ones; `kill_all` (run by the fixture at teardown) SIGKILLs every child."""

    def __init__(self, root: Path, size: int = 3, *, options: dict[str, Any] | None = None,
                 child_options: dict[str, Any] | None = None, tls: bool = False) -> None:
        self.root = root
        self.certs: Path | None = None
        """With `tls`: the cluster's CA and every member's certificate (made on demand);
        members open with ``tls=`` this directory instead of ``insecure=True``."""
        if tls:
            from embedkv.net import tls as certs

            self.certs = root / "certs"
            certs.init_ca(self.certs)
        self.size = size
        self.token = f"test-{uuid.uuid4().hex}"
        self.options = dict(FAST, **(options or {}))
        # INFO: elections, links lost, snapshots sent and installed land in each member's
        # stderr file, which a failed test quotes.
        self.child_options = dict({"log_level": "INFO"}, **(child_options or {}))
        self.members: dict[str, Member] = {}
        self.disks: dict[str, SmallDisk] = {}
        """Members whose data dir is a small disk of its own (see `small_disks`)."""
        self.logdir = root / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self.members.values()))

    def running(self) -> list[Member]:
        """Members whose process runs and is not frozen."""
        return [m for m in self if m.alive and not m.stopped]

    def member(self, name: str, options: dict[str, Any],
               child_options: dict[str, Any] | None = None) -> Member:
        """A Member object (not started) with a data dir of its own under root (on its small
        disk if it has one)."""
        disk = self.disks.get(name)
        path = disk.data if disk is not None else self.root / name
        member = Member(name, path, self.logdir, options,
                        dict(self.child_options, **(child_options or {})))
        self.members[name] = member
        return member

    # --- founding ----------------------------------------------------------------------------

    def start(self, attempts: int = 5) -> Cluster:
        """Start `size` founders n1..nN and wait for a leader. A port taken between picking and
        binding restarts the whole founding on fresh ports (every founder's peers must
        agree), with empty data dirs."""
        names = [f"n{i}" for i in range(1, self.size + 1)]
        for attempt in range(attempts):
            peers = {name: f"127.0.0.1:{port}"
                     for name, port in zip(names, free_ports(len(names)), strict=True)}
            for name in names:
                with contextlib.suppress(KeyError):
                    self.members.pop(name).kill()
                disk = self.disks.get(name)
                shutil.rmtree(disk.data if disk else self.root / name, ignore_errors=True)
                self.member(name, self.founder_options(name, peers))
            for name in names:
                self.members[name].spawn()
            try:
                for name in names:
                    self.members[name].wait_ready()
            except PortInUse:
                self.kill_all()
                if attempt == attempts - 1:
                    raise
                continue
            break
        self.wait_leader()
        return self

    def security(self, name: str) -> dict[str, Any]:
        """The options that secure member `name`'s peer links: its certificate (issued now if
        it has none) with `tls`, else ``insecure=True``."""
        if self.certs is None:
            return {"insecure": True}
        from embedkv.net import tls as certs

        if not (self.certs / f"{name}.pem").exists():
            certs.issue(self.certs, name, ips=["127.0.0.1"])
        return {"tls": str(self.certs)}

    def small_disks(self, names: Iterable[str], size_mb: int = 64) -> str | None:
        """Before `start`: give these founders a small disk each; None, or why not (then
        none has one)."""
        for name in names:
            disk = SmallDisk(self.root / "disks" / name, size_mb)
            why = disk.mount()
            if why is not None:
                self.unmount_disks()
                return why
            self.disks[name] = disk
        return None

    def unmount_disks(self) -> None:
        for disk in self.disks.values():
            disk.unmount()
        self.disks.clear()

    def founder_options(self, name: str, peers: dict[str, str]) -> dict[str, Any]:
        return dict(self.options, name=name, listen=peers[name], peers=peers,
                    cluster=self.token, **self.security(name))

    def join(self, name: str, via: Iterable[Member] | None = None, attempts: int = 5,
             timeout: float = START_TIMEOUT, **options: Any) -> Member:
        """Start a fresh member `name` that joins through `via` (default: every running
        member); returns once its open() returned (it is a learner or a voter by then)."""
        via = list(via) if via is not None else self.running()
        addresses = [m.address for m in via]
        for attempt in range(attempts):
            shutil.rmtree(self.root / name, ignore_errors=True)
            member = self.member(name, dict(
                self.options, name=name, listen=f"127.0.0.1:{free_port()}",
                join=addresses, **self.security(name), **options,
            ))
            try:
                member.start(timeout)
            except PortInUse:
                if attempt == attempts - 1:
                    raise
                continue
            return member
        raise AssertionError("unreachable")

    # --- waiting for the cluster -------------------------------------------------------------

    def wait_leader(self, members: Iterable[Member] | None = None,
                    timeout: float = 20.0) -> Member:
        """The leader once every given member (default: every running one) names the same
        leader, and it is one of them."""
        group = list(members) if members is not None else self.running()
        names = {m.name for m in group}

        def agreed() -> Member | None:
            seen = set()
            for m in group:
                try:
                    seen.add(m.leader())
                except embedkv.errors.Unavailable:
                    return None
            if len(seen) == 1:
                (leader,) = seen
                if leader in names:
                    return self.members[leader]
            return None

        leader: Member = wait_for(agreed, timeout, f"one leader among {sorted(names)}")
        return leader

    def followers(self, leader: Member | None = None) -> list[Member]:
        leader = leader or self.wait_leader()
        return [m for m in self.running() if m is not leader]

    def wait_converged(self, members: Iterable[Member] | None = None,
                       timeout: float = 30.0) -> dict[str, Any]:
        """Wait until every given member (default: every running one) has applied the same
        revision with the same key-space hash; returns that hash's record."""
        group = list(members) if members is not None else self.running()
        last: dict[str, Any] = {}

        def same() -> dict[str, Any] | None:
            hashes = {m.name: m.hash() for m in group}
            last.clear()
            last.update(hashes)
            if len({(h["revision"], h["hash"]) for h in hashes.values()}) == 1:
                return next(iter(hashes.values()))
            return None

        try:
            result: dict[str, Any] = wait_for(same, timeout, "the members to converge")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: last hashes {last}") from None
        return result

    def wait_members(self, member: Member, expect: dict[str, bool],
                     timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until `member` lists exactly the names of `expect`, each voter (True) or
        learner (False) as given."""
        def matches() -> list[dict[str, Any]] | None:
            members = member.members()
            seen = {m["name"]: bool(m["voter"]) for m in members}
            return members if seen == expect else None

        found: list[dict[str, Any]] = wait_for(matches, timeout, f"members {expect}")
        return found

    # --- faults ------------------------------------------------------------------------------

    def partition(self, minority: Iterable[Member]) -> None:
        """Cut `minority` off from every other member (Raft messages and calls, both
        directions; each side drops the other's traffic)."""
        inside = list(minority)
        outside = [m for m in self.running() if m not in inside]
        for m in inside:
            m.call("partition", peers=[o.name for o in outside])
        for o in outside:
            o.call("partition", peers=[m.name for m in inside])

    def heal(self) -> None:
        for m in self.running():
            m.call("heal")

    # --- teardown ----------------------------------------------------------------------------

    def kill_all(self) -> None:
        """SIGKILL every child (frozen ones too); never raises."""
        for m in self:
            with contextlib.suppress(Exception):
                m.kill()

    def state_report(self) -> str:
        """One line per member: its process state and, if it answers within a second, its
        term, leader, commit and applied index and revision (quoted when a test fails)."""
        lines = []
        for m in self:
            if not m.alive or m.stopped:
                lines.append(f"{m!r}")
                continue
            try:
                s = m.call("status", timeout=1.0)
            except Exception as exc:
                lines.append(f"{m!r}: status failed: {str(exc).splitlines()[0]}")
                continue
            lines.append(f"{m!r}: term {s.get('term')} leader {s.get('leader')} commit "
                         f"{s.get('commit_index')} applied {s.get('applied_index')} revision "
                         f"{s.get('revision')}")
        return "\n".join(lines)
