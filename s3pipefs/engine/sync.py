"""Sync between S3 prefixes/buckets and local directories (S3 APU + parallel-s3sync).

Flow::

    list source ─┐                      ┌─► checker pool (hash a local file, HEAD, GET a
                 ├─► compare in order ──┤     manifest) ─► decision
    list dest  ──┘   (listing data only)└─► transfer pool (server-side copy, upload,
                                              download) ─► report
    then, if --delete and nothing failed: delete what only the destination has.

* A re-run with nothing changed costs the two listings (one request per 1000 keys each)
  plus, in the default mode, reading local files to hash them; no transfer and no HEAD.
* Streams are entries too: a prefix holding ``.manifest`` is one stream, named by the
  prefix, never a pile of segments. S3->S3 copies them with copy_stream (server-side,
  manifest last); S3<->local goes through the engine's reader/writer.
* Every S3 call of every pool runs under the store's retry policy and its one shared rate
  limiter, so a SlowDown storm slows the whole job down instead of failing objects
  (s3/retry.py).

Comparison (``mode``):

``existing``  skip whatever exists at the destination (fastest re-run).
``etag``      (default) size, then content identity from the listings: equal MD5 ETags;
              equal multipart ETags (for a local file: computed with the part size the
              ETag's part count implies); for a stream, its manifest (MD5 ETag of the
              manifest object, or the whole-stream MD5 inside it against a local file).
              When no ETag is an MD5 (SSE-C/KMS, a multipart ETag against a single-part
              one) it falls back to size + time: the destination is up to date when it is
              not older than the source (downloads get the source's time as mtime).
``checksum``  size and content MD5 on both sides: local files hashed, S3 objects by the
              ``md5`` metadata s3pipefs writes (one HEAD each) or an MD5 ETag, else read
              and hashed; streams by the SHA-256 in their manifest (local files hashed to match).
"""
from __future__ import annotations

import concurrent.futures as cf
import fnmatch
import hashlib
import logging
import os
import stat as _stat
import threading
import time
from dataclasses import dataclass, field

from s3pipefs import errors, manifest as mf
from s3pipefs.config import MiB
from s3pipefs.engine import copy as copy_mod
from s3pipefs.engine import transfer
from s3pipefs.engine.listing import list_tree
from s3pipefs.s3 import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = "/" + mf.MANIFEST_NAME
TMP_MARK = ".s3pipefs-"
MODES = ("existing", "etag", "checksum")
# Entries per checker task, and bytes to hash per task (large files stay parallel).
CHECK_BATCH = 64
CHECK_BATCH_BYTES = 8 * MiB
# Local files below this size are hashed on one thread: their cost is Python's per-file
# work, which holds the GIL, and sixteen threads passing it around made a no-change re-run
# of 10,000 small files take 1.2 s instead of 0.7 s. Larger files hash in parallel (hashlib
# lets go of the GIL while it hashes).
SMALL_FILE = 1 * MiB


# -- locations and entries -------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Loc:
    bucket: str
    prefix: str  # "" or ends with "/"

    def __str__(self):
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, rel: str) -> str:
        return self.prefix + rel


@dataclass(frozen=True)
class LocalLoc:
    root: str

    def __str__(self):
        return self.root

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))


def parse_location(text: str):
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise errors.UsageError(f"no bucket in {text!r}")
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Loc(bucket, prefix)
    if "://" in text:
        raise errors.UsageError(f"{text}: sync works between s3:// locations and local directories")
    return LocalLoc(text)


@dataclass
class Entry:
    rel: str
    kind: str                 # "object", "stream", "file"
    size: int
    etag: str = ""            # object ETag; for a stream the manifest object's ETag
    mtime: float = 0.0        # LastModified or st_mtime; for a stream the manifest's
    info: ObjectInfo | None = None
    digests: dict = field(default_factory=dict)  # "md5"/"sha256" -> hex, once computed


