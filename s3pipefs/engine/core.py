"""Engine: the facade the CLI and the FUSE layer share.

It classifies keys (stream, plain object, directory), lists one directory level, and opens
writers and readers. It holds one ObjectStore and one TransferConfig and is thread-safe.

Request options (s3/interface.py ``RequestOptions``: the SSE-C key and the client-side
encryption key) are the engine's own: every request its readers, writers, leases, manifest
reads and lookups send carries them, and its readers and writers encrypt with the
client-side key (engine/crypto.py). Plain objects are never encrypted client-side: writing
one with a client-side key is refused.
The data calls (stat, find, open_reader, open_writer, upload, upload_url, download) take a
``request`` for a location whose options differ, and copy a ``source`` and a ``dest``: a
copy decrypts with one key and encrypts with another through the same engine and store.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import functools
import time
from dataclasses import dataclass, field

from s3pipefs import errors, manifest as mf
from s3pipefs.config import TransferConfig
from s3pipefs.engine import deletion, kinds, manifests, objattrs
from s3pipefs.engine.budget import WriteBudget
from s3pipefs.engine.filewriter import FileWriter
from s3pipefs.engine.lease import writer_alive
from s3pipefs.engine.live import LiveReader
from s3pipefs.engine.reader import ObjectPlan, ReadBudget, Reader, StreamPlan
from s3pipefs.engine.writer import StreamWriter
from s3pipefs.s3 import ObjectInfo, ObjectStore, RequestOptions

# Conditional manifest rewrites tried by set_attrs before giving up with EBUSY.
ATTR_TRIES = 3
# Entry.encryption of a stream whose manifest is under an SSE-C key not given.
LOCKED = "sse-c"


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
    # An object's or a directory's user metadata, when read (engine/objattrs.py).
    metadata: dict = field(default_factory=dict)
    # A directory whose attributes are kept in its folder object ``KEY_$folder$``
    # (engine/objattrs.py), not in its marker.
    folder_object: bool = False
    # A stream's encryption: its manifest's scheme (client-side), or LOCKED when its
    # manifest could not be read for want of the right SSE-C key (size and state unknown).
    encryption: str = ""

    # Attributes stored by a mount (utimens, chmod, chown) or another tool: a stream's in
    # its manifest, an object's or a directory's in its metadata; None = not set.
    @property
    def mtime_ns(self) -> int | None:
        return self.manifest.mtime_ns if self.manifest is not None else self._attrs.mtime_ns

    @property
    def mode(self) -> int | None:
        """Permission bits."""
        if self.manifest is not None:
            return self.manifest.mode
        mode = self._attrs.mode
        return mode & 0o7777 if mode is not None else None

    @property
    def uid(self) -> int | None:
        return self.manifest.uid if self.manifest is not None else self._attrs.uid

    @property
    def gid(self) -> int | None:
        return self.manifest.gid if self.manifest is not None else self._attrs.gid

    @property
    def is_link(self) -> bool:
        """A symbolic link: an object whose stored mode says so (its body is the target)."""
        return self.kind == kinds.OBJECT and self._attrs.is_link

    @functools.cached_property
    def _attrs(self) -> objattrs.Attrs:
        # Parsed once: a getattr reads mode, owners, time and is_link (entries are not
        # changed in place; ``replace`` makes a new one).
        return objattrs.parse(self.metadata)

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]


def _iso_to_epoch(text: str) -> float:
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except (ValueError, TypeError):
        return 0.0


class Engine:
    def __init__(self, store: ObjectStore, cfg: TransferConfig | None = None, read_budget: ReadBudget | None = None,
                 request: RequestOptions | None = None, write_budget: WriteBudget | None = None):
        self.store = store
        self.cfg = (cfg or TransferConfig()).validate()
        # Shared by every reader this engine opens (a mount); None: each has its own read_ahead.
        self.read_budget = read_budget
        # Shared by every writer this engine opens (a mount); None: each has its own pool.
        self.write_budget = write_budget
        self.request = request or RequestOptions()

    def _key(self, request: RequestOptions | None) -> bytes:
        """The SSE-C key of a call: its own request options', else the engine's."""
        return (request or self.request).sse_key

    def _refuse_encrypted_object(self, request: RequestOptions | None, where: str) -> None:
        if (request or self.request).encrypt_key:
            raise errors.UsageError(f"{where}: client-side encryption is for streams; a plain object "
                                    "cannot be encrypted (write a stream, or leave out the encryption key)")

    # -- classification ------------------------------------------------------------------
    def stream_entry(self, bucket: str, key: str, loaded: manifests.Loaded) -> Entry:
        m = loaded.manifest
        if m.mtime_ns is not None:
            mtime = m.mtime_ns / 1e9
        else:
            mtime = loaded.last_modified or _iso_to_epoch(m.upload_ended or m.upload_began)
        return Entry("stream", bucket, key, size=m.total_size, mtime=mtime, complete=m.completed,
                     writer_alive=writer_alive(m, self.cfg.stale_after), etag=loaded.etag, manifest=m,
                     encryption=m.encryption)

    @staticmethod
    def locked_entry(bucket: str, key: str) -> Entry:
        """A stream whose manifest is under an SSE-C key this engine does not hold: listed,
        marked, and nothing more is known of it."""
        return Entry(kinds.STREAM, bucket, key, encryption=LOCKED)

    def find(self, bucket: str, key: str, *, request: RequestOptions | None = None) -> kinds.Found | None:
        """What ``key`` names, as written: a trailing '/' never names an object (engine/kinds.py)."""
        return kinds.find(self.store, bucket, key, sse_key=self._key(request))

    def stat(self, bucket: str, key: str, *, request: RequestOptions | None = None, probe: bool = False
             ) -> Entry | None:
        """What ``key`` names (engine/kinds.py), or None. Slashes around the name are
        ignored: "x/" finds an object "x" as well. ``probe``: start from one LIST of the
        name (cheapest when the name is likely free: a mount's lookups)."""
        key = key.strip("/")
        classify = kinds.probe if probe else kinds.find
        return self._entry(bucket, key, classify(self.store, bucket, key, sse_key=self._key(request)))

    def _entry(self, bucket: str, key: str, found: kinds.Found | None) -> Entry | None:
        if found is None:
            return None
        if found.kind == kinds.STREAM:
            return self.stream_entry(bucket, key, found.loaded)
        if found.kind == kinds.OBJECT:
            info = found.info
            return self.object_entry(bucket, key, info)
        return Entry(kinds.DIR, bucket, key, folder_object=found.folder_object)

    @staticmethod
    def object_entry(bucket: str, key: str, info: ObjectInfo) -> Entry:
        return Entry(kinds.OBJECT, bucket, key, size=info.size, mtime=info.last_modified, etag=info.etag,
                     metadata=info.metadata)

    def listdir(self, bucket: str, prefix: str) -> list[Entry]:
        """One level under ``prefix`` ("" or ending in '/'): streams, objects and dirs
        (folder objects folded into the directories they stand for)."""
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        objects: list[ObjectInfo] = []
        subdirs: list[str] = []
        for item in self.store.list(bucket, prefix, delimiter="/", quick=True):
            if isinstance(item, str):
                subdirs.append(item)
            elif item.key != prefix:  # skip the directory marker itself
                objects.append(item)
        # Folder objects (engine/objattrs.py) are no names of their own: each marks its
        # directory as keeping its attributes there, or alone is that (empty) directory.
        folders = {o.key: o for o in objects if objattrs.folder_of(o.key)}
        entries = [Entry("object", bucket, o.key, size=o.size, mtime=o.last_modified, etag=o.etag)
                   for o in objects if not o.key.endswith("/") and o.key not in folders]

        # A common prefix is a stream or a directory (or, emptied, nothing); in parallel.
        def classify(p: str) -> Entry | None:
            name = p.rstrip("/")
            if objattrs.folder_key(name) in folders:
                # Listed beside its folder object: a directory (only directories get one,
                # engine/objattrs.py), with no request to probe it (kinds.py).
                return Entry(kinds.DIR, bucket, name, folder_object=True)
            try:
                found = kinds.find(self.store, bucket, p, sse_key=self.request.sse_key)
            except (errors.KeyNeeded, errors.WrongKey):
                return self.locked_entry(bucket, p.rstrip("/"))  # its manifest exists: a stream
            return self._entry(bucket, p.rstrip("/"), found)

        if subdirs:
            with cf.ThreadPoolExecutor(min(16, len(subdirs))) as pool:
                entries.extend(e for e in pool.map(classify, subdirs) if e is not None)
        taken = {e.key for e in entries}
        for key, o in folders.items():
            name = objattrs.folder_of(key)
            if name not in taken:  # alone: the empty directory (a name taken otherwise wins)
                entries.append(Entry(kinds.DIR, bucket, name, mtime=o.last_modified, folder_object=True))
        return sorted(entries, key=lambda e: e.key)

    def set_attrs(self, bucket: str, key: str, known: Entry | None = None, **attrs) -> Entry | None:
        """Store ``mtime_ns``, ``mode``, ``uid`` and/or ``gid`` in a stream's manifest; None
        when ``key`` is no stream (see set_object_attrs). Busy while a writer holds it.

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
                loaded = manifests.load(self.store, bucket, key + "/", sse_key=self.request.sse_key) if key else None
            if loaded is None:
                return None
            m = loaded.manifest
            if writer_alive(m, self.cfg.stale_after):
                if attempt == 0 and known is not None:
                    continue  # the cache may be older than that writer's end: ask S3
                raise errors.Busy(f"s3://{bucket}/{key}: a writer is writing it ({m.writer_id}); "
                                  "its times and mode can be set once it is done")
            new = m.owned().with_(**attrs)
            if new == m:
                return self.stream_entry(bucket, key, loaded)
            try:
                etag = manifests.save(self.store, bucket, key + "/", new, if_match=loaded.etag,
                                      sse_key=self.request.sse_key)
            except errors.Busy:
                continue  # changed under us: read it again
            return self.stream_entry(bucket, key, manifests.Loaded(new, etag, time.time()))
        raise errors.Busy(f"s3://{bucket}/{key}: the manifest kept changing while setting its attributes")

    def set_object_attrs(self, bucket: str, key: str, *, directory: bool = False, **attrs) -> Entry | None:
        """Store attributes as set_attrs does, in the user metadata of the object ``key`` or
        of the directory's marker (engine/objattrs.py); the entry as the server then holds
        it, None when there is no such object."""
        key = key.strip("/")
        info = objattrs.store_attrs(self.store, bucket, key, directory=directory, sse_key=self.request.sse_key,
                                    **attrs)
        if info is None:
            return None
        if directory:
            return Entry(kinds.DIR, bucket, key, metadata=info.metadata)
        return self.object_entry(bucket, key, info)

    # -- data ----------------------------------------------------------------------------
    def open_writer(self, bucket: str, key: str, mode: str = "create", writer_id: str | None = None, *,
                    hold_back: int = 0, request: RequestOptions | None = None,
                    patchable: bool = False) -> StreamWriter:
        """``hold_back``: bytes at the end kept unsealed, so pwrite may still change them.
        ``patchable``: nothing published before flush or close, every byte since patchable."""
        return StreamWriter(self.store, self.cfg, bucket, key, mode, writer_id, hold_back=hold_back,
                            sse_key=self._key(request), encrypt_key=(request or self.request).encrypt_key,
                            budget=self.write_budget, patchable=patchable)

    def open_file_writer(self, bucket: str, key: str, mode: str = "create", *, existing: Entry | None,
                         hold_back: int = 0, patchable: bool = False) -> FileWriter:
        """A file as the mount writes it: a plain object while it fits one segment, a
        stream once it outgrows it (engine/filewriter.py). ``existing``: what the name
        holds now, as the caller just looked it up."""
        return FileWriter(self, bucket, key, mode, existing=existing.kind if existing is not None else None,
                          existing_size=existing.size if existing is not None else 0,
                          carried={"mode": existing.mode, "uid": existing.uid, "gid": existing.gid}
                          if existing is not None else None,
                          hold_back=hold_back, sse_key=self.request.sse_key, patchable=patchable)

    def committed_entry(self, bucket: str, key: str, committed: manifests.Loaded | ObjectInfo) -> Entry:
        """What a writer's commit left in S3, known without asking."""
        if isinstance(committed, ObjectInfo):
            return self.object_entry(bucket, key, committed)
        return self.stream_entry(bucket, key, committed)

    def open_reader(self, bucket: str, key: str, follow: bool = True, entry: Entry | None = None, *,
                    request: RequestOptions | None = None, body: bytes | None = None) -> Reader:
        """``entry``: what a cache knows of ``key`` (an object's saves a HEAD); ``body``:
        that object's bytes, when the cache holds them too (no GET either)."""
        key = key.strip("/")
        sse_key = self._key(request)
        if entry is None or entry.kind == "stream":
            loaded = manifests.load(self.store, bucket, key + "/", sse_key=sse_key) if key else None
            if loaded is not None:
                plan = StreamPlan(self.store, self.cfg, bucket, key, loaded, sse_key=sse_key,
                                  encrypt_key=(request or self.request).encrypt_key)
                return Reader(self.store, self.cfg, plan, follow, budget=self.read_budget)
        if entry is not None and entry.kind == kinds.OBJECT and entry.etag:
            # Just listed or looked up (a mount's cache): no HEAD again.
            info = ObjectInfo(key, entry.size, entry.etag, entry.mtime, entry.metadata)
        else:
            info = self.store.head(bucket, key, sse_key=sse_key) if key else None
        if info is None:
            self.store.bucket_exists(bucket)
            raise errors.NotFound(f"s3://{bucket}/{key}: no such stream or object")
        plan = ObjectPlan(bucket, info, self.cfg.block_size, sse_key=sse_key,
                          body=body if entry is not None and info.etag == entry.etag else None)
        return Reader(self.store, self.cfg, plan, follow=False, budget=self.read_budget)

    def open_live_reader(self, writer: StreamWriter) -> LiveReader:
        """A reader of every byte ``writer`` (of this process) has written so far, uploaded
        or not (engine/live.py)."""
        return LiveReader(self.store, self.cfg, writer, budget=self.read_budget)

    def delete(self, bucket: str, key: str, kind: str | None = None) -> Entry | None:
        """Remove a stream (manifest first, then segments and staged leftovers) or an object.

        ``kind`` ("stream" or "object") removes that one without looking first and
        returns None: a rename removes the destination it replaced with one of the other
        kind, which a lookup would no longer find under that name.
        """
        key = key.strip("/")
        entry = None
        if kind is None:
            entry = self.stat(bucket, key)
            if entry is None:
                raise errors.NotFound(f"s3://{bucket}/{key}: no such stream or object")
            if entry.kind == kinds.DIR:
                raise errors.S3PipeError(f"s3://{bucket}/{key}: is a directory")
            if entry.kind == kinds.STREAM and entry.writer_alive:
                raise errors.Busy(f"s3://{bucket}/{key}: a writer is still writing it ({entry.manifest.writer_id})")
            kind = entry.kind
        if kind == kinds.STREAM:
            deletion.delete_stream(self.store, bucket, key + "/")
        else:
            self.store.delete(bucket, key)
        return entry

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, *, kind: str | None = None,
             workers: int | None = None, info: ObjectInfo | None = None, allow_incomplete: bool = False,
             source: RequestOptions | None = None, dest: RequestOptions | None = None, progress=None):
        """Server-side copy of the stream or object ``src_key`` (engine/copy.py); a CopyResult.

        ``kind``: what the source is, when the caller has just looked (else kinds.find
        decides). ``info``: an object's listing entry (saves a HEAD). A directory raises
        IsADirectory (EISDIR), a missing source NotFound. ``source`` and ``dest``: the
        request options of each side (None: the engine's), so a copy can re-encrypt.
        """
        from s3pipefs.engine import copy as copying  # imported on use: put/cat/mount never copy

        workers = workers or self.cfg.workers
        source_sse_key, sse_key = self._key(source), self._key(dest)
        found = None
        if kind is None:
            found = kinds.find(self.store, src_bucket, src_key, sse_key=source_sse_key)
            if found is None:
                raise errors.NotFound(f"s3://{src_bucket}/{src_key}: no such stream or object")
            kind = found.kind
        if kind == kinds.DIR:
            raise copying.IsADirectory(f"s3://{src_bucket}/{src_key}: is a directory "
                                       "(use `s3pipefs sync` for a tree)")
        if kind == kinds.STREAM and self._recrypts(src_bucket, src_key, found, source, dest):
            return self._copy_through(src_bucket, src_key, dst_bucket, dst_key, source=source, dest=dest,
                                      progress=progress)
        if kind == kinds.STREAM:
            return copying.copy_stream(self.store, src_bucket, src_key, dst_bucket, dst_key, workers,
                                       allow_incomplete=allow_incomplete, source_sse_key=source_sse_key,
                                       sse_key=sse_key, cfg=self.cfg, progress=progress)
        return copying.copy_object(self.store, src_bucket, src_key.strip("/"), dst_bucket, dst_key.strip("/"),
                                   workers=workers, info=info, source_sse_key=source_sse_key, sse_key=sse_key,
                                   progress=progress)

    def _recrypts(self, bucket: str, key: str, found: kinds.Found | None, source: RequestOptions | None,
                  dest: RequestOptions | None) -> bool:
        """Must a stream copy pass through this machine? Yes when the copy is to be encrypted
        with another client-side key than the source's (key rotation), or to be encrypted
        from a plain source; a server-side copy keeps the source's ciphertext as it is."""
        skey, dkey = (source or self.request).encrypt_key, (dest or self.request).encrypt_key
        if not skey and not dkey:
            return False
        if found is None or found.loaded is None:
            found = kinds.find(self.store, bucket, key, sse_key=self._key(source))
        if found is None or found.loaded is None:
            return False  # gone meanwhile: copy_stream names it
        return dkey != skey if found.loaded.manifest.encryption else bool(dkey)

    def _copy_through(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, *,
                      source: RequestOptions | None, dest: RequestOptions | None, progress=None):
        """A stream copy that decrypts with the source's keys and encrypts with the
        destination's: read through a Reader, written through a StreamWriter. Complete
        sources only: the copy is a new stream, committed like a put."""
        from s3pipefs.engine import copy as copying

        reader = self.open_reader(src_bucket, src_key, follow=False, request=source)
        try:
            if not reader.complete:
                raise errors.StreamIncomplete(f"s3://{src_bucket}/{src_key.strip('/')}: stream is incomplete; "
                                              "a re-encrypting copy needs it complete")
            writer = self.open_writer(dst_bucket, dst_key, request=dest)
            m = reader.plan.manifest
            writer.mtime_ns, writer.mode, writer.uid, writer.gid = m.mtime_ns, m.mode, m.uid, m.gid
            size = 0
            try:
                for piece in reader.chunks(0):
                    writer.write(piece)
                    size += len(piece)
                    if progress:
                        progress(len(piece))
                writer.close()
            except BaseException:
                writer.abort()
                raise
        finally:
            reader.close()
        return copying.CopyResult(kinds.STREAM, size, 0, complete=True)

    def upload(self, src, bucket: str, key: str, *, as_object: bool = False, resume: bool = False,
               workers: int | None = None, part_size: int | None = None, content_type: str | None = None,
               metadata: dict | None = None, request: RequestOptions | None = None, keep_on_failure: bool = True,
               file_stat=None, progress=None):
        """A local file (a path or a binary file object) or a pipe into a stream, or with
        ``as_object`` into a plain object (parallel multipart); a transfer.Result.

        Streams: ``resume`` is the writer's resume, ``file_stat`` the source's stat whose
        mtime and mode the stream keeps. Objects: ``resume`` continues the unfinished
        multipart upload; ``keep_on_failure`` leaves a failed one for it.
        """
        from s3pipefs.engine import parts, transfer  # imported on use: a mount never uploads this way

        if as_object:
            self._refuse_encrypted_object(request, f"s3://{bucket}/{key}")
        else:
            return transfer.upload_to_stream(self, src, bucket, key, mode="resume" if resume else "create",
                                             progress=progress, file_stat=file_stat, request=request)
        return transfer.upload_file(self.store, src, bucket, key, workers=workers or self.cfg.workers,
                                    part_size=part_size or parts.UPLOAD_PART, content_type=content_type,
                                    metadata=metadata, sse_key=self._key(request), resume=resume,
                                    keep_on_failure=keep_on_failure, progress=progress)

    def upload_url(self, url: str, bucket: str, key: str, *, as_object: bool = False, resume: bool = False,
                   workers: int | None = None, part_size: int | None = None, content_type: str | None = None,
                   request: RequestOptions | None = None, retrier=None, progress=None):
        """An http(s) URL into a stream, or with ``as_object`` a plain object; parallel
        ranged GETs when the server serves ranges (engine/transfer/urls.py). ``retrier``: the
        RetryPolicy for the URL's reads (the store retries its own requests)."""
        from s3pipefs.engine import parts, transfer

        workers = workers or self.cfg.workers
        if as_object:
            self._refuse_encrypted_object(request, f"s3://{bucket}/{key}")
            return transfer.url_to_object(self.store, url, bucket, key, workers=workers,
                                          part_size=part_size or parts.UPLOAD_PART, content_type=content_type,
                                          sse_key=self._key(request), resume=resume, retrier=retrier,
                                          progress=progress)
        return transfer.url_to_stream(self, url, bucket, key, workers=workers, part_size=part_size or parts.READ_RANGE,
                                      resume=resume, retrier=retrier, progress=progress, request=request)

    def download(self, bucket: str, key: str, out, *, kind: str | None = None, follow: bool = False,
                 workers: int | None = None, part_size: int | None = None, info: ObjectInfo | None = None,
                 request: RequestOptions | None = None, progress=None):
        """Write the stream or object ``key`` to the binary file object ``out``, in order;
        a transfer.Result. ``kind`` as for copy(); ``follow`` reads a stream as it grows."""
        from s3pipefs.engine import parts, transfer

        sse_key = self._key(request)
        if kind is None:
            found = kinds.find(self.store, bucket, key, sse_key=sse_key)
            kind = found.kind if found is not None else kinds.OBJECT  # download_object names what is missing
        if kind == kinds.STREAM:
            return transfer.download_stream(self, bucket, key, out, follow=follow, progress=progress, request=request)
        return transfer.download_object(self.store, bucket, key, out, workers=workers or self.cfg.workers,
                                        part_size=part_size or parts.READ_RANGE, info=info, sse_key=sse_key,
                                        progress=progress)

    def sync(self, src, dst, opts, *, progress=None):
        """Run one sync job between s3:// locations and local directories (engine/sync/);
        ``src``/``dst`` as text or parsed. Returns its Report."""
        from s3pipefs.engine.sync import Sync, parse_location

        src = parse_location(src) if isinstance(src, str) else src
        dst = parse_location(dst) if isinstance(dst, str) else dst
        return Sync(self, src, dst, opts, progress=progress).run()
