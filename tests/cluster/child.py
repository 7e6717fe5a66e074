"""One cluster member in its own process, driven by the test suite over JSON lines.

    python -m tests.cluster.child '{"path": "...", "open": {...}}'

The child opens ``embedkv.open(path, **open)`` (so a founder, a joiner, a restart and a grown
one-member store are all just different ``open`` arguments), prints one ready line
``{"ready": true, "pid": ...}`` (or ``{"ready": false, "error": ..., "message": ...}`` and
exits 1), then serves commands, one JSON object a line on stdin: ``{"id": 7, "op": "put",
"key": "k", "value": 1}``. Every command runs on a thread of its own, so a slow one (a write
waiting for a quorum) never holds up the others; each answer is one line
``{"id": 7, "ok": true, "result": ...}`` or ``{"id": 7, "ok": false, "error": "Unavailable",
"mro": [...], "message": "..."}``. The process exits when stdin closes (its parent died) or
after ``close``.

Only the protocol goes to the real stdout: fd 1 is pointed at stderr once the protocol's copy
is taken, so a stray print or a library's output cannot corrupt an answer. Logging goes to
stderr, which the parent keeps in a file and quotes when a test fails.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

import cbor2

import embedkv
from embedkv import Event, Put, Value

_CLIENT_KINDS = ["put", "get", "sget", "delete", "cas", "lease_put"]
_CLIENT_WEIGHTS = [3, 3, 1, 1, 2, 1]
"""The fault campaign's mix: reads and writes about even, CAS often enough to race."""

_PAGE = 2000
"""Keys read per range call when hashing: a store of 100k keys is never read at once."""


