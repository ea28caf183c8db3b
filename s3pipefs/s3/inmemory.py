"""An ObjectStore in memory, for fast tests of the engine without a server.

It keeps the contract of s3/interface.py as S3 does, where the engine depends on it:
conditional PUTs (If-None-Match: "*", If-Match: ETag) that fail with Busy; conditional
GETs (If-None-Match: ETag) that answer NotModified; NotFound and
BucketNotFound; ranged GETs with the whole object's size in the info; Content-MD5 and
CRC32 checked on upload; listings in key order, in pages, with common prefixes for a
delimiter; multipart uploads with S3's ETags (MD5 of the part MD5s, "-N"); SSE-C keys that
must match the one an object was written with. Every call runs under a RetryPolicy (with
no delays), so ``verify`` hooks and ``tries`` behave as on the real store, and ``stats``
counts requests.

Not modelled: consistency delays, throttling, network failures, eventual listings.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from s3pipefs import errors
from s3pipefs.checksum import crc32 as _crc32
from s3pipefs.config import S3Config
from s3pipefs.s3.interface import ObjectInfo, Verify, b64, every_page
from s3pipefs.s3.retry import RetryPolicy, RetryStats

PAGE = 1000  # keys per listing page, as S3's default


@dataclass
class _Object:
    data: bytes
    etag: str
    metadata: dict
    content_type: str
    sse_key: bytes
    last_modified: float = field(default_factory=time.time)

    def info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.data), self.etag, self.last_modified, dict(self.metadata), self.content_type)


@dataclass
class _Upload:
    bucket: str
    key: str
    metadata: dict
    content_type: str
    sse_key: bytes
    initiated: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    parts: dict = field(default_factory=dict)  # number -> (data, md5 hex)


def _where(bucket: str, key: str | None) -> str:
    return f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"


def _read_body(body, length: int | None) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    return body.read() if length is None else body.read(length)


class MemoryStore:
    """An ObjectStore whose buckets are dicts; see the module docstring."""

    def __init__(self, cfg: S3Config | None = None):
        self.cfg = cfg or S3Config()
        self.retry = RetryPolicy(self.cfg.max_attempts, base=0.0)
        self._buckets: dict[str, dict[str, _Object]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._seen: set[str] = set()
        self._lock = threading.RLock()

    @property
    def stats(self) -> RetryStats:
        return self.retry.stats

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _key_of(given: bytes | None) -> bytes:
        return given or b""

    def _bucket(self, bucket: str, key: str | None = None, action: str = "") -> dict[str, _Object]:
        try:
            return self._buckets[bucket]
        except KeyError:
            doing = f"{action} " if action else ""
            raise errors.BucketNotFound(f"{doing}{_where(bucket, key)}: no such bucket '{bucket}'") from None

    def _object(self, bucket: str, key: str, sse_key: bytes | None, action: str) -> _Object:
        obj = self._bucket(bucket, key, action).get(key)
        if obj is None:
            raise errors.NotFound(f"{action} {_where(bucket, key)}: not found")
        if obj.sse_key != self._key_of(sse_key):
            raise errors.AccessDenied(f"{action} {_where(bucket, key)}: refused; is the SSE-C key the one "
                                      "it was written with?")
        return obj

    # -- reads -----------------------------------------------------------------------------
    def head(self, bucket: str, key: str, sse_key: bytes | None = None) -> ObjectInfo | None:
        def once():
            with self._lock:
                if key not in self._buckets.get(bucket, {}):
                    return None  # S3 answers a HEAD of a missing bucket with a bare 404 too
                return self._object(bucket, key, sse_key, "head").info(key)
        return self.retry.call(once)

    def get(self, bucket: str, key: str, start: int | None = None, end: int | None = None,
            sse_key: bytes | None = None, *, verify: Verify | None = None,
            tries: int | None = None, if_none_match: str | None = None) -> tuple[bytes, ObjectInfo]:
        if start is not None and end is not None and end <= start:
            return b"", ObjectInfo(key, 0)

        def once():
            with self._lock:
                obj = self._object(bucket, key, sse_key, "read")
                if if_none_match and obj.etag.strip('"') == if_none_match.strip('"'):
                    raise errors.NotModified(f"read {_where(bucket, key)}: not modified")
            if start is not None and start >= len(obj.data) and len(obj.data):
                raise errors.S3PipeError(f"read {_where(bucket, key)}: range not satisfiable")
            data = obj.data if start is None else obj.data[start:end]
            info = obj.info(key)
            if verify is not None:
                verify(data, info)
            return data, info
        return self.retry.call(once, tries=tries)

    def list(self, bucket: str, prefix: str = "", delimiter: str | None = None,
             start_after: str | None = None, quick: bool = False) -> Iterator[ObjectInfo | str]:
        return every_page(self.list_page, bucket, prefix, delimiter, start_after, quick)

    def list_page(self, bucket: str, prefix: str = "", delimiter: str | None = None,
                  start_after: str | None = None, token: str | None = None, *,
                  max_keys: int | None = None, quick: bool = False) -> tuple[list, str | None]:
        return self.retry.call(self._list_page, bucket, prefix, delimiter, start_after, token, max_keys)

    def _list_page(self, bucket, prefix, delimiter, start_after, token, max_keys) -> tuple[list, str | None]:
        limit = max_keys or PAGE
        with self._lock:  # a snapshot: writers may change the bucket while the page is made
            objects = {k: o for k, o in self._bucket(bucket, prefix, "list").items() if k.startswith(prefix)}
        keys = sorted(objects)
        after = token or start_after or ""
        # A page that ended with a common prefix: its keys were listed as that prefix.
        covered = token if token and delimiter and token.endswith(delimiter) else None
        prefixes: list[str] = []
        found: list[ObjectInfo] = []
        for k in keys:
            if k <= after or (covered and k.startswith(covered)):
                continue
            if len(prefixes) + len(found) == limit:
                return prefixes + found, after  # the last item of this page is the next token
            cut = k.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                after = covered = k[:cut + len(delimiter)]
                prefixes.append(covered)
            else:
                o = objects[k]
                found.append(ObjectInfo(k, len(o.data), o.etag, o.last_modified))
                after = k
        return prefixes + found, None

    def any_key(self, bucket: str, prefix: str) -> bool:
        items, _ = self.list_page(bucket, prefix, max_keys=1)
        return bool(items)

    def bucket_exists(self, bucket: str) -> None:
        def once():
            with self._lock:
                self._bucket(bucket, None, "open")
                self._seen.add(bucket)
        self.retry.call(once)

    def bucket_seen(self, bucket: str) -> None:
        if bucket not in self._seen:
            self.bucket_exists(bucket)

    # -- writes ----------------------------------------------------------------------------
    def put(self, bucket: str, key: str, body, *, md5: str | None = None, crc32: str | None = None,
            length: int | None = None, metadata: dict | None = None, content_type: str | None = None,
            if_none_match: bool = False, if_match: str | None = None,
            sse_key: bytes | None = None, quick: bool = False, tries: int | None = None) -> str:
        start = body.tell() if hasattr(body, "seek") else None

        def once():
            if start is not None:
                body.seek(start)
            data = _read_body(body, length)
            where = _where(bucket, key)
            if (md5 and b64(hashlib.md5(data).digest()) != md5) or (
                    crc32 and b64(_crc32(data).to_bytes(4, "big")) != crc32):
                raise errors.IntegrityError(f"write {where}: server rejected the upload's checksum")
            with self._lock:
                objects = self._bucket(bucket, key, "write")
                old = objects.get(key)
                if (if_none_match and old is not None) or (if_match and (old is None or old.etag != if_match.strip('"'))):
                    raise errors.Busy(f"write {where}: changed by another writer")
                obj = _Object(data, hashlib.md5(data).hexdigest(), {k.lower(): v for k, v in (metadata or {}).items()},
                              content_type or "binary/octet-stream", self._key_of(sse_key))
                objects[key] = obj
                return obj.etag
        return self.retry.call(once, tries=tries)

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str, *,
             metadata: dict | None = None, content_type: str | None = None,
             source_sse_key: bytes | None = None, sse_key: bytes | None = None, quick: bool = False) -> str:
        def once():
            with self._lock:
                src = self._object(src_bucket, src_key, source_sse_key, "copy from")
                objects = self._bucket(bucket, key, "copy to")
                meta = src.metadata if metadata is None else {k.lower(): v for k, v in metadata.items()}
                ctype = src.content_type if metadata is None else (content_type or "binary/octet-stream")
                objects[key] = _Object(src.data, src.etag, dict(meta), ctype, self._key_of(sse_key))
                return src.etag
        return self.retry.call(once)

    def delete(self, bucket: str, key: str) -> None:
        def once():
            with self._lock:
                self._bucket(bucket, key, "delete").pop(key, None)
        self.retry.call(once)

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        for k in keys:
            self.delete(bucket, k)

    def create_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, {})

    # -- multipart -------------------------------------------------------------------------
    def _upload(self, bucket: str, key: str, upload_id: str, action: str) -> _Upload:
        up = self._uploads.get(upload_id)
        if up is None or (up.bucket, up.key) != (bucket, key):
            raise errors.NotFound(f"{action} {_where(bucket, key)}: no such upload")
        return up

    def mpu_create(self, bucket: str, key: str, *, metadata: dict | None = None,
                   content_type: str | None = None, sse_key: bytes | None = None) -> str:
        def once():
            with self._lock:
                self._bucket(bucket, key, "start upload of")
                upload_id = uuid.uuid4().hex
                self._uploads[upload_id] = _Upload(bucket, key, {k.lower(): v for k, v in (metadata or {}).items()},
                                                   content_type or "binary/octet-stream", self._key_of(sse_key))
                return upload_id
        return self.retry.call(once)

    def mpu_part(self, bucket: str, key: str, upload_id: str, number: int, body, md5: str | None = None,
                 sse_key: bytes | None = None) -> str:
        def once():
            data = _read_body(body, None)
            if md5 and b64(hashlib.md5(data).digest()) != md5:
                raise errors.IntegrityError(f"upload part {number} of {_where(bucket, key)}: "
                                            "server rejected the upload's checksum")
            return self._add_part(bucket, key, upload_id, number, data, f"upload part {number} of")
        return self.retry.call(once)

    def mpu_part_copy(self, src_bucket: str, src_key: str, bucket: str, key: str, upload_id: str,
                      number: int, start: int, end: int, source_sse_key: bytes | None = None,
                      sse_key: bytes | None = None) -> str:
        def once():
            with self._lock:
                src = self._object(src_bucket, src_key, source_sse_key, f"copy part {number} to")
            return self._add_part(bucket, key, upload_id, number, src.data[start:end], f"copy part {number} to")
        return self.retry.call(once)

    def _add_part(self, bucket, key, upload_id, number, data, action) -> str:
        with self._lock:
            up = self._upload(bucket, key, upload_id, action)
            etag = hashlib.md5(data).hexdigest()
            up.parts[number] = (data, etag)
            return f'"{etag}"'

    def mpu_complete(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> str:
        def once():
            with self._lock:
                up = self._upload(bucket, key, upload_id, "complete upload of")
                for n, want in enumerate(etags, 1):
                    if n not in up.parts or up.parts[n][1] != want.strip('"'):
                        raise errors.S3PipeError(f"complete upload of {_where(bucket, key)}: InvalidPart {n}")
                data = b"".join(up.parts[n][0] for n in range(1, len(etags) + 1))
                digest = hashlib.md5(b"".join(bytes.fromhex(up.parts[n][1]) for n in range(1, len(etags) + 1)))
                etag = f"{digest.hexdigest()}-{len(etags)}"
                self._bucket(bucket, key, "complete upload of")[key] = _Object(
                    data, etag, up.metadata, up.content_type, up.sse_key)
                del self._uploads[upload_id]
                return etag
        return self.retry.call(once)

    def mpu_abort(self, bucket: str, key: str, upload_id: str) -> None:
        def once():
            with self._lock:
                self._upload(bucket, key, upload_id, "abort upload of")
                del self._uploads[upload_id]
        self.retry.call(once)

    def mpu_list(self, bucket: str, prefix: str = "") -> Iterator[dict]:
        def once():
            with self._lock:
                self._bucket(bucket, prefix, "list uploads in")
                return [{"Key": u.key, "UploadId": i, "Initiated": u.initiated}
                        for i, u in sorted(self._uploads.items(), key=lambda iu: (iu[1].key, iu[1].initiated))
                        if u.bucket == bucket and u.key.startswith(prefix)]
        yield from self.retry.call(once)

    def mpu_parts(self, bucket: str, key: str, upload_id: str) -> list[dict]:
        def once():
            with self._lock:
                up = self._upload(bucket, key, upload_id, "list parts of")
                return [{"PartNumber": n, "Size": len(d), "ETag": f'"{e}"'} for n, (d, e) in sorted(up.parts.items())]
        return self.retry.call(once)
