"""A peer port under hostile and broken peers: floods of half-open connections, slow-loris
senders and stalled TLS handshakes from other loopback addresses, while real members keep
talking. Every wait has a deadline; nothing asserts on timing (the short hello timeouts below
are what a stranger is given, not how long anything must take)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from embedkv.net import Call, FrameDecoder, FrameTooLarge, Hello, Reply, encode, tls
from embedkv.net.admission import Admission, Pending, ThrottledLog
from embedkv.net.frames import HEADER, MAX_HELLO, Purpose
from embedkv.net.transport import MAX_STRANGER_FRAME

from .hostile import STRANGERS, TIMEOUT, closed, connect, make_certs, serving, start_set
from .test_transport import CLUSTER, Node, close, msg, run, until


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"), ["n1", "n2", "n3", "n4"])


@pytest.fixture(params=[False, True], ids=["tcp", "tls"])
def c(request: pytest.FixtureRequest, certs: Path) -> Path | None:
    """The certificates for a member set over TLS, or None for plain TCP."""
    return certs if request.param else None


@pytest.fixture(autouse=True)
def net_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="embedkv.net")


# --- admission, sans I/O ---------------------------------------------------------------------


def test_admission_caps_per_source_and_in_all_and_evicts_from_the_busiest() -> None:
    gate = Admission(per_source=2, total=3)
    evicted: list[str] = []

    def ticket(source: str) -> Pending | str:
        def evict(why: str) -> None:
            evicted.append(f"{source}: {why}")

        return gate.admit(source, evict)

    a1, a2 = ticket("a"), ticket("a")
    assert isinstance(a1, Pending) and isinstance(a2, Pending)
    assert "max_pending_per_source" in str(ticket("a"))
    b1 = ticket("b")
    assert isinstance(b1, Pending) and gate.pending == 3
    b2 = ticket("b")  # all taken: b (holding 1) takes the place of a's oldest (a holds 2)
    assert isinstance(b2, Pending) and a1.released and not a2.released
    assert evicted == ["a: evicted for a connection from b: a holds 2 of the 3 connections "
                       "waiting for their hello"]
    assert "max_pending_per_source" in str(ticket("b"))
    c1 = ticket("c")  # c holds none: b is the busiest now
    assert isinstance(c1, Pending) and b1.released and evicted[-1].startswith("b: ")
    assert [gate.pending_from(s) for s in "abc"] == [1, 1, 1] and gate.pending == 3
    # ...but a source never evicts one as busy as itself
    assert str(ticket("c")).endswith("(max_pending)") and len(evicted) == 2
    gate2 = Admission(per_source=5, total=2)
    x, y = gate2.admit("x", evicted.append), gate2.admit("y", evicted.append)
    assert isinstance(x, Pending) and isinstance(y, Pending)
    assert str(gate2.admit("y", evicted.append)).endswith("(max_pending)")
    assert len(evicted) == 2
    x.release()
    x.release()  # twice: harmless
    assert gate2.pending == 1 and gate2.pending_from("x") == 0
    with pytest.raises(ValueError, match="positive"):
        Admission(0, 1)


def test_a_throttled_log_says_how_much_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("embedkv.test.throttle")
    caplog.set_level(logging.INFO, logger=logger.name)
    t = ThrottledLog(logger, burst=3, interval=10.0, clock=lambda: now[0])
    for i in range(10):
        t.log(logging.WARNING, "refused %d", i)
    assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
    now[0] = 10.0
    t.log(logging.WARNING, "refused %d", 10)
    assert caplog.records[-1].getMessage() == "refused 10 (7 similar lines suppressed)"


def test_a_decoder_fed_one_frame_at_a_time_takes_a_new_cap_for_the_rest() -> None:
    big = encode(msg(7, 2, b"x" * (2 * MAX_HELLO)))
    decoder = FrameDecoder(MAX_HELLO)
    first = decoder.feed(encode(Hello(7, CLUSTER)) + big + big, 1)  # all in one read
    assert [type(f) for f in first] == [Hello] and decoder.buffered == 2 * len(big)
    decoder.limit(1 << 20)
    assert len(decoder.feed(b"")) == 2
    with pytest.raises(FrameTooLarge, match=f"cap of {MAX_HELLO}"):
        FrameDecoder(MAX_HELLO).feed(HEADER.pack(MAX_HELLO + 1), 1)
    decoder = FrameDecoder(1 << 20)
    decoder.feed(big[:10])  # a frame begun under a cap the next one refuses
    decoder.limit(MAX_HELLO)
    with pytest.raises(FrameTooLarge):
        decoder.feed(big[10:])


# --- floods ----------------------------------------------------------------------------------


def run_set(
    n: int, certs: Path | None, body: Callable[[list[Node]], Coroutine[Any, Any, None]],
    **kw: Any,
) -> None:
    async def main() -> None:
        nodes = await start_set(n, certs, **kw)
        try:
            await serving(nodes, certs, "before")
            await body(nodes)
        finally:
            await close(nodes)

    run(main)


def test_a_flood_beyond_the_limits_is_closed_at_once_and_members_keep_talking(
    c: Path | None, caplog: pytest.LogCaptureFixture
) -> None:

    async def body(nodes: list[Node]) -> None:
        b = nodes[1]
        gate = b.transport._admission
        conns = []  # connect and send nothing (with TLS: a handshake that never starts)
        for source in STRANGERS[:2]:
            for _ in range(12):
                conns.append(await connect(b.port, source))
        ends = [asyncio.create_task(closed(r)) for r, _ in conns]
        await until(lambda: sum(e.done() for e in ends) >= 16, "the flood beyond 4 per source "
                    "closed", TIMEOUT)
        await until(lambda: gate.pending == 8, "8 strangers pending", TIMEOUT)
        assert [gate.pending_from(s) for s in STRANGERS[:2]] == [4, 4]
        # every pending place is taken: the members' new connections evict strangers
        await serving(nodes, c, "during")
        await until(lambda: sum(e.done() for e in ends) >= 17, "a stranger evicted", TIMEOUT)
        assert any("refused a connection" in r.getMessage() and "max_pending_per_source"
                   in r.getMessage() for r in caplog.records)
        for _, w in conns:
            w.close()
        await until(lambda: gate.pending == 0, "the flood gone", TIMEOUT)
        await serving(nodes, c, "after")

    run_set(2, c, body, hello_timeout=60.0, max_pending=8, max_pending_per_source=4)


def test_refusals_are_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    async def body(nodes: list[Node]) -> None:
        conns = [await connect(nodes[1].port, STRANGERS[0]) for _ in range(101)]
        ends = [asyncio.create_task(closed(r)) for r, _ in conns]
        await until(lambda: sum(e.done() for e in ends) >= 100, "100 refused", TIMEOUT)
        refused = [r for r in caplog.records if "refused a connection" in r.getMessage()]
        assert 1 <= len(refused) <= 20  # ThrottledLog's burst
        for _, w in conns:
            w.close()

    run_set(2, None, body, hello_timeout=60.0, max_pending_per_source=1)


def client_hello(ctx: ssl.SSLContext) -> bytes:
    """The first bytes a TLS client sends, to trickle them."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def trickle(writer: asyncio.StreamWriter, data: bytes, end: asyncio.Task[None]) -> None:
    """Slow loris: one byte of `data` per tick until the listener hangs up."""
    for i in range(len(data)):
        if end.done():
            return
        try:
            writer.write(data[i : i + 1])
            await writer.drain()
        except OSError:
            return
        await asyncio.sleep(0.5)  # pacing, not synchronisation


