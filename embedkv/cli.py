"""The ``embedkv`` command: etcdctl-like access to a local data directory.

It opens the data dir itself, so it works on a store no running program holds (a data dir
belongs to one process at a time: DataDirLocked otherwise). Commands that only read open the
data dir without starting a Raft member: they never create a data dir and never append to the
Raft log (a member that starts elects itself, which appends an entry). Values given on the
command line are stored as ``str``. Output is etcdctl-like lines (``-w simple``), tables
(``-w table``) or one JSON object per line (``-w json``, also ``--json``). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType
from typing import Any, BinaryIO, Final, TextIO

from . import __version__
from .errors import Error
from .net import discovery, tls
from .storage import DataDir
from .storage.backup import backup_data_dir, read_backup_info
from .storage.lmdbenv import MARKER_FILE
from .storage.requests import Event, EventType, Get, KeyValue, RangeResult, key_bytes
from .storage.verify import check
from .store import Lease, Store, _range_request, data_dir_status, defrag, restore
from .store import open as open_store

DEFAULT_DATA_DIR: Final = "data"
DATA_FILE: Final = "data.mdb"
OUTPUT_FORMATS: Final = ("simple", "json", "table")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 128 + signal.SIGINT
EXIT_CLOSED_PIPE: Final = 128 + signal.SIGPIPE
"""What a shell reports for a program killed by SIGPIPE (``yes | head -1``), as etcdctl does."""


class CommandError(Exception):
    """A command cannot run as asked (for example a read of a data dir that does not exist):
    printed as one line on stderr, exit status 1."""


# --- output -----------------------------------------------------------------------------------


def _text(item: Any) -> str:
    """A key or value as one line of text: str as is, bytes decoded, anything else as JSON."""
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        return item.decode("utf-8", "backslashreplace")
    try:
        return json.dumps(item, sort_keys=True)
    except (TypeError, ValueError):
        return repr(item)


def _jsonable(item: Any) -> Any:
    """Bytes have no JSON form: they become {"base64": ...}; other odd values their repr."""
    if isinstance(item, bytes):
        return {"base64": base64.b64encode(item).decode("ascii")}
    if item is None or isinstance(item, str | int | float | bool):
        return item
    if isinstance(item, list | tuple):
        return [_jsonable(x) for x in item]
    if isinstance(item, dict):
        return {_text(k): _jsonable(v) for k, v in item.items()}
    return repr(item)


def _kv_json(kv: KeyValue) -> dict[str, Any]:
    return {
        "key": _jsonable(kv.key),
        "value": _jsonable(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease or 0,
    }


def _lease_hex(lease_id: int) -> str:
    """Lease ids as etcdctl prints them (and as `lease revoke` and `put --lease` take them)."""
    return f"{lease_id:016x}"


class _Output:
    """Where a command's results go, in the format -w chose."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.format = fmt
        self.out = out

    @property
    def as_json(self) -> bool:
        return self.format == "json"

    @property
    def as_table(self) -> bool:
        return self.format == "table"

    def lines(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def json(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, sort_keys=True) + "\n")
        self.out.flush()

    def result(self, obj: dict[str, Any], *lines: str) -> None:
        """A write's outcome: `obj` for -w json, else `lines` (-w table has no table for it)."""
        if self.as_json:
            self.json(obj)
        else:
            self.lines(*lines)

    def record(self, fields: dict[str, Any], json_extra: dict[str, Any] | None = None) -> None:
        """One record (a status): a JSON object (`json_extra`'s fields first), a one-row
        table, or ``name: value`` lines."""
        if self.as_json:
            self.json({**(json_extra or {}), **fields})
        elif self.as_table:
            self.table([name.upper() for name in fields], [list(fields.values())])
        else:
            self.lines(*(f"{name}: {value}" for name, value in fields.items()))

    def table(self, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        """A bordered table, as etcdctl's -w table draws one."""
        cells = [list(header), *([str(c) for c in row] for row in rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def line(row: list[str]) -> str:
            return "|" + "|".join(f" {c:<{w}} " for c, w in zip(row, widths, strict=True)) + "|"

        self.lines(rule, line(cells[0]), rule, *(line(r) for r in cells[1:]), rule)


# --- what a command opens -----------------------------------------------------------------------


class _Session:
    """The data dir a command works on, opened the way the command needs it, closed at the end.

    ``reader()``: an existing data dir, without a Raft member (nothing is written or appended).
    ``store()``: a running Store; only commands that add data pass ``create=True``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._exit = contextlib.ExitStack()

    def require_existing(self) -> None:
        if not os.path.isdir(self.path):
            why = "is not a directory" if os.path.exists(self.path) else "does not exist"
            raise CommandError(f"data dir {self.path} {why} (see --data-dir)")
        if not os.path.isfile(os.path.join(self.path, DATA_FILE)):
            raise CommandError(f"{self.path} holds no embedkv data (no {DATA_FILE})")

    def reader(self) -> DataDir:
        self.require_existing()
        dd = self._exit.enter_context(DataDir.open(self.path))
        if dd.identity is None:
            raise CommandError(f"{self.path} was never opened as a store: nothing to read")
        return dd

    def store(self, *, create: bool = False) -> Store:
        if not create:
            self.require_existing()
        return self._exit.enter_context(open_store(self.path))

    def close(self) -> None:
        self._exit.close()


Run = Callable[[_Session, argparse.Namespace, _Output], int]


# --- commands -------------------------------------------------------------------------------


def _cmd_put(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    value: str | bytes = args.value if args.value is not None else _value_from_stdin(args.stdin)
    key_bytes(args.key)  # a bad key is refused before the data dir is created
    store = session.store(create=True)
    result = store.put(args.key, value, lease=args.lease)
    out.result({"revision": result.revision}, "OK")
    return EXIT_OK


def _value_from_stdin(stdin: BinaryIO) -> str | bytes:
    """etcdctl's rule: no VALUE argument, so the value is all of stdin (which must not be
    empty). Text that is UTF-8 is stored as str, like a VALUE argument; anything else as bytes."""
    raw = stdin.read()
    if not raw:
        raise CommandError("put needs a VALUE argument or a value on stdin")
    try:
        return str(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return bytes(raw)


def _get_request(args: argparse.Namespace) -> Get:
    """etcdctl's `get KEY [END]`, `--prefix`, `--from-key` as one Get."""
    revision = args.rev or None  # etcdctl: 0 means the current revision
    if sum((args.end is not None, args.prefix, args.from_key)) > 1:
        raise CommandError("give only one of END, --prefix and --from-key")
    if args.prefix or (args.from_key and args.key == ""):
        get = _range_request(args.key, None, None, args.limit, revision, None, args.keys_only)
    else:
        get = _range_request(None, args.key, args.end, args.limit, revision, None,
                             args.keys_only)
        if not args.from_key and args.end is None:  # one key: the range without its end
            get = dataclasses.replace(get, end=None)
    return dataclasses.replace(get, count_only=args.count_only)


def _cmd_get(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    get = _get_request(args)
    result: RangeResult = session.reader().kv.range(get)
    if out.as_json:
        doc: dict[str, Any] = {"revision": result.revision, "count": result.count}
        if not args.count_only:
            doc["kvs"] = [_kv_json(kv) for kv in result.kvs]
            doc["more"] = result.more
        out.json(doc)
    elif args.count_only:
        out.lines(str(result.count))
    elif out.as_table:
        out.table(("KEY", "VALUE", "CREATE_REVISION", "MOD_REVISION", "VERSION", "LEASE"),
                  ((_text(kv.key), "" if args.keys_only else _text(kv.value), kv.create_revision,
                    kv.mod_revision, kv.version, _lease_hex(kv.lease) if kv.lease else "")
                   for kv in result.kvs))
    else:
        for kv in result.kvs:
            if args.print_value_only:
                if not args.keys_only:
                    out.lines(_text(kv.value))
            else:
                out.lines(_text(kv.key), *(() if args.keys_only else (_text(kv.value),)))
    return EXIT_OK


def _cmd_del(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    store = session.store()
    deleted = store.delete(args.key, prefix=args.prefix, prev_kv=args.prev_kv)
    if out.as_json:
        doc: dict[str, Any] = {"deleted": int(deleted), "revision": deleted.revision}
        if args.prev_kv:
            doc["prev_kvs"] = [_kv_json(kv) for kv in deleted.prev_kvs]
        out.json(doc)
    else:
        out.lines(str(int(deleted)))
        for kv in deleted.prev_kvs:  # etcdctl: the count, then each deleted key and value
            out.lines(_text(kv.key), _text(kv.value))
    return EXIT_OK


def _event(out: _Output, ev: Event) -> None:
    if out.as_json:
        obj: dict[str, Any] = {"type": ev.type.value, "revision": ev.revision, **_kv_json(ev.kv)}
        if ev.prev_kv is not None:
            obj["prev_kv"] = _kv_json(ev.prev_kv)
        out.json(obj)
        return
    # etcdctl's layout: the type, the previous record if asked, the key, its new value.
    lines = [ev.type.value]
    if ev.prev_kv is not None:
        lines += [_text(ev.prev_kv.key), _text(ev.prev_kv.value)]
    lines.append(_text(ev.key))
    if ev.type is EventType.PUT:
        lines.append(_text(ev.value))
    out.lines(*lines)


def _cmd_watch(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    store = session.store()
    with store.watch_iter(args.key, prefix=args.prefix, start_revision=args.rev,
                          prev_kv=args.prev_kv) as events, _ending_on_sigint(events.cancel):
        for ev in events:
            _event(out, ev)
    return EXIT_OK


@contextlib.contextmanager
def _ending_on_sigint(end: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C is how a watch ends: the first SIGINT calls `end` from a thread of its own (so no
    KeyboardInterrupt lands in the middle of the store's locks, and no lock the interrupted
    code holds is taken again); the loop then ends as after cancel(). A second SIGINT
    interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread: Ctrl-C interrupts as usual
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, previous)
        threading.Thread(target=end, name="embedkv-cli-sigint", daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cmd_compact(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    session.store().compact(args.rev)
    out.result({"compacted": args.rev}, f"compacted revision {args.rev}")
    return EXIT_OK


def _cmd_status(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    st = data_dir_status(session.reader())
    fields = {
        "path": st.path,
        "member_id": f"{st.member_id:x}",
        "cluster_id": f"{st.cluster_id:x}",
        "revision": st.revision,
        "compact_revision": st.compact_revision,
        "applied_index": st.applied_index,
    }
    out.record(fields)
    return EXIT_OK


def _cmd_lease_grant(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    lease = session.store(create=True).lease(args.ttl, keepalive=False)
    out.result({"id": lease.id, "ttl": lease.ttl},
               f"lease {_lease_hex(lease.id)} granted with TTL({lease.ttl}s)")
    return EXIT_OK


def _cmd_lease_revoke(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    # A Lease object only to revoke: its TTL plays no part in that.
    Lease(session.store(), args.id, 0, keepalive=False).revoke()
    out.result({"revoked": args.id}, f"lease {_lease_hex(args.id)} revoked")
    return EXIT_OK


def _cmd_lease_timetolive(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    # No member runs while the command reads, so no countdown runs either: the next open
    # restarts it from the full TTL, which is therefore what remains.
    found = session.reader().kv.lease(args.id)
    name = _lease_hex(args.id)
    if out.as_json:
        doc: dict[str, Any] = {"id": args.id, "ttl": -1, "granted_ttl": 0}
        if found is not None:
            doc.update(ttl=found[0], granted_ttl=found[0])
            if args.keys:
                doc["keys"] = [_jsonable(k) for k in found[1]]
        out.json(doc)
    elif found is None:
        out.lines(f"lease {name} already expired")  # etcdctl's words for an unknown lease
    else:
        ttl, keys = found
        line = f"lease {name} granted with TTL({ttl}s), remaining({ttl}s)"
        if args.keys:
            line += f", attached keys([{' '.join(_text(k) for k in keys)}])"
        out.lines(line)
    return EXIT_OK


def _cmd_lease_list(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    leases = session.reader().kv.leases()
    if out.as_json:
        out.json({"leases": [{"id": lid, "ttl": ttl} for lid, ttl in leases]})
    elif out.as_table:
        out.table(("ID", "TTL"), ((_lease_hex(lid), ttl) for lid, ttl in leases))
    else:
        out.lines(f"found {len(leases)} leases", *(_lease_hex(lid) for lid, _ in leases))
    return EXIT_OK


def _cmd_check(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    if not os.path.exists(os.path.join(session.path, MARKER_FILE)):
        session.require_existing()  # a dir that never held data: say so, and add no lock file
    report = check(session.path)
    if out.as_json:
        out.json({"path": report.path, "ok": report.ok, "format": report.format,
                  "records": sum(report.records.values()), "pages": report.pages,
                  "problems": list(report.problems)})
    else:
        out.lines(*str(report).splitlines())
    return EXIT_OK if report.ok else EXIT_ERROR


def _cmd_snapshot_save(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    session.require_existing()
    info = backup_data_dir(session.path, args.file)
    out.result({"file": args.file, "revision": info.revision,
                "compact_revision": info.compact_revision},
               f"Snapshot saved at {args.file} (revision {info.revision})")
    return EXIT_OK


def _cmd_snapshot_restore(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    revision = restore(args.file, args.dir)
    out.result({"dir": args.dir, "revision": revision},
               f"Restored revision {revision} to {args.dir}")
    return EXIT_OK


def _cmd_snapshot_status(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    info = read_backup_info(args.file)
    fields = {"revision": info.revision, "compact_revision": info.compact_revision,
              "applied_index": info.applied_index}
    out.record(fields, {"file": args.file})
    return EXIT_OK


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.2f} MiB"


def _cmd_defrag(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    session.require_existing()
    result = defrag(session.path)
    out.result({"path": result.path, "size_before": result.size_before,
                "size_after": result.size_after},
               f"Defragmented {result.path}: {_mib(result.size_before)} -> "
               f"{_mib(result.size_after)}")
    return EXIT_OK


def _cmd_certs_init(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    ca = tls.init_ca(args.dir)
    key = os.path.join(args.dir, tls.CA_KEY)
    out.result({"ca": ca, "key": key}, f"Created cluster CA {ca} (key {key}, mode 0600)")
    return EXIT_OK


def _cmd_certs_issue(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    cert, key = tls.issue(args.dir, args.name, ips=args.ip, dns=args.dns, renew=args.renew)
    out.result({"name": args.name, "cert": cert, "key": key},
               f"{'Renewed' if args.renew else 'Issued'} {cert} for member {args.name} "
               f"(key {key}, mode 0600)")
    return EXIT_OK


def _cmd_certs_show(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    if out.as_json:
        for cert in tls.load_certificates(args.file):
            out.json(tls.describe(cert))
    else:
        out.lines(tls.show(args.file))
    return EXIT_OK


def _cmd_discover(session: _Session, args: argparse.Namespace, out: _Output) -> int:
    interfaces = args.interface or discovery.lan_interfaces()
    if not interfaces:
        raise CommandError("no LAN interface to browse on (give --interface ADDR)")
    if not 0 < args.timeout <= 3600:
        raise CommandError(f"--timeout must be in (0, 3600] seconds, not {args.timeout:g}")
    mdns = discovery.Mdns(interfaces, service_type=args.service_type)
    try:
        threading.Event().wait(args.timeout)  # mDNS answers trickle in: browse this long
        seen = sorted(mdns.seen(args.cluster), key=lambda a: (a.cluster, a.member, a.address))
    finally:
        mdns.close()
    rows = [[a.cluster, a.member, a.address, a.state,
             "" if a.cluster_id is None else f"{a.cluster_id:x}"] for a in seen]
    if out.as_json:
        for a in seen:
            out.json({"cluster": a.cluster, "member": a.member, "address": a.address,
                      "state": a.state, "cluster_id": a.cluster_id})
    elif out.as_table:
        out.table(["CLUSTER", "MEMBER", "ADDRESS", "STATE", "CLUSTER ID"], rows)
    else:
        out.lines(*(", ".join(c for c in row if c) for row in rows))
    return EXIT_OK


# --- the parser -------------------------------------------------------------------------------


def _lease_id(text: str) -> int:
    """A lease id in hex, as etcdctl prints and takes them (an optional 0x is fine)."""
    try:
        lease_id = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hexadecimal lease id: {text!r}") from None
    if not 0 < lease_id < 1 << 63:
        raise argparse.ArgumentTypeError(f"lease id out of range: {text!r}")
    return lease_id


def _global_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name. Their defaults are SUPPRESS so
    that a subcommand's parser does not reset what was given before the subcommand; main()
    fills in the real defaults."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", default=argparse.SUPPRESS,
        help=f"the store's directory (default: $EMBEDKV_DATA_DIR or ./{DEFAULT_DATA_DIR})",
    )
    common.add_argument(
        "-w", "--write-out", choices=OUTPUT_FORMATS, default=argparse.SUPPRESS,
        help="output format: simple (default), json (one object per line) or table",
    )
    common.add_argument("--json", dest="write_out", action="store_const", const="json",
                        default=argparse.SUPPRESS, help="the same as -w json")
    return common


class _Commands:
    """Adds commands and groups of commands (``lease grant``) that all take the global
    options: `add` for a command, `group` for a name whose verbs are commands."""

    def __init__(self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser,
                 dest: str = "command") -> None:
        self._common = common
        self._sub = parser.add_subparsers(dest=dest, required=True, metavar="COMMAND")

    def add(self, name: str, run: Run, help: str) -> argparse.ArgumentParser:
        parser = self._sub.add_parser(name, parents=[self._common], help=help, description=help)
        parser.set_defaults(run=run)
        return parser

    def group(self, name: str, help: str) -> _Commands:
        parser = self._sub.add_parser(name, parents=[self._common], help=help, description=help)
        return _Commands(parser, self._common, dest=f"{name}_command")


def _parser() -> argparse.ArgumentParser:
    common = _global_options()
    p = argparse.ArgumentParser(
        prog="embedkv",
        description="etcdctl-like access to a local embedkv data directory.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"embedkv {__version__}")
    commands = _Commands(p, common)

    put = commands.add("put", _cmd_put, "store VALUE (or all of stdin) under KEY")
    put.add_argument("key")
    put.add_argument("value", nargs="?", default=None,
                     help="the value, stored as a string; absent: read from stdin")
    put.add_argument("--lease", type=_lease_id, default=None,
                     help="attach the key to this lease (hex id, from `lease grant`)")

    get = commands.add("get", _cmd_get, "print KEY and its value, or the keys in a range")
    get.add_argument("key")
    get.add_argument("end", nargs="?", default=None, help="read the range [KEY, END)")
    get.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    get.add_argument("--from-key", action="store_true", help="every key >= KEY")
    get.add_argument("--rev", type=int, default=0, help="read at this revision (0: current)")
    get.add_argument("--limit", type=int, default=None, help="at most this many keys")
    get.add_argument("--keys-only", action="store_true", help="print keys without values")
    get.add_argument("--print-value-only", action="store_true", help="print only values")
    get.add_argument("--count-only", action="store_true", help="print only how many keys")

    delete = commands.add("del", _cmd_del, "delete KEY (or every key under a prefix)")
    delete.add_argument("key")
    delete.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    delete.add_argument("--prev-kv", action="store_true", help="also print what was deleted")

    watch = commands.add("watch", _cmd_watch, "print changes to KEY until Ctrl-C")
    watch.add_argument("key")
    watch.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    watch.add_argument("--rev", type=int, default=None, help="replay history from this revision")
    watch.add_argument("--prev-kv", action="store_true", help="also print the previous value")

    compact = commands.add("compact", _cmd_compact, "discard history below REV")
    compact.add_argument("rev", type=int)

    commands.add("status", _cmd_status, "revision, applied index and identity of the member")

    lease = commands.group("lease", "grant, revoke and inspect leases")
    grant = lease.add("grant", _cmd_lease_grant, "grant a lease of TTL seconds")
    grant.add_argument("ttl", type=int)
    revoke = lease.add("revoke", _cmd_lease_revoke, "revoke a lease, deleting its keys")
    revoke.add_argument("id", type=_lease_id)
    ttl = lease.add("timetolive", _cmd_lease_timetolive, "a lease's TTL (and its keys)")
    ttl.add_argument("id", type=_lease_id)
    ttl.add_argument("--keys", action="store_true", help="also print the attached keys")
    lease.add("list", _cmd_lease_list, "every lease")

    commands.add("check", _cmd_check,
                 "scan the whole data dir for damage (exit 1 if any is found)")
    snapshot = commands.group("snapshot", "save, restore and inspect backup files")
    save = snapshot.add("save", _cmd_snapshot_save,
                        "back up a data dir no program has open to FILE")
    save.add_argument("file")
    restore_cmd = snapshot.add("restore", _cmd_snapshot_restore,
                               "make a new data dir DIR from the backup FILE")
    restore_cmd.add_argument("file")
    restore_cmd.add_argument("dir")
    status = snapshot.add("status", _cmd_snapshot_status, "the revisions a backup FILE holds")
    status.add_argument("file")
    commands.add("defrag", _cmd_defrag,
                 "rewrite a closed data dir's file without its free pages")
    discover = commands.add("discover", _cmd_discover,
                            "list the members announced with mDNS (no data dir needed)")
    discover.add_argument("--cluster", default=None, help="only members of this cluster name")
    discover.add_argument("--interface", action="append", default=[], metavar="ADDR",
                          help="browse on the interface with this IPv4 address (repeatable; "
                               "default: the host's LAN interfaces)")
    discover.add_argument("--timeout", type=float, default=3.0,
                          help="seconds to listen for announcements (default 3)")
    discover.add_argument("--service-type", default=discovery.SERVICE_TYPE,
                          help=f"the DNS-SD service type (default {discovery.SERVICE_TYPE})")
    certs = commands.group("certs", "make and inspect TLS certificates for peer links")
    certs_init = certs.add("init", _cmd_certs_init, "make a cluster CA (ca.pem, ca.key) in DIR")
    certs_init.add_argument("dir")
    certs_issue = certs.add("issue", _cmd_certs_issue,
                            "issue member NAME a certificate signed by the CA in DIR")
    certs_issue.add_argument("dir")
    certs_issue.add_argument("name")
    certs_issue.add_argument("--ip", action="append", default=[],
                             help="an IP address the member is reached at (repeatable)")
    certs_issue.add_argument("--dns", action="append", default=[],
                             help="a DNS name the member is reached at (repeatable)")
    certs_issue.add_argument("--renew", action="store_true",
                             help="replace NAME's certificate and key (a new serial)")
    certs_show = certs.add("show", _cmd_certs_show,
                           "print a certificate FILE's names, validity and fingerprint")
    certs_show.add_argument("file")
    return p


# --- main -------------------------------------------------------------------------------------


def _quiet_stdout(out: TextIO) -> None:
    """After EPIPE on stdout, point its descriptor at /dev/null so that the interpreter's final
    flush does not print "Exception ignored ... BrokenPipeError"."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (tests pass a StringIO)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _complain(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr may be a closed pipe too
        sys.stderr.write(f"embedkv: error: {message}\n")
        sys.stderr.flush()


def _os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    return f"{what}: {exc.filename}" if exc.filename else what


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stdin: BinaryIO | None = None,
) -> int:
    """Run the command; returns the exit status: 0 ok, 1 an error (one line on stderr), 2 bad
    usage, 130 Ctrl-C, 141 stdout closed early (``embedkv get "" --prefix | head -1``)."""
    args = _parser().parse_args(argv)
    data_dir = getattr(args, "data_dir", None) or os.environ.get("EMBEDKV_DATA_DIR",
                                                                  DEFAULT_DATA_DIR)
    stream = stdout if stdout is not None else sys.stdout
    out = _Output(getattr(args, "write_out", "simple"), stream)
    args.stdin = stdin if stdin is not None else sys.stdin.buffer
    run: Run = args.run
    session = _Session(data_dir)
    try:
        try:
            return run(session, args, out)
        finally:
            session.close()
    except BrokenPipeError:
        _quiet_stdout(stream)
        return EXIT_CLOSED_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (Error, CommandError, TypeError, ValueError) as exc:
        _complain(str(exc))
        return EXIT_ERROR
    except OSError as exc:
        _complain(_os_error(exc))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
