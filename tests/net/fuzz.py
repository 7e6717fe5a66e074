"""Fuzz a member's peer port: random bytes, truncated and mutated frames, oversized headers,
a valid hello then garbage, garbage CBOR inside valid headers and frames with wrong fields, sent
over plain TCP, to a TLS port before any handshake, and over TLS after a handshake with a valid
member certificate. Meanwhile two real members (per transport kind) keep exchanging messages
and calls.

A run fails if anything is logged with a traceback or at ERROR (a `log.exception` in the
transport, an unretrieved task exception on the loop), if the members stop answering, or if a
hostile connection is still held after everyone hung up (a hang). Case `i` of seed `s` is
generated from its own Random(f"{s}:{i}"), so one failing case can be replayed alone.

    PYTHONPATH=$PWD python -m tests.net.fuzz --count 100000 --seed 7 [--budget 1800]
    PYTHONPATH=$PWD python -m tests.net.fuzz --seed 7 --case 4242      # replay one case

prints a one-line summary; CI runs a short seeded run (tests/net/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import random
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cbor2

from embedkv.net import tls
from embedkv.net.frames import (
    DEFAULT_MAX_FRAME,
    HEADER,
    MAX_HELLO,
    Call,
    Frame,
    Hello,
    Kind,
    Purpose,
    Refused,
    Reply,
    SnapshotAck,
    SnapshotChunk,
    SnapshotEnd,
    encode,
)
from embedkv.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

from .hostile import STRANGERS, TIMEOUT, closed, connect, make_certs, serving, start_set
from .test_transport import CLUSTER, Node

TARGET = 2  # the member under fire in each set; member 1 is its real peer
CHANNELS = ("tcp", "tls-raw", "tls")
"""Plain TCP; raw bytes to a TLS port (no handshake); bytes after a valid TLS handshake."""


# ------------------------------------------------------------------------------ generators


def u64(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, 7, 255, 1 << 32, (1 << 64) - 1, rng.getrandbits(64)])


def member(rng: random.Random) -> int:
    return rng.choice([1, 1, 3, 4, TARGET, rng.randrange(1, 1 << 64)])


def plain_value(rng: random.Random, depth: int = 0) -> object:
    """Any value cbor2 can encode: what a peer may put where a field belongs."""
    pick = rng.randrange(14 if depth < 4 else 9)
    if depth < 20 and rng.random() < 0.05:
        pick = 13
    if pick == 0:
        return rng.choice([0, -1, 1 << 63, (1 << 64) - 1, 1 << 64, -(1 << 64) - 1,
                           1 << rng.randrange(65, 20000), -(1 << rng.randrange(65, 200))])
    if pick == 1:
        return rng.randrange(-1000, 1000)
    if pick == 2:
        return rng.choice([0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 1e308])
    if pick == 3:
        return rng.choice([True, False, None])
    if pick == 4:
        return rng.randbytes(rng.choice([0, 1, 8, 100, 5000]))
    if pick == 5:
        return "".join(chr(rng.choice([0x41, 0xE9, 0x4E2D, 0x1F600, rng.randrange(0x20, 0xD7FF)]))
                       for _ in range(rng.choice([0, 1, 10, 300])))
    if pick == 6:
        return "echo"
    if pick == 7:
        return CLUSTER
    if pick == 8:
        return u64(rng)
    if pick == 9:
        return [plain_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 5]))]
    if pick == 10:
        return {rng.choice(["", "k", "é", f"k{rng.randrange(9)}"]): plain_value(rng, depth + 1)
                for _ in range(rng.choice([0, 1, 3]))}
    if pick == 11:  # a map with keys that are not strings
        return {rng.choice([1, b"k", 2.5, None]): plain_value(rng, depth + 1)}
    if pick == 12:
        tag = rng.choice([0, 1, 2, 3, 4, 5, 21, 24, 25, 28, 29, 30, 32, 35, 36, 258, 260, 55799,
                          rng.randrange(1 << 32)])
        return cbor2.CBORTag(tag, plain_value(rng, depth + 1))
    return [plain_value(rng, depth + 1)]  # deep nesting: chains of one-item arrays


def raw_cbor(rng: random.Random, depth: int = 0) -> bytes:
    """One CBOR item, often malformed: reserved additional info, indefinite lengths, stray
    breaks, claimed lengths far beyond the data, invalid UTF-8, deep nesting."""
    major = rng.randrange(8)
    info = rng.choice([0, 5, 23, 24, 25, 26, 27, 28, 31] if rng.random() < 0.3 else
                      [rng.randrange(24), 24, 25])
    head = bytes([major << 5 | info])
    if 24 <= info <= 27:
        size = 1 << (info - 24)
        arg = rng.choice([0, 1, 3, rng.getrandbits(8 * size)]) & ((1 << 8 * size) - 1)
        head += arg.to_bytes(size, "big")
    else:
        arg = info if info < 24 else 0
    if major in (2, 3):
        n = min(arg, rng.choice([0, arg, rng.randrange(64)]), 4096)
        body = rng.randbytes(n)
        if info == 31:
            body = b"".join(raw_cbor(rng, depth + 1) for _ in range(rng.randrange(3))) + b"\xff"
        return head + body
    if major in (4, 5) and depth < 40:
        n = min(arg, rng.randrange(6)) * (2 if major == 5 else 1)
        items = b"".join(raw_cbor(rng, depth + 1) for _ in range(n))
        return head + items + (b"\xff" if info == 31 else b"")
    if major == 6:
        return head + raw_cbor(rng, depth + 1)
    return head


def good_hello(rng: random.Random, purpose: Purpose | None = None) -> Hello:
    p = purpose if purpose is not None else rng.choice(list(Purpose))
    return Hello(rng.choice([1, 3, 4, rng.randrange(5, 1 << 64)]), CLUSTER, p)


def any_hello(rng: random.Random) -> Hello:
    if rng.random() < 0.7:
        return good_hello(rng)
    return Hello(member(rng), rng.choice([CLUSTER, "", "other", "x" * 256]),
                 rng.choice(list(Purpose)), rng.choice([1, 1, 0, 2, u64(rng)]))


def message(rng: random.Random, sender: int) -> Message:
    mtype = rng.choice([t for t in MessageType if t >= MessageType.PROP])
    snap = None
    if rng.random() < 0.2:
        voters = frozenset(rng.randrange(1, 9) for _ in range(rng.randrange(4)))
        snap = Snapshot(SnapshotMeta(u64(rng), u64(rng), ConfState(voters, frozenset())),
                        rng.randbytes(rng.randrange(64)))
    entries = tuple(Entry(u64(rng), u64(rng), rng.choice(list(EntryType)),
                          rng.randbytes(rng.randrange(32))) for _ in range(rng.randrange(4)))
    return Message(
        mtype, to=rng.choice([TARGET, TARGET, TARGET, 1, 5]),
        from_=sender if rng.random() < 0.9 else member(rng), term=u64(rng),
        log_term=u64(rng), index=u64(rng), entries=entries, commit=u64(rng),
        reject=rng.random() < 0.5, reject_hint=u64(rng), snapshot=snap,
        context=rng.randbytes(rng.randrange(16)),
    )


def frame_after(rng: random.Random, hello: Hello) -> Frame:
    """A valid frame, mostly one that fits the connection's purpose."""
    if rng.random() < 0.15:  # one that does not belong here
        misfits: list[Frame] = [SnapshotAck(True), Refused("no"), Reply(1, True, None),
                                SnapshotEnd(3), message(rng, hello.member), Call(1, "echo", 1)]
        return rng.choice(misfits)
    if hello.purpose is Purpose.CALL:
        body = plain_value(rng) if rng.random() < 0.5 else [1, "two", {"three": b"3"}]
        with contextlib.suppress(Exception):  # a body encode refuses: send a simple one
            encode(Call(1, "echo", body))
            return Call(rng.randrange(1, 50), rng.choice(["echo", "echo", "join", "x" * 64]),
                        body)
        return Call(rng.randrange(1, 50), "echo", None)
    if hello.purpose is Purpose.SNAPSHOT:
        parts: list[Frame] = [SnapshotChunk(rng.randbytes(rng.randrange(100))),
                              SnapshotEnd(rng.randrange(300)), message(rng, hello.member)]
        return rng.choice(parts)
    return message(rng, hello.member)


