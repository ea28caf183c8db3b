"""A plain object -> a local file or a pipe: parallel ranged GETs written in order, the
whole-object MD5 checked when there is one; and the temp file renamed into place that
every download to a local path goes through."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import threading

from s3pipefs import errors
from s3pipefs.engine.parts import READ_RANGE
from s3pipefs.engine.transfer.common import Result, ordered, write_all
from s3pipefs.s3 import ObjectInfo, ObjectStore


def download_object(store: ObjectStore, bucket: str, key: str, out, *, workers: int = 8,
                    part_size: int = READ_RANGE, info: ObjectInfo | None = None,
                    sse_key: bytes | None = None, progress=None) -> Result:
    """Write a plain object to the binary file object ``out`` with parallel ranged GETs."""
    where = f"s3://{bucket}/{key}"
    if info is None:
        info = store.head(bucket, key, sse_key=sse_key)
        if info is None:
            raise errors.NotFound(f"{where}: no such object")
    # s3pipefs's md5 metadata holds under SSE too; an SSE-C ETag is no MD5 on AWS.
    want = info.metadata.get("md5") or (None if sse_key else info.plain_md5)
    h = hashlib.md5() if want else None
    ranges = [(a, min(a + part_size, info.size)) for a in range(0, info.size, part_size)]

    def fetch(r):
        a, b = r

        def check(data, got: ObjectInfo) -> None:  # a short range is fetched again
            if len(data) != b - a:
                raise errors.IntegrityError(f"{where}: range {a}-{b} returned {len(data)} bytes")
        data, got = store.get(bucket, key, a, b, sse_key=sse_key, verify=check)
        if info.etag and got.etag and got.etag != info.etag:
            raise errors.S3PipeError(f"{where}: object changed during the download")
        return data

    n = 0
    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="s3pipefs-get") as pool:
        for data in ordered(pool, fetch, ranges, max(1, workers) + 1):
            write_all(out, data)
            if h is not None:
                h.update(data)
            n += len(data)
            if progress:
                progress(len(data))
    if h is not None and h.hexdigest() != want.lower():
        raise errors.IntegrityError(f"{where}: MD5 of the downloaded data {h.hexdigest()} != {want}")
    return Result(size=n, sent=n, md5=h.hexdigest() if h else "")


def download_to_path(fn, path: str, *, mtime: float | None = None, mode: int = 0o644):
    """Run ``fn(fileobj)`` into a temp file next to ``path`` and rename it into place.

    The file gets ``mode`` and ``mtime``, or the stream attributes in fn's Result where
    they were stored (the umask applies to the mode, as for cp).
    """
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise errors.S3PipeError(f"{d}: {e.strerror}") from None
    tmp = os.path.join(d, f".{os.path.basename(path)}.s3pipefs-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            r = fn(f)
        os.chmod(tmp, (mode if r.mode is None else r.mode) & ~_umask())
        if r.mtime_ns is not None:
            os.utime(tmp, ns=(r.mtime_ns, r.mtime_ns))
        elif mtime:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise errors.S3PipeError(f"{path}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return r


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
