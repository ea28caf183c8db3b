"""What a URL names for ls, rm, du and cp: one entry, a recursive walk, or wildcard matches.

Streams are one entry each everywhere here: a prefix holding a ``.manifest`` is listed as
its stream (size and state from the manifest, which is read), never as its segments. A
manifest under an SSE-C key not given is listed as a stream marked locked (Engine.locked_entry).

* ``walk``: every stream and object under a prefix, through the flat listing sync uses
  (engine/sync/listings.py ``list_s3``: large subtrees listed side by side, keys grouped into
  streams), then the manifests of the streams kept, read in parallel.
* Wildcards, as s5cmd has them: ``*`` is any run of characters and ``?`` one, both
  crossing ``/``; nothing else is special. The longest literal prefix (up to the first
  wildcard) is listed and whole keys are matched here, so ``s3://b/logs/2026-*`` costs a
  listing of ``logs/2026-``, not of the bucket.
* ``resolve``: the entries a URL stands for: a wildcard's matches; with ``recursive`` a
  prefix's walk; else the one stream or object (a prefix without ``recursive`` is the
  caller's business: ls lists one level, rm refuses).

A prefix that lies inside a stream (``s3://b/stream/00*``) holds no entries: its segments
are not files. Checking that costs one HEAD per directory level of the literal prefix.

This belongs next to the engine's listing (engine/listing.py, with ``Engine.listdir``) once
the engine grows a recursive, stream-aware list; it lives with the commands until then.
"""
from __future__ import annotations

import concurrent.futures as cf
import re
from dataclasses import dataclass, field

from s3pipefs import errors
from s3pipefs.s3url import S3Url

WILDCARDS = "*?"


def has_wildcard(key: str) -> bool:
    return any(c in key for c in WILDCARDS)


def literal_prefix(key: str) -> str:
    """The key up to its first wildcard."""
    return re.split(r"[*?]", key, maxsplit=1)[0]


def directory_of(key: str) -> str:
    """The part up to and including the last '/' ("" for none)."""
    return key[:key.rfind("/") + 1]


def matcher(pattern: str):
    """A test of a whole key against ``pattern`` (``*``: any run, ``?``: one character)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL).fullmatch


@dataclass
class Found:
    entries: list = field(default_factory=list)  # engine Entries (streams, objects), by key
    # Directory markers ("dir/") and folder objects ("dir_$folder$"): no entries, but
    # what rm removes with them.
    markers: list[str] = field(default_factory=list)


def walk(eng, bucket: str, prefix: str, *, keep=lambda key: True, workers: int = 16, request=None) -> Found:
    """Every stream and object under ``prefix`` (any string) whose key ``keep`` accepts.
    ``request``: the RequestOptions its manifests are read with (None: the engine's)."""
    from s3pipefs.engine import manifests
    from s3pipefs.engine.core import Entry
    from s3pipefs.engine.sync import S3Loc
    from s3pipefs.engine.sync.listings import list_s3
    from s3pipefs.engine.sync.locations import directory_object

    found = Found()
    sse_key = (request or eng.request).sse_key
    if _inside_stream(eng.store, bucket, directory_of(prefix), sse_key):
        return found
    # list_s3 takes the prefix as a plain string prefix: one that does not end in '/' (a
    # wildcard's literal part) lists and groups the same way.
    listed = list_s3(eng.store, S3Loc(bucket, prefix), workers)
    streams = []
    for rel, e in sorted(listed.items()):
        key = prefix + rel
        if not keep(key):
            continue
        if e.kind == "stream":
            streams.append(key)
        elif directory_object(key):
            found.markers.append(key)
        else:
            found.entries.append(Entry("object", bucket, key, size=e.size, mtime=e.mtime, etag=e.etag))

    def stream(key: str):
        try:
            loaded = manifests.load(eng.store, bucket, key + "/", sse_key=sse_key)
        except (errors.KeyNeeded, errors.WrongKey):
            return eng.locked_entry(bucket, key)  # listed and marked, unread
        return None if loaded is None else eng.stream_entry(bucket, key, loaded)  # gone meanwhile

    if streams:
        with cf.ThreadPoolExecutor(min(workers, len(streams)), thread_name_prefix="s3pipefs-manifest") as pool:
            found.entries += [e for e in pool.map(stream, streams) if e is not None]
    found.entries.sort(key=lambda e: e.key)
    return found


def _inside_stream(store, bucket: str, directory: str, sse_key: bytes) -> bool:
    """True when ``directory`` ("a/b/") or a parent of it is a stream's prefix."""
    from s3pipefs.engine import manifests

    def is_stream(prefix: str) -> bool:
        try:
            return store.head(bucket, manifests.manifest_key(prefix), sse_key) is not None
        except (errors.KeyNeeded, errors.WrongKey):
            return True  # a manifest under another SSE-C key

    parts = directory.split("/")[:-1]
    return any(is_stream("/".join(parts[:i]) + "/") for i in range(1, len(parts) + 1))


def _has_marker(store, bucket: str, prefix: str) -> bool:
    """Is there an object named ``prefix`` itself? It lists first under it. (A HEAD would not
    do: some servers (SeaweedFS) answer it for any prefix that has keys.)"""
    items, _ = store.list_page(bucket, prefix, max_keys=1)
    return any(not isinstance(i, str) and i.key == prefix for i in items)


def _folder_object(eng, bucket: str, prefix: str, request) -> str | None:
    """The key of the folder object the directory ``prefix`` keeps its attributes in
    (engine/objattrs.py), None when it has none."""
    from s3pipefs.engine import objattrs
    key = objattrs.folder_key(prefix.rstrip("/"))
    try:
        return key if eng.store.head(bucket, key, sse_key=(request or eng.request).sse_key) is not None else None
    except (errors.KeyNeeded, errors.WrongKey):
        return key  # there, under another SSE-C key


def resolve(eng, url: S3Url, *, recursive: bool, workers: int = 16, request=None) -> Found:
    """The entries ``url`` stands for (see the module docstring); NotFound when none.
    ``request``: the RequestOptions of that location (None: the engine's)."""
    if has_wildcard(url.key):
        found = walk(eng, url.bucket, literal_prefix(url.key), keep=matcher(url.key), workers=workers,
                     request=request)
        if not found.entries and not found.markers:
            eng.store.bucket_exists(url.bucket)
            raise errors.NotFound(f"{url}: no match")
        return found
    entry = eng.stat(url.bucket, url.key, request=request) if url.key.strip("/") else None
    # "p/" names the prefix even where an object "p" exists too; a stream's prefix is itself.
    if entry is not None and (entry.kind == "stream" or (entry.kind == "object" and not url.key.endswith("/"))):
        return Found([entry])
    if recursive:
        prefix = url.key.lstrip("/")
        prefix = prefix + "/" if prefix and not prefix.endswith("/") else prefix
        found = walk(eng, url.bucket, prefix, workers=workers, request=request)
        if prefix and _has_marker(eng.store, url.bucket, prefix):
            found.markers.insert(0, prefix)  # the prefix's own marker goes with it
        folder = _folder_object(eng, url.bucket, prefix, request) if prefix else None
        if folder is not None:
            found.markers.insert(0, folder)  # and its folder object
        if found.entries or found.markers or entry is not None or not prefix:
            if not prefix:
                eng.store.bucket_exists(url.bucket)
            return found
    elif entry is not None:
        return Found([entry])
    eng.store.bucket_exists(url.bucket)
    raise errors.NotFound(f"{url}: no such stream, object or prefix")
