"""Paths in the mount <-> streams, objects and directories in S3, with TTL caches.

``/a/b.tar`` in a mount of ``bucket/pre/`` is the key ``pre/a/b.tar``: a stream when
``pre/a/b.tar/.manifest`` exists, else a plain object, else a directory when anything
lives under ``pre/a/b.tar/``. The engine classifies; this module remembers.

Caches (cachetools TTLCache, one lock, since cachetools is not thread-safe):

* listings: directory path -> {name: Entry}, filled by readdir. A lookup in a directory
  listed within the TTL is answered from it, so ``ls -l`` of 1000 streams costs one
  listing (one LIST and one manifest GET per stream, made by the engine in parallel)
  per TTL, not a request per entry per call.
* entries: path -> Entry, or None for "does not exist" (tar x and rsync look up every
  name before creating it).
* links: (path, ETag) -> a symlink's target, so following a link costs no GET per use.
* bodies: (path, ETag) -> a small object's bytes, fetched whole by its listing or ahead
  of reads in listing order (``body``), so that reading it within the TTL costs no GET
  (``diff -r``, ``grep -r``, ``cp -r`` from the mount); at most MAX_BODY_BYTES in all.
  The reader still checks them against the ETag's MD5.

Symlinks, owners and modes of objects and directories live in their user metadata
(engine/objattrs.py, the convention of s3fs-fuse), which a listing does not carry. A
listing therefore GETs, in parallel, each object of at most LIKELY_LINK bytes (most
links: a link's body is its target path, which comes along), HEADs each larger object
(and GETs it too when that says it is a link), and HEADs each directory's marker (or
its folder object, see below), all in one round of LISTING_HEADS at a time: ``ls -l``,
``rsync``, ``diff -r`` and ``rm -rf`` stat every name, so a second round at the first
stat only added a wait per directory. A walk (a directory listed right after its
parent) has its next directories listed ahead (``_walk_ahead``).
A directory with more than DESCRIBED_AT_LISTING larger objects leaves them to their
first stat (``_described``), so that ``ls`` or ``find`` there does not wait for them all.
``ls -l`` of 1000 streams costs what it did, of 1000 objects one LIST and 1000 HEADs
(GETs for those of at most LIKELY_LINK bytes; see docs/mount.md).

This mount's own changes call ``invalidate`` at once; changes made elsewhere show up
within ``metadata_ttl``.

Directory markers are zero-byte objects ``dir/`` with Content-Type
``application/x-directory``, the convention of s3fs-fuse and the S3 consoles.

A directory's attributes live in its marker's metadata, or, on servers that keep none
there (SeaweedFS), in its folder object ``dir_$folder$`` (engine/objattrs.py): written by
``store_folder_attrs``, read instead of the marker when a listing or lookup sees one,
moved by a rename and removed by rmdir. A folder object is never shown as a name: the
engine's listing folds ``x_$folder$`` into the directory ``x``, or, alone, shows it as
the empty directory ``x`` (as s3fs-fuse does), and the mount refuses to create such names.

The objects written and read here (markers, links) carry the engine's SSE-C key, as its
streams do; a mount with a client-side key still keeps them as plain objects (a marker
holds nothing, a link's target is its name), see docs/encryption.md.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import posixpath
import stat
import threading
import time
from dataclasses import replace

import cachetools

from s3pipefs import errors
from s3pipefs.engine import Engine, Entry, objattrs
from s3pipefs.manifest import MANIFEST_NAME
from s3pipefs.s3 import ObjectInfo
from s3pipefs.fs import fserrors, names
from s3pipefs.fs.attrs_behind import AttrsBehind
from s3pipefs.fs.deletes_behind import DeletesBehind

log = logging.getLogger(__name__)

DIR_CONTENT_TYPE = "application/x-directory"
# Bounds the caches' memory: ~1 KB per Entry, so at most ~100 MB in the worst case.
MAX_ENTRIES = 100_000
# Listings are kept up to this many entries in all (a directory counts one more than it
# holds), so that a walk of a tree of a few thousand directories (rm -rf, cp -a) still
# finds its parents' listings when it comes back up to them; and per-directory notes of
# reads for this many directories.
MAX_LISTED = 100_000
MAX_LISTINGS = 4096
# rename(2) of a directory copies what it holds on the server, in parallel: up to this
# many objects; a larger one gives EXDEV and mv(1) copies it file by file.
MAX_DIR_RENAME = 10_000
MANIFEST_SUFFIX = "/" + MANIFEST_NAME
# The longest symlink target (PATH_MAX less its NUL): larger objects are never links.
LINK_MAX = 4095
# The small objects' bytes a mount's listings keep for reads within the TTL (see body()).
MAX_BODY_BYTES = 16 * 1024 * 1024
# Parallel HEADs of one listing (objects that may be links, directory markers).
LISTING_HEADS = 16
# A listed object this small is fetched whole rather than HEADed: most symlinks are (a
# link's body is its target), and ls -l reads every link.
LIKELY_LINK = 256
# Small objects' bodies fetched ahead once a directory's files are being read (body()).
BODIES_AHEAD = 32
# Small files read on this mount within this many seconds: listings fetch small objects
# whole instead of HEADing them (a walk that reads every file, diff -r or grep -r, then
# needs no second request for each).
READING = 2.0
# Directories listed ahead of a tree walk (listdir), and at most this many at once.
WALK_AHEAD = 4
# A walk asks for its next listing within this many seconds of the last one; a person
# who lists a directory, then one inside it, takes longer (and lists nothing ahead).
WALK_GAP = 1.0
# A listing describes (HEADs) its larger objects too, with the rest of its requests, unless
# it holds more of them than this: then each is described at its first stat (_described).
DESCRIBED_AT_LISTING = 1000
# Parallel copies and deletes of a directory's rename.
RENAME_WORKERS = 16


def split(path: str) -> tuple[str, str]:
    """'/a/b' -> ('/a', 'b'); '/a' -> ('/', 'a')."""
    parent, name = posixpath.split(path.rstrip("/") or "/")
    return parent or "/", name


class Namespace:
    def __init__(self, engine: Engine, bucket: str, prefix: str, ttl: float, clock=time.monotonic):
        self.engine = engine
        self.store = engine.store
        self._sse = engine.request.sse_key  # every object request of this mount carries it
        self.bucket = bucket
        self.prefix = prefix  # "" or ends with "/"
        self.ttl = ttl
        self._lock = threading.Lock()
        self._dir_renames = threading.Lock()
        self._entries: cachetools.TTLCache = cachetools.TTLCache(MAX_ENTRIES, ttl, timer=clock)
        self._listings: cachetools.TTLCache = cachetools.TTLCache(MAX_LISTED, ttl, timer=clock,
                                                                   getsizeof=lambda listing: len(listing) + 1)
        self._links: cachetools.TTLCache = cachetools.TTLCache(MAX_ENTRIES, ttl, timer=clock)
        # (path, ETag) -> the bytes of a small object its listing fetched whole.
        self._bodies: cachetools.TTLCache = cachetools.TTLCache(MAX_BODY_BYTES, ttl, timer=clock, getsizeof=len)
        self.mounted_at = time.time()
        # Objects' attributes not stored yet, which a rename carries and an unlink drops
        # (fs/attrs_behind.py).
        self.attrs_behind = AttrsBehind(
            lambda key, **attrs: engine.set_object_attrs(bucket, key, directory=False, **attrs))
        # Directories' folder objects (where markers keep no metadata), put a moment after
        # an attribute changes, all of a burst in one PUT: cp -a, rsync and tar set three
        # on every directory. What is held is what changed; the PUT merges it into the
        # metadata the folder object had when this mount last put or read it (_folder_meta),
        # never into a cached entry, which a listing may have refreshed from S3 while a
        # change was held.
        self.folder_attrs = AttrsBehind(self._put_folder_attrs)
        self._folder_meta: cachetools.LRUCache = cachetools.LRUCache(MAX_ENTRIES)
        # HEADs of listed objects being described (see _described): path -> Future.
        self._heads = cf.ThreadPoolExecutor(LISTING_HEADS, thread_name_prefix="s3pipefs-head")
        self._describing: dict[str, cf.Future] = {}
        # Listings being made (by a readdir or ahead of a walk): path -> Future, so that a
        # directory is listed once however many ask at a time.
        self._listing: dict[str, cf.Future] = {}
        self._started: set[str] = set()  # of those, the ones someone is making now
        # Directory path -> when (a tick) this mount last changed what it holds: a listing
        # that began before is returned to its caller but not cached (it may miss that).
        self._tick = 0
        self._changed: cachetools.LRUCache = cachetools.LRUCache(MAX_ENTRIES)
        self._ahead = cf.ThreadPoolExecutor(WALK_AHEAD, thread_name_prefix="s3pipefs-ahead")
        self._clock = clock
        self._last_listdir = float("-inf")  # when a readdir was last asked for or answered
        self._made_ahead: set[str] = set()  # listed ahead, not asked for yet
        self._small_read_at = float("-inf")  # when a small file was last read
        # Bodies being fetched ahead of reads (body()): path -> Future; per directory, the
        # position of the file read last, and the order of its listing (_Order).
        self._fetching: dict[str, cf.Future] = {}
        self._last_read: cachetools.TTLCache = cachetools.TTLCache(MAX_LISTINGS, ttl, timer=clock)
        self._orders: cachetools.TTLCache = cachetools.TTLCache(MAX_LISTED, ttl, timer=clock, getsizeof=len)
        # Objects whose unlink returned and whose DELETE is on its way (fs/deletes_behind.py).
        # Also a removed directory's marker ("d/") and folder object (rmdir).
        self.deletes = DeletesBehind(lambda key: self.store.delete(bucket, key),
                                     failed=lambda key: self.invalidate(self.path_of(key.rstrip("/"))))

    # -- names -------------------------------------------------------------------------
    def key(self, path: str) -> str:
        """The S3 key of a path (no trailing slash); '' is the mount's root prefix itself."""
        rel = path.strip("/")
        if not rel:
            return self.prefix.rstrip("/")
        return self.prefix + rel

    def path_of(self, key: str) -> str:
        """The mount's path of a key under its prefix."""
        return "/" + key[len(self.prefix):]

    def where(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.key(path)}"

    def root(self) -> Entry:
        return Entry("dir", self.bucket, self.prefix.rstrip("/"), mtime=self.mounted_at)

    # -- lookups -----------------------------------------------------------------------
    def lookup(self, path: str, fresh: bool = False) -> Entry | None:
        """The entry at ``path`` or None. ``fresh`` skips the caches (used before writing)."""
        if path == "/":
            return self.root()
        if not fresh:
            found = self._cached(path)
            if found is not _UNLISTED:
                return self._described(path, found)
        key = self.key(path)
        if self.deletes.pending(key) or self._dir_going(key):
            return None  # unlinked or removed; its DELETE is on its way
        entry = self.engine.stat(self.bucket, self.key(path), probe=True)
        if entry is not None and entry.kind == "dir":
            entry = self._with_marker(entry)
        elif entry is not None and entry.kind == "object" and objattrs.folder_of(entry.key):
            entry = None  # a folder object: part of a directory, never a file (see listdir)
        with self._lock:
            self._entries[path] = entry
        return entry

    def _cached(self, path: str):
        """What the caches hold for ``path`` as it is (no request; an object listed
        without its metadata stays so): an Entry, None (known not to exist), or _UNLISTED
        when no cache knows."""
        parent, name = split(path)
        with self._lock:
            if path in self._entries:
                return self._entries[path]
            listing = self._listings.get(parent)
            return listing.get(name) if listing is not None else _UNLISTED

    def _described(self, path: str, entry: Entry | None) -> Entry | None:
        """A listed entry with its metadata: an object a listing left undescribed
        (metadata None: one of a crowded directory's larger objects, or one whose HEAD
        failed there) is HEADed at its first lookup, once per TTL.

        The first such lookup in a listing predicts the rest (``ls -l``, ``rsync``,
        ``diff -r`` stat every name they list), so it HEADs the listing's other
        undescribed objects too, LISTING_HEADS at a time, and waits only for its own.
        A crowded listing nobody stats (``find -name``) costs no HEAD."""
        if entry is None or entry.metadata is not None:
            return entry
        parent, name = split(path)
        with self._lock:
            listing = self._listings.get(parent) or {}
            now = self._entries[path] if path in self._entries else listing.get(name, entry)
            if now is entry:
                todo = [(posixpath.join(parent, n), e) for n, e in listing.items()
                        if e.kind == "object" and e.metadata is None]
                mine = self._describing.get(path)
                if mine is None:
                    mine = self._describing[path] = self._heads.submit(self._describe, path, entry)
                for p, e in todo:
                    if p not in self._describing:
                        self._describing[p] = self._heads.submit(self._describe, p, e)
        if now is not entry:  # described (or changed) since the caller looked
            return self._described(path, now)
        return mine.result()

    def _describe(self, path: str, entry: Entry) -> Entry | None:
        """HEAD a listed object, and put what it says where ``entry`` was cached, unless a
        change of this mount replaced it meanwhile."""
        try:
            info = self.store.head(self.bucket, entry.key, sse_key=self._sse)
            described = self.engine.object_entry(self.bucket, entry.key, info) if info is not None else None
            parent, name = split(path)
            with self._lock:
                listing = self._listings.get(parent)
                if listing is not None and listing.get(name) is entry:
                    if described is None:
                        del listing[name]
                    else:
                        listing[name] = described
                if self._entries.get(path, entry) is entry:
                    self._entries[path] = described
            return described
        finally:
            with self._lock:
                self._describing.pop(path, None)

    def _with_marker(self, entry: Entry) -> Entry:
        """A directory with its attributes (owners, mode, time): its folder object's when
        it has one, else (or when that holds none) its marker's. A directory whose mtime
        was never set shows the time its marker or folder object was written: the same on
        every mount (rsync compares it with its source's, and sets it only if they differ)."""
        if not entry.key:
            return entry
        keys = [objattrs.folder_key(entry.key), entry.key + "/"] if entry.folder_object else [entry.key + "/"]
        written = 0.0
        for key in keys:
            try:
                info = self.store.head(self.bucket, key, sse_key=self._sse)
            except (errors.KeyNeeded, errors.WrongKey):
                continue  # under another SSE-C key: the directory, without these attributes
            if info is None:
                continue
            written = written or info.last_modified
            if info.metadata:
                if key != entry.key + "/":
                    with self._lock:
                        self._folder_meta[key] = info.metadata  # what a held change merges into
                return replace(entry, metadata=info.metadata, mtime=entry.mtime or written)
        return replace(entry, mtime=entry.mtime or written)

    def _with_metadata(self, path: str, entry: Entry) -> Entry | None:
        """An entry of a listing with its metadata (see the module docstring); None: the
        object went away meanwhile. An object of at most LIKELY_LINK bytes is fetched
        whole, which costs what a HEAD does and brings a link's target along (ls -l reads
        every one); a larger one is HEADed, and fetched too if that says it is a link.
        While small files are being read on this mount (READING), every small object is
        fetched whole: its bytes are what the walk reads next."""
        if entry.kind == "dir":
            return self._with_marker(entry)
        if 0 < entry.size <= LIKELY_LINK or (_small(entry) and self._clock() - self._small_read_at <= READING):
            return self._fetch(path, entry, entry_too=True)
        try:
            info = self.store.head(self.bucket, entry.key, sse_key=self._sse)
        except (errors.KeyNeeded, errors.WrongKey):
            return replace(entry, metadata=None)  # its first stat says why (_described)
        found = self.engine.object_entry(self.bucket, entry.key, info) if info is not None else None
        if found is not None and found.is_link and found.size <= LINK_MAX:
            return self._fetch(path, found, entry_too=True)
        return found

    def _fetch(self, path: str, entry: Entry, entry_too: bool = False) -> Entry | None:
        """GET a small object whole: a link's target, or bytes for reads within the TTL
        (body()). Returns the entry as the GET describes it (None: gone meanwhile), or,
        unless ``entry_too``, ``entry`` unchanged."""
        try:
            body, info = self.store.get(self.bucket, entry.key, sse_key=self._sse)
        except errors.NotFound:
            return None
        except (errors.KeyNeeded, errors.WrongKey):
            return entry  # under another SSE-C key: listed as the listing has it
        found = self.engine.object_entry(self.bucket, entry.key, info)
        with self._lock:
            if found.is_link and len(body) <= LINK_MAX:
                self._links[(path, found.etag)] = _target(body)
            elif len(body) == found.size:
                self._bodies[(path, found.etag)] = body
        return found if entry_too else entry

    def body(self, path: str, entry: Entry) -> bytes | None:
        """The bytes of the object ``entry`` when they were fetched, so that reading it
        costs no GET within the TTL; None otherwise (the reader GETs what it reads).

        A small file read right after the file before it in its directory's listing
        predicts the rest (diff -r, grep -r, cp -r and tar read every file of a directory
        in turn): it is fetched whole, and with it the next BODIES_AHEAD small files of
        the listing, in parallel, each kept for its own read. Files read alone or out of
        order (cat, a lookup here and there) fetch nothing ahead."""
        if entry.kind != "object":
            return None
        parent, name = split(path)
        with self._lock:
            if _small(entry):
                self._small_read_at = self._clock()
            body = self._bodies.get((path, entry.etag))
            order = self._orders.get(parent) or _NO_ORDER
            at = order.file_at.get(name)
            before = self._last_read.get(parent)
            if at is not None:
                self._last_read[parent] = at
            if body is not None or not _small(entry):
                return body
            mine = self._fetching.get(path)
            if mine is None:
                listing = self._listings.get(parent)
                if at is None or before != at - 1 or listing is None or listing.get(name) is None:
                    return None
                mine = self._fetching[path] = self._heads.submit(self._fetch_ahead, path, entry)
                ahead = 0
                for other in order.files[at + 1:at + 1 + 4 * BODIES_AHEAD]:
                    e, p = listing.get(other), posixpath.join(parent, other)
                    if ahead == BODIES_AHEAD:
                        break
                    if (e is not None and e.kind == "object" and _small(e) and e.metadata is not None
                            and not e.is_link and p not in self._fetching and (p, e.etag) not in self._bodies):
                        self._fetching[p] = self._heads.submit(self._fetch_ahead, p, e)
                        ahead += 1
        mine.result()
        with self._lock:
            return self._bodies.get((path, entry.etag))

    def _fetch_ahead(self, path: str, entry: Entry) -> None:
        try:
            self._fetch(path, entry)
        except errors.S3PipeError as e:  # the reader's own GET will say what is wrong
            log.debug("%s: not fetched ahead: %s", self.where(path), e)
        finally:
            with self._lock:
                self._fetching.pop(path, None)

    def listdir(self, path: str) -> dict[str, Entry]:
        """{name: Entry} one level under the directory ``path``: listed once however many
        ask at a time, and then, when its parent was listed too and the last readdir was
        answered at most WALK_GAP ago (a walk: ls -R, find, du, rm -rf, diff -r, rsync),
        its first subdirectories and the parent's next ones are listed ahead
        (_walk_ahead), WALK_AHEAD at a time, while the walker works here."""
        with self._lock:
            now = self._clock()
            walking, self._last_listdir = now - self._last_listdir <= WALK_GAP, now
            listing = self._listings.get(path)
            if listing is not None:
                # A listing made ahead of this walk: the walk goes on, so does its lead.
                walking = walking and path in self._made_ahead
                self._made_ahead.discard(path)
            else:
                making = self._listing.get(path)
                if making is None:
                    making = self._listing[path] = cf.Future()
                mine = path not in self._started  # not made yet (or listed ahead, not begun): make it here
                self._started.add(path)
        if listing is None:
            listing = self._make(path, making) if mine else making.result()
        if walking:
            self._walk_ahead(path, listing)
        with self._lock:
            self._last_listdir = self._clock()
        return listing

    def _make(self, path: str, making: cf.Future) -> dict[str, Entry]:
        try:
            listing = self._list(path)
        except BaseException as e:
            making.set_exception(e)
            raise
        else:
            making.set_result(listing)
            return listing
        finally:
            with self._lock:
                self._listing.pop(path, None)
                self._started.discard(path)

    def _walk_ahead(self, path: str, listing: dict[str, Entry]) -> None:
        """List ahead of a walk what it will list next: depth first, this directory's
        first subdirectories, then those after it in its parent. Not for a directory
        whose parent is not listed (``ls dir``, or the walk's start)."""
        if path == "/":
            return
        parent, name = split(path)
        with self._lock:
            up, here = self._orders.get(parent), self._orders.get(path)
            at = up.dir_at.get(name) if up is not None else None
            if at is None:
                return
            todo = [posixpath.join(path, n) for n in (here.dirs[:WALK_AHEAD] if here is not None else ())]
            todo += [posixpath.join(parent, n) for n in up.dirs[at + 1:at + 1 + WALK_AHEAD]]
            todo = [p for p in todo if p not in self._listings and p not in self._listing]
            for p in todo:
                self._listing[p] = cf.Future()  # taken now: a readdir meanwhile waits for it
        for p in todo:
            self._ahead.submit(self._list_ahead, p)

    def _list_ahead(self, path: str) -> None:
        with self._lock:
            making = self._listing.get(path)
            if making is None or path in self._started:
                return  # a readdir got there first
            self._started.add(path)
        try:
            self._make(path, making)
        except Exception as e:  # noqa: BLE001 - the readdir waiting for it, if any, says why
            log.debug("%s: not listed ahead: %s", self.where(path), e)
            return
        with self._lock:
            if len(self._made_ahead) >= MAX_LISTINGS:
                self._made_ahead.clear()  # a walk that stopped: forget where it was going
            self._made_ahead.add(path)

    def _list(self, path: str) -> dict[str, Entry]:
        with self._lock:
            began = self._tick
        if path != "/":
            entry = self.lookup(path)
            if entry is None:
                raise errors.NotFound(f"{self.where(path)}: no such directory")
            if entry.kind != "dir":
                raise fserrors.NotADirectory(f"{self.where(path)}: not a directory")
        base = self.key(path)
        prefix = base + "/" if base else ""
        listing: dict[str, Entry] = {}
        for e in self.engine.listdir(self.bucket, prefix):
            name = e.key[len(prefix):].strip("/") if e.key.startswith(prefix) else ""
            if not name or "/" in name or name in (".", ".."):
                continue  # the directory's own marker, or a key no file name can express
            if (e.kind == "object" and self.deletes.pending(e.key)) or (e.kind == "dir" and self._dir_going(e.key)):
                continue  # unlinked or removed; its DELETE is on its way
            old = listing.get(name)
            # An object "x" next to a prefix "x/": the stream or directory wins (it has
            # content below it); the object stays reachable through the S3 tools.
            if old is None or _rank(e) < _rank(old):
                listing[name] = e
        # Directories and objects, described below; in a crowded directory, only the
        # objects small enough to be links (the rest at their first stat: _described).
        crowded = sum(e.kind == "object" and not _small(e) for e in listing.values()) > DESCRIBED_AT_LISTING
        wanted = []
        for name, e in listing.items():
            if e.kind == "dir" or (e.kind == "object" and (_small(e) or not crowded)):
                wanted.append(name)
            elif e.kind == "object":
                listing[name] = replace(e, metadata=None)  # not known yet: see _described
        found = self._heads.map(lambda n: self._with_metadata(posixpath.join(path, n), listing[n]), wanted)
        for name, e in zip(wanted, found):
            if e is None:
                del listing[name]
            else:
                listing[name] = e
        with self._lock:
            if self._changed.get(path, 0) <= began:
                if len(listing) < MAX_LISTED:  # (one larger than the cache is not kept)
                    self._listings[path] = listing
                    self._orders[path] = _Order.of(listing)
        return listing

    def _changing(self, *dirs: str) -> None:
        """This mount changes what ``dirs`` hold; call with the lock held."""
        self._tick += 1
        for d in dirs:
            self._changed[d] = self._tick

    def invalidate(self, path: str) -> None:
        """Forget ``path``, the listing it appears in, and its own listing."""
        parent, _ = split(path)
        with self._lock:
            self._changing(parent, path)
            self._entries.pop(path, None)
            self._listings.pop(parent, None)
            self._listings.pop(path, None)

    def remember(self, path: str, entry: Entry | None) -> None:
        """Record what this mount just learned (a reader's size at open, a commit, a
        removal: None), in the listing of its directory too, so the next lookup there
        (tar x and rsync look up every name before creating it) costs no request."""
        parent, name = split(path)
        with self._lock:
            self._changing(parent)
            self._entries[path] = entry
            listing = self._listings.get(parent)
            if listing is not None:
                if entry is None:
                    listing.pop(name, None)
                else:
                    listing[name] = entry

    def update(self, path: str, entry: Entry) -> None:
        """A known file changed only its attributes: replace it where it is cached, and
        keep the listing (rsync sets times on every file it writes; dropping the listing
        each time would cost a lookup request per file)."""
        parent, name = split(path)
        with self._lock:
            self._changing(parent)
            self._entries[path] = entry
            listing = self._listings.get(parent)
            if listing is not None and name in listing:
                listing[name] = entry

    def store_folder_attrs(self, entry: Entry, **attrs) -> Entry:
        """Store a directory's attributes in its folder object, merged into those ``entry``
        shows; the directory as it then is. The PUT goes out a moment later with any
        changes that follow (folder_attrs): a rename or rmdir of the directory stores or
        drops it first."""
        key = objattrs.folder_key(entry.key)
        with self._lock:
            self._folder_meta.setdefault(key, dict(entry.metadata or {}))
        if ("mtime_ns" not in attrs and "mtime" not in (entry.metadata or {}) and entry.mtime
                and "mtime_ns" not in self.folder_attrs.held(key)):
            # The time every mount shows now (its marker's) goes along: the folder object's
            # own would be later, and rsync leaves alone a time it found equal.
            attrs = {"mtime_ns": int(entry.mtime) * 1_000_000_000, **attrs}
        self.folder_attrs.hold(key, **attrs)
        meta = objattrs.updated(entry.metadata or {}, stat.S_IFDIR, **{**self.folder_attrs.held(key), **attrs})
        return replace(entry, metadata=meta, folder_object=True)

    def _put_folder_attrs(self, key: str, **attrs) -> None:
        """The held change of a directory's attributes, merged into its folder object (a
        HEAD first only when this mount has never seen it)."""
        with self._lock:
            base = self._folder_meta.get(key)
        if base is None:
            info = self.store.head(self.bucket, key, sse_key=self._sse)
            base = info.metadata if info is not None else {}
        meta = objattrs.updated(base, stat.S_IFDIR, **attrs)
        self.deletes.wait(key)  # a removed directory's folder object, if any, goes first
        self.store.put(self.bucket, key, b"", metadata=meta, sse_key=self._sse, quick=True)
        with self._lock:
            self._folder_meta[key] = meta

    # -- directory changes ---------------------------------------------------------------
    def mkdir(self, path: str) -> None:
        # mkdir follows a negative lookup the kernel just made, so the cache will do (as
        # for create in fs/filesystem.py): a directory made meanwhile elsewhere only
        # gets a second marker, the same empty object.
        if self.lookup(path) is not None:
            raise errors.Exists(f"{self.where(path)}: already exists")
        self._dir_gone(self.key(path))  # one removed a moment ago: its DELETEs land first
        self.store.put(self.bucket, self.key(path) + "/", b"", content_type=DIR_CONTENT_TYPE, sse_key=self._sse,
                       quick=True)
        # Shown as other mounts show it: the marker's time, which S3 keeps in whole seconds.
        self.remember(path, Entry("dir", self.bucket, self.key(path), mtime=float(int(time.time()))))
        with self._lock:
            self._listings[path] = {}  # new, so empty: lookups of names in it cost nothing

    def symlink(self, path: str, target: str, uid: int, gid: int) -> None:
        """A symlink object in the convention of s3fs-fuse: the target is its body."""
        if self.lookup(path, fresh=True) is not None:
            raise errors.Exists(f"{self.where(path)}: already exists")
        body = target.encode("utf-8", "surrogateescape")
        self.deletes.wait(self.key(path))  # an unlinked object of that name must be gone first
        try:
            self.store.put(self.bucket, self.key(path), body, metadata=objattrs.link_metadata(uid, gid),
                           content_type=objattrs.LINK_CONTENT_TYPE, if_none_match=True, sse_key=self._sse,
                           quick=True)
        except errors.Busy:
            raise errors.Exists(f"{self.where(path)}: created meanwhile") from None
        finally:
            self.invalidate(path)

    def readlink(self, path: str) -> str:
        entry = self.lookup(path)
        if entry is None:
            raise errors.NotFound(f"{self.where(path)}: no such file")
        if not entry.is_link:
            raise fserrors.NotALink(f"{self.where(path)}: not a symbolic link")
        with self._lock:
            target = self._links.get((path, entry.etag))
        if target is None:
            body, _ = self.store.get(self.bucket, self.key(path), 0, LINK_MAX + 1, sse_key=self._sse)
            if len(body) > LINK_MAX:
                raise fserrors.NameTooLong(f"{self.where(path)}: a link target over {LINK_MAX} bytes")
            target = _target(body)
            with self._lock:
                self._links[(path, entry.etag)] = target
        return target

    def rmdir(self, path: str) -> None:
        if path == "/":
            raise errors.Busy("cannot remove the root of the mount")
        # A directory this mount listed within the TTL (rm -rf read it) is not looked up
        # again: the listing of what it holds, below, is what decides.
        entry = self._cached(path)
        if entry is _UNLISTED or entry is None or entry.kind != "dir":
            entry = self.lookup(path, fresh=True)
        if entry is None:
            raise errors.NotFound(f"{self.where(path)}: no such directory")
        if entry.kind != "dir":
            raise fserrors.NotADirectory(f"{self.where(path)}: not a directory")
        key, fkey = self.key(path), objattrs.folder_key(self.key(path))
        self.deletes.wait_under(key + "/")  # rm -rf: the files' DELETEs land first
        if self._has_content(key):
            raise errors.NotEmpty(f"{self.where(path)}: directory not empty")
        with self._lock:
            held = self._listings.get(path)
        if held is not None and not held:
            # Listed within the TTL and emptied by this mount (rm -rf): what it held went
            # through unlink and rmdir here, each dropping its own folders; the marker only,
            # in the background as an unlinked file's object (fs/deletes_behind.py).
            delete = self.deletes.start
            delete(key + "/")
        else:
            delete = functools.partial(self.store.delete, self.bucket)
            self._drop_folder(key)  # the marker, and any emptied folders below it
        # Attributes not put yet never will be; a folder object already put goes.
        if self.folder_attrs.take(fkey) or entry.folder_object:
            delete(fkey)
        with self._lock:
            self._folder_meta.pop(fkey, None)
        # Gone from its parent's listing, which stays (rm -rf goes on in it).
        self.remember(path, None)
        with self._lock:
            self._listings.pop(path, None)

    def _dir_going(self, key: str) -> bool:
        """Is the directory ``key`` removed, its marker or folder object's DELETE on its way?"""
        key = key.rstrip("/")
        return self.deletes.pending(key + "/") or self.deletes.pending(objattrs.folder_key(key))

    def _dir_gone(self, key: str) -> None:
        """Wait until the DELETEs of a removed directory ``key`` (if any) have landed:
        before its name is made again."""
        self.deletes.wait(key + "/")
        self.deletes.wait(objattrs.folder_key(key))

    def _has_content(self, key: str) -> bool:
        """Any object under ``key/`` besides its marker? (Objects only: folders a server
        keeps after their last object went are not content.)"""
        marker = key + "/"
        return any(o.key != marker for o in _take(self.store.list(self.bucket, marker, quick=True), 2))

    def unlink(self, path: str) -> None:
        """Remove a file. A plain object known from a listing within the TTL (rm -rf
        reads the directory first) costs one DELETE; a stream is looked up afresh, since
        a writer elsewhere may hold it, and goes manifest first."""
        entry = self._cached(path)
        if entry is None or entry is _UNLISTED or entry.kind != "object":
            entry = self.lookup(path, fresh=True)
        if entry is None:
            raise errors.NotFound(f"{self.where(path)}: no such file")
        if entry.kind == "dir":
            raise fserrors.IsADirectory(f"{self.where(path)}: is a directory")
        if entry.kind == "stream":
            if entry.writer_alive:
                raise errors.Busy(f"{self.where(path)}: a writer is still writing it ({entry.manifest.writer_id})")
            names.check_removable(self.key(path), self.where(path))
        self.attrs_behind.take(self.key(path))  # going: nothing to store
        if entry.kind == "object":
            self.deletes.start(self.key(path))  # returns at once (fs/deletes_behind.py)
            self.remember(path, None)
            return
        try:
            self.engine.delete(self.bucket, self.key(path), kind=entry.kind)
            if entry.kind == "stream":
                self._drop_folder(self.key(path))
        except BaseException:
            self.invalidate(path)
            raise
        self.remember(path, None)

    def rename(self, old: str, new: str) -> None:
        """Server-side copy, then delete: streams, objects and empty directories.

        The destination is replaced whole (the engine's copy takes its lease and writes
        the manifest last), so rsync's and editors' write-temp-then-rename works. A
        directory with contents gives EXDEV, on which mv(1) copies and deletes itself.
        """
        if old == new:
            return
        # Directories' attributes held back are put first: the lookups below then find them.
        for p in (old, new):
            self.folder_attrs.store_now(objattrs.folder_key(self.key(p)))
        # A plain object this mount knows within the TTL (rsync's temporary file, just
        # written) needs no lookup again; a stream or directory does (a writer elsewhere).
        src = self.lookup(old)
        if src is None or src.kind != "object" or not src.etag:
            src = self.lookup(old, fresh=True)
        if src is None:
            raise errors.NotFound(f"{self.where(old)}: no such file or directory")
        self.deletes.wait(self.key(new))  # an unlinked object there must be gone before the copy
        self.attrs_behind.take(self.key(new))  # held for what is about to be replaced
        # What the new name holds, as this mount knows it within the TTL (rsync renames
        # each file to a name the listing it just read says is free).
        dst = self.lookup(new)
        try:
            if src.kind == "dir":
                self._rename_dir(old, new, src, dst)
            else:
                self._rename_file(old, new, src, dst)
        except BaseException:
            self.invalidate(old)
            self.invalidate(new)
            raise
        if src.kind == "object":
            # Known without asking, and the listings stay: rsync renames every file it writes.
            self.remember(old, None)
            self.remember(new, replace(src, key=self.key(new)))
        else:
            self.invalidate(old)
            self.invalidate(new)

    def _rename_file(self, old: str, new: str, src: Entry, dst: Entry | None) -> None:
        if dst is not None and dst.kind == "dir":
            raise fserrors.IsADirectory(f"{self.where(new)}: is a directory")
        if new.startswith(old.rstrip("/") + "/"):
            raise errors.UsageError(f"{self.where(new)}: cannot move a file into itself")
        skey, dkey = self.key(old), self.key(new)
        if src.kind == "stream":
            names.check_removable(skey, self.where(old))  # before the copy: nothing to undo
        held = self.attrs_behind.take(skey) if src.kind == "object" else {}
        if held:
            # Attributes set since the object was stored go with the copy (rsync's temporary file).
            objattrs.copy_with_attrs(self.store, self.bucket, skey, dkey, sse_key=self._sse, **held)
        else:
            info = (ObjectInfo(skey, src.size, src.etag, src.mtime, src.metadata)
                    if src.kind == "object" and src.etag else None)
            self.engine.copy(self.bucket, skey, self.bucket, dkey, kind=src.kind, info=info)  # src just looked up
        if dst is not None and dst.kind != src.kind:
            # The old destination was the other kind (object "x" vs stream "x/"): remove
            # it, or it would shadow the new one or linger beside it.
            self.engine.delete(self.bucket, dkey, kind=dst.kind)
            if dst.kind == "stream":
                self._drop_folder(dkey)
        self.engine.delete(self.bucket, skey, kind=src.kind)
        if src.kind == "stream":
            self._drop_folder(skey)

    def _drop_folder(self, key: str, depth: int = 3) -> None:
        """Servers with real folders (SeaweedFS) keep a deleted stream's prefix, and the
        writer's emptied ``.next-*/`` staging folder inside it, as empty directories; the
        stream would reappear as a stray directory. Deleting the 'name/' keys (innermost
        first) removes them there and is a no-op on AWS. Call only once the stream's
        objects are gone."""
        try:
            if depth > 0:
                for sub in self.store.list(self.bucket, key + "/", delimiter="/", quick=True):
                    if isinstance(sub, str):
                        self._drop_folder(sub.rstrip("/"), depth - 1)
            self.store.delete(self.bucket, key + "/")
        except errors.S3PipeError as e:
            log.debug("%s/: %s", key, e)

    def _rename_dir(self, old: str, new: str, src: Entry, dst: Entry | None) -> None:
        """An empty directory, or a small one (borg's lock is a directory renamed into
        place): copy what it holds, then delete it. The new name is claimed first, under
        a lock of this mount and with a conditional write of its marker, so of two renames
        to one name exactly one wins: always on one mount, across mounts as far as the
        server's If-None-Match is atomic (AWS S3's is; SeaweedFS lets both of two
        simultaneous writes through now and then). A failure part way leaves the source
        whole. Larger directories give EXDEV, on which mv(1) copies and deletes itself.
        The directory keeps its attributes (its marker's metadata, or its folder object,
        which moves with it); directories inside it keep those in folder objects (objects
        like any other), not those in their markers."""
        if dst is not None and dst.kind != "dir":
            raise fserrors.NotADirectory(f"{self.where(new)}: not a directory")
        if new.startswith(old.rstrip("/") + "/"):
            raise errors.UsageError(f"{self.where(new)}: cannot move a directory into itself")
        okey, nkey = self.key(old), self.key(new)
        self.deletes.wait_under(okey + "/")
        self.deletes.wait_under(nkey + "/")
        self._dir_gone(nkey)
        self.attrs_behind.store_under(okey + "/")  # stored before the copy
        held = [o for o in _take(self.store.list(self.bucket, okey + "/"), MAX_DIR_RENAME + 2)
                if not isinstance(o, str) and o.key != okey + "/"]
        if len(held) > MAX_DIR_RENAME:
            raise fserrors.CrossDevice(f"{self.where(old)}: renaming a directory of more than {MAX_DIR_RENAME} "
                                       "objects is not supported (mv falls back to copy and delete)")
        marker = {"content_type": DIR_CONTENT_TYPE, "sse_key": self._sse}
        top = {**marker, "metadata": None if src.folder_object else src.metadata or None}
        if held:
            with self._dir_renames:  # one claim at a time on this mount
                # Only to a new name: an empty directory there may be another rename's claim.
                if dst is not None or self.lookup(new, fresh=True) is not None:
                    raise errors.Exists(f"{self.where(new)}: exists (a directory with contents moves only "
                                        "to a new name)")
                try:
                    self.store.put(self.bucket, nkey + "/", b"", if_none_match=True, quick=True, **top)
                except errors.Busy:
                    raise errors.Exists(f"{self.where(new)}: created meanwhile (by another rename)") from None
                self.invalidate(new)
        else:
            if dst is not None and self._has_content(nkey):
                raise errors.NotEmpty(f"{self.where(new)}: directory not empty")
            self.store.put(self.bucket, nkey + "/", b"", quick=True, **top)
        with self._lock:
            self._folder_meta.pop(objattrs.folder_key(nkey), None)
            self._folder_meta.pop(objattrs.folder_key(okey), None)
        if src.folder_object:
            self.store.put(self.bucket, objattrs.folder_key(nkey), b"", metadata=src.metadata, sse_key=self._sse,
                           quick=True)
        elif dst is not None and dst.folder_object:
            self.store.delete(self.bucket, objattrs.folder_key(nkey))  # the replaced directory's attributes
        streams = sorted({o.key[:-len(MANIFEST_SUFFIX)] for o in held if o.key.endswith(MANIFEST_SUFFIX)})
        in_stream = tuple(k + "/" for k in streams)
        objects = [o.key for o in held if not o.key.startswith(in_stream)]
        for k in streams:
            names.check_removable(k, f"s3://{self.bucket}/{k}")

        def copy(k: str) -> None:
            to = nkey + k[len(okey):]
            if k.endswith("/"):
                self.store.put(self.bucket, to, b"", quick=True, **marker)
            else:
                self.engine.copy(self.bucket, k, self.bucket, to, kind="stream" if k in streams else "object")

        # Copies in parallel, all of them done before anything is deleted (a failure
        # leaves the source whole); then the deletes, objects in one batch.
        with cf.ThreadPoolExecutor(min(RENAME_WORKERS, len(streams) + len(objects) or 1)) as pool:
            list(pool.map(copy, [*streams, *objects]))
            list(pool.map(lambda k: self.engine.delete(self.bucket, k, kind="stream"), streams))
        plain = [k for k in objects if not k.endswith("/")]
        if plain:
            self.store.delete_many(self.bucket, plain)
        for k in sorted((k for k in [*streams, *objects]), key=len, reverse=True):
            self._drop_folder(k.rstrip("/"))
        self._drop_folder(okey)
        if src.folder_object:
            self.store.delete(self.bucket, objattrs.folder_key(okey))


