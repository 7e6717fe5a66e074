"""Fixtures for the member runtime tests: a short tick, a hand-driven lease clock, waiting on
conditions with deadlines (never sleeping as synchronisation)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import embedkv
from embedkv.member import Member
from embedkv.storage.requests import Event

TICK = 0.005
"""Short ticks: lease expiry and deadlines are checked every tick."""


class FakeClock:
    """A monotonic clock the test moves by hand (lease deadlines use it)."""

    def __init__(self) -> None:
        self._now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Collector:
    """A watch callback recording events and the threads it ran on."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.threads: set[threading.Thread] = set()
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self.threads.add(threading.current_thread())
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> list[Event]:
        """The first `n` events once they have arrived (AssertionError after `timeout`)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.events) >= n, timeout):
                raise AssertionError(f"got {len(self.events)} events, expected {n}")
            return list(self.events)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[embedkv.Store]:
    """A one-member store through the public open(), ticking fast."""
    s = embedkv.open(tmp_path / "d", durable=False, tick_interval=TICK, request_timeout=2.0)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "member"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def member(path: Path, clock: FakeClock) -> Iterator[Member]:
    m = Member.open(path, durable=False, tick_interval=TICK, request_timeout=5.0, clock=clock)
    try:
        yield m
    finally:
        m.close()
