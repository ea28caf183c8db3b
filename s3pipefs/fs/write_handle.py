"""A file open for writing: POSIX close() semantics over an append-only stream, as states.

A WriteHandle is always in one WriteState, and RULES below is the one place that says
what each operation may do in each state and which state it leads to. The methods do
the engine work the rule's target asks for; they never decide on loose flags.

What the states mean for a program using the file:

* The engine writer is opened at the first write (OPENED or CREATED -> WRITING), or at
  the first flush or fsync of a file that is created or truncated (CREATED -> CLAIMED):
  the shell's ``>`` closes its own copy of the descriptor before the command writes. From
  then on the file exists for everyone, as a stream being written (readers elsewhere
  follow it), so a file closed empty is visible before its release. An append handle
  closed unused (OPENED) never opens a writer: an appending engine writer marks the
  stream incomplete for as long as it is open.
* An existing file opened for writing without truncation (OPENED) does not claim its
  path on this mount until its first write or truncation: lock files and programs that
  open O_RDWR to probe or lock (sqlite, editors) may have the file open several times
  at once. The first handle to write claims the path; another handle's write then gets
  EBUSY, and the state stays. A created or truncated file claims its path at open.
* flush (every close(2) of every dup of the descriptor, in every process) commits
  (WRITING -> COMMITTED) only when the process closing it wrote since the last commit.
  The kernel tags writes and flushes with a lock owner, an id of the closing process's
  file table. So ``cmd > f`` commits once, when cmd exits; the close of the shell's
  unused copy costs nothing; and a writer that forks (tar -z, anything calling
  subprocess) does not see its stream committed early when the child's exec closes the
  inherited descriptor, which would show live readers a complete stream halfway through.
* Writes after a commit (``exec 3>f; echo a >&3; echo b >&3``: each builtin's
  redirection closes a dup, so each echo is committed) reopen the stream in append mode
  and continue at the same offset (COMMITTED -> WRITING); the next flush commits again.
* release (the last close, whose errors the kernel drops) does only what no flush could:
  commit a file that was created or truncated and never written (an empty stream), or
  commit writes that arrived after the last flush. Such a release goes to RELEASING and
  its commit (finish_release) runs on the filesystem's own thread; every other release
  is instant (RELEASED). See Filesystem.release.
* Where a write may go: anywhere from the start of the engine writer's unsealed tail
  on (the part not yet handed to the upload pool; a mount keeps at least the last
  segment's worth of bytes there): into the tail, at the end, or past it, the gap
  reading as zeros. truncate and fallocate (mode 0) extend with zeros, and truncate
  may cut the unsealed tail (a *resize*). Bytes already sealed never change: until a
  handle opens its engine writer, that is all of the file (it is in S3). A file
  opened O_RDWR gets a *patchable* engine writer (the open path decides, fs/filesystem.py):
  every byte it wrote since its last commit or fsync may be written again, uploaded or
  not (only a cut stays within the unsealed tail); what it published never changes.
* A failed write or commit aborts the engine writer (the stream stays incomplete, never
  complete and truncated) and the error sticks (FAILED): every later write, fsync and
  close on the handle reports it. A write into sealed data is *not* sticky: it is
  refused with ESPIPE (a truncate into it with EOPNOTSUPP), the state stays, and
  nothing written so far changes.
* An unmount while the file is open (SHUT_DOWN) uploads what was written and leaves the
  stream incomplete, to be appended to or resumed later.

One lock per handle serialises a handle's operations (the kernel may run a flush from
one dup concurrently with a write from another). An operation the state does not allow
(a write after release) is a caller's bug and raises HandleStateError (EBADF).
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Callable

from s3pipefs import errors
from s3pipefs.fs import fserrors

log = logging.getLogger(__name__)


class WriteState(enum.Enum):
    CREATED = "created"      # created or truncated, nothing written, no engine writer: closes as an empty file
    OPENED = "opened"        # an existing stream opened to append to, nothing written: closes unchanged
    CLAIMED = "claimed"      # engine writer open (the stream is taken), nothing written since
    WRITING = "writing"      # engine writer open, written since the last commit
    COMMITTED = "committed"  # clean after a commit, no engine writer: a write reopens it in append mode
    FAILED = "failed"        # a write or commit failed: the engine writer was aborted, the error sticks
    SHUT_DOWN = "shut down"  # unmounted while open: written bytes uploaded, stream left incomplete
    RELEASING = "releasing"  # the last close came; its final commit (finish_release) is still to run
    RELEASED = "released"    # finished; nothing more happens to this handle


S = WriteState
STICKY = "sticky"  # the operation reports the error that stuck, and the state stays
# A handle opened in this state has not claimed its path on this mount: the operations
# that leave it for a state that writes (write, truncate) claim the path first.
UNCLAIMED = S.OPENED

# For each state: operation -> the state it leads to. An operation missing from a row is
# not allowed (HandleStateError). A call that is refused (a write or truncate into sealed
# data) or finds nothing to do (a flush by a process that did not write since the last
# commit) leaves the state as it is. "truncate" is a truncate that changes no byte (to
# the current size, or to 0 before the first write: start over); "resize" is one that
# does (extend with zeros, cut the unsealed tail; fallocate), and goes where a write
# goes. "fail" is where a failed engine call leads. The methods do what a change of
# state needs (take the stream on the way to CLAIMED, WRITING; commit on the way to
# COMMITTED and out of RELEASING, start over empty on the way to CREATED, abort on the
# way to SHUT_DOWN); write, resize and fsync also work in place.
RULES: dict[WriteState, dict[str, WriteState | str]] = {
    S.CREATED: {"write": S.WRITING, "flush": S.CLAIMED, "fsync": S.CLAIMED, "truncate": S.CREATED,
                "resize": S.WRITING, "hold_attrs": S.CREATED, "release": S.RELEASING, "abort_for_shutdown": S.SHUT_DOWN,
                "fail": S.FAILED},
    S.OPENED: {"write": S.WRITING, "flush": S.OPENED, "fsync": S.OPENED, "truncate": S.CREATED,
               "resize": S.WRITING, "hold_attrs": S.OPENED, "release": S.RELEASED, "abort_for_shutdown": S.SHUT_DOWN,
               "fail": S.FAILED},
    S.CLAIMED: {"write": S.WRITING, "flush": S.CLAIMED, "fsync": S.CLAIMED, "truncate": S.CLAIMED,
                "resize": S.WRITING, "hold_attrs": S.CLAIMED, "release": S.RELEASING, "abort_for_shutdown": S.SHUT_DOWN,
                "fail": S.FAILED},
    S.WRITING: {"write": S.WRITING, "flush": S.COMMITTED, "fsync": S.WRITING, "truncate": S.WRITING,
                "resize": S.WRITING, "hold_attrs": S.WRITING, "release": S.RELEASING, "abort_for_shutdown": S.SHUT_DOWN,
                "fail": S.FAILED},
    S.COMMITTED: {"write": S.WRITING, "flush": S.COMMITTED, "fsync": S.COMMITTED, "truncate": S.COMMITTED,
                  "resize": S.WRITING, "hold_attrs": S.COMMITTED, "release": S.RELEASED, "abort_for_shutdown": S.SHUT_DOWN,
                  "fail": S.FAILED},
    S.FAILED: {"write": STICKY, "flush": STICKY, "fsync": STICKY, "truncate": STICKY, "resize": STICKY,
               "hold_attrs": S.FAILED, "release": S.RELEASED, "abort_for_shutdown": S.SHUT_DOWN},
    S.SHUT_DOWN: {"write": STICKY, "flush": STICKY, "fsync": STICKY, "truncate": STICKY, "resize": STICKY,
                  "hold_attrs": S.SHUT_DOWN, "release": S.RELEASED, "abort_for_shutdown": S.SHUT_DOWN},
    # Path operations (stat, truncate, chmod) may still find a releasing or just released
    # handle: its size is final and a commit is (or was) coming (a resize waits for it).
    S.RELEASING: {"truncate": S.RELEASING, "hold_attrs": S.RELEASING, "finish_release": S.RELEASED,
                  "abort_for_shutdown": S.RELEASING, "fail": S.RELEASED},
    S.RELEASED: {"truncate": S.RELEASED, "hold_attrs": S.RELEASED, "abort_for_shutdown": S.RELEASED},
}


class WriteHandle:
    """One open-for-writing file of the mount: the engine writer behind it, the attributes
    its next commit writes, and its WriteState. Operations run one at a time (a lock)."""

    def __init__(self, path: str, where: str, open_writer: Callable[[str], object], *, mode: str,
                 size: int, append: bool, base_complete: bool = True, perm: int | None = None,
                 claim: Callable[["WriteHandle"], None] | None = None,
                 on_commit: Callable[["WriteHandle"], None] | None = None,
                 admit: Callable[[int], None] | None = None, rewritable: bool = False):
        """``mode``: how the file was opened, "create" (created or truncated) or "append".
        ``perm``: the permission bits of a new file (its create mode); None keeps the
        stream's own. ``claim``: registers the handle as its path's writer on this mount
        (raises Busy when another handle holds it); called when an OPENED handle first
        writes or truncates. ``admit``: waits until a write of that many bytes fits the
        mount's staging budget (engine/budget.py); called before the handle's lock is
        taken, so a flush or fsync through a dup never waits behind it. ``rewritable``:
        the file's bytes in S3 may change (a plain object that fits one segment: the
        engine writer reads it back to change it), not only what follows them."""
        if mode not in ("create", "append"):
            raise ValueError(f"mode must be 'create' or 'append', not {mode!r}")
        self.path = path
        self.where = where
        self._open_writer = open_writer
        self._state = S.CREATED if mode == "create" else S.OPENED
        self._claim_path = claim
        self._claimed = self._state is not UNCLAIMED
        self.size = size  # bytes in the stream as this handle sees it: the next write goes here
        self.append = append  # O_APPEND: every write goes to the end, whatever offset the kernel passes
        self.base_complete = base_complete
        self.on_commit = on_commit
        self._admit = admit
        self.rewritable = rewritable
        self._writer = None  # the engine writer: open in CLAIMED and WRITING (and RELEASING after them)
        # Lock owners (fd tables) that wrote since the last commit; None: unknown owner.
        self._owners: set[int | None] = set()
        self._error: BaseException | None = None  # what FAILED and SHUT_DOWN report
        self.last_commit = None  # the manifest the last commit wrote, for the caches
        self.mtime = time.time()
        # Set through the mount while open (cp -p, tar x): written with the commit. A
        # write after utimens clears the stored time, as it would on a local disk.
        self.stored_mtime_ns: int | None = None
        self.perm = perm
        self.uid: int | None = None  # owners set by chown while open; None keeps the stream's
        self.gid: int | None = None
        self._lock = threading.Lock()
        self._released = threading.Event()

    # -- the state, for the filesystem and the handle table --------------------------------
    @property
    def state(self) -> WriteState:
        return self._state

    @property
    def is_live(self) -> bool:
        """This mount's writer of its path: stat shows it, a second writer gets EBUSY.
        A handle that never claimed its path (opened, never written) is not."""
        return self._claimed and self._state is not S.RELEASED

    @property
    def is_open(self) -> bool:
        """Not released by the kernel yet (a program may still write through it)."""
        return self._state not in (S.RELEASING, S.RELEASED)

    @property
    def is_releasing(self) -> bool:
        """Closed, with its final commit still to run."""
        return self._state is S.RELEASING

    @property
    def stream_writer(self):
        """The engine writer holding what was written since the last commit; None when
        there is none (nothing written yet, committed, failed, released). For readers of
        this mount, which read through it (fs/follow.py)."""
        return self._writer

    @property
    def error(self) -> BaseException | None:
        """What a FAILED or SHUT_DOWN handle reports."""
        return self._error

    def wrote_from(self, owner: int | None) -> bool:
        """Did the process with this lock owner (file table) write since the last commit?"""
        return owner is not None and owner in self._owners

    def wait_released(self, timeout: float) -> bool:
        return self._released.wait(timeout)

    def needs_final_work(self) -> bool:
        """Does release have to talk to S3? (Otherwise it is instant.)"""
        return RULES[self._state].get("release") is S.RELEASING

    def _commit_coming(self) -> bool:
        return self.needs_final_work() or self._state is S.RELEASING

    def _allow(self, op: str) -> WriteState:
        """The state ``op`` leads to; raises what the state says instead when it may not run."""
        target = RULES[self._state].get(op)
        if target is None:
            raise fserrors.HandleStateError(
                f"{self.where}: {op} on a file handle that is {self._state.value} (not allowed)")
        if target == STICKY:
            raise self._error
        return target

    def _become(self, op: str) -> None:
        self._state = self._allow(op)

    def _claim(self) -> None:
        """Before the first write or truncation of an OPENED handle: take the path on this
        mount, or raise Busy (another handle of this mount writes it; the state stays)."""
        if self._claimed:
            return
        # Claimed before asking the table, so that a handle racing this one sees it live.
        self._claimed = True
        if self._claim_path is not None:
            try:
                self._claim_path(self)
            except BaseException:
                self._claimed = False
                raise

    # -- the write path -------------------------------------------------------------------
    def write(self, data: bytes, offset: int, owner: int | None = None) -> int:
        """Write at ``offset`` (O_APPEND: at the end): anywhere from the unsealed tail on."""
        if self._admit is not None:
            self._admit(len(data))  # backpressure: outside the lock (see __init__)
        with self._lock:
            self._allow("write")
            sealed = self._sealed()
            if not self.append and offset < sealed:
                how = ("published (there before this open, or made durable by fsync)"
                       if getattr(self._writer, "patchable", False) else "sealed (uploaded)")
                raise errors.SeekNotAllowed(
                    f"{self.where}: write of {len(data)} bytes at offset {offset} refused: streams are "
                    f"append-only: the first {sealed} bytes are {how} and never change, only "
                    f"what follows can be written; nothing written so far changed")
            self._claim()
            if self._writer is None:
                self._writer = self._take_stream()
            try:
                if self.append:
                    self._writer.write(data)
                else:
                    self._writer.pwrite(offset, data)
            except errors.SeekNotAllowed:
                raise  # refused, nothing changed: not sticky
            except BaseException as e:
                self._fail(e)
                raise
            self._wrote(owner)
            self._become("write")
            return len(data)

    def _sealed(self) -> int:
        """Bytes that can no longer change: until the engine writer is open, the whole
        file (it is in S3) unless it is rewritable; then what that writer has sealed
        (a patchable writer: published)."""
        if self._writer is None:
            return 0 if self.rewritable else self.size
        return self._writer.sealed

    def _wrote(self, owner: int | None) -> None:
        self.size = self._writer.offset
        self._owners.add(owner or None)
        self.mtime = time.time()
        if self.stored_mtime_ns is not None:
            self.stored_mtime_ns = self._writer.mtime_ns = None

    def _new_writer(self, mode: str):
        w = self._open_writer(mode)
        if self.perm is None:
            self.perm = w.mode  # an existing stream's stored mode and owners carry over
        if self.uid is None:
            self.uid = w.uid
        if self.gid is None:
            self.gid = w.gid
        self._give_attrs(w)
        return w

    def _give_attrs(self, w) -> None:
        """The engine writer puts the attributes this handle holds into its manifests."""
        w.mtime_ns = self.stored_mtime_ns
        if self.perm is not None:
            w.mode = self.perm
        if self.uid is not None:
            w.uid = self.uid
        if self.gid is not None:
            w.gid = self.gid

    def hold_attrs(self, mtime_ns: int | None = None, mode: int | None = None, uid: int | None = None,
                   gid: int | None = None) -> bool:
        """Keep attributes for this handle's coming commit. False when no commit is
        coming (nothing written since the last one): then they belong in S3 now."""
        with self._lock:
            self._allow("hold_attrs")
            if mtime_ns is not None:
                self.stored_mtime_ns = mtime_ns
            if mode is not None:
                self.perm = mode
            if uid is not None:
                self.uid = uid
            if gid is not None:
                self.gid = gid
            if self._writer is not None:
                self._give_attrs(self._writer)
            return self._commit_coming()

    def _take_stream(self):
        """Open the engine writer: a new stream if created or truncated, else append."""
        mode = "create" if self._state is S.CREATED else "append"
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
                # longer match it. Give the stream back as it was; the state stays.
                size = w.offset
                try:
                    w.close() if (self.base_complete or self._state is S.COMMITTED) else w.abort()
                except errors.S3PipeError as e:
                    log.warning("%s: could not release the stream: %s", self.where, e)
                raise errors.Busy(f"{self.where}: stream changed since it was opened (now {size} bytes, "
                                  f"expected {self.size}); open it again")
        return w

    def _fail(self, e: BaseException) -> None:
        """A write or commit failed: abort (stream stays incomplete); the error sticks."""
        if not isinstance(e, errors.S3PipeError):
            e = errors.S3PipeError(f"{self.where}: {type(e).__name__}: {e}")
        self._become("fail")
        self._error = e
        w, self._writer = self._writer, None
        if w is not None and not w.closed:
            try:
                w.abort()
            except Exception as ae:  # noqa: BLE001 - the first error is the one to report
                log.warning("%s: abort after failure also failed: %s", self.where, ae)

    # -- durability -----------------------------------------------------------------------
    def fsync(self) -> None:
        """Everything written so far durable in S3; the stream stays open (not complete)."""
        with self._lock:
            if self._allow("fsync") is not self._state:
                self._writer = self._take_stream()  # an fsync'd new file exists, even while empty
            if self._writer is not None:
                try:
                    self._writer.flush()
                except BaseException as e:
                    self._fail(e)
                    raise
            self._become("fsync")

    def flush(self, owner: int | None = None, held: Callable[[], bool] | None = None) -> None:
        """close(2) of one descriptor: commit if the closing process wrote since the last
        commit. ``held()``: that process still holds the file open for writing."""
        with self._lock:
            target = self._allow("flush")
            if target is self._state:
                return  # nothing written since the last commit
            if target is S.CLAIMED:
                # Created or truncated, nothing written yet: take the file now, so that it
                # exists (a stream being written, or an empty object) once close(2)
                # returns. Its release commits it. Unless the closing process holds it
                # open still (`cmd > f`): the last close makes it exist, or commits it.
                if held is not None and held():
                    return
                self._writer = self._take_stream()
                try:
                    self._writer.claim()
                except BaseException as e:
                    self._fail(e)
                    raise
                self._become("flush")
            elif not owner or owner in self._owners or None in self._owners:
                self._commit("flush")

    def _commit(self, op: str) -> None:
        w = self._writer
        try:
            w.close()
        except BaseException as e:
            self._fail(e)
            raise
        self._writer = None
        self._owners.clear()
        self.last_commit = getattr(w, "committed", None)  # what it stored, for the caches
        # A file stored as a plain object (engine/filewriter.py) stays changeable throughout.
        self.rewritable = not getattr(w, "is_stream", True)
        self.mtime = time.time()
        self._become(op)
        if self.on_commit is not None:
            self.on_commit(self)

    def truncate(self, length: int) -> None:
        with self._lock:
            target = self._allow("truncate")
            if length == self.size:
                return
            if length == 0 and target is S.CREATED:
                # open(O_TRUNC) on a kernel without atomic_o_trunc: open, then truncate(0).
                self._claim()
                self.size = 0
                self._become("truncate")
                return
            self._allow("resize")
            sealed = self._sealed()
            if length < sealed:
                raise fserrors.NotSupported(
                    f"{self.where}: truncate to {length} refused: streams are append-only: the first {sealed} "
                    f"bytes are sealed (uploaded) and never change; a file may grow (with zeros), lose only "
                    f"what follows them, or be emptied before its first write")
            self._resize(length)

    def allocate(self, length: int) -> None:
        """fallocate(2) mode 0 (posix_fallocate): the file is at least ``length`` bytes
        long; what it grows by reads as zeros. S3 has nothing to reserve."""
        with self._lock:
            self._allow("truncate")
            if length > self.size:
                self._allow("resize")
                self._resize(length)

    def _resize(self, length: int) -> None:
        """Extend with zeros or cut the unsealed tail (the lock held, "resize" allowed).
        The kernel names no process for a truncate: any close may commit it."""
        self._claim()
        if self._writer is None:
            self._writer = self._take_stream()
        try:
            self._writer.truncate(length)
        except errors.SeekNotAllowed as e:
            # A cut into what a patchable writer uploaded: refused, nothing changed.
            raise fserrors.NotSupported(str(e)) from None
        except BaseException as e:
            self._fail(e)
            raise
        self._wrote(None)
        self._become("resize")

    # -- the end ----------------------------------------------------------------------------
    def release(self) -> bool:
        """The last close. True when a commit is still due (RELEASING): then call
        finish_release, which talks to S3; otherwise the handle is done (RELEASED)."""
        with self._lock:
            self._become("release")
            if self._state is S.RELEASED:
                self._released.set()
                return False
            return True

    def finish_release(self) -> None:
        """Commit what no flush committed: writes after the last flush, or the empty
        stream of a file created or truncated and never written."""
        with self._lock:
            self._allow("finish_release")
            try:
                if self._writer is None:
                    try:
                        self._writer = self._new_writer("create")
                    except BaseException as e:
                        self._fail(e)
                        raise
                self._commit("finish_release")
            finally:
                if self._state is S.RELEASED:
                    self._released.set()

    def detach(self) -> bool:
        """Its path is being removed (unlink) after its last commit, and the kernel
        has not released it yet (a release can come many seconds late). True: it gives up
        the path, and a later write through it fails (ESTALE) instead of bringing the
        name back, as a write to a removed file never shows on a local disk. False: it is
        writing, or has bytes no commit holds yet."""
        with self._lock:
            if self._state is not S.COMMITTED:
                return False
            self._fail(fserrors.Removed(f"{self.where}: removed while this descriptor was open; its bytes were "
                                        "committed before, nothing written through it since"))
            self._claimed = False
            return True

    def abort_for_shutdown(self, lock_timeout: float) -> bool:
        """Unmount while open: make what was written durable, leave the stream incomplete.

        Returns False when a commit or write still holds the handle after lock_timeout.
        """
        if not self._lock.acquire(timeout=lock_timeout):
            return False
        try:
            if self._allow("abort_for_shutdown") is self._state:
                return True  # already shut down, or closed: nothing left to abort
            w, self._writer = self._writer, None
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
            self._error = fserrors.ShuttingDown(f"{self.where}: filesystem unmounted while the file was open")
            self._become("abort_for_shutdown")
            return True
        finally:
            self._lock.release()
