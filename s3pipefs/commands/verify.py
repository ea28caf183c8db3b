"""`s3pipefs verify S3URL`: read every segment, check its checksum and the stream's digests.

Exit status 0 when everything checks out, 1 when anything does not (the report says what).
"""
from __future__ import annotations

import argparse

from s3pipefs import options
from s3pipefs.commands import common
from s3pipefs.s3url import parse_s3url

HELP = "read every segment, check its checksum and the whole-stream digests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL")
    options.add_arguments(p)


def run(a: argparse.Namespace) -> int:
    from s3pipefs.engine.verify import verify_stream

    url = parse_s3url(a.url)
    eng = common.engine(a)
    with common.progress(a, f"verify {url}") as prog:
        report = verify_stream(eng, url.bucket, url.key, progress=prog.update)
    print(report.summary())
    return 0 if report.ok else 1
