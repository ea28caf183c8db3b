"""Server-side copy of streams and plain objects between S3 locations.

No payload passes through the client: segments and objects up to 5 GB are copied with
CopyObject, larger objects with UploadPartCopy in parallel parts. The user metadata that
s3pipefs readers verify against (``crc32``/``md5`` per segment) travels with CopyObject's
default COPY directive, and with the multipart path it is read from the source first.

A stream copy follows the one-writer protocol of engine/lease.py:

1. read and validate the source manifest (the bytes that will be published at the end);
2. take the destination's lease: an *incomplete, empty* manifest with our writer id, written
   conditionally (If-None-Match for a new stream, If-Match over an existing one whose
   writer is dead or done), refreshed by a heartbeat while the copy runs;
3. copy the segments the source manifest names, in parallel, checking each copy's ETag
   against the source's when both are plain MD5s;
4. delete segments of an older destination stream past the new end;
5. write the final manifest **last**: the source's own bytes for a complete stream.

So a half-done copy is at worst an incomplete stream with no data and a released lease
(heartbeat 0), which ``rm`` removes or a new copy replaces; never a complete stream with
mixed or missing segments. Overwriting a stream makes it read as incomplete while the copy
runs (the writer's stage-and-swap would copy every byte twice on the server).

An incomplete source (being written, or its writer died) is refused unless
``allow_incomplete``: then the segments its manifest names so far are copied and the copy
stays incomplete, with a released lease, so that ``put --resume`` can finish it from the
same input.

SSE-C: ``source_sse_key`` decrypts the source, ``sse_key`` encrypts the copy (None or
``b""``: no key), so a copy can re-encrypt. Engine.copy takes them from the request
options of each side.

A client-side encrypted stream (engine/crypto.py) is copied as it is stored: ciphertext
segments, each OVERHEAD bytes longer than the layout says, and its authenticated manifest,
so the copy reads with the same key. Changing that key needs the data decrypted and
encrypted again (Engine.copy does that through this machine).
"""
from __future__ import annotations

import concurrent.futures as cf
import errno as _errno
import logging
import time
from dataclasses import dataclass

from s3pipefs import errors, manifest as mf
from s3pipefs.config import GiB, TransferConfig
from s3pipefs.engine import crypto, deletion, manifests, parts
from s3pipefs.engine.lease import Lease, new_writer_id, writer_alive
from s3pipefs.engine.parts import COPY_PART
from s3pipefs.s3 import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

# S3's limit for CopyObject and for one part; above it UploadPartCopy is required.
MAX_SINGLE_COPY = 5 * GiB


class IsADirectory(errors.S3PipeError):
    errno = _errno.EISDIR


@dataclass
class CopyResult:
    kind: str          # "stream" or "object"
    size: int          # payload bytes copied on the server
    requests: int = 0  # copy requests issued (segments or parts)
    complete: bool = True


def _plain_md5(etag: str) -> str | None:
    return ObjectInfo("", 0, etag).plain_md5


# -- plain objects ------------------------------------------------------------------------------

def copy_object(store: ObjectStore, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, *,
                workers: int = 8, info: ObjectInfo | None = None, part_size: int = COPY_PART,
                max_single: int = MAX_SINGLE_COPY, source_sse_key: bytes | None = None,
                sse_key: bytes | None = None, progress=None) -> CopyResult:
    """Copy one object on the server: CopyObject up to ``max_single``, else parallel part copies.

    ``info`` (size, ETag) saves a HEAD when the caller listed the source already.
    Metadata and content type are kept. Returns what was copied.
    """
    if (src_bucket, src_key) == (dst_bucket, dst_key):
        raise errors.UsageError(f"s3://{src_bucket}/{src_key}: source and destination are the same")
    skey, dkey = source_sse_key or b"", sse_key or b""
    if info is None:
        info = store.head(src_bucket, src_key, sse_key=skey)
        if info is None:
            raise errors.NotFound(f"s3://{src_bucket}/{src_key}: no such object or stream")
    if info.size <= max_single:
        etag = store.copy(src_bucket, src_key, dst_bucket, dst_key, source_sse_key=skey, sse_key=dkey, quick=True)
        _check_etag(info.etag, etag, skey or dkey, f"s3://{dst_bucket}/{dst_key}")
        if progress:
            progress(info.size)
        return CopyResult("object", info.size, 1)
    return _copy_multipart(store, src_bucket, src_key, dst_bucket, dst_key, info, workers, part_size,
                           skey, dkey, progress)


