"""Plain objects deleted after their unlink returned, many at a time.

``rm -rf`` unlinks one name after another, each waiting for the one before: one DELETE
round trip per file, in series. An unlink of a plain object the mount knows (it has just
listed the directory) therefore only records the delete and returns; WORKERS threads send
the DELETEs concurrently. Until a delete has landed the name is gone for this mount all
the same, and nothing may reuse the key before it lands:

* a lookup or listing of the key answers "no such file" without asking S3;
* a create, symlink or rename onto the key, and an rmdir or rename of a directory above
  it, first waits for the delete (else it could land after the new object and remove it);
* unmount waits for every delete.

rmdir of a directory the mount listed and emptied (rm -rf) sends the DELETEs of its
marker ("d/") and folder object the same way (fs/namespace.py): a mkdir or a folder
object's PUT of that name waits for them.

A delete that fails (after the store's retries) is logged, and the name shows again at
the next lookup, as it is still in S3. Streams are removed before unlink returns
(manifest first): their removal takes several requests and a writer elsewhere may hold
them.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from typing import Callable

from s3pipefs import errors

log = logging.getLogger(__name__)

WORKERS = 16


class DeletesBehind:
    def __init__(self, delete: Callable[[str], None], failed: Callable[[str], None] = lambda key: None,
                 workers: int = WORKERS):
        """``delete(key)`` removes the object now; ``failed(key)`` is told of one that
        could not be removed (the caller forgets what it cached)."""
        self._delete = delete
        self._failed = failed
        self._workers = workers
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._pool: cf.ThreadPoolExecutor | None = None

    def start(self, key: str) -> None:
        """Delete the object ``key`` in the background."""
        with self._cond:
            self._cond.wait_for(lambda: key not in self._pending)  # the same key twice: one at a time
            self._pending.add(key)
            if self._pool is None:
                # Created on first use: the daemon forks after building the filesystem.
                self._pool = cf.ThreadPoolExecutor(self._workers, thread_name_prefix="s3pipefs-delete")
            pool = self._pool
        try:
            pool.submit(self._run, key)
        except BaseException:
            self._done(key)
            raise

    def pending(self, key: str) -> bool:
        with self._cond:
            return key in self._pending

    def wait(self, key: str) -> None:
        """Until the delete of ``key`` (if any) has landed or failed."""
        with self._cond:
            self._cond.wait_for(lambda: key not in self._pending)

    def wait_under(self, prefix: str) -> None:
        """Until every delete of a key under ``prefix`` has landed or failed."""
        with self._cond:
            self._cond.wait_for(lambda: not any(k.startswith(prefix) for k in self._pending))

    def flush(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._pending)

    def close(self) -> None:
        self.flush()
        with self._cond:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _run(self, key: str) -> None:
        try:
            self._delete(key)
        except errors.NotFound:
            pass  # gone already: what was wanted
        except Exception as e:  # noqa: BLE001 - reported here: the unlink has returned
            log.warning("%s: could not be removed: %s; it shows again", key, e)
            self._failed(key)
        finally:
            self._done(key)

    def _done(self, key: str) -> None:
        with self._cond:
            self._pending.discard(key)
            self._cond.notify_all()
