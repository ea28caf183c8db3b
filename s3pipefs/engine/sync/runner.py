"""The sync job: list both sides, compare in order on bounded pools, transfer what
differs through the engine, then (with --delete, and only if nothing failed) delete what
only the destination has. The flow is drawn in the package docstring.

What the job covers is one predicate on relative paths, ``ok``: the --include/--exclude
rules, the --shard (a hash of the path), and after the listings the --files-from keys.
Copies and deletions both ask it, so a shard deletes only within itself and N shards
side by side do exactly what one unsharded run does."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time

from s3pipefs import errors
from s3pipefs.config import MiB
from s3pipefs.engine import transfer
from s3pipefs.engine.sync import keylist
from s3pipefs.engine.sync.compare import Comparer
from s3pipefs.engine.sync.listings import list_local, list_s3
from s3pipefs.engine.sync.locations import (Entry, LocalLoc, S3Loc, directory_object, make_filter, safe_rel,
                                             shard_filter)
from s3pipefs.engine.sync.report import Report, SyncOptions

log = logging.getLogger(__name__)

MODES = ("existing", "etag", "checksum")
# Entries per checker task, and bytes to hash per task (large files stay parallel).
CHECK_BATCH = 64
CHECK_BATCH_BYTES = 8 * MiB


class Sync:
    """One sync job between ``src`` and ``dst`` (S3Loc or LocalLoc), run through ``engine``."""

    def __init__(self, engine, src, dst, opts: SyncOptions, *, progress=None):
        if opts.mode not in MODES:
            raise errors.UsageError(f"unknown compare mode {opts.mode!r}")
        if isinstance(src, LocalLoc) and isinstance(dst, LocalLoc):
            raise errors.UsageError("sync needs an s3:// location on at least one side")
        if isinstance(src, S3Loc) and isinstance(dst, S3Loc) and src.bucket == dst.bucket and (
                src.prefix.startswith(dst.prefix) or dst.prefix.startswith(src.prefix)):
            raise errors.UsageError(f"{src} and {dst} overlap")
        if opts.keys is not None and opts.delete:
            raise errors.UsageError("--delete and --files-from do not go together: a key list names "
                                    "what to copy, not what the source lacks")
        self.engine, self.store = engine, engine.store
        self.src, self.dst, self.o = src, dst, opts
        # The destination's request options are the engine's; the source's may differ.
        self.source = opts.source or engine.request
        self.progress = progress
        self.cmp = Comparer(engine, src, dst, opts)
        self.report = Report(dry_run=opts.dry_run)
        rules, in_shard = make_filter(opts.filters), shard_filter(opts.shard)
        self.ok = lambda rel: in_shard(rel) and rules(rel)
        self._tslots = threading.BoundedSemaphore(opts.workers * 4)
        self._cslots = threading.BoundedSemaphore(opts.checkers * 4)
        # Transfers that checkers decided on; drained after every check is done.
        self._late: list[cf.Future] = []
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()

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
        if self.o.keys is not None:
            self._limit_to_keys(src_entries)
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

    def _limit_to_keys(self, src_entries: dict) -> None:
        """Narrow ``ok`` to the entries the --files-from keys name; keys naming none (of
        this shard, through the filters) are reported missing."""
        chosen, missing = keylist.select(self.o.keys, src_entries)
        covered = self.ok
        self.ok = lambda rel: rel in chosen and covered(rel)
        self.report.missing = [k for k in missing if covered(k)]

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
            if directory_object(rel) and (isinstance(self.dst, LocalLoc) or isinstance(self.src, LocalLoc)):
                continue  # a directory's marker or folder object: no file (S3 to S3 copies it)
            if isinstance(self.dst, LocalLoc) and not safe_rel(rel):
                self._fail(rel, f"{self.src}{rel}: key cannot be a local path safely ('..', '.' or empty parts)")
                continue
            verdict = self.cmp.quick(s, d)
            if verdict is None:
                pool = self._hasher if self.cmp.small_local_check(s, d) else checkers
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

    def _check(self, s: Entry, d: Entry) -> None:
        reason = self.cmp.compare(s, d)
        if reason:
            fut = self._submit(self._tslots, self._workers, self._transfer, s, d, reason)
            with self._pending_lock:
                self._late.append(fut)
        else:
            self._skip(s)

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
            r = self.engine.copy(src.bucket, src.key(s.rel), dst.bucket, dst.key(s.rel), kind=s.kind,
                                 workers=min(o.workers, 8), allow_incomplete=o.allow_incomplete,
                                 info=None if self.source.sse_key else s.info, source=self.source)
            if d is not None and d.kind != s.kind:
                self._remove(dst, d)
            return r.size
        if isinstance(src, LocalLoc):
            path = src.path(s.rel)
            meta = {"md5": s.digests["md5"]} if "md5" in s.digests else None
            r = self.engine.upload(path, dst.bucket, dst.key(s.rel), as_object=True, workers=min(o.workers, 8),
                                   part_size=o.part_size, content_type=transfer.guess_type(s.rel),
                                   metadata=meta, keep_on_failure=False)
            if d is not None and d.kind == "stream":
                self._remove(dst, d)
            return r.size
        # S3 -> local
        path = dst.path(s.rel)
        info = None if self.source.sse_key or s.kind == "stream" else s.info
        fn = lambda f: self.engine.download(src.bucket, src.key(s.rel), f, kind=s.kind,  # noqa: E731
                                            workers=min(o.workers, 8), info=info, request=self.source)
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
            self.engine.delete(loc.bucket, key)
        else:
            self.store.delete(loc.bucket, key)

    def _delete_extra(self, src_entries: dict, dst_entries: dict) -> None:
        extra = [e for rel, e in sorted(dst_entries.items()) if rel not in src_entries and self.ok(rel)]
        if isinstance(self.dst, LocalLoc) or isinstance(self.src, LocalLoc):
            extra = [e for e in extra if not directory_object(e.rel)]
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
                    self.report.actions += [("delete", e.rel, "not in source") for e in objs]
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
                        self.report.actions.append(("delete", e.rel, "not in source"))
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