def valid_stream(rng: random.Random) -> bytes:
    hello = any_hello(rng)
    frames: list[Frame] = [hello]
    if hello.purpose is Purpose.SNAPSHOT and rng.random() < 0.7:
        head = message(rng, hello.member)
        frames.append(dataclasses.replace(
            head, type=MessageType.SNAP, to=TARGET, from_=hello.member,
            snapshot=Snapshot(SnapshotMeta(1, 1, ConfState(frozenset({1, 2}))), b""),
        ))
    frames += [frame_after(rng, hello) for _ in range(rng.randrange(5))]
    return b"".join(encode(f) for f in frames)


def wrong_fields(rng: random.Random) -> bytes:
    """A frame array with a real kind and random values in its fields (valid CBOR)."""
    kind = rng.choice(list(Kind))
    size = {Kind.HELLO: 5, Kind.MESSAGE: 13}.get(kind, 2 if kind < Kind.CALL else 4)
    if rng.random() < 0.2:
        size = rng.randrange(0, 16)
    items: list[object] = [int(kind)]
    items += [plain_value(rng) for _ in range(max(0, size - 1))]
    if kind is Kind.HELLO and size and rng.random() < 0.5:  # one field wrong
        items = [0, 1, CLUSTER, rng.randrange(1, 9), rng.randrange(3)][:size]
        items[rng.randrange(len(items))] = plain_value(rng)
    try:
        payload = cbor2.dumps(items)
    except Exception:
        payload = cbor2.dumps([int(kind)])
    return HEADER.pack(len(payload)) + payload


