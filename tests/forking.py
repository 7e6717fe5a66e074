"""Running a piece of a test in a child of os.fork() and reading back what it found."""

from __future__ import annotations

import os
from collections.abc import Callable


def in_forked_child(body: Callable[[], str]) -> str:
    """Run `body` in a forked child and return the report it made.

    The child leaves with os._exit, so neither pytest's teardown nor the parent's exit hooks
    run there; a body that raises makes the child exit 1, which fails the caller with the
    exception's repr as the message."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(read)
            report = body()
        except BaseException as exc:
            report, status = repr(exc), 1
        try:
            os.write(write, report.encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report
