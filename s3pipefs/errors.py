"""Exception hierarchy and the one place errors map to errno and exit status.

Every error the engine raises is an S3PipeError carrying a one-line message that names
what failed and where. The CLI prints ``str(err)`` and exits with ``err.exit_status``;
the FUSE layer raises ``FuseOSError(err.errno)``. Nothing here ever holds a secret.
"""
from __future__ import annotations

import errno as _errno


class S3PipeError(Exception):
    """Base: a failure with a user-facing one-line message."""

    errno = _errno.EIO
    exit_status = 1
    # S3 error code and HTTP status when the failure came from an S3 response.
    code: str = ""
    status: int | None = None


def one_line(err: Exception, prog: str) -> str:
    """The message as printed: the program's name once (usage errors start with it)."""
    text = str(err)
    return text if text.startswith((f"{prog}:", f"{prog} ")) else f"{prog}: {text}"


class UsageError(S3PipeError):
    errno = _errno.EINVAL
    exit_status = 2


class NotFound(S3PipeError):
    errno = _errno.ENOENT


class BucketNotFound(NotFound):
    pass


class AccessDenied(S3PipeError):
    errno = _errno.EACCES


class KeyNeeded(AccessDenied):
    """The data is encrypted (SSE-C or client-side) and no key was given for it."""


class WrongKey(AccessDenied):
    """A key was given, but not the one the data was encrypted with."""


class EndpointError(S3PipeError):
    """The endpoint could not be reached (DNS, refused, timeout)."""

    errno = _errno.EHOSTUNREACH


class Busy(S3PipeError):
    """Another writer holds the stream."""

    errno = _errno.EBUSY


class NotModified(S3PipeError):
    """A conditional read (If-None-Match) found the object still has the ETag it named (304)."""


class Exists(S3PipeError):
    errno = _errno.EEXIST


class NotEmpty(S3PipeError):
    errno = _errno.ENOTEMPTY


class SeekNotAllowed(S3PipeError):
    """A write at an offset other than the end of an append-only stream."""

    errno = _errno.ESPIPE


class ReadOnly(S3PipeError):
    errno = _errno.EROFS


class StreamIncomplete(S3PipeError):
    """A stream ended (or its writer went silent) before it was completed."""

    errno = _errno.EIO


class IntegrityError(S3PipeError):
    """Data did not match its checksum, after every retry."""

    errno = _errno.EIO


class ManifestError(S3PipeError):
    """A manifest that cannot be trusted: malformed, hostile or from the future."""

    errno = _errno.EIO


class StagingError(S3PipeError):
    """The staging directory is unusable or full."""

    errno = _errno.EIO

    def __init__(self, msg: str, err: int | None = None):
        super().__init__(msg)
        if err is not None:
            self.errno = err


class NoMemory(S3PipeError):
    """Refused up front because the configured memory bound would be exceeded."""

    errno = _errno.ENOMEM


class Interrupted(S3PipeError):
    errno = _errno.EINTR
    exit_status = 130


def errno_of(exc: BaseException) -> int:
    """The errno to report for any exception (the FUSE layer's single mapping)."""
    if isinstance(exc, S3PipeError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO
