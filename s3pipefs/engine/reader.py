"""Readers: random access over streams and plain objects, with prefetch and live follow.

A reader works in *units*: for a stream each segment is one unit, fetched whole and
verified against its checksum (the ``crc32`` user metadata s3pipefs writes, or the MD5
ETag of a single-part upload, which is what s3pipe2 streams carry) before any of its bytes are
handed out. A plain object is split into ranged units of ``block_size``.

* Prefetch: a window of futures ahead of the read position, opened only when reads are
  sequential, so ``tail -c`` or a seek costs one unit, not the whole stream, and opened
  gradually (2 units ahead, then 4, then the whole window) so the unit needed next is
  not one of eight sharing the server's bandwidth.
* Cache: verified units behind the position are kept in a byte-bounded cachetools LRU.
  Memory stays within (window + cache) units; see config.TransferConfig.
* Live follow: at the end of an incomplete stream the reader polls the manifest with a
  conditional GET (If-None-Match on the ETag it holds: an unchanged manifest costs a 304
  and no body), every ``poll_interval`` at first and, while the stream does not grow,
  twice as long after each poll up to ``poll_max`` (so a new segment is seen within
  ``poll_max`` plus one request; a heartbeat alone does not count as growth). It fails
  with StreamIncomplete when nothing changed for ``follow_timeout`` seconds (measured on
  this machine's clock, so writer clock skew does not matter) or the writer released the
  stream without completing it.
* SSE-C: a plan holds the key its object or stream was written with (``sse_key``, from the
  Engine's request options); every manifest read and unit fetch sends it.
* Client-side encryption: a stream plan holds its stream's cipher (engine/crypto.py),
  checks every manifest it applies against it, and a unit is decrypted and authenticated
  whole, right after its CRC32 check, before any byte of it is handed out. Units keep
  plaintext offsets and lengths; only the fetch knows a stored segment is OVERHEAD longer.
"""
from __future__ import annotations

import bisect
import concurrent.futures as cf
import hashlib
import threading
import time
from dataclasses import dataclass

import cachetools

from s3pipefs import errors, manifest as mf
from s3pipefs.checksum import crc32
from s3pipefs.config import MiB, TransferConfig
from s3pipefs.engine import adaptive, crypto, manifests
from s3pipefs.s3 import ObjectInfo, ObjectStore


# Past the start's window, a unit is split into ranged GETs of at least this many bytes.
PART_SIZE = 4 * MiB


@dataclass(frozen=True)
class Unit:
    key: str
    offset: int  # in the stream/object
    length: int
    start: int | None = None  # byte range inside the object; None = the whole object


class _LazyUnits:
    """A read-only sequence whose items are computed by ``_unit(i)``, never stored."""

    _count = 0

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(i)
        return self._unit(i)

    def _unit(self, i: int) -> Unit:
        raise NotImplementedError


class StreamUnits(_LazyUnits):
    """The segments of a stream as a lazy sequence of Units, computed from layout runs.

    Memory is per run, not per segment: a manifest may name 10**15 segments.
    """

    def __init__(self, prefix: str, layout: mf.Layout):
        self.prefix = prefix
        self._runs: list[tuple[int, int, int, int]] = []  # (first index, count, size, offset)
        index = offset = 0
        for count, size in layout.runs:
            self._runs.append((index, count, size, offset))
            index += count
            offset += count * size
        self._count, self.size = index, offset
        self._first = [r[0] for r in self._runs]
        self._ends = [r[3] + r[1] * r[2] for r in self._runs]

    def _unit(self, i: int) -> Unit:
        first, _, size, offset = self._runs[bisect.bisect_right(self._first, i) - 1]
        return Unit(self.prefix + mf.segment_name(i + 1), offset + (i - first) * size, size)

    def index_at(self, offset: int) -> int | None:
        """The segment holding byte ``offset`` (never an empty one), or None past the end."""
        if offset >= self.size:
            return None
        first, _, size, start = self._runs[bisect.bisect_right(self._ends, offset)]
        return first + (offset - start) // size


