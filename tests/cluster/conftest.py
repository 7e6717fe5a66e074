"""Fixtures for the multi-process cluster tests: clusters whose children always die with the
test, and whose stderr is quoted in the report of a failed test."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Cluster, Member

MakeCluster = Callable[..., Cluster]


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeCluster]:
    """``make_cluster(3)`` starts three founders and waits for a leader;
    ``make_cluster(0)`` gives an empty Cluster to add members to by hand. Every child is
    SIGKILLed at teardown."""
    clusters: list[Cluster] = []
    request.node.cluster_list = clusters

    def make(size: int = 3, *, start: bool = True, **kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(clusters)}", size, **kwargs)
        clusters.append(cluster)
        if start and size:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.kill_all()


@pytest.fixture
def lone_member(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Member]:
    """A one-member store (``embedkv.open(path)``) in a child process."""
    cluster = Cluster(tmp_path / "lone", 0)
    request.node.cluster_list = [cluster]
    member = cluster.member("solo", {})
    try:
        member.start()
        yield member
    finally:
        cluster.kill_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed cluster test's report carries every member's stderr tail."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for cluster in getattr(item, "cluster_list", []):
            report.sections.append(("members at the failure", cluster.state_report()))
            for member in cluster:
                tail = member.stderr_tail()
                if tail:
                    report.sections.append((f"member {member.name} stderr", tail))