_UNLISTED = object()  # a name the listing cache cannot answer for


class _Order:
    """A listing's files and directories apart, each in key order (as LIST gave them), and
    the position of each: what the walk's listings ahead and read-ahead go by."""

    def __init__(self, files: list[str], dirs: list[str]):
        self.files, self.dirs = files, dirs
        self.file_at = {n: i for i, n in enumerate(files)}
        self.dir_at = {n: i for i, n in enumerate(dirs)}

    def __len__(self) -> int:  # what it weighs in the cache, as a listing does
        return len(self.files) + len(self.dirs) + 1

    @classmethod
    def of(cls, listing: dict[str, Entry]) -> "_Order":
        return cls([n for n, e in listing.items() if e.kind != "dir"],
                   [n for n, e in listing.items() if e.kind == "dir"])


_NO_ORDER = _Order([], [])


def _target(body: bytes) -> str:
    """A link's body as the path mfusepy hands back to the kernel (bytes kept exactly)."""
    return body.decode("utf-8", "surrogateescape")


def _small(e: Entry) -> bool:
    """Small enough to be a symlink: a listing fetches it whole."""
    return 0 < e.size <= LINK_MAX


def _rank(e: Entry) -> int:
    return {"stream": 0, "dir": 1}.get(e.kind, 2)


def _take(it, n: int):
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x
