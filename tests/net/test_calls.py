"""Request/reply calls between transports on 127.0.0.1: multiplexing, errors, timeouts,
restarts, joiners without the cluster token, garbage and the fault plan. Every wait has a
deadline; nothing asserts on timing (the short timeouts below are what a call is given, not
how long anything must take)."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable

import pytest

from embedkv.errors import Unavailable
from embedkv.net import (
    Direction,
    FaultPlan,
    LinkState,
    PeerTransport,
    ProtocolError,
    RemoteError,
    encode,
)
from embedkv.net.frames import Call, FrameDecoder, Hello, Purpose, Refused, Reply

from .test_transport import CLUSTER, Node, close, cluster, msg, run, until

Handler = Callable[[int, str, object], Awaitable[object]]
LONG = 30.0  # a call's timeout when it is expected to succeed
SHORT = 0.2  # a call's timeout when no reply is expected


class Server:
    """An on_call handler that records its calls; "block" calls wait until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, object]] = []
        self.release = asyncio.Event()
        self.blocked = 0

    async def __call__(self, sender: int, method: str, body: object) -> object:
        self.calls.append((sender, method, body))
        if method == "block":
            self.blocked += 1
            await self.release.wait()
        if method == "fail":
            raise LookupError(f"no such thing as {body!r}")
        if method == "unsendable":
            return datetime.date.today()
        return {"from": sender, "method": method, "body": body}


async def body(call: Awaitable[object]) -> object:
    """The body a Server's reply echoes."""
    reply = await call
    assert isinstance(reply, dict)
    return reply["body"]


async def echo(t: PeerTransport, target: int | str, value: object) -> object:
    return await body(t.call(target, "echo", value, timeout=LONG))


