"""Open files: a sequential stream writer, a reader, and the locked table that holds them.

WriteHandle is where POSIX close() semantics meet an append-only stream:

* The engine writer is opened at the first write, or at the first flush of a file that
  is created or truncated (the shell's ``>`` closes its own copy of the descriptor before
  the command writes). From then on the file exists for everyone, as a stream being
  written (readers elsewhere follow it), so a file closed empty is visible before its
  release. An append handle closed unused never opens a writer: an appending engine
  writer marks the stream incomplete for as long as it is open.
* flush (every close(2) of every dup of the descriptor, in every process) commits only
  when the handle was written since the last commit *by the process closing it*. The
  kernel tags writes and flushes with a lock owner, an id of the closing process's file
  table. So ``cmd > f`` commits once, when cmd exits; the close of the shell's unused
  copy costs nothing; and a writer that forks (tar -z, anything calling subprocess)
  does not see its stream committed early when the child's exec closes the inherited
  descriptor, which would show live readers a complete stream halfway through.
* Writes after a commit (``exec 3>f; echo a >&3; echo b >&3``: each builtin's
  redirection closes a dup, so each echo is committed) reopen the stream in append mode
  and continue at the same offset; the next flush commits again.
* release (the last close, whose errors the kernel drops) does only what no flush could:
  commit a file that was created or truncated and never written (an empty stream), or
  commit writes that arrived after the last flush. See Filesystem.release for why that
  runs on our own thread.
* A failed write or commit aborts the engine writer (the stream stays incomplete, never
  complete and truncated) and the error sticks: every later write, fsync and close on
  the handle reports it. A write at the wrong offset is *not* sticky: it is refused
  with ESPIPE and nothing written so far changes.

One lock per handle serialises a handle's operations (the kernel may run a flush from
one dup concurrently with a write from another). The table has its own lock.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from typing import Callable

from s3pipefs import errors
from s3pipefs.fs import fserrors

log = logging.getLogger(__name__)


class ReadHandle:
    """A reader, plus interruptible waiting at the end of a growing stream.

    A read at the end of a stream that is still being written blocks in the engine until
    the stream grows. The kernel cannot abandon a request once we have it, so Ctrl-C on
    ``cat growing.log`` would hang until data came. Such reads therefore run on a
    follower thread while the FUSE thread waits in short steps and gives up with EINTR
    when the kernel says the caller was interrupted. The abandoned read stays pending:
    a retry of the same read picks up its result; anything else waits for it first (the
    engine reader is not safe for concurrent use).
    """

    kind = "read"
    _STEP = 0.1  # seconds between checks for an interrupted caller

    def __init__(self, path: str, reader):
        self.path = path
        self.reader = reader
        # The engine reader keeps one position for prefetch decisions; the kernel may send
        # concurrent reads on one handle (readahead), so take them one at a time.
        self.lock = threading.Lock()
        self.done = threading.Event()
        self._pending: tuple[int, int, cf.Future] | None = None

    def read(self, offset: int, size: int, interrupted: Callable[[], bool] | None = None,
             pool: cf.Executor | None = None) -> bytes:
        if interrupted is None or pool is None:
            with self.lock:
                return self.reader.read(offset, size)
        while not self.lock.acquire(timeout=self._STEP):
            if interrupted():
                raise errors.Interrupted(f"{self.path}: read interrupted")
        try:
            while True:
                if self._pending is None:
                    if self.reader.complete or offset < self.reader.size:
                        return self.reader.read(offset, size)  # data is there: no waiting
                    self._pending = (offset, size, pool.submit(self.reader.read, offset, size))
                p_off, p_size, fut = self._pending
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

    @property
    def size(self) -> int:
        return self.reader.size

    def release(self) -> None:
        try:
            self.reader.close()
        finally:
            self.done.set()


class WriteHandle:
    kind = "write"

    def __init__(self, path: str, where: str, open_writer: Callable[[str], object], *, mode: str,
                 size: int, append: bool, base_complete: bool = True,
                 on_commit: Callable[["WriteHandle"], None] | None = None):
        self.path = path
        self.where = where
        self._open_writer = open_writer
        self.mode = mode  # how the first engine writer opens: "create" or "append"
        self.size = size  # bytes in the stream as this handle sees it: the next write goes here
        self.append = append  # O_APPEND: every write goes to the end, whatever offset the kernel passes
        self.base_complete = base_complete
        self.on_commit = on_commit
        self.writer = None
        self.dirty = False  # written since the last commit
        # Lock owners (fd tables) that wrote since the last commit; None: unknown owner.
        self._owners: set[int | None] = set()
        self.committed = False
        self.last_commit = None
        self.error: BaseException | None = None
        self.aborted = False
        self.releasing = False
        self.mtime = time.time()
        # Set through the mount while open (cp -p, tar x): written with the commit. A
        # write after utimens clears the stored time, as it would on a local disk.
        self.stored_mtime_ns: int | None = None
        self.perm: int | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()  # set once release has finished

    # -- the write path -------------------------------------------------------------------
    def write(self, data: bytes, offset: int, owner: int | None = None) -> int:
        with self.lock:
            self._check()
            if not self.append and offset != self.size:
                raise errors.SeekNotAllowed(
                    f"{self.where}: write of {len(data)} bytes at offset {offset} refused: streams are "
                    f"append-only and the next byte goes at {self.size}; nothing written so far changed")
            if self.writer is None:
                self._start()
            try:
                self.writer.write(data)
            except BaseException as e:
                self._fail(e)
                raise
            self.size = self.writer.offset
            self.dirty = True
            self._owners.add(owner or None)
            self.mtime = time.time()
            if self.stored_mtime_ns is not None:
                self.stored_mtime_ns = self.writer.mtime_ns = None
            return len(data)

    def _new_writer(self, mode: str):
        w = self._open_writer(mode)
        if self.perm is None:
            self.perm = w.mode  # an existing stream's stored mode carries over
        self._give_attrs(w)
        return w

    def _give_attrs(self, w) -> None:
        """The engine writer puts the attributes this handle holds into its manifests."""
        w.mtime_ns = self.stored_mtime_ns
        if self.perm is not None:
            w.mode = self.perm

    def hold_attrs(self, mtime_ns: int | None = None, mode: int | None = None) -> bool:
        """Keep attributes for this handle's coming commit. False when no commit is
        coming (nothing written since the last one): then they belong in S3 now."""
        with self.lock:
            if mtime_ns is not None:
                self.stored_mtime_ns = mtime_ns
            if mode is not None:
                self.perm = mode
            if self.writer is not None:
                self._give_attrs(self.writer)
                return True
            return self.mode == "create" and not self.committed and self.error is None and not self.aborted

    def _start(self) -> None:
        mode = "append" if self.committed else self.mode
        try:
            w = self._new_writer(mode)
        except BaseException as e:
            # Lost the stream to another writer (or cannot reach it): this handle is done,
            # and its close must not commit anything over the winner's data.
            self._fail(e)
            raise
        if w.offset != self.size:
            if self.append:
                self.size = w.offset  # grew elsewhere meanwhile; O_APPEND writes go to the end anyway
            else:
                # The stream changed since open (appended elsewhere): the kernel's offsets no
                # longer match it. Give the stream back as it was.
                size = w.offset
                try:
                    w.close() if (self.base_complete or self.committed) else w.abort()
                except errors.S3PipeError as e:
                    log.warning("%s: could not release the stream: %s", self.where, e)
                raise errors.Busy(f"{self.where}: stream changed since it was opened (now {size} bytes, "
                                  f"expected {self.size}); open it again")
        self.writer = w

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _fail(self, e: BaseException) -> None:
        """A write or commit failed: abort (stream stays incomplete); the error sticks."""
        if not isinstance(e, errors.S3PipeError):
            e = errors.S3PipeError(f"{self.where}: {type(e).__name__}: {e}")
        self.error = e
        w, self.writer = self.writer, None
        if w is not None and not w.closed:
            try:
                w.abort()
            except Exception as ae:  # noqa: BLE001 - the first error is the one to report
                log.warning("%s: abort after failure also failed: %s", self.where, ae)

    # -- durability -----------------------------------------------------------------------
    def fsync(self) -> None:
        """Everything written so far durable in S3; the stream stays open (not complete)."""
        with self.lock:
            self._check()
            if self.writer is None and self.mode == "create" and not self.committed and not self.aborted:
                self._start()  # an fsync'd new file exists, even while empty
            if self.writer is not None:
                try:
                    self.writer.flush()
                except BaseException as e:
                    self._fail(e)
                    raise

    def flush(self, owner: int | None = None) -> None:
        """close(2) of one descriptor: commit if the closing process wrote since the last commit."""
        with self.lock:
            self._check()
            if self.dirty:
                if not owner or owner in self._owners or None in self._owners:
                    self._commit()
            elif self.writer is None and self.mode == "create" and not self.committed and not self.aborted:
                # Created or truncated, nothing written yet: take the stream now, so that it
                # exists (as being written) once close(2) returns. Its release commits it.
                self._start()

    def _commit(self) -> None:
        w = self.writer
        try:
            w.close()
        except BaseException as e:
            self._fail(e)
            raise
        self.writer = None
        self.dirty = False
        self._owners.clear()
        self.committed = True
        self.last_commit = getattr(w, "committed", None)  # the manifest it wrote, for the caches
        self.mtime = time.time()
        if self.on_commit is not None:
            self.on_commit(self)

    def truncate(self, length: int) -> None:
        with self.lock:
            self._check()
            if length == self.size:
                return
            if length == 0 and self.writer is None and not self.committed:
                # open(O_TRUNC) on a kernel without atomic_o_trunc: open, then truncate(0).
                self.mode = "create"
                self.size = 0
                return
            raise fserrors.NotSupported(
                f"{self.where}: streams are append-only: truncate only to 0 before the first write "
                f"or to the current size ({self.size}), not to {length}")

    # -- the end ----------------------------------------------------------------------------
    def needs_final_work(self) -> bool:
        """Does release have to talk to S3? (Otherwise it is instant.)"""
        with self.lock:
            if self.writer is not None:
                return True
            return self.mode == "create" and not self.committed and self.error is None and not self.aborted

    def release(self) -> None:
        """The last close: commit what no flush committed; abort a failed writer."""
        try:
            with self.lock:
                if self.writer is not None:
                    if self.error is None and not self.aborted:
                        # Writes no flush committed, or a created file closed empty.
                        self._commit()
                    else:
                        self._fail(self.error or errors.StreamIncomplete(f"{self.where}: closed unfinished"))
                elif self.mode == "create" and not self.committed and self.error is None and not self.aborted:
                    # Created or truncated, never written: the file is now empty.
                    self.writer = self._new_writer("create")
                    self.dirty = True
                    self._commit()
        finally:
            self.done.set()

    def abort_for_shutdown(self, lock_timeout: float) -> bool:
        """Unmount while open: make what was written durable, leave the stream incomplete.

        Returns False when a commit or write still holds the handle after lock_timeout.
        """
        if not self.lock.acquire(timeout=lock_timeout):
            return False
        try:
            if self.aborted or self.done.is_set():
                return True
            self.aborted = True
            w, self.writer = self.writer, None
            if w is not None:
                try:
                    w.flush()  # upload what we have: durable and readable, stream not complete
                except Exception as e:  # noqa: BLE001
                    log.warning("%s: could not upload the last data before unmount: %s", self.where, e)
                try:
                    w.abort()
                except Exception as e:  # noqa: BLE001
                    log.warning("%s: abort at unmount failed: %s", self.where, e)
                log.warning("%s: unmounted while being written: stream left incomplete at %d bytes "
                            "(append to it, or `s3pipefs put --resume` it)", self.where, self.size)
            self.error = fserrors.ShuttingDown(f"{self.where}: filesystem unmounted while the file was open")
            return True
        finally:
            self.lock.release()


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

    def add_writer(self, h: WriteHandle, max_writers: int) -> int:
        """Register a writer; Busy if this mount already writes the path, NoMemory past the limit."""
        with self._lock:
            other = self._writers.get(h.path)
            if other is not None and not other.done.is_set():
                raise errors.Busy(f"{h.where}: already open for writing on this mount (one writer per stream)")
            live = sum(1 for w in self._writers.values() if not w.done.is_set())
            if live >= max_writers:
                raise errors.NoMemory(f"{h.where}: {live} files are already open for writing "
                                      f"(max_writers={max_writers}); close one or mount with a larger max_writers")
            self._writers[h.path] = h
            return self._add(h)

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
        with self._lock:
            return self._writers.get(path)

    def writers(self) -> list[WriteHandle]:
        with self._lock:
            return list(self._writers.values())

    def readers(self) -> list[ReadHandle]:
        with self._lock:
            return [h for h in self._handles.values() if isinstance(h, ReadHandle)]

    def writing_under(self, dir_path: str) -> list[WriteHandle]:
        base = dir_path.rstrip("/") + "/"
        with self._lock:
            return [w for p, w in self._writers.items() if p.startswith(base) and not w.done.is_set()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)
