"""What the engine may ask of an object store: the ObjectStore interface and its values.

Everything above ``s3pipefs/s3`` takes an ObjectStore and uses only what is listed here.
Two implementations: ``store.Store`` (botocore, the real thing) and ``inmemory.MemoryStore``
(a dict, for fast tests of the engine).

The contract every implementation keeps:

* Failures are S3PipeErrors (errors.py), never a library's exceptions: ``NotFound`` (a
  missing key), ``BucketNotFound`` (a missing bucket, a subclass of NotFound),
  ``AccessDenied`` (403, or a wrong SSE-C key), ``Busy`` (a failed If-Match /
  If-None-Match: 412 or 409), ``NotModified`` (a conditional GET's object is unchanged: 304), ``IntegrityError`` (a body that failed its length, checksum
  or ``verify`` check), ``EndpointError`` (cannot reach the server, a broken connection),
  else ``S3PipeError``. Errors from an S3 reply carry ``.code`` and ``.status``.
* Each call is retried inside the store, under its one retry policy (s3/retry.py), and by
  nothing above it: transient failures and throttles a bounded number of times, permanent
  ones (NotFound, AccessDenied, Busy, other 4xx) never. ``stats`` counts what it did.
* ``sse_key`` arguments are the SSE-C key of that one request (``source_sse_key`` the
  copy source's); None or ``b""`` means none. A store has no key of its own: whoever sends a
  request says which key it carries, so one store serves callers with different keys. Above
  the store, the key travels in a ``RequestOptions``.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from s3pipefs import errors
from s3pipefs.config import S3Config
from s3pipefs.s3.retry import RetryStats

SSE_C_KEY_BYTES = 32  # AES-256


@dataclass(frozen=True)
class RequestOptions:
    """What travels with each request to one location besides its bucket and key.

    ``sse_key``: the SSE-C customer key (32 raw bytes) the objects there are encrypted
    with, ``b""`` for none. An Engine holds one (its readers, writers, leases and manifest
    reads all send it); a call reaching another location (a copy's source) is given that
    location's own. ``encrypt_key``: the client-side encryption key of the streams there
    (engine/crypto.py), which never leaves this process; it rides along for the same
    reason. Neither key shows in repr(), so a traceback or a debug log cannot leak it.
    """

    sse_key: bytes = b""
    encrypt_key: bytes = b""

    def __post_init__(self):
        if self.sse_key and len(self.sse_key) != SSE_C_KEY_BYTES:
            raise errors.UsageError(f"an SSE-C key must be {SSE_C_KEY_BYTES} bytes")
        if self.encrypt_key and len(self.encrypt_key) != SSE_C_KEY_BYTES:
            raise errors.UsageError(f"an encryption key must be {SSE_C_KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return (f"RequestOptions(sse_c={'yes' if self.sse_key else 'no'}, "
                f"encrypted={'yes' if self.encrypt_key else 'no'})")


@dataclass
class ObjectInfo:
    key: str
    size: int
    etag: str = ""
    last_modified: float = 0.0
    metadata: dict = field(default_factory=dict)
    content_type: str = ""

    @property
    def plain_md5(self) -> str | None:
        """The ETag when it is an MD5 of the body (single-part upload, no SSE-KMS/C)."""
        e = self.etag.strip('"').lower()
        if len(e) == 32 and all(c in "0123456789abcdef" for c in e):
            return e
        return None


def b64(digest: bytes) -> str:
    """A binary digest as the base64 text Content-MD5 and x-amz-checksum-* headers carry."""
    return base64.b64encode(digest).decode()


def every_page(list_page, bucket: str, prefix: str, delimiter: str | None, start_after: str | None,
               quick: bool) -> Iterator[ObjectInfo | str]:
    """ObjectStore.list() made of list_page() calls, page after page (each one request)."""
    token = None
    while True:
        items, token = list_page(bucket, prefix, delimiter, start_after, token, quick=quick)
        yield from items
        if token is None:
            return


# verify(data, info) runs inside each attempt of a get; an IntegrityError it raises has the
# body fetched again (another attempt), any other error ends the call.
Verify = Callable[[bytes, ObjectInfo], None]


class ObjectStore(Protocol):
    """The operations the engine uses; see the module docstring for the shared contract."""

    cfg: S3Config

    @property
    def stats(self) -> RetryStats:
        """Requests sent (every attempt counts), retries and throttles so far."""

    # -- reads ---------------------------------------------------------------------------
    def head(self, bucket: str, key: str, sse_key: bytes | None = None) -> ObjectInfo | None:
        """The object's info, or None when there is no such key."""

    def get(self, bucket: str, key: str, start: int | None = None, end: int | None = None,
            sse_key: bytes | None = None, *, verify: Verify | None = None,
            tries: int | None = None, if_none_match: str | None = None) -> tuple[bytes, ObjectInfo]:
        """Bytes [start, end) (the whole object when start is None; to the end when end is
        None) and the object's info (``size`` is the whole object's). NotFound when missing.
        ``verify`` as described at :data:`Verify`; ``tries`` bounds this call's transient
        failures instead of ``cfg.max_attempts``. ``if_none_match``: an ETag; when the
        object still has it, NotModified (S3 answers 304 and sends no body)."""

    def list(self, bucket: str, prefix: str = "", delimiter: str | None = None,
             start_after: str | None = None, quick: bool = False) -> Iterator[ObjectInfo | str]:
        """Every object under ``prefix`` after ``start_after``, in key order; with a
        ``delimiter``, common prefixes (str, ending in it) instead of what lies under them.
        BucketNotFound for a missing bucket. ``quick``: one of many small requests, which an
        implementation may send by a cheaper path."""

    def list_page(self, bucket: str, prefix: str = "", delimiter: str | None = None,
                  start_after: str | None = None, token: str | None = None, *,
                  max_keys: int | None = None, quick: bool = False) -> tuple[list, str | None]:
        """One page of list(): its items (at most ``max_keys``; common prefixes first) and
        the token of the next page, None after the last."""

    def any_key(self, bucket: str, prefix: str) -> bool:
        """True when at least one object lies under ``prefix``."""

    def bucket_exists(self, bucket: str) -> None:
        """Raise BucketNotFound / AccessDenied / EndpointError unless the bucket is usable."""

    def bucket_seen(self, bucket: str) -> None:
        """bucket_exists, asked of the server at most once per bucket and store."""

    # -- writes --------------------------------------------------------------------------
    def put(self, bucket: str, key: str, body, *, md5: str | None = None, crc32: str | None = None,
            length: int | None = None, metadata: dict | None = None, content_type: str | None = None,
            if_none_match: bool = False, if_match: str | None = None,
            sse_key: bytes | None = None, quick: bool = False, tries: int | None = None) -> str:
        """Store ``body`` (bytes, or a file object read from its current position, rewound
        before each attempt); returns the ETag. ``md5``/``crc32`` (base64) are checked by the
        server: IntegrityError when the body it received differs.
        Conditional PUT: ``if_none_match`` writes only when the key does not exist,
        ``if_match`` only when its ETag is that one; otherwise Busy. A retried conditional
        PUT whose first reply was lost fails with Busy against its own write: the caller
        tells that apart by reading the object back (engine/manifests.py ``save``)."""

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str, *,
             metadata: dict | None = None, content_type: str | None = None,
             source_sse_key: bytes | None = None, sse_key: bytes | None = None, quick: bool = False) -> str:
        """Server-side copy of an object up to 5 GB (metadata kept unless given; given, it
        replaces the source's, and so does ``content_type``, else the copy's is the
        server's default); the new ETag. NotFound when the source is missing."""

    def delete(self, bucket: str, key: str) -> None:
        """Delete one key; deleting a missing key is no error."""

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Delete keys (missing ones are no error); raise on the first key refused."""

    def create_bucket(self, bucket: str) -> None:
        """Create a bucket."""

    # -- multipart -----------------------------------------------------------------------
    def mpu_create(self, bucket: str, key: str, *, metadata: dict | None = None,
                   content_type: str | None = None, sse_key: bytes | None = None) -> str:
        """Start a multipart upload; its upload id."""

    def mpu_part(self, bucket: str, key: str, upload_id: str, number: int, body, md5: str | None = None,
                 sse_key: bytes | None = None) -> str:
        """Upload part ``number`` (1-based); its ETag (the part's MD5 without SSE)."""

    def mpu_part_copy(self, src_bucket: str, src_key: str, bucket: str, key: str, upload_id: str,
                      number: int, start: int, end: int, source_sse_key: bytes | None = None,
                      sse_key: bytes | None = None) -> str:
        """Copy bytes [start, end) of another object as part ``number``; its ETag."""

    def mpu_complete(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> str:
        """Join parts 1..len(etags) into the object; its ETag (``md5-of-part-md5s-N``)."""

    def mpu_abort(self, bucket: str, key: str, upload_id: str) -> None:
        """Cancel an upload and drop its parts."""

    def mpu_list(self, bucket: str, prefix: str = "") -> Iterator[dict]:
        """Unfinished uploads under a prefix: dicts with Key, UploadId, Initiated."""

    def mpu_parts(self, bucket: str, key: str, upload_id: str) -> list[dict]:
        """The parts uploaded so far: dicts with PartNumber, Size, ETag."""
