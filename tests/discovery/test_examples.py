"""The LAN examples run in their short mode from a fresh interpreter: three members on
127.0.0.2-4 found by mDNS pinned to those addresses, over mutual TLS, under a cluster name
and service type of the run's own; each says what it promises, so none can rot."""

from __future__ import annotations

import functools
import io
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from embedkv import cli

from ..ports import free_port
from ..waiting import wait_for
from .test_loopback import loopback_ip

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FOUND = ("n1, n2, n3 on 127.0.0.2, 127.0.0.3, 127.0.0.4 found each other over mutual TLS and "
         "formed 1 cluster (short run)")

EXPECT = {
    "discovery_lan.py": ["n3 sees config/mode = eco",
                         "n4 started later and joined the same cluster: True; it reads "
                         "config/mode = eco"],
    "lan_config.py": ["n2's callback: {'interval_s': 5, 'mode': 'auto'} (revision 2)",
                      "n3's callback: {'interval_s': 5, 'mode': 'auto'} (revision 2)",
                      "n2's callback: {'interval_s': 5, 'mode': 'eco'} (revision 3)",
                      "n3's callback: {'interval_s': 5, 'mode': 'eco'} (revision 3)",
                      "every device holds the same configuration: True"],
    "lan_services.py": ["registry (on n1): leave 127.0.0.4:8080\n",
                        "every device deregistered: the registry is empty"],
    "lan_leader_job.py": ["n1 is elected and starts the job\n",
                          "n2 and n3 campaign too, and wait in line\n",
                          "the runs, in order, came from one device at a time: "
                          "n1 -> n2 -> n3 -> n1"],
}


def run(name: str, tmp_path: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), str(tmp_path / "data"),
                           "--short"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert FOUND in proc.stdout, proc.stdout
    for line in EXPECT[name]:
        assert line in proc.stdout, proc.stdout
    return proc.stdout


@pytest.mark.parametrize("name", ["discovery_lan.py", "lan_config.py"])
def test_example_runs_in_short_mode(name: str, tmp_path: Path) -> None:
    run(name, tmp_path)


def routes(text: str) -> list[str]:
    return re.findall(r"client \(on n1\) routes a request to (\S+)", text)


def test_the_services_example_routes_round_robin_around_a_dark_device(tmp_path: Path) -> None:
    out = run("lan_services.py", tmp_path)
    before, rest = out.split("n3 goes dark")
    dark, back = rest.split("n3 is powered on again")
    three = ["127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:8080"]
    assert routes(before) == three * 2  # in turn, in the order they registered
    assert routes(dark) == ["127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.2:8080"]
    assert sorted(routes(back)) == three


def test_the_leader_job_example_runs_the_job_on_the_leader_only(tmp_path: Path) -> None:
    out = run("lan_leader_job.py", tmp_path)
    assert "is refused" not in out
    # each leader is elected after the one before went away, and only it runs the job
    story = [line for line in out.splitlines()
             if "is elected" in line or "goes dark" in line or "shuts down" in line
             or "resigns:" in line]
    assert story == ["n1 is elected and starts the job",
                     "n1 goes dark: its keep-alives stop, as when its power is cut (TTL 2 s), "
                     "and its member closes",
                     "n2 is elected and starts the job",
                     "n2 shuts down cleanly: it resigns, then its member closes",
                     "n3 is elected and starts the job",
                     "n3 resigns: n1, back in line, takes over",
                     "n1 is elected and starts the job"]


def _ctrl_c_stops() -> None:
    """In the child: SIGINT at its default, so that Python raises KeyboardInterrupt on it.
    A suite started in the background by a shell inherits SIGINT ignored, and a Python that
    starts with SIGINT ignored leaves it so: Ctrl-C would then stop nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Device:
    """An example run with --device in a process of its own; its output lines in a queue."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=_ctrl_c_stops)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, text: str) -> str | None:
        """The first line it printed that holds `text`, if any yet."""
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return next((line for line in self.seen if text in line), None)


def test_the_config_example_runs_as_its_header_says_on_three_devices(tmp_path: Path) -> None:
    # The header's steps for real devices, on loopback: certificates made with `embedkv
    # certs`, one process per device with --device, mDNS pinned to each with --interface.
    certs = str(tmp_path / "certs")
    ips = [loopback_ip() for _ in range(3)]
    names = ["n1", "n2", "n3"]
    out = io.StringIO()
    assert cli.main(["certs", "init", certs], stdout=out) == 0
    for name, ip in zip(names, ips, strict=True):
        assert cli.main(["certs", "issue", certs, name, "--ip", ip], stdout=out) == 0
    cluster = f"plant-{secrets.token_hex(4)}"
    devices = {name: Device([sys.executable, str(EXAMPLES / "lan_config.py"), "--device", name,
                             "--certs", certs, "--cluster", cluster, "--listen",
                             f"{ip}:{free_port(ip)}", "--interface", ip, str(tmp_path / "data")])
               for name, ip in zip(names, ips, strict=True)}
    try:
        for name, device in devices.items():
            wait_for(functools.partial(device.line, f"{name} is in cluster {cluster} "), 60,
                     f"{name} in the cluster")
            # every device's entry (three writes) reaches every device's callback
            wait_for(functools.partial(device.line, f"{name} sees (revision 4): "), 30,
                     f"{name}'s callback to see the third entry")
            last = device.line(f"{name} sees (revision 4): ")
            assert last is not None and all(f"'{n}': 'online since" in last for n in names)
    finally:
        for device in devices.values():
            device.proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            for device in devices.values():
                device.proc.wait(60)
        finally:  # none left running, whatever failed
            for device in devices.values():
                if device.proc.poll() is None:
                    device.proc.kill()
                    device.proc.wait()
    for name, device in devices.items():
        assert device.proc.stderr is not None
        assert device.proc.returncode == 0
        assert device.proc.stderr.read() == ""
        wait_for(functools.partial(device.line, f"{name} stops"), 10, f"{name} to stop")


def test_every_lan_example_is_covered() -> None:
    lan = {p.name for p in EXAMPLES.glob("lan_*.py")} | {"discovery_lan.py"}
    assert lan == set(EXPECT)
