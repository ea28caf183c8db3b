"""A local file or a pipe -> one plain object: a single PUT when it fits one part, else a
multipart upload (``Multipart``, shared with URL sources) that sends parts from
``workers`` threads and can resume an unfinished upload."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import math
import os
import threading

from s3pipefs import errors
from s3pipefs.engine import parts
from s3pipefs.engine.parts import UPLOAD_PART
from s3pipefs.engine.transfer.common import Result, guess_type, multipart_etag, read_full
from s3pipefs.s3 import ObjectStore, b64 as _b64

log = logging.getLogger(__name__)


class Multipart:
    """One multipart upload: create or resume it, send parts in parallel, complete it."""

    def __init__(self, store: ObjectStore, bucket: str, key: str, *, workers: int,
                 metadata=None, content_type=None, sse_key=None, resume=False, progress=None):
        self.store, self.bucket, self.key = store, bucket, key
        self.where = f"s3://{bucket}/{key}"
        self.sse = sse_key
        self.progress = progress
        self.md5s: dict[int, bytes] = {}
        self.sizes: dict[int, int] = {}
        self.existing: dict[int, dict] = {}
        self.upload_id = ""
        self.result = Result()
        self._lock = threading.Lock()
        if resume:
            self.upload_id = find_upload(store, bucket, key) or ""
            if self.upload_id:
                for p in store.mpu_parts(bucket, key, self.upload_id):
                    self.existing[p["PartNumber"]] = p
                log.info("%s: resuming upload %s with %d parts there", self.where, self.upload_id, len(self.existing))
        if not self.upload_id:
            self.upload_id = store.mpu_create(bucket, key, metadata=metadata or None,
                                              content_type=content_type, sse_key=sse_key)
        self.result.upload_id = self.upload_id
        self.pool = cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="s3pipefs-up")
        self.slots = threading.BoundedSemaphore(max(1, workers) + 1)
        self.futures: list[cf.Future] = []

    def landed_size(self) -> int | None:
        """Size of part 1 of a resumed upload: the part size it was started with."""
        p = self.existing.get(1)
        return p["Size"] if p else None

    def has(self, number: int, size: int, md5: bytes | None = None) -> bool:
        """True when part ``number`` is already uploaded with this size (and MD5, if given)."""
        p = self.existing.get(number)
        if p is None or p["Size"] != size:
            return False
        etag = p["ETag"].strip('"').lower()
        if md5 is not None and etag != md5.hex():
            return False
        return True

    def skip(self, number: int, size: int, md5: bytes | None) -> None:
        with self._lock:
            self.md5s[number] = md5 if md5 is not None else bytes.fromhex(self.existing[number]["ETag"].strip('"'))
            self.sizes[number] = size
            self.result.skipped_parts += 1
            self.result.size += size
        if self.progress:
            self.progress(size)

    def submit(self, number: int, data_fn) -> None:
        """Upload part ``number``; ``data_fn()`` returns its bytes (runs in the worker)."""
        self.slots.acquire()
        try:
            self._raise_failed()
            fut = self.pool.submit(self._send, number, data_fn)
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(lambda f: self.slots.release())
        self.futures.append(fut)

    def _raise_failed(self) -> None:
        for f in self.futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()

    def _send(self, number: int, data_fn) -> None:
        data = data_fn()
        if data is None:  # the producer decided the part is already there
            return
        md5 = hashlib.md5(data).digest()
        etag = self.store.mpu_part(self.bucket, self.key, self.upload_id, number, data,
                                   md5=_b64(md5), sse_key=self.sse)
        if not self.sse and etag.strip('"').lower() != md5.hex():
            raise errors.IntegrityError(f"{self.where}: part {number} stored with ETag {etag}, sent MD5 {md5.hex()}")
        with self._lock:
            self.md5s[number] = md5
            self.sizes[number] = len(data)
            self.result.sent += len(data)
            self.result.size += len(data)
        if self.progress:
            self.progress(len(data))

    def complete(self, count: int) -> Result:
        for f in self.futures:
            f.result()
        self.pool.shutdown(wait=True)
        missing = [n for n in range(1, count + 1) if n not in self.md5s]
        if missing:
            raise errors.S3PipeError(f"{self.where}: parts {missing[:5]} missing before completion")
        etags = [f'"{self.md5s[n].hex()}"' for n in range(1, count + 1)]
        etag = self.store.mpu_complete(self.bucket, self.key, self.upload_id, etags)
        want = multipart_etag([self.md5s[n] for n in range(1, count + 1)])
        if not self.sse and "-" in etag and etag.strip('"') != want:
            raise errors.IntegrityError(f"{self.where}: completed with ETag {etag}, expected {want}")
        self.result.parts = count
        self.result.etag = etag
        return self.result

    def fail(self, keep: bool) -> None:
        for f in self.futures:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if keep:
            return
        try:
            self.store.mpu_abort(self.bucket, self.key, self.upload_id)
        except errors.S3PipeError as e:
            log.warning("%s (`s3pipefs abort %s` removes the unfinished upload)", e, self.where)


def find_upload(store: ObjectStore, bucket: str, key: str) -> str | None:
    """The newest unfinished multipart upload for exactly ``key``."""
    ups = [u for u in store.mpu_list(bucket, key) if u.get("Key") == key]
    if not ups:
        return None
    ups.sort(key=lambda u: u.get("Initiated") or 0)
    return ups[-1]["UploadId"]


def resume_hint(where: str, kept: bool) -> str:
    return (f"; the unfinished upload was kept: continue with --resume, or cancel it with "
            f"`s3pipefs abort {where}`") if kept else ""


def upload_file(store: ObjectStore, src, bucket: str, key: str, *, workers: int = 8, part_size: int = UPLOAD_PART,
                content_type: str | None = None, metadata: dict | None = None, sse_key: bytes | None = None,
                resume: bool = False, keep_on_failure: bool = True, progress=None) -> Result:
    """Upload a local file (a path) or a pipe (a binary file object) as one plain object."""
    where = f"s3://{bucket}/{key}"
    if isinstance(src, (str, os.PathLike)):
        try:
            f = open(src, "rb")
        except OSError as e:
            raise errors.S3PipeError(f"{src}: {e.strerror}") from None
        with f:
            return upload_file(store, f, bucket, key, workers=workers, part_size=part_size,
                               content_type=content_type or guess_type(os.fspath(src)), metadata=metadata,
                               sse_key=sse_key, resume=resume, keep_on_failure=keep_on_failure,
                               progress=progress)
    size = _file_size(src)
    psize = parts.part_size(size, part_size)
    if size is not None and size <= psize and not resume:
        data = _pread(src, 0, size) if size else b""
        return put_one(store, bucket, key, data, content_type, metadata, sse_key, progress)
    first = None
    if size is None and not resume:
        # A pipe: a first short part means one PUT is enough.
        first = read_full(src, psize)
        if len(first) < psize:
            return put_one(store, bucket, key, first, content_type, metadata, sse_key, progress)
    mp = Multipart(store, bucket, key, workers=workers, metadata=metadata,
                   content_type=content_type, sse_key=sse_key, resume=resume, progress=progress)
    if mp.landed_size():
        psize = mp.landed_size() if mp.existing.get(2) or size is None or size > mp.landed_size() else psize
    try:
        if size is not None:
            count = max(1, math.ceil(size / psize))
            fd = src.fileno()
            for n in range(1, count + 1):
                off = (n - 1) * psize
                length = min(psize, size - off)
                if n in mp.existing and mp.has(n, length):
                    md5 = hashlib.md5(_pread(src, off, length)).digest()
                    if mp.has(n, length, md5):
                        mp.skip(n, length, md5)
                        continue
                mp.submit(n, lambda off=off, length=length: os.pread(fd, length, off))
        else:
            n = 0
            while True:
                data = first if first is not None else read_full(src, psize)
                first = None
                if not data and n > 0:
                    break
                n += 1
                md5 = hashlib.md5(data).digest()
                if mp.has(n, len(data), md5):
                    mp.skip(n, len(data), md5)
                else:
                    mp.submit(n, lambda data=data: data)
                if len(data) < psize:
                    break
            count = n
        return mp.complete(count)
    except BaseException as e:
        mp.fail(keep_on_failure)
        if isinstance(e, errors.S3PipeError):
            raise type(e)(f"{e}{resume_hint(where, keep_on_failure)}") from None
        raise


def put_one(store, bucket, key, data, content_type, metadata, sse_key, progress) -> Result:
    md5 = hashlib.md5(data).digest()
    meta = dict(metadata or {})
    etag = store.put(bucket, key, data, md5=_b64(md5), content_type=content_type,
                     metadata=meta or None, sse_key=sse_key, quick=True)
    if progress:
        progress(len(data))
    return Result(size=len(data), sent=len(data), parts=0, etag=etag, md5=md5.hex())


def _file_size(f) -> int | None:
    """Size of a regular file opened as ``f`` (from its current position), None for pipes."""
    try:
        st = os.fstat(f.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    import stat as _stat

    if not _stat.S_ISREG(st.st_mode):
        return None
    return st.st_size


def _pread(f, off: int, length: int) -> bytes:
    out = bytearray()
    fd = f.fileno()
    while len(out) < length:
        b = os.pread(fd, length - len(out), off + len(out))
        if not b:
            raise errors.S3PipeError(f"{getattr(f, 'name', 'input')}: file shrank while being read")
        out += b
    return bytes(out)
