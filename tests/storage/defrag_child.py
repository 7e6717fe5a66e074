"""Runs `defrag` on a data dir and kills itself with SIGKILL after the named step (or prints
"go" first and lets the parent kill it whenever it likes, with step "none")."""

from __future__ import annotations

import os
import signal
import sys

from embedkv.storage import backup


def main() -> None:
    path, target = sys.argv[1], sys.argv[2]

    def checkpoint(step: str) -> None:
        if step == target:
            os.kill(os.getpid(), signal.SIGKILL)

    backup._checkpoint = checkpoint
    print("go", flush=True)
    result = backup.defrag(path)
    print(f"done {result.size_before} {result.size_after}", flush=True)


if __name__ == "__main__":
    main()
