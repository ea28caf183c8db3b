"""Moving bytes between S3 and the outside: local files, pipes and http(s) URLs.

Plain objects
    Upload: one PUT up to ``part_size``, else a multipart upload whose parts are read
    (``os.pread`` for files, sequentially for pipes) and sent by ``workers`` threads, each
    with Content-MD5; at most ``workers + 1`` parts are in memory. Download: ranged GETs in
    parallel, written in order through a sliding window (same bound), the whole-object MD5
    checked when the ETag is one.
Streams
    Through the engine: a StreamWriter fed in big chunks, a Reader drained in order. The
    engine does the parallelism, verification and commit.
http(s) URLs (as S3AM does)
    A first ``GET`` with ``Range: bytes=0-0`` tells whether the server serves ranges. If it
    does, parts are fetched with parallel ranged GETs (``If-Range`` on the server's
    validator, so a file that changes mid-transfer is caught); if not, that same response
    is read once, start to end, and cut into parts as it arrives.
Resume (``resume=True``)
    Objects: the newest unfinished multipart upload for the key is continued. Parts already
    there are listed; a local file's or a pipe's part is re-read and skipped when its MD5
    equals the part's ETag. For a ranged URL, parts are not fetched again; one landed part
    is fetched back and compared so that a source that changed since is refused. A
    non-range URL is read again from the start, but landed parts are not re-uploaded.
    Streams: the writer's resume mode, which checks the input from its start against the
    digest chain of the segments already uploaded and uploads only the rest.

A failed upload is left in place for ``--resume`` and named in the error; ``s3pipefs abort``
cancels it. Every S3 call is retried by the store's policy (s3/retry.py); the reads of an
http(s) source by a RetryPolicy of their own (``retrier``).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import logging
import math
import mimetypes
import os
import re
import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from s3pipefs import errors
from s3pipefs.config import MiB
from s3pipefs.s3 import ObjectInfo, ObjectStore, b64 as _b64
from s3pipefs.s3.retry import RetryPolicy, TransientError

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
MIN_PART = 5 * MiB
# Why 8 MiB: large enough that a ranged GET's latency is amortised on loopback and WAN,
# small enough that workers + 1 of them in flight stay well under 100 MiB.
DEFAULT_RANGE = 8 * MiB
# Chunks handed to a stream writer / read from a pipe.
CHUNK = 8 * MiB
URL_TIMEOUT = 60.0
USER_AGENT = "s3pipefs"


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


def part_size_for(size: int | None, wanted: int) -> int:
    """``wanted`` grown (MiB-aligned) so that ``size`` fits into 10,000 parts."""
    need = max(wanted, MIN_PART if size is None or size > wanted else 1)
    if size is not None:
        need = max(need, math.ceil(size / MAX_PARTS))
    return math.ceil(need / MiB) * MiB if need > MiB else need


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: md5(concat(part md5s))-N."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def guess_type(name: str) -> str | None:
    return mimetypes.guess_type(name, strict=False)[0]


# -- ordered parallel fetch ----------------------------------------------------------------------

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


# -- multipart upload core -------------------------------------------------------------------------

class _Multipart:
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


def _resume_hint(where: str, kept: bool) -> str:
    return (f"; the unfinished upload was kept: continue with --resume, or cancel it with "
            f"`s3pipefs abort {where}`") if kept else ""


# -- local file / pipe -> object ---------------------------------------------------------------------

def upload_file(store: ObjectStore, src, bucket: str, key: str, *, workers: int = 8, part_size: int = 32 * MiB,
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
    psize = part_size_for(size, part_size)
    if size is not None and size <= psize and not resume:
        data = _pread(src, 0, size) if size else b""
        return _put_one(store, bucket, key, data, content_type, metadata, sse_key, progress)
    first = None
    if size is None and not resume:
        # A pipe: a first short part means one PUT is enough.
        first = _read_full(src, psize)
        if len(first) < psize:
            return _put_one(store, bucket, key, first, content_type, metadata, sse_key, progress)
    mp = _Multipart(store, bucket, key, workers=workers, metadata=metadata,
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
                data = first if first is not None else _read_full(src, psize)
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
            raise type(e)(f"{e}{_resume_hint(where, keep_on_failure)}") from None
        raise


def _put_one(store, bucket, key, data, content_type, metadata, sse_key, progress) -> Result:
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


def _read_full(f, n: int) -> bytes:
    """Read exactly ``n`` bytes unless the input ends first (pipes return short reads)."""
    buf = bytearray()
    while len(buf) < n:
        b = f.read(n - len(buf))
        if not b:
            break
        buf += b
    return bytes(buf)


# -- object -> local file / pipe ---------------------------------------------------------------------

def download_object(store: ObjectStore, bucket: str, key: str, out, *, workers: int = 8,
                    part_size: int = DEFAULT_RANGE, info: ObjectInfo | None = None,
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
            _write_all(out, data)
            if h is not None:
                h.update(data)
            n += len(data)
            if progress:
                progress(len(data))
    if h is not None and h.hexdigest() != want.lower():
        raise errors.IntegrityError(f"{where}: MD5 of the downloaded data {h.hexdigest()} != {want}")
    return Result(size=n, sent=n, md5=h.hexdigest() if h else "")


def _write_all(out, data) -> None:
    try:
        out.write(data)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise errors.S3PipeError(f"{getattr(out, 'name', 'output')}: {e.strerror or e}") from None


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


# -- streams through the engine ---------------------------------------------------------------------

def upload_to_stream(engine, src, bucket: str, key: str, *, mode: str = "create", progress=None,
                     file_stat: os.stat_result | None = None) -> Result:
    """Write a pipe or file (binary file object or chunk iterator) as a stream; commit at the end.

    ``file_stat``: the source file's stat; its mtime and permission bits are stored with
    the stream, as a mount stores them for ``cp -p``.
    """
    w = engine.open_writer(bucket, key, mode=mode)
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


def download_stream(engine, bucket: str, key: str, out, *, follow: bool = False, progress=None) -> Result:
    """Write a stream to ``out`` in order; the engine's reader prefetches and verifies."""
    r = engine.open_reader(bucket, key, follow=follow)
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
            _write_all(out, piece)
            n += len(piece)
            if progress:
                progress(len(piece))
    finally:
        r.close()
    m = getattr(getattr(r, "plan", None), "manifest", None)
    return Result(size=n, sent=n, mtime_ns=getattr(m, "mtime_ns", None), mode=getattr(m, "mode", None))


