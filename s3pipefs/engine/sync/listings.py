"""What a sync side holds: the entries under an S3 prefix (objects and streams, from one
recursive listing) or a local directory (regular files), by relative path."""
from __future__ import annotations

import os
import stat as _stat

from s3pipefs import errors
from s3pipefs.engine import kinds
from s3pipefs.engine.listing import list_tree
from s3pipefs.engine.sync.locations import Entry, LocalLoc, S3Loc
from s3pipefs.s3 import ObjectStore

# Temporary files of downloads in progress (transfer/downloads.py): never synced.
TMP_MARK = ".s3pipefs-"


def list_s3(store: ObjectStore, loc: S3Loc, workers: int = 16) -> dict[str, Entry]:
    """Objects and streams under the prefix, by relative path. One LIST per 1000 keys, large
    subtrees listed side by side (engine/listing.py)."""
    infos = list_tree(store, loc.bucket, loc.prefix, workers=workers)
    objects, streams = kinds.split_listing(infos, loc.prefix)
    out: dict[str, Entry] = {}
    for o in objects:
        rel = o.key[len(loc.prefix):]
        if rel:
            out[rel] = Entry(rel, "object", o.size, o.etag, o.last_modified, o)
    for root, (man, size) in streams.items():
        rel = root[len(loc.prefix):-1]
        if not rel:
            continue  # the prefix itself is a stream: sync works on trees (cp copies one stream)
        out[rel] = Entry(rel, "stream", size, man.etag, man.last_modified, man)
    return out


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