class BlockUnits(_LazyUnits):
    """A plain object as a lazy sequence of ranged Units of ``block`` bytes."""

    def __init__(self, key: str, size: int, block: int):
        self.key, self.size, self.block = key, size, block
        self._count = -(-size // block)

    def _unit(self, i: int) -> Unit:
        off = i * self.block
        return Unit(self.key, off, min(self.block, self.size - off), off)


class StreamPlan:
    """Where each byte of a stream lives; grows while the stream is written."""

    def __init__(self, store: ObjectStore, cfg: TransferConfig, bucket: str, key: str,
                 loaded: manifests.Loaded | None = None, *, sse_key: bytes = b"", encrypt_key: bytes = b""):
        self.store, self.cfg, self.sse_key = store, cfg, sse_key
        self._encrypt_key = encrypt_key
        self.cipher: crypto.StreamCipher | None = None
        self.bucket, self.prefix = bucket, key.strip("/") + "/"
        self.where = f"s3://{bucket}/{key.strip('/')}"
        self.units = StreamUnits(self.prefix, mf.Layout())
        self.size = 0
        self.complete = False
        self.manifest: mf.Manifest | None = None
        self._etag = ""
        self._changed = time.monotonic()
        loaded = loaded or manifests.load(store, bucket, self.prefix, sse_key=sse_key)
        if loaded is None:
            raise errors.NotFound(f"{self.where}: no such stream")
        self._apply(loaded)

    def _apply(self, loaded: manifests.Loaded) -> None:
        m = loaded.manifest
        # Every manifest is authenticated before it is believed (and a plain one refused
        # when a key was given); a replaced stream brings a new stream id.
        if self.cipher is not None and m.stream_id == self.cipher.stream_id.hex():
            self.cipher.check(m)
        else:
            self.cipher = crypto.for_reading(m, self._encrypt_key, self.where)
        if loaded.etag != self._etag:
            self._changed = time.monotonic()
        self._etag = loaded.etag
        self.manifest = m
        if m.own and m.layout is not None:
            layout = m.layout
        else:
            layout = mf.Layout.from_sizes(self._listed_sizes(m.num_segments))
        if layout.count >= len(self.units):  # a manifest never shrinks while it is read
            self.units = StreamUnits(self.prefix, layout)
            self.size = self.units.size
        self.complete = m.completed
        if m.completed and self.size != m.total_size:
            raise errors.ManifestError(f"{self.where}: segments hold {self.size} bytes, manifest says {m.total_size}")

    def _listed_sizes(self, count: int) -> list[int]:
        """s3pipe2 streams: segment sizes vary (short reads), so take them from a listing."""
        sizes = [self.units[i].length for i in range(len(self.units))]  # only what was listed
        if len(sizes) >= count:
            return sizes[:count] if len(sizes) > count else sizes
        after = self.prefix + mf.segment_name(len(sizes)) if sizes else None
        for o in self.store.list(self.bucket, self.prefix, start_after=after):
            if isinstance(o, str):
                continue
            idx = mf.segment_index(o.key[len(self.prefix):])
            if idx is None or idx > count:
                continue
            if idx != len(sizes) + 1:
                break  # a hole: s3pipe2 can publish the manifest before the segment lands
            sizes.append(o.size)
        return sizes

    def unit_at(self, offset: int) -> int | None:
        return self.units.index_at(offset)

    def refresh(self) -> None:
        """Read the manifest again, unless it is still the one applied (a conditional GET)."""
        try:
            loaded = self._load()
            # Some S3-compatible servers answer 404 for a moment while a key is overwritten
            # under load; only a manifest that stays gone means the stream was removed.
            for pause in (0.2, 0.5, 1.0):
                if loaded is not None:
                    break
                time.sleep(pause)
                loaded = self._load()
        except errors.NotModified:
            return
        if loaded is None:
            raise errors.StreamIncomplete(f"{self.where}: stream was removed while being read")
        before = self.size
        self._apply(loaded)
        if self.size != before:
            self._changed = time.monotonic()

    def _load(self) -> manifests.Loaded | None:
        return manifests.load(self.store, self.bucket, self.prefix, sse_key=self.sse_key,
                              if_none_match=self._etag or None)

    def wait_grow(self, follow_timeout: float) -> None:
        """Block until the stream grows or completes; StreamIncomplete when it won't.
        Polls back off while nothing grows (see the module docstring)."""
        interval = self.cfg.poll_interval
        longest = max(self.cfg.poll_interval, self.cfg.poll_max)
        while True:
            m = self.manifest
            if m is not None and m.own and not m.completed and m.writer_id and m.heartbeat == 0:
                raise errors.StreamIncomplete(
                    f"{self.where}: stream incomplete at {self.size} bytes: its writer stopped without completing it")
            silent = time.monotonic() - self._changed
            if silent > follow_timeout:
                raise errors.StreamIncomplete(
                    f"{self.where}: stream incomplete at {self.size} bytes: writer silent for {silent:.0f}s")
            time.sleep(interval)
            size = self.size
            self.refresh()
            if self.size != size or self.complete:
                return
            interval = min(2 * interval, longest)


class WriterPlan:
    """The landed segments of a stream a writer of this process is writing (a Reader's plan)."""

    # Every unit named has landed: a missing segment is an error at once, not "not yet".
    complete = True

    def __init__(self, writer):
        self.bucket, self.sse_key = writer.bucket, writer.sse_key  # the writer's SSE-C key reads its segments
        self.cipher = writer.cipher  # and its cipher decrypts them
        self.where = writer.where
        self._writer = writer
        self.units = StreamUnits(writer.prefix, mf.Layout())
        self.size = 0
        self.refresh()

    def refresh(self) -> None:
        prefix, layout = self._writer.landed()
        if layout.count > len(self.units) or prefix != self.units.prefix:
            self.units = StreamUnits(prefix, layout)
            self.size = self.units.size

    def unit_at(self, offset: int) -> int | None:
        return self.units.index_at(offset)

    def wait_grow(self, follow_timeout: float) -> None:  # the caller waits, on the writer
        return None


class ObjectPlan:
    """A plain object split into ranged units."""

    cipher = None  # objects are never encrypted client-side

    def __init__(self, bucket: str, info: ObjectInfo, block: int, *, sse_key: bytes = b"",
                 body: bytes | None = None):
        """``body``: the object's bytes of this ETag, fetched already (a mount's listing
        holds small objects whole): read from it, with no request."""
        self.bucket, self.sse_key = bucket, sse_key
        self.where = f"s3://{bucket}/{info.key}"
        self.info = info
        self.body = body if body is not None and len(body) == info.size else None
        self.size = info.size
        self.complete = True
        self.units = BlockUnits(info.key, info.size, block)
        self._block = block

    def unit_at(self, offset: int) -> int | None:
        return offset // self._block if offset < self.size else None

    def wait_grow(self, follow_timeout: float) -> None:  # objects never grow
        return None


class ReadBudget:
    """Read-ahead memory shared by all readers of one process (a mount).

    Each open reader may prefetch an equal share of ``total`` bytes: its own read_ahead
    when few files are open, less when many are, never less than one unit. Without it
    every open file could hold read_ahead + cache_size, and `md5sum *` over a mount with
    xargs -P 16 held 16 x 160 MiB.
    """

    def __init__(self, total: int):
        self.total = total
        self.readers = 0
        self._lock = threading.Lock()

    def join(self) -> None:
        with self._lock:
            self.readers += 1

    def leave(self) -> None:
        with self._lock:
            self.readers = max(0, self.readers - 1)

    def share(self) -> int:
        return self.total // max(1, self.readers)


class Reader:
    """Random and sequential reads with verification, prefetch and live follow."""

    def __init__(self, store: ObjectStore, cfg: TransferConfig, plan, follow: bool = True,
                 budget: ReadBudget | None = None):
        self.store, self.cfg, self.plan = store, cfg, plan
        self.bucket = plan.bucket
        self.follow = follow
        unit_bytes = max((u.length for u in plan.units[:1]), default=cfg.block_size) or cfg.block_size
        self._unit_bytes = max(1, unit_bytes)
        # Large segments: fewer units in flight, same memory.
        self.max_window = max(1, min(cfg.prefetch, cfg.read_ahead // self._unit_bytes))
        self.window = self.max_window
        self._budget = budget
        # Requests in flight: the window's, and one spare, to begin with; raised by the
        # controller while the consumer waits on a link that more requests fill (Adaptive
        # concurrency, in the module docstring).
        # A mount's readers: at most what its connection pool is sized for (fs/mount.py).
        cap = cfg.max_inflight if budget is None else min(
            cfg.max_inflight, max(cfg.prefetch, budget.total // self._unit_bytes))
        self.concurrency = adaptive.Concurrency(min(cfg.workers, self.window + 1), cap)
        self._requests = adaptive.Gate(lambda: self.concurrency.limit)
        self._pool = cf.ThreadPoolExecutor(self.concurrency.cap, thread_name_prefix="s3pipefs-get")
        self._futs: dict[int, cf.Future] = {}
        # At least one unit, so that small reads walking through a unit don't refetch it.
        self._cache = cachetools.LRUCache(maxsize=max(cfg.cache_size, unit_bytes, 1), getsizeof=len)
        self._lock = threading.Lock()
        self._last_unit = -2
        # Slow start: a sequential read fetches 2 units ahead, then 4, 8, ... up to the
        # window. Opening the whole window at once split the server's bandwidth eight
        # ways while the reader waited for just the first of them: 0.22 s before the
        # second segment of a 1 GiB `cat`, against 0.06 s this way.
        self._ramp = 1
        self._object_md5 = hashlib.md5() if isinstance(plan, ObjectPlan) and plan.info.plain_md5 else None
        self._md5_pos = 0
        self.closed = False
        if budget is not None:
            budget.join()

    @property
    def size(self) -> int:
        return self.plan.size

    @property
    def complete(self) -> bool:
        return self.plan.complete

    # -- public ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; b"" at the end of complete data."""
        out = []
        while size > 0:
            i = self.plan.unit_at(offset)
            if i is None:
                if self.plan.complete or not self.follow or out:
                    break
                self.plan.wait_grow(self.cfg.follow_timeout)
                continue
            data = self.unit(i)
            u = self.plan.units[i]
            start = offset - u.offset
            piece = data[start:start + size]
            out.append(piece)
            offset += len(piece)
            size -= len(piece)
        return b"".join(out) if len(out) != 1 else bytes(out[0])

    def chunks(self, offset: int = 0):
        """Sequential read from ``offset`` to the end, as verified memoryviews (zero-copy)."""
        while True:
            i = self.plan.unit_at(offset)
            if i is None:
                if self.plan.complete or not self.follow:
                    return
                self.plan.wait_grow(self.cfg.follow_timeout)
                continue
            u = self.plan.units[i]
            data = memoryview(self.unit(i))
            piece = data[offset - u.offset:]
            offset += len(piece)
            yield piece

    def unit(self, i: int) -> bytes:
        """Verified bytes of unit ``i``; schedules prefetch when access is sequential."""
        with self._lock:
            sequential = i in (self._last_unit, self._last_unit + 1)
            if i != self._last_unit:
                self._ramp = min(2 * self._ramp, self._memory_window()) if sequential else 1
            self._last_unit = i
            cached = self._cache.get(i)
            if cached is not None and i not in self._futs:
                if sequential:
                    self._schedule(i + 1)
                return cached
            self._schedule(i, ahead=sequential)
            fut = self._futs[i]
        if not fut.done():
            began = time.monotonic()
            fut.result()
            self.concurrency.waited(time.monotonic() - began)
        data = fut.result()
        with self._lock:
            self._futs.pop(i, None)
            self._cache[i] = data
            self._evict(i)
        self._check_object_md5(i, data)
        return data

    def close(self) -> None:
        if self._budget is not None and not self.closed:
            self._budget.leave()
        self.closed = True
        with self._lock:
            for f in self._futs.values():
                f.cancel()
            self._futs.clear()
            self._cache.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _memory_window(self) -> int:
        """Units the read-ahead holds: read_ahead, or this reader's share of the budget."""
        ahead = self.cfg.read_ahead if self._budget is None else min(self.cfg.read_ahead, self._budget.share())
        return max(1, ahead // self._unit_bytes)

    def _shape(self) -> int:
        """Set the window for the controller's limit and return the parts per unit. At the
        start: the window of whole units. Past it, units split into ranged parts (more
        requests, no more memory); units too small to split are fetched further ahead,
        within the read-ahead."""
        memory = self._memory_window()
        base = min(self.max_window, memory)
        limit = self.concurrency.limit
        parts = 1
        # A sealed segment is authenticated whole; a body held already needs no request.
        if limit > self.concurrency.start and self.plan.cipher is None and getattr(self.plan, "body", None) is None:
            parts = max(1, min(-(-limit // base), self._unit_bytes // PART_SIZE))
        self.window = base if limit <= self.concurrency.start else min(memory, max(base, -(-limit // parts)))
        return parts

    def _schedule(self, i: int, ahead: bool = True) -> None:
        parts = self._shape()
        last = min(len(self.plan.units), i + (min(self.window, self._ramp) if ahead else 1))
        for j in range(i, last):
            if j not in self._futs and j not in self._cache:
                count = min(parts, self.plan.units[j].length // PART_SIZE)
                self._futs[j] = _Parts(self, j, count).future if count > 1 else self._pool.submit(self._fetch, j)

    def _evict(self, i: int) -> None:
        for j in [j for j in self._futs if j < i or j > i + self.window]:
            self._futs.pop(j).cancel()

    def _fetch(self, i: int) -> bytes:
        u = self.plan.units[i]
        where = f"s3://{self.bucket}/{u.key}"
        deadline = time.monotonic() + self.cfg.follow_timeout
        cipher = self.plan.cipher
        stored = u.length + crypto.OVERHEAD if cipher is not None else u.length

        def check(data, info) -> None:  # inside the store's attempt: a mismatch is fetched again
            if len(data) != stored:
                raise errors.IntegrityError(f"{where}: {len(data)} bytes, expected {stored}")
            if u.start is None:
                _verify_segment(where, data, info)
        body = getattr(self.plan, "body", None)
        if body is not None:
            return body[u.start:u.start + u.length]
        while True:
            try:
                end = None if u.start is None else u.start + u.length
                data, _ = self._get(u.key, u.start, end, check)
                # Unit i of a stream is segment i + 1; authenticated whole before any byte is used.
                return cipher.open(i + 1, data, where) if cipher is not None else data
            except errors.NotFound as e:
                # An incomplete s3pipe2 stream can name a segment before it lands.
                if self.plan.complete or time.monotonic() > deadline:
                    raise errors.StreamIncomplete(f"{where}: segment missing") from e
                time.sleep(self.cfg.poll_interval)

    def _get(self, key: str, start: int | None, end: int | None, verify) -> tuple[bytes, ObjectInfo]:
        """One GET (the whole object when ``start`` is None), let through by the gate of
        the controller's limit and measured by it."""
        self._requests.acquire()
        ticket = self.concurrency.begin()
        data = None
        try:
            data, info = self.store.get(self.bucket, key, start, end, self.plan.sse_key, verify=verify,
                                        tries=self.cfg.tries)
            return data, info
        finally:
            self.concurrency.end(ticket, None if data is None else len(data))
            self._requests.release()

    def _check_object_md5(self, i: int, data: bytes) -> None:
        """Plain objects: verify the whole-object MD5 when a read has covered it in order."""
        if self._object_md5 is None:
            return
        u = self.plan.units[i]
        if u.offset != self._md5_pos:
            if u.offset > self._md5_pos:
                self._object_md5 = None  # a seek: the sequential check no longer applies
            return
        self._object_md5.update(data)
        self._md5_pos += len(data)
        if self._md5_pos == self.plan.size and self._object_md5.hexdigest() != self.plan.info.plain_md5:
            raise errors.IntegrityError(f"{self.plan.where}: MD5 of the object does not match its ETag")


class _Parts:
    """One unit fetched as ``count`` ranged GETs at once, assembled and verified whole.

    Each part is copied into the unit's buffer as it lands, so the unit holds no more
    than its own bytes, as one GET of it would. The parts must come from one version of
    the object (one ETag) and together match the unit's checksum; when they do not (the
    object was replaced meanwhile, or bytes were damaged), or a part finds the object
    missing, the unit is fetched again whole, verified by its own path. Only for
    unencrypted units: a sealed segment is authenticated whole, from one GET.
    """

    def __init__(self, reader: Reader, i: int, count: int):
        self.future: cf.Future = cf.Future()
        self._reader, self._i = reader, i
        self._unit = reader.plan.units[i]
        step = -(-self._unit.length // count)
        ranges = [(s, min(s + step, self._unit.length)) for s in range(0, self._unit.length, step)]
        self._lock = threading.Lock()
        self._buf: bytearray | None = None  # allocated when the first part lands
        self._left = len(ranges)
        self._etags: set[str] = set()
        self._info: ObjectInfo | None = None
        self._again = False  # fetch the unit whole once every part is back
        self._tasks = [reader._pool.submit(self._part, a, b) for a, b in ranges]
        self.future.add_done_callback(self._stop)

    def _stop(self, fut: cf.Future) -> None:
        if fut.cancelled():  # evicted or closed: parts not begun never begin
            for t in self._tasks:
                t.cancel()

    def _part(self, a: int, b: int) -> None:
        if self.future.done():
            return
        u = self._unit
        where = f"s3://{self._reader.bucket}/{u.key}"

        def check(data, info) -> None:
            if len(data) != b - a:
                raise errors.IntegrityError(f"{where}: {len(data)} bytes at {a}, expected {b - a}")
        data = info = None
        try:
            base = u.start or 0
            data, info = self._reader._get(u.key, base + a, base + b, check)
        except (errors.IntegrityError, errors.NotFound):
            pass  # fetched again whole, below
        except BaseException as e:  # noqa: BLE001 - the unit's reader raises it
            self._settle(exc=e)
            return
        with self._lock:
            if data is None:
                self._again = True
            else:
                if self._buf is None:
                    self._buf = bytearray(u.length)
                self._buf[a:b] = data
                self._etags.add(info.etag)
                self._info = info
            self._left -= 1
            last = not self._left
        del data
        if last:
            self._assemble(where)

    def _assemble(self, where: str) -> None:
        try:
            if not self._again and len(self._etags) == 1 and self._unit.start is None:
                try:
                    _verify_segment(where, self._buf, self._info)
                except errors.IntegrityError:
                    self._again = True
            if self._again or len(self._etags) != 1:
                self._buf = None
                self._settle(self._reader._fetch(self._i))
            else:
                self._settle(self._buf)
        except BaseException as e:  # noqa: BLE001 - the unit's reader raises it
            self._settle(exc=e)

    def _settle(self, data=None, exc: BaseException | None = None) -> None:
        try:
            if exc is not None:
                self.future.set_exception(exc)
            else:
                self.future.set_result(data)
        except cf.InvalidStateError:
            pass  # cancelled meanwhile, or another part failed first


def _verify_segment(where: str, data, info: ObjectInfo) -> None:
    """Check a whole segment against the checksum it carries; IntegrityError if it differs."""
    want = info.metadata.get("crc32")
    if want:
        if f"{crc32(data):08x}" != want.lower():
            raise errors.IntegrityError(f"{where}: CRC32 mismatch (corrupted in transit or at rest)")
        return
    md5 = info.plain_md5
    if md5 and hashlib.md5(data).hexdigest() != md5:
        raise errors.IntegrityError(f"{where}: MD5 mismatch (corrupted in transit or at rest)")
