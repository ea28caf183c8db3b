"""Which names the mount accepts: what S3, and the server behind it, can store and delete.

A name is checked before anything is written (create, mkdir, the target of a rename), so
a name that could be stored but never removed again cannot leave debris behind:

* ENAMETOOLONG: a component over 255 bytes (NAME_MAX, which statfs reports and tools
  expect), or an S3 key over 1024 bytes, counting the longest key a stream keeps under
  its name (a replacing writer's staging folder and a segment number).
* EINVAL: a name that is not UTF-8 (S3 keys are UTF-8); a character XML 1.0 cannot
  carry (the C0 controls other than tab, newline and carriage return, U+FFFE, U+FFFF):
  the server stores and lists such a key, but the multi-object delete that removes a
  stream's segments is refused as MalformedXML; and backslash, which SeaweedFS stores as
  '/', so the file would appear under another name.
* EACCES: ``.manifest`` is what makes a directory a stream; a name ending in
  ``_$folder$`` is a directory's folder object (engine/objattrs.py), never a file.

A stream that already has an undeletable name (made by another tool) is refused by rm
and mv with EINVAL before anything is deleted; S3 tools that delete one key at a time
can remove it.
"""
from __future__ import annotations

import re

from s3pipefs.engine import objattrs
from s3pipefs.fs import fserrors
from s3pipefs.manifest import MANIFEST_NAME, SEGMENT_DIGITS

NAME_MAX = 255
KEY_MAX = 1024  # S3's limit on a key, in UTF-8 bytes
# The longest key a stream keeps below its own: "/.next-copy-<8 hex>/" then a segment.
STREAM_KEY_ROOM = len("/.next-copy-00000000/") + SEGMENT_DIGITS
# What the multi-object delete (XML 1.0) cannot carry; and that, or what SeaweedFS rewrites.
_UNDELETABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\\\\]")


def _utf8(text: str) -> bytes | None:
    """The UTF-8 bytes of a name, or None for one that is not UTF-8 (the kernel hands
    us bytes; they arrive here with the invalid ones as lone surrogates)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def key_fits(key: str) -> bool:
    """Could anything exist at ``key``? (Lookups of longer keys answer ENAMETOOLONG.)"""
    b = _utf8(key)
    return b is None or len(b) <= KEY_MAX


def is_utf8(key: str) -> bool:
    return _utf8(key) is not None


def check_new(rel_path: str, key: str, where: str, *, stream: bool) -> None:
    """Refuse a name a new file (``stream``) or directory could not be stored under."""
    where = shown(where)
    for name in rel_path.strip("/").split("/"):
        b = _utf8(name)
        if b is None:
            raise fserrors.BadName(f"{where}: the name is not UTF-8, and S3 keys are")
        if len(b) > NAME_MAX:
            raise fserrors.NameTooLong(f"{where}: a name of {len(b)} bytes (at most {NAME_MAX})")
        bad = _REFUSED.search(name)
        if bad:
            raise fserrors.BadName(f"{where}: names cannot contain {bad.group()!r}: {_why(bad.group())}")
    last = rel_path.rstrip("/").rsplit("/", 1)[-1]
    if last == MANIFEST_NAME:
        raise fserrors.PermissionDenied(f"{where}: '{MANIFEST_NAME}' is reserved for stream manifests")
    if objattrs.folder_of(last):
        raise fserrors.PermissionDenied(f"{where}: names ending in '{objattrs.FOLDER_SUFFIX}' are reserved for "
                                        "the objects keeping directories' attributes")
    room = STREAM_KEY_ROOM if stream else 1  # a directory's marker is "key/"
    size = len(key.encode("utf-8"))
    if size + room > KEY_MAX:
        raise fserrors.NameTooLong(f"{where}: the S3 key would be {size} bytes; at most "
                                   f"{KEY_MAX - room} fit (S3 allows {KEY_MAX}, with room for "
                                   f"{'the segments under a stream' if stream else 'the trailing /'})")


def check_removable(key: str, where: str) -> None:
    """Refuse to start removing a stream whose segments the server could not delete."""
    bad = _UNDELETABLE.search(key)
    if bad:
        raise fserrors.BadName(f"{shown(where)}: the name contains {bad.group()!r}, which the server's "
                               "multi-object delete refuses; nothing was removed (delete it with an "
                               "S3 tool, one key at a time)")


def shown(text: str) -> str:
    """A name as logs and messages show it: control characters and bytes that are not
    UTF-8 escaped, so a log line stays one printable line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _why(ch: str) -> str:
    if ch == "\\":
        return "the server stores a backslash as '/'"
    return "the server stores such a key but cannot delete it again with a multi-object delete"