# -- http(s) URL sources ----------------------------------------------------------------------------

@dataclass
class UrlSource:
    url: str
    size: int | None
    ranges: bool
    validator: str = ""        # ETag, else Last-Modified, for If-Range
    content_type: str | None = None
    response: object = None    # the open 200 response of a server without ranges
    timeout: float = URL_TIMEOUT
    headers: dict = field(default_factory=dict)

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None


def _http_error(url: str, e: BaseException) -> errors.S3PipeError:
    if isinstance(e, urllib.error.HTTPError):
        if e.code >= 500 or e.code in (408, 429):
            return TransientError(f"{url}: HTTP {e.code} {e.reason}")
        if e.code == 404:
            return errors.NotFound(f"{url}: HTTP 404 not found")
        if e.code in (401, 403):
            return errors.AccessDenied(f"{url}: HTTP {e.code} {e.reason}")
        return errors.S3PipeError(f"{url}: HTTP {e.code} {e.reason}")
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        if isinstance(reason, OSError) and not isinstance(reason, (ConnectionError, TimeoutError)):
            return errors.EndpointError(f"{url}: {getattr(reason, 'strerror', None) or reason}")
        return TransientError(f"{url}: {reason}")
    if isinstance(e, (ConnectionError, TimeoutError, OSError)):
        return TransientError(f"{url}: {type(e).__name__}: {e}")
    import http.client

    if isinstance(e, http.client.HTTPException):
        return TransientError(f"{url}: {type(e).__name__}")
    return errors.S3PipeError(f"{url}: {type(e).__name__}: {e}")


