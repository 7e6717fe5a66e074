"""A short seeded run of the peer-port fuzzer (tests/net/fuzz.py; run it longer by hand), and a
check that the fuzzer does notice a listener that lets an exception escape."""

from __future__ import annotations

import asyncio

import pytest

from embedkv.net import PeerTransport
from embedkv.net.frames import Frame, Hello

from .fuzz import CHANNELS, fuzz


def test_a_short_fuzz_run_finds_nothing() -> None:
    summary = asyncio.run(fuzz(1500, seed=20261204))
    assert summary.failures == []
    assert summary.cases == 1500 and set(summary.by_channel) == set(CHANNELS)
    assert summary.checks >= 3


def test_the_fuzzer_notices_an_exception_escaping_the_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refusal = PeerTransport._refusal

    def buggy(self: PeerTransport, hello: Frame) -> str | None:
        if isinstance(hello, Hello) and hello.member == 3:
            raise RuntimeError("a bug in the hello check")
        return refusal(self, hello)

    monkeypatch.setattr(PeerTransport, "_refusal", buggy)
    summary = asyncio.run(fuzz(400, seed=1, channels=("tcp",)))
    assert any("failed" in f for f in summary.failures), summary.failures