def _copy_multipart(store, src_bucket, src_key, dst_bucket, dst_key, info, workers, part_size,
                    skey, dkey, progress) -> CopyResult:
    # CopyObject keeps metadata by itself; a multipart upload has to be given it.
    if not info.content_type and not info.metadata:
        full = store.head(src_bucket, src_key, sse_key=skey)
        if full is None:
            raise errors.NotFound(f"s3://{src_bucket}/{src_key}: vanished during the copy")
        info = full
    psize = parts.part_size(info.size, part_size)
    ranges = [(i + 1, off, min(off + psize, info.size)) for i, off in enumerate(range(0, info.size, psize))]
    upload = store.mpu_create(dst_bucket, dst_key, metadata=info.metadata or None,
                              content_type=info.content_type or None, sse_key=dkey)
    try:
        def one(r):
            n, a, b = r
            etag = store.mpu_part_copy(src_bucket, src_key, dst_bucket, dst_key, upload, n, a, b,
                                       source_sse_key=skey, sse_key=dkey)
            if progress:
                progress(b - a)
            return etag
        with cf.ThreadPoolExecutor(max(1, min(workers, len(ranges))), thread_name_prefix="s3pipefs-copy") as pool:
            etags = list(pool.map(one, ranges))
        store.mpu_complete(dst_bucket, dst_key, upload, etags)
    except BaseException:
        _abort_quietly(store, dst_bucket, dst_key, upload)
        raise
    return CopyResult("object", info.size, len(ranges) + 2)


def _abort_quietly(store: ObjectStore, bucket: str, key: str, upload: str) -> None:
    try:
        store.mpu_abort(bucket, key, upload)
    except errors.S3PipeError as e:
        log.warning("%s (the unfinished upload is left; `s3pipefs abort` removes it)", e)


def _check_etag(src_etag: str, dst_etag: str, sse: bytes, where: str) -> None:
    """A copy of a single-part, unencrypted object must keep its MD5 ETag."""
    if sse:
        return  # SSE-C ETags are not MD5s of the plaintext on AWS
    a, b = _plain_md5(src_etag), _plain_md5(dst_etag)
    if a and b and a != b:
        raise errors.IntegrityError(f"{where}: copy has ETag {b}, source had {a}")


# -- streams ------------------------------------------------------------------------------------

def _segments(store: ObjectStore, bucket: str, prefix: str, m: mf.Manifest, where: str) -> list[ObjectInfo]:
    """The segments the manifest names, from one listing, checked against its layout."""
    found: dict[int, ObjectInfo] = {}
    for o in store.list(bucket, prefix):
        if isinstance(o, str):
            continue
        idx = mf.segment_index(o.key[len(prefix):])
        if idx is not None:
            found[idx] = o
    count = m.num_segments
    if not m.completed and not (m.own and m.layout is not None):
        # s3pipe2 publishes its count at the end: take the contiguous run that landed.
        count = 0
        while count + 1 in found:
            count += 1
    segs = []
    # Stored segments of an encrypted stream are longer than the plaintext the layout counts.
    extra = crypto.OVERHEAD if m.encryption else 0
    # An iterator, not a list: a hostile layout may name 10**15 segments.
    sizes = m.layout.sizes() if (m.own and m.layout is not None) else None
    for i in range(1, count + 1):
        o = found.get(i)
        if o is None:
            raise errors.StreamIncomplete(f"{where}: segment {mf.segment_name(i)} is missing")
        want = next(sizes, None) if sizes is not None else None
        want = want + extra if want is not None else None
        if want is not None and o.size != want:
            raise errors.IntegrityError(f"{where}: segment {mf.segment_name(i)} holds {o.size} bytes, "
                                        f"the manifest says {want}")
        segs.append(o)
    held = sum(o.size for o in segs) - extra * len(segs)
    if m.completed and held != m.total_size:
        raise errors.IntegrityError(f"{where}: segments hold {held} bytes, the manifest says {m.total_size}")
    return segs


