"""--files-from: the keys a sync is limited to, and which entries of a listing they name.

Two formats, told apart by the first line:

* one relative key per line (relative to SRC, as the listing names entries: ``d/f.txt``,
  a stream by its name); empty lines are skipped, a trailing CR is dropped;
* an S3 Inventory CSV report (its first field is quoted): ``"bucket","key"[,...]`` rows with
  keys URL-encoded as inventory writes them (``+`` for a space). The keys are whole keys of
  the source bucket: rows under SRC's prefix are taken (made relative to it), the rest of
  the bucket is left out. Only the first two columns are read, so any inventory schema works.

Either may be gzip-compressed (inventory data files are ``.csv.gz``). An inventory lists a
stream as its segments and manifest: a key inside a stream names the stream.
"""
from __future__ import annotations

import csv
import gzip
import io
import itertools
from typing import BinaryIO, Iterable
from urllib.parse import unquote_plus

from s3pipefs import errors
from s3pipefs.engine.sync.locations import Entry, S3Loc


def read_keys(f: BinaryIO, src) -> list[str]:
    """The relative keys listed in ``f`` (a binary file with peek(), e.g. open(..., 'rb') or
    sys.stdin.buffer), in the order listed, each once."""
    if f.peek(2)[:2] == b"\x1f\x8b":
        f = gzip.GzipFile(fileobj=f)
    # surrogateescape: a key that is not UTF-8 (a local file name) still round-trips.
    text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="\n")
    lines = (line.rstrip("\n").rstrip("\r") for line in text)
    first = next((line for line in lines if line), None)
    if first is None:
        return []
    rest = itertools.chain([first], lines)
    keys = _inventory_keys(rest, src) if first.startswith('"') else (k for k in rest if k)
    return list(dict.fromkeys(keys))


def _inventory_keys(lines: Iterable[str], src):
    if not isinstance(src, S3Loc):
        raise errors.UsageError("--files-from: an S3 Inventory report lists the keys of a bucket; "
                                "the source must be an s3:// location")
    for n, row in enumerate(csv.reader(line for line in lines if line), 1):
        if len(row) < 2:
            raise errors.UsageError(f"--files-from: inventory row {n} has no key column: {row!r}")
        bucket, key = row[0], unquote_plus(row[1], errors="surrogateescape")
        if bucket != src.bucket:
            raise errors.UsageError(f"--files-from: inventory row {n} is of bucket {bucket!r}, "
                                    f"the source is {src}")
        if key.startswith(src.prefix) and key != src.prefix:
            yield key[len(src.prefix):]


def select(keys: list[str], entries: dict[str, Entry]) -> tuple[set[str], list[str]]:
    """(the relative paths of the entries ``keys`` name, the keys that name none). A key
    names the entry of that path, or the stream it lies in (a segment, a manifest)."""
    chosen: set[str] = set()
    missing: list[str] = []
    for key in keys:
        if key in entries:
            chosen.add(key)
            continue
        parent = key
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            e = entries.get(parent)
            if e is not None and e.kind == "stream":
                chosen.add(parent)
                break
        else:
            missing.append(key)
    return chosen, missing