def count_dials(t: PeerTransport) -> list[str]:
    """Record every connection `t` dials from now on."""
    dials: list[str] = []
    dial = t.dial

    async def counted(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        dials.append(address)
        return await dial(address)

    t.dial = counted  # type: ignore[method-assign]
    return dials


def test_calls_round_trip_multiplexed_on_one_connection() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server
        try:
            await until(lambda: a.transport.link_state(2) is LinkState.UP, "link up")
            dials = count_dials(a.transport)
            body = {"key": b"k", "n": [1, -2, 3.5, None, True, "s"], "deep": {"x": {}}}
            got = await a.transport.call(2, "status", body, timeout=LONG)
            assert got == {"from": 1, "method": "status", "body": body}
            # many concurrent calls share the connection; each gets its own reply
            replies = await asyncio.gather(*(echo(a.transport, 2, i) for i in range(300)))
            assert replies == list(range(300))
            assert len(dials) == 1
            # by "host:port" too (a joiner's way), on a connection of its own
            got = await a.transport.call(f"127.0.0.1:{b.port}", "x", None, timeout=LONG)
            assert got == {"from": 1, "method": "x", "body": None}
            assert len(dials) == 2
        finally:
            await close([a, b])

    run(main)


def test_a_slow_handler_blocks_neither_other_calls_nor_the_raft_link() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server
        try:
            slow = [
                asyncio.ensure_future(body(a.transport.call(2, "block", i, timeout=LONG)))
                for i in range(3)
            ]
            await until(lambda: server.blocked == 3, "three blocked handlers")
            assert await echo(a.transport, 2, "fast") == "fast"
            a.transport.send([msg(1, 2, b"heartbeat")])
            await until(lambda: b.bodies() == [b"heartbeat"], "a message past the slow calls")
            assert not any(f.done() for f in slow)
            server.release.set()
            assert await asyncio.gather(*slow) == [0, 1, 2]
        finally:
            await close([a, b])

    run(main)


def test_handler_errors_become_remote_errors() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        try:
            with pytest.raises(RemoteError, match=r"^no handler$"):
                await a.transport.call(2, "status", None, timeout=LONG)
            b.transport.on_call = Server()
            with pytest.raises(RemoteError, match=r"^no such thing as 'x'$"):
                await a.transport.call(2, "fail", "x", timeout=LONG)
            with pytest.raises(RemoteError, match="reply to 'unsendable' cannot be sent"):
                await a.transport.call(2, "unsendable", None, timeout=LONG)
            # the connection survives them all
            assert await echo(a.transport, 2, 1) == 1
        finally:
            await close([a, b])

    run(main)


def test_bad_arguments_fail_the_caller_before_anything_is_sent() -> None:
    async def main() -> None:
        a, b = await cluster(2, max_frame=1 << 16, snapshot_chunk=1 << 12)
        server = Server()
        b.transport.on_call = server
        try:
            dials = count_dials(a.transport)
            with pytest.raises(ProtocolError, match="tuple"):
                await a.transport.call(2, "m", (1, 2), timeout=LONG)
            with pytest.raises(ProtocolError, match="exceeds the cap"):
                await a.transport.call(2, "m", b"x" * (1 << 16), timeout=LONG)
            with pytest.raises(ProtocolError, match="method"):
                await a.transport.call(2, "", None, timeout=LONG)
            with pytest.raises(ValueError, match="timeout"):
                await a.transport.call(2, "m", None, timeout=0)
            with pytest.raises(ValueError, match="host:port"):
                await a.transport.call("nowhere", "m", None, timeout=LONG)
            with pytest.raises(Unavailable, match="no address for member 9"):
                await a.transport.call(9, "m", None, timeout=LONG)
            assert dials == [] and server.calls == []
        finally:
            await close([a, b])

    run(main)


def test_a_handler_that_never_answers_is_bounded_by_the_timeout() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server
        try:
            with pytest.raises(Unavailable, match="no reply from member 2 to 'block' within"):
                await a.transport.call(2, "block", None, timeout=SHORT)
            server.release.set()  # its late reply is ignored, and the connection still works
            await until(lambda: not b.transport._tasks, "the late reply to be written")
            assert await echo(a.transport, 2, 5) == 5
        finally:
            await close([a, b])

    run(main)


def test_a_lost_connection_fails_every_call_and_a_restarted_peer_is_redialed() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server
        try:
            assert await echo(a.transport, 2, 1) == 1
            pending = [
                asyncio.ensure_future(a.transport.call(2, "block", i, timeout=LONG))
                for i in range(5)
            ]
            await until(lambda: server.blocked == 5, "five pending calls")
            port = b.port
            await close([b])  # the peer goes away with five calls in flight
            results = await asyncio.gather(*pending, return_exceptions=True)
            assert all(isinstance(r, Unavailable) for r in results), results
            # at once, as lost, not after their timeout
            assert all("member 2 closed the call connection" in str(r) for r in results)
            with pytest.raises(Unavailable, match="cannot reach member 2"):
                await a.transport.call(2, "echo", 2, timeout=LONG)
            b2 = await Node(2).start({1: f"127.0.0.1:{a.port}"}, port=port, on_call=Server())
            try:
                assert await echo(a.transport, 2, 3) == 3
            finally:
                await close([b2])
        finally:
            await close([a, b])

    run(main)


def test_close_fails_pending_calls_and_later_ones() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server
        try:
            pending = asyncio.ensure_future(a.transport.call(2, "block", None, timeout=LONG))
            await until(lambda: server.blocked == 1, "a pending call")
            await a.transport.close()
            with pytest.raises(Unavailable, match="the transport is closed"):
                await pending
            with pytest.raises(Unavailable, match="closed"):
                await a.transport.call(2, "echo", None, timeout=LONG)
            # the callee's handler is cancelled with the connection, no task left behind
            await until(lambda: not b.transport._tasks, "the handler to be cancelled")
        finally:
            await close([a, b])

    run(main)


def test_removing_a_peer_fails_its_pending_calls() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server
        try:
            pending = asyncio.ensure_future(a.transport.call(2, "block", None, timeout=LONG))
            await until(lambda: server.blocked == 1, "a pending call")
            a.transport.remove_peer(2)
            with pytest.raises(Unavailable, match="member 2 was removed or moved"):
                await pending
            with pytest.raises(Unavailable, match="no address for member 2"):
                await a.transport.call(2, "echo", None, timeout=LONG)
        finally:
            await close([a, b])

    run(main)


def test_a_joiner_without_the_token_may_only_call_join(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="embedkv.net")

    async def main() -> None:
        b = await Node(2).start({})
        server = Server()
        b.transport.on_call = server
        joiner = await Node(77).start({}, cluster="")  # has picked its id, knows no token
        target = f"127.0.0.1:{b.port}"
        try:
            got = await joiner.transport.call(target, "join", {"name": "n4"}, timeout=LONG)
            assert got == {"from": 77, "method": "join", "body": {"name": "n4"}}
            with pytest.raises(RemoteError, match="'status' needs the cluster token"):
                await joiner.transport.call(target, "status", None, timeout=LONG)
            assert [c[1] for c in server.calls] == ["join"]
            assert any("refused a call from member 77" in r.getMessage() for r in caplog.records)
            # once it has the token (from the join reply), its calls carry it
            joiner.transport.cluster = CLUSTER
            got = await joiner.transport.call(target, "status", None, timeout=LONG)
            assert got == {"from": 77, "method": "status", "body": None}
            # a wrong token is refused outright, even for join
            joiner.transport.cluster = "another"
            with pytest.raises(Unavailable, match="another cluster"):
                await joiner.transport.call(target, "join", None, timeout=LONG)
            # an empty token never opens a Raft link or a snapshot stream
            for purpose in (Purpose.RAFT, Purpose.SNAPSHOT):
                reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
                writer.write(encode(Hello(77, "", purpose)))
                answer = FrameDecoder().feed(await asyncio.wait_for(reader.read(), 10))
                assert isinstance(answer[0], Refused) and "only call join" in answer[0].reason
                writer.close()
        finally:
            await close([b, joiner])

    run(main)


async def _dropped(port: int, data: bytes) -> None:
    """Send `data` on a new call connection and wait for the listener to drop it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Hello(7, CLUSTER, Purpose.CALL)) + data)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


def test_garbage_on_a_call_connection_drops_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="embedkv.net")

    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server
        try:
            call = encode(Call(1, "block", None))
            tagged = bytearray(encode(Call(1, "m", "2026-01-01T00:00:00Z")))
            tagged[-21:-21] = b"\xc0"  # the string as a tag-0 date: the frame's length fixed
            tagged[:4] = (len(tagged) - 4).to_bytes(4, "big")
            for garbage in [
                b"\x00\x00\x00\x05hello",  # undecodable
                b"\xff\xff\xff\xff",  # oversized
                encode(msg(7, 2, b"raft")),  # not a call
                encode(Reply(1, True, None)),  # a reply sent to the listener
                bytes(tagged),  # a tag in the body
                call + call,  # a call id reused while the first is in flight
            ]:
                await _dropped(b.port, garbage)
            assert sum("dropped the connection" in r.getMessage() for r in caplog.records) == 6
            # the listener still answers calls and still takes Raft messages
            assert await echo(a.transport, 2, 1) == 1
            a.transport.send([msg(1, 2, b"still")])
            await until(lambda: b.bodies() == [b"still"], "delivery after garbage")
        finally:
            await close([a, b])

    run(main)


def test_garbage_from_the_callee_fails_the_calls_not_the_caller() -> None:
    async def main() -> None:
        async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # the hello has begun: answer with nonsense
            writer.write(b"\x00\x00\x00\x03abc")
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(liar, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a = await Node(1).start({2: f"127.0.0.1:{port}"})
        try:
            with pytest.raises(Unavailable, match="dropped the call connection to member 2"):
                await a.transport.call(2, "status", None, timeout=LONG)
        finally:
            await close([a])
            server.close()

    run(main)


def test_calls_go_through_the_fault_plan() -> None:
    async def main() -> None:
        a, b = await cluster(2)
        server = Server()
        b.transport.on_call = server

        async def echoes(target: int | str = 2) -> bool:
            try:
                await a.transport.call(target, "echo", None, timeout=SHORT)
            except Unavailable as exc:
                assert "no reply" in str(exc)
                return False
            return True

        try:
            assert await echoes()
            plan_a, plan_b = FaultPlan(), FaultPlan()
            a.transport.faults, b.transport.faults = plan_a, plan_b
            for plan, peer, direction, handled in [
                (plan_a, 2, Direction.SEND, False),  # the call never leaves
                (plan_b, 1, Direction.RECEIVE, False),  # the call never reaches the handler
                (plan_b, 1, Direction.SEND, True),  # the reply never leaves
                (plan_a, 2, Direction.RECEIVE, True),  # the reply is never delivered
            ]:
                plan.partition(peer, direction)
                before = len(server.calls)
                assert not await echoes()
                assert (len(server.calls) > before) is handled
                plan.heal()
                assert await echoes()
            plan_a.delay(2, 0.01)
            plan_b.delay(1, 0.01)
            assert await echoes()
            plan_a.heal()
            plan_b.heal()
            # a target dialed by address is partitioned by its address
            address = f"127.0.0.1:{b.port}"
            plan_a.partition(address)
            assert not await echoes(address)
            assert await echoes(2)
            plan_a.heal(address)
            assert await echoes(address)
        finally:
            await close([a, b])

    run(main)


def test_too_many_calls_in_flight_are_refused() -> None:
    async def main() -> None:
        a, b = await cluster(2, max_calls=2)
        server = Server()
        b.transport.on_call = server
        try:
            held = [
                asyncio.ensure_future(a.transport.call(2, "block", i, timeout=LONG))
                for i in range(2)
            ]
            await until(lambda: server.blocked == 2, "two calls in flight")
            with pytest.raises(RemoteError, match="busy"):
                await a.transport.call(2, "echo", None, timeout=LONG)
            server.release.set()
            await asyncio.gather(*held)
            assert await echo(a.transport, 2, 3) == 3
        finally:
            await close([a, b])

    run(main)
