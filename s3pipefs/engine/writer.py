"""StreamWriter: bytes in, verified segments and a live manifest out.

Data flow::

    write() ─► staged segments (StagedFile, 0600, private dir) ─seal─► upload pool (workers)
    pwrite()     │ stream SHA-256                                      │ segment CRC32 → x-amz-checksum-crc32
    truncate()   ▼                                                     ▼
               close(): wait, final manifest (completed, sha256) landed segments ─► manifest
                                                                  thread (live follow, heartbeat)

* Sealed and unsealed. Bytes are staged in segment files until *sealed*: handed to the
  upload pool, after which they never change (but see *Patchable*). Before that they may: ``pwrite`` writes
  into the unsealed tail, at the end, or past it (the gap becomes zeros, a hole in the
  staging file); ``truncate`` extends with zeros or cuts the unsealed tail. Anything
  before ``sealed`` is refused (SeekNotAllowed) and nothing changes. A full segment is
  sealed once ``hold_back`` bytes follow it (0 for ``put``: at once; a mount keeps one
  segment, so the last segment's worth of bytes stays writable while the program keeps
  writing, as zip needs to patch a member's header). ``flush`` and ``close`` seal
  everything, and so does the timed seal once the writer pauses (below).
* Patchable (a mount's file opened for reading and writing: zip, zipfile). Such a writer
  publishes nothing before ``flush`` or ``close``: its segments are sealed and uploaded
  as they fill, as always (close does not wait for the whole file, staging stays
  bounded), but its progress manifests name only what was published (there before an
  append, or named by a flush), so every byte written since may still change: ``sealed``
  is the published end. A pwrite into a *held* segment (uploaded or on its way, named by
  no manifest) waits for its upload to land, fetches it back into staging (verified
  against the CRC32 it was uploaded with), patches it, and seals it again, to be
  uploaded under the same key when another held segment is patched, or at flush or
  close: no reader can be reading that key, as no manifest names it. One such segment is
  in staging at a time. Its CRC32 is recomputed at that seal; the stream SHA-256 is
  rewound to the state saved at the start of the first patched segment and fed again at
  close, after every upload, reading those segments back (_rehash_held). A truncate
  still cuts only the unsealed tail, and no timed seal runs (nothing would be
  published). A crash leaves the published manifest; held segments are leftovers past
  its count, overwritten or deleted by the next writer of the stream.
* Digests. Appended bytes feed the segment's CRC32 and the stream's SHA-256 as they
  arrive, so a sequential writer reads nothing back. A patch or cut makes both stale
  from that segment on: the segment's CRC32 is recomputed at seal from the staged file
  (one read from the page cache), and the SHA-256 is rewound to the state saved at the
  start of the first stale segment and fed from the staged files at seal, in order.
* Backpressure: sealing a segment takes an upload slot, of ``limit + 1`` where ``limit``
  is the uploads at once that adaptive concurrency allows (engine/adaptive.py:
  ``workers`` to begin with, raised while the writer waits here and more uploads move
  more bytes, up to ``max_inflight``; for a mount's writer at most the shared pool's
  threads). The writer blocks there instead of staging without limit, never holding
  ``_stage`` while it waits (a patch of a held segment waits there for that segment's
  upload to land). Disk use stays within ``(max(workers, max_inflight) + 2) *
  segment_size`` (``cfg.staging_bound``), one segment more with
  ``hold_back`` and one more while a patchable writer holds a segment fetched back
  (holes take none). Nothing here waits on the staging budget (engine/budget.py, whose
  ``admit`` the mount calls before a write and which never waits while nothing
  uploads), so no writer waits for disk that only its own close would free.
* Uploads run on a ``WriteBudget``'s pool (engine/budget.py): the writer's own, of
  ``max(workers, max_inflight)`` threads (started as needed), or one shared by every writer of a mount, whose staged files
  then charge the mount's staging budget.
* The manifest only ever counts the *contiguous* run of landed segments, so a reader never
  sees a hole, and a crashed writer leaves a stream whose manifest names only verified data.
* Bounded visibility lag (the timed seal). The manifest thread seals staged bytes short
  once they have waited ``flush_interval``, so readers on other hosts see a slow writer
  (a log, a quiet dump) within about that long. With ``hold_back`` 0 (put) that is the
  whole rule. A writer with ``hold_back`` (a mount) gives up its writable tail to it only
  when it has been quiet (no write, pwrite or truncate) for half the interval, or when
  its oldest held byte has waited HELD_TAIL_INTERVALS intervals: a program that writes,
  pauses and writes again keeps patching its tail as before (zip filling in a header
  while it compresses the member), a trickle is still seen within a few seconds, and a
  program that seeks back to bytes it wrote before such a pause finds them sealed
  (ESPIPE, as for bytes a segment back). ``flush_interval`` 0 turns the timed seal off.
  It never waits: it skips a round while a write holds ``_stage`` or no upload slot is
  free (bytes are being published then anyway). Each short segment adds a layout run to
  every later manifest, so the interval stretches as runs accumulate
  (SHORT_RUNS_AT_FULL_RATE) and short seals stop at MAX_SHORT_RUNS, keeping the manifest
  far below its 1 MiB limit.
* Locks. ``_stage`` guards what the write path and the manifest thread (and readers)
  share: the staged segments, ``_offset``, ``_sealed_bytes``, ``_next_index``, the
  stream hash and a patchable writer's held and reopened segments. ``_cond`` guards what the uploads change: ``_uploading``, ``_landed``,
  ``_futures``. Taken in that order when both are.
* close() is the commit point: it returns after every segment is verified in S3 and the
  manifest says complete; any failure raises and leaves the stream incomplete.
* A reader in this process reads what the writer holds (read_staged: the staged segments,
  a patchable writer's segment fetched back to be patched, and sealed segments still
  uploading) and its landed segments before any manifest names them (landed);
  engine/live.py puts the two together. ``rewrites`` counts patched segments that landed
  again, so such a reader knows to drop what it cached of them.
* Replacing a complete stream (mode "create" over an existing one) stages the new segments
  under ``NAME/.next-<id>/`` and swaps them in at commit, so the old stream stays whole
  until the new one is complete.
* ``sse_key`` (the Engine's request options): the SSE-C key every segment and manifest
  request of this writer carries. ``encrypt_key``: the client-side key; each segment is
  encrypted as it is uploaded and each manifest protected (engine/crypto.py), while the
  staged files, the CRC32 chain and the layout stay in plaintext terms.
"""
from __future__ import annotations

