"""Helpers for hostile-peer tests and the fuzzer: member sets over plain TCP or TLS on
127.0.0.1, strangers dialing from other loopback addresses, and a check that the real members
still talk."""

from __future__ import annotations

import asyncio
import itertools
import ssl
from pathlib import Path
from typing import Any

from embedkv.net import tls

from .test_transport import CLUSTER, Node, msg, until

__all__ = ["CLUSTER", "Node", "msg", "until"]

STRANGERS = [f"127.0.0.{i}" for i in range(2, 10)]
"""Source addresses of hostile connections (the members dial from 127.0.0.1)."""

TIMEOUT = 20.0  # deadline of every wait below: generous for a loaded machine, never a hang


def make_certs(directory: Path, names: list[str]) -> Path:
    """A cluster CA and a certificate per name in `directory`."""
    tls.init_ca(directory)
    for name in names:
        tls.issue(directory, name, ips=["127.0.0.1"])
    return directory


def tls_kw(certs: Path | None, member: int) -> dict[str, Any]:
    """PeerTransport arguments for member `member` (certificate n<member>), or none for TCP."""
    if certs is None:
        return {}
    return {
        "server_ssl": tls.server_context(certs, f"n{member}"),
        "client_ssl": tls.client_context(certs, f"n{member}"),
    }


async def echo(sender: int, method: str, body: object) -> object:
    return body


_fresh_ids = itertools.count(100)


async def start_set(n: int, certs: Path | None = None, **kw: Any) -> list[Node]:
    """`n` transports that know each other, each answering calls with their body."""
    nodes = [await Node(i + 1).start({}, **tls_kw(certs, i + 1), **kw) for i in range(n)]
    for a in nodes:
        a.transport.on_call = echo
        for b in nodes:
            if a is not b:
                a.transport.set_peer(b.id, f"127.0.0.1:{b.port}")
    return nodes


async def serving(nodes: list[Node], certs: Path | None, tag: str) -> None:
    """The members still talk: a message each way between the first two, a call on the pooled
    connection, and a call on a connection dialed afresh (so it has to be admitted now)."""
    a, b = nodes[0], nodes[1]
    there, back = f"{tag}>".encode(), f"{tag}<".encode()
    a.transport.send([msg(a.id, b.id, there)])
    b.transport.send([msg(b.id, a.id, back)])
    await until(lambda: there in b.bodies() and back in a.bodies(), f"messages ({tag})", TIMEOUT)
    assert await a.transport.call(b.id, "echo", tag, timeout=TIMEOUT) == tag
    member = 1  # a fresh transport with a member's certificate
    fresh = await Node(next(_fresh_ids)).start({}, **tls_kw(certs, member))
    try:
        got = await fresh.transport.call(f"127.0.0.1:{b.port}", "echo", tag, timeout=TIMEOUT)
        assert got == tag
    finally:
        await fresh.transport.close()


async def connect(
    port: int, source: str, ctx: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from `source` (a loopback address) to 127.0.0.1:`port`, TLS when `ctx`."""
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=ctx,
            server_hostname="127.0.0.1" if ctx else None,
        ),
        TIMEOUT,
    )


async def closed(reader: asyncio.StreamReader) -> None:
    """Returns once the other side has closed or reset the connection."""
    try:
        while await reader.read(1 << 16):
            pass
    except (OSError, EOFError):
        pass
