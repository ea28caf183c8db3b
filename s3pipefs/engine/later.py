"""Calls due later, all on one thread: a pending file's timed promotion (engine/filewriter.py).

A tree copy opens thousands of small files, and each arms a timer it almost always
cancels at its close a few milliseconds later. A ``threading.Timer`` is a thread of its
own: starting one cost more than the rest of the file's write. Here every timer is an
entry in one heap, served by one daemon thread started at the first use (a mount's
daemon forks after building its engine, and threads do not survive a fork).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class Pending:
    """A call armed by ``call_later``; ``cancel`` stops it if it has not started."""
    __slots__ = ("fn", "cancelled")

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Later:
    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], None]) -> Pending:
        pending = Pending(fn)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), pending))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="s3pipefs-later", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is pending:
                self._cond.notify()  # due before what the thread sleeps for
        return pending

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        _, _, pending = heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            try:
                pending.fn()
            except Exception:  # noqa: BLE001 - one failed call must not stop the others
                log.exception("a timed call failed")


_shared = Later()
call_later = _shared.call_later


def _after_fork() -> None:
    """A forked child has none of its parent's threads: start afresh."""
    global _shared, call_later
    _shared = Later()
    call_later = _shared.call_later


os.register_at_fork(after_in_child=_after_fork)
