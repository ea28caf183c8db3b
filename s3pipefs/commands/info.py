"""`s3pipefs info S3URL`: a stream's manifest and state (or an object's size and ETag)."""
from __future__ import annotations

import argparse
import json
import time

from s3pipefs import errors, options
from s3pipefs.commands import common
from s3pipefs.s3url import parse_s3url

HELP = "show a stream's manifest and state"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL")
    p.add_argument("--json", action="store_true")
    options.add_arguments(p)
    common.add_key_arguments(p, source=False)


def run(a: argparse.Namespace) -> int:
    url = parse_s3url(a.url)
    eng = common.engine(a)
    e = eng.stat(url.bucket, url.key)
    if e is None:
        raise errors.NotFound(f"{url}: no such stream or object")
    if e.kind != "stream":
        if a.json:
            print(json.dumps({"kind": e.kind, "key": e.key, "size": e.size, "etag": e.etag}))
        else:
            print(f"{url}: {e.kind}, {e.size} bytes" + (f", etag {e.etag}" if e.etag else ""))
        return 0
    m = e.manifest
    state = "complete" if m.completed else ("being written" if e.writer_alive else "INCOMPLETE (writer gone)")
    info = {
        "url": str(url), "kind": "stream", "state": state, "completed": m.completed, "size": m.total_size,
        "segments": m.num_segments, "segment_size": m.segment_size, "format": "s3pipefs" if m.own else "s3pipe2",
        "sha256": m.sha256 or None, "chain": m.chain or None, "upload_began": m.upload_began,
        "upload_ended": m.upload_ended or None, "writer": m.writer_id or None,
        "heartbeat_age": round(time.time() - m.heartbeat, 1) if m.heartbeat else None,
        # Set through a mount (touch, chmod, rsync -a, cp -p); shown by ls -l there.
        "mtime": _iso_ns(m.mtime_ns) if m.mtime_ns is not None else None,
        "mode": f"{m.mode:04o}" if m.mode is not None else None,
        # Client-side encryption: the scheme and the key's fingerprint (sha256 is then keyed).
        "encryption": f"{m.encryption}, key {m.key_id}" if m.encryption else None,
    }
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            if v is not None:
                print(f"{k:>13}: {v}")
    return 0


def _iso_ns(ns: int) -> str:
    """Nanoseconds since the epoch as local time with all nine digits (as stat(1) shows it)."""
    t = time.localtime(ns // 10**9)
    return time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{ns % 10**9:09d} " + time.strftime("%z", t)
