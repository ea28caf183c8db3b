"""Reading and writing a stream's manifest object, and the one-writer lease.

The lease lives in the manifest itself: ``writer_id`` plus ``heartbeat`` (epoch seconds).
A writer whose heartbeat is younger than ``stale_after`` owns the stream. Manifest writes
are conditional (If-None-Match / If-Match on the last ETag) so two writers racing to take
a stream cannot both win; on a server that ignores conditional headers the writer reads
the manifest back after taking it and gives up when another id is there.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from s3pipefs import errors, manifest as mf
from s3pipefs.store import Store


@dataclass
class Loaded:
    manifest: mf.Manifest
    etag: str
    last_modified: float


def manifest_key(prefix: str) -> str:
    return prefix + mf.MANIFEST_NAME


def load(store: Store, bucket: str, prefix: str) -> Loaded | None:
    """The manifest under ``prefix`` (which ends with '/'), or None when there is none."""
    key = manifest_key(prefix)
    try:
        data, info = store.get(bucket, key)
    except errors.BucketNotFound:
        raise
    except errors.NotFound:
        return None
    return Loaded(mf.parse(data, where=f"s3://{bucket}/{key}"), info.etag, info.last_modified)


def save(store: Store, bucket: str, prefix: str, m: mf.Manifest, *, if_match: str | None = None,
         create: bool = False) -> str:
    """Write the manifest; returns its new ETag. Busy when the condition fails."""
    body = mf.render(m)
    return store.put(bucket, manifest_key(prefix), body, md5=_b64md5(body),
                     content_type="text/plain", if_match=if_match, if_none_match=create)


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
    """True when ``host:pid:token`` names this host and no process ``pid`` exists."""
    parts = writer_id.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _b64md5(body: bytes) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.md5(body).digest()).decode()