def list_s3(store: ObjectStore, loc: S3Loc, workers: int = 16) -> dict[str, Entry]:
    """Objects and streams under the prefix, by relative path. One LIST per 1000 keys, large
    subtrees listed side by side (engine/listing.py)."""
    infos = list_tree(store, loc.bucket, loc.prefix, workers=workers)
    roots: dict[str, ObjectInfo] = {}
    for o in infos:
        if o.key.endswith(MANIFEST_SUFFIX):
            roots[o.key[:-len(mf.MANIFEST_NAME)]] = o
    out: dict[str, Entry] = {}
    sizes: dict[str, int] = {}
    for o in infos:
        root = _stream_root(o.key, roots, len(loc.prefix))
        if root is not None:
            if o.key != root + mf.MANIFEST_NAME and mf.segment_index(o.key[len(root):]) is not None:
                sizes[root] = sizes.get(root, 0) + o.size
            continue
        rel = o.key[len(loc.prefix):]
        if not rel:
            continue
        out[rel] = Entry(rel, "object", o.size, o.etag, o.last_modified, o)
    for root, man in roots.items():
        if _stream_root(root[:-1], roots, len(loc.prefix)) is not None:
            continue  # a stream nested inside another stream's prefix belongs to it
        rel = root[len(loc.prefix):-1]
        if not rel:
            continue  # the prefix itself is a stream: sync works on trees (cp copies one stream)
        out[rel] = Entry(rel, "stream", sizes.get(root, 0), man.etag, man.last_modified, man)
    return out


def _stream_root(key: str, roots: dict, start: int) -> str | None:
    i = key.find("/", start)
    while i != -1:
        p = key[:i + 1]
        if p in roots:
            return p
        i = key.find("/", i + 1)
    return None


def list_local(loc: LocalLoc) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    root = loc.root
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise errors.UsageError(f"{root}: not a directory (use `s3pipefs cp` for one file)")
        return out

    def onerror(e: OSError):
        raise errors.S3PipeError(f"{e.filename}: {e.strerror}")
    for d, dirs, files in os.walk(root, onerror=onerror):
        dirs.sort()
        for name in sorted(files):
            if TMP_MARK in name and name.startswith("."):
                continue
            p = os.path.join(d, name)
            try:
                st = os.stat(p)
            except OSError:
                continue  # a dangling symlink or a file removed meanwhile
            if not _stat.S_ISREG(st.st_mode):
                continue
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            out[rel] = Entry(rel, "file", st.st_size, mtime=st.st_mtime)
    return out


