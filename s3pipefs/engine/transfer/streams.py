"""A file or pipe <-> a stream, through the engine's StreamWriter and Reader (which do the
parallelism, the verification and the commit)."""
from __future__ import annotations

import hashlib
import os
import stat

from s3pipefs import errors
from s3pipefs.engine.transfer.common import CHUNK, Result, write_all


def upload_to_stream(engine, src, bucket: str, key: str, *, mode: str = "create", progress=None,
                     file_stat: os.stat_result | None = None, request=None) -> Result:
    """Write a pipe or file (binary file object or chunk iterator) as a stream; commit at the end.

    ``file_stat``: the source file's stat; its mtime and permission bits are stored with
    the stream, as a mount stores them for ``cp -p``. ``request``: the stream's request
    options (None: the engine's).
    """
    w = engine.open_writer(bucket, key, mode=mode, request=request)
    if file_stat is not None:
        w.mtime_ns, w.mode = file_stat.st_mtime_ns, stat.S_IMODE(file_stat.st_mode)
    n = 0
    h = hashlib.md5()
    try:
        chunks = iter(lambda: src.read(CHUNK), b"") if hasattr(src, "read") else src
        for chunk in chunks:
            if not chunk:
                continue
            w.write(chunk)
            h.update(chunk)
            n += len(chunk)
            if progress:
                progress(len(chunk))
        w.close()
    except BaseException:
        w.abort()
        raise
    return Result(size=n, sent=n, md5=h.hexdigest())


def download_stream(engine, bucket: str, key: str, out, *, follow: bool = False, progress=None,
                    request=None) -> Result:
    """Write a stream to ``out`` in order; the engine's reader prefetches and verifies.
    ``request``: the stream's request options (None: the engine's)."""
    r = engine.open_reader(bucket, key, follow=follow, request=request)
    n = 0
    try:
        if not follow and not getattr(r, "complete", True):
            raise errors.StreamIncomplete(f"s3://{bucket}/{key}: stream is incomplete "
                                          f"({getattr(r, 'size', 0)} bytes so far); --follow reads it as it grows")
        if hasattr(r, "chunks"):
            it = r.chunks(0)
        else:
            def gen():
                off = 0
                while True:
                    b = r.read(off, CHUNK)
                    if not b:
                        return
                    off += len(b)
                    yield b
            it = gen()
        for piece in it:
            write_all(out, piece)
            n += len(piece)
            if progress:
                progress(len(piece))
    finally:
        r.close()
    m = getattr(getattr(r, "plan", None), "manifest", None)
    return Result(size=n, sent=n, mtime_ns=getattr(m, "mtime_ns", None), mode=getattr(m, "mode", None))
