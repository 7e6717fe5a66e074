"""A short fault campaign in CI: four seeded runs on three members, one per family of faults
(processes, network, membership and leadership) and one of a full disk and duplicated
messages (the full disk where a tmpfs can be mounted: root, as on CI); no run
may find an anomaly. An inconclusive check passes, with a warning that says which. A run
with a planted bug (stale "linearizable" reads) shows the campaign able to fail."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from .nemesis import CONTROL, KINDS, NETWORK, PROCESS, schedule
from .runner import RunConfig, report, run

RUNS = [
    pytest.param(11, (*PROCESS, "partition"), id="processes"),
    pytest.param(12, NETWORK, id="network"),
    pytest.param(13, (*CONTROL, "kill"), id="membership"),
    pytest.param(14, ("disk", "duplicate"), id="disk-and-duplication"),
]


@pytest.mark.parametrize(("seed", "kinds"), RUNS)
def test_short_campaign_finds_no_anomaly(seed: int, kinds: tuple[str, ...],
                                         tmp_path: Path) -> None:
    result = run(RunConfig(seed=seed, duration=6.0, kinds=kinds, root=tmp_path / "cluster",
                           keep=tmp_path / "saved"))
    print(report(result))
    assert result.ops, "the clients ran no operation"
    assert any(f.started is not None and f.member for f in result.faults), "no fault ran"
    assert {f.kind for f in result.faults} == set(kinds) or seed != 14, "a new nemesis unused"
    assert not result.failed, report(result)
    if result.inconclusive:
        warnings.warn(f"fault campaign inconclusive: {report(result)}", stacklevel=1)


def test_planted_stale_reads_are_found(tmp_path: Path) -> None:
    result = run(RunConfig(seed=21, duration=5.0, kinds=("partition",), stale_reads=True,
                           root=tmp_path / "cluster", keep=tmp_path / "saved"))
    print(report(result))
    assert result.failed, f"stale reads went unnoticed: {report(result)}"
    assert any("linearizab" in a for a in result.anomalies), report(result)
    assert result.saved is not None and (result.saved / "history.jsonl").exists()
    assert "--seed 21" in report(result)


def test_schedule_is_drawn_from_the_seed() -> None:
    """A replay (same seed) injects the same faults; faults end before the traffic does; a
    mixed slot pairs a process fault with a network fault, never two of a kind."""
    first = schedule(5, 60.0)
    assert first == schedule(5, 60.0)
    assert first != schedule(6, 60.0)
    assert {f.kind for f in first} <= set(KINDS) and len(first) > 5
    assert all(f.at + f.duration <= 59.0 for f in first)
    by_time: dict[float, list[str]] = {}
    for f in first:
        by_time.setdefault(f.at, []).append(f.kind)
    for kinds in by_time.values():
        assert len(kinds) <= 2
        if len(kinds) == 2:
            assert {k in PROCESS for k in kinds} == {True, False}, kinds
            assert all(k in PROCESS + NETWORK for k in kinds), kinds
    assert any(len(kinds) == 2 for kinds in by_time.values()), "no mixed slot in a minute"
    assert schedule(5, 60.0, ()) == []
    with pytest.raises(ValueError, match="unknown nemesis"):
        schedule(5, 60.0, ("flood",))
