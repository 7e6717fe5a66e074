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


def cli(data: Path, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--data-dir", str(data), *args], stdout=out, stdin=io.BytesIO(stdin))
    return code, out.getvalue()


def applied_index(data: Path) -> int:
    code, out = cli(data, "-w", "json", "status")
    assert code == 0
    return int(json.loads(out)["applied_index"])


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
    return [sys.executable, "-m", "embedkv"]


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
    put = subprocess.run([script, "--data-dir", str(tmp_path / "d"), "put", "k", "v"],
                         capture_output=True, text=True, timeout=60)
    assert put.returncode == 0 and put.stdout == "OK\n", put.stderr
    status = subprocess.run([script, "status", "--data-dir", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.startswith("path: "), status.stderr


def test_module_cli_is_the_same_command(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "embedkv.cli", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert run.stdout.strip() == f"embedkv {embedkv.__version__}" and run.stderr == ""


def test_global_options_before_or_after_the_command(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    out = io.StringIO()
    assert main(["put", "k", "v", "--data-dir", d], stdout=out) == 0
    assert main(["get", "k", "--data-dir", d, "-w", "json"], stdout=out) == 0
    assert main(["--json", "get", "k", "--data-dir", d], stdout=out) == 0
    assert main(["-w", "table", "--data-dir", d, "lease", "list"], stdout=out) == 0
    assert main(["lease", "list", "--data-dir", d, "--write-out", "simple"], stdout=out) == 0
    first, json1, json2, table, simple = out.getvalue().split("\n", 4)
    assert first == "OK"
    assert json.loads(json1)["kvs"][0]["value"] == "v" and json1 == json2
    assert table.startswith("+----") and simple.startswith("| ID ")  # the table's 2nd line
    assert out.getvalue().endswith("found 0 leases\n")
    # Given twice, the later one wins (as any option given twice).
    elsewhere = str(tmp_path / "other")
    assert main(["--data-dir", elsewhere, "get", "k", "--data-dir", d], stdout=out) == 0
    assert not os.path.exists(elsewhere)
    with pytest.raises(SystemExit) as bad:
        main(["get", "k", "-w", "yaml", "--data-dir", d])
    assert bad.value.code == 2


@pytest.mark.parametrize(
    "args",
    [
        ("get", "k"),
        ("get", "", "--prefix"),
        ("status",),
        ("lease", "list"),
        ("lease", "timetolive", "1f"),
        ("lease", "revoke", "1f"),
        ("check",),
        ("defrag",),
        ("snapshot", "save", "backup.snap"),
        ("del", "k"),
        ("compact", "1"),
        ("watch", "k"),
    ],
)
def test_a_command_that_does_not_add_data_never_creates_a_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    typo = tmp_path / "dta"
    assert cli(typo, *args) == (1, "")
    err = capsys.readouterr().err
    assert err == f"embedkv: error: data dir {typo} does not exist (see --data-dir)\n"
    assert not typo.exists()
    # An existing directory that is no data dir (say --data-dir .) gains no files either.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(empty, *args) == (1, "")
    err = capsys.readouterr().err
    assert err == f"embedkv: error: {empty} holds no embedkv data (no data.mdb)\n"
    assert list(empty.iterdir()) == []


def test_reads_do_not_append_to_the_raft_log(tmp_path: Path) -> None:
    d = tmp_path / "d"
    assert cli(d, "put", "k", "v")[0] == 0
    assert cli(d, "lease", "grant", "60")[0] == 0
    before = applied_index(d)
    for args in (("get", "k"), ("get", "", "--prefix", "--count-only"), ("status",),
                 ("lease", "list"), ("lease", "timetolive", "1f", "--keys")):
        assert cli(d, *args)[0] == 0
    assert applied_index(d) == before
    with embedkv.open(d) as store:  # what did not change for a read, did for an open store
        assert store.status().applied_index > before


def test_os_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert cli(afile / "d", "put", "k", "v") == (1, "")
    assert capsys.readouterr().err == f"embedkv: error: Not a directory: {afile / 'd'}\n"
    assert cli(afile, "get", "k") == (1, "")
    assert capsys.readouterr().err == (
        f"embedkv: error: data dir {afile} is not a directory (see --data-dir)\n")


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with embedkv.open(d) as store:
        for i in range(100):
            store[f"k{i:03d}"] = "v" * 100
    for args in (("get", "", "--prefix"), ("status",)):
        proc = subprocess.Popen([*_embedkv_cmd(), "--data-dir", str(d), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader went away before the first line, as `| head -0`
        assert proc.wait(60) == 128 + signal.SIGPIPE
        assert proc.stderr.read() == b""
        proc.stderr.close()
    # And in a shell pipeline, where the reader leaves after the first line:
    shell = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "-",
         *_embedkv_cmd(), "--data-dir", str(d), "get", "", "--prefix"],
        capture_output=True, text=True, timeout=60)
    assert shell.stdout == "k000\n" and shell.stderr == ""
    assert shell.returncode in (0, 128 + signal.SIGPIPE)  # 0 if it all fit in the pipe


def test_put_reads_the_value_from_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    d = tmp_path / "d"
    assert cli(d, "put", "text", stdin=b"line 1\nline 2\n") == (0, "OK\n")
    assert cli(d, "put", "blob", stdin=b"\xff\x00") == (0, "OK\n")
    assert cli(d, "put", "nothing") == (1, "")
    assert "put needs a VALUE argument or a value on stdin" in capsys.readouterr().err
    with embedkv.open(d) as store:
        assert store["text"] == "line 1\nline 2\n"  # all of stdin, as etcdctl
        assert store["blob"] == b"\xff\x00"  # not UTF-8: stored as bytes
        assert "nothing" not in store
    piped = subprocess.run([*_embedkv_cmd(), "--data-dir", str(d), "put", "piped"],
                           input="from a pipe", capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert cli(d, "get", "piped", "--print-value-only") == (0, "from a pipe\n")


def test_leases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    code, out = cli(d, "lease", "grant", "60")  # creates the data dir, as put does
    assert code == 0
    words = out.split()
    assert words[0] == "lease" and words[2:] == ["granted", "with", "TTL(60s)"]
    lease = words[1]
    assert len(lease) == 16
    assert cli(d, "put", "svc/a", "1", "--lease", lease) == (0, "OK\n")
    assert cli(d, "put", "svc/b", "2", "--lease", f"0x{lease}") == (0, "OK\n")
    assert cli(d, "put", "plain", "3") == (0, "OK\n")
    code, out = cli(d, "-w", "json", "get", "svc/a")
    assert json.loads(out)["kvs"][0]["lease"] == int(lease, 16)
    assert cli(d, "lease", "list") == (0, f"found 1 leases\n{lease}\n")
    assert cli(d, "lease", "timetolive", lease) == (
        0, f"lease {lease} granted with TTL(60s), remaining(60s)\n")
    assert cli(d, "lease", "timetolive", lease, "--keys") == (
        0, f"lease {lease} granted with TTL(60s), remaining(60s), attached keys([svc/a svc/b])\n")
    code, out = cli(d, "-w", "json", "lease", "timetolive", lease, "--keys")
    assert json.loads(out) == {"id": int(lease, 16), "ttl": 60, "granted_ttl": 60,
                               "keys": ["svc/a", "svc/b"]}
    assert cli(d, "lease", "revoke", lease) == (0, f"lease {lease} revoked\n")
    assert cli(d, "get", "", "--prefix", "--keys-only") == (0, "plain\n")
    assert cli(d, "lease", "timetolive", lease) == (0, f"lease {lease} already expired\n")
    assert cli(d, "lease", "list") == (0, "found 0 leases\n")
    capsys.readouterr()
    assert cli(d, "lease", "revoke", lease) == (1, "")
    assert cli(d, "put", "k", "v", "--lease", lease) == (1, "")
    assert capsys.readouterr().err.count("not found") == 2
    for bad in (("lease", "revoke", "xyz"), ("put", "k", "v", "--lease", "0"),
                ("lease", "grant", "ten"), ("lease",)):
        with pytest.raises(SystemExit) as usage:
            cli(d, *bad)
        assert usage.value.code == 2


def test_del_prev_kv(tmp_path: Path) -> None:
    d = tmp_path / "d"
    for k, v in (("a/1", "x"), ("a/2", "y"), ("b", "z")):
        cli(d, "put", k, v)
    assert cli(d, "del", "a/", "--prefix", "--prev-kv") == (0, "2\na/1\nx\na/2\ny\n")
    code, out = cli(d, "-w", "json", "del", "b", "--prev-kv")
    doc = json.loads(out)
    assert code == 0
    assert doc["deleted"] == 1 and [kv["value"] for kv in doc["prev_kvs"]] == ["z"]
    assert cli(d, "del", "b", "--prev-kv") == (0, "0\n")


def test_get_options_like_etcdctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    for k in ("a", "b", "c", "d"):
        cli(d, "put", k, k.upper())
    assert cli(d, "get", "b", "--print-value-only") == (0, "B\n")
    assert cli(d, "get", "b", "--from-key", "--print-value-only") == (0, "B\nC\nD\n")
    assert cli(d, "get", "", "--from-key", "--keys-only") == (0, "a\nb\nc\nd\n")
    assert cli(d, "get", "b", "d") == (0, "b\nB\nc\nC\n")  # the range [b, d)
    assert cli(d, "get", "", "--prefix", "--count-only") == (0, "4\n")
    assert cli(d, "get", "b", "--from-key", "--count-only", "--limit", "1") == (0, "3\n")
    assert cli(d, "get", "zzz", "--count-only") == (0, "0\n")
    code, out = cli(d, "-w", "json", "get", "a", "c", "--count-only")
    assert json.loads(out) == {"count": 2, "revision": 5}
    code, out = cli(d, "-w", "json", "get", "a", "--from-key", "--limit", "2")
    doc = json.loads(out)
    assert doc["count"] == 4 and doc["more"] and [kv["key"] for kv in doc["kvs"]] == ["a", "b"]
    assert cli(d, "get", "a", "--rev", "0") == (0, "a\nA\n")  # 0: the current revision
    code, out = cli(d, "-w", "table", "get", "a")
    assert code == 0
    assert out.splitlines()[1].split() == ["|", "KEY", "|", "VALUE", "|", "CREATE_REVISION",
                                           "|", "MOD_REVISION", "|", "VERSION", "|", "LEASE", "|"]
    assert out.splitlines()[3].split() == ["|", "a", "|", "A", "|", "2", "|", "2", "|", "1", "|",
                                           "|"]
    capsys.readouterr()
    assert cli(d, "get", "a", "--prefix", "--from-key") == (1, "")
    assert cli(d, "get", "a", "c", "--prefix") == (1, "")
    assert capsys.readouterr().err.count("give only one of END, --prefix and --from-key") == 2


def test_snapshot_save_status_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    d, snap, restored = tmp_path / "d", tmp_path / "b.snap", tmp_path / "r"
    assert cli(d, "put", "a", "1")[0] == 0
    assert cli(d, "put", "a", "2")[0] == 0
    assert cli(d, "snapshot", "save", str(snap)) == (0, f"Snapshot saved at {snap} (revision 3)\n")
    code, out = cli(d, "-w", "json", "snapshot", "status", str(snap))
    assert code == 0 and json.loads(out)["revision"] == 3
    assert cli(d, "snapshot", "restore", str(snap), str(restored)) == (
        0, f"Restored revision 3 to {restored}\n")
    assert cli(restored, "get", "a") == (0, "a\n2\n")
    assert cli(restored, "get", "a", "--rev", "2") == (0, "a\n1\n")  # history came along
    # A non-empty target is refused, one line, nothing touched.
    capsys.readouterr()
    assert cli(d, "snapshot", "restore", str(snap), str(restored))[0] == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
    # A damaged backup: exit 1 naming the backup, and no data dir left behind.
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    assert cli(d, "snapshot", "restore", str(snap), str(tmp_path / "r2"))[0] == 1
    assert "damaged" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() or not os.listdir(tmp_path / "r2")


def test_snapshot_save_refuses_a_missing_data_dir(tmp_path: Path) -> None:
    assert cli(tmp_path / "nope", "snapshot", "save", str(tmp_path / "b.snap"))[0] == 1
    assert not (tmp_path / "nope").exists() and not (tmp_path / "b.snap").exists()


def test_check_reports_damage_with_exit_status_1(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    assert cli(d, "put", "key", "a-value-to-find-on-disk")[0] == 0
    code, out = cli(d, "check")
    assert code == 0 and out.startswith(f"{d}: ok, format 4")
    raw = (d / "data.mdb").read_bytes()
    at = raw.index(b"a-value-to-find-on-disk")
    with open(d / "data.mdb", "r+b") as f:  # damage the value in place
        f.seek(at)
        f.write(b"A")
    code, out = cli(d, "-w", "json", "check")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["problems"]
    assert cli(tmp_path / "nope", "check")[0] == 1
    assert not (tmp_path / "nope").exists()


def test_defrag_shrinks_a_closed_data_dir(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with embedkv.open(d, durable=False) as store:
        for i in range(3000):
            store["k"] = "x" * 200 + str(i)
        store.compact(store.revision)
    code, out = cli(d, "-w", "json", "defrag")
    doc = json.loads(out)
    assert code == 0 and doc["size_after"] < doc["size_before"] // 4
    assert cli(d, "get", "k") == (0, "k\n" + "x" * 200 + "2999\n")
    with embedkv.open(d) as store:  # defrag refuses a data dir a program has open
        assert cli(d, "defrag")[0] == 1
