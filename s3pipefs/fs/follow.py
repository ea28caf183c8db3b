"""Reading a file this mount is writing: every byte written so far, then its growth.

A file opened for reading while this mount writes it gets a LiveReadHandle, which reads
through the mount's writer instead of only what S3 holds, so ``cat`` and ``tail -f`` of a
file that ``tar c . > f`` is writing on the same host see every byte as on a local disk,
uploaded or not (engine/live.py reads the writer's staged bytes and its landed segments).

Where the bytes come from follows what the path's WriteHandle holds at each read:

* an engine writer: through it. At the end of what was written another process waits for
  more (StreamWriter.wait_written); the process that is writing reads the end there, as
  it would on a local disk (it would wait for its own writes).
* no engine writer, committed (the descriptor stays open, ``exec 3>f; echo a >&3``): the
  stream as committed, complete, so its end is the end, as for a reader elsewhere.
* no engine writer, nothing written yet (created or truncated): wait, looking again every
  _POLL, for the first write or the close.
* no WriteHandle any more (the file was closed and committed): the stream as stored,
  followed as any reader follows it (ReadHandle): the end at its commit, EIO when it was
  left incomplete.

A writer that failed (or was stopped by an unmount) gives its readers EIO. Waits go in
steps, so a reader interrupted by a signal gets EINTR.
"""
from __future__ import annotations

import time
from typing import Callable

from s3pipefs import errors
from s3pipefs.fs.handles import ReadHandle
from s3pipefs.fs.write_handle import WriteHandle

_RELEASED = object()  # what the stored reader was opened after: the writer's release


class LiveReadHandle(ReadHandle):
    _POLL = 0.05  # seconds between looks at a handle without an engine writer

    def __init__(self, path: str, writer_of: Callable[[str], WriteHandle | None], open_stored: Callable[[], object],
                 open_live: Callable[[object], object]):
        """``writer_of``: this mount's live WriteHandle of a path (HandleTable.writer).
        ``open_stored``: a following Reader of the stream as S3 holds it. ``open_live``:
        a LiveReader through an engine writer (Engine.open_live_reader)."""
        super().__init__(path, None)
        self._writer_of = writer_of
        self._open_stored = open_stored
        self._open_live = open_live
        self._live = None  # the LiveReader of the engine writer read through last
        self._stored_after = None  # the commit (or _RELEASED) self.reader was opened after

    @property
    def size(self) -> int:
        w = self._writer_of(self.path)
        if w is not None:
            return w.size
        return self.reader.size if self.reader is not None else 0

    def read(self, offset: int, size: int, interrupted: Callable[[], bool] | None = None, pool=None,
             wait: bool = True) -> bytes:
        data = self._read_live(offset, size, interrupted, wait)
        if data is not None:
            return data
        with self.lock:
            self._stored(_RELEASED)
        return super().read(offset, size, interrupted, pool, wait)

    def _read_live(self, offset: int, size: int, interrupted, wait: bool) -> bytes | None:
        """Through this mount's writer; None once the path has none (read what S3 holds)."""
        while not self.lock.acquire(timeout=self._STEP):
            self._check_interrupted(interrupted)
        try:
            while True:
                w = self._writer_of(self.path)
                if w is None:
                    return None
                if w.error is not None:
                    raise errors.StreamIncomplete(f"{w.where}: its writer on this mount failed: {w.error}")
                sw = w.stream_writer
                if sw is not None and not sw.closed:
                    try:
                        data = self._live_reader(sw).read(offset, size)
                    except errors.S3PipeError:
                        if not sw.closed:
                            raise
                        continue  # committed or failed meanwhile: the handle says which
                    if data or not wait:
                        return data
                    if offset < sw.offset:
                        time.sleep(self._POLL)  # a segment landed while an earlier one uploads
                    else:
                        sw.wait_written(offset, self._STEP)
                elif sw is None and w.last_commit is not None:
                    return self._stored(w.last_commit).read(offset, size)  # committed: complete in S3
                elif sw is None and not wait:
                    return b""
                else:
                    time.sleep(self._POLL)  # nothing written yet, or a commit or failure under way
                self._check_interrupted(interrupted)
        finally:
            self.lock.release()

    def _check_interrupted(self, interrupted) -> None:
        if interrupted is not None and interrupted():
            raise errors.Interrupted(f"{self.path}: read interrupted")

    def _live_reader(self, sw):
        if self._live is None or self._live.writer is not sw:
            if self._live is not None:
                self._live.close()
            self._live = self._open_live(sw)
        return self._live

    def _stored(self, after):
        """The reader of the stream as stored, opened after ``after`` (a commit, or the
        writer's release); call with the lock held."""
        if self.reader is None or self._stored_after is not after:
            if self.reader is not None:
                self.reader.close()
            self.reader = self._open_stored()
            self._stored_after = after
        return self.reader

    def release(self) -> None:
        for r in (self._live, self.reader):
            if r is not None:
                r.close()

    def abort_for_shutdown(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - unmounting: nothing to tell
            pass
