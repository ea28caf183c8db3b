"""`s3pipefs ls S3URL`: streams (with their state), plain objects and prefixes.

A stream is one entry however many segments it has; its state is "stream" (complete),
"writing" (its writer's heartbeat is fresh) or "INCOMPLETE" (the writer is gone).
Without -R one level is listed (prefixes as DIR); with -R, or with a wildcard (``*``,
``?``, which cross '/'), every stream and object below, and no DIR lines
(commands/listing.py). Encrypted streams are marked after their name: "[encrypted:
aes-256-gcm]" (client-side; listed fully, no key needed) or "[SSE-C: key needed]" (its
manifest is under an SSE-C key not given: size and state unknown).
"""
from __future__ import annotations

import argparse
import datetime
import json

from s3pipefs import errors, options
from s3pipefs.commands import common, listing
from s3pipefs.s3url import parse_s3url

HELP = "list streams, objects and prefixes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL", help="s3://bucket[/prefix], or a pattern with * and ?")
    p.add_argument("-R", "--recursive", action="store_true",
                   help="every stream and object under the prefix, not one level")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    options.add_arguments(p)
    common.add_key_arguments(p, source=False, client_side=False)


def run(a: argparse.Namespace) -> int:
    url = parse_s3url(a.url)
    eng = common.engine(a)
    if a.recursive or listing.has_wildcard(url.key):
        entries = listing.resolve(eng, url, recursive=True, workers=eng.cfg.workers).entries
    else:
        try:
            entry = eng.stat(url.bucket, url.key) if url.key.strip("/") else None
        except (errors.KeyNeeded, errors.WrongKey):
            entry = eng.locked_entry(url.bucket, url.key.strip("/"))  # listed and marked, as next to others
        if entry is not None and entry.kind != "dir":
            entries = [entry]
        else:
            entries = eng.listdir(url.bucket, url.key)
    if a.json:
        print(json.dumps([as_dict(e) for e in entries], indent=1))
        return 0
    for e in entries:
        print(line(e))
    return 0


def as_dict(e) -> dict:
    return {"kind": e.kind, "key": e.key, "size": e.size, "mtime": e.mtime, "complete": e.complete,
            "writer_alive": e.writer_alive, "encryption": e.encryption or None}


def line(e) -> str:
    when = datetime.datetime.fromtimestamp(e.mtime).strftime("%Y-%m-%d %H:%M") if e.mtime else " " * 16
    state = {"dir": "DIR", "object": "obj"}.get(e.kind) or (
        "stream" if e.complete else ("writing" if e.writer_alive else "INCOMPLETE"))
    name = e.key + ("/" if e.kind == "dir" else "")
    return f"{state:<10} {e.size:>15} {when}  s3://{e.bucket}/{name}" + _mark(e)


def _mark(e) -> str:
    """What ls says of an encrypted stream after its name."""
    from s3pipefs.engine.core import LOCKED

    if e.encryption == LOCKED:
        return "  [SSE-C: key needed]"
    return f"  [encrypted: {e.encryption}]" if e.encryption else ""
