"""What writers share: a byte budget for their staging disk and one pool of upload threads.

A mount may have any number of files open for writing. Instead of reserving for each
writer its worst case (``(workers + 2)`` segments of staging and a pool of ``workers``
upload threads of its own), the writers of a mount share one ``WriteBudget``:

* Staging bytes, charged by what each writer actually holds: a staged file charges the
  bytes written into it (holes cost nothing, they take no disk) and gives them back when
  it is removed, after its upload landed or when its writer ends. A 4 KiB file holds
  4 KiB.
* Of those bytes, the small pending files' that are held in memory rather than on the
  staging disk (engine/filewriter.py keeps a file's first ``HELD_IN_MEMORY`` bytes there):
  together at most ``memory_limit``; past it, new bytes go to the staging disk.
* One pool of upload threads, first come first served. Each writer still takes one of
  its own ``workers + 1`` slots per sealed segment (engine/writer.py), so no writer
  queues more than that ahead of the others, and a lone writer uploads exactly as fast
  as with a pool of its own.

Backpressure: ``admit`` (called before a write, with no lock of the caller held) waits
while the budget is spent and uploads are draining it. Bytes held only in unsealed tails
(nothing uploading anywhere) would never drain by waiting, so then the writer goes on
past the budget instead of waiting forever; it stays bounded by one tail per writer.
Only a staging disk that is really full fails a write (ENOSPC, from engine/staging.py).

``put`` and the other commands give each writer a private budget without a byte limit:
its pool of ``workers`` threads is the writer's own, as it always was.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

UNLIMITED = 1 << 62
# What small pending files may hold in memory together (the rest is staged on disk).
MEMORY_LIMIT = 32 << 20


class WriteBudget:
    def __init__(self, limit: int, threads: int, memory_limit: int = MEMORY_LIMIT):
        self.limit = limit
        self.threads = threads
        self.memory_limit = min(memory_limit, limit)
        self._cond = threading.Condition()
        self._held = 0       # staged bytes of every writer
        self._in_memory = 0  # of which held in memory
        self._uploading = 0  # uploads submitted and not finished
        self._pool: cf.ThreadPoolExecutor | None = None
        self.peak = 0        # the most staging ever held (for the log and the tests)
        self.waits = 0       # how many writes waited for uploads to drain

    @classmethod
    def private(cls, threads: int) -> "WriteBudget":
        """One writer's own: no byte limit, ``threads`` upload threads."""
        return cls(UNLIMITED, threads)

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    def admit(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more fit in the budget, while uploads drain it. Never call
        it holding a lock another operation of the same file needs (flush, fsync)."""
        with self._cond:
            if self._held + nbytes <= self.limit or not self._uploading:
                return
            self.waits += 1
            log.debug("write budget spent (%d of %d bytes staged): waiting for uploads", self._held, self.limit)
            while self._held + nbytes > self.limit and self._uploading:
                self._cond.wait(timeout=0.5)

    def charge(self, nbytes: int) -> None:
        """Staged bytes taken (positive) or given back (negative)."""
        with self._cond:
            self._held += nbytes
            if self._held > self.peak:
                self.peak = self._held
            if nbytes < 0:
                self._cond.notify_all()

    def memory_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more may be held in memory rather than staged on disk."""
        with self._cond:
            return self._in_memory + nbytes <= self.memory_limit

    def charge_memory(self, nbytes: int) -> None:
        """Bytes held in memory taken or given back: staged bytes like any others."""
        with self._cond:
            self._in_memory += nbytes
        self.charge(nbytes)

    @property
    def in_memory(self) -> int:
        with self._cond:
            return self._in_memory

    def submit(self, fn: Callable, *args, **kwargs) -> cf.Future:
        """Run an upload (or a copy of a writer's commit) on the shared pool."""
        with self._cond:
            if self._pool is None:
                # Created on first use: a mount's daemon forks after building its engine,
                # and threads do not survive a fork.
                self._pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="s3pipefs-up")
            self._uploading += 1
            pool = self._pool
        try:
            fut = pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        fut.add_done_callback(self._finished)
        return fut

    def _finished(self, _fut) -> None:
        with self._cond:
            self._uploading -= 1
            self._cond.notify_all()

    def shutdown(self) -> None:
        """Stop the pool; whatever is still queued is cancelled (its writers are gone)."""
        with self._cond:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
