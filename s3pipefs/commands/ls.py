"""`s3pipefs ls S3URL`: streams (with their state), plain objects and prefixes.

A stream is one entry however many segments it has; its state is "stream" (complete),
"writing" (its writer's heartbeat is fresh) or "INCOMPLETE" (the writer is gone).
"""
from __future__ import annotations

import argparse
import datetime
import json

from s3pipefs import options
from s3pipefs.commands import common
from s3pipefs.s3url import parse_s3url

HELP = "list streams, objects and prefixes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL")
    p.add_argument("--json", action="store_true")
    options.add_arguments(p)


def run(a: argparse.Namespace) -> int:
    url = parse_s3url(a.url)
    eng = common.engine(a)
    entry = eng.stat(url.bucket, url.key) if url.key.strip("/") else None
    if entry is not None and entry.kind != "dir":
        entries = [entry]
    else:
        entries = eng.listdir(url.bucket, url.key)
    if a.json:
        print(json.dumps([{"kind": e.kind, "key": e.key, "size": e.size, "mtime": e.mtime,
                           "complete": e.complete, "writer_alive": e.writer_alive} for e in entries], indent=1))
        return 0
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.mtime).strftime("%Y-%m-%d %H:%M") if e.mtime else " " * 16
        state = {"dir": "DIR", "object": "obj"}.get(e.kind) or (
            "stream" if e.complete else ("writing" if e.writer_alive else "INCOMPLETE"))
        name = e.key + ("/" if e.kind == "dir" else "")
        print(f"{state:<10} {e.size:>15} {when}  s3://{e.bucket}/{name}")
    return 0