def garbage_payload(rng: random.Random) -> bytes:
    """A valid header around a payload that is not a valid frame's CBOR."""
    pick = rng.randrange(3)
    if pick == 0:
        payload = rng.randbytes(rng.randrange(1, 300))
    elif pick == 1:
        payload = raw_cbor(rng)
    else:
        payload = wrong_fields(rng)[HEADER.size:]
    payload = payload or b"\x00"
    size = len(payload)
    if rng.random() < 0.2:  # a header that lies about the length
        size = max(1, size + rng.choice([-2, -1, 1, 2, 100]))
    return HEADER.pack(size) + payload


def oversized(rng: random.Random) -> bytes:
    n = rng.choice([MAX_HELLO + 1, 1 << 20, DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME + 1,
                    (1 << 32) - 1, rng.randrange(MAX_HELLO + 1, 1 << 32)])
    return HEADER.pack(n) + rng.randbytes(rng.randrange(0, 200))


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        if not buf:
            break
        op, i = rng.randrange(4), rng.randrange(len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.randrange(256)
        elif op == 2:
            del buf[i : i + rng.randrange(1, 8)]
        else:
            buf[i:i] = rng.randbytes(rng.randrange(1, 8))
    return bytes(buf)


KINDS: dict[str, Callable[[random.Random], bytes]] = {
    "random": lambda rng: rng.randbytes(rng.choice([1, 3, 4, 5, 17, 100, 1000, 4100])),
    "truncated": lambda rng: (lambda s: s[: rng.randrange(len(s))])(valid_stream(rng)),
    "oversized": oversized,
    "hello+oversized": lambda rng: encode(good_hello(rng)) + oversized(rng),
    "hello+garbage": lambda rng: encode(good_hello(rng)) + rng.randbytes(rng.randrange(1, 500)),
    "garbage-cbor": garbage_payload,
    "hello+garbage-cbor": lambda rng: encode(good_hello(rng)) + garbage_payload(rng),
    "wrong-fields": wrong_fields,
    "hello+wrong-fields": lambda rng: encode(good_hello(rng)) + wrong_fields(rng),
    "mutated": lambda rng: mutate(rng, valid_stream(rng)),
    "valid": valid_stream,
}


@dataclasses.dataclass
class Case:
    index: int
    channel: str
    kind: str
    data: bytes
    pieces: list[bytes]

    def describe(self) -> str:
        return (f"case {self.index}: {self.kind} over {self.channel}, {len(self.data)} bytes "
                f"in {len(self.pieces)} writes: {self.data[:64].hex()}")


def make_case(seed: int, index: int, channels: tuple[str, ...], hello_ctx: bytes) -> Case:
    rng = random.Random(f"{seed}:{index}")
    channel = rng.choice(channels)
    kind = rng.choice(list(KINDS))
    data = KINDS[kind](rng)
    if channel == "tls-raw" and rng.random() < 0.3:  # a broken handshake, not just noise
        kind = "clienthello"
        data = mutate(rng, hello_ctx) if rng.random() < 0.8 else hello_ctx[: rng.randrange(60)]
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.choice([0, 0, 1, 3])))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return Case(index, channel, kind, data, [p for p in pieces if p])


