"""`s3pipefs cat S3URL` (s3pipe2: `from`): stream or plain object -> stdout.

Follows a stream that is still being written until its writer completes it (or falls
silent for --follow-timeout); ``--no-follow`` stops at the current end.
"""
from __future__ import annotations

import argparse
import os
import sys

from s3pipefs import options
from s3pipefs.commands import common
from s3pipefs.config import parse_size
from s3pipefs.s3url import parse_s3url

HELP = "stream or object -> stdout (follows a stream that is still being written)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL")
    p.add_argument("--offset", default="0", help="start at this byte offset")
    p.add_argument("--no-follow", action="store_true", help="stop at the current end of an incomplete stream")
    options.add_arguments(p, s3pipe2=True)  # to/from
    common.add_key_arguments(p, source=False)


def run(a: argparse.Namespace) -> int:
    url = parse_s3url(a.url)
    eng = common.engine(a)
    reader = eng.open_reader(url.bucket, url.key, follow=not a.no_follow)
    offset = parse_size(a.offset)
    fd = sys.stdout.buffer.fileno()
    common.widen_pipe(fd)
    with reader, common.progress(a, f"cat {url}", total=reader.size if reader.complete else None) as prog:
        for chunk in reader.chunks(offset):
            _write_all(fd, chunk)
            prog.update(len(chunk))
    return 0


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]
