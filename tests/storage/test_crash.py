"""Crash safety: a subprocess writing to a data dir is killed with SIGKILL at random moments,
many times. After each kill the data dir must open, hold every batch the writer saw committed,
and its key space must be exactly what replaying its Raft log from the start gives (so no
entry was lost, applied twice, or half applied)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from embedkv.storage import DataDir, lmdbenv
from embedkv.storage.codec import decode_proposal
from embedkv.storage.requests import Get

from .model import Model

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 30


def _check(path: Path, acknowledged: int) -> int:
    dd = DataDir.open(path)
    try:
        applied = dd.applied_index
        assert applied >= acknowledged, f"lost acknowledged writes: {applied} < {acknowledged}"
        assert dd.log.last_index() == applied  # appended and applied in the same transaction
        model = Model()
        for entry in dd.log.entries(1, applied + 1):
            _, _, request = decode_proposal(entry.data)
            model.apply(request)
        assert dd.kv.revision == model.revision
        assert dd.kv.compact_revision == model.compact
        everything = dd.kv.range(Get(b"\x00", end=b"\x00"))
        assert list(everything.kvs) == [model.live[k] for k in sorted(model.live)]
        assert sorted(dd.kv.leases()) == sorted(model.leases.items())
        start = max(1, model.compact)
        assert list(dd.kv.events(start, b"\x00", end=b"\x00")) == model.replay(start)
        for rev in range(max(1, model.compact, model.revision - 20), model.revision + 1):
            past = dd.kv.range(Get(b"\x00", end=b"\x00", revision=rev))
            assert past.kvs == model.range(Get(b"\x00", end=b"\x00", revision=rev)).kvs
        return applied
    finally:
        dd.close()


def test_sigkill_at_random_moments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small maps here and in the child, so that map growth happens while it may be killed.
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE", 1 << 20)
    rng = random.Random(1234)
    path = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    acknowledged = 0
    for iteration in range(ITERATIONS):
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("crash_child.py")), str(path),
             str(iteration)],
            stdout=subprocess.PIPE, env=env, text=True,
        )
        assert child.stdout is not None
        start = child.stdout.readline().split()
        assert start[0] == "start", start
        assert int(start[1]) >= acknowledged
        for _ in range(rng.randrange(0, 12)):
            line = child.stdout.readline()
            assert line.startswith("committed"), line
            acknowledged = int(line.split()[1])
        os.kill(child.pid, signal.SIGKILL)
        # Whatever the child printed before dying was committed too.
        for line in child.stdout:
            acknowledged = max(acknowledged, int(line.split()[1]))
        child.wait()
        assert child.returncode == -signal.SIGKILL
        acknowledged = _check(path, acknowledged)
    assert acknowledged > 0