def jsonable(obj: Any) -> Any:
    """Dataclasses (MemberInfo, Status, KeyValue...), enums, bytes and tuples as JSON values."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Enum):
        return jsonable(obj.value)
    if isinstance(obj, bytes):
        return {"bytes": obj.hex()}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if hasattr(obj, "_asdict"):
        return jsonable(obj._asdict())
    return repr(obj)


def event_row(event: Event) -> list[Any]:
    """An event as the list the parent compares across members."""
    kv = event.kv
    return [event.type.value, jsonable(kv.key), jsonable(kv.value), kv.mod_revision,
            kv.create_revision, kv.version]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def lower_log_retention(retain: int | None, every: int | None) -> None:
    """Set the runtime's log-compaction constants in every module that holds them (a module
    that imported them by name holds its own copy), so a test compacts the Raft log after a
    few hundred entries instead of 15,000. Fails loudly if no module defines them: a test
    that asked for a short log must not pass while testing nothing."""
    wanted = {"LOG_RETAIN": retain, "LOG_COMPACT_EVERY": every}
    import importlib
    import pkgutil

    import embedkv.member as member_pkg

    for info in pkgutil.walk_packages(member_pkg.__path__, "embedkv.member."):
        importlib.import_module(info.name)
    for name, value in wanted.items():
        if value is None:
            continue
        holders = [m for n, m in list(sys.modules.items())
                   if n.startswith("embedkv.") and m is not None and hasattr(m, name)]
        if not holders:
            raise RuntimeError(f"no embedkv module defines {name}: cannot shorten the log")
        for module in holders:
            setattr(module, name, value)


class Child:
    """The store and what the commands created on it (watches, leases, background loads)."""

    def __init__(self, store: embedkv.Store, out: Any) -> None:
        self.store = store
        self._out = out
        self._out_lock = threading.Lock()
        self._lock = threading.Lock()
        self._watches: dict[int, tuple[Any, list[list[Any]]]] = {}
        self._leases: dict[int, embedkv.Lease] = {}
        self._loads: dict[str, tuple[threading.Event, list[threading.Thread], dict[str, Any]]] = {}
        self._next_watch = 1
        self._held: dict[str, Any] = {}  # recipe holdings by name: locks, claimed queue items
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="cmd")

    # --- the protocol ------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with self._out_lock:
            self._out.write(line)
            self._out.flush()

    def serve(self, lines: Any) -> None:
        for line in lines:
            if not line.strip():
                continue
            command = json.loads(line)
            if command.get("op") == "close":
                self._run(command)
                return
            self._pool.submit(self._run, command)

    def _run(self, command: dict[str, Any]) -> None:
        cid = command.pop("id")
        op = command.pop("op")
        handler: Callable[..., Any] | None = getattr(self, f"op_{op}", None)
        try:
            if handler is None:
                raise ValueError(f"unknown command {op!r}")
            result = handler(**command)
        except BaseException as exc:
            logging.getLogger("child").debug("command %s failed", op, exc_info=True)
            self.send({"id": cid, "ok": False, "error": type(exc).__name__,
                       "mro": [c.__name__ for c in type(exc).__mro__],
                       "message": str(exc)})
            return
        self.send({"id": cid, "ok": True, "result": jsonable(result)})

    # --- key-value ---------------------------------------------------------------------------

    def op_ping(self) -> int:
        return os.getpid()

    def op_put(self, key: str, value: Any, lease: int | None = None) -> int:
        return self.store.put(key, value, lease=lease).revision

    def op_get(self, key: str, serializable: bool = False) -> dict[str, Any] | None:
        kv = self.store.get_kv(key, serializable=serializable)
        if kv is None:
            return None
        return {"value": kv.value, "mod_revision": kv.mod_revision, "version": kv.version,
                "create_revision": kv.create_revision, "lease": kv.lease}

    def op_range(self, prefix: str, serializable: bool = False) -> list[list[Any]]:
        return [[kv.key, kv.value] for kv in self.store.range(prefix, serializable=serializable)]

    def op_count(self, prefix: str = "", serializable: bool = False) -> int:
        return self.store.count(prefix, serializable=serializable)

    def op_delete(self, key: str, prefix: bool = False) -> dict[str, int]:
        deleted = self.store.delete(key, prefix=prefix)
        return {"deleted": int(deleted), "revision": deleted.revision}

    def op_cas(self, key: str, expected: Any, new: Any) -> bool:
        return self.store.compare_and_set(key, expected, new)

    def op_txn(self, compare: list[list[Any]], success: list[list[Any]],
               failure: list[list[Any]] | None = None) -> dict[str, Any]:
        """compare: [[key, value], ...] (value equals); success/failure: [[key, value], ...]
        puts."""
        result = self.store.txn([Value(k) == v for k, v in compare],
                                [Put(k, v) for k, v in success],
                                [Put(k, v) for k, v in failure or ()])
        return {"succeeded": result.succeeded, "revision": result.revision}

    def op_fill(self, prefix: str, count: int, value_size: int = 100, start: int = 0,
                batch: int = 1000) -> int:
        """Put `count` keys ``{prefix}{i:08d}`` in batches (one transaction each): many keys
        quickly, in few Raft entries. Returns the store's revision afterwards."""
        value = "v" * value_size
        for lo in range(start, start + count, batch):
            hi = min(lo + batch, start + count)
            self.store.update({f"{prefix}{i:08d}": value for i in range(lo, hi)})
        return self.store.revision

    def op_put_many(self, prefix: str, count: int, start: int = 0) -> int:
        """`count` sequential puts, one Raft entry each (fills the log, not just the key
        space). Returns the last revision."""
        revision = 0
        for i in range(start, start + count):
            revision = self.store.put(f"{prefix}{i:08d}", i).revision
        return revision

    def op_write_until_ok(self, key: str, give_up_after: float = 60.0) -> dict[str, Any]:
        """Put `key` until a put succeeds (the failover bench: the parent kills the leader,
        then asks survivors for this). Returns when it succeeded on the system-wide monotonic
        clock (the parent compares it with the time of the kill), and the attempts it took."""
        deadline = time.monotonic() + give_up_after
        attempts = 0
        while True:
            attempts += 1
            try:
                self.store.put(key, attempts)
            except embedkv.Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)  # a put that fails at once must not starve the member
                continue
            return {"at": time.monotonic(), "attempts": attempts}

    def op_backup(self, dest: str) -> int:
        return self.store.backup(dest)

    def op_compact(self, revision: int) -> None:
        self.store.compact(revision)

    def op_revision(self) -> int:
        return self.store.revision

    def op_hash(self, revision: int | None = None, serializable: bool = True) -> dict[str, Any]:
        """A hash of every key's record (key, value, revisions, version, lease) at `revision`
        (None: the local current revision, after a read barrier unless serializable)."""
        if revision is not None:
            return self._hash_at(revision)
        if not serializable:
            self.store.get("\x00", serializable=False)  # a read barrier
        while True:
            try:
                return self._hash_at(self.store.revision)
            except embedkv.Compacted:
                # A snapshot installed meanwhile compacted the revision just read: the
                # current one has moved past it.
                continue

    def _hash_at(self, revision: int) -> dict[str, Any]:
        digest = hashlib.sha256()
        count = 0
        start: str | bytes = "\x00"
        while True:
            page = self.store.range(start=start, limit=_PAGE, revision=revision,
                                    serializable=True)
            for kv in page:
                digest.update(cbor2.dumps([kv.key, kv.value, kv.create_revision,
                                           kv.mod_revision, kv.version, kv.lease]))
            count += len(page)
            if len(page) < _PAGE:
                break
            last = page[-1].key
            start = last + "\x00" if isinstance(last, str) else last + b"\x00"
        return {"revision": revision, "count": count, "hash": digest.hexdigest()}

    # --- watches -----------------------------------------------------------------------------

    def op_watch_start(self, key: str, prefix: bool = False,
                       start_revision: int | None = None) -> int:
        events: list[list[Any]] = []

        def record(event: Event) -> None:
            with self._lock:
                events.append(event_row(event))

        watch = self.store.watch(key, record, prefix=prefix, start_revision=start_revision)
        with self._lock:
            wid = self._next_watch
            self._next_watch += 1
            self._watches[wid] = (watch, events)
        return wid

    def op_watch_events(self, wid: int, since: int = 0) -> dict[str, Any]:
        """Events from index `since` on, whether the watch has ended, and why."""
        with self._lock:
            watch, events = self._watches[wid]
            rows = events[since:]
        error = watch.error
        return {"events": rows, "cancelled": watch.cancelled,
                "error": None if error is None else type(error).__name__,
                "message": None if error is None else str(error)}

    def op_watch_cancel(self, wid: int) -> None:
        with self._lock:
            watch, _ = self._watches.pop(wid)
        watch.cancel()

    # --- leases ------------------------------------------------------------------------------

    def op_lease_grant(self, ttl: int, keepalive: bool = False) -> dict[str, int]:
        lease = self.store.lease(ttl, keepalive=keepalive)
        with self._lock:
            self._leases[lease.id] = lease
        return {"id": lease.id, "ttl": lease.ttl}

    def _lease(self, lease_id: int) -> embedkv.Lease:
        with self._lock:
            found = self._leases.get(lease_id)
        if found is None:
            # A lease granted through another member: a Lease object over its id.
            found = embedkv.Lease(self.store, lease_id, 0, False)
        return found

    def op_lease_keepalive(self, lease: int) -> int:
        return self._lease(lease).refresh()

    def op_lease_ttl(self, lease: int) -> float:
        return self._lease(lease).ttl_remaining()

    def op_lease_revoke(self, lease: int) -> None:
        self._lease(lease).revoke()

    # --- coordination recipes (a holder whose process is killed) ------------------------------

    def _keep(self, what: str, held: Any) -> None:
        with self._lock:
            self._held[what] = held

    def _holding(self, what: str, *, drop: bool = False) -> Any:
        with self._lock:
            return self._held.pop(what) if drop else self._held[what]

    def op_lock_acquire(self, name: str, ttl: int, wait: float | None = None) -> int | None:
        """Acquire lock `name` and keep holding it (until ``lock_release`` or death): its
        fencing token, or None if not acquired within `wait` seconds (None: no limit)."""
        lock = self.store.lock(name, ttl=ttl)
        if not lock.acquire(timeout=wait):
            return None
        self._keep(f"lock/{name}", lock)
        return lock.token

    def op_lock_release(self, name: str) -> None:
        self._holding(f"lock/{name}", drop=True).release()

    def op_fenced_put(self, name: str, key: str, value: Any) -> bool:
        """Put under the guard of the lock `name` this member holds: did the store accept it?"""
        lock = self._holding(f"lock/{name}")
        return bool(self.store.txn(compare=[lock.held()], success=[Put(key, value)]).succeeded)

    def op_campaign(self, name: str, value: Any, ttl: int, wait: float | None = None) -> bool:
        """Campaign in election `name` until leading (True) or `wait` passes (False)."""
        election = self.store.election(name, ttl=ttl)
        if not election.campaign(value, timeout=wait):
            return False
        self._keep(f"election/{name}", election)
        return True

    def op_election_leader(self, name: str) -> Any:
        return self.store.election(name).leader()

    def op_queue_put(self, name: str, value: Any) -> str:
        return self.store.queue(name).put(value)

    def op_queue_get(self, name: str, ttl: int, wait: float | None = None) -> Any:
        """Claim the next item of queue `name` without acking it (``queue_ack`` does)."""
        item = self.store.queue(name, ttl=ttl).get(timeout=wait)
        self._keep(f"item/{name}", item)
        return item.value

    def op_queue_ack(self, name: str) -> None:
        self._holding(f"item/{name}", drop=True).ack()

    # --- membership (the cluster API of issue 13) ---------------------------------------------

    def op_members(self) -> Any:
        return self.store.members()

    def op_leader(self) -> str | None:
        leader: str | None = self.store.leader
        return leader

    def op_add_member(self, name: str, address: str, learner: bool = False) -> Any:
        return self.store.add_member(name, address, learner=learner)

    def op_remove_member(self, name: str) -> None:
        self.store.remove_member(name)

    def op_promote_member(self, name: str) -> Any:
        return self.store.promote_member(name)

    def op_transfer_leadership(self, to: str | None = None) -> str:
        new: str = self.store.transfer_leadership(to)
        return new

    def op_status(self) -> Any:
        return self.store.status()

    # --- load (the bench, and writes running while a test does something else) -----------

    def op_load(self, kind: str, threads: int, count: int, prefix: str = "load/",
                keys: int = 1000) -> dict[str, Any]:
        """`count` operations on each of `threads` threads, all in this process (the store is
        embedded: its user lives here, not behind a pipe). kind: "put", "get" (linearizable)
        or "get_serializable" over `keys` keys ``{prefix}{i:08d}`` (fill them first).
        Latencies of every operation, rate over the whole run."""
        latencies: list[list[float]] = [[] for _ in range(threads)]
        errors: dict[str, int] = {}
        value = "v" * 100
        barrier = threading.Barrier(threads + 1)

        def work(t: int) -> None:
            mine = latencies[t]
            put, get = self.store.put, self.store.get
            serializable = kind == "get_serializable"
            barrier.wait()
            for i in range(count):
                t0 = time.perf_counter()
                try:
                    if kind == "put":
                        put(f"{prefix}{t:03d}/{i:08d}", value)
                    else:
                        get(f"{prefix}{(t * 7919 + i) % keys:08d}", serializable=serializable)
                except embedkv.Error as exc:
                    with self._lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                mine.append(time.perf_counter() - t0)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        barrier.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        done = sorted(x for mine in latencies for x in mine)
        return {"ops": len(done), "seconds": elapsed, "rate": len(done) / elapsed,
                "p50_us": percentile(done, 0.5) * 1e6, "p99_us": percentile(done, 0.99) * 1e6,
                "errors": errors}

    def op_load_start(self, name: str, threads: int, prefix: str) -> None:
        """Start `threads` writers putting ``{prefix}{t}/{i}`` = i until ``load_stop``; each
        records which puts were acknowledged and how the others failed."""
        stop = threading.Event()
        state: dict[str, Any] = {"acked": [], "failed": [], "errors": {}}

        def work(t: int) -> None:
            i = 0
            while not stop.is_set():
                key = f"{prefix}{t}/{i}"
                try:
                    self.store.put(key, i)
                except embedkv.Error as exc:
                    with self._lock:
                        state["failed"].append(key)
                        kind = type(exc).__name__
                        state["errors"][kind] = state["errors"].get(kind, 0) + 1
                else:
                    with self._lock:
                        state["acked"].append(key)
                i += 1

        workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
        with self._lock:
            if name in self._loads:
                raise ValueError(f"a load named {name!r} is running")
            self._loads[name] = (stop, workers, state)
        for w in workers:
            w.start()

    def op_load_progress(self, name: str) -> int:
        with self._lock:
            return len(self._loads[name][2]["acked"])

    def op_load_stop(self, name: str) -> dict[str, Any]:
        with self._lock:
            stop, workers, state = self._loads.pop(name)
        stop.set()
        for w in workers:
            w.join()
        return state

    # --- fault-campaign clients (tests/faults) ---------------------------------------------------

    def op_clients_start(self, stream: str, processes: list[int], keys: list[str],
                         duration: float, seed: int, lease_ttl: int = 3600,
                         stale_reads: bool = False, lease_watchers: list[int] | None = None,
                         lease_ttl_watched: int = 2) -> None:
        """Start one client thread per id in `processes`, each issuing random operations on
        `keys` for `duration` seconds, one at a time. Every invoke and every completion is
        streamed to the parent at once (``{"stream": ..., "ev": "invoke" | "done" | "end"}``),
        the invoke before the operation starts: a process killed mid-operation leaves an
        invoke without a completion, which the parent records as unknown. Timestamps are
        time.monotonic(), one clock for every process of the machine. `stale_reads` makes the
        clients' linearizable gets serializable while still calling them linearizable: a
        planted bug that shows the campaign can fail. Each id in `lease_watchers` runs a
        lease client instead (see `_lease_client`)."""
        deadline = time.monotonic() + duration
        for process in lease_watchers or ():
            rng = random.Random(f"{seed}/{process}")
            threading.Thread(target=self._lease_client,
                             args=(stream, process, deadline, rng, lease_ttl_watched),
                             daemon=True, name=f"lease-client-{process}").start()
        for process in processes:
            rng = random.Random(f"{seed}/{process}")
            threading.Thread(target=self._client, args=(stream, process, keys, deadline, rng,
                                                        lease_ttl, stale_reads),
                             daemon=True, name=f"client-{process}").start()

    def _client(self, stream: str, process: int, keys: list[str], deadline: float,
                rng: random.Random, lease_ttl: int, stale_reads: bool) -> None:
        seen: dict[str, Any] = {}  # the last value this client read or wrote per key
        lease: int | None = None
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            kind = rng.choices(_CLIENT_KINDS, _CLIENT_WEIGHTS)[0]
            key = rng.choice(keys)
            value = process * 1_000_000 + seq  # unique: a read names the write it saw
            expected = seen.get(key) if rng.random() < 0.7 else rng.choice(
                [None, *[v for v in seen.values() if v is not None]])
            if kind == "lease_put" and lease is None:
                try:  # a lease longer than any run: its keys never expire during one
                    lease = self.store.lease(lease_ttl, keepalive=False).id
                except embedkv.Error:
                    kind = "put"
            op: dict[str, Any] = {"stream": stream, "ev": "invoke", "p": process, "n": seq,
                                  "kind": kind, "key": key,
                                  "value": None if kind in ("get", "sget", "delete") else value,
                                  "expected": expected if kind == "cas" else None}
            op["t"] = time.monotonic()
            self.send(op)
            outcome, result, error, deleted = self._client_op(kind, key, value, expected,
                                                              lease, stale_reads)
            done = time.monotonic()
            if kind in ("put", "lease_put", "cas") and outcome == "ok":
                if kind != "cas" or result:
                    seen[key] = value
            elif kind in ("get", "sget") and outcome == "ok":
                seen[key] = result
            elif kind == "delete" and outcome == "ok":
                seen[key] = None
            if error == "LeaseNotFound":
                lease = None
            self.send({"stream": stream, "ev": "done", "p": process, "n": seq, "t": done,
                       "outcome": outcome, "result": result, "error": error,
                       "deleted": deleted})
            if error in ("Removed", "Closed"):
                break  # this member serves nothing any more
            if error is not None:
                time.sleep(rng.uniform(0.01, 0.05))  # a client's back-off, as any would have
        self.send({"stream": stream, "ev": "end", "p": process})

    def _lease_client(self, stream: str, process: int, deadline: float, rng: random.Random,
                      ttl: int) -> None:
        """Grant a `ttl`-second lease, put a key with it, refresh it a few times, then read
        the key (linearizably) until it is gone; stream one ``"lease"`` record per key: the
        invoke time of the last acknowledged grant or refresh, the completion of the first
        read that found it gone, the invoke of the last read that found it present."""
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            key = f"l/{process}/{seq}"
            invoked = time.monotonic()
            try:
                lease = self.store.lease(ttl, keepalive=False)
                last_ok = invoked
                self.store.put(key, seq, lease=lease.id)
            except embedkv.Error:
                time.sleep(rng.uniform(0.01, 0.05))  # a client's back-off
                continue
            for _ in range(rng.randint(0, 2)):
                time.sleep(rng.uniform(0.2, 0.6) * ttl)  # when this client refreshes
                invoked = time.monotonic()
                try:
                    lease.refresh()
                except embedkv.Error:
                    break  # gone, or in doubt: only acknowledged refreshes bound its life
                last_ok = invoked
            present: float | None = None
            gone: float | None = None
            give_up = time.monotonic() + 4 * ttl + 10
            while gone is None and time.monotonic() < give_up:
                invoked = time.monotonic()
                try:
                    kv = self.store.get_kv(key)
                except embedkv.Error:
                    continue
                if kv is None:
                    gone = time.monotonic()
                else:
                    present = invoked
                    time.sleep(0.05)  # the polling period
            self.send({"stream": stream, "ev": "lease", "p": process, "lease": lease.id,
                       "ttl": ttl, "key": key, "last_keepalive_ok": last_ok,
                       "gone_seen": gone, "present_seen": present})
        self.send({"stream": stream, "ev": "end", "p": process})

    def _client_op(self, kind: str, key: str, value: int, expected: Any, lease: int | None,
                   stale_reads: bool) -> tuple[str, Any, str | None, int | None]:
        """(outcome, result, error name, keys deleted: a delete's count, else None). A read
        that failed took no effect: "fail". A write that failed with Unavailable (a timeout,
        no quorum, removed, closed) may have been applied: "unknown"; LeaseNotFound is a
        definite refusal: "fail"."""
        try:
            if kind == "put":
                return "ok", self.store.put(key, value).revision, None, None
            if kind == "lease_put":
                return "ok", self.store.put(key, value, lease=lease).revision, None, None
            if kind == "get" or kind == "sget":
                kv = self.store.get_kv(key, serializable=kind == "sget" or stale_reads)
                return "ok", None if kv is None else kv.value, None, None
            if kind == "delete":
                deleted = self.store.delete(key)
                return "ok", deleted.revision, None, int(deleted)
            if expected is None:
                return "ok", self.store.create(key, value), None, None
            return "ok", self.store.compare_and_set(key, expected, value), None, None
        except embedkv.Error as exc:
            name = type(exc).__name__
            if kind in ("get", "sget") or isinstance(exc, embedkv.LeaseNotFound):
                return "fail", None, name, None
            return "unknown", None, name, None
        except Exception as exc:  # a bug, not a fault: unknown, and its name in the history
            logging.getLogger("child").exception("client %s %s failed", kind, key)
            return "unknown", None, type(exc).__name__, None

    def op_fault_rule(self, peer: str, drop: float = 0.0, delay: float = 0.0,
                      direction: str = "both", duplicate: float = 0.0) -> bool:
        """Drop (probability `drop`) and/or delay (`delay` seconds) traffic with member `peer`
        (a name) in `direction` ("send", "receive" or "both") through the transport's fault
        hook; deliver Raft messages received from it twice (probability `duplicate`). False
        if `peer` is not a member (any more)."""
        from embedkv.net.faults import Direction, FaultPlan

        way = {"send": Direction.SEND, "receive": Direction.RECEIVE,
               "both": Direction.BOTH}[direction]
        found = [m for m in self.store.members() if m.name == peer]
        if not found:
            return False
        transport = self._transport()

        def apply() -> None:
            if transport.faults is None:
                transport.faults = FaultPlan()
            for target in (found[0].id, found[0].address):
                if drop:
                    transport.faults.drop(target, drop, way)
                if delay:
                    transport.faults.delay(target, delay, way)
                if duplicate:
                    transport.faults.duplicate(target, duplicate)

        self._on_loop(transport, apply)
        return True

    # --- fault injection and lifecycle --------------------------------------------------------

    def op_installs(self) -> int:
        """Snapshots this member installed from a leader (MemberStats.installs)."""
        return int(self.store._m.stats.installs)

    def op_log_bounds(self) -> dict[str, int]:
        """The local Raft log's first and last index and the applied index: a test checks
        with them that a member could only catch up by a snapshot (the runtime's internals,
        read for the test's preconditions only)."""
        dd = self.store._m.data_dir
        return {"first": dd.log.first_index(), "last": dd.log.last_index(),
                "applied": int(dd.applied_index)}

    def _transport(self) -> Any:
        """The member's peer transport, wherever the runtime keeps it: the one open
        PeerTransport of this process."""
        import gc

        from embedkv.net.transport import PeerTransport

        found = [o for o in gc.get_objects()
                 if isinstance(o, PeerTransport) and not o._closed]
        if len(found) != 1:
            raise RuntimeError(f"expected one open PeerTransport, found {len(found)}")
        return found[0]

    def op_partition(self, peers: list[str]) -> list[int]:
        """Cut this member off from `peers` (names), both directions, through the transport's
        fault hook: Raft messages and calls to and from them (by id and by address) are lost
        silently, as on a cut network. Returns the peers' ids."""
        from embedkv.net.faults import FaultPlan

        by_name = {m.name: m for m in self.store.members()}
        cut = [by_name[name] for name in peers]
        transport = self._transport()

        def apply() -> None:
            if transport.faults is None:
                transport.faults = FaultPlan()
            for m in cut:
                transport.faults.partition(m.id)
                transport.faults.partition(m.address)

        self._on_loop(transport, apply)
        return [m.id for m in cut]

    def op_heal(self) -> None:
        """Undo every partition."""
        transport = self._transport()

        def apply() -> None:
            if transport.faults is not None:
                transport.faults.heal()

        self._on_loop(transport, apply)

    @staticmethod
    def _on_loop(transport: Any, fn: Callable[[], None]) -> None:
        """Run `fn` on the transport's event loop (the fault plan belongs to it) and wait."""
        import asyncio

        loop = transport._server.get_loop()

        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    def op_close(self) -> None:
        self.store.close()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (a test runner killed mid-test must
    not leave members behind). Best effort elsewhere: stdin's EOF ends the child too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> None:
    _die_with_parent()
    options = json.loads(sys.argv[1])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=options.get("log_level", "WARNING"),
        format=f"%(asctime)s {options.get('label', '?')} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )

    def fail(exc: BaseException) -> None:
        logging.getLogger("child").error("open failed", exc_info=exc)
        errno = getattr(exc, "errno", None)
        cause = exc.__cause__ or exc.__context__
        if errno is None and cause is not None:
            errno = getattr(cause, "errno", None)
        out.write(json.dumps({"ready": False, "error": type(exc).__name__, "errno": errno,
                              "mro": [c.__name__ for c in type(exc).__mro__],
                              "message": str(exc)}) + "\n")
        out.flush()
        os._exit(1)

    try:
        if options.get("log_retain") is not None or options.get("log_compact_every") is not None:
            lower_log_retention(options.get("log_retain"), options.get("log_compact_every"))
        store = embedkv.open(options["path"], **options.get("open", {}))
    except BaseException as exc:
        fail(exc)
        return
    child = Child(store, out)
    child.send({"ready": True, "pid": os.getpid()})
    child.serve(sys.stdin)
    # After close (or stdin's EOF: the parent is gone) leave at once; the pool's threads may
    # be waiting on a store that no longer answers.
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
