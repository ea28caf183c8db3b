"""The one-writer lease on a stream: who may write it, and how that is claimed and kept.

The lease lives in the stream's manifest itself: ``writer_id`` plus ``heartbeat`` (epoch
seconds). A writer whose heartbeat is younger than ``stale_after`` owns the stream (see
``writer_alive``). Both writers of a stream use this module: StreamWriter (put, a mount's
file) and the server-side stream copy (cp, sync, rename).

* **take**: refuse a stream another live writer holds, then write our first manifest
  conditionally: If-None-Match for a new stream, If-Match on the ETag we read for an
  existing one, so two writers racing to take a stream cannot both win;
* **confirm**: read the manifest back; on a server that ignores conditional headers this
  is what catches the race (the loser sees the other id and gives up);
* **save / heartbeat**: every later manifest write is conditional on the ETag of our last
  one, so a writer that lost the stream finds out at its next write;
* **release**: a writer that stops without finishing leaves heartbeat 0, which tells
  readers and writers at once that nobody is writing.

A writer id is ``host:pid:token``: a writer on this host whose process is gone (crash,
kill -9) holds no lease however fresh its last heartbeat, so ``put --resume`` after a
local crash need not wait.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from s3pipefs import errors, manifest as mf
from s3pipefs.engine import manifests
from s3pipefs.s3 import ObjectStore

log = logging.getLogger(__name__)


def new_writer_id(tag: str = "") -> str:
    """``host:pid:token``; ``tag`` marks the kind of writer in the token (e.g. "copy-")."""
    return f"{socket.gethostname()}:{os.getpid()}:{tag}{secrets.token_hex(4)}"


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


class Lease:
    """One writer's hold on the manifest under ``prefix``; thread-safe.

    ``etag`` is the ETag of our last manifest write: every save is conditional on it.
    ``sse_key`` (the stream's SSE-C key, None or b"" for none) goes with every manifest request.
    """

    def __init__(self, store: ObjectStore, bucket: str, prefix: str, writer_id: str, *, where: str,
                 sse_key: bytes | None = None):
        self.store, self.bucket, self.prefix = store, bucket, prefix
        self.writer_id, self.where, self.sse_key = writer_id, where, sse_key
        self.etag: str | None = None
        self.error: BaseException | None = None  # what stopped the heartbeat, if anything
        self._lock = threading.Lock()  # one conditional save at a time: each needs the last ETag
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, first: mf.Manifest, existing: manifests.Loaded | None, stale_after: float) -> None:
        """Write ``first`` as the stream's manifest unless a live writer holds it; then confirm.

        ``existing``: the manifest read just before (None: there is no stream yet).
        """
        self.refuse_if_held(existing, stale_after)
        self.etag = manifests.save(self.store, self.bucket, self.prefix, first,
                                   if_match=existing.etag if existing else None, create=existing is None,
                                   sse_key=self.sse_key)
        self.confirm()

    def refuse_if_held(self, existing: manifests.Loaded | None, stale_after: float) -> None:
        """Busy when ``existing`` names another writer that is alive."""
        if existing is None:
            return
        m = existing.manifest
        if writer_alive(m, stale_after) and m.writer_id != self.writer_id:
            raise errors.Busy(f"{self.where}: another writer ({m.writer_id}) is writing this stream "
                              f"(last heartbeat {time.time() - m.heartbeat:.0f}s ago)")

    def confirm(self) -> None:
        """Read the manifest back: on servers without conditional PUT this catches a race."""
        got = manifests.load(self.store, self.bucket, self.prefix, sse_key=self.sse_key)
        if got is None or got.manifest.writer_id != self.writer_id:
            other = got.manifest.writer_id if got else "nobody"
            raise errors.Busy(f"{self.where}: another writer ({other}) took this stream")
        self.etag = got.etag

    def save(self, m: mf.Manifest | bytes) -> str:
        """Write the manifest if it is still ours (If-Match our last ETag); Busy if not."""
        with self._lock:
            self.etag = manifests.save(self.store, self.bucket, self.prefix, m, if_match=self.etag,
                                       sse_key=self.sse_key)
            return self.etag

    def renew(self) -> None:
        """Refresh the heartbeat of the manifest as it is now, after checking it is still ours."""
        got = manifests.load(self.store, self.bucket, self.prefix, sse_key=self.sse_key)
        if got is None or got.manifest.writer_id != self.writer_id:
            raise errors.Busy(f"{self.where}: lost the stream to another writer")
        with self._lock:
            self.etag = manifests.save(self.store, self.bucket, self.prefix,
                                       got.manifest.with_(heartbeat=time.time()), if_match=got.etag,
                                       sse_key=self.sse_key)

    def keep_alive(self, interval: float, manifest) -> None:
        """Save ``manifest()`` every ``interval`` seconds on a thread until stopped.

        A failed save ends the heartbeat and is kept in ``error``; stop() raises it.
        """
        def beat():
            while not self._stop.wait(interval):
                try:
                    self.save(manifest())
                except BaseException as e:  # noqa: BLE001 - raised by stop(), before any commit
                    self.error = e
                    return
        self._thread = threading.Thread(target=beat, name="s3pipefs-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the heartbeat; Busy when it failed (the lease may be lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise errors.Busy(f"{self.where}: lost the stream's lease during the copy ({self.error})")

    def commit(self, final: mf.Manifest | bytes) -> None:
        """Publish the final manifest; the lease ends with it."""
        self.stop()  # joins the heartbeat: self.etag is final from here on
        self.save(final)
        self.etag = None

    def release(self, m: mf.Manifest) -> None:
        """Leave ``m`` with heartbeat 0: nobody is writing. Failures are logged, not raised."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.etag is None:
            return  # never taken, or already committed
        try:
            self.save(m.with_(writer_id=self.writer_id, heartbeat=0.0))
        except errors.S3PipeError as e:
            log.warning("%s: could not release the stream: %s", self.where, e)
