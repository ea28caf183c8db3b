"""FileWriter: a file the mount writes, a plain object until it outgrows one segment.

Most files a tree holds (sources, configs, mail, a git repository's objects) are far
smaller than a segment, and a stream costs a lease, a read-back, a segment and a final
manifest to create and as much again to remove. So a file the mount writes starts
*pending*: its bytes are staged in one private file, charged to the mount's staging
budget, and nothing is sent. What happens next depends on what the writer does:

* It closes while the file fits one segment: one PUT stores it as a plain object, its
  mode, owners and time in the object's metadata as s3fs-fuse keeps them
  (engine/objattrs.py). A new name is written only if it is still free (If-None-Match):
  a creator that lost a race across mounts learns it at close (Busy), never by silently
  replacing the winner. A stream that held the name is removed after the PUT, manifest
  first, so the name shows the old stream, then the new object, never nothing.
* It grows past one segment, calls fsync, or keeps unpublished bytes for half the
  flush interval (not when ``patchable``: a file open for reading and writing publishes
  nothing before its close or fsync anyway): it is *promoted*: a StreamWriter takes the name (the lease, as for any
  stream: from here a second writer elsewhere gets EBUSY), the staged bytes are replayed
  into it, and every later call goes to it. The stream is committed at close as any
  stream is, and a plain object that held the name is removed after that commit.

While pending, every byte is writable (nothing is sealed: pwrite anywhere, truncate to
any length), so an existing object that fits one segment is opened for change by reading
it into the staging file (one GET, at the first write). A larger object is promoted at
once: its bytes are copied into the new stream through a reader, then the writes follow.

Across mounts, a pending file is invisible until its close or its promotion: readers
elsewhere see the old content (or nothing) until then, which the flush interval bounds.
Readers on this mount read it through the writer as they read a stream being written
(read_staged, landed, wait_written: the interface engine/live.py uses, with ``rewrites``).

The interface is the StreamWriter's that the mount uses: write, pwrite, truncate, flush,
close, abort, offset, sealed, closed, committed and the attributes mode, uid, gid and
mtime_ns, which go into the object's metadata or the stream's manifest.
"""
from __future__ import annotations

import hashlib
import logging
import stat
import threading
import time
from typing import TYPE_CHECKING, Callable

from s3pipefs import errors, manifest as mf
from s3pipefs.engine import deletion, later, manifests, objattrs
from s3pipefs.engine.lease import writer_alive
from s3pipefs.engine.staging import HeldInMemory, StagedFile, StagingDir
from s3pipefs.engine.writer import StreamWriter
from s3pipefs.s3 import ObjectInfo, b64

if TYPE_CHECKING:
    from s3pipefs.engine.core import Engine

log = logging.getLogger(__name__)

# A pending file up to this size is PUT from memory (the store's quick path).
_IN_MEMORY = 1 << 20
# A pending file's bytes stay in memory up to this size (engine/staging.py HeldInMemory),
# within what the mount's budget lets all of them hold there together.
HELD_IN_MEMORY = 64 << 10
# Conditional PUTs of a new name refused while nothing is there (see _put_new).
_CONDITION_TRIES = 3
# Ranged GETs of an object larger than a segment, copied into the stream that replaces it.
_COPY_CHUNK = 8 << 20


