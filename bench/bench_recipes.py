"""Recipe throughput against the raw store operations they are made of, and against etcd's own
lock over its gateway when an ``etcd`` binary is on the PATH, in the same run.

Each measure runs on one store, then on three members of one cluster (in this process, on
127.0.0.1) with user `i` on member ``i % 3`` — contenders and consumers on different members,
followers forwarding to the leader:
- lock acquire/release round trips per second, uncontended (1 thread) and with 8 contending
  threads, against the raw writes of a round trip without the recipe (lease grant, create
  txn, revoke) by as many threads;
- queue items per second with 4 producers and 4 consumers (each consumer a queue of its own,
  so its own lease), put + get + ack, against raw put of as many keys by 4 threads then their
  delete by 4 threads.

etcd (when found; ``--etcd none`` skips it): one member, then three, started here on
127.0.0.1 with their data in a temporary directory (on /dev/shm unless ``--durable``, so its
fsyncs cost about what ``durable=False`` does here), driven through its JSON gateway over
persistent HTTP connections, user `i` on member ``i % 3``: etcd's lock service (lease grant,
Lock, Unlock, revoke: what etcdctl lock does) and the same raw writes; its queue is etcd's
own recipe (put a sequential key; the oldest is taken with a guarded delete, consumers
polling when empty), against raw put + delete. Prints only (the lead writes
bench/RESULTS.md); ``--quick`` for a short run; ``--durable`` to fsync.

    python bench/bench_recipes.py [--quick] [--durable] [--etcd auto|none|PATH]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# This checkout's embedkv and test helpers, not whatever `pip install -e` points at.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import embedkv
from embedkv import Put, Version
from tests.ports import free_ports


def timed(threads: int, per: int, body: Callable[[int, int], None]) -> float:
    """Run `body(thread, i)` `per` times on each of `threads` threads; operations per second."""
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for i in range(per):
                body(t, i)
        except BaseException as e:  # reported after the run, not lost in a thread
            errors.append(e)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return threads * per / (time.perf_counter() - start)


def producers_consumers(per: int, put: Callable[[int, int], None],
                        take: Callable[[int, int], None]) -> float:
    """4 producer threads putting `per` items each while 4 consumer threads take as many;
    items per second."""
    start = time.perf_counter()
    prods = threading.Thread(target=timed, args=(4, per, put))
    prods.start()
    timed(4, per, take)
    prods.join()
    return 4 * per / (time.perf_counter() - start)


def puts_then_deletes(per: int, put: Callable[[int, int], None],
                      delete: Callable[[int, int], None]) -> float:
    """The raw lower bound of a queue: 4 threads put `per` keys each, then 4 threads delete
    them; keys per second over both phases."""
    start = time.perf_counter()
    timed(4, per, put)
    timed(4, per, delete)
    return 4 * per / (time.perf_counter() - start)


# --- embedkv ------------------------------------------------------------------------------------


@contextmanager
def embedkv_stores(members: int, durable: bool) -> Iterator[list[embedkv.Store]]:
    """One store, or three founders of one cluster in this process on 127.0.0.1."""
    with tempfile.TemporaryDirectory() as tmp:
        if members == 1:
            with embedkv.open(f"{tmp}/data", durable=durable) as s:
                yield [s]
            return
        peers = {f"n{i}": f"127.0.0.1:{port}"
                 for i, port in enumerate(free_ports(members), 1)}
        stores: list[embedkv.Store] = []
        try:
            for name in peers:
                stores.append(embedkv.open(f"{tmp}/{name}", name=name, listen=peers[name],
                                           peers=peers, cluster="bench", insecure=True,
                                           durable=durable))
            deadline = time.monotonic() + 30
            while not all(s.leader for s in stores):
                if time.monotonic() > deadline:
                    raise SystemExit("no leader within 30 s")
                time.sleep(0.02)
            for s in stores:
                s.txn()  # each member has forwarded a proposal before the clock starts
            yield stores
        finally:
            for s in stores:
                s.close()


def bench_embedkv(stores: Sequence[embedkv.Store], per: int) -> dict[str, float]:
    n = len(stores)
    out: dict[str, float] = {}
    for threads in (1, 8):
        locks = [stores[t % n].lock("bench") for t in range(threads)]

        def lock_rt(t: int, i: int) -> None:
            with locks[t]:  # noqa: B023 - the list of this round
                pass

        def raw_rt(t: int, i: int) -> None:  # the writes a lock round trip makes, no waiting
            s = stores[t % n]
            lease = s.lease(10, keepalive=False)
            key = f"raw/{lease.id:016x}"
            s.txn(compare=[Version(key) == 0], success=[Put(key, "", lease=lease.id)])
            lease.revoke()

        out[f"lock{threads}"] = timed(threads, per, lock_rt)
        out[f"rawlock{threads}"] = timed(threads, per, raw_rt)

    producers = [stores[t % n].queue("bench") for t in range(4)]
    consumers = [stores[(t + 1) % n].queue("bench", ttl=30) for t in range(4)]
    def produce(t: int, i: int) -> None:
        producers[t].put(i)

    def consume(t: int, i: int) -> None:
        consumers[t].get(timeout=60).ack()

    out["queue"] = producers_consumers(per, produce, consume)
    for q in consumers:
        q.close()

    def raw_put(t: int, i: int) -> None:
        stores[t % n].put(f"rawq/{t}/{i}", i)

    def raw_delete(t: int, i: int) -> None:  # a consumer's member deletes a producer's key
        stores[(t + 1) % n].delete(f"rawq/{t}/{i}")

    out["rawqueue"] = puts_then_deletes(per, raw_put, raw_delete)
    return out


# --- etcd, through its JSON gateway -----------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Gateway:
    """A persistent HTTP connection to one etcd member's gateway (one per thread)."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._conn.request("POST", path, json.dumps(body),
                           {"Content-Type": "application/json"})
        resp = self._conn.getresponse()
        data = json.loads(resp.read() or b"{}")
        if resp.status != 200:
            raise RuntimeError(f"etcd {path}: {resp.status} {data}")
        assert isinstance(data, dict)
        return data

    def close(self) -> None:
        self._conn.close()