def copy_stream(store: ObjectStore, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                workers: int = 8, *, allow_incomplete: bool = False, source_sse_key: bytes | None = None,
                sse_key: bytes | None = None, cfg: TransferConfig | None = None,
                progress=None) -> CopyResult:
    """Copy the stream ``src_key`` to ``dst_key`` on the server; the manifest is written last."""
    cfg = cfg or TransferConfig()
    src_prefix, dst_prefix = src_key.strip("/") + "/", dst_key.strip("/") + "/"
    src_where, dst_where = f"s3://{src_bucket}/{src_prefix[:-1]}", f"s3://{dst_bucket}/{dst_prefix[:-1]}"
    if not dst_key.strip("/"):
        raise errors.UsageError(f"s3://{dst_bucket}/: a stream needs a name, not just a bucket")
    if src_bucket == dst_bucket and (dst_prefix.startswith(src_prefix) or src_prefix.startswith(dst_prefix)):
        raise errors.UsageError(f"{src_where} -> {dst_where}: a stream cannot be copied onto or into itself")
    skey, dkey = source_sse_key or b"", sse_key or b""

    got = manifests.load(store, src_bucket, src_prefix, sse_key=skey)
    if got is None:
        raise errors.NotFound(f"{src_where}: no such stream")
    m, body = got.manifest, got.body
    if not m.completed and not allow_incomplete:
        state = "being written" if writer_alive(m, cfg.stale_after) else "its writer stopped"
        raise errors.StreamIncomplete(f"{src_where}: stream is incomplete ({state}); "
                                      "copy it with --allow-incomplete, or wait for it to complete")
    segs = _segments(store, src_bucket, src_prefix, m, src_where)
    total = sum(o.size for o in segs)

    # host:pid:copy-token: a writer id lease.local_writer_dead() understands, so a copy
    # killed here frees its destination at once (like a killed put).
    lease = Lease(store, dst_bucket, dst_prefix, new_writer_id("copy-"), where=dst_where, sse_key=dkey)
    # The destination while the copy runs: incomplete, empty, ours, kept fresh.
    template = mf.Manifest(completed=False, segment_size=m.segment_size, upload_began=mf.now_iso(),
                           layout=mf.Layout(), writer_id=lease.writer_id)
    existing = manifests.load(store, dst_bucket, dst_prefix, sse_key=dkey)
    if existing is None:
        store.bucket_seen(dst_bucket)
    lease.take(template.with_(heartbeat=time.time()), existing, cfg.stale_after)
    lease.keep_alive(cfg.heartbeat_interval, lambda: template.with_(heartbeat=time.time()))
    try:
        def one(o: ObjectInfo) -> int:
            if lease.error is not None:
                raise lease.error
            name = o.key[len(src_prefix):]
            r = copy_object(store, src_bucket, o.key, dst_bucket, dst_prefix + name, workers=1, info=o,
                            source_sse_key=skey, sse_key=dkey)
            if progress:
                progress(o.size)
            return r.requests
        requests = 0
        if segs:
            with cf.ThreadPoolExecutor(max(1, min(workers, len(segs))), thread_name_prefix="s3pipefs-copy") as pool:
                futs = [pool.submit(one, o) for o in segs]
                try:
                    for f in cf.as_completed(futs):
                        requests += f.result()
                except BaseException:
                    for f in futs:
                        f.cancel()
                    raise
        # An older, longer stream here left segments `cat 0*` would pick up.
        if existing is not None:
            deletion.delete_leftovers(store, dst_bucket, dst_prefix, len(segs))
        if m.completed and "replacing" not in m.extra:
            final = body
        else:
            # A replacement in progress at the source, or an incomplete copy: publish the
            # snapshot that was copied, with a released lease.
            extra = {k: v for k, v in m.extra.items() if k != "replacing"}
            # An encrypted stream's layout names exactly the segments copied (and its MAC covers it).
            layout = m.layout if m.encryption else mf.Layout.from_sizes(o.size for o in segs)
            snap = m.with_(extra=extra, num_segments=layout.count if m.encryption else len(segs),
                           total_size=layout.total if m.encryption else total,
                           layout=layout if m.own else None, writer_id=lease.writer_id,
                           heartbeat=0.0 if not m.completed else m.heartbeat)
            if not m.completed:
                snap = snap.with_(sha256="", own=True, format=m.format if m.own else mf.FORMAT_VERSION,
                                  chain=m.chain if (m.own and m.layout is not None) else "")
            final = mf.render(snap)
        lease.commit(final)
    except BaseException:
        lease.release(template)
        raise
    return CopyResult("stream", total, requests + 4, complete=m.completed)
