"""Where a sync reads and writes: S3 and local locations, the entries found there, and
which relative paths the --include/--exclude filters and a --shard let through."""
from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass, field

from s3pipefs import errors
from s3pipefs.engine import objattrs
from s3pipefs.s3 import ObjectInfo


@dataclass(frozen=True)
class S3Loc:
    bucket: str
    prefix: str  # "" or ends with "/"

    def __str__(self):
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, rel: str) -> str:
        return self.prefix + rel


@dataclass(frozen=True)
class LocalLoc:
    root: str

    def __str__(self):
        return self.root

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))


def parse_location(text: str):
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise errors.UsageError(f"no bucket in {text!r}")
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Loc(bucket, prefix)
    if "://" in text:
        raise errors.UsageError(f"{text}: sync works between s3:// locations and local directories")
    return LocalLoc(text)


@dataclass
class Entry:
    rel: str
    kind: str                 # "object", "stream", "file"
    size: int
    etag: str = ""            # object ETag; for a stream the manifest object's ETag
    mtime: float = 0.0        # LastModified or st_mtime; for a stream the manifest's
    info: ObjectInfo | None = None
    digests: dict = field(default_factory=dict)  # "md5"/"sha256" -> hex, once computed


def directory_object(rel: str) -> bool:
    """A directory marker (``d/``) or folder object (``d_$folder$``, engine/objattrs.py):
    what a mount or another tool keeps for a directory, never a file of a local tree."""
    return rel.endswith("/") or objattrs.folder_of(rel) is not None


def safe_rel(rel: str) -> bool:
    """A key that maps inside the destination directory (no '..', '.', empty parts)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts) and "\0" not in rel


# -- filters ---------------------------------------------------------------------------------------

def make_filter(rules: list[tuple[str, str]]):
    """First matching rule wins; with any --include, unmatched paths are excluded.

    A pattern without '/' matches the base name anywhere; with '/' the whole relative
    path. ``*`` and ``?`` also match '/' in whole-path patterns (fnmatch).
    """
    if not rules:
        return lambda rel: True
    default = not any(kind == "include" for kind, _ in rules)

    def ok(rel: str) -> bool:
        base = rel.rsplit("/", 1)[-1]
        for kind, pat in rules:
            target = rel if "/" in pat else base
            if fnmatch.fnmatchcase(target, pat.lstrip("/") if "/" in pat else pat):
                return kind == "include"
        return default
    return ok


# -- shards ----------------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N): shard I (0-based, as Kubernetes' JOB_COMPLETION_INDEX) of N."""
    index, slash, count = text.partition("/")
    try:
        i, n = int(index, 10), int(count, 10)
    except ValueError:
        raise errors.UsageError(f"--shard takes I/N (shard I of N, 0 <= I < N), not {text!r}") from None
    if not slash or not 0 <= i < n:
        raise errors.UsageError(f"--shard takes I/N (shard I of N, 0 <= I < N), not {text!r}")
    return i, n


def shard_of(rel: str, count: int) -> int:
    """The shard of ``count`` that owns ``rel``: a hash of the relative path alone, so every
    run, machine and listing order agrees, and the same key has the same shard whichever
    side it is on (S3 or a directory). BLAKE2b, not hash(): that one is salted per process."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_filter(shard: tuple[int, int] | None):
    """A predicate on relative paths: those of shard ``(index, count)``; all when None."""
    if shard is None or shard[1] == 1:
        return lambda rel: True
    index, count = shard
    return lambda rel: shard_of(rel, count) == index