import bisect
import concurrent.futures as cf
import hashlib
import logging
import threading
import time

from s3pipefs import errors, manifest as mf
from s3pipefs.checksum import crc32
from s3pipefs.config import TransferConfig
from s3pipefs.engine import adaptive, crypto, deletion, manifests
from s3pipefs.engine.budget import WriteBudget
from s3pipefs.engine.lease import Lease, new_writer_id
from s3pipefs.engine.reader import Reader, WriterPlan
from s3pipefs.engine.staging import StagedFile, StagingDir, zeros
from s3pipefs.s3 import ObjectStore, b64 as store_b64

log = logging.getLogger(__name__)

MODES = ("create", "append", "resume")
# Between manifest updates driven by landed segments; bounds manifest PUTs to ~4/s while
# keeping live readers no more than this far behind the writer.
MIN_MANIFEST_INTERVAL = 0.25
MAX_KEY_BYTES = 1024  # the S3 limit on object key length (UTF-8 bytes)
# Short segments at the full flush rate until the layout has this many runs; past it the
# interval grows in proportion (2000 runs: twice the interval), which holds a slow writer's
# manifest traffic near 10 KB/s however long it runs.
SHORT_RUNS_AT_FULL_RATE = 1000
# No more short segments past this many layout runs (a manifest of ~500 KB): whole segments only.
MAX_SHORT_RUNS = 50_000
# A writer with hold_back that never pauses for half the flush interval still has its
# tail sealed once the oldest byte in it has waited this many intervals.
HELD_TAIL_INTERVALS = 4


