"""Reading and writing a stream's manifest object: the one loader and the one saver.

Everything that reads a manifest (stat, readers, writers, copy, sync) goes through
``load``; everything that writes one through ``save``. Writes are conditional
(If-None-Match / If-Match on the last ETag): the one-writer lease built on them lives in
engine/lease.py.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from s3pipefs import errors, manifest as mf
from s3pipefs.s3 import ObjectStore


@dataclass
class Loaded:
    manifest: mf.Manifest
    etag: str
    last_modified: float
    body: bytes = b""  # the manifest object's bytes as read (a copy publishes them unchanged)


def manifest_key(prefix: str) -> str:
    return prefix + mf.MANIFEST_NAME


def load(store: ObjectStore, bucket: str, prefix: str, *, sse_key: bytes | None = None,
         if_none_match: str | None = None) -> Loaded | None:
    """The manifest under ``prefix`` (which ends with '/'), or None when there is none.
    ``if_none_match``: the ETag of the manifest the caller holds; NotModified when it is
    still the current one (a 304 without a body: a follower's poll of an idle stream).

    The body is checked against its ETag (the MD5 of a single-part upload) unless it is
    read with an SSE-C key (``sse_key``; None or b"": none). A body that broke
    or was damaged in transit is fetched again by the store's retry policy, so one bad
    packet never turns into a "malformed manifest". A mismatch that repeats with identical
    bytes is an ETag that is not an MD5 (SSE-KMS), not damage.
    """
    key = manifest_key(prefix)
    where = f"s3://{bucket}/{key}"
    seen: list[bytes] = []  # the last body that parsed but did not match its ETag
    parsed: list[mf.Manifest] = []

    def check(data: bytes, info) -> None:  # inside the store's attempt: IntegrityError fetches again
        md5 = None if sse_key else info.plain_md5
        damaged = md5 is not None and hashlib.md5(data).hexdigest() != md5
        try:
            m = mf.parse(data, where=where)
        except errors.ManifestError:
            if damaged:
                raise errors.IntegrityError(f"read {where}: body does not match its MD5 ETag") from None
            raise
        if damaged and seen != [data]:
            seen[:] = [data]
            raise errors.IntegrityError(f"read {where}: body does not match its MD5 ETag")
        parsed[:] = [m]
    try:
        data, info = store.get(bucket, key, sse_key=sse_key, verify=check, if_none_match=if_none_match)
    except errors.BucketNotFound:
        raise
    except errors.NotFound:
        return None
    return Loaded(parsed[0], info.etag, info.last_modified, data)


def save(store: ObjectStore, bucket: str, prefix: str, m: mf.Manifest | bytes, *, if_match: str | None = None,
         create: bool = False, sse_key: bytes | None = None) -> str:
    """Write the manifest (or its rendered bytes); returns its new ETag. Busy when the
    condition fails. ``sse_key`` as for load().

    A conditional PUT whose reply was lost is retried by the store's policy with the
    same condition, which then fails against our own write. So when the condition
    fails, the current manifest is checked: if it is exactly this body, the write
    landed. The body names this writer and a millisecond heartbeat, so no other
    writer's manifest can be the same bytes.
    """
    body = m if isinstance(m, bytes) else mf.render(m)
    digest = hashlib.md5(body)
    key = manifest_key(prefix)
    try:
        return store.put(bucket, key, body, md5=base64.b64encode(digest.digest()).decode(),
                         content_type="text/plain", if_match=if_match, if_none_match=create, sse_key=sse_key)
    except errors.Busy:
        if if_match or create:
            info = store.head(bucket, key, sse_key=sse_key)
            if info is not None and info.plain_md5 == digest.hexdigest():
                return info.etag
        raise
