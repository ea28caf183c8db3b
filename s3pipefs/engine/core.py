"""Engine: the facade the CLI and the FUSE layer share.

It classifies keys (stream, plain object, directory), lists one directory level, and opens
writers and readers. It holds one Store and one TransferConfig and is thread-safe.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import time
from dataclasses import dataclass

from s3pipefs import errors, manifest as mf
from s3pipefs.config import TransferConfig
from s3pipefs.engine import manifests
from s3pipefs.engine.reader import ObjectPlan, ReadBudget, Reader, StreamPlan
from s3pipefs.engine.writer import StreamWriter
from s3pipefs.s3 import ObjectInfo, ObjectStore

# Conditional manifest rewrites tried by set_attrs before giving up with EBUSY.
ATTR_TRIES = 3


@dataclass
class Entry:
    kind: str  # "stream" | "object" | "dir"
    bucket: str
    key: str
    size: int = 0
    mtime: float = 0.0
    complete: bool = True
    writer_alive: bool = False
    etag: str = ""
    manifest: mf.Manifest | None = None

    # Attributes a mount stored in a stream's manifest (utimens, chmod); None = not set.
    @property
    def mtime_ns(self) -> int | None:
        return self.manifest.mtime_ns if self.manifest is not None else None

    @property
    def mode(self) -> int | None:
        return self.manifest.mode if self.manifest is not None else None

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]


def _iso_to_epoch(text: str) -> float:
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except (ValueError, TypeError):
        return 0.0


class Engine:
    def __init__(self, store: ObjectStore, cfg: TransferConfig | None = None, read_budget: ReadBudget | None = None):
        self.store = store
        self.cfg = (cfg or TransferConfig()).validate()
        # Shared by every reader this engine opens (a mount); None: each has its own read_ahead.
        self.read_budget = read_budget

    # -- classification ------------------------------------------------------------------
    def stream_entry(self, bucket: str, key: str, loaded: manifests.Loaded) -> Entry:
        m = loaded.manifest
        if m.mtime_ns is not None:
            mtime = m.mtime_ns / 1e9
        else:
            mtime = loaded.last_modified or _iso_to_epoch(m.upload_ended or m.upload_began)
        return Entry("stream", bucket, key, size=m.total_size, mtime=mtime, complete=m.completed,
                     writer_alive=manifests.writer_alive(m, self.cfg.stale_after), etag=loaded.etag, manifest=m)

    def stat(self, bucket: str, key: str) -> Entry | None:
        key = key.strip("/")
        if not key:
            self.store.bucket_exists(bucket)
            return Entry("dir", bucket, "")
        loaded = manifests.load(self.store, bucket, key + "/")
        if loaded is not None:
            return self.stream_entry(bucket, key, loaded)
        info = self.store.head(bucket, key)
        if info is not None:
            return Entry("object", bucket, key, size=info.size, mtime=info.last_modified, etag=info.etag)
        if self.store.any_key(bucket, key + "/"):
            return Entry("dir", bucket, key)
        return None

    def listdir(self, bucket: str, prefix: str) -> list[Entry]:
        """One level under ``prefix`` ("" or ending in '/'): streams, objects and dirs."""
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        objects: list[ObjectInfo] = []
        subdirs: list[str] = []
        for item in self.store.list(bucket, prefix, delimiter="/"):
            if isinstance(item, str):
                subdirs.append(item)
            elif item.key != prefix:  # skip the directory marker itself
                objects.append(item)
        entries = [Entry("object", bucket, o.key, size=o.size, mtime=o.last_modified, etag=o.etag)
                   for o in objects if not o.key.endswith("/")]

        # A common prefix is a stream when it holds a manifest; look them up in parallel.
        def classify(p: str) -> Entry | None:
            loaded = manifests.load(self.store, bucket, p)
            if loaded is not None:
                return self.stream_entry(bucket, p.rstrip("/"), loaded)
            # Some servers (SeaweedFS) list an emptied prefix for a while; S3 never does.
            if not self.store.any_key(bucket, p):
                return None
            return Entry("dir", bucket, p.rstrip("/"))

        if subdirs:
            with cf.ThreadPoolExecutor(min(16, len(subdirs))) as pool:
                entries.extend(e for e in pool.map(classify, subdirs) if e is not None)
        return sorted(entries, key=lambda e: e.key)

    def set_attrs(self, bucket: str, key: str, known: Entry | None = None, **attrs) -> Entry | None:
        """Store ``mtime_ns`` and/or ``mode`` in a stream's manifest; None when ``key`` is
        no stream (objects and directories keep no attributes). Busy while a writer holds it.

        The manifest is rewritten only if unchanged since it was read (If-Match), so a
        writer taking the stream meanwhile is never overwritten; a lost race is retried
        with a fresh read. ``known``: a cached entry of the stream to start from, which
        saves the first read (a stale one just loses the race).
        """
        key = key.strip("/")
        for attempt in range(ATTR_TRIES):
            if attempt == 0 and known is not None and known.manifest is not None and known.etag:
                loaded = manifests.Loaded(known.manifest, known.etag, known.mtime)
            else:
                loaded = manifests.load(self.store, bucket, key + "/") if key else None
            if loaded is None:
                return None
            m = loaded.manifest
            if manifests.writer_alive(m, self.cfg.stale_after):
                if attempt == 0 and known is not None:
                    continue  # the cache may be older than that writer's end: ask S3
                raise errors.Busy(f"s3://{bucket}/{key}: a writer is writing it ({m.writer_id}); "
                                  "its times and mode can be set once it is done")
            new = m.owned().with_(**attrs)
            if new == m:
                return self.stream_entry(bucket, key, loaded)
            try:
                etag = manifests.save(self.store, bucket, key + "/", new, if_match=loaded.etag)
            except errors.Busy:
                continue  # changed under us: read it again
            return self.stream_entry(bucket, key, manifests.Loaded(new, etag, time.time()))
        raise errors.Busy(f"s3://{bucket}/{key}: the manifest kept changing while setting its attributes")

    # -- data ----------------------------------------------------------------------------
    def open_writer(self, bucket: str, key: str, mode: str = "create", writer_id: str | None = None) -> StreamWriter:
        return StreamWriter(self.store, self.cfg, bucket, key, mode, writer_id)

    def open_reader(self, bucket: str, key: str, follow: bool = True, entry: Entry | None = None) -> Reader:
        key = key.strip("/")
        if entry is None or entry.kind == "stream":
            loaded = manifests.load(self.store, bucket, key + "/") if key else None
            if loaded is not None:
                return Reader(self.store, self.cfg, StreamPlan(self.store, self.cfg, bucket, key, loaded), follow,
                              budget=self.read_budget)
        info = self.store.head(bucket, key) if key else None
        if info is None:
            self.store.bucket_exists(bucket)
            raise errors.NotFound(f"s3://{bucket}/{key}: no such stream or object")
        return Reader(self.store, self.cfg, ObjectPlan(bucket, info, self.cfg.block_size), follow=False,
                      budget=self.read_budget)

    def delete(self, bucket: str, key: str) -> Entry:
        """Remove a stream (segments, manifest, staged leftovers) or an object."""
        key = key.strip("/")
        entry = self.stat(bucket, key)
        if entry is None:
            raise errors.NotFound(f"s3://{bucket}/{key}: no such stream or object")
        if entry.kind == "dir":
            raise errors.S3PipeError(f"s3://{bucket}/{key}: is a directory")
        if entry.kind == "stream":
            if entry.writer_alive:
                raise errors.Busy(f"s3://{bucket}/{key}: a writer is still writing it ({entry.manifest.writer_id})")
            prefix = key + "/"
            # Manifest first: a half-deleted stream must never look complete.
            self.store.delete(bucket, manifests.manifest_key(prefix))
            keys = [o.key for o in self.store.list(bucket, prefix)]
            if keys:
                self.store.delete_many(bucket, keys)
        else:
            self.store.delete(bucket, key)
        return entry

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, kind: str | None = None) -> None:
        """Server-side copy of a stream or object (used by rename); ``kind`` if known."""
        from s3pipefs.engine import copy as _copy

        _copy.copy_entry(self.store, self, src_bucket, src_key, dst_bucket, dst_key, kind=kind)
