"""What a key names: a stream, a plain object, a directory or nothing, decided in one place.

Every caller that must tell them apart asks ``find``: Engine.stat (and through it the
mount's lookups and rename), Engine.listdir for each common prefix, the copy dispatch and
cp's source check. The order is the precedence:

1. **stream**: ``KEY/.manifest`` exists. A stream wins over an object of the same name.
2. **object**: HEAD ``KEY`` answers, unless the key is written with a trailing '/',
   which names a directory or a stream, never an object.
3. **directory**: at least one object lies under ``KEY/``. Some servers (SeaweedFS) go on
   listing a prefix whose last object was deleted; S3 never does, so a prefix with no
   object under it is nothing. ``probe`` also sees the folder object ``KEY_$folder$``
   (engine/objattrs.py) in its listing: it marks the directory as keeping its attributes
   there, and alone it is an empty directory (s3fs-fuse's old style). Only directories
   get one, so Engine.listdir takes a common prefix listed beside its folder object for a
   directory without asking (two requests fewer per directory of a tree).

The empty key is the bucket itself: a directory once the bucket is known to exist.

``split_listing`` applies the same rule to one recursive listing (sync), where asking
per key would cost a request each: a prefix holding ``.manifest`` is a stream, and every
key under it (segments, staged replacements, streams nested inside) belongs to it.
"""
from __future__ import annotations

from dataclasses import dataclass

from s3pipefs import manifest as mf
from s3pipefs.engine import manifests, objattrs
from s3pipefs.s3 import ObjectInfo, ObjectStore

STREAM, OBJECT, DIR = "stream", "object", "dir"


@dataclass(frozen=True)
class Found:
    kind: str                                  # STREAM, OBJECT or DIR
    loaded: manifests.Loaded | None = None     # a stream's manifest
    info: ObjectInfo | None = None             # an object's HEAD
    folder_object: bool = False                # DIR: its folder object exists (objattrs.py)


def find(store: ObjectStore, bucket: str, key: str, *, sse_key: bytes | None = None) -> Found | None:
    """What ``key`` names (see the module docstring), or None for nothing.

    ``sse_key`` reads the manifest and HEADs the object (None or b"": no key).
    """
    name = key.strip("/")
    if not name:
        store.bucket_exists(bucket)
        return Found(DIR)
    loaded = manifests.load(store, bucket, name + "/", sse_key=sse_key)
    if loaded is not None:
        return Found(STREAM, loaded=loaded)
    if not key.endswith("/"):
        info = store.head(bucket, name, sse_key=sse_key)
        if info is not None:
            return Found(OBJECT, info=info)
    if store.any_key(bucket, name + "/"):
        return Found(DIR)
    return None


# A probe reads at most this many names beside the one it looks for (one LIST page).
PROBE_NAMES = 1000


def probe(store: ObjectStore, bucket: str, key: str, *, sse_key: bytes | None = None) -> Found | None:
    """``find``, starting from one listing of the name (LIST, prefix ``key``, delimiter
    '/'): a name that holds nothing, which is what a tree's creator looks up before each
    new file, costs that one request instead of three. A listed object costs a HEAD more
    (its metadata), a listed ``key/`` prefix what ``find`` costs (stream or directory)."""
    name = key.strip("/")
    if not name:
        return find(store, bucket, key, sse_key=sse_key)
    obj = below = folder = False
    folder_key = objattrs.folder_key(name)
    seen = 0
    for item in store.list(bucket, name, delimiter="/", quick=True):
        k = item if isinstance(item, str) else item.key
        obj = obj or k == name
        below = below or k.startswith(name + "/")
        folder = folder or k == folder_key
        seen += 1
        if seen > PROBE_NAMES:
            return find(store, bucket, key, sse_key=sse_key)  # crowded by names that start alike
    # find's order, asking only what the listing left open. A prefix listed beside its
    # folder object is a directory (only directories get one), as in Engine.listdir.
    if below and not folder:
        loaded = manifests.load(store, bucket, name + "/", sse_key=sse_key)
        if loaded is not None:
            return Found(STREAM, loaded=loaded)
    if obj and not key.endswith("/"):
        info = store.head(bucket, name, sse_key=sse_key)
        if info is not None:
            return Found(OBJECT, info=info)
    # A listed prefix may be a folder the server keeps after its last object went.
    if folder or (below and store.any_key(bucket, name + "/")):
        return Found(DIR, folder_object=folder)
    return None


def split_listing(infos: list[ObjectInfo], prefix: str) -> tuple[list[ObjectInfo], dict[str, tuple[ObjectInfo, int]]]:
    """The plain objects and the streams among the keys listed under ``prefix``.

    Streams: their prefix (ending in '/') -> (the manifest's ObjectInfo, bytes in their
    segments). The listed prefix itself is no stream of the listing.
    """
    manifest_suffix = "/" + mf.MANIFEST_NAME
    roots = {o.key[:-len(mf.MANIFEST_NAME)]: o for o in infos if o.key.endswith(manifest_suffix)}
    start = len(prefix)
    objects: list[ObjectInfo] = []
    sizes: dict[str, int] = {}
    for o in infos:
        root = _stream_root(o.key, roots, start)
        if root is None:
            objects.append(o)
        elif o.key != root + mf.MANIFEST_NAME and mf.segment_index(o.key[len(root):]) is not None:
            sizes[root] = sizes.get(root, 0) + o.size
    streams = {root: (man, sizes.get(root, 0)) for root, man in roots.items()
               # a stream nested inside another stream's prefix belongs to it
               if _stream_root(root[:-1], roots, start) is None}
    return objects, streams


def _stream_root(key: str, roots: dict, start: int) -> str | None:
    """The outermost stream prefix (past ``start``) that ``key`` lies under, if any."""
    i = key.find("/", start)
    while i != -1:
        p = key[:i + 1]
        if p in roots:
            return p
        i = key.find("/", i + 1)
    return None