@contextmanager
def etcd_members(binary: str, members: int, durable: bool) -> Iterator[list[int]]:
    """`members` etcd processes of one cluster on 127.0.0.1; yields their client ports."""
    base = None if durable or not Path("/dev/shm").is_dir() else "/dev/shm"
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        names = [f"e{i}" for i in range(1, members + 1)]
        ports = free_ports(2 * members)
        peer = dict(zip(names, ports[:members], strict=True))
        client = dict(zip(names, ports[members:], strict=True))
        initial = ",".join(f"{n}=http://127.0.0.1:{peer[n]}" for n in names)
        procs = []
        try:
            for n in names:
                procs.append(subprocess.Popen(
                    [binary, "--name", n, "--data-dir", f"{tmp}/{n}",
                     "--listen-peer-urls", f"http://127.0.0.1:{peer[n]}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[n]}",
                     "--listen-client-urls", f"http://127.0.0.1:{client[n]}",
                     "--advertise-client-urls", f"http://127.0.0.1:{client[n]}",
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", "bench", "--log-level", "error",
                     "--logger", "zap"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports = [client[n] for n in names]
            deadline = time.monotonic() + 30
            for port in ports:
                while True:
                    try:
                        g = Gateway(port)
                        g.call("/v3/kv/put", {"key": _b64("ready"), "value": _b64("1")})
                        g.close()
                        break
                    except (OSError, RuntimeError, http.client.HTTPException):
                        if time.monotonic() > deadline:
                            raise SystemExit("etcd did not serve within 30 s") from None
                        time.sleep(0.1)
            yield ports
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)


def bench_etcd(ports: Sequence[int], per: int) -> dict[str, float]:
    n = len(ports)
    out: dict[str, float] = {}
    local = threading.local()

    def gw(member: int) -> Gateway:
        conns: dict[int, Gateway] = local.__dict__.setdefault("conns", {})
        if member not in conns:
            conns[member] = Gateway(ports[member % n])
        return conns[member]

    for threads in (1, 8):
        def lock_rt(t: int, i: int) -> None:  # etcdctl lock: lease, Lock, Unlock, revoke
            g = gw(t)
            lease = g.call("/v3/lease/grant", {"TTL": 10})["ID"]
            key = g.call("/v3/lock/lock", {"name": _b64("bench"), "lease": lease})["key"]
            g.call("/v3/lock/unlock", {"key": key})
            g.call("/v3/lease/revoke", {"ID": lease})

        def raw_rt(t: int, i: int) -> None:
            g = gw(t)
            lease = g.call("/v3/lease/grant", {"TTL": 10})["ID"]
            key = _b64(f"raw/{int(lease):016x}")
            g.call("/v3/kv/txn", {
                "compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": "", "lease": lease}}]})
            g.call("/v3/lease/revoke", {"ID": lease})

        out[f"lock{threads}"] = timed(threads, per, lock_rt)
        out[f"rawlock{threads}"] = timed(threads, per, raw_rt)

    seq = itertools.count()
    prefix, end = _b64("q/"), _b64("q0")

    def put(t: int, i: int) -> None:  # etcd's recipe: a new key in creation order
        key = _b64(f"q/{time.time_ns():020d}-{next(seq)}")
        gw(t).call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _b64(str(i))}}]})

    def take(t: int, i: int) -> None:  # the oldest, deleted if nobody took it first
        g = gw(t + 1)
        while True:
            kvs = g.call("/v3/kv/range", {"key": prefix, "range_end": end, "limit": 1,
                                          "sort_order": "ASCEND",
                                          "sort_target": "CREATE"}).get("kvs", [])
            if not kvs:
                continue
            kv = kvs[0]
            r = g.call("/v3/kv/txn", {
                "compare": [{"key": kv["key"], "target": "MOD", "result": "EQUAL",
                             "mod_revision": kv["mod_revision"]}],
                "success": [{"request_delete_range": {"key": kv["key"]}}]})
            if r.get("succeeded"):
                return

    out["queue"] = producers_consumers(per, put, take)

    def raw_put(t: int, i: int) -> None:
        gw(t).call("/v3/kv/put", {"key": _b64(f"rawq/{t}/{i}"), "value": _b64(str(i))})

    def raw_delete(t: int, i: int) -> None:
        gw(t + 1).call("/v3/kv/deleterange", {"key": _b64(f"rawq/{t}/{i}")})

    out["rawqueue"] = puts_then_deletes(per, raw_put, raw_delete)
    return out


