"""The ``embedkv`` command: etcdctl-like access to a local data directory.

It opens the data dir itself, so it works on a store no running program holds (a data dir
belongs to one process at a time: DataDirLocked otherwise). Values given on the command line
are stored as ``str``. Output is etcdctl-like lines, or one JSON object per line with --json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from . import __version__
from .errors import Error
from .storage.requests import Event, EventType, Key, KeyValue
from .store import Store
from .store import open as open_store

DEFAULT_DATA_DIR = "data"


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


class _Output:
    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out

    def lines(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def json(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, sort_keys=True) + "\n")
        self.out.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="embedkv",
        description="etcdctl-like access to a local embedkv data directory.",
    )
    p.add_argument("--version", action="version", version=f"embedkv {__version__}")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("EMBEDKV_DATA_DIR", DEFAULT_DATA_DIR),
        help="the store's directory (default: $EMBEDKV_DATA_DIR or ./data)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    put = sub.add_parser("put", help="store VALUE (a string) under KEY")
    put.add_argument("key")
    put.add_argument("value")

    get = sub.add_parser("get", help="print KEY and its value (or every key under a prefix)")
    get.add_argument("key")
    get.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    get.add_argument("--rev", type=int, default=None, help="read at this revision")
    get.add_argument("--limit", type=int, default=None, help="at most this many keys")
    get.add_argument("--keys-only", action="store_true", help="print keys without values")

    delete = sub.add_parser("del", help="delete KEY (or every key under a prefix)")
    delete.add_argument("key")
    delete.add_argument("--prefix", action="store_true", help="every key starting with KEY")

    watch = sub.add_parser("watch", help="print changes to KEY until Ctrl-C")
    watch.add_argument("key")
    watch.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    watch.add_argument("--rev", type=int, default=None, help="replay history from this revision")
    watch.add_argument("--prev-kv", action="store_true", help="also print the previous value")

    compact = sub.add_parser("compact", help="discard history below REV")
    compact.add_argument("rev", type=int)

    sub.add_parser("status", help="revision, applied index and identity of the member")
    return p


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


def _run(store: Store, args: argparse.Namespace, out: _Output) -> int:
    cmd = args.command
    if cmd == "put":
        result = store.put(args.key, args.value)
        if out.as_json:
            out.json({"revision": result.revision})
        else:
            out.lines("OK")
    elif cmd == "get":
        if args.prefix:
            kvs = store.range(args.key, limit=args.limit, revision=args.rev,
                              keys_only=args.keys_only)
        else:
            kv = store.get_kv(args.key, revision=args.rev)
            kvs = [] if kv is None else [kv]
        if out.as_json:
            out.json({"revision": store.revision, "count": len(kvs),
                      "kvs": [_kv_json(kv) for kv in kvs]})
        else:
            for kv in kvs:
                out.lines(_text(kv.key), *(() if args.keys_only else (_text(kv.value),)))
    elif cmd == "del":
        deleted = store.delete(args.key, prefix=args.prefix)
        if out.as_json:
            out.json({"deleted": int(deleted), "revision": deleted.revision})
        else:
            out.lines(str(int(deleted)))
    elif cmd == "watch":
        key: Key = args.key
        with store.watch_iter(key, prefix=args.prefix, start_revision=args.rev,
                              prev_kv=args.prev_kv) as events:
            try:
                for ev in events:
                    _event(out, ev)
            except KeyboardInterrupt:
                pass
    elif cmd == "compact":
        store.compact(args.rev)
        if out.as_json:
            out.json({"compacted": args.rev})
        else:
            out.lines(f"compacted revision {args.rev}")
    elif cmd == "status":
        st = store.status()
        fields = {
            "path": st.path,
            "member_id": f"{st.member_id:x}",
            "cluster_id": f"{st.cluster_id:x}",
            "revision": st.revision,
            "compact_revision": st.compact_revision,
            "applied_index": st.applied_index,
            "durable": st.durable,
        }
        if out.as_json:
            out.json(fields)
        else:
            out.lines(*(f"{name}: {value}" for name, value in fields.items()))
    return 0


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 an embedkv error, 2 bad usage)."""
    args = _parser().parse_args(argv)
    out = _Output(args.json, stdout if stdout is not None else sys.stdout)
    try:
        with open_store(args.data_dir) as store:
            return _run(store, args, out)
    except KeyboardInterrupt:
        return 0 if args.command == "watch" else 130
    except (Error, TypeError, ValueError) as exc:
        sys.stderr.write(f"embedkv: error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