class StreamWriter:
    def __init__(self, store: ObjectStore, cfg: TransferConfig, bucket: str, key: str, mode: str = "create",
                 writer_id: str | None = None, *, hold_back: int = 0, sse_key: bytes = b"",
                 encrypt_key: bytes = b"", budget: WriteBudget | None = None, patchable: bool = False):
        """``hold_back``: keep the last this many bytes (at most one segment) unsealed, so
        pwrite and truncate may still change them. ``sse_key``: the SSE-C key of every
        request (b"": none). ``budget``: the staging budget and upload pool this writer
        shares with others (a mount's); None: a pool of its own. ``patchable``: publish
        nothing before flush or close, and let pwrite change every byte written since
        (see "Patchable" in the module docstring)."""
        if mode not in MODES:
            raise errors.UsageError(f"unknown write mode {mode!r}")
        self.store, self.cfg, self.sse_key = store, cfg, sse_key
        self._encrypt_key = encrypt_key
        self.cipher: crypto.StreamCipher | None = None  # set by _open
        self.bucket, self.key = bucket, key.strip("/")
        if not self.key:
            raise errors.UsageError(f"s3://{bucket}/: a stream needs a name, not just a bucket")
        self.prefix = self.key + "/"
        self.where = f"s3://{bucket}/{self.key}"
        # S3 keys are at most 1024 bytes: refuse a name whose segment keys could never be
        # stored before writing anything (its manifest would be left behind).
        if len((self.prefix + mf.segment_name(1)).encode()) > MAX_KEY_BYTES:
            raise errors.UsageError(f"{self.where[:60]}...: name too long for a stream: S3 keys are at most "
                                    f"{MAX_KEY_BYTES} bytes, and segment keys add 16 to the name")
        self.writer_id = writer_id or new_writer_id()
        self._lease = Lease(store, bucket, self.prefix, self.writer_id, where=self.where, sse_key=sse_key)
        self.closed = False
        self.committed: manifests.Loaded | None = None  # the complete manifest, once closed

        self._cond = threading.Condition()
        self._error: BaseException | None = None
        # Landed segments past the contiguous run folded into _run (below): index -> (size,
        # crc32 bytes). A patchable writer keeps every one (it may land again).
        self._landed: dict[int, tuple[int, bytes]] = {}
        self._futures: set[cf.Future] = set()
        # Uploads at once: ``workers`` to begin with, raised while the producer waits for a
        # slot and more uploads move more bytes (engine/adaptive.py). A mount's writers share
        # the budget's upload threads: one writer never takes more than all of them.
        cap = cfg.upload_cap if budget is None else min(cfg.max_inflight, budget.threads)
        self.concurrency = adaptive.Concurrency(cfg.workers, cap)
        self._slots = adaptive.Gate(lambda: self.concurrency.limit + 1)
        # A pool of its own has threads for the cap: the limit holds its uploads to the
        # limit (a slot more is the one submitted next). A shared pool's threads are the
        # bound there; none of them waits on one writer's limit.
        self._running = adaptive.Gate(lambda: self.concurrency.limit) if budget is None else None
        self._stream_hash = hashlib.sha256()
        self._hash_valid = True
        # The stream hash has seen every byte so far, in order (no patch since).
        self._hash_live = True
        # What the write path shares with the timed seal and readers (see Locks above).
        self._stage = threading.Condition()
        # Unsealed segments, oldest first; all but the last are full. Never an empty one.
        self._staged: list[StagedFile] = []
        self._hold_back = min(max(0, hold_back), cfg.segment_size)
        self._patchable = patchable
        # Patchable: the segments sealed since the last publication, oldest first, as
        # (stream offset, size, stream hash at its first byte or None); the first one is
        # segment _held_first. Guarded by _stage.
        self._held: list[tuple[int, int, object]] = []
        self._held_first = 0  # set by _open
        # The held segment brought back to be patched: (index, its staged file), or None.
        self._reopened: tuple[int, StagedFile] | None = None
        self._reopens = 0  # names each reopened file uniquely
        # The earliest held segment a patch changed, its offset and the stream hash at its
        # start: close feeds the hash again from there (None: no held segment patched).
        self._rehash: tuple[int, int, object] | None = None
        # Patched segments that landed again: a reader in this process drops what it
        # cached of them (engine/live.py). Guarded by _cond.
        self.rewrites = 0
        self._last_write = 0.0  # monotonic time of the last change to the staged bytes
        # Sealed segments not landed yet: index -> (stream offset, staged file). Guarded by _cond.
        self._uploading: dict[int, tuple[int, StagedFile]] = {}
        self._runs = 0  # runs in the layout of the segments sealed so far
        self._last_size = -1  # size of the last sealed segment
        self._skip = 0  # resume: input bytes already in S3, checked and skipped
        self._skip_layout = iter(())
        self._skip_seg_crc = 0
        self._skip_seg_left = 0
        self._skip_chain = ""
        self._replacing = False
        self._data_prefix = self.prefix
        self._data_prefix_done: str | None = None  # a swapped-in replacement's staging prefix
        self._manifest_dirty = False
        # Set by close. The landing of its last outstanding segment publishes no progress
        # manifest: the commit's follows at once (one PUT less per small file). Earlier
        # landings still do, so a crash during a long close loses no named progress.
        self._committing = False
        self._stop_manifest = threading.Event()
        # Serialises building and saving progress manifests, so a newer one never lands first.
        self._manifest_lock = threading.Lock()

        self._open(mode)
        self._own_budget = budget is None
        self._budget = WriteBudget.private(cfg.upload_cap) if budget is None else budget
        self._staging = StagingDir(cfg.staging_dir, self._budget.charge)
        self._manifest_thread = threading.Thread(target=self._manifest_loop, name="s3pipefs-manifest", daemon=True)
        self._manifest_thread.start()

    # -- opening and the lease ---------------------------------------------------
    def _open(self, mode: str) -> None:
        cfg = self.cfg
        existing = manifests.load(self.store, self.bucket, self.prefix, sse_key=self.sse_key)
        if existing is None:
            # Also catches a missing bucket: make it a clear error before staging anything.
            self.store.bucket_seen(self.bucket)
        base = mf.Layout()
        began = mf.now_iso()
        chain = ""
        if existing is not None:
            self._lease.refuse_if_held(existing, cfg.stale_after)
        self.cipher = crypto.for_writing(self._encrypt_key, existing and existing.manifest, mode, self.where)
        if self.cipher is not None:
            chain = self._skip_chain = self.cipher.chain_seed
        if existing is not None:
            m = existing.manifest
            if mode == "resume" and m.completed:
                raise errors.Exists(f"{self.where}: stream is already complete; nothing to resume")
            if mode in ("append", "resume"):
                base = self._existing_layout(m)
                chain = m.chain if m.own else ""
                began = m.upload_began or began
                if mode == "resume":
                    self._skip = base.total
                    self._skip_layout = base.sizes()  # lazy: the layout may be hostile
                    self._hash_valid = True
                else:
                    # The whole-stream MD5 cannot be extended without re-reading old data.
                    self._hash_valid = base.total == 0
                if not m.own and base.count:
                    chain = ""  # s3pipe2 streams carry no chain; verify falls back to ETags
            elif m.completed:
                self._replacing = True
                self._data_prefix = f"{self.prefix}{deletion.STAGING_MARK}{self.writer_id.rsplit(':', 1)[-1]}/"
        self._base = base
        self._chain = chain
        # The contiguous run of landed segments from the first, folded: its layout (run-length
        # encoded) and CRC32 chain, and how many of this writer's segments it holds. So memory
        # and the work of each manifest stay the same however many segments a stream has.
        self._run: tuple[mf.Layout, str] = (base, chain)
        self._run_count = 0
        self._began = began
        # Attributes for the manifests this writer writes. The permission bits and owners
        # stay with the name, as a truncating open keeps a file's mode and owner; a stored
        # mtime does not survive new data. A mount sets them before the commit (cp -p, tar x).
        old = existing.manifest if existing is not None else None
        self.mode = old.mode if old is not None else None
        self.uid = old.uid if old is not None else None
        self.gid = old.gid if old is not None else None
        self.mtime_ns: int | None = None
        self._next_index = self._held_first = base.count + 1
        # What a manifest names so far: a patchable writer's progress manifests name no more.
        self._published: tuple[mf.Layout, str] = (base, chain)
        self._runs, self._last_size = len(base.runs), base.runs[-1][1] if base.runs else -1
        self._offset = base.total
        self._sealed_bytes = base.total
        self._existing = existing

        if self._replacing:
            # Take the lease on the old, still complete manifest without changing its data.
            old = existing.manifest
            first = old.owned().with_(writer_id=self.writer_id, heartbeat=time.time(),
                                      extra={**old.extra, "replacing": self._data_prefix[len(self.prefix):]})
        else:
            first = self._manifest(completed=False)
        self._lease.take(first, existing, cfg.stale_after)
        if existing is not None and mode == "create" and not self._replacing:
            self._delete_leftovers(keep=0)

    def _existing_layout(self, m: mf.Manifest) -> mf.Layout:
        if m.own and m.layout is not None:
            return m.layout
        # s3pipe2 streams: segment sizes vary, take them from a listing.
        sizes = {}
        for o in self.store.list(self.bucket, self.prefix):
            idx = mf.segment_index(o.key[len(self.prefix):])
            if idx is not None and idx <= m.num_segments:
                sizes[idx] = o.size
        if len(sizes) != m.num_segments:
            raise errors.StreamIncomplete(f"{self.where}: manifest names {m.num_segments} segments, "
                                          f"{len(sizes)} are present")
        return mf.Layout.from_sizes(sizes[i] for i in range(1, m.num_segments + 1))

    def _delete_leftovers(self, keep: int) -> None:
        """Remove segments numbered above ``keep`` and stale .next-* dirs of dead writers,
        sparing our own staged replacement while it is still being written."""
        own = self._data_prefix[len(self.prefix):]  # "" once swapped in
        deletion.delete_leftovers(self.store, self.bucket, self.prefix, keep, spare=own)

    # -- the write path ------------------------------------------------------------
    @property
    def offset(self) -> int:
        """Bytes in the stream so far, including what was there before an append."""
        return self._offset

    @property
    def patchable(self) -> bool:
        return self._patchable

    @property
    def sealed(self) -> int:
        """Bytes from the start that can no longer change: uploaded or on their way, or
        for a patchable writer those a manifest names (published)."""
        return self._published[0].total if self._patchable else self._sealed_bytes

    def claim(self) -> None:
        """Make the name exist before the commit: the lease taken at open already has."""

    def progress(self) -> dict:
        """Bytes written, in S3 (with what was there before an append) and staged here, and
        segments sealed but not landed yet: for `s3pipefs status`."""
        with self._cond:
            uploaded = self._run[0].total + sum(size for size, _ in self._landed.values())
            in_flight = len(self._uploading)
        written = self._offset
        return {"written": written, "uploaded": uploaded, "staged": max(0, written - uploaded),
                "segments_in_flight": in_flight, "inflight_limit": self.concurrency.limit}

    def write(self, data) -> int:
        """Append ``data`` at the end."""
        self._check_writable()
        view = memoryview(data).cast("B")
        n = len(view)
        if self._skip:
            view = self._consume_skip(view)
        self._append(view)
        return n

    def pwrite(self, offset: int, data) -> int:
        """Write ``data`` at ``offset``: in the unsealed tail, at the end, or past it (the
        gap reads as zeros). Before ``sealed``: SeekNotAllowed, and nothing changes."""
        self._check_writable()
        view = memoryview(data).cast("B")
        n = len(view)
        if offset == self._offset:
            return self.write(view)
        resealed = []
        with self._stage:  # the check and the patch with no timed seal between them
            self._refuse_out_of_order(offset, f"write of {n} bytes at offset {offset}")
            gap = offset - self._offset
            if gap < 0 and offset < self._sealed_bytes:
                view, offset, resealed = self._patch_held(offset, view)
            if gap < 0 and view:
                view = self._patch(offset, view)
        self._submit_all(resealed)
        if gap > 0:
            self._append_zeros(gap)
        self._append(view)
        return n

    def truncate(self, length: int) -> None:
        """Extend to ``length`` with zeros, or cut the unsealed tail there."""
        self._check_writable()
        with self._stage:
            if length == self._offset:
                return
            self._refuse_out_of_order(length, f"truncate to {length} bytes")
            if length < self._sealed_bytes:
                raise errors.SeekNotAllowed(
                    f"{self.where}: truncate to {length} bytes refused: the first {self._sealed_bytes} bytes are "
                    "uploaded; a file open for reading and writing may rewrite them until close, not cut them; "
                    "nothing written so far changed")
            if length < self._offset:
                self._cut(length)
                return
        self._append_zeros(length - self._offset)

    def _cut(self, length: int) -> None:
        """Drop the staged bytes from ``length`` on; call with _stage held."""
        first, start = self._staged[0], self._sealed_bytes
        for i, staged in enumerate(self._staged):
            if length < start + staged.size:
                break
            start += staged.size
        keep = i + 1 if length > start else i
        for dropped in self._staged[keep:]:
            dropped.remove()
        del self._staged[keep:]
        if length > start:
            staged.cut(length - start)
            self._stale_from(i)
        elif i > 0:
            self._stale_from(i - 1)  # cut at a segment's start: the hash must lose what followed it
        else:
            # Back to the sealed end: the stream hash as it was there.
            if self._hashing:
                self._stream_hash, self._hash_live = first.hash_before, True
        self._offset = length
        self._last_write = time.monotonic()

    @property
    def _hashing(self) -> bool:
        """Is the stream hash kept up as segments seal? Not once a held segment was
        patched: close feeds it again from there (_rehash_held)."""
        return self._hash_valid and self._rehash is None

    def _check_writable(self) -> None:
        self._check()
        if self.closed:
            raise errors.S3PipeError(f"{self.where}: write after close")

    def _refuse_out_of_order(self, offset: int, what: str) -> None:
        if self._skip:
            raise errors.SeekNotAllowed(f"{self.where}: {what} refused: a resumed stream is written in order")
        if self._patchable and offset < self.sealed:
            raise errors.SeekNotAllowed(
                f"{self.where}: {what} refused: the first {self.sealed} bytes are published (named by the "
                "manifest: there before this writer, or made durable by fsync) and never change; "
                "nothing written so far changed")
        if offset < self._sealed_bytes and not self._patchable:
            raise errors.SeekNotAllowed(
                f"{self.where}: {what} refused: the first {self._sealed_bytes} bytes are sealed (uploaded, or on "
                "their way) and streams are append-only: only the unsealed tail can change; "
                "nothing written so far changed")

    def _filling(self) -> StagedFile:
        """The segment the next appended byte goes to; call with _stage held."""
        if not self._staged or self._staged[-1].size >= self.cfg.segment_size:
            staged = self._staging.create(mf.segment_name(self._next_index + len(self._staged)))
            if self._hashing and self._hash_live:
                staged.hash_before = self._stream_hash.copy()
            staged.rehash = not self._hash_live
            staged.since = time.monotonic()
            self._staged.append(staged)
        return self._staged[-1]

    def _append(self, view: memoryview) -> None:
        seg = self.cfg.segment_size
        while view:
            with self._stage:
                staged = self._filling()
                part = view[:seg - staged.size]
                staged.append(part)
                if self._hash_valid and self._hash_live:
                    self._stream_hash.update(part)
                sealed = self._grew(len(part))
            self._submit_all(sealed)  # may wait for upload slots: outside _stage
            view = view[len(part):]

    def _append_zeros(self, n: int) -> None:
        seg = self.cfg.segment_size
        while n:
            with self._stage:
                staged = self._filling()
                take = min(n, seg - staged.size)
                staged.append_zeros(take)
                if self._hash_valid and self._hash_live:
                    for chunk in zeros(take):
                        self._stream_hash.update(chunk)
                sealed = self._grew(take)
            self._submit_all(sealed)
            n -= take

    def _patch(self, offset: int, view: memoryview) -> memoryview:
        """Overwrite staged bytes from ``offset``; returns what lies past the end. Call
        with _stage held."""
        pos = offset - self._sealed_bytes
        for i, staged in enumerate(self._staged):
            if pos < staged.size:
                take = min(len(view), staged.size - pos)
                staged.patch(pos, view[:take])
                self._stale_from(i)
                view = view[take:]
                pos = 0
                if not view:
                    break
            else:
                pos -= staged.size
        self._last_write = time.monotonic()
        return view

    def _patch_held(self, offset: int, view: memoryview) -> tuple[memoryview, int, list]:
        """Patchable: overwrite bytes of held segments (sealed, not published) from
        ``offset``, bringing each back into staging. Returns what lies past them, where
        it goes, and the segment sealed again to make room (for _submit_all). Call with
        _stage held."""
        resealed = []
        try:
            while view and offset < self._sealed_bytes:
                k = bisect.bisect_right(self._held, offset, key=lambda held: held[0]) - 1
                index, (begin, size, hash_before) = self._held_first + k, self._held[k]
                if self._reopened is None or self._reopened[0] != index:
                    staged = self._bring_back(index)
                    try:
                        resealed += self._reseal()  # one held segment in staging at a time
                    except BaseException:
                        staged.remove()
                        raise
                    self._reopened = (index, staged)
                take = min(len(view), begin + size - offset)
                self._reopened[1].patch(offset - begin, view[:take])
                if self._rehash is None or index < self._rehash[0]:
                    self._rehash = (index, begin, hash_before)
                self._hash_live = False  # close feeds the hash again (_rehash_held)
                view, offset = view[take:], offset + take
        except BaseException:
            for _, staged in resealed:  # never submitted: the writer fails, its disk comes back
                staged.remove()
            raise
        self._last_write = time.monotonic()
        self._stage.notify_all()
        return view, offset, resealed

    def _bring_back(self, index: int) -> StagedFile:
        """A held segment's bytes, staged again to be patched: from S3 once its upload
        landed (no manifest names it, so no reader elsewhere can be reading it). Call with
        _stage held."""
        with self._cond:
            while index in self._uploading and self._error is None:
                self._cond.wait(timeout=0.5)
            landed = self._landed.get(index)
        self._check()
        key = self._data_prefix + mf.segment_name(index)
        data, _ = self.store.get(self.bucket, key, sse_key=self.sse_key, tries=self.cfg.tries)
        if self.cipher is not None:
            data = self.cipher.open(index, data, f"s3://{self.bucket}/{key}")
        if landed is None or mf.crc32_bytes(crc32(data)) != landed[1]:
            raise errors.IntegrityError(f"s3://{self.bucket}/{key}: segment differs from what was uploaded")
        self._reopens += 1
        staged = self._staging.create(f"{mf.segment_name(index)}.{self._reopens}")
        staged.append(data)
        return staged

    def _reseal(self) -> list[tuple[int, StagedFile]]:
        """Seal the reopened segment again, to be uploaded under its own key; call with
        _stage held."""
        if self._reopened is None:
            return []
        index, staged = self._reopened
        staged.read_back()  # its CRC32, patched
        staged.seal()
        with self._cond:
            self._uploading[index] = (self._held[index - self._held_first][0], staged)
        self._reopened = None
        return [(index, staged)]

    def _rehash_held(self) -> None:
        """A held segment was patched: feed the stream hash again from its start, reading
        the landed segments back (verified, prefetched). At close, after every upload."""
        if self._rehash is None or not self._hash_valid:
            return
        _, begin, h = self._rehash
        h = h.copy()
        with Reader(self.store, self.cfg, WriterPlan(self), follow=False) as reader:
            for chunk in reader.chunks(begin):
                h.update(chunk)
        self._stream_hash, self._hash_live, self._rehash = h, True, None

    def _stale_from(self, i: int) -> None:
        """Staged segment ``i`` changed: the stream hash is behind from there on."""
        self._hash_live = False
        for staged in self._staged[i:]:
            staged.rehash = True

    def _grew(self, n: int) -> list[tuple[int, StagedFile]]:
        """``n`` bytes were appended; call with _stage held. Returns the segments it
        sealed, for _submit_all."""
        self._offset += n
        self._last_write = time.monotonic()
        self._stage.notify_all()  # readers waiting at the end (wait_written)
        seg = self.cfg.segment_size
        sealed = []
        # A full segment is sealed once hold_back bytes follow it.
        while (self._staged and self._staged[0].size >= seg
               and self._offset - self._sealed_bytes - seg >= self._hold_back):
            sealed.append(self._seal())
        return sealed

    # -- what a reader in this process may read before it is published ---------------------
    def read_staged(self, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes at ``offset`` that only this writer holds: its staged
        segments and sealed segments not landed yet, never past a segment's end. b"" at or
        past the end of what was written; None when ``offset`` is in a landed segment
        (read it from S3, see landed()). Raises the writer's error once it failed or was
        aborted."""
        with self._stage:
            self._check()
            if offset >= self._offset:
                return b""
            start = self._sealed_bytes
            if offset >= start:
                for staged in self._staged:
                    if offset < start + staged.size:
                        return staged.read(offset - start, min(size, start + staged.size - offset))
                    start += staged.size
            if self._reopened is not None:
                index, staged = self._reopened
                start = self._held[index - self._held_first][0]
                if start <= offset < start + staged.size:
                    return staged.read(offset - start, min(size, start + staged.size - offset))
            with self._cond:  # a segment leaves _uploading (under _cond) before its file goes
                for begin, staged in self._uploading.values():
                    if begin <= offset < begin + staged.size:
                        return staged.read(offset - begin, min(size, begin + staged.size - offset))
        return None

    def landed(self) -> tuple[str, mf.Layout]:
        """The key prefix of this writer's segments (a replacement's staging prefix until
        its commit) and the layout of the contiguous run of them in S3, with what the
        stream held before an append: readable now, before a manifest names them."""
        with self._cond:
            return self._data_prefix, self._contiguous()[0]

    def wait_written(self, offset: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for bytes past ``offset`` (or the writer's end)."""
        with self._stage:
            return self._stage.wait_for(lambda: self._offset > offset or self.closed or self._error is not None,
                                        timeout)

    def _consume_skip(self, view: memoryview) -> memoryview:
        """Resume: check input against the segments already uploaded, by their digest chain."""
        while view and self._skip:
            if self._skip_seg_left == 0:
                self._skip_seg_left = next(self._skip_layout)
                self._skip_seg_crc = 0
            take = min(len(view), self._skip_seg_left, self._skip)
            part = view[:take]
            self._stream_hash.update(part)
            self._skip_seg_crc = crc32(part, self._skip_seg_crc)
            self._skip -= take
            self._skip_seg_left -= take
            view = view[take:]
            if self._skip_seg_left == 0:
                self._skip_chain = mf.chain_next(self._skip_chain, mf.crc32_bytes(self._skip_seg_crc))
        if self._skip == 0 and self._chain and self._skip_chain != self._chain:
            self._fail_open_resume()
        return view

    def _fail_open_resume(self):
        raise errors.IntegrityError(
            f"{self.where}: input differs from the {self._base.total} bytes already uploaded; "
            "resume needs the same input from its start")

    def _seal(self) -> tuple[int, StagedFile]:
        """Seal the oldest staged segment; call with _stage held. Upload it with _submit."""
        staged = self._staged.pop(0)
        if self._patchable:
            before = staged.hash_before.copy() if self._hashing and staged.hash_before is not None else None
            self._held.append((self._sealed_bytes, staged.size, before))
        if staged.rehash and self._hashing:
            # A patch left the stream hash behind: feed it this segment from the file.
            h = staged.hash_before
            staged.read_back(h.update)
            if self._staged:
                self._staged[0].hash_before = h
            else:
                self._stream_hash, self._hash_live = h, True
        elif staged.patched:
            staged.read_back()
        staged.seal()
        begin = self._sealed_bytes
        self._sealed_bytes += staged.size
        index = self._next_index
        self._next_index += 1
        if staged.size != self._last_size:
            self._runs, self._last_size = self._runs + 1, staged.size
        with self._cond:
            self._uploading[index] = (begin, staged)
        return index, staged

    def _seal_all(self) -> list[tuple[int, StagedFile]]:
        """Seal every staged segment; call with _stage held."""
        return [self._seal() for _ in range(len(self._staged))]

    def _submit_all(self, sealed: list[tuple[int, StagedFile]]) -> None:
        for index, staged in sealed:
            self._submit(index, staged)

    def _submit(self, index: int, staged: StagedFile, slot_held: bool = False) -> None:
        # Backpressure: wait for a free upload slot, but keep noticing failures. The wait
        # tells the controller the producer is held back by the network.
        if not slot_held and not self._slots.acquire(blocking=False):
            began = time.monotonic()
            while not self._slots.acquire(timeout=0.5):
                self._check()
            self.concurrency.waited(time.monotonic() - began)
        try:
            fut = self._budget.submit(self._upload, index, staged)
        except BaseException:
            self._slots.release()
            staged.remove()
            raise
        with self._cond:
            self._futures.add(fut)
        fut.add_done_callback(lambda f: self._upload_done(f, staged))

    def _upload_done(self, fut: cf.Future, staged: StagedFile) -> None:
        staged.remove()  # landed (removed already), failed or cancelled: its disk is free
        self._slots.release()
        with self._cond:
            self._futures.discard(fut)
            # abort() cancels queued uploads; exception() would raise for those.
            exc = None if fut.cancelled() else fut.exception()
            if exc is not None and self._error is None:
                self._error = exc
            self._cond.notify_all()

    def _upload(self, index: int, staged: StagedFile) -> None:
        key = self._data_prefix + mf.segment_name(index)
        crc = mf.crc32_bytes(staged.crc)  # of the plaintext: the digest chain's
        if self._error is not None:
            return
        with open(staged.path, "rb") as f:
            body, body_crc, length = f, crc, staged.size
            if self.cipher is not None:
                body = self.cipher.seal(index, f.read())
                body_crc, length = mf.crc32_bytes(crc32(body)), len(body)
            # The server checks the CRC32 and refuses a body damaged in transit (retried,
            # rewound, by the store: cfg.tries attempts).
            if self._running is not None:
                self._running.acquire()
            ticket, landed = self.concurrency.begin(), None
            try:
                self.store.put(self.bucket, key, body, crc32=store_b64(body_crc), length=length,
                               metadata={"crc32": body_crc.hex(), "gen": self.writer_id}, sse_key=self.sse_key,
                               tries=self.cfg.tries)
                landed = length
            finally:
                self.concurrency.end(ticket, landed)
                if self._running is not None:
                    self._running.release()
        with self._cond:
            if index in self._landed:
                self.rewrites += 1  # a patched segment, landed again
            self._landed[index] = (staged.size, crc)
            del self._uploading[index]
            # A replacement is invisible until commit, a patchable writer's segments until
            # flush or close: only a heartbeat goes out.
            self._manifest_dirty = not (self._replacing or self._patchable) and not self._last_landing()
            self._cond.notify_all()
        staged.remove()

    def _last_landing(self) -> bool:
        """Inside close, every sealed segment has landed; call with _cond held."""
        sealed = self._next_index - 1 - self._base.count
        return self._committing and sealed == self._run_count + len(self._landed)

    # -- manifest --------------------------------------------------------------------
    def _contiguous(self) -> tuple[mf.Layout, str]:
        """Layout and chain of the landed run from the first segment; call with _cond held.

        The run grows by the segments that landed since; a writer that is not patchable
        forgets them then (a patchable one's may land again, so it keeps them all)."""
        layout, chain = self._run
        i = self._base.count + self._run_count + 1
        while i in self._landed:
            size, crc = self._landed[i] if self._patchable else self._landed.pop(i)
            layout = layout.append(size)
            chain = mf.chain_next(chain, crc)
            i += 1
        if not self._patchable:
            self._run = (layout, chain)
            self._run_count = i - 1 - self._base.count
        return layout, chain

    def _manifest(self, completed: bool, layout: mf.Layout | None = None, chain: str = "") -> mf.Manifest:
        layout = layout if layout is not None else self._base
        m = mf.Manifest(
            completed=completed, num_segments=layout.count, total_size=layout.total,
            segment_size=self.cfg.segment_size, upload_began=self._began,
            upload_ended=mf.now_iso() if completed else "",
            layout=layout, chain=chain or self._chain,
            sha256=self._stream_hash.hexdigest() if completed and self._hash_valid else "",
            writer_id=self.writer_id, heartbeat=time.time(), mtime_ns=self.mtime_ns, mode=self.mode,
            uid=self.uid, gid=self.gid,
        )
        return self.cipher.protect(m) if self.cipher is not None else m

    def _write_manifest(self, completed: bool = False, publish: bool = False) -> None:
        """``publish``: a patchable writer's manifest names every landed segment (flush);
        otherwise only what it named before."""
        with self._manifest_lock:
            self._write_manifest_locked(completed, publish)

    def _write_manifest_locked(self, completed: bool, publish: bool = False) -> None:
        with self._cond:
            layout, chain = self._contiguous()
            self._manifest_dirty = False
        if self._replacing and not completed:
            return self._lease.renew()  # a replacement is invisible until commit: heartbeat only
        if self._patchable and not (completed or publish):
            layout, chain = self._published
        m = self._manifest(completed, layout, chain)
        etag = self._lease.save(m)
        self._published = (layout, chain)
        if completed:
            self.committed = manifests.Loaded(m, etag, time.time())

    def _manifest_loop(self) -> None:
        last = time.monotonic()
        while not self._stop_manifest.is_set():
            with self._cond:
                self._cond.wait(timeout=MIN_MANIFEST_INTERVAL)
                dirty = self._manifest_dirty
            if self._stop_manifest.is_set():
                return
            self._seal_if_held_too_long()
            due = time.monotonic() - last >= self.cfg.heartbeat_interval
            if not (dirty or due):
                continue
            try:
                self._write_manifest()
                last = time.monotonic()
            except BaseException as e:  # noqa: BLE001 - surfaces through write/flush/close
                self._fail(e)
                return
            self._stop_manifest.wait(MIN_MANIFEST_INTERVAL)

    def _flush_interval(self) -> float:
        """How long staged bytes may wait to be published: 0 = until their segment is full."""
        if not self.cfg.flush_interval or self._replacing or self._patchable or self._runs >= MAX_SHORT_RUNS:
            return 0.0  # a replacement (a patchable writer) is invisible until its commit (flush) anyway
        return self.cfg.flush_interval * max(1.0, self._runs / SHORT_RUNS_AT_FULL_RATE)

    def _timed_seal_due(self, interval: float) -> bool:
        """Is the oldest staged segment to be sealed now? Call with _stage held."""
        if not self._staged or self._committing or self.closed:
            return False
        now = time.monotonic()
        waited = now - self._staged[0].since
        if not self._hold_back:
            return waited >= interval
        # A writable tail is given up when the writer pauses, or it has waited long.
        return now - self._last_write >= interval / 2 or waited >= HELD_TAIL_INTERVALS * interval

    def _seal_if_held_too_long(self) -> None:
        """The timed seal: publish bytes held too long (see the module docstring) in
        short segments. Never waits: a write holding _stage, or no free upload slot,
        skips this round."""
        interval = self._flush_interval()
        if not interval or not self._staged or not self._stage.acquire(blocking=False):
            return
        sealed = []
        try:
            while self._timed_seal_due(interval) and self._slots.acquire(blocking=False):
                try:
                    sealed.append(self._seal())
                except BaseException:
                    self._slots.release()
                    raise
        except BaseException as e:  # noqa: BLE001 - surfaces through write/flush/close
            self._fail(e)
        finally:
            self._stage.release()
        for index, staged in sealed:
            try:
                self._submit(index, staged, slot_held=True)
            except BaseException as e:  # noqa: BLE001 - surfaces through write/flush/close
                self._fail(e)

    def _fail(self, e: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = e
            self._cond.notify_all()

    def _stop_manifest_loop(self, join: bool = True) -> None:
        # Wake the loop out of its wait on the condition, or a commit waits out the interval.
        self._stop_manifest.set()
        with self._cond:
            self._cond.notify_all()
        if join:
            self._manifest_thread.join()

    # -- durability and commit ---------------------------------------------------------
    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        """Wait until every sealed segment has landed (or an upload failed)."""
        with self._cond:
            while (self._futures or self._uploading) and self._error is None:
                self._cond.wait(timeout=0.5)
        self._check()

    def flush(self) -> None:
        """fsync: everything written so far is in S3, verified and named by the manifest."""
        self._check()
        if self.closed:
            return
        with self._stage:
            sealed = self._reseal() + self._seal_all()
        self._submit_all(sealed)
        self._drain()
        self._write_manifest(publish=True)
        with self._stage:  # published: no longer patchable
            self._held.clear()
            self._held_first = self._next_index

    def close(self) -> None:
        """Commit: the stream is complete in S3, or this raises and it stays incomplete."""
        if self.closed:
            self._check()
            return
        try:
            if self._skip:
                raise errors.IntegrityError(
                    f"{self.where}: input ended after {self._base.total - self._skip} bytes, before the "
                    f"{self._base.total} bytes already uploaded")
            with self._stage:
                self._committing = True  # no timed seal from here on
                if not self._staged and self._next_index == 1:
                    # An empty stream still has one (empty) segment, as s3pipe2 writes it.
                    self._staged.append(self._staging.create(mf.segment_name(1)))
                sealed = self._reseal() + self._seal_all()
            self._submit_all(sealed)
            self._drain()
            self._stop_manifest_loop()
            self._check()
            self._rehash_held()
            if self._replacing:
                self._swap_in()
            elif self._existing is not None:
                # Segments a dead writer landed past the end would be picked up by `cat 0*`.
                with self._cond:
                    count = self._contiguous()[0].count
                self._delete_leftovers(keep=count)
            self._write_manifest(completed=True)
        except BaseException:
            self.abort()
            raise
        self.closed = True
        self._wake_readers()
        self._teardown()

    def _wake_readers(self) -> None:
        with self._stage:
            self._stage.notify_all()

    def _swap_in(self) -> None:
        """Move the staged replacement into place; the stream is incomplete while it moves."""
        with self._cond:
            layout, chain = self._contiguous()
        count = layout.count
        self._replacing = False
        m = self._manifest(False, mf.Layout(), "")
        self._lease.save(m)
        names = [mf.segment_name(i) for i in range(1, count + 1)]
        copies = [self._budget.submit(self.store.copy, self.bucket, self._data_prefix + n, self.bucket,
                                      self.prefix + n, source_sse_key=self.sse_key, sse_key=self.sse_key)
                  for n in names]
        for f in copies:
            f.result()
        self._data_prefix_done = self._data_prefix
        self._data_prefix = self.prefix
        self._delete_leftovers(keep=count)

    def abort(self) -> None:
        """Stop; the stream stays incomplete (resumable) and the lease is released."""
        if self.closed:
            return
        self.closed = True
        self._stop_manifest_loop(join=False)  # joined below, after the uploads stop
        for f in list(self._futures):
            f.cancel()
        with self._cond:
            if self._error is None:
                self._error = errors.StreamIncomplete(f"{self.where}: writer aborted")
            self._cond.notify_all()
        self._wake_readers()
        try:
            with self._cond:
                while self._futures:  # the uploads already running
                    self._cond.wait(timeout=0.5)
            if self._manifest_thread.is_alive():
                self._manifest_thread.join(timeout=30)
            if self._replacing:
                self._restore_replaced()
            else:
                with self._manifest_lock:
                    with self._cond:
                        layout, chain = self._published if self._patchable else self._contiguous()
                    self._lease.release(self._manifest(False, layout, chain))
        except errors.S3PipeError as e:
            log.warning("%s: could not release the stream: %s", self.where, e)
        finally:
            self._teardown()

    def _restore_replaced(self) -> None:
        old = self._existing.manifest
        got = manifests.load(self.store, self.bucket, self.prefix, sse_key=self.sse_key)
        if got is not None and got.manifest.writer_id == self.writer_id and got.manifest.completed:
            manifests.save(self.store, self.bucket, self.prefix, old, if_match=got.etag, sse_key=self.sse_key)
        deletion.delete_under(self.store, self.bucket, self._data_prefix)

    def _teardown(self) -> None:
        if self._own_budget:
            self._budget.shutdown()
        with self._stage:
            for staged in self._staged:
                staged.remove()
            self._staged.clear()
            if self._reopened is not None:
                self._reopened[1].remove()
                self._reopened = None
        self._staging.cleanup()
        done = self._data_prefix_done
        if done:
            try:
                deletion.delete_under(self.store, self.bucket, done)
            except errors.S3PipeError as e:
                log.warning("%s: leftover staged copy not removed: %s", self.where, e)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort()
