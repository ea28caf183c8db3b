"""The filesystem without FUSE: paths and file handles in, stat dicts and bytes out.

operations.py only unwraps fuse_file_info and maps exceptions to errno; every decision
is made here, so the same code runs in-process in the tests and under a kernel mount.

Choices worth knowing:

* Files open for writing, and streams still being written, get ``direct_io``: no page
  cache, so a read past the size the kernel last stat'd reaches us and can wait for the
  stream to grow (live follow), and a write is exactly one request at the offset the
  program wrote: it lands in the writer's unsealed tail (the last segment's worth of
  bytes and more stays writable, so zip can patch a member's header), at the end, or
  past it (a hole, stored as zeros); a write into sealed data is refused. Complete streams and
  objects go through the page cache, and keep it across opens while their version (the
  manifest's writer and end time, or the object's ETag) is unchanged.
* A file this mount is writing reads as on a local disk: a reader opened meanwhile reads
  through the writer (fs/follow.py), every byte written so far, uploaded or not, then
  follows it; the writing process itself reads up to what it wrote.
* Sizes and modes: a stream shows the bytes written so far; a file this mount is
  writing shows the writer's size. Modes are 0666/0777 minus umask (write bits cleared
  on ``ro``); plain objects are 0444.
* utimens, chmod and chown on a stream are kept in its manifest (``mtime_ns``, ``mode``,
  ``uid``, ``gid``), so ``rsync -a`` finds unchanged files unchanged on its next run and
  ``cp -a``/``tar x`` keep times, modes and owners. On a file this mount is writing they
  go out with its commit; otherwise the manifest is rewritten, conditionally, never over
  a live writer. Objects (symlinks among them) and directory markers keep them in their
  metadata, as s3fs-fuse does (engine/objattrs.py); on a server that keeps no metadata on
  markers (found out by the first store, which reads the marker back), directories keep
  them in folder objects ``dir_$folder$`` instead (fs/namespace.py). Stored owners show
  unless the mount was given ``uid=``/``gid=``, which then own everything, as before
  owners were kept.
* Symlinks are objects in the convention of s3fs-fuse: the target is the body, the mode
  in the metadata says "link".
* release runs on a small pool of our own threads (see ``release``).
"""
from __future__ import annotations

import concurrent.futures as cf
import errno as _errno
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import cachetools

from s3pipefs import errors
from s3pipefs.engine import Engine, Entry, objattrs
from s3pipefs.fs import fserrors, names
from s3pipefs.fs.follow import LiveReadHandle
from s3pipefs.fs.handles import HandleTable, ReadHandle
from s3pipefs.fs.write_handle import WriteHandle, WriteState
from s3pipefs.fs.namespace import Namespace, split
from s3pipefs.fs.options import FsConfig

log = logging.getLogger(__name__)

# statfs: S3 has no capacity; report 1 PiB free so df and installers' free-space checks pass.
_STATFS_FRSIZE = 4096
_STATFS_BLOCKS = (1 << 50) // _STATFS_FRSIZE
_STATFS_FILES = 1 << 32
# utimensat(2)'s special tv_nsec values, passed on by libfuse with tv_sec = 0.
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
# fallocate(2): the one mode flag that changes no byte.
_FALLOC_FL_KEEP_SIZE = 0x01
# How long an open waits for the same path's previous writer to finish its release commit.
_SETTLE_TIMEOUT = 60.0
# How long a committed handle of the same path may take to be released by the kernel: a
# few milliseconds on a quiet machine, seconds when the machine is loaded (seen: > 2 s with
# a load of 6 on 2 cores). A file truly held open waits this long before EBUSY.
_RELEASE_GRACE = 10.0


@dataclass(frozen=True)
class Opened:
    fh: int
    direct_io: bool
    keep_cache: bool = False


