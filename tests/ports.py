"""Free TCP ports for members the tests start."""

from __future__ import annotations

import contextlib
import socket


def free_ports(n: int, ip: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports the kernel just handed out on `ip`.

    All are bound at once, then released: picked one at a time, the kernel may hand the same
    port out twice (a CI failure: "two peers share one address"). Free now, though another
    process may take one before a member binds it.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((ip, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def free_port(ip: str = "127.0.0.1") -> int:
    """One port as `free_ports` picks them: only for a port picked while the others it must
    differ from are already bound."""
    return free_ports(1, ip)[0]
