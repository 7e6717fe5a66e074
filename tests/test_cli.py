"""The `embedkv` command on a local data dir: main(argv) in-process, and real subprocesses."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import embedkv
from embedkv.cli import main


def cli(data: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--data-dir", str(data), *args], stdout=out)
    return code, out.getvalue()


def test_put_get_del_like_etcdctl(tmp_path: Path) -> None:
    d = tmp_path / "d"
    assert cli(d, "put", "greeting", "hello") == (0, "OK\n")
    assert cli(d, "put", "app/a", "1") == (0, "OK\n")
    assert cli(d, "put", "app/b", "2") == (0, "OK\n")
    assert cli(d, "get", "greeting") == (0, "greeting\nhello\n")
    assert cli(d, "get", "missing") == (0, "")
    assert cli(d, "get", "app/", "--prefix") == (0, "app/a\n1\napp/b\n2\n")
    assert cli(d, "get", "app/", "--prefix", "--keys-only") == (0, "app/a\napp/b\n")
    assert cli(d, "get", "app/", "--prefix", "--limit", "1") == (0, "app/a\n1\n")
    assert cli(d, "get", "greeting", "--rev", "2") == (0, "greeting\nhello\n")  # 1st write
    assert cli(d, "get", "greeting", "--rev", "1") == (0, "")  # a fresh store is at 1
    assert cli(d, "del", "app/", "--prefix") == (0, "2\n")
    assert cli(d, "del", "app/a") == (0, "0\n")
    # Values typed on the command line are strings; the library reads them as str.
    with embedkv.open(d) as store:
        assert store["greeting"] == "hello"
        store["number"] = 7
    assert cli(d, "get", "number") == (0, "number\n7\n")


def test_json_output(tmp_path: Path) -> None:
    d = tmp_path / "d"
    code, out = cli(d, "--json", "put", "k", "v")
    assert code == 0 and set(json.loads(out)) == {"revision"}
    with embedkv.open(d) as store:
        store[b"raw"] = b"\x00\x01"
    code, out = cli(d, "--json", "get", "", "--prefix")
    doc = json.loads(out)
    assert doc["count"] == 2
    k, raw = doc["kvs"]
    assert raw["key"] == {"base64": "cmF3"} and raw["value"] == {"base64": "AAE="}
    assert k["key"] == "k" and k["value"] == "v" and k["version"] == 1 and k["lease"] == 0
    code, out = cli(d, "--json", "del", "k")
    assert json.loads(out)["deleted"] == 1
    code, out = cli(d, "--json", "status")
    status = json.loads(out)
    assert code == 0 and status["revision"] >= 4 and status["applied_index"] > 0
    assert status["member_id"] and status["path"] == str(d)


def test_compact_and_status(tmp_path: Path) -> None:
    d = tmp_path / "d"
    for v in "abc":
        cli(d, "put", "k", v)
    code, out = cli(d, "status")
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    assert code == 0 and int(fields["revision"]) >= 4
    assert {"member_id", "cluster_id", "applied_index", "compact_revision"} <= set(fields)
    rev = int(fields["revision"])
    assert cli(d, "compact", str(rev)) == (0, f"compacted revision {rev}\n")
    code, out = cli(d, "get", "k", "--rev", "2")
    assert code == 1


def test_errors_exit_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    with embedkv.open(d):
        code, _ = cli(d, "get", "k")
        assert code == 1
        assert "embedkv: error:" in capsys.readouterr().err
    assert cli(d, "put", "k" * 600, "v")[0] == 1
    with pytest.raises(SystemExit) as usage:
        cli(d, "frobnicate")
    assert usage.value.code == 2


def _embedkv_cmd() -> list[str]:
    return [sys.executable, "-m", "embedkv.cli"]


def test_watch_replays_and_follows_until_ctrl_c(tmp_path: Path) -> None:
    d = tmp_path / "d"
    cli(d, "put", "cfg/a", "1")
    cli(d, "put", "cfg/a", "2")
    cli(d, "del", "cfg/a")
    proc = subprocess.Popen(
        [*_embedkv_cmd(), "--data-dir", str(d), "watch", "cfg/", "--prefix", "--rev", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(8)]
        assert lines == ["PUT\n", "cfg/a\n", "1\n", "PUT\n", "cfg/a\n", "2\n", "DELETE\n",
                         "cfg/a\n"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The watcher let go of the data dir.
    assert cli(d, "put", "after", "x") == (0, "OK\n")


def test_module_entry_point_uses_the_env_data_dir(tmp_path: Path) -> None:
    env = {**os.environ, "EMBEDKV_DATA_DIR": str(tmp_path / "env-dir")}
    put = subprocess.run([*_embedkv_cmd(), "put", "k", "v"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert put.returncode == 0 and put.stdout == "OK\n", put.stderr
    get = subprocess.run([*_embedkv_cmd(), "get", "k"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert get.stdout == "k\nv\n"


def test_installed_console_script(tmp_path: Path) -> None:
    script = shutil.which("embedkv", path=str(Path(sys.executable).parent)) or shutil.which(
        "embedkv")
    if script is None:
        pytest.skip("the package is not installed (pip install -e .)")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"embedkv {embedkv.__version__}"
    status = subprocess.run([script, "--data-dir", str(tmp_path / "d"), "status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.startswith("path: ")
