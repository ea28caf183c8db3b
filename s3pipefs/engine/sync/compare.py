"""Deciding, entry by entry, whether the destination is up to date (see the modes in the
package docstring). ``quick`` decides from listing data alone; what it cannot decide goes
to ``compare`` on a checker thread, which may hash a local file, HEAD an object or read
a stream's manifest."""
from __future__ import annotations

import hashlib

from s3pipefs import manifest as mf
from s3pipefs.config import MiB
from s3pipefs.engine import manifests
from s3pipefs.engine.sync import digests
from s3pipefs.engine.sync.locations import Entry, LocalLoc, S3Loc
from s3pipefs.engine.sync.report import SyncOptions

# Local files below this size are hashed on one thread: their cost is Python's per-file
# work, which holds the GIL, and sixteen threads passing it around made a no-change re-run
# of 10,000 small files take 1.2 s instead of 0.7 s. Larger files hash in parallel (hashlib
# lets go of the GIL while it hashes).
SMALL_FILE = 1 * MiB


class Comparer:
    """The comparisons of one sync job between ``src`` and ``dst``."""

    def __init__(self, engine, src, dst, opts: SyncOptions):
        self.engine, self.store = engine, engine.store
        self.src, self.dst, self.o = src, dst, opts
        # Request options (SSE-C keys) of each side: the destination's are the engine's.
        self.source, self.dest = opts.source or engine.request, engine.request

    def quick(self, s: Entry, d: Entry | None):
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
            same = digests.same_md5_etag(s.etag, d.etag)
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
            same = digests.same_md5_etag(s.etag, d.etag)
            if same is None:
                same = digests.same_multipart(s.etag, d.etag)
            if same is not None:
                return False if same else "ETag differs"
            return False if d.mtime >= s.mtime else "source newer"
        obj = s if s.kind == "object" else d
        if digests.is_md5(obj.etag) or digests.etag_parts(obj.etag):
            return None  # hash the local file in the checker pool
        # No MD5 to compare with (SSE-C/KMS): size + time.
        if s.kind == "file":
            return False if d.mtime >= s.mtime else "source newer"
        return False if int(d.mtime) >= int(s.mtime) else "source newer"

    def small_local_check(self, s: Entry, d: Entry) -> bool:
        """The check hashes a small local file and asks S3 nothing (see SMALL_FILE)."""
        return (self.o.mode != "checksum" and {s.kind, d.kind} == {"file", "object"}
                and s.size < SMALL_FILE)

    def _kind_differs(self, s: Entry, d: Entry) -> bool:
        if s.kind == "file" or d.kind == "file":
            return False
        return s.kind != d.kind

    def compare(self, s: Entry, d: Entry):
        if self.o.mode == "checksum":
            if s.size != d.size and "stream" not in (s.kind, d.kind):
                return "size differs"
            # Streams carry a whole-stream SHA-256, objects an MD5 (ETag or s3pipefs metadata).
            algo = "sha256" if "stream" in (s.kind, d.kind) else "md5"
            a = self._content_digest(s, self.src, self.source, algo)
            b = self._content_digest(d, self.dst, self.dest, algo)
            if a is None or b is None:
                return "no checksum to compare"
            return False if a == b else "checksum differs"
        # default mode, a local file on one side
        local, remote = (s, d) if s.kind == "file" else (d, s)
        lloc = self.src if s.kind == "file" else self.dst
        rloc = self.dst if s.kind == "file" else self.src
        if remote.kind == "stream":
            m = self._manifest(rloc, remote, self.dest if remote is d else self.source)
            if m is None or not m.completed:
                return "destination stream incomplete" if remote is d else None
            remote.size = m.total_size
            if local.size != m.total_size:
                return "size differs"
            if m.sha256:
                return False if self._local_digest(lloc, local, "sha256") == m.sha256 else "SHA-256 differs"
            return False if d.mtime >= s.mtime else "source newer"
        if digests.is_md5(remote.etag):
            return False if self._local_digest(lloc, local, "md5") == remote.etag.lower() else "MD5 differs"
        n = digests.etag_parts(remote.etag)
        if n:
            got = digests.local_multipart_etags(lloc.path(local.rel), local.size, n, self.o.part_size)
            return False if remote.etag.strip('"') in got else "ETag differs"
        return False if d.mtime >= s.mtime else "source newer"

    def _manifest(self, loc: S3Loc, e: Entry, request) -> mf.Manifest | None:
        got = manifests.load(self.store, loc.bucket, loc.key(e.rel) + "/", sse_key=request.sse_key)
        return got.manifest if got else None

    def _local_digest(self, loc: LocalLoc, e: Entry, algo: str) -> str:
        got = e.digests.get(algo)
        if got is None:
            got = e.digests[algo] = digests.file_digest(loc.path(e.rel), algo)
        return got

    def _content_digest(self, e: Entry, loc, request, algo: str) -> str | None:
        if e.kind == "file":
            return self._local_digest(loc, e, algo)
        sse = request.sse_key
        if e.kind == "stream":
            m = self._manifest(loc, e, request)
            if m is None or not m.completed:
                return None
            if m.sha256:
                return m.sha256
            return self._hash_remote_stream(loc, e, request)
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
        self.engine.download(loc.bucket, loc.key(e.rel), _Sink(), kind="object", workers=4, info=info,
                             request=request)
        return h.hexdigest()

    def _hash_remote_stream(self, loc: S3Loc, e: Entry, request) -> str | None:
        h = hashlib.sha256()

        class _Sink:
            def write(self, b):
                h.update(b)
        self.engine.download(loc.bucket, loc.key(e.rel), _Sink(), kind="stream", request=request)
        return h.hexdigest()