# --- report ---------------------------------------------------------------------------------


def report(title: str, r: dict[str, float], raw_lock: str, raw_queue: str) -> None:
    print(f"{title}:")
    for threads in (1, 8):
        print(f"  lock round trips, {threads} thread(s): {r[f'lock{threads}']:8.0f}/s"
              f"   raw {raw_lock}: {r[f'rawlock{threads}']:8.0f}/s")
    print(f"  queue items (4 producers, 4 consumers): {r['queue']:8.0f}/s"
          f"   raw {raw_queue}, 4+4 threads: {r['rawqueue']:8.0f}/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--durable", action="store_true")
    p.add_argument("--etcd", default="auto", help="etcd binary: auto (on PATH), none, a path")
    a = p.parse_args()
    per = 20 if a.quick else 100
    etcd = shutil.which("etcd") if a.etcd == "auto" else None if a.etcd == "none" else a.etcd
    print(f"durable={a.durable}, {per} round trips per thread; "
          f"etcd: {etcd or 'not found, not compared'}")
    for members in (1, 3):
        spread = "" if members == 1 else ", user i on member i % 3"
        with embedkv_stores(members, a.durable) as stores:
            report(f"embedkv, {'one store' if members == 1 else 'three members in this process'}"
                   f"{spread}", bench_embedkv(stores, per), "grant+create+revoke", "put+delete")
        if etcd:
            with etcd_members(etcd, members, a.durable) as ports:
                report(f"etcd, {'one member' if members == 1 else 'three members'}, through "
                       f"its gateway{spread}", bench_etcd(ports, per),
                       "grant+create+revoke", "put+delete")


if __name__ == "__main__":
    main()
