"""Content identity for sync: hashing local files, and the arithmetic of S3 ETags (plain
MD5s, multipart ETags and the part sizes other tools upload with)."""
from __future__ import annotations

import hashlib
import math
import os

from s3pipefs import errors
from s3pipefs.config import MiB
from s3pipefs.engine.parts import part_size
from s3pipefs.engine.transfer import multipart_etag
from s3pipefs.s3 import ObjectInfo


def is_md5(etag: str) -> bool:
    return ObjectInfo("", 0, etag).plain_md5 is not None


def etag_parts(etag: str) -> int:
    e = etag.strip('"')
    head, _, n = e.rpartition("-")
    if head and n.isdigit() and len(head) == 32:
        return int(n)
    return 0


def same_md5_etag(a: str, b: str):
    if is_md5(a) and is_md5(b):
        return a.strip('"').lower() == b.strip('"').lower()
    return None


def same_multipart(a: str, b: str):
    if etag_parts(a) and etag_parts(a) == etag_parts(b):
        return a.strip('"').lower() == b.strip('"').lower()
    return None


def file_digest(path: str, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    try:
        with open(path, "rb", buffering=0) as f:
            # Sized to the file: zero-filling a 4 MiB buffer per small file cost more than
            # hashing it (10,000 files: 40 GiB of memset).
            buf = bytearray(min(4 * MiB, max(os.fstat(f.fileno()).st_size, 0) + 1))
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    except OSError as e:
        raise errors.S3PipeError(f"{path}: {e.strerror}") from None
    return h.hexdigest()


# Part sizes other tools use by default (MiB): aws cli 8, s3cmd 15, rclone 5, s5cmd 50, ...
COMMON_PART_MIB = (5, 8, 10, 15, 16, 25, 32, 50, 64, 100, 128, 256, 512)


def part_size_candidates(size: int, parts: int, our_part: int) -> list[int]:
    """Part sizes that split ``size`` bytes into exactly ``parts`` parts, most likely first."""
    lo = math.ceil(size / parts)
    cands = [part_size(size, our_part), math.ceil(lo / MiB) * MiB, lo]
    cands += [m * MiB for m in COMMON_PART_MIB]
    out = []
    for p in cands:
        if p > 0 and math.ceil(size / p) == parts and p not in out:
            out.append(p)
    return out


def local_multipart_etags(path: str, size: int, parts: int, our_part: int) -> set[str]:
    """The multipart ETags ``path`` would have under each plausible part size (one read)."""
    cands = part_size_candidates(size, parts, our_part)
    if not cands:
        return set()
    state = [[p, hashlib.md5(), 0, []] for p in cands]  # size, md5 of current part, filled, digests
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(4 * MiB)
                if not chunk:
                    break
                for st in state:
                    view = memoryview(chunk)
                    while view:
                        take = min(len(view), st[0] - st[2])
                        st[1].update(view[:take])
                        st[2] += take
                        view = view[take:]
                        if st[2] == st[0]:
                            st[3].append(st[1].digest())
                            st[1], st[2] = hashlib.md5(), 0
    except OSError as e:
        raise errors.S3PipeError(f"{path}: {e.strerror}") from None
    out = set()
    for p, h, filled, digests in state:
        if filled:
            digests.append(h.digest())
        out.add(multipart_etag(digests))
    return out
