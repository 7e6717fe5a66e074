"""Unit tests of the building blocks: the log, Progress, Inflights, quorum, encodings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkv.raft import (
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)
from embedkv.raft.log import RaftLog
from embedkv.raft.progress import (
    Inflights,
    Progress,
    ProgressState,
    ProgressTracker,
    VoteResult,
)


def _log(terms: list[int], stable: int | None = None) -> RaftLog:
    """A RaftLog with entries of `terms`; the first `stable` are in Storage, the rest unstable."""
    storage = MemoryStorage()
    entries = [Entry(term=t, index=i + 1) for i, t in enumerate(terms)]
    cut = len(entries) if stable is None else stable
    storage.append(entries[:cut])
    log = RaftLog(storage)
    log.append(entries[cut:])
    return log


def test_term_lookup_spans_storage_and_unstable_and_reports_bounds() -> None:
    """§5.3: a log answers term(i) for every index it holds, plus the snapshot point."""
    log = _log([1, 1, 2, 3, 3], stable=2)
    assert [log.term(i) for i in range(0, 6)] == [0, 1, 1, 2, 3, 3]
    with pytest.raises(UnavailableError):
        log.term(6)
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(SnapshotMeta(10, 4, ConfState())))
    compacted = RaftLog(storage)
    assert compacted.term(10) == 4
    with pytest.raises(CompactedError):
        compacted.term(9)


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (10, 3, (10, 3)),  # matches at once
        (10, 2, (6, 2)),  # skip the term-3 tail
        (10, 1, (3, 1)),
        (10, 0, (0, 0)),
        (5, 2, (5, 2)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    """§5.3 optimization (etcd findConflictByTerm): the largest (i, t) with t <= term."""
    log = _log([1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    assert log.find_conflict_by_term(index, term) == expected


def test_maybe_append_truncates_a_conflicting_suffix_and_commits() -> None:
    """§5.3: delete a conflicting entry and all that follow it; then append and commit."""
    log = _log([1, 1, 2, 2])
    new = [Entry(term=3, index=3), Entry(term=3, index=4), Entry(term=3, index=5)]
    assert log.maybe_append(2, 1, 4, new) == 5
    assert [log.term(i) for i in range(1, 6)] == [1, 1, 3, 3, 3]
    assert log.committed == 4
    assert log.maybe_append(5, 2, 9, []) is None  # prev mismatch


def test_append_below_commit_is_a_bug() -> None:
    """§5.4 state machine safety: a committed entry is never overwritten."""
    log = _log([1, 1, 1])
    log.commit_to(2)
    with pytest.raises(AssertionError):
        log.append([Entry(term=2, index=2)])


def test_slice_respects_the_size_limit_across_storage_and_unstable() -> None:
    """Thesis §10.2.1: a message never exceeds max_size, yet carries at least one entry."""
    storage = MemoryStorage()
    storage.append([Entry(term=1, index=i, data=bytes(76)) for i in range(1, 4)])  # 100 each
    log = RaftLog(storage)
    log.append([Entry(term=1, index=i, data=bytes(76)) for i in range(4, 7)])
    assert [e.index for e in log.slice(1, 7, 250)] == [1, 2]
    assert [e.index for e in log.slice(2, 7, 400)] == [2, 3, 4, 5]
    assert [e.index for e in log.slice(5, 7, 10)] == [5]
    assert [e.index for e in log.slice(1, 7, None)] == [1, 2, 3, 4, 5, 6]


def test_stable_to_ignores_an_acknowledgement_of_replaced_entries() -> None:
    """§5.3 / Figure 2 durability: advance() for entries that were since overwritten must not
    mark the newer ones stable."""
    log = _log([1, 1], stable=0)
    handed_out = log.unstable.next_entries()
    log.unstable.accept_in_progress()
    log.append([Entry(term=2, index=2)])  # replaces index 2 before the app persisted it
    log.stable_to(handed_out[-1].index, handed_out[-1].term)
    assert log.unstable.offset == 1
    assert [e.term for e in log.unstable.next_entries()] == [2]


def test_inflights_are_bounded_by_count_and_bytes() -> None:
    """Thesis §10.2.2: the pipelining window."""
    window = Inflights(3, max_bytes=250)
    window.add(1, 100)
    window.add(2, 100)
    assert not window.full()
    window.add(3, 100)
    assert window.full() and window.count() == 3
    window.free_le(2)
    assert window.count() == 1 and window.bytes() == 100 and not window.full()
    with pytest.raises(AssertionError):
        full = Inflights(1)
        full.add(1, 1)
        full.add(2, 1)


def test_progress_backs_off_on_rejection_and_resumes_after_a_snapshot() -> None:
    """§5.3 / §7: probe decrements follow the hint; replicate falls back to match + 1."""
    pr = Progress(match=0, next=11, inflights=Inflights(4))
    assert not pr.maybe_decr_to(5, 3)  # not the append we just sent
    assert pr.maybe_decr_to(10, 3) and pr.next == 4
    pr.maybe_update(6)
    pr.become_replicate()
    assert pr.next == 7
    pr.sent_entries(3, 30)
    assert pr.next == 10 and pr.inflights.count() == 1
    assert pr.maybe_decr_to(9, 0) and pr.next == 7
    pr.become_snapshot(20)
    assert pr.is_paused() and pr.next == 21
    pr.become_probe()
    assert pr.state is ProgressState.PROBE and pr.next == 21


def test_majority_commit_index_and_vote_tally() -> None:
    """§5.3 commitment and §5.2 elections: majorities of voters; learners never count."""
    trk = ProgressTracker(max_inflight=8, max_inflight_bytes=0)
    trk.restore(ConfState(voters=frozenset({1, 2, 3, 4, 5}), learners=frozenset({6})), 10)
    for node_id, match in {1: 9, 2: 7, 3: 5, 4: 3, 5: 1, 6: 10}.items():
        trk.progress[node_id].match = match
    assert trk.committed() == 5
    assert trk.vote_result({1: True, 2: True, 6: True}) is VoteResult.PENDING
    assert trk.vote_result({1: True, 2: True, 3: True}) is VoteResult.WON
    assert trk.vote_result({1: False, 2: False, 3: False}) is VoteResult.LOST
    assert trk.has_quorum({1, 2, 3}) and not trk.has_quorum({1, 2, 6})


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(list(ConfChangeType)),
    node_id=st.integers(0, 2**64 - 1),
    context=st.binary(max_size=16),
    voters=st.frozensets(st.integers(1, 2**64 - 1), max_size=5),
    learners=st.frozensets(st.integers(1, 2**64 - 1), max_size=5),
)
def test_conf_change_encoding_round_trips(
    kind: ConfChangeType,
    node_id: int,
    context: bytes,
    voters: frozenset[int],
    learners: frozenset[int],
) -> None:
    """Thesis §4.1: membership changes travel as log entries; encoding must be lossless."""
    if kind is not ConfChangeType.BOOTSTRAP:
        voters = learners = frozenset()
    cc = ConfChange(kind, node_id, context, voters=voters, learners=learners)
    assert ConfChange.decode(cc.encode()) == cc


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 8), st.integers(1, 6), st.integers(0, 2)),
        st.tuples(st.just("persist"), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("commit"), st.integers(0, 30), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(ops=_ops)
def test_log_matches_a_list_model_under_appends_truncations_and_persists(
    ops: list[tuple[str, int, int, int]],
) -> None:
    """§5.3 Log Matching: the log always equals the model list of (index, term), whatever
    mix of appends, truncations and persistence; storage then holds exactly the prefix."""
    storage = MemoryStorage()
    log = RaftLog(storage)
    model: list[int] = []  # model[i] is the term of index i + 1
    term = 1
    for op, a, b, c in ops:
        if op == "append":
            start = log.committed + 1 + min(a, len(model) - log.committed)
            term += c
            entries = [Entry(term=term, index=start + k) for k in range(b)]
            log.append(entries)
            model = model[: start - 1] + [term] * b
        elif op == "persist":
            pending = log.unstable.next_entries()
            log.unstable.accept_in_progress()
            if pending:
                storage.append(pending)
                log.stable_to(pending[-1].index, pending[-1].term)
        else:
            log.commit_to(min(a, len(model)))
        assert log.last_index() == len(model)
        assert [log.term(i) for i in range(1, len(model) + 1)] == model
        stable = storage.last_index()
        assert stable >= log.unstable.offset - 1
        assert [storage.term(i) for i in range(1, log.unstable.offset)] == model[
            : log.unstable.offset - 1
        ]
