"""Open files: the reader of a stream or object, and the locked table of all open files.

Files open for writing are WriteHandles (write_handle.py), whose state decides what each
operation may do. The table registers at most one live writer per path on this mount
(a handle that has claimed its path: created, truncated or written through) and answers
the filesystem's questions about them (is this path being written here?).
The table has its own lock; each handle has its own.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Callable, NoReturn

from s3pipefs import errors
from s3pipefs.fs import fserrors
from s3pipefs.fs.write_handle import WriteHandle


class ReadHandle:
    """A reader, plus interruptible waiting at the end of a growing stream.

    A read at the end of a stream that is still being written blocks in the engine until
    the stream grows. The kernel cannot abandon a request once we have it, so Ctrl-C on
    ``cat growing.log`` would hang until data came. Such reads therefore run on a
    follower thread while the FUSE thread waits in short steps and gives up with EINTR
    when the kernel says the caller was interrupted. The abandoned read stays pending:
    a retry of the same read picks up its result; anything else waits for it first (the
    engine reader is not safe for concurrent use).

    A read with ``wait=False`` never waits: past what the reader has, it fails with EBUSY.
    That is for the process that is itself writing the file (through another descriptor):
    the bytes it waits for are in its own, unflushed writer, so it would wait forever.
    """

    _STEP = 0.1  # seconds between checks for an interrupted caller

    def __init__(self, path: str, reader):
        self.path = path
        self.reader = reader
        # The engine reader keeps one position for prefetch decisions; the kernel may send
        # concurrent reads on one handle (readahead), so take them one at a time.
        self.lock = threading.Lock()
        self._pending: tuple[int, int, cf.Future] | None = None

    def read(self, offset: int, size: int, interrupted: Callable[[], bool] | None = None,
             pool: cf.Executor | None = None, wait: bool = True) -> bytes:
        if interrupted is None or pool is None:
            with self.lock:
                self._must_wait(offset, wait)
                return self.reader.read(offset, size)
        while not self.lock.acquire(timeout=self._STEP):
            if interrupted():
                raise errors.Interrupted(f"{self.path}: read interrupted")
        try:
            while True:
                if self._pending is None:
                    if not self._must_wait(offset, wait):
                        return self.reader.read(offset, size)  # data is there: no waiting
                    self._pending = (offset, size, pool.submit(self.reader.read, offset, size))
                p_off, p_size, fut = self._pending
                if not wait and not fut.done():
                    self._refuse(offset)
                try:
                    data = fut.result(timeout=self._STEP)
                except cf.TimeoutError:
                    if interrupted():
                        raise errors.Interrupted(f"{self.path}: read interrupted") from None
                    continue
                except BaseException:
                    self._pending = None
                    raise
                self._pending = None
                if (p_off, p_size) == (offset, size):
                    return data
                # The result of an earlier, abandoned read; now do this one.
        finally:
            self.lock.release()

    def _must_wait(self, offset: int, wait: bool) -> bool:
        """Would a read at ``offset`` wait for the stream to grow? Refuses when it may not."""
        if self.reader.complete or offset < self.reader.size:
            return False
        if not wait:
            self._refuse(offset)
        return True

    def _refuse(self, offset: int) -> NoReturn:
        raise errors.Busy(f"{self.path}: this process is writing the file, and the bytes at {offset} are not "
                          f"uploaded yet ({self.reader.size} were when it was opened for reading); "
                          "read them after close, or fsync and open the file again")

    @property
    def size(self) -> int:
        return self.reader.size

    def release(self) -> None:
        self.reader.close()

    def abort_for_shutdown(self) -> None:
        """Unmount while open: stop the reader (a read waiting for a stream to grow ends)."""
        try:
            self.reader.close()
        except Exception:  # noqa: BLE001 - unmounting: nothing to tell
            pass


class HandleTable:
    """fh -> handle, plus path -> the handle writing it (one writer per path per mount)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._handles: dict[int, ReadHandle | WriteHandle] = {}
        self._writers: dict[str, WriteHandle] = {}
        self._next = 1

    def add(self, h: ReadHandle) -> int:
        with self._lock:
            return self._add(h)

    def _add(self, h) -> int:
        fh = self._next
        self._next += 1
        self._handles[fh] = h
        return fh

    def add_writer(self, h: WriteHandle) -> int:
        """Register a writer; Busy if this mount already writes the path.

        A handle that has not claimed its path (an existing file opened, not truncated)
        is only counted: it claims the path at its first write (``claim``).
        """
        with self._lock:
            other = self._writers.get(h.path)
            if other is not None and other.is_live:
                raise errors.Busy(f"{h.where}: already open for writing on this mount (one writer per stream)")
            if h.is_live:
                self._writers[h.path] = h
            return self._add(h)

    def claim(self, h: WriteHandle) -> None:
        """Make ``h`` its path's writer on this mount: Busy if another handle is."""
        with self._lock:
            other = self._writers.get(h.path)
            if other is not None and other is not h and other.is_live:
                raise errors.Busy(f"{h.where}: another descriptor on this mount is writing it (one writer "
                                  "per stream); nothing was written through this one")
            self._writers[h.path] = h

    def get(self, fh: int):
        with self._lock:
            h = self._handles.get(fh)
        if h is None:
            raise fserrors.BadHandle(f"no open file with handle {fh}")
        return h

    def remove(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if isinstance(h, WriteHandle) and self._writers.get(h.path) is h:
                del self._writers[h.path]

    def writer(self, path: str) -> WriteHandle | None:
        """This mount's live writer of ``path`` (open, or closed with its commit to come)."""
        with self._lock:
            w = self._writers.get(path)
        return w if (w is not None and w.is_live) else None

    def unclaimed(self, path: str) -> list[WriteHandle]:
        """Handles open for writing on ``path`` that have not claimed it (never written)."""
        with self._lock:
            return [h for h in self._handles.values()
                    if isinstance(h, WriteHandle) and h.path == path and h.is_open and not h.is_live]

    def writers(self) -> list[WriteHandle]:
        """Every file open for writing (or with its final commit to come)."""
        with self._lock:
            return [h for h in self._handles.values() if isinstance(h, WriteHandle)]

    def readers(self) -> list[ReadHandle]:
        with self._lock:
            return [h for h in self._handles.values() if isinstance(h, ReadHandle)]

    def writing_under(self, dir_path: str) -> list[WriteHandle]:
        base = dir_path.rstrip("/") + "/"
        with self._lock:
            return [w for p, w in self._writers.items() if p.startswith(base) and w.is_live]

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)