def test_slow_and_stalled_strangers_are_dropped_within_the_hello_timeout(
    c: Path | None, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hello = encode(Hello(99, CLUSTER, Purpose.CALL))

    async def body(nodes: list[Node]) -> None:
        port = nodes[1].port
        member_ctx = tls.client_context(certs, "n3")
        kinds: list[tuple[ssl.SSLContext | None, bytes]] = [(None, b""), (None, hello)]
        if c is not None:  # stalled and trickled handshakes, and slow after a valid handshake
            kinds = [(None, b""), (None, client_hello(member_ctx)), (member_ctx, b""),
                     (member_ctx, hello)]
        ends: list[asyncio.Task[None]] = []
        slow: list[asyncio.Task[None]] = []
        writers = []
        for i, (ctx, data) in enumerate(kinds * 3):
            reader, writer = await connect(port, STRANGERS[i % len(STRANGERS)], ctx)
            writers.append(writer)
            end = asyncio.create_task(closed(reader))
            ends.append(end)
            slow.append(asyncio.create_task(trickle(writer, data, end)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        rounds = 0
        while not all(e.done() for e in ends):  # the members talk all along
            if loop.time() > deadline:
                raise AssertionError("timed out waiting for the stalled connections to close")
            await serving(nodes, c, f"round {rounds}")
            rounds += 1
        await asyncio.gather(*slow)
        for w in writers:
            w.close()
        assert any("no hello within" in r.getMessage() for r in caplog.records)
        assert nodes[1].transport._admission.pending == 0

    run_set(2, c, body, hello_timeout=3.0)  # a trickled hello would take 11 s


def test_frames_are_capped_by_what_the_hello_proved(caplog: pytest.LogCaptureFixture) -> None:
    async def dropped(port: int, data: bytes, reason: str) -> None:
        """A stranger sends `data`: the listener hangs up and logs `reason`."""
        reader, writer = await connect(port, STRANGERS[0])
        writer.write(data)
        await asyncio.wait_for(closed(reader), TIMEOUT)
        writer.close()
        assert any(reason in r.getMessage() for r in caplog.records)

    async def body(nodes: list[Node]) -> None:
        b = nodes[1]
        # the first frame: far under max_frame, far over any hello, and no body follows
        await dropped(b.port, HEADER.pack(1 << 20), f"exceeds the cap of {MAX_HELLO}")
        # after a hello without the token (a "joiner"), frames are small
        big = encode(Call(1, "join", b"x" * (MAX_STRANGER_FRAME + 1)))
        await dropped(b.port, encode(Hello(77, "", Purpose.CALL)) + big,
                      f"exceeds the cap of {MAX_STRANGER_FRAME}")
        # with the token, a big frame right behind the hello (in the same read) is fine
        reader, writer = await connect(b.port, STRANGERS[0])
        writer.write(encode(Hello(1, CLUSTER, Purpose.CALL)) + big)
        frames = FrameDecoder()
        while not (got := frames.feed(await asyncio.wait_for(reader.read(1 << 16), TIMEOUT))):
            pass
        assert isinstance(got[0], Reply) and got[0].body == b"x" * (MAX_STRANGER_FRAME + 1)
        writer.close()
        await serving(nodes, None, "after")

    run_set(2, None, body, hello_timeout=60.0)


def test_members_talk_over_tls_and_a_stranger_cert_is_dropped_with_its_reason(
    certs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_certs(tmp_path / "other", ["n1"])

    async def body(nodes: list[Node]) -> None:
        for node in nodes:
            assert node.transport.server_ssl is not None
        stranger = tls.client_context(other, "n1")
        stranger.verify_mode = ssl.CERT_NONE  # it does not care whom it talks to
        with pytest.raises((OSError, EOFError)):  # TLS 1.3: the client may learn it late
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", nodes[1].port, ssl=stranger, server_hostname="127.0.0.1")
            writer.write(encode(Hello(1, CLUSTER)))
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
            raise EOFError
        await until(lambda: any("TLS handshake failed" in r.getMessage()
                                and "certificate" in r.getMessage() for r in caplog.records),
                    "the refusal logged with its reason", TIMEOUT)
        await serving(nodes, certs, "after")

    run_set(3, certs, body)