class Filesystem:
    def __init__(self, engine: Engine, bucket: str, prefix: str, cfg: FsConfig, *, blksize: int = 1 << 20):
        self.engine = engine
        self.bucket = bucket
        self.cfg = cfg
        self.ns = Namespace(engine, bucket, prefix, cfg.metadata_ttl)
        self.handles = HandleTable()
        self.uid = os.getuid() if cfg.uid is None else cfg.uid
        self.gid = os.getgid() if cfg.gid is None else cfg.gid
        # st_blksize: cp, cat and friends size their buffers by it; the largest request.
        self.blksize = blksize
        self._closing = False
        self._releaser: cf.ThreadPoolExecutor | None = None
        self._follow_pool: cf.ThreadPoolExecutor | None = None
        self._releaser_lock = threading.Lock()
        self._versions: cachetools.LRUCache = cachetools.LRUCache(10_000)
        self._versions_lock = threading.Lock()
        # fh of a file open for reading and writing -> the reader its reads use (see read).
        self._rw_readers: dict[int, ReadHandle] = {}
        self._rw_lock = threading.Lock()
        self._markers_keep_nothing = False  # the server drops markers' metadata: folder objects then

    @property
    def _all_streams(self) -> bool:
        """Every file written is a stream: asked for (small_files=stream), or needed by
        client-side encryption, which plain objects cannot carry."""
        return self.cfg.small_files == "stream" or bool(self.engine.request.encrypt_key)

    # -- attributes ---------------------------------------------------------------------
    def _mode(self, kind: str, stored: int | None = None, link: bool = False) -> int:
        if link:
            return stat.S_IFLNK | 0o777  # a link's own mode is never checked; Linux shows 0777
        if stored is not None:
            perm = stored  # set by chmod through a mount (or by another tool, on objects)
        elif kind == "dir":
            perm = 0o777
        elif kind == "object" and self._all_streams:
            perm = 0o444
        else:
            perm = 0o666
        if kind == "object" and self._all_streams:
            perm &= ~0o222  # plain objects cannot be written through such a mount
        # umask bounds even a stored mode: with allow_other and umask=077, no chmod made
        # anywhere opens the bucket to other users of this machine.
        perm &= ~self.cfg.umask
        if self.cfg.read_only:
            perm &= ~0o222
        return (stat.S_IFDIR if kind == "dir" else stat.S_IFREG) | perm

    def _owners(self, uid: int | None, gid: int | None) -> tuple[int, int]:
        """uid=/gid= own everything; else what chown stored, else the mounting user."""
        return (self.cfg.uid if self.cfg.uid is not None else (uid if uid is not None else self.uid),
                self.cfg.gid if self.cfg.gid is not None else (gid if gid is not None else self.gid))

    def _attrs(self, kind: str, size: int, mtime: float, mtime_ns: int | None = None,
               perm: int | None = None, uid: int | None = None, gid: int | None = None,
               link: bool = False) -> dict:
        ns = mtime_ns if mtime_ns is not None else int((mtime or self.ns.mounted_at) * 1e9)
        st_uid, st_gid = self._owners(uid, gid)
        return {
            "st_mode": self._mode(kind, perm, link),
            "st_nlink": 2 if kind == "dir" else 1,
            "st_uid": st_uid,
            "st_gid": st_gid,
            "st_size": size if kind != "dir" else 0,
            "st_blocks": (size + 511) // 512 if kind != "dir" else 0,
            "st_blksize": self.blksize,
            "st_atime": ns,
            "st_mtime": ns,
            "st_ctime": ns,
        }

    def _entry_attrs(self, entry: Entry, size: int) -> dict:
        return self._attrs(entry.kind, size, entry.mtime, entry.mtime_ns, entry.mode, entry.uid, entry.gid,
                           entry.is_link)

    def getattr(self, path: str, fh: int | None = None) -> dict:
        w = self.handles.writer(path)
        if w is not None:
            return self._attrs("stream", w.size, w.mtime, w.stored_mtime_ns, w.perm, w.uid, w.gid)
        key = self.ns.key(path)
        if not names.key_fits(key):
            raise fserrors.NameTooLong(f"{self.ns.where(path)}: longer than an S3 key can be "
                                       f"({names.KEY_MAX} bytes)")
        # No key can hold a name that is not UTF-8: nothing to ask S3.
        entry = self.ns.lookup(path) if names.is_utf8(key) else None
        if entry is None:
            raise errors.NotFound(f"{self.ns.where(path)}: no such file or directory")
        size = entry.size
        if fh is not None:
            # fstat on a file being followed shows how far it has grown.
            h = self._handle_or_none(fh)
            if isinstance(h, ReadHandle):
                size = max(size, h.size)
        return self._entry_attrs(entry, size)

    def readdir(self, path: str) -> list[tuple[str, int]]:
        listing = self.ns.listdir(path)
        out = [(".", self._mode("dir")), ("..", self._mode("dir"))]
        out.extend((name, self._mode(e.kind, e.mode, e.is_link)) for name, e in listing.items())
        # Files this mount is creating exist before their first byte reaches S3.
        for w in self.handles.writing_under(path):
            parent, name = split(w.path)
            if parent == (path.rstrip("/") or "/") and name not in listing:
                out.append((name, self._mode("stream")))
        return out

    def statfs(self) -> dict:
        return {
            "f_bsize": self.blksize, "f_frsize": _STATFS_FRSIZE,
            "f_blocks": _STATFS_BLOCKS, "f_bfree": _STATFS_BLOCKS, "f_bavail": _STATFS_BLOCKS,
            "f_files": _STATFS_FILES, "f_ffree": _STATFS_FILES, "f_favail": _STATFS_FILES,
            "f_namemax": names.NAME_MAX,
        }

    # -- opening --------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> Opened:
        self._check_open(path)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return self._open_read(path)
        return self._open_write(path, flags, creating=False)

    def create(self, path: str, flags: int, mode: int | None = None) -> Opened:
        """``mode``: the creator's mode, umask already applied by the kernel; a new file
        shows it and its manifest keeps it, as chmod would."""
        self._check_open(path)
        return self._open_write(path, flags, creating=True,
                                perm=stat.S_IMODE(mode) if mode is not None else None)

    def _check_open(self, path: str) -> None:
        if self._closing:
            raise fserrors.ShuttingDown(f"{self.ns.where(path)}: the filesystem is being unmounted")

    def _settle(self, path: str) -> WriteHandle | None:
        """Wait for this mount's previous writer of ``path`` to finish its last commit.

        close(2) returns after FLUSH (the commit), but the kernel sends RELEASE on its own
        time: a script that closes a file and opens it again at once (``>> f`` twice) can
        find the first handle committed and not yet released. Such a handle gets a moment
        to go before it counts as a live writer (EBUSY)."""
        w = self.handles.writer(path)
        if w is not None and w.is_releasing:
            w.wait_released(_SETTLE_TIMEOUT)
        elif w is not None and w.state is WriteState.COMMITTED:
            w.wait_released(_RELEASE_GRACE)
        return w if (w is not None and w.is_live) else None

    def _open_read(self, path: str) -> Opened:
        writing = self._settle(path)
        if writing is not None:
            return self._open_following(path)
        entry = self.ns.lookup(path)
        if entry is None:
            raise errors.NotFound(f"{self.ns.where(path)}: no such file")
        if entry.kind == "dir":
            raise fserrors.IsADirectory(f"{self.ns.where(path)}: is a directory")
        reader = self.engine.open_reader(self.bucket, self.ns.key(path), follow=True, entry=entry,
                                         body=self.ns.body(path, entry))
        if reader.size != entry.size or reader.complete != entry.complete:
            # The cache was behind; the kernel's cached size may be too, so no page cache.
            self.ns.remember(path, replace(entry, size=reader.size, complete=reader.complete))
            stale = True
        else:
            stale = False
        growing = not reader.complete
        direct = self.cfg.direct_io or growing or stale
        version = _version(reader)
        with self._versions_lock:
            keep = not direct and version is not None and self._versions.get(path) == version
            self._versions[path] = version
        fh = self.handles.add(ReadHandle(path, reader))
        log.debug("open %s for reading: %d bytes, %s, %s", path, reader.size,
                  "complete" if reader.complete else "growing", "direct" if direct else "page cache")
        return Opened(fh, direct_io=direct, keep_cache=keep)

    def _open_following(self, path: str) -> Opened:
        """A file this mount is writing: read through its writer (fs/follow.py), no page cache."""
        key = self.ns.key(path)
        h = LiveReadHandle(path, self.handles.writer,
                           open_stored=lambda: self.engine.open_reader(self.bucket, key, follow=True),
                           open_live=self.engine.open_live_reader)
        with self._versions_lock:
            self._versions.pop(path, None)
        log.debug("open %s for reading while this mount writes it", path)
        return Opened(self.handles.add(h), direct_io=True)

    def _open_write(self, path: str, flags: int, creating: bool, perm: int | None = None) -> Opened:
        where = self.ns.where(path)
        if self.cfg.read_only:
            raise errors.ReadOnly(f"{where}: mounted read-only")
        if creating:
            self._check_new(path, stream=True)
        # O_EXCL reaches us only when the kernel saw no file: whoever else has it now won.
        lost = errors.Exists if (creating and flags & os.O_EXCL) else errors.Busy
        if self._settle(path) is not None:
            # This mount is writing it: the loser of a race learns that, whatever S3 shows
            # meanwhile (nothing yet, or a stream without its first manifest).
            raise lost(f"{where}: already open for writing on this mount (one writer per stream)")
        key = self.ns.key(path)
        self.ns.deletes.wait(key)  # an unlinked object of this name must be gone first
        # Attributes still held for the object go out now, before a commit of new bytes
        # could race their copy (which would bring the old bytes back).
        self.ns.attrs_behind.store_now(key)
        # A fresh stat before writing: a live writer elsewhere means EBUSY now, not later.
        # create() follows a negative lookup the kernel just made, so the cache will do.
        entry = self.ns.lookup(path, fresh=not creating)
        if entry is None and not creating:
            raise errors.NotFound(f"{where}: no such file")
        if entry is not None:
            if creating and flags & os.O_EXCL:
                raise errors.Exists(f"{where}: already exists")
            if entry.kind == "dir":
                raise fserrors.IsADirectory(f"{where}: is a directory")
            if entry.kind == "object" and self._all_streams:
                raise fserrors.PermissionDenied(f"{where}: plain S3 objects are read-only on this mount "
                                                "(small_files=stream, or client-side encryption); write to a new name")
            if entry.writer_alive:
                raise errors.Busy(f"{where}: another writer is writing this stream")
        # A create that finds the file (the kernel's cache was behind) opens it as open(2)
        # would: truncated only with O_TRUNC.
        trunc = entry is None or bool(flags & os.O_TRUNC)
        # One segment stays unsealed behind the end: programs that seek back to patch a
        # header they wrote find it still writable, until they pause long enough for the
        # timed seal to publish it (engine/writer.py). A file opened for reading and
        # writing (zip's temporary file, zipfile's "w+b") is patchable: all it writes
        # stays writable, and unpublished, until its close or fsync.
        hold_back = self.engine.cfg.segment_size
        patchable = flags & os.O_ACCMODE == os.O_RDWR
        budget = self.engine.write_budget

        def open_writer(how: str):
            # What the name holds now: what this handle committed last, else what open found.
            known = h.last_commit
            now = self.engine.committed_entry(self.bucket, key, known) if known is not None else entry
            if self._all_streams:
                return self.engine.open_writer(self.bucket, key, how, hold_back=hold_back, patchable=patchable)
            return self.engine.open_file_writer(self.bucket, key, how, existing=now, hold_back=hold_back,
                                                patchable=patchable)

        h = WriteHandle(
            path, where, open_writer,
            mode="create" if trunc else "append",
            size=0 if (trunc or entry is None) else entry.size,
            append=bool(flags & os.O_APPEND),
            base_complete=entry.complete if entry is not None else True,
            # A new file gets its creator's mode; an existing one keeps its own.
            perm=perm if entry is None else None,
            claim=self.handles.claim,
            on_commit=self._committed,
            admit=budget.admit if budget is not None else None,
            rewritable=self._rewritable(entry),
        )
        try:
            fh = self.handles.add_writer(h)
        except errors.Busy as e:
            raise lost(str(e)) from None  # two creates that raced: one is registered first
        return Opened(fh, direct_io=True)

    def _rewritable(self, entry: Entry | None) -> bool:
        """Can a write change the bytes ``entry`` holds? A plain object that fits one
        segment is read back and stored again whole (engine/filewriter.py); a stream's
        bytes are sealed."""
        return (not self._all_streams and entry is not None and entry.kind == "object"
                and entry.size <= self.engine.cfg.segment_size)

    def _committed(self, h: WriteHandle) -> None:
        self.ns.attrs_behind.take(self.ns.key(h.path))  # the commit wrote what was held
        if h.last_commit is not None:
            # What S3 now holds, known without asking: tools stat and utime a file right
            # after closing it (rsync, cp -p, tar x), which then costs no request.
            self.ns.remember(h.path, self.engine.committed_entry(self.bucket, self.ns.key(h.path), h.last_commit))
        else:
            self.ns.invalidate(h.path)
        with self._versions_lock:
            self._versions.pop(h.path, None)
        log.info("%s: committed, %d bytes", h.where, h.size)

    # -- data -------------------------------------------------------------------------------
    def _handle_or_none(self, fh):
        try:
            return self.handles.get(fh)
        except fserrors.BadHandle:
            return None

    def read(self, fh: int, size: int, offset: int, interrupted: Callable[[], bool] | None = None,
             owner: int | None = None) -> bytes:
        """``interrupted``: tells whether the caller gave up (Ctrl-C); reads waiting on a
        growing stream then return EINTR instead of holding the process until data comes.
        ``owner``: the reading process's lock owner. The process that is writing the file
        through another descriptor never waits for bytes only its own writes can bring:
        opened while this mount writes it, it reads every byte it wrote, then the end;
        opened before, what is uploaded, then EBUSY."""
        h = self.handles.get(fh)
        if isinstance(h, WriteHandle):
            h = self._reader_beside(fh, h)
            if h is None:
                return b""  # created or truncated, nothing written: an empty file
        w = self.handles.writer(h.path)
        own = w is not None and w.wrote_from(owner)
        return h.read(offset, size, interrupted, self._followers() if interrupted else None, wait=not own)

    def _reader_beside(self, fh: int, h: WriteHandle) -> ReadHandle | None:
        """Reads through a descriptor open for reading and writing (O_RDWR: sqlite reads
        its database header, programs read lock files): until the descriptor writes, it
        reads the file as stored (None: the file is empty). Once it wrote, the bytes it
        reads back may be only in its writer: EOPNOTSUPP."""
        if h.state is WriteState.CREATED and h.size == 0:
            return None
        if h.state is not WriteState.OPENED:
            raise fserrors.NotSupported(f"{h.where}: cannot read through a descriptor that has written "
                                        "(streams are append-only); open the file again to read it")
        with self._rw_lock:
            r = self._rw_readers.get(fh)
        if r is None:
            reader = self.engine.open_reader(self.bucket, self.ns.key(h.path), follow=False)
            with self._rw_lock:
                r = self._rw_readers.setdefault(fh, ReadHandle(h.path, reader))
            if r.reader is not reader:
                reader.close()  # another thread of the same descriptor was first
        return r

    def _followers(self) -> cf.ThreadPoolExecutor:
        # Threads that wait at the end of growing streams (one per blocked read).
        with self._releaser_lock:
            if self._follow_pool is None:
                self._follow_pool = cf.ThreadPoolExecutor(self.cfg.max_threads, thread_name_prefix="s3pipefs-follow")
            return self._follow_pool

    def write(self, fh: int, data: bytes, offset: int, owner: int | None = None) -> int:
        """``owner``: the kernel's lock owner of the writing process (see handles.py)."""
        h = self.handles.get(fh)
        if not isinstance(h, WriteHandle):
            raise fserrors.BadHandle(f"{self.ns.where(h.path)}: not open for writing")
        return h.write(data, offset, owner)

    def flush(self, fh: int, owner: int | None = None, held: Callable[[], bool] | None = None) -> None:
        """close(2) of one descriptor; ``held()``: the closing process still holds the file
        open for writing on another descriptor (asked only where it matters)."""
        h = self.handles.get(fh)
        if isinstance(h, WriteHandle):
            h.flush(owner, held)

    def fsync(self, fh: int) -> None:
        h = self.handles.get(fh)
        if isinstance(h, WriteHandle):
            h.fsync()

    def release(self, fh: int) -> None:
        """The last close of an open file.

        The kernel does not wait for release and drops its errors, so everything that can
        fail visibly was already done in flush. What is left (the empty stream of a file
        created and never written, writes after the last flush) runs on our own pool:
        libfuse cancels its worker threads (pthread_cancel) when the loop ends at
        unmount, which must never happen in the middle of an S3 request. Until that work
        is done the handle stays in the table, so stat shows the file and a new open of
        the same path waits for it.
        """
        h = self.handles.get(fh)
        if isinstance(h, ReadHandle):
            try:
                h.release()
            finally:
                self.handles.remove(fh)
            return
        with self._rw_lock:
            beside = self._rw_readers.pop(fh, None)
        if beside is not None:
            beside.release()
        if h.release():
            self._pool().submit(self._final_release, fh, h)
        else:
            self.handles.remove(fh)

    def _final_release(self, fh: int, h: WriteHandle) -> None:
        try:
            h.finish_release()  # its commit updates the caches (_committed)
        except Exception as e:  # noqa: BLE001 - nobody is left to tell but the log
            log.error("%s: final commit at close failed, stream left incomplete: %s", h.where, e)
            self.ns.invalidate(h.path)
        finally:
            self.handles.remove(fh)

    def _pool(self) -> cf.ThreadPoolExecutor:
        # Created on first use, i.e. after the daemon forked (threads do not survive fork).
        with self._releaser_lock:
            if self._releaser is None:
                self._releaser = cf.ThreadPoolExecutor(4, thread_name_prefix="s3pipefs-release")
            return self._releaser

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        where = self.ns.where(path)
        if self.cfg.read_only:
            raise errors.ReadOnly(f"{where}: mounted read-only")
        h = self._handle_or_none(fh) if fh is not None else None
        if not isinstance(h, WriteHandle):
            # ftruncate reaches us without its descriptor (libfuse 3 through mfusepy): the
            # path's writer (once a closing one has committed), else its one descriptor
            # open for writing that has not written.
            h = self._settle(path)
        if h is None:
            idle = self.handles.unclaimed(path)
            if len(idle) > 1:
                raise errors.Busy(f"{where}: open for writing through {len(idle)} descriptors on this mount; "
                                  "cannot tell which one truncates")
            h = idle[0] if idle else None
        if h is not None:
            h.truncate(length)
            return
        entry = self.ns.lookup(path, fresh=True)
        if entry is None:
            raise errors.NotFound(f"{where}: no such file")
        if entry.kind == "dir":
            raise fserrors.IsADirectory(f"{where}: is a directory")
        if length == entry.size:
            return
        if entry.kind == "object" and self._all_streams:
            raise fserrors.PermissionDenied(f"{where}: plain S3 objects are read-only on this mount "
                                                "(small_files=stream, or client-side encryption)")
        if 0 < length < entry.size and not self._rewritable(entry):
            raise fserrors.NotSupported(f"{where}: truncate to {length} refused: streams are append-only: a "
                                        f"closed file may grow (with zeros) or be emptied, not lose its last "
                                        f"{entry.size - length} bytes")
        how = "create" if length == 0 else "append"
        self.ns.attrs_behind.store_now(self.ns.key(path))  # out before the new bytes (see _open_write)
        if self._all_streams:
            w = self.engine.open_writer(self.bucket, self.ns.key(path), how)
        else:
            w = self.engine.open_file_writer(self.bucket, self.ns.key(path), how, existing=entry)
        try:
            w.truncate(length)
        except BaseException:
            w.abort()
            raise
        w.close()
        self.ns.attrs_behind.take(self.ns.key(path))  # the commit wrote what was held
        self.ns.invalidate(path)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on a descriptor open for writing: mode 0 (posix_fallocate) grows
        the file with zeros to ``offset + length``; FALLOC_FL_KEEP_SIZE alone has nothing
        to reserve in S3. Punching holes or zeroing, collapsing or inserting ranges would
        change bytes in place: EOPNOTSUPP."""
        h = self.handles.get(fh)
        if not isinstance(h, WriteHandle):
            raise fserrors.BadHandle(f"{self.ns.where(h.path)}: not open for writing")
        if mode & ~_FALLOC_FL_KEEP_SIZE:
            raise fserrors.NotSupported(f"{h.where}: fallocate mode {mode:#x} refused: streams are append-only "
                                        "(holes are not punched, ranges not zeroed, collapsed or inserted); "
                                        "only growing a file (mode 0) is supported")
        if offset < 0 or length <= 0:
            raise errors.UsageError(f"{h.where}: fallocate of {length} bytes at {offset}: invalid range")
        if not mode & _FALLOC_FL_KEEP_SIZE:
            h.allocate(offset + length)

    # -- the tree ---------------------------------------------------------------------------
    def _busy_writing(self, path: str, what: str, detach: bool = False) -> None:
        """EBUSY while this mount writes ``path``. ``detach`` (unlink): the path goes away,
        so a handle whose every byte is committed and whose release is merely late lets go
        of it instead (WriteHandle.detach)."""
        w = self._settle(path)
        if w is not None and not (detach and w.detach()):
            raise errors.Busy(f"{self.ns.where(path)}: cannot {what} while it is open for writing on this mount")

    def _check_new(self, path: str, stream: bool) -> None:
        """Before anything is written: a name S3 can store, and delete again."""
        names.check_new(path, self.ns.key(path), self.ns.where(path), stream=stream)

    def _writable(self, path: str) -> None:
        if self.cfg.read_only:
            raise errors.ReadOnly(f"{self.ns.where(path)}: mounted read-only")

    def mkdir(self, path: str, mode: int | None = None) -> None:
        """``mode``: the creator's, umask already applied by the kernel; kept as chmod
        keeps it when it differs from what a directory shows by default."""
        self._writable(path)
        self._check_new(path, stream=False)
        self.ns.mkdir(path)
        if mode is not None and stat.S_IMODE(mode) != 0o777 & ~self.cfg.umask:
            self._set_attrs(path, mode=stat.S_IMODE(mode))

    def rmdir(self, path: str) -> None:
        self._writable(path)
        if self.handles.writing_under(path):
            raise errors.NotEmpty(f"{self.ns.where(path)}: directory not empty (files being written)")
        self.ns.rmdir(path)

    def unlink(self, path: str) -> None:
        self._writable(path)
        self._busy_writing(path, "remove it", detach=True)
        self.ns.unlink(path)
        with self._versions_lock:
            self._versions.pop(path, None)

    def rename(self, old: str, new: str) -> None:
        self._writable(old)
        self._check_new(new, stream=True)
        self._busy_writing(old, "rename it")
        self._busy_writing(new, "replace it")
        for w in self.handles.writing_under(old):
            # Files closed just now are committing (borg closes its lock file, then renames
            # the directory holding it): wait for them; files still open keep it busy.
            if not (w.is_releasing and w.wait_released(_SETTLE_TIMEOUT)):
                raise errors.Busy(f"{self.ns.where(old)}: cannot rename a directory holding files open for writing")
        self.ns.rename(old, new)
        with self._versions_lock:
            self._versions.pop(old, None)
            self._versions.pop(new, None)

    def link(self, existing: str, new: str) -> None:
        raise fserrors.NotSupported(f"{self.ns.where(new)}: hard links are not supported (an S3 key is one "
                                    f"name); copy {self.ns.where(existing)} instead")

    def mknod(self, path: str, mode: int) -> None:
        """Regular files come through create; what is left cannot be stored in S3."""
        kind = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
                stat.S_IFBLK: "block device"}.get(stat.S_IFMT(mode), "special file")
        raise fserrors.NotSupported(f"{self.ns.where(path)}: a {kind} cannot be stored in S3 "
                                    "(only regular files, directories and symlinks)")

    def set_times(self, path: str, times: tuple[int, int] | None) -> None:
        """utimens: a stream keeps its mtime (nanoseconds) in its manifest; atime is not kept.

        ``times`` is (atime, mtime) in ns, or None for "now"; either may be libfuse's
        UTIME_NOW or UTIME_OMIT (with a zero tv_sec), as utimensat(2) passes them on.
        """
        if times is not None and times[1] == _UTIME_OMIT:
            return self.touch_metadata(path)
        mtime = time.time_ns() if times is None or times[1] == _UTIME_NOW else times[1]
        self._set_attrs(path, mtime_ns=max(0, mtime))

    def set_mode(self, path: str, mode: int) -> None:
        """chmod: a stream keeps its permission bits in its manifest."""
        self._set_attrs(path, mode=stat.S_IMODE(mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        """chown/chgrp (-1: unchanged), kept where chmod's mode is kept. The kernel has
        already checked who may (default_permissions)."""
        attrs = {k: v for k, v in (("uid", uid), ("gid", gid)) if v is not None and v >= 0}
        if not attrs:
            return self.touch_metadata(path)
        self._set_attrs(path, **attrs)

    def _set_attrs(self, path: str, **attrs) -> None:
        """Store attributes: a stream's with the commit of this mount's open writer, or by
        rewriting its manifest; an object's or a directory's in its metadata."""
        w = self._settle(path)
        if w is not None and w.hold_attrs(**attrs):
            return
        entry = self.ns.lookup(path)
        if entry is None:
            raise errors.NotFound(f"{self.ns.where(path)}: no such file or directory")
        if self.cfg.read_only:
            raise errors.ReadOnly(f"{self.ns.where(path)}: mounted read-only")
        key = self.ns.key(path)
        if entry.kind == "stream":
            updated = self.engine.set_attrs(self.bucket, key, known=entry, **attrs)
        elif not key:
            return  # the bucket itself has no marker to keep them
        elif entry.kind == "dir" and (entry.folder_object or self._markers_keep_nothing):
            updated = self.ns.store_folder_attrs(entry, **attrs)
        else:
            if entry.kind == "object" and entry.size > objattrs.MAX_COPY:
                raise fserrors.NotSupported(f"{self.ns.where(path)}: attributes of an object over 5 GiB cannot "
                                            "be changed (S3 copies metadata only with the whole object)")
            if entry.kind == "object":
                # Shown now, stored a moment later with any that follow (fs/attrs_behind.py).
                self.ns.attrs_behind.hold(key, **attrs)
                self.ns.update(path, replace(entry, metadata=objattrs.updated(entry.metadata or {}, stat.S_IFREG,
                                                                                **attrs)))
                return
            updated = self.engine.set_object_attrs(self.bucket, key, directory=entry.kind == "dir", **attrs)
            if updated is not None and entry.kind == "dir" and not _kept(updated, attrs):
                self._found_markers_keep_nothing()
                updated = self.ns.store_folder_attrs(entry, **attrs)
        if updated is not None:
            self.ns.update(path, updated)
        else:
            self.ns.invalidate(path)  # gone or replaced meanwhile

    def _found_markers_keep_nothing(self) -> None:
        if not self._markers_keep_nothing:
            self._markers_keep_nothing = True
            log.info("s3://%s: the server keeps no metadata on directory markers: directories keep their "
                     "owners, modes and times in objects 'NAME%s' instead", self.bucket, objattrs.FOLDER_SUFFIX)

    def touch_metadata(self, path: str) -> None:
        """A utimens that leaves mtime alone, a chown that changes nothing: S3 keeps no
        atime; succeed once the file is known to exist."""
        if self.handles.writer(path) is None and self.ns.lookup(path) is None:
            raise errors.NotFound(f"{self.ns.where(path)}: no such file or directory")

    def symlink(self, path: str, target: str, uid: int, gid: int) -> None:
        """``path`` -> ``target``, owned by the caller, as s3fs-fuse stores a link."""
        self._writable(path)
        self._check_new(path, stream=False)
        self._busy_writing(path, "replace it")
        self.ns.symlink(path, target, uid, gid)

    def readlink(self, path: str) -> str:
        return self.ns.readlink(path)

    # -- the end ----------------------------------------------------------------------------
    def shutdown(self, grace: float) -> None:
        """Unmount: no new opens; writers get ``grace`` seconds to close, then are made
        durable and left incomplete; readers are closed. Idempotent."""
        first = not self._closing
        self._closing = True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(w.is_open for w in self.handles.writers()):
            time.sleep(0.1)
        for w in self.handles.writers():
            if w.is_open:
                if not w.abort_for_shutdown(lock_timeout=max(1.0, deadline - time.monotonic())):
                    log.warning("%s: still busy at unmount (a commit or upload in progress)", w.where)
        for r in self.handles.readers():
            r.abort_for_shutdown()
        if first:
            log.info("s3://%s/%s: no longer accepting new files", self.bucket, self.ns.prefix)

    def wait_idle(self, timeout: float) -> bool:
        """Wait for release work (final commits) to finish; True when all done."""
        deadline = time.monotonic() + timeout
        while any(w.is_releasing for w in self.handles.writers()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        self.ns.attrs_behind.flush()
        self.ns.folder_attrs.flush()
        self.ns.deletes.flush()
        return True

    def close(self) -> None:
        """After the loop ended: stop the release pool (its work is done or abandoned)."""
        with self._releaser_lock:
            pools = [self._releaser, self._follow_pool]
            self._releaser = self._follow_pool = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.ns.attrs_behind.close()
        self.ns.folder_attrs.close()
        self.ns.deletes.close()


def _kept(entry: Entry, attrs: dict) -> bool:
    """Whether ``entry`` shows the attributes just stored (some servers drop a directory
    marker's metadata)."""
    return all(getattr(entry, k) == (v & 0o7777 if k == "mode" else v) for k, v in attrs.items())


def _version(reader) -> tuple | None:
    """What identifies the bytes a reader serves: changes whenever the content may have."""
    plan = getattr(reader, "plan", None)
    m = getattr(plan, "manifest", None)
    if m is not None:
        return ("stream", m.writer_id, m.upload_ended, m.total_size, m.num_segments, m.completed)
    info = getattr(plan, "info", None)
    if info is not None:
        return ("object", info.etag, info.size, info.last_modified)
    return None


# errno of the conditions the adapter treats as routine (not worth a warning in the log).
QUIET_ERRNOS = frozenset({_errno.ENOENT, _errno.EEXIST, _errno.ENOTEMPTY, _errno.EINTR})
