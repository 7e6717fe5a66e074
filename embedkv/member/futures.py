"""The futures the runtime hands out, and how it completes and expires them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import FINISHED, RUNNING
from typing import Any, Protocol, TypeVar

from embedkv.errors import Unavailable

_T = TypeVar("_T")


class MemberFuture(Future[_T]):
    """A `concurrent.futures.Future` created in the RUNNING state.

    A proposal or read cannot be taken back once queued, so its future starts running:
    the same state `set_running_or_notify_cancel()` would leave it in, without the extra
    round through the future's condition (this is on every put's path). Everything else is
    the standard Future: `cancel()` returns False, `result(timeout)`, done-callbacks,
    `concurrent.futures.wait` and `asyncio.wrap_future` behave as usual.

    `result()` and `exception()` wait on a plain lock (the gate) instead of the future's
    Condition: a signal handler that raises in the main thread inside `Condition.wait` can
    leave the Condition's lock held for good, and the writer, completing the future, would
    then block forever. A gate left closed that way only delays that one future's waiters.
    """

    _done_callbacks: list[Callable[[Future[_T]], object]]  # Future's own, set by its __init__

    def __init__(self) -> None:
        super().__init__()
        self._state = RUNNING
        self._gate = threading.Lock()
        self._gate.acquire()

    def _open_gate(self) -> None:
        with contextlib.suppress(RuntimeError):  # open already
            self._gate.release()

    def _wait_gate(self, timeout: float | None) -> None:
        if self._state == FINISHED:
            return
        if not self._gate.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError
        self._gate.release()  # leave it open for the other waiters

    def result(self, timeout: float | None = None) -> _T:
        self._wait_gate(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_gate(timeout)
        return super().exception(0)

    def set_result(self, result: _T) -> None:
        super().set_result(result)
        self._open_gate()

    def set_exception(self, exception: BaseException | None) -> None:
        super().set_exception(exception)
        self._open_gate()

    def _finish_quietly(self, outcome: Any) -> bool:
        """Complete with `outcome` (an exception fails the future) and wake the threads that
        wait for it, unless a done-callback is registered. No callback runs here: the log
        writer calls this with a write transaction open. False: nothing was done; complete
        the future the usual way (set_result / set_exception) once the transaction is over.
        """
        with self._condition:
            if self._done_callbacks or self._state != RUNNING:
                return False
            if isinstance(outcome, BaseException):
                self._exception = outcome
                self._state = FINISHED
                for waiter in self._waiters:
                    waiter.add_exception(self)
            else:
                self._result = outcome
                self._state = FINISHED
                for waiter in self._waiters:
                    waiter.add_result(self)
            self._condition.notify_all()
        self._open_gate()
        return True


def complete(future: Future[Any], outcome: Any) -> None:
    """Resolve a future with a state-machine outcome (an Error instance fails it)."""
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Waiting(Protocol):
    """Anything waiting with a future and a deadline (a proposal, a reader)."""

    @property
    def future(self) -> Future[Any]: ...

    @property
    def deadline(self) -> float: ...


_W = TypeVar("_W", bound=Waiting)


def fail(future: Future[Any], exc: BaseException) -> None:
    """Fail `future` unless it is done already."""
    if not future.done():
        future.set_exception(exc)


def expire(waiters: list[_W], now: float, why: str) -> list[_W]:
    """Fail those past their deadline with Unavailable(why); the others, not done, stay."""
    left = []
    for w in waiters:
        if w.deadline <= now:
            fail(w.future, Unavailable(why))
        elif not w.future.done():
            left.append(w)
    return left
