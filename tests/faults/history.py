"""A client history: what each client invoked and how it ended, with monotonic timestamps.

A write that timed out, or whose member died before it answered, ended "unknown": it may or
may not have taken effect, and the checkers must allow both (Jepsen's :info). A "fail" is a
definite failure (the operation did not take effect: a refused CAS, a compare that did not
hold is an "ok" with result False, not a fail).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["put", "get", "sget", "delete", "cas", "lease_put"]
"""put k v; get k (linearizable); sget k (serializable: not checked for linearizability);
delete k; cas k expected new (result: True if it swapped); lease_put k v (put with a lease)."""

Outcome = Literal["ok", "fail", "unknown"]


@dataclass
class Op:
    process: int  # the client (one at a time per client)
    kind: Kind
    key: str
    value: Any = None  # put/lease_put/cas: the new value
    expected: Any = None  # cas: the value compared against (None: the key must be absent)
    invoke: float = 0.0  # time.monotonic() at the call (one clock per machine: the parent's
    complete: float | None = None  # or each member's: see the runner) ; None while pending
    outcome: Outcome = "unknown"
    result: Any = None  # get: the value read (None: absent); cas: bool; put/delete: revision
    member: str = ""  # which member served it
    extra: dict[str, Any] = field(default_factory=dict)


def save(ops: list[Op], path: Path) -> None:
    path.write_text("\n".join(json.dumps(asdict(op)) for op in ops) + "\n")


def load(path: Path) -> list[Op]:
    return [Op(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