def safe_rel(rel: str) -> bool:
    """A key that maps inside the destination directory (no '..', '.', empty parts)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts) and "\0" not in rel


# -- filters ---------------------------------------------------------------------------------------

def make_filter(rules: list[tuple[str, str]]):
    """First matching rule wins; with any --include, unmatched paths are excluded.

    A pattern without '/' matches the base name anywhere; with '/' the whole relative
    path. ``*`` and ``?`` also match '/' in whole-path patterns (fnmatch).
    """
    if not rules:
        return lambda rel: True
    default = not any(kind == "include" for kind, _ in rules)

    def ok(rel: str) -> bool:
        base = rel.rsplit("/", 1)[-1]
        for kind, pat in rules:
            target = rel if "/" in pat else base
            if fnmatch.fnmatchcase(target, pat.lstrip("/") if "/" in pat else pat):
                return kind == "include"
        return default
    return ok


# -- options and report ----------------------------------------------------------------------------

@dataclass
class SyncOptions:
    mode: str = "etag"
    delete: bool = False
    dry_run: bool = False
    filters: list = field(default_factory=list)
    workers: int = 16
    checkers: int = 16
    part_size: int = 32 * MiB
    allow_incomplete: bool = False
    source_sse_key: bytes | None = None
    sse_key: bytes | None = None


@dataclass
class Report:
    copied: int = 0
    skipped: int = 0
    deleted: int = 0
    failed: int = 0
    bytes: int = 0
    elapsed: float = 0.0
    requests: int = 0
    retries: int = 0
    throttles: int = 0
    dry_run: bool = False
    failures: list = field(default_factory=list)   # [(rel, message)]
    actions: list = field(default_factory=list)    # dry run / verbose: [(verb, rel, reason)]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        e = max(self.elapsed, 1e-9)
        return {
            "copied": self.copied, "skipped": self.skipped, "deleted": self.deleted, "failed": self.failed,
            "bytes": self.bytes, "elapsed": round(self.elapsed, 3),
            "objects_per_second": round((self.copied + self.skipped) / e, 1),
            "bytes_per_second": round(self.bytes / e, 1), "requests": self.requests,
            "retries": self.retries, "throttles": self.throttles, "dry_run": self.dry_run,
            "failures": [{"path": r, "error": m} for r, m in self.failures],
            "actions": [{"action": a, "path": r, "reason": why} for a, r, why in self.actions],
        }

    def summary(self) -> str:
        e = max(self.elapsed, 1e-9)
        verb = "would copy" if self.dry_run else "copied"
        dverb = "would delete" if self.dry_run else "deleted"
        return (f"{verb} {self.copied}, skipped {self.skipped}, {dverb} {self.deleted}, failed {self.failed}; "
                f"{_human(self.bytes)} in {self.elapsed:.1f}s ({_human(self.bytes / e)}/s, "
                f"{(self.copied + self.skipped) / e:.0f} objects/s); {self.requests} S3 requests"
                + (f", {self.retries} retries ({self.throttles} throttled)" if self.retries else ""))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# -- the sync job ------------------------------------------------------------------------------------

class Sync:
    def __init__(self, store: ObjectStore, src, dst, opts: SyncOptions, *, engine=None, progress=None):
        if opts.mode not in MODES:
            raise errors.UsageError(f"unknown compare mode {opts.mode!r}")
        if isinstance(src, LocalLoc) and isinstance(dst, LocalLoc):
            raise errors.UsageError("sync needs an s3:// location on at least one side")
        if isinstance(src, S3Loc) and isinstance(dst, S3Loc) and src.bucket == dst.bucket and (
                src.prefix.startswith(dst.prefix) or dst.prefix.startswith(src.prefix)):
            raise errors.UsageError(f"{src} and {dst} overlap")
        self.store, self.src, self.dst, self.o = store, src, dst, opts
        self.engine = engine
        self.progress = progress
        self.report = Report(dry_run=opts.dry_run)
        self.ok = make_filter(opts.filters)
        self._tslots = threading.BoundedSemaphore(opts.workers * 4)
        self._cslots = threading.BoundedSemaphore(opts.checkers * 4)
        # Transfers that checkers decided on; drained after every check is done.
        self._late: list[cf.Future] = []
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()

    # The source and destination keys.
    def _skey(self) -> bytes | None:
        return self.o.source_sse_key

    def _dkey(self) -> bytes | None:
        return self.o.sse_key

    def run(self) -> Report:
        t0 = time.monotonic()
        # The store counts its requests (every attempt), retries and throttles.
        stats = self.store.stats
        before = (stats.requests, stats.retries, stats.throttles)
        try:
            self._run()
        finally:
            self.report.elapsed = time.monotonic() - t0
            self.report.requests, self.report.retries, self.report.throttles = (
                now - then for now, then in zip((stats.requests, stats.retries, stats.throttles), before))
        return self.report

    def _list(self, loc) -> dict[str, Entry]:
        if isinstance(loc, S3Loc):
            return list_s3(self.store, loc, self.o.checkers)
        return list_local(loc)

    def _run(self) -> None:
        if isinstance(self.src, LocalLoc) and not os.path.isdir(self.src.root):
            raise errors.NotFound(f"{self.src.root}: no such directory")
        for loc in (self.src, self.dst):
            if isinstance(loc, S3Loc):
                try:
                    self.store.bucket_exists(loc.bucket)
                except errors.NotFound:
                    raise errors.BucketNotFound(f"s3://{loc.bucket}: no such bucket") from None
        with cf.ThreadPoolExecutor(2, thread_name_prefix="s3pipefs-list") as lp:
            fs, fd = lp.submit(self._list, self.src), lp.submit(self._list, self.dst)
            src_entries, dst_entries = fs.result(), fd.result()
        with cf.ThreadPoolExecutor(self.o.checkers, thread_name_prefix="s3pipefs-check") as checkers, \
                cf.ThreadPoolExecutor(1, thread_name_prefix="s3pipefs-hash") as hasher, \
                cf.ThreadPoolExecutor(self.o.workers, thread_name_prefix="s3pipefs-xfer") as workers:
            self._checkers, self._hasher, self._workers = checkers, hasher, workers
            futures: list[cf.Future] = []
            try:
                self._decide_all(src_entries, dst_entries, futures)
                for f in futures:
                    f.result()
                # Checks submit transfers; wait for those too.
                self._drain_transfers()
            except BaseException:
                # Ctrl-C or a bug: queued work is dropped, running transfers finish or fail.
                self._stop.set()
                for f in futures + self._late:
                    f.cancel()
                raise
        if self.o.delete:
            self._delete_extra(src_entries, dst_entries)

    def _decide_all(self, src_entries: dict, dst_entries: dict, futures: list) -> None:
        """Compare every source entry; submit checks and transfers (bounded queues).

        Checks go to a pool in batches: hashing a small file takes a few microseconds,
        handing it to a thread and back took ten times that. Small local files go to the
        one hashing thread (see SMALL_FILE), everything else to the checkers.
        """
        checkers, workers = self._checkers, self._workers
        batches = {self._hasher: [], checkers: []}
        batch_bytes = {self._hasher: 0, checkers: 0}

        def flush(pool):
            if batches[pool]:
                futures.append(self._submit(self._cslots, pool, self._check_batch, batches[pool]))
                batches[pool], batch_bytes[pool] = [], 0
        for rel in sorted(src_entries):
            if len(futures) >= 4096:
                futures[:] = [f for f in futures if not f.done()]
            if not self.ok(rel):
                continue
            s, d = src_entries[rel], dst_entries.get(rel)
            if isinstance(self.dst, LocalLoc) and not safe_rel(rel):
                self._fail(rel, f"{self.src}{rel}: key cannot be a local path safely ('..', '.' or empty parts)")
                continue
            if rel.endswith("/") and (isinstance(self.dst, LocalLoc) or isinstance(self.src, LocalLoc)):
                continue  # a directory marker
            verdict = self._quick(s, d)
            if verdict is None:
                pool = self._hasher if self._small_local_check(s, d) else checkers
                batches[pool].append((s, d))
                batch_bytes[pool] += s.size
                if len(batches[pool]) >= CHECK_BATCH or batch_bytes[pool] >= CHECK_BATCH_BYTES:
                    flush(pool)
            elif verdict:
                futures.append(self._submit(self._tslots, workers, self._transfer, s, d, verdict))
            else:
                self._skip(s)
        for pool in batches:
            flush(pool)

    def _submit(self, slots, pool, fn, *args):
        slots.acquire()
        try:
            fut = pool.submit(self._guard, fn, args)
        except BaseException:
            slots.release()
            raise
        fut.add_done_callback(lambda f: slots.release())
        return fut

    def _check_batch(self, batch: list) -> None:
        for s, d in batch:
            self._guard(self._check, (s, d))

    def _guard(self, fn, args):
        if self._stop.is_set():
            return
        try:
            fn(*args)
        except errors.S3PipeError as e:
            self._fail(args[0].rel, str(e))
        except Exception as e:  # noqa: BLE001 - one entry's bug must not stop the others
            log.exception("sync %s", args[0].rel)
            self._fail(args[0].rel, f"{type(e).__name__}: {e}")

    def _drain_transfers(self) -> None:
        while True:
            with self._pending_lock:
                pend, self._late = self._late, []
            if not pend:
                return
            for f in pend:
                f.result()

    # -- deciding ---------------------------------------------------------------------------------
    def _quick(self, s: Entry, d: Entry | None):
        """A reason to copy, False to skip, or None when the checker pool must look closer."""
        if d is None:
            return "new"
        if self.o.mode == "existing":
            return False
        if self._kind_differs(s, d):
            return "kind changed"
        if s.kind == "stream" and d.kind == "stream":
            if s.size != d.size:
                return "size differs"
            if self.o.mode == "checksum":
                return None
            same = _same_md5_etag(s.etag, d.etag)
            if same is not None:
                return False if same else "manifest differs"
            return False if d.mtime >= s.mtime else "source newer"
        if "stream" in (s.kind, d.kind):
            return None  # a stream against a local file: its manifest holds the size and MD5
        if s.size != d.size:
            return "size differs"
        if self.o.mode == "checksum":
            return None
        if s.kind == "object" and d.kind == "object":
            same = _same_md5_etag(s.etag, d.etag)
            if same is None:
                same = _same_multipart(s.etag, d.etag)
            if same is not None:
                return False if same else "ETag differs"
            return False if d.mtime >= s.mtime else "source newer"
        obj = s if s.kind == "object" else d
        if _is_md5(obj.etag) or _parts(obj.etag):
            return None  # hash the local file in the checker pool
        # No MD5 to compare with (SSE-C/KMS): size + time.
        if s.kind == "file":
            return False if d.mtime >= s.mtime else "source newer"
        return False if int(d.mtime) >= int(s.mtime) else "source newer"

    def _small_local_check(self, s: Entry, d: Entry) -> bool:
        """The check hashes a small local file and asks S3 nothing (see SMALL_FILE)."""
        return (self.o.mode != "checksum" and {s.kind, d.kind} == {"file", "object"}
                and s.size < SMALL_FILE)

    def _kind_differs(self, s: Entry, d: Entry) -> bool:
        if s.kind == "file" or d.kind == "file":
            return False
        return s.kind != d.kind

    def _check(self, s: Entry, d: Entry) -> None:
        reason = self._compare(s, d)
        if reason:
            fut = self._submit(self._tslots, self._workers, self._transfer, s, d, reason)
            with self._pending_lock:
                self._late.append(fut)
        else:
            self._skip(s)

    def _compare(self, s: Entry, d: Entry):
        if self.o.mode == "checksum":
            if s.size != d.size and "stream" not in (s.kind, d.kind):
                return "size differs"
            # Streams carry a whole-stream SHA-256, objects an MD5 (ETag or s3pipefs metadata).
            algo = "sha256" if "stream" in (s.kind, d.kind) else "md5"
            a = self._content_digest(s, self.src, self._skey(), algo)
            b = self._content_digest(d, self.dst, self._dkey(), algo)
            if a is None or b is None:
                return "no checksum to compare"
            return False if a == b else "checksum differs"
        # default mode, a local file on one side
        local, remote = (s, d) if s.kind == "file" else (d, s)
        lloc = self.src if s.kind == "file" else self.dst
        rloc = self.dst if s.kind == "file" else self.src
        if remote.kind == "stream":
            m = self._manifest(rloc, remote, self._dkey() if remote is d else self._skey())
            if m is None or not m.completed:
                return "destination stream incomplete" if remote is d else None
            remote.size = m.total_size
            if local.size != m.total_size:
                return "size differs"
            if m.sha256:
                return False if self._local_digest(lloc, local, "sha256") == m.sha256 else "SHA-256 differs"
            return False if d.mtime >= s.mtime else "source newer"
        if _is_md5(remote.etag):
            return False if self._local_digest(lloc, local, "md5") == remote.etag.lower() else "MD5 differs"
        n = _parts(remote.etag)
        if n:
            got = _local_multipart_etags(lloc.path(local.rel), local.size, n, self.o.part_size)
            return False if remote.etag.strip('"') in got else "ETag differs"
        return False if d.mtime >= s.mtime else "source newer"

    def _manifest(self, loc: S3Loc, e: Entry, key) -> mf.Manifest | None:
        got = copy_mod._load_manifest(self.store, loc.bucket, loc.key(e.rel) + "/", copy_mod._key(self.store, key))
        return got[0] if got else None

    def _local_digest(self, loc: LocalLoc, e: Entry, algo: str) -> str:
        got = e.digests.get(algo)
        if got is None:
            got = e.digests[algo] = _file_digest(loc.path(e.rel), algo)
        return got

    def _content_digest(self, e: Entry, loc, key, algo: str) -> str | None:
        if e.kind == "file":
            return self._local_digest(loc, e, algo)
        sse = copy_mod._key(self.store, key)
        if e.kind == "stream":
            m = self._manifest(loc, e, key)
            if m is None or not m.completed:
                return None
            if m.sha256:
                return m.sha256
            return self._hash_remote_stream(loc, e)
        info = self.store.head(loc.bucket, loc.key(e.rel), sse_key=sse)
        if info is None:
            return None
        if info.metadata.get("md5"):
            return info.metadata["md5"].lower()
        if not sse and info.plain_md5:
            return info.plain_md5
        h = hashlib.md5()

        class _Sink:
            def write(self, b):
                h.update(b)
        transfer.download_object(self.store, loc.bucket, loc.key(e.rel), _Sink(), workers=4, info=info,
                                 sse_key=sse)
        return h.hexdigest()

    def _hash_remote_stream(self, loc: S3Loc, e: Entry) -> str | None:
        if self.engine is None:
            return None
        h = hashlib.sha256()

        class _Sink:
            def write(self, b):
                h.update(b)
        transfer.download_stream(self.engine, loc.bucket, loc.key(e.rel), _Sink())
        return h.hexdigest()

    # -- doing ------------------------------------------------------------------------------------
    def _skip(self, s: Entry) -> None:
        with self.report.lock:
            self.report.skipped += 1
        if self.progress:
            self.progress(1, 0)

    def _fail(self, rel: str, msg: str) -> None:
        with self.report.lock:
            self.report.failed += 1
            self.report.failures.append((rel, msg))
        if self.progress:
            self.progress(1, 0)

    def _transfer(self, s: Entry, d: Entry | None, reason: str) -> None:
        if self.o.dry_run:
            with self.report.lock:
                self.report.copied += 1
                self.report.bytes += s.size
                self.report.actions.append(("copy", s.rel, reason))
            if self.progress:
                self.progress(1, 0)
            return
        n = self._do_transfer(s, d)
        with self.report.lock:
            self.report.copied += 1
            self.report.bytes += n
            self.report.actions.append(("copy", s.rel, reason))
        if self.progress:
            self.progress(1, n)

    def _do_transfer(self, s: Entry, d: Entry | None) -> int:
        src, dst, o = self.src, self.dst, self.o
        if isinstance(src, S3Loc) and isinstance(dst, S3Loc):
            if s.kind == "stream":
                r = copy_mod.copy_stream(self.store, src.bucket, src.key(s.rel), dst.bucket, dst.key(s.rel),
                                         workers=min(o.workers, 8), allow_incomplete=o.allow_incomplete,
                                         source_sse_key=self._skey(), sse_key=self._dkey(),
                                         cfg=getattr(self.engine, "cfg", None))
            else:
                r = copy_mod.copy_object(self.store, src.bucket, src.key(s.rel), dst.bucket, dst.key(s.rel),
                                         workers=min(o.workers, 8), info=None if self._skey() else s.info,
                                         source_sse_key=self._skey(), sse_key=self._dkey())
            if d is not None and d.kind != s.kind:
                self._remove(dst, d)
            return r.size
        if isinstance(src, LocalLoc):
            path = src.path(s.rel)
            meta = {"md5": s.digests["md5"]} if "md5" in s.digests else None
            r = transfer.upload_file(self.store, path, dst.bucket, dst.key(s.rel), workers=min(o.workers, 8),
                                     part_size=o.part_size, content_type=transfer.guess_type(s.rel),
                                     metadata=meta, sse_key=self._dkey(), keep_on_failure=False)
            if d is not None and d.kind == "stream":
                self._remove(dst, d)
            return r.size
        # S3 -> local
        path = dst.path(s.rel)
        if s.kind == "stream":
            if self.engine is None:
                raise errors.S3PipeError(f"{src}{s.rel}: streams need the engine to be read")
            fn = lambda f: transfer.download_stream(self.engine, src.bucket, src.key(s.rel), f)  # noqa: E731
        else:
            info = None if self._skey() else s.info
            fn = lambda f: transfer.download_object(self.store, src.bucket, src.key(s.rel), f,  # noqa: E731
                                                    workers=min(o.workers, 8), info=info,
                                                    sse_key=self._skey())
        if os.path.isdir(path):
            raise errors.S3PipeError(f"{path}: is a directory, cannot write {s.kind} {src}{s.rel} there")
        r = transfer.download_to_path(fn, path, mtime=s.mtime)
        return r.size

    def _remove(self, loc, e: Entry) -> None:
        if isinstance(loc, LocalLoc):
            p = loc.path(e.rel)
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as ex:
                raise errors.S3PipeError(f"{p}: {ex.strerror}") from None
            _prune_dirs(os.path.dirname(p), loc.root)
            return
        key = loc.key(e.rel)
        if e.kind == "stream":
            if self.engine is not None and hasattr(self.engine, "delete"):
                self.engine.delete(loc.bucket, key)
                return
            # The manifest goes first: never a complete stream with segments missing.
            self.store.delete(loc.bucket, key + MANIFEST_SUFFIX)
            keys = [o.key for o in self.store.list(loc.bucket, key + "/") if not isinstance(o, str)]
            if keys:
                self.store.delete_many(loc.bucket, keys)
        else:
            self.store.delete(loc.bucket, key)

    def _delete_extra(self, src_entries: dict, dst_entries: dict) -> None:
        extra = [e for rel, e in sorted(dst_entries.items()) if rel not in src_entries and self.ok(rel)]
        if isinstance(self.dst, LocalLoc) or isinstance(self.src, LocalLoc):
            extra = [e for e in extra if not e.rel.endswith("/")]
        if not extra:
            return
        if self.report.failed and not self.o.dry_run:
            with self.report.lock:
                self.report.failures.append(
                    ("(delete)", f"{len(extra)} deletions skipped because {self.report.failed} transfers failed"))
            return
        if self.o.dry_run:
            for e in extra:
                self.report.deleted += 1
                self.report.actions.append(("delete", e.rel, "not in source"))
            return
        if isinstance(self.dst, S3Loc):
            objs = [e for e in extra if e.kind == "object"]
            streams = [e for e in extra if e.kind == "stream"]
            keys = [self.dst.key(e.rel) for e in objs]
            try:
                if keys:
                    self.store.delete_many(self.dst.bucket, keys)
                with self.report.lock:
                    self.report.deleted += len(objs)
            except errors.S3PipeError as ex:
                for e in objs:
                    self._fail(e.rel, f"delete: {ex}")
            extra = streams
        with cf.ThreadPoolExecutor(self.o.workers, thread_name_prefix="s3pipefs-del") as pool:
            def one(e):
                try:
                    self._remove(self.dst, e)
                    with self.report.lock:
                        self.report.deleted += 1
                except errors.S3PipeError as ex:
                    self._fail(e.rel, f"delete: {ex}")
            list(pool.map(one, extra))


def _prune_dirs(d: str, root: str) -> None:
    root = os.path.abspath(root)
    d = os.path.abspath(d)
    while d != root and d.startswith(root + os.sep):
        try:
            os.rmdir(d)
        except OSError:
            return
        d = os.path.dirname(d)


def _is_md5(etag: str) -> bool:
    return ObjectInfo("", 0, etag).plain_md5 is not None


def _parts(etag: str) -> int:
    e = etag.strip('"')
    head, _, n = e.rpartition("-")
    if head and n.isdigit() and len(head) == 32:
        return int(n)
    return 0


def _same_md5_etag(a: str, b: str):
    if _is_md5(a) and _is_md5(b):
        return a.strip('"').lower() == b.strip('"').lower()
    return None


def _same_multipart(a: str, b: str):
    if _parts(a) and _parts(a) == _parts(b):
        return a.strip('"').lower() == b.strip('"').lower()
    return None


def _file_digest(path: str, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    try:
        with open(path, "rb", buffering=0) as f:
            # Sized to the file: zero-filling a 4 MiB buffer per small file cost more than
            # hashing it (10,000 files: 40 GiB of memset).
            buf = bytearray(min(4 * MiB, max(os.fstat(f.fileno()).st_size, 0) + 1))
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    except OSError as e:
        raise errors.S3PipeError(f"{path}: {e.strerror}") from None
    return h.hexdigest()


# Part sizes other tools use by default (MiB): aws cli 8, s3cmd 15, rclone 5, s5cmd 50, ...
COMMON_PART_MIB = (5, 8, 10, 15, 16, 25, 32, 50, 64, 100, 128, 256, 512)


def part_size_candidates(size: int, parts: int, our_part: int) -> list[int]:
    """Part sizes that split ``size`` bytes into exactly ``parts`` parts, most likely first."""
    import math

    lo = math.ceil(size / parts)
    cands = [transfer.part_size_for(size, our_part), math.ceil(lo / MiB) * MiB, lo]
    cands += [m * MiB for m in COMMON_PART_MIB]
    out = []
    for p in cands:
        if p > 0 and math.ceil(size / p) == parts and p not in out:
            out.append(p)
    return out


def _local_multipart_etags(path: str, size: int, parts: int, our_part: int) -> set[str]:
    """The multipart ETags ``path`` would have under each plausible part size (one read)."""
    cands = part_size_candidates(size, parts, our_part)
    if not cands:
        return set()
    state = [[p, hashlib.md5(), 0, []] for p in cands]  # size, md5 of current part, filled, digests
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(4 * MiB)
                if not chunk:
                    break
                for st in state:
                    view = memoryview(chunk)
                    while view:
                        take = min(len(view), st[0] - st[2])
                        st[1].update(view[:take])
                        st[2] += take
                        view = view[take:]
                        if st[2] == st[0]:
                            st[3].append(st[1].digest())
                            st[1], st[2] = hashlib.md5(), 0
    except OSError as e:
        raise errors.S3PipeError(f"{path}: {e.strerror}") from None
    out = set()
    for p, h, filled, digests in state:
        if filled:
            digests.append(h.digest())
        out.add(transfer.multipart_etag(digests))
    return out


def run_sync(store: ObjectStore, src: str, dst: str, opts: SyncOptions, *, engine=None, progress=None) -> Report:
    """Parse both locations and run one sync job."""
    return Sync(store, parse_location(src), parse_location(dst), opts, engine=engine, progress=progress).run()
