"""Codec and loopback link throughput of embedkv.net, to see what the transport costs a put.

Prints encode and decode rates of a typical APP message (one 100-byte entry) and the messages
per second one PeerTransport delivers to another on 127.0.0.1 when fed batches of `--batch`.
Run by hand: `python bench/bench_transport.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from embedkv.net import FrameDecoder, PeerTransport, encode
from embedkv.raft.types import Entry, Message, MessageType


def sample(i: int) -> Message:
    return Message(
        MessageType.APP,
        to=2,
        from_=1,
        term=5,
        log_term=5,
        index=i,
        commit=i,
        entries=(Entry(5, i + 1, data=b"v" * 100),),
    )


def codec(n: int) -> None:
    msgs = [sample(i) for i in range(n)]
    t0 = time.perf_counter()
    wire = b"".join(encode(m) for m in msgs)
    t1 = time.perf_counter()
    out = FrameDecoder().feed(wire)
    t2 = time.perf_counter()
    assert len(out) == n
    print(f"encode {n / (t1 - t0):,.0f} msg/s   decode {n / (t2 - t1):,.0f} msg/s")


async def link(n: int, batch: int) -> None:
    done = asyncio.Event()
    got = 0

    def on_message(_: Message) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    def ignore(*_: object) -> None:
        pass

    b = PeerTransport(
        member_id=2,
        cluster="b",
        listen="127.0.0.1:0",
        peers={},
        on_message=on_message,
        report_unreachable=ignore,
        on_peer_lost=ignore,
        report_snapshot=ignore,
    )
    await b.start()
    unreachable = 0

    def count(_: int) -> None:
        nonlocal unreachable
        unreachable += 1

    a = PeerTransport(
        member_id=1,
        cluster="b",
        listen="127.0.0.1:0",
        peers={2: f"127.0.0.1:{b.address[1]}"},
        on_message=ignore,
        report_unreachable=count,
        on_peer_lost=ignore,
        report_snapshot=ignore,
    )
    await a.start()
    msgs = [sample(i) for i in range(batch)]
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        a.send(msgs[: min(batch, n - sent)])
        sent += min(batch, n - sent)
        await asyncio.sleep(0)  # let the link write, as the engine loop would between Readies
    await asyncio.wait_for(done.wait(), 60)
    dt = time.perf_counter() - t0
    print(f"loopback link: {n / dt:,.0f} msg/s (batches of {batch}, {unreachable} dropped)")
    await a.close()
    await b.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    codec(args.n)
    asyncio.run(link(args.n, args.batch))


if __name__ == "__main__":
    main()
