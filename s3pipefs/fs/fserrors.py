"""Filesystem-only failures, as S3PipeError subclasses so errors.errno_of maps them too.

The engine never needs these: they describe POSIX situations (a directory where a file
was expected, an operation a stream cannot do) that exist only once S3 looks like a tree.
"""
from __future__ import annotations

import errno as _errno

from s3pipefs.errors import S3PipeError


class NotADirectory(S3PipeError):
    errno = _errno.ENOTDIR


class IsADirectory(S3PipeError):
    errno = _errno.EISDIR


class NotSupported(S3PipeError):
    """Something a sequential, append-only stream cannot do (truncate to 100, read via a writer)."""

    errno = _errno.EOPNOTSUPP


class CrossDevice(S3PipeError):
    """rename of a non-empty directory: mv(1) falls back to copy + delete on EXDEV."""

    errno = _errno.EXDEV


class PermissionDenied(S3PipeError):
    """Plain objects are read-only files."""

    errno = _errno.EACCES


class ShuttingDown(S3PipeError):
    """The mount is being unmounted: no new files are opened."""

    errno = _errno.ESHUTDOWN


class Removed(S3PipeError):
    """A write through a descriptor whose file was removed (the mount keeps no orphan)."""
    errno = _errno.ESTALE


class BadHandle(S3PipeError):
    errno = _errno.EBADF


class HandleStateError(BadHandle):
    """An operation the state of an open file does not allow (a write after its release):
    a bug in the caller, reported instead of being ignored."""


class NameTooLong(S3PipeError):
    """A name over 255 bytes, or an S3 key over 1024 (see names.py)."""

    errno = _errno.ENAMETOOLONG


class BadName(S3PipeError):
    """A name S3 or the server cannot store, or could not delete again (see names.py)."""

    errno = _errno.EINVAL


class NotALink(S3PipeError):
    """readlink of something that is no symbolic link."""

    errno = _errno.EINVAL