def _open(url: str, headers: dict, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only, checked by the caller
    except Exception as e:  # noqa: BLE001 - translated
        raise _http_error(url, e) from None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def open_url(url: str, *, timeout: float = URL_TIMEOUT, retrier: RetryPolicy | None = None) -> UrlSource:
    """Probe ``url`` with a one-byte ranged GET: a 206 means ranges, a 200 is kept as the body."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise errors.UsageError(f"{url}: only http:// and https:// URLs can be copied from")

    def probe():
        return _open(url, {"Range": "bytes=0-0"}, timeout)
    resp = (retrier or RetryPolicy()).call(probe)
    ctype = resp.headers.get("Content-Type")
    if ctype and ctype.split(";")[0].strip() in ("application/octet-stream", ""):
        ctype = None
    validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
    if validator.startswith("W/"):
        validator = ""  # weak ETags are not allowed in If-Range
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        resp.read()
        resp.close()
        if m and m.group(3) != "*":
            return UrlSource(url, int(m.group(3)), True, validator, ctype, timeout=timeout)
        raise errors.S3PipeError(f"{url}: server answered a range request without the total size")
    length = resp.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    return UrlSource(url, size, False, validator, ctype, response=resp, timeout=timeout)


def _fetch_range(src: UrlSource, a: int, b: int) -> bytes:
    """Bytes [a, b) of a range-capable URL, checked for position, length and source change."""
    headers = {"Range": f"bytes={a}-{b - 1}"}
    if src.validator:
        headers["If-Range"] = src.validator
    resp = _open(src.url, headers, src.timeout)
    try:
        if resp.status != 206:
            raise errors.S3PipeError(f"{src.url}: changed during the transfer (a range request got the whole file)")
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != a or int(m.group(2)) != b - 1:
            raise TransientError(f"{src.url}: asked for bytes {a}-{b - 1}, got {resp.headers.get('Content-Range')}")
        if m.group(3) != "*" and src.size is not None and int(m.group(3)) != src.size:
            raise errors.S3PipeError(f"{src.url}: size changed during the transfer")
        try:
            data = resp.read()
        except Exception as e:  # noqa: BLE001 - a body that broke mid-transfer
            raise _http_error(src.url, e) from None
        if len(data) != b - a:
            raise TransientError(f"{src.url}: range {a}-{b - 1} broke after {len(data)} bytes")
        return data
    finally:
        resp.close()


def _read_body(src: UrlSource, n: int) -> bytes:
    try:
        return _read_full(src.response, n)
    except errors.S3PipeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _http_error(src.url, e) from None


def url_to_object(store: ObjectStore, url: str, bucket: str, key: str, *, workers: int = 8,
                  part_size: int = 32 * MiB, content_type: str | None = None, metadata: dict | None = None,
                  sse_key: bytes | None = None, resume: bool = False, retrier: RetryPolicy | None = None,
                  progress=None, timeout: float = URL_TIMEOUT) -> Result:
    """Copy an http(s) URL to a plain object, parallel when the server serves ranges.
    ``retrier`` retries the URL's reads (the store retries its own requests)."""
    retrier = retrier or RetryPolicy()
    where = f"s3://{bucket}/{key}"
    src = open_url(url, timeout=timeout, retrier=retrier)
    ctype = content_type or src.content_type or guess_type(urllib.parse.urlsplit(url).path)
    try:
        if not src.ranges:
            # One streamed GET: the multipart/pipe path cuts it into parts as it arrives.
            reader = _BodyReader(src)
            return upload_file(store, reader, bucket, key, workers=workers, part_size=part_size,
                               content_type=ctype, metadata=metadata, sse_key=sse_key, resume=resume,
                               progress=progress)
        size = src.size
        psize = part_size_for(size, part_size)
        if size <= psize and not resume:
            data = retrier.call(_fetch_range, src, 0, size) if size else b""
            return _put_one(store, bucket, key, data, ctype, metadata, sse_key, progress)
        mp = _Multipart(store, bucket, key, workers=workers, metadata=metadata,
                        content_type=ctype, sse_key=sse_key, resume=resume, progress=progress)
        try:
            if mp.landed_size():
                psize = mp.landed_size() if mp.existing.get(2) or size > mp.landed_size() else psize
            count = max(1, math.ceil(size / psize))
            landed = [n for n in range(1, count + 1)
                      if mp.has(n, min(psize, size - (n - 1) * psize))]
            if landed:
                _check_unchanged(src, mp, landed[-1], psize, size, retrier)
            for n in range(1, count + 1):
                a, b = (n - 1) * psize, min(n * psize, size)
                if n in landed:
                    mp.skip(n, b - a, None)
                    continue
                mp.submit(n, lambda a=a, b=b: retrier.call(_fetch_range, src, a, b))
            return mp.complete(count)
        except BaseException as e:
            mp.fail(keep=True)
            if isinstance(e, errors.S3PipeError):
                raise type(e)(f"{e}{_resume_hint(where, True)}") from None
            raise
    finally:
        src.close()


def _check_unchanged(src: UrlSource, mp: _Multipart, n: int, psize: int, size: int, retrier: RetryPolicy) -> None:
    """Resume: fetch one landed part back; a source that changed since must start over."""
    a, b = (n - 1) * psize, min(n * psize, size)
    data = retrier.call(_fetch_range, src, a, b)
    if not mp.has(n, b - a, hashlib.md5(data).digest()):
        raise errors.S3PipeError(
            f"{src.url}: changed since the interrupted transfer (part {n} differs); "
            f"start over without --resume (`s3pipefs abort s3://{mp.bucket}/{mp.key}` removes the old upload)")


class _BodyReader:
    """A file-like view of a URL response whose read errors become S3PipeErrors."""

    def __init__(self, src: UrlSource):
        self.src = src
        self.name = src.url
        self.got = 0

    def read(self, n: int = -1) -> bytes:
        try:
            b = self.src.response.read(n) if n >= 0 else self.src.response.read()
        except Exception as e:  # noqa: BLE001
            raise _http_error(self.src.url, e) from None
        self.got += len(b)
        if not b and n != 0 and self.src.size is not None and self.got < self.src.size:
            # http.client returns a short body silently when the connection drops.
            raise TransientError(f"{self.src.url}: transfer broke after {self.got} of {self.src.size} bytes")
        return b

    def fileno(self):
        raise OSError("not a file")


def url_chunks(url: str, *, workers: int = 8, part_size: int = DEFAULT_RANGE, retrier: RetryPolicy | None = None,
               timeout: float = URL_TIMEOUT):
    """The bytes of ``url`` in order, as chunks: parallel ranged GETs when possible."""
    retrier = retrier or RetryPolicy()
    src = open_url(url, timeout=timeout, retrier=retrier)
    try:
        if not src.ranges:
            reader = _BodyReader(src)
            while True:
                b = reader.read(CHUNK)
                if not b:
                    break
                yield b
            return
        ranges = [(a, min(a + part_size, src.size)) for a in range(0, src.size, part_size)]
        with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="s3pipefs-url") as pool:
            yield from ordered(pool, lambda r: retrier.call(_fetch_range, src, *r), ranges, max(1, workers) + 1)
    finally:
        src.close()


def url_to_stream(engine, url: str, bucket: str, key: str, *, workers: int = 8, part_size: int = DEFAULT_RANGE,
                  resume: bool = False, retrier: RetryPolicy | None = None, progress=None,
                  timeout: float = URL_TIMEOUT) -> Result:
    """Copy an http(s) URL into a stream. Resume re-reads the URL but re-uploads nothing landed."""
    chunks = _counted(url_chunks(url, workers=workers, part_size=part_size, retrier=retrier, timeout=timeout))
    return upload_to_stream(engine, chunks, bucket, key, mode="resume" if resume else "create", progress=progress)


def _counted(gen):
    """Close the generator (and its pool/response) even when the consumer stops early."""
    try:
        yield from gen
    finally:
        gen.close()
