"""Service registry (register, re-register, endpoints, watch, pick) and the live config view."""

from __future__ import annotations

import threading

import pytest

import embedkv
from embedkv import Put
from embedkv.recipes import ConfigView, Endpoint
from tests.waiting import wait_for


def test_register_endpoints_pick_and_a_backend_dying(store: embedkv.Store) -> None:
    web = store.services("web")
    changes: list[tuple[str, Endpoint]] = []
    watch = web.watch(lambda kind, ep: changes.append((kind, ep)))
    regs = [web.register(f"10.0.0.{i}:80", {"zone": "a"}, ttl=1) for i in range(3)]
    assert [e.address for e in web.endpoints()] == [f"10.0.0.{i}:80" for i in range(3)]
    assert web.endpoints()[0].metadata == {"zone": "a"}
    picks = [web.pick().address for _ in range(6)]
    assert sorted(picks[:3]) == sorted(f"10.0.0.{i}:80" for i in range(3))
    assert picks[3:] == picks[:3]  # round-robin
    assert web.pick(random=True).address in picks
    regs[1].session.orphan()  # the backend's process dies
    wait_for(lambda: len(web.endpoints()) == 2, what="dead backend gone")
    assert "10.0.0.1:80" not in {web.pick().address for _ in range(4)}
    wait_for(lambda: len(changes) >= 4, what="3 joins and a leave")
    assert [k for k, _ in changes] == ["join", "join", "join", "leave"]
    assert changes[3][1].id == regs[1].id
    watch.cancel()
    for r in (regs[0], regs[2]):
        r.deregister()
    with pytest.raises(LookupError):
        web.pick()


def test_registration_comes_back_after_losing_its_lease(store: embedkv.Store) -> None:
    api = store.services("api")
    reg = api.register("h:1", ttl=1)
    first = reg.id
    reg.session.stall()  # keep-alives stop getting through; the instance is alive
    wait_for(lambda: reg.id != first and reg.live, what="re-registered")
    wait_for(lambda: [e.id for e in api.endpoints()] == [reg.id], what="only the new one")
    reg.deregister()
    assert api.endpoints() == []


def test_bad_registration(store: embedkv.Store) -> None:
    with pytest.raises(TypeError):
        store.services("s").register("")
    with pytest.raises(ValueError):
        store.services("s").register("h:1", ttl=0)
    with pytest.raises(ValueError):
        store.services("a/b")


def test_config_view_is_current_consistent_and_calls_back(store: embedkv.Store) -> None:
    store["cfg/db/url"] = "pg://a"
    store["cfg/db/pool"] = 5
    store["other"] = 1
    view = store.config("cfg/")
    assert dict(view) == {"db/url": "pg://a", "db/pool": 5}
    seen: list[tuple[int, dict[str, object]]] = []
    view.on_change(lambda v: seen.append(v.snapshot()))
    r = store.txn(success=[Put("cfg/db/url", "pg://b"), Put("cfg/db/pool", 9)])
    wait_for(lambda: view.revision >= r.revision, what="view caught up")
    # the two writes of one transaction appear together, never one without the other
    assert all(d["db/url"] == "pg://a" or d["db/pool"] == 9 for _, d in seen)
    assert seen[-1] == (r.revision, {"db/url": "pg://b", "db/pool": 9})
    del store["cfg/db/pool"]
    wait_for(lambda: "db/pool" not in view, what="delete seen")
    assert isinstance(view, ConfigView) and len(view) == 1 and view["db/url"] == "pg://b"
    with pytest.raises(TypeError):
        view["x"] = 1  # type: ignore[index]
    view.close()


def test_config_change_from_another_thread_reaches_callback(store: embedkv.Store) -> None:
    view = store.config("live/")
    changed = threading.Event()
    view.on_change(lambda v: changed.set())
    threading.Thread(target=lambda: store.put("live/x", 1)).start()
    wait_for(changed.is_set, what="callback")
    assert view["x"] == 1
    view.close()
