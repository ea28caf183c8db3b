"""POSIX attributes in an object's user metadata: the convention s3fs-fuse uses.

A plain object, or a directory marker ``dir/``, may carry (all values decimal text):

=================  ============================================================
``x-amz-meta-mode``  st_mode *with* the file type: 33188 (0o100644) a file,
                     16877 (0o40755) a directory, 41471 (0o120777) a symlink
``x-amz-meta-uid``   owner
``x-amz-meta-gid``   group
``x-amz-meta-mtime`` seconds since the epoch, ``1700000000`` or
                     ``1700000000.123456789`` (nanoseconds when not whole)
=================  ============================================================

A **symbolic link** is an object whose mode has S_IFLNK and whose body is the target
path, nothing else (no newline). s3fs-fuse and a mount read each other's links and
owners this way. A stream keeps the same attributes in its manifest instead
(manifest.py), since its prefix has no object of its own to carry them.

The metadata is whatever some tool wrote: a value that does not parse is ignored (the
attribute shows its default), never an error.

Changing them: S3 cannot edit metadata in place, so an object is copied onto itself
with new metadata (CopyObject, ``REPLACE``), which a single copy does for objects up
to 5 GiB; a directory marker, zero bytes, is written again.

**Folder objects.** Some servers (SeaweedFS) keep no user metadata on keys ending in
'/'. There a directory ``dir`` keeps the same keys on the zero-byte object
``dir_$folder$`` instead: the old-style folder marker, which s3fs-fuse (and Hadoop's S3
connectors) take for the directory ``dir``, never for a file. s3fs-fuse reads its
attributes when the server answers no HEAD of ``dir/`` (it asks ``dir``, ``dir/``, then
``dir_$folder$``); SeaweedFS answers that HEAD for every folder it holds, so there
s3fs-fuse shows its defaults. A folder object's attributes win over its marker's.
"""
from __future__ import annotations

import stat
import time
from dataclasses import dataclass

from s3pipefs.s3 import ObjectInfo, ObjectStore

# The largest object one CopyObject copies (S3's limit); larger ones would need a
# multipart copy of all their bytes to change a metadata value.
MAX_COPY = 5 * 1024**3
LINK_MODE = stat.S_IFLNK | 0o777  # 41471, what every symlink shows
LINK_CONTENT_TYPE = "application/octet-stream"
DIR_CONTENT_TYPE = "application/x-directory"
FOLDER_SUFFIX = "_$folder$"
_MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class Attrs:
    mode: int | None = None      # st_mode with the type bits, as stored
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None

    @property
    def is_link(self) -> bool:
        return self.mode is not None and stat.S_ISLNK(self.mode)


def parse(metadata: dict) -> Attrs:
    """The attributes in user metadata as HEAD returns it (keys without ``x-amz-meta-``)."""
    if not metadata:
        return Attrs()
    return Attrs(mode=_number(metadata.get("mode"), 0o177777), uid=_number(metadata.get("uid"), _MAX_ID),
                 gid=_number(metadata.get("gid"), _MAX_ID), mtime_ns=_time_ns(metadata.get("mtime")))


def updated(metadata: dict, file_type: int, *, mode: int | None = None, uid: int | None = None,
            gid: int | None = None, mtime_ns: int | None = None) -> dict:
    """``metadata`` with the given attributes replaced; every other key kept. ``mode`` is
    permission bits: the stored type is kept (``file_type`` when none is stored)."""
    out = dict(metadata)
    if mode is not None:
        stored = parse(metadata).mode
        kind = stat.S_IFMT(stored) if stored is not None and stat.S_IFMT(stored) else file_type
        out["mode"] = str(kind | stat.S_IMODE(mode))
    if uid is not None:
        out["uid"] = str(uid)
    if gid is not None:
        out["gid"] = str(gid)
    if mtime_ns is not None:
        out["mtime"] = render_time(mtime_ns)
    return out


def link_metadata(uid: int, gid: int, now_ns: int | None = None) -> dict:
    """The metadata of a new symlink: exactly the keys s3fs-fuse writes for one."""
    now = render_time(time.time_ns() if now_ns is None else now_ns)
    return {"mode": str(LINK_MODE), "atime": now, "ctime": now, "mtime": now, "uid": str(uid), "gid": str(gid)}


def folder_key(key: str) -> str:
    """The folder object keeping the attributes of the directory ``key`` (no trailing '/')."""
    return key + FOLDER_SUFFIX


def folder_of(name: str) -> str | None:
    """The directory a folder object's name (or key) stands for; None: no folder object."""
    if name.endswith(FOLDER_SUFFIX) and len(name) > len(FOLDER_SUFFIX) and not name.endswith("/" + FOLDER_SUFFIX):
        return name[:-len(FOLDER_SUFFIX)]
    return None


def render_time(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}.{frac:09d}" if frac else str(sec)


def store_attrs(store: ObjectStore, bucket: str, key: str, *, directory: bool, sse_key: bytes = b"",
                **attrs) -> ObjectInfo | None:
    """Write ``attrs`` (mode, uid, gid, mtime_ns) into the metadata of the object ``key``,
    or of the marker of the directory ``key``; what the server then holds (read back:
    some servers keep no metadata on directory markers). None: no such object. Objects
    over MAX_COPY are the caller's to refuse. ``sse_key``: the SSE-C key of every request."""
    if directory:
        marker = key + "/" if key else ""
        info = store.head(bucket, marker, sse_key=sse_key) if marker else None
        meta = updated(info.metadata if info is not None else {}, stat.S_IFDIR, **attrs)
        store.put(bucket, marker, b"", metadata=meta, content_type=DIR_CONTENT_TYPE, sse_key=sse_key, quick=True)
        return store.head(bucket, marker, sse_key=sse_key)
    return copy_with_attrs(store, bucket, key, key, sse_key=sse_key, **attrs)


def copy_with_attrs(store: ObjectStore, bucket: str, key: str, to: str, *, sse_key: bytes | None = None,
                    **attrs) -> ObjectInfo | None:
    """Copy the object ``key`` to ``to`` (itself: change its attributes in place) with
    ``attrs`` written into its metadata, its other metadata and content type kept; what
    the server then holds. None: no such object. ``sse_key``: the SSE-C key of both."""
    info = store.head(bucket, key, sse_key=sse_key)
    if info is None:
        return None
    meta = updated(info.metadata, stat.S_IFREG, **attrs)
    etag = store.copy(bucket, key, bucket, to, metadata=meta, content_type=info.content_type or None,
                      source_sse_key=sse_key, sse_key=sse_key, quick=True)
    return ObjectInfo(to, info.size, etag or info.etag, time.time(), meta, info.content_type)


def _number(text, hi: int) -> int | None:
    if text is None:
        return None
    text = str(text).strip()
    if not text.isdigit() or len(text) > 12:
        return None
    v = int(text)
    return v if v <= hi else None


def _time_ns(text) -> int | None:
    if text is None:
        return None
    sec, _, frac = str(text).strip().partition(".")
    if not sec.isdigit() or len(sec) > 11 or (frac and (not frac.isdigit() or len(frac) > 9)):
        return None
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0") or 0)
