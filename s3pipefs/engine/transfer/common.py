"""What every transfer shares: its Result, the multipart ETag formula, content types,
an ordered parallel map, and reading/writing whole buffers from pipes and files."""
from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import mimetypes
from dataclasses import dataclass

from s3pipefs import errors
from s3pipefs.config import MiB

# Chunks handed to a stream writer / read from a pipe.
CHUNK = 8 * MiB


@dataclass
class Result:
    size: int = 0
    sent: int = 0          # payload bytes this run actually uploaded (resume skips the rest)
    parts: int = 0
    skipped_parts: int = 0
    etag: str = ""
    upload_id: str = ""
    md5: str = ""          # whole-payload MD5 hex when it was computed on the way
    # A stream's stored attributes (set through a mount or by cp from a file), for the
    # local file a download makes; None: not stored.
    mtime_ns: int | None = None
    mode: int | None = None


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: md5(concat(part md5s))-N."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


# The type of a compressed file is its compression's: "x.tar.gz" is application/gzip. Its
# inner type with Content-Encoding: gzip would make HTTP clients unpack it on download.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
}


def guess_type(name: str) -> str | None:
    """The Content-Type for an object named ``name``, from its extension (None: unknown).
    No Content-Encoding is ever set: the object's bytes are the file's."""
    ctype, encoding = mimetypes.guess_type(name, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    return ctype


def ordered(pool: cf.Executor, fn, items, window: int):
    """Apply ``fn`` to ``items`` in parallel, yield results in order, ``window`` in flight."""
    pending: collections.deque = collections.deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def read_full(f, n: int) -> bytes:
    """Read exactly ``n`` bytes unless the input ends first (pipes return short reads)."""
    buf = bytearray()
    while len(buf) < n:
        b = f.read(n - len(buf))
        if not b:
            break
        buf += b
    return bytes(buf)


def write_all(out, data) -> None:
    try:
        out.write(data)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise errors.S3PipeError(f"{getattr(out, 'name', 'output')}: {e.strerror or e}") from None
