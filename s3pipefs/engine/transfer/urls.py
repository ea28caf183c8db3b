"""http(s) URL sources (see the package docstring): a one-byte probe tells whether the
server serves ranges; then parallel ranged GETs checked with If-Range, or the one
response read start to end. Into a plain object (resumable) or a stream."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from s3pipefs import errors
from s3pipefs.engine import parts
from s3pipefs.engine.parts import READ_RANGE, UPLOAD_PART
from s3pipefs.engine.transfer.common import CHUNK, Result, guess_type, ordered, read_full
from s3pipefs.engine.transfer.multipart import Multipart, put_one, resume_hint, upload_file
from s3pipefs.engine.transfer.streams import upload_to_stream
from s3pipefs.s3 import ObjectStore
from s3pipefs.s3.retry import RetryPolicy, TransientError

URL_TIMEOUT = 60.0
USER_AGENT = "s3pipefs"


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
        if isinstance(reason, OSError):
            # "connection refused", not "[Errno 111] Connection refused".
            what = (reason.strerror or str(reason)).lower()
            if isinstance(reason, (ConnectionError, TimeoutError)):
                return TransientError(f"{url}: {what}")
            return errors.EndpointError(f"{url}: {what}")
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
        return read_full(src.response, n)
    except errors.S3PipeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _http_error(src.url, e) from None


def url_to_object(store: ObjectStore, url: str, bucket: str, key: str, *, workers: int = 8,
                  part_size: int = UPLOAD_PART, content_type: str | None = None, metadata: dict | None = None,
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
        psize = parts.part_size(size, part_size)
        if size <= psize and not resume:
            data = retrier.call(_fetch_range, src, 0, size) if size else b""
            return put_one(store, bucket, key, data, ctype, metadata, sse_key, progress)
        mp = Multipart(store, bucket, key, workers=workers, metadata=metadata,
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
                raise type(e)(f"{e}{resume_hint(where, True)}") from None
            raise
    finally:
        src.close()


def _check_unchanged(src: UrlSource, mp: Multipart, n: int, psize: int, size: int, retrier: RetryPolicy) -> None:
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


def url_chunks(url: str, *, workers: int = 8, part_size: int = READ_RANGE, retrier: RetryPolicy | None = None,
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


def url_to_stream(engine, url: str, bucket: str, key: str, *, workers: int = 8, part_size: int = READ_RANGE,
                  resume: bool = False, retrier: RetryPolicy | None = None, progress=None,
                  timeout: float = URL_TIMEOUT, request=None) -> Result:
    """Copy an http(s) URL into a stream. Resume re-reads the URL but re-uploads nothing landed.
    ``request``: the stream's request options (None: the engine's)."""
    chunks = _counted(url_chunks(url, workers=workers, part_size=part_size, retrier=retrier, timeout=timeout))
    return upload_to_stream(engine, chunks, bucket, key, mode="resume" if resume else "create", progress=progress,
                            request=request)


def _counted(gen):
    """Close the generator (and its pool/response) even when the consumer stops early."""
    try:
        yield from gen
    finally:
        gen.close()
