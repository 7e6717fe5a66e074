"""PeerTransport on 127.0.0.1 with ephemeral ports: delivery, drops, reconnects, refusals,
faults and snapshot streams. Every wait has a deadline; nothing asserts on timing."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from embedkv.net import Direction, FaultPlan, LinkState, PeerTransport, encode
from embedkv.net.frames import Hello, Purpose, SnapshotChunk, SnapshotEnd
from embedkv.raft.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

CLUSTER = "test-cluster"


async def until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll `cond` on the loop until it holds; fail (never hang) after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Node:
    """A transport and everything its callbacks reported."""

    id: int
    got: list[Message] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    snapshots: list[tuple[int, bool]] = field(default_factory=list)
    t: PeerTransport | None = None

    @property
    def transport(self) -> PeerTransport:
        assert self.t is not None
        return self.t

    @property
    def port(self) -> int:
        return self.transport.address[1]

    async def start(self, peers: dict[int, str], port: int = 0, **kw: Any) -> Node:
        kw.setdefault("cluster", CLUSTER)
        self.t = PeerTransport(
            member_id=self.id,
            listen=f"127.0.0.1:{port}",
            peers=peers,
            on_message=self.got.append,
            report_unreachable=self.unreachable.append,
            on_peer_lost=self.lost.append,
            report_snapshot=lambda p, ok: self.snapshots.append((p, ok)),
            rng=random.Random(self.id),
            **{"backoff_base": 0.01, "backoff_cap": 0.1, **kw},
        )
        await self.t.start()
        return self

    def bodies(self) -> list[bytes]:
        return [m.context for m in self.got]


def msg(frm: int, to: int, body: bytes, mtype: MessageType = MessageType.APP) -> Message:
    return Message(
        mtype, to=to, from_=frm, term=3, index=7, context=body, entries=(Entry(3, 8, data=body),)
    )


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))


async def cluster(n: int, **kw: Any) -> list[Node]:
    nodes = [await Node(i + 1).start({}, **kw) for i in range(n)]
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.transport.set_peer(b.id, f"127.0.0.1:{b.port}")
    return nodes


async def close(nodes: list[Node]) -> None:
    for node in nodes:
        if node.t is not None:
            await node.t.close()


def test_three_transports_exchange_messages() -> None:
    async def main() -> None:
        nodes = await cluster(3)
        try:
            for a in nodes:
                a.transport.send(
                    [msg(a.id, b.id, b"%d>%d" % (a.id, b.id)) for b in nodes if b is not a]
                )
            for b in nodes:
                want = sorted(b"%d>%d" % (a.id, b.id) for a in nodes if a is not b)
                await until(partial(lambda n, w: sorted(n.bodies()) == w, b, want), "delivery")
                assert all(m.entries[0].data == m.context for m in b.got)
            # many messages in one burst arrive complete and in order
            burst = [msg(1, 2, b"m%d" % i) for i in range(500)]
            nodes[0].transport.send(burst)
            await until(lambda: len(nodes[1].got) == 502, "the burst")
            assert nodes[1].bodies()[2:] == [m.context for m in burst]
        finally:
            await close(nodes)

    run(main)


def test_a_full_queue_drops_and_reports_unreachable() -> None:
    async def main() -> None:
        nodes = await cluster(2, queue_frames=4)
        try:
            nodes[0].transport.send([msg(1, 2, b"x%d" % i) for i in range(10)])
            assert nodes[0].unreachable == [2] * 6  # reported at once, not later
            await until(lambda: len(nodes[1].got) == 4, "the queued four")
        finally:
            await close(nodes)

    run(main)


def test_closing_an_idle_link_leaves_no_task_pending() -> None:
    async def main() -> None:
        nodes = await cluster(2)
        try:
            a = nodes[0].transport
            await until(lambda: a.link_state(2) is LinkState.UP, "link up")
            a.send([msg(1, 2, b"x")])
            await until(lambda: nodes[1].bodies() == [b"x"], "delivery")  # now idle, waiting
            # held here, so that a leaked waiter stays visible instead of being collected
            waiters = [t for t in asyncio.all_tasks()
                       if not t.done() and t.get_coro().__qualname__ == "Event.wait"]
            assert waiters
            await a.close()
            await until(lambda: all(t.done() for t in waiters), "the link's waiter to end")
        finally:
            await close(nodes)

    run(main)


def test_a_down_link_drops_and_reports_unreachable() -> None:
    async def main() -> None:
        spare = await Node(9).start({})
        port = spare.port
        await close([spare])  # a port nobody listens on
        a = await Node(1).start({2: f"127.0.0.1:{port}"})
        try:
            await until(lambda: a.transport.link_state(2) is LinkState.DOWN, "link down")
            a.transport.send([msg(1, 2, b"x")])
            assert a.unreachable == [2]
            a.transport.send([msg(1, 3, b"y")])  # no address at all
            assert a.unreachable == [2, 3]
        finally:
            await close([a])

    run(main)


def test_peer_restart_is_reported_and_the_link_reconnects() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        try:
            a.transport.send([msg(1, 2, b"first")])
            await until(lambda: b.bodies() == [b"first"], "first delivery")
            port = b.port
            await close([b])
            await until(lambda: a.lost == [2], "on_peer_lost")
            b2 = await Node(2).start({1: f"127.0.0.1:{a.port}"}, port=port)

            def resend() -> bool:
                if not b2.got:
                    a.transport.send([msg(1, 2, b"again")])
                return bool(b2.got)

            await until(resend, "delivery after the restart")
            assert b2.bodies()[0] == b"again"
            b2.transport.send([msg(2, 1, b"back")])
            await until(lambda: b"back" in a.bodies(), "reverse delivery")
            await close([b2])
        finally:
            await close([a, b])

    run(main)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xff" + b"x" * 64, b"GET / HTTP/1.1\r\n\r\n"],
    ids=["bad-cbor", "oversized", "http"],
)
def test_a_garbage_sender_is_dropped_and_logged(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="embedkv.net")

    async def main() -> None:
        a, b = await cluster(2, max_frame=1 << 16, snapshot_chunk=1 << 12)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(garbage)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # dropped by b
            writer.close()
            # after a valid hello too: the link, not the transport, goes
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(encode(Hello(7, CLUSTER)) + garbage)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert any("dropped the connection" in r.getMessage() for r in caplog.records)
            a.transport.send([msg(1, 2, b"still")])
            await until(lambda: b.bodies() == [b"still"], "delivery after garbage")
        finally:
            await close([a, b])

    run(main)


def test_a_message_claiming_another_sender_drops_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        a, b = await cluster(2)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(encode(Hello(7, CLUSTER)) + encode(msg(3, 2, b"forged")))
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert b.got == []
        finally:
            await close([a, b])

    run(main)


def test_a_member_of_another_cluster_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="embedkv.net")

    async def main() -> None:
        b = await Node(2).start({})
        a = await Node(1).start({2: f"127.0.0.1:{b.port}"}, cluster="other")
        try:
            await until(
                lambda: any("another cluster" in r.getMessage() for r in caplog.records),
                "b's refusal",
            )
            await until(
                lambda: any("refused our link" in r.getMessage() for r in caplog.records),
                "a's log of the refusal",
            )
            a.transport.send([msg(1, 2, b"x")])
            assert b.got == []
            assert a.lost == []  # a refusal is not a crashed peer
        finally:
            await close([a, b])

    run(main)


def test_a_removed_member_dialing_back_is_told_it_was_removed(
        caplog: pytest.LogCaptureFixture) -> None:
    """etcd answers a removed member "permanently removed": here the listener refuses the
    hello of an id its `removed` says left the cluster, and the dialer's on_removed hears
    of it at each redial (logged as a warning once); other members are served as before."""
    caplog.set_level(logging.DEBUG, logger="embedkv.net")

    async def main() -> None:
        told: list[tuple[int, str]] = []
        b = await Node(2).start({}, removed=lambda mid: mid == 1)
        c = await Node(3).start({2: f"127.0.0.1:{b.port}"})
        a = await Node(1).start({2: f"127.0.0.1:{b.port}"},
                                on_removed=lambda p, why: told.append((p, why)))
        try:
            await until(lambda: len(told) >= 2, "a told twice (it redials after a refusal)")
            assert {p for p, _ in told} == {2}
            assert "member 1 was removed from the cluster" in told[0][1]
            a.transport.send([msg(1, 2, b"from a")])
            c.transport.send([msg(3, 2, b"from c")])
            await until(lambda: b.bodies() == [b"from c"], "c's message at b")
            assert a.lost == []  # a refusal is not a crashed peer
            warned = [r for r in caplog.records if r.levelno == logging.WARNING
                      and "refused our link" in r.getMessage()]
            assert len(warned) == 1, [r.getMessage() for r in warned]
        finally:
            await close([a, b, c])

    run(main)


def test_a_partition_by_direction_and_its_healing() -> None:
    async def main() -> None:
        plan = FaultPlan(rng=random.Random(1))
        nodes = await cluster(3)
        a, b, c = nodes
        a.transport.faults = plan
        try:
            plan.partition(2, Direction.SEND)
            a.transport.send([msg(1, 2, b"cut"), msg(1, 3, b"through")])
            b.transport.send([msg(2, 1, b"inbound")])
            await until(lambda: c.bodies() == [b"through"], "a -> c")
            await until(lambda: a.bodies() == [b"inbound"], "b -> a")
            plan.partition(3, Direction.RECEIVE)
            c.transport.send([msg(3, 1, b"dropped")])
            b.transport.send([msg(2, 1, b"marker")])
            await until(lambda: a.bodies() == [b"inbound", b"marker"], "marker")
            plan.heal()
            plan.delay(2, 0.01)
            a.transport.send([msg(1, 2, b"healed")])
            c.transport.send([msg(3, 1, b"c again")])
            await until(lambda: b.bodies() == [b"healed"], "a -> b healed")
            await until(lambda: b"c again" in a.bodies(), "c -> a healed")
            assert b"dropped" not in a.bodies() and b"cut" not in b.bodies()
        finally:
            await close(nodes)

    run(main)


def test_duplication_delivers_raft_messages_twice_until_healed() -> None:
    async def main() -> None:
        plan = FaultPlan(rng=random.Random(2))
        a, b = await cluster(2)
        b.transport.faults = plan
        try:
            with pytest.raises(ValueError, match="probability"):
                plan.duplicate(1, 1.5)
            plan.duplicate(1, 1.0)
            a.transport.send([msg(1, 2, b"m%d" % i) for i in range(20)])
            await until(lambda: len(b.got) == 40, "every message twice")
            assert sorted(b.bodies()) == sorted([b"m%d" % i for i in range(20)] * 2)
            assert len({id(m) for m in b.got}) == 40, "a copy is its own object"
            # b's own sends and calls it answers are never repeated; healed, none is
            plan.heal()
            a.transport.send([msg(1, 2, b"once")])
            b.transport.send([msg(2, 1, b"back")])
            await until(lambda: b.bodies()[-1:] == [b"once"] and a.bodies() == [b"back"], "healed")
            assert all(plan.again(1, msg(1, 2, b"x")) is None for _ in range(100))
        finally:
            await close([a, b])

    run(main)


def snap_message(frm: int, to: int, data: bytes) -> Message:
    meta = SnapshotMeta(index=120, term=4, conf_state=ConfState(frozenset({1, 2}), frozenset({3})))
    return Message(MessageType.SNAP, to=to, from_=frm, term=4, snapshot=Snapshot(meta, data))


def test_a_snapshot_streams_intact_while_messages_flow() -> None:
    async def main() -> None:
        a, b = await cluster(2, max_frame=1 << 16, snapshot_chunk=1 << 12)
        try:
            data = random.Random(5).randbytes(3 << 20)
            a.transport.send([snap_message(1, 2, data), msg(1, 2, b"heartbeat")])
            await until(lambda: a.snapshots == [(2, True)], "report_snapshot ok")
            snaps = [m for m in b.got if m.type is MessageType.SNAP]
            assert len(snaps) == 1 and snaps[0].snapshot == snap_message(1, 2, data).snapshot
            assert b"heartbeat" in b.bodies()

            async def chunks() -> AsyncIterator[bytes]:  # an async source, chunked unevenly
                for i in range(0, len(data), 100_000):
                    yield data[i : i + 100_000]

            a.transport.send_snapshot(snap_message(1, 2, b""), chunks())
            await until(lambda: a.snapshots == [(2, True)] * 2, "second report")
            assert b.got[-1].snapshot == snap_message(1, 2, data).snapshot
        finally:
            await close([a, b])

    run(main)


def test_a_snapshot_broken_midway_reports_failure_and_delivers_nothing() -> None:
    async def main() -> None:
        a, b = await cluster(2, max_frame=1 << 16, snapshot_chunk=1 << 12)
        try:

            async def broken() -> AsyncIterator[bytes]:
                yield b"x" * 50_000
                raise OSError("the snapshot file vanished")

            a.transport.send_snapshot(snap_message(1, 2, b""), broken())
            await until(lambda: a.snapshots == [(2, False)], "report_snapshot failed")
            a.transport.send([msg(1, 2, b"after")])
            await until(lambda: b.bodies() == [b"after"], "the link still works")
            assert all(m.type is not MessageType.SNAP for m in b.got)
            # a peer that goes away mid-stream fails the stream too
            await close([b])
            a.transport.send_snapshot(snap_message(1, 2, b""), [b"y" * 1000])
            await until(lambda: a.snapshots == [(2, False)] * 2, "failure without a peer")
        finally:
            await close([a, b])

    run(main)


def test_a_snapshot_stream_with_a_wrong_size_is_dropped_undelivered() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(
                encode(Hello(1, CLUSTER, Purpose.SNAPSHOT))
                + encode(snap_message(1, 2, b""))
                + encode(SnapshotChunk(b"abc"))
                + encode(SnapshotEnd(4))
            )
            assert await asyncio.wait_for(reader.read(), 10) == b""  # no ack: dropped
            writer.close()
            assert b.got == []
        finally:
            await close([a, b])

    run(main)


def test_a_partition_fails_snapshot_streams_in_either_direction() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        try:
            a.transport.faults = FaultPlan()
            a.transport.faults.partition(2, Direction.SEND)
            a.transport.send_snapshot(snap_message(1, 2, b""), [b"z" * 100])
            await until(lambda: a.snapshots == [(2, False)], "send side cut")
            a.transport.faults.heal()
            b.transport.faults = FaultPlan()
            b.transport.faults.partition(1, Direction.RECEIVE)
            a.transport.send([snap_message(1, 2, b"z" * 100)])
            await until(lambda: a.snapshots == [(2, False)] * 2, "receive side cut")
            assert b.got == []
            b.transport.faults.heal()
            a.transport.send([snap_message(1, 2, b"z" * 100)])
            await until(lambda: a.snapshots[-1] == (2, True), "healed")
        finally:
            await close([a, b])

    run(main)


def test_a_peer_that_resets_the_link_is_lost_not_refusing() -> None:
    """A peer that dies with unread data resets the connection instead of closing it: that is
    a lost peer (an election may start at once), not a refusal."""
    import socket
    import struct

    async def main() -> None:
        reset = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(64)  # the hello, and leave the rest unread
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
            reset.set()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a = await Node(1).start({2: f"127.0.0.1:{port}"})
        try:
            await asyncio.wait_for(reset.wait(), 10)
            await until(lambda: a.lost == [2], "on_peer_lost after a reset")
        finally:
            await close([a])
            server.close()

    run(main)


def test_a_link_in_backoff_redials_when_the_peer_speaks() -> None:
    """A cluster starting: A dials B before B listens and backs off for a long time; B comes
    up and talks to A, so A's link to B comes up at once instead of dropping what A sends
    until the backoff ends."""
    import socket

    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port_b = s.getsockname()[1]
        a = await Node(1).start({2: f"127.0.0.1:{port_b}"}, backoff_base=30.0, backoff_cap=30.0)
        b: Node | None = None
        try:
            await until(lambda: a.transport.link_state(2) is LinkState.DOWN, "a backs off")
            b = await Node(2).start({1: f"127.0.0.1:{a.port}"}, port=port_b)
            b.transport.send([msg(2, 1, b"hello")])
            await until(lambda: a.bodies() == [b"hello"], "b reaches a")
            await until(lambda: a.transport.link_state(2) is LinkState.UP, "a redials b")
            a.transport.send([msg(1, 2, b"back")])
            await until(lambda: b is not None and b.bodies() == [b"back"], "a reaches b")
        finally:
            await close([a] + ([b] if b is not None else []))

    run(main)
