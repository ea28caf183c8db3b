"""Reading and writing a stream's manifest object, and the one-writer lease.

The lease lives in the manifest itself: ``writer_id`` plus ``heartbeat`` (epoch seconds).
A writer whose heartbeat is younger than ``stale_after`` owns the stream. Manifest writes
are conditional (If-None-Match / If-Match on the last ETag) so two writers racing to take
a stream cannot both win; on a server that ignores conditional headers the writer reads
the manifest back after taking it and gives up when another id is there.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from dataclasses import dataclass

from s3pipefs import errors, manifest as mf
from s3pipefs.s3 import ObjectStore


@dataclass
class Loaded:
    manifest: mf.Manifest
    etag: str
    last_modified: float


def manifest_key(prefix: str) -> str:
    return prefix + mf.MANIFEST_NAME


def load(store: ObjectStore, bucket: str, prefix: str) -> Loaded | None:
    """The manifest under ``prefix`` (which ends with '/'), or None when there is none.

    The body is checked against its ETag (the MD5 of a single-part upload) unless the
    store uses an SSE-C key. A body that broke or was damaged in transit is fetched
    again by the store's retry policy, so one bad packet never turns into a "malformed
    manifest". A mismatch that repeats with identical bytes is an ETag that is not an MD5
    (SSE-KMS), not damage.
    """
    key = manifest_key(prefix)
    where = f"s3://{bucket}/{key}"
    sse_c = store.cfg.sse_c_key
    seen: list[bytes] = []  # the last body that parsed but did not match its ETag
    parsed: list[mf.Manifest] = []

    def check(data: bytes, info) -> None:  # inside the store's attempt: IntegrityError fetches again
        md5 = None if sse_c else info.plain_md5
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
        _, info = store.get(bucket, key, verify=check)
    except errors.BucketNotFound:
        raise
    except errors.NotFound:
        return None
    return Loaded(parsed[0], info.etag, info.last_modified)


def save(store: ObjectStore, bucket: str, prefix: str, m: mf.Manifest, *, if_match: str | None = None,
         create: bool = False) -> str:
    """Write the manifest; returns its new ETag. Busy when the condition fails.

    A conditional PUT whose reply was lost is retried by the store's policy with the
    same condition, which then fails against our own write. So when the condition
    fails, the current manifest is checked: if it is exactly this body, the write
    landed. The body names this writer and a millisecond heartbeat, so no other
    writer's manifest can be the same bytes.
    """
    body = mf.render(m)
    digest = hashlib.md5(body)
    key = manifest_key(prefix)
    try:
        return store.put(bucket, key, body, md5=base64.b64encode(digest.digest()).decode(),
                         content_type="text/plain", if_match=if_match, if_none_match=create)
    except errors.Busy:
        if if_match or create:
            info = store.head(bucket, key)
            if info is not None and info.plain_md5 == digest.hexdigest():
                return info.etag
        raise


def writer_alive(m: mf.Manifest, stale_after: float, now: float | None = None) -> bool:
    """True when a writer holds the lease: an s3pipefs writer with a fresh heartbeat.

    A writer on this host whose process is gone (crash, kill -9) has no lease, however
    fresh its last heartbeat: ``put --resume`` after a local crash need not wait.
    """
    if not m.own or not m.writer_id or not m.heartbeat:
        return False
    if m.completed and "replacing" not in m.extra:
        return False
    if local_writer_dead(m.writer_id):
        return False
    now = time.time() if now is None else now
    return now - m.heartbeat < stale_after


def local_writer_dead(writer_id: str) -> bool:
    """True when ``host:pid:token`` names this host and process ``pid`` is gone.

    A zombie is gone too: a killed mount daemon is reparented to PID 1, and in a
    container whose PID 1 reaps late (or never) it would otherwise hold the lease until
    its heartbeat went stale.
    """
    parts = writer_id.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{int(parts[1])}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]  # after "pid (comm)"
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")