# ------------------------------------------------------------------------------ the run


class Trouble(logging.Handler):
    """Records every log record with a traceback or at ERROR and above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


@dataclasses.dataclass
class Summary:
    seed: int
    cases: int = 0
    by_channel: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    checks: int = 0
    delivered: int = 0  # fuzzed messages that passed every check and reached on_message
    failures: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        channels = ", ".join(f"{c} {n}" for c, n in sorted(self.by_channel.items()))
        verdict = "OK" if not self.failures else f"{len(self.failures)} FAILURES"
        return (f"fuzz seed {self.seed}: {self.cases} cases ({channels}) in "
                f"{self.seconds:.0f} s, {self.delivered} fuzzed messages delivered, members "
                f"answered {self.checks} checks: {verdict}")


@dataclasses.dataclass
class Target:
    channel: str
    nodes: list[Node]
    certs: Path | None
    ctx: ssl.SSLContext | None  # what a fuzz connection speaks after connecting

    @property
    def node(self) -> Node:
        return self.nodes[TARGET - 1]


async def send(case: Case, target: Target, source: str) -> str | None:
    """Play one case; a description of the trouble if the listener did not hang up when we
    did (a hang), else None."""
    try:
        reader, writer = await connect(target.node.port, source, target.ctx)
    except (OSError, TimeoutError) as exc:
        return f"{case.describe()}: cannot connect: {exc!r}"
    end = asyncio.create_task(closed(reader))
    try:
        for piece in case.pieces:
            if end.done():
                break
            writer.write(piece)
            await writer.drain()
        if target.ctx is None and not end.done():
            writer.write_eof()  # half-close: the listener must see the end and hang up
    except OSError:
        pass  # the listener hung up first
    if target.ctx is not None:  # TLS cannot half-close: hang up, the checks see the rest
        writer.close()
        end.cancel()
        return None
    try:
        await asyncio.wait_for(end, TIMEOUT)
    except TimeoutError:
        return f"{case.describe()}: the listener held the connection after our end"
    finally:
        writer.close()
    return None


async def checkpoint(targets: list[Target], tag: str) -> int:
    """The members still talk, and every hostile connection is gone; returns how many fuzzed
    messages the members got."""
    delivered = 0
    for t in targets:
        await serving(t.nodes, t.certs, f"{t.channel} {tag}")
        delivered += sum(len(node.got) for node in t.nodes) - 2  # less the check's own two
        for node in t.nodes:
            node.got.clear()
        gate = t.node.transport._admission
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while gate.pending or len(t.node.transport._inbound) > 2:  # the link and a call conn
            if loop.time() > deadline:
                raise AssertionError(f"{t.channel}: {gate.pending} connections pending and "
                                     f"{len(t.node.transport._inbound)} inbound after a batch")
            await asyncio.sleep(0.01)
    return delivered


async def fuzz(count: int, seed: int, *, budget: float | None = None, concurrency: int = 16,
               batch: int = 200, channels: tuple[str, ...] = CHANNELS,
               only: int | None = None, progress: bool = False) -> Summary:
    summary = Summary(seed)
    trouble = Trouble()
    root = logging.getLogger()
    root.addHandler(trouble)
    old_level = root.level
    root.setLevel(logging.INFO)
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []
    loop.set_exception_handler(
        lambda _, ctx: loop_errors.append(f"loop: {ctx.get('message')} {ctx.get('exception')!r}")
    )
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp), ["n1", "n2", "n3"])
        member_ctx = tls.client_context(certs, "n3")  # a valid member's certificate
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        with contextlib.suppress(ssl.SSLWantReadError):
            member_ctx.wrap_bio(incoming, outgoing, server_hostname="x").do_handshake()
        hello_ctx = outgoing.read()
        kw = {"hello_timeout": 5.0}
        plain = await start_set(2, None, **kw)
        secure = await start_set(2, certs, **kw)
        targets = {"tcp": Target("tcp", plain, None, None),
                   "tls-raw": Target("tls-raw", secure, certs, None),
                   "tls": Target("tls", secure, certs, member_ctx)}
        used = [t for t in (targets["tcp"], targets["tls"])
                if any(targets[c].nodes is t.nodes for c in channels)]
        sem = asyncio.Semaphore(concurrency)

        async def play(case: Case) -> None:
            async with sem:
                found = await send(case, targets[case.channel],
                                   STRANGERS[case.index % len(STRANGERS)])
                if found is not None:
                    summary.failures.append(found)

        try:
            await checkpoint(used, "start")
            indexes = range(count) if only is None else [only]
            it = iter(indexes)
            done = False
            while not done and not summary.failures:
                cases = [make_case(seed, i, channels, hello_ctx)
                         for i in itertools.islice(it, batch)]
                if not cases:
                    break
                await asyncio.gather(*(play(c) for c in cases))
                summary.cases += len(cases)
                for c in cases:
                    summary.by_channel[c.channel] += 1
                    summary.by_kind[c.kind] += 1
                try:
                    summary.delivered += await checkpoint(used, f"after case {cases[-1].index}")
                    summary.checks += 1
                except (AssertionError, Exception) as exc:
                    summary.failures.append(f"after cases {cases[0].index}..{cases[-1].index}: "
                                            f"{exc!r}")
                for r in trouble.records:
                    summary.failures.append(f"logged {r.levelname} on {r.name}: "
                                            f"{r.getMessage()} (cases up to {cases[-1].index})")
                trouble.records.clear()
                summary.failures += loop_errors
                loop_errors.clear()
                if progress:
                    summary.seconds = time.monotonic() - start
                    print(summary.line(), file=sys.stderr, flush=True)
                if budget is not None and time.monotonic() - start > budget:
                    done = True
        finally:
            for t in (plain, secure):
                for node in t:
                    await node.transport.close()
            root.removeHandler(trouble)
            root.setLevel(old_level)
    summary.seconds = time.monotonic() - start
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--channels", default=",".join(CHANNELS))
    p.add_argument("--case", type=int, default=None, help="replay this one case")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    channels = tuple(args.channels.split(","))
    summary = asyncio.run(fuzz(args.count, args.seed, budget=args.budget,
                               concurrency=args.concurrency, channels=channels,
                               only=args.case, progress=args.progress))
    for failure in summary.failures[:20]:
        print(failure)
    print(summary.line())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
