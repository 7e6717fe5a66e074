"""A job that runs on one device of many: the devices elect a leader, only the leader runs
the job, and another device takes over when the leader goes away.

On one machine (the default): three members n1, n2, n3 on 127.0.0.2, .3, .4 find each other
with mDNS (pinned to those addresses: nothing leaves the machine) and form one cluster over
mutual TLS (a CA and their certificates are made for the run). Each device's agent
campaigns with ``store.election("report-job", ttl=...)``; the leader runs the job every
period, each run a write guarded by ``election.held()`` (the store refuses it once the
leadership is lost). n1 leads first; it then goes dark (its keep-alives stop, as when its
power is cut, and its member closes): n2, next in line, takes over once n1's lease has run
out (about the TTL). n1 comes back (its member reopens its data dir) and campaigns again;
n2 then shuts down cleanly (it resigns, then its member closes): n3 takes over at once;
when n3 resigns, n1 leads again.

    python examples/lan_leader_job.py [DATA_DIR] [--short]

On three real devices of one LAN: on an admin machine, which keeps certs/ca.key,

    embedkv certs init certs/
    embedkv certs issue certs/ n1 --ip 192.168.1.11     # n2, n3 likewise, with their addresses

copy certs/ca.pem and the device's own pair (n1.pem, n1.key) to certs/ on each device, and
run on each, with its own name:

    python examples/lan_leader_job.py --device n1 [--certs certs/] [--cluster plant-7] [DATA_DIR]

One device runs the job (every 5 s) and the others wait; unplug the leader and another
takes over after the TTL (10 s); stop it with Ctrl-C and the next takes over at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from _lan import LOOPBACK, args, device, loopback, say

import embedkv
from embedkv.recipes import SessionLost

JOB = "report-job"
REPORT = "job/last-report"


class Agent:
    """A device's agent: campaigns, and while it leads runs the job every `period` seconds;
    `done(name, run)` is told of each run the store accepted."""

    def __init__(self, store: embedkv.Store, ttl: int, period: float,
                 done: list[tuple[str, int]]) -> None:
        self.store, self.name = store, store.name
        self.election = store.election(JOB, ttl=ttl)
        self._period, self._done = period, done
        self._stop = threading.Event()
        self._elected = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"agent-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.election.campaign(self.name)
        except (embedkv.Closed, SessionLost):  # the device went away while waiting in line
            return
        self._elected.set()
        say(f"{self.name} is elected and starts the job")
        run = 0
        while not self._stop.wait(self._period):
            run += 1
            try:
                r = self.store.txn(compare=[self.election.held()], success=[
                    embedkv.Put(REPORT, {"by": self.name, "run": run})])
            except embedkv.Closed:
                return
            if not r.succeeded:  # our lease ended under us: the store refuses the write
                say(f"{self.name}'s run {run} is refused: it no longer leads")
                return
            say(f"  {self.name} runs the job (run {run})")
            self._done.append((self.name, run))

    def power_cut(self) -> None:
        """As when the device loses power: no resign, the lease's keep-alives stop."""
        self._stop.set()
        self.election.session.orphan()
        self._thread.join(30)

    def shut_down(self) -> None:
        """A clean stop: the job ends and the device resigns (the next in line wins now).
        An agent still in line stays there until its member closes."""
        self._stop.set()
        if self._elected.is_set():
            self._thread.join(30)
            self.election.resign()


def on_device(store: embedkv.Store) -> None:
    """A real device: campaign, run the job while leading, resign on Ctrl-C."""
    agent = Agent(store, 10, 5.0, [])
    say(f"{store.name} campaigns")
    try:
        threading.Event().wait()
    finally:
        agent.shut_down()


def main() -> None:
    a = args(__doc__)
    if a.device:
        with device(a) as store:
            on_device(store)
        return
    period = 0.3 if a.short else 1.0
    runs = 3 if a.short else 5
    done: list[tuple[str, int]] = []
    in_line = f"_embedkv/election/{JOB}/"
    with loopback(a) as (lan, (n1, n2, n3)):
        agents: dict[str, Agent] = {}

        def until(what: str, ok: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 60
            while not ok():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                time.sleep(0.02)

        def runs_by(name: str, n: int) -> None:
            until(f"{n} runs by {name}", lambda: sum(who == name for who, _ in done) >= n)

        def hand_over(leader: str, leave: Callable[[Agent], None], successor: str,
                      how: str) -> None:
            """The leader's device leaves (`leave` its agent, close its member): the
            successor leads and runs the job."""
            start = time.monotonic()
            leave(agents.pop(leader))
            lan.close(leader)
            until(f"{successor} to lead", lambda: agents[successor].election.is_leader)
            say(f"{successor} took over {time.monotonic() - start:.1f} s after {leader} {how}")
            runs_by(successor, runs)

        try:
            agents["n1"] = Agent(n1, a.ttl, period, done)
            until("n1 to lead", lambda: agents["n1"].election.is_leader)
            agents["n2"] = Agent(n2, a.ttl, period, done)
            until("n2 in line", lambda: n1.count(in_line) == 2)
            agents["n3"] = Agent(n3, a.ttl, period, done)
            until("n3 in line", lambda: n1.count(in_line) == 3)
            say("n2 and n3 campaign too, and wait in line")
            runs_by("n1", runs)
            say(f"n1 goes dark: its keep-alives stop, as when its power is cut (TTL {a.ttl} s), "
                "and its member closes")
            hand_over("n1", Agent.power_cut, "n2", "went dark")
            say("n1 is powered on again: its member reopens its data dir and campaigns")
            n1 = lan.open("n1", LOOPBACK["n1"])
            agents["n1"] = Agent(n1, a.ttl, period, done)
            until("n1 in line", lambda: n1.count(in_line) == 3)
            say("n2 shuts down cleanly: it resigns, then its member closes")
            hand_over("n2", Agent.shut_down, "n3", "resigned")
            say("n3 resigns: n1, back in line, takes over")
            agents.pop("n3").shut_down()
            runs_by("n1", 2 * runs)
            turns = [who for i, (who, _) in enumerate(done) if i == 0 or done[i - 1][0] != who]
            say(f"the runs, in order, came from one device at a time: {' -> '.join(turns)}")
        finally:
            for agent in agents.values():
                agent.shut_down()


if __name__ == "__main__":
    main()
