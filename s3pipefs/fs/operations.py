"""The mfusepy Operations adapter: unwrap, call Filesystem, map errors. Nothing else.

Every method is wrapped by ``_op``, the one place an exception becomes an errno (through
``s3pipefs.errors.errno_of``) and a one-line log entry: routine misses (ENOENT on lookup,
EEXIST, ENOTEMPTY) at debug level, everything else as a warning naming the operation,
the path and what went wrong; an unexpected exception (a bug) with its traceback.

``raw_fi`` is on so open/create can set ``direct_io`` and ``keep_cache`` per file; the
file handle number lives in ``fi.fh``.
"""
from __future__ import annotations

import errno as _errno
import functools
import logging
from typing import Callable

from s3pipefs import errors
from s3pipefs.fs import fuselib, holders, names
from s3pipefs.fs.filesystem import QUIET_ERRNOS, Filesystem, Opened

log = logging.getLogger(__name__)


def _op(fn):
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self, path, *args):
        fuselib.keep_thread_state()
        try:
            return fn(self, path, *args)
        except fuselib.FuseOSError:
            raise
        except Exception as e:  # noqa: BLE001 - the single errno mapping
            err = errors.errno_of(e)
            shown = names.shown(str(path))
            if not isinstance(e, (errors.S3PipeError, OSError)):
                log.exception("%s %s: internal error: %s", name, shown, e)
            elif err in QUIET_ERRNOS or (err == _errno.ENOENT and name in ("getattr", "open")):
                log.debug("%s %s: %s", name, shown, names.shown(str(e)))
            else:
                log.warning("%s %s: %s [%s]", name, shown, names.shown(str(e)), _errno.errorcode.get(err, err),
                            exc_info=self.debug)
            raise fuselib.FuseOSError(err) from None
    return wrapper


def _fh(fi) -> int | None:
    """With raw_fi, mfusepy passes the fuse_file_info (or None for path-only calls)."""
    if fi is None:
        return None
    return fi if isinstance(fi, int) else fi.fh


def _owner(fi) -> int | None:
    """The kernel's id of the calling process's file table (0/None when not given)."""
    return getattr(fi, "lock_owner", None) or None


class Operations(fuselib.Operations):
    use_ns = True  # st_*time in nanoseconds

    def __init__(self, fs: Filesystem, *, on_init: Callable[[], None] | None = None,
                 on_destroy: Callable[[], None] | None = None, debug: bool = False, mountpoint: str = ""):
        self.fs = fs
        self.mountpoint = mountpoint  # resolved, as /proc names files under it (fs/holders.py)
        self.on_init = on_init
        self.on_destroy = on_destroy
        self.debug = debug

    # -- lifecycle ---------------------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        if conn is not None and fuselib.MAJOR >= 3:
            # Ask for the largest requests the kernel allows (libfuse 2 takes -o max_write).
            conn.max_write = fuselib.MAX_REQUEST
        if self.on_init is not None:
            self.on_init()

    def destroy(self, path) -> None:
        if self.on_destroy is not None:
            self.on_destroy()

    # -- attributes --------------------------------------------------------------------------
    @_op
    def getattr(self, path, fh=None):
        return self.fs.getattr(path, _fh(fh))

    @_op
    def readdir(self, path, fh):
        return [(name, {"st_mode": mode}, 0) for name, mode in self.fs.readdir(path)]

    @_op
    def statfs(self, path):
        return self.fs.statfs()

    @_op
    def chmod(self, path, mode):
        self.fs.set_mode(path, mode)
        return 0

    @_op
    def chown(self, path, uid, gid):
        self.fs.chown(path, uid, gid)
        return 0

    @_op
    def utimens(self, path, times=None):
        self.fs.set_times(path, times)
        return 0

    # -- files -------------------------------------------------------------------------------
    @staticmethod
    def _fill(fi, opened: Opened) -> int:
        fi.fh = opened.fh
        fi.direct_io = int(opened.direct_io)
        fi.keep_cache = int(opened.keep_cache)
        return 0

    @_op
    def open(self, path, fi):
        return self._fill(fi, self.fs.open(path, fi.flags))

    @_op
    def create(self, path, mode, fi):
        return self._fill(fi, self.fs.create(path, fi.flags, mode))

    @_op
    def read(self, path, size, offset, fi):
        return self.fs.read(_fh(fi), size, offset, fuselib.interrupted, _owner(fi))

    @_op
    def write(self, path, data, offset, fi):
        return self.fs.write(_fh(fi), data, offset, _owner(fi))

    @_op
    def truncate(self, path, length, fh=None):
        self.fs.truncate(path, length, _fh(fh))
        return 0

    @_op
    def fallocate(self, path, mode, offset, length, fi):
        self.fs.fallocate(_fh(fi), mode, offset, length)
        return 0

    @_op
    def flush(self, path, fi):
        # The lock owner tells which process closes: only its own writes make it commit.
        # A close of a created, unwritten file while the same process holds it open for
        # writing elsewhere (a shell's `cmd > f`) is not the file's close (fs/holders.py).
        pid = fuselib.context()[2]
        where = self.mountpoint + path if self.mountpoint and path else ""
        self.fs.flush(_fh(fi), _owner(fi),
                      held=lambda: bool(where) and holders.holds_for_writing(pid, where))
        return 0

    @_op
    def fsync(self, path, datasync, fi):
        self.fs.fsync(_fh(fi))
        return 0

    @_op
    def release(self, path, fi):
        self.fs.release(_fh(fi))
        return 0

    # -- the tree ----------------------------------------------------------------------------
    @_op
    def mkdir(self, path, mode):
        self.fs.mkdir(path, mode)
        return 0

    @_op
    def rmdir(self, path):
        self.fs.rmdir(path)
        return 0

    @_op
    def unlink(self, path):
        self.fs.unlink(path)
        return 0

    @_op
    def link(self, target, source):
        self.fs.link(source, target)
        return 0

    @_op
    def mknod(self, path, mode, dev):
        self.fs.mknod(path, mode)
        return 0

    @_op
    def symlink(self, path, target):
        # mfusepy passes the new link first, then what it points to (ln -s TARGET PATH).
        uid, gid, _ = fuselib.context()
        self.fs.symlink(path, target, uid, gid)
        return 0

    @_op
    def readlink(self, path):
        return self.fs.readlink(path)

    @_op
    def rename(self, old, new):
        self.fs.rename(old, new)
        return 0
