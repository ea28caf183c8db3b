"""Removals that run in the background, so ``rm -rf`` of a tree is not one file at a time.

unlink(2) returns once the name is gone from this mount's view; the S3 requests (the
manifest first, then the segments in DeleteObjects batches, engine/deletion.py) run on
a bounded pool, up to ``THREADS`` files at once. Until a delete is done:

* the path is *pending*: lookups and listings of this mount do not show it;
* anything that would put a new object at that path (create, mkdir, symlink, the target
  of a rename) first waits for its delete, so a delete never removes what came after it;
* rmdir and rename of a directory wait for every pending delete under it.

A delete that fails is logged and the path shows again (the file is still there, or part
of it: a stream whose manifest went first is never shown complete). Unmount waits for all
of them (``drain``), so deletes are in S3 before the daemon exits.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from typing import Callable

from s3pipefs import errors

log = logging.getLogger(__name__)

# Files removed at once: each delete is a few small requests, so 16 keep a server busy
# without crowding the connections of the mount's reads and writes.
THREADS = 16


class PendingDeletes:
    def __init__(self, on_done: Callable[[str, bool], None]):
        """``on_done(path, removed)``: called after each delete, done or failed, to update
        the caches."""
        self._on_done = on_done
        self._lock = threading.Lock()
        self._pending: dict[str, cf.Future] = {}
        self._pool: cf.ThreadPoolExecutor | None = None

    def submit(self, path: str, delete: Callable[[], object], where: str) -> None:
        """Hide ``path`` and remove it in the background."""
        self.wait(path)  # an earlier delete of the same name (removed, created, removed)
        with self._lock:
            if self._pool is None:
                # Created on first use: the daemon forks after building the filesystem.
                self._pool = cf.ThreadPoolExecutor(THREADS, thread_name_prefix="s3pipefs-delete")
            # Registered under the lock _run takes at its end, so it is there to forget.
            self._pending[path] = self._pool.submit(self._run, path, delete, where)

    def _run(self, path: str, delete: Callable[[], object], where: str) -> None:
        removed = False
        try:
            delete()
            removed = True
        except errors.NotFound:
            removed = True  # removed elsewhere meanwhile
        except Exception as e:  # noqa: BLE001 - nobody waits for it: the log and the entry tell
            log.error("%s: removal failed, the file is still there: %s", where, e)
        finally:
            # Before the future completes: whoever waited on it finds the path visible
            # again (if it is still there) and the caches up to date.
            with self._lock:
                self._pending.pop(path, None)
            self._on_done(path, removed)

    def is_pending(self, path: str) -> bool:
        with self._lock:
            return path in self._pending

    def pending_names(self, dir_path: str) -> set[str]:
        """Names directly in ``dir_path`` whose delete is pending."""
        base = dir_path.rstrip("/") + "/"
        with self._lock:
            return {p[len(base):] for p in self._pending if p.startswith(base) and "/" not in p[len(base):]}

    def wait(self, path: str) -> None:
        """Until the pending delete of ``path`` (if any) is done."""
        with self._lock:
            fut = self._pending.get(path)
        if fut is not None:
            cf.wait([fut])

    def wait_under(self, dir_path: str) -> None:
        """Until every pending delete inside the directory ``dir_path`` is done."""
        base = dir_path.rstrip("/") + "/"
        with self._lock:
            futs = [f for p, f in self._pending.items() if p.startswith(base) or base == "/"]
        cf.wait(futs)

    def drain(self, timeout: float) -> bool:
        """Wait for every pending delete; True when none is left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                futs = list(self._pending.values())
            if not futs:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cf.wait(futs, timeout=left)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