class FileWriter:
    def __init__(self, engine: "Engine", bucket: str, key: str, mode: str, *, existing: str | None,
                 existing_size: int = 0, carried: dict | None = None, hold_back: int = 0,
                 sse_key: bytes = b"", patchable: bool = False):
        """``mode``: "create" (a new or truncated file) or "append" (keep what is there).
        ``existing``: what the name holds now, "stream", "object" or None, as the caller
        just looked it up, with its size. ``carried``: the permission bits and owners it
        has ("mode", "uid", "gid"), which stay with the name as on a disk. ``patchable``:
        a file open for reading and writing, whose stream (once promoted) publishes
        nothing before flush or close (StreamWriter), so no timed promotion either."""
        if mode not in ("create", "append"):
            raise errors.UsageError(f"unknown file write mode {mode!r}")
        self.engine, self.store, self.cfg = engine, engine.store, engine.cfg
        self.bucket, self.key = bucket, key.strip("/")
        self.prefix = self.key + "/"
        self.where = f"s3://{bucket}/{self.key}"
        self.sse_key = sse_key
        self._hold_back = hold_back
        self._patchable = patchable
        self._existing = existing
        self._cond = threading.Condition()
        self._stream: StreamWriter | None = None
        self._staged: StagedFile | HeldInMemory | None = None
        self._staging: StagingDir | None = None
        self._timer: later.Pending | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.committed: manifests.Loaded | ObjectInfo | None = None
        carried = carried or {}
        self._attrs = {"mode": carried.get("mode"), "uid": carried.get("uid"), "gid": carried.get("gid"),
                       "mtime_ns": None}
        if mode == "append" and existing == "stream":
            self._promote_to(self._open_stream("append"))
        elif mode == "append" and existing == "object" and existing_size > self.cfg.segment_size:
            self._promote_big_object(existing_size)
        elif mode == "append" and existing == "object" and existing_size:
            self._load_object()

    # -- attributes: the object's metadata, or the stream's manifest once promoted ----------
    def _attr(name: str):  # noqa: N805 - a property factory, used in the class body only
        def get(self):
            return getattr(self._stream, name) if self._stream is not None else self._attrs[name]

        def put(self, value):
            self._attrs[name] = value
            if self._stream is not None:
                setattr(self._stream, name, value)
        return property(get, put)

    mode = _attr("mode")
    uid = _attr("uid")
    gid = _attr("gid")
    mtime_ns = _attr("mtime_ns")
    del _attr

    @property
    def _size(self) -> int:
        """Bytes pending: what the staging file holds."""
        return self._staged.size if self._staged is not None else 0

    @property
    def closed(self) -> bool:
        return self._closed or (self._stream is not None and self._stream.closed)

    def progress(self) -> dict:
        """What `s3pipefs status` shows: a pending file is all staged, nothing sent."""
        stream = self._stream
        if stream is not None:
            return {**stream.progress(), "kind": "stream"}
        return {"written": self._size, "uploaded": 0, "staged": self._size, "segments_in_flight": 0,
                "kind": "pending object"}

    def claim(self) -> None:
        """Make a new name exist now, before the commit (the first close(2) of a created
        file that has nothing written yet: ``cmd > f`` once the shell closed its copy):
        an empty object, written only if the name is still free. A name that holds a
        file keeps it until the commit replaces it."""
        with self._cond:
            if self._stream is not None or self._existing is not None or self._size:
                return
            try:
                self.store.put(self.bucket, self.key, b"", if_none_match=True, sse_key=self.sse_key,
                               metadata=self._metadata() or None)
            except errors.Busy:
                raise errors.Busy(f"{self.where}: created meanwhile by another writer") from None
            self._existing = "object"  # ours: the commit replaces it

    @property
    def cipher(self):
        """The stream's client-side cipher once promoted; a pending file has none (a mount
        with an encryption key writes streams only)."""
        return self._stream.cipher if self._stream is not None else None

    @property
    def is_stream(self) -> bool:
        """Promoted: a stream is being written."""
        return self._stream is not None

    @property
    def offset(self) -> int:
        return self._stream.offset if self._stream is not None else self._size

    @property
    def sealed(self) -> int:
        """Bytes that can no longer change: none while pending."""
        return self._stream.sealed if self._stream is not None else 0

    # -- the write path ---------------------------------------------------------------------
    def write(self, data) -> int:
        return self.pwrite(self.offset, data)

    def pwrite(self, offset: int, data) -> int:
        with self._cond:
            stream = self._pending_check()
            if stream is None:
                view = memoryview(data).cast("B")
                staged = self._stage(offset + len(view))
                if offset > staged.size:
                    staged.append_zeros(offset - staged.size)
                inside = min(len(view), staged.size - offset)
                if inside:
                    staged.patch(offset, view[:inside])
                if inside < len(view):
                    staged.append(view[inside:])
                self._grew()
                return len(view)
        return stream.pwrite(offset, data)

    def truncate(self, length: int) -> None:
        with self._cond:
            stream = self._pending_check()
            if stream is None:
                staged = self._stage(length)
                if length > staged.size:
                    staged.append_zeros(length - staged.size)
                else:
                    staged.cut(length)
                self._grew()
                return
        stream.truncate(length)

    def _pending_check(self) -> StreamWriter | None:
        """The stream once promoted (write to it outside the lock); None while pending.
        Call with the lock held."""
        if self._error is not None:
            raise self._error
        if self.closed:
            raise errors.S3PipeError(f"{self.where}: write after close")
        return self._stream

    def _stage(self, size: int) -> StagedFile | HeldInMemory:
        """Where the pending bytes are held, ready to grow to ``size``: in memory while
        small and the budget has room there, else in a staging file."""
        staged, budget = self._staged, self.engine.write_budget
        grows = size - (staged.size if staged is not None else 0)
        if staged is None or isinstance(staged, HeldInMemory):
            if size <= HELD_IN_MEMORY and (grows <= 0 or budget is None or budget.memory_room(grows)):
                if staged is None:
                    staged = self._staged = (HeldInMemory(budget.charge_memory) if budget is not None
                                             else HeldInMemory())
                return staged
            disk = self._staging_file()
            if staged is not None:
                disk.append(staged.contents())  # a fresh CRC32 of what it held
                staged.remove()
            staged = self._staged = disk
        return staged

    def _staging_file(self) -> StagedFile:
        budget = self.engine.write_budget
        self._staging = (StagingDir(self.cfg.staging_dir, budget.charge) if budget is not None
                         else StagingDir(self.cfg.staging_dir))
        return self._staging.create("pending")

    def _grew(self) -> None:
        """Pending bytes changed; call with the lock held."""
        self._cond.notify_all()  # readers waiting at the end (wait_written)
        if self._size > self.cfg.segment_size:
            self._promote()
        elif self._timer is None and self._size and self.cfg.flush_interval and not self._patchable:
            self._timer = later.call_later(self.cfg.flush_interval / 2, self._timed_promotion)

    # -- promotion -----------------------------------------------------------------------------

    def _timed_promotion(self) -> None:
        """Bytes held unpublished for half the flush interval: show them as a stream."""
        with self._cond:
            if self._stream is not None or self.closed or self._error is not None or not self._size:
                return
            try:
                self._promote()
            except BaseException as e:  # noqa: BLE001 - reported by the next write or the close
                log.warning("%s: could not publish the file being written: %s", self.where, e)
                self._error = e

    def _open_stream(self, mode: str) -> StreamWriter:
        return self.engine.open_writer(self.bucket, self.key, mode, hold_back=self._hold_back,
                                       patchable=self._patchable)

    def _promote(self, fill: Callable[[StreamWriter], None] | None = None) -> None:
        """Become a stream: take the name, then ``fill`` it (default: replay the staged
        bytes). Call with the lock held."""
        stream = self._open_stream("create")
        try:
            (fill or self._replay)(stream)
        except BaseException:
            stream.abort()
            raise
        self._promote_to(stream)
        log.debug("%s: now a stream (%d bytes so far)", self.where, stream.offset)

    def _replay(self, stream: StreamWriter) -> None:
        if self._staged is not None:
            self._staged.read_back(stream.write)

    def _promote_to(self, stream: StreamWriter) -> None:
        for name in ("mode", "uid", "gid"):
            if self._attrs[name] is None:
                self._attrs[name] = getattr(stream, name)  # an existing stream's carry over
        for name, value in self._attrs.items():
            setattr(stream, name, value)
        self._stream = stream
        self._drop_pending()

    def _promote_big_object(self, size: int) -> None:
        """Append to an object larger than a segment: copy it into a new stream first."""
        def copy(stream: StreamWriter) -> None:
            # Read by ranges from the object itself: the new stream already shadows its name.
            for pos in range(0, size, _COPY_CHUNK):
                chunk, _ = self.store.get(self.bucket, self.key, pos, min(size, pos + _COPY_CHUNK),
                                          sse_key=self.sse_key)
                if len(chunk) != min(_COPY_CHUNK, size - pos):
                    raise errors.StreamIncomplete(f"{self.where}: object changed while it was copied "
                                                  f"(short read at {pos} of {size} bytes)")
                stream.write(chunk)
        self._promote(copy)

    def _load_object(self) -> None:
        """Append to (or change) an object that fits a segment: its bytes become pending."""
        body, _info = self.store.get(self.bucket, self.key, sse_key=self.sse_key)
        with self._cond:
            self._stage(len(body)).append(body)

    def _drop_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._staged is not None:
            self._staged.remove()
            self._staged = None
        if self._staging is not None:
            self._staging.cleanup()
            self._staging = None

    # -- durability and commit -------------------------------------------------------------------
    def flush(self) -> None:
        """fsync: everything written so far durable, the file not complete: a stream."""
        with self._cond:
            stream = self._pending_check()
            if stream is None:
                self._promote()
                stream = self._stream
        stream.flush()

    def close(self) -> None:
        """Commit: a pending file is stored as one object, a stream is completed."""
        with self._cond:
            if self._closed:
                if self._error is not None:
                    raise self._error
                return
            if self._error is not None:
                self.abort()
                raise self._error
            stream = self._stream
            if stream is None:
                try:
                    self._put_object()
                except BaseException:
                    self.abort()
                    raise
                self._closed = True
                self._cond.notify_all()
                self._drop_pending()
                return
        stream.close()
        self.committed = stream.committed
        self._closed = True
        if self._existing == "object":
            self._remove_quietly(lambda: self.store.delete(self.bucket, self.key), "the object it replaced")

    def _put_object(self) -> None:
        """Store the pending bytes as a plain object; call with the lock held."""
        if self._existing == "stream":
            self._refuse_if_stream_taken()
        meta = self._metadata()
        staged, size = self._staged, self._size
        small = size <= _IN_MEMORY
        if staged is None:
            body = b""
        elif small:
            body = staged.contents()  # one read, into the bytes that are sent
        else:
            if staged.patched:
                staged.read_back()  # its running CRC32 is stale
            body = open(staged.path, "rb")
        crc = staged.crc if staged is not None else 0
        try:
            etag = self._put_new(body, size, crc, meta, small)
        finally:
            if not small:
                body.close()
        self.committed = ObjectInfo(self.key, size, etag, time.time(), meta)
        if self._existing == "stream":
            self._remove_quietly(lambda: deletion.delete_stream(self.store, self.bucket, self.prefix),
                                 "the stream it replaced")

    def _metadata(self) -> dict:
        """The object's metadata: the attributes this file has, as s3fs-fuse keeps them."""
        return objattrs.updated({}, stat.S_IFREG, **{k: v for k, v in self._attrs.items() if v is not None})

    def _put_new(self, body, size: int, crc: int, meta: dict, small: bool) -> str:
        """PUT the file; a name that was free at open only while it still is. Returns the ETag."""
        for _ in range(_CONDITION_TRIES):
            try:
                # A small body goes as bytes: the store's quick path sends it without
                # botocore's pipeline, which costs a small file more CPU than its bytes do.
                return self.store.put(self.bucket, self.key, body, length=size, crc32=b64(mf.crc32_bytes(crc)),
                                      metadata=meta or None, if_none_match=self._existing is None,
                                      sse_key=self.sse_key, quick=small)
            except errors.Busy:
                info = self.store.head(self.bucket, self.key, sse_key=self.sse_key)
                if info is not None and info.size == size and info.plain_md5 == _md5_of(body, small):
                    return info.etag  # a retried PUT whose first reply was lost met its own write
                if info is not None:
                    raise errors.Busy(f"{self.where}: created meanwhile by another writer; this file's "
                                      f"{size} bytes were not stored") from None
                # Refused, yet nothing is there: a server that checks the condition against a
                # key deleted a moment ago (SeaweedFS). Try again.
                if not small:
                    body.seek(0)
        raise errors.Busy(f"{self.where}: the server kept refusing to create it (If-None-Match); "
                          f"this file's {size} bytes were not stored")

    def _refuse_if_stream_taken(self) -> None:
        """Before replacing a stream by an object: no writer elsewhere may hold it now."""
        loaded = manifests.load(self.store, self.bucket, self.prefix, sse_key=self.sse_key)
        if loaded is not None and writer_alive(loaded.manifest, self.cfg.stale_after):
            raise errors.Busy(f"{self.where}: another writer took the stream meanwhile "
                              f"({loaded.manifest.writer_id}); this file was not stored")

    def _remove_quietly(self, remove: Callable[[], None], what: str) -> None:
        try:
            remove()
        except errors.S3PipeError as e:
            log.warning("%s: committed, but %s was not removed: %s", self.where, what, e)

    def abort(self) -> None:
        """Stop: nothing pending is stored; a stream stays incomplete (resumable)."""
        with self._cond:
            if self._stream is not None and not self._stream.closed:
                self._stream.abort()
            self._closed = True
            if self._error is None:
                self._error = errors.StreamIncomplete(f"{self.where}: writer aborted")
            self._drop_pending()
            self._cond.notify_all()

    # -- what a reader in this process may read (engine/live.py) ---------------------------------
    def read_staged(self, offset: int, size: int) -> bytes | None:
        with self._cond:
            stream = self._stream
            if stream is None:
                if self._error is not None:
                    raise self._error
                if offset >= self._size or self._staged is None:
                    return b""
                return self._staged.read(offset, min(size, self._size - offset))
        return stream.read_staged(offset, size)

    @property
    def patchable(self) -> bool:
        return self._patchable

    @property
    def rewrites(self) -> int:
        return self._stream.rewrites if self._stream is not None else 0

    def landed(self) -> tuple[str, mf.Layout]:
        stream = self._stream
        return stream.landed() if stream is not None else (self.prefix, mf.Layout())

    def wait_written(self, offset: int, timeout: float) -> bool:
        with self._cond:
            stream = self._stream
            if stream is None:
                return self._cond.wait_for(lambda: self._size > offset or self.closed or self._error is not None
                                           or self._stream is not None, timeout)
        return stream.wait_written(offset, timeout)


def _md5_of(body, small: bool) -> str:
    """The hex MD5 of a PUT's body (bytes, or a file read from its start and rewound):
    asked only when a conditional PUT was refused, to tell our own landed write."""
    if small:
        return hashlib.md5(body).hexdigest()
    body.seek(0)
    digest = hashlib.file_digest(body, "md5").hexdigest()
    body.seek(0)
    return digest
