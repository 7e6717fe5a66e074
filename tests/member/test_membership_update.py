"""A change that only updates a member's directory entry (the leader recording a certificate
serial it saw) is void once that member has left: it must never add back a member removed
while it was in flight (a CI failure: the removed member came back as a voter)."""

from __future__ import annotations

import embedkv
from embedkv.member.cluster import encode_context
from embedkv.member.writer import Signal
from embedkv.raft import ConfChange, ConfChangeType
from embedkv.storage.datadir import PeerInfo
from tests.waiting import wait_for

PEER = 2
INFO = PeerInfo("n2", "127.0.0.1:1")
SERIAL = "ab" * 20


def change(store: embedkv.Store, kind: ConfChangeType, context: bytes) -> None:
    """Commit one membership change for PEER (a learner: the member commits alone) and wait
    until it is applied, whatever it did."""
    m = store._m
    with m._core.lock:
        before = m._core.node.status().commit
        m._core.node.propose_conf_change(ConfChange(kind, PEER, context))
    m._writer.submit(Signal.WAKE)
    wait_for(lambda: m._writer.applied_index > before, what=f"{kind.name} applied")


def test_an_update_of_a_removed_member_adds_nothing_back(store: embedkv.Store) -> None:
    dd = store._m.data_dir
    change(store, ConfChangeType.ADD_LEARNER, encode_context(INFO, None))
    assert PEER in dd.conf_state.learners
    change(store, ConfChangeType.REMOVE, encode_context(None, None))
    assert PEER not in dd.conf_state.learners
    # The serial update the leader proposed before the removal applies after it.
    change(store, ConfChangeType.ADD_LEARNER,
           encode_context(INFO.with_serials((SERIAL,)), None, update=True))
    assert PEER not in dd.conf_state.learners | dd.conf_state.voters
    assert PEER not in dd.members()


def test_an_update_of_a_present_member_records_its_serial(store: embedkv.Store) -> None:
    dd = store._m.data_dir
    change(store, ConfChangeType.ADD_LEARNER, encode_context(INFO, None))
    change(store, ConfChangeType.ADD_LEARNER,
           encode_context(INFO.with_serials((SERIAL,)), None, update=True))
    assert PEER in dd.conf_state.learners
    assert dd.members()[PEER].serials == (SERIAL,)
    # An update never changes a role: one naming the other role is void.
    change(store, ConfChangeType.ADD_VOTER,
           encode_context(INFO.with_serials(("cd" * 20,)), None, update=True))
    assert PEER in dd.conf_state.learners
    assert dd.members()[PEER].serials == (SERIAL,)
