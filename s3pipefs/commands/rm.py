"""`s3pipefs rm S3URL...`: remove streams (segments and manifest) or plain objects.

Each URL is removed on its own: one that fails is reported as one line and the rest are
still removed; the exit status is that of the last failure.
"""
from __future__ import annotations

import argparse
import sys

from s3pipefs import errors, options
from s3pipefs.commands import common
from s3pipefs.s3url import parse_s3url

HELP = "remove streams or objects"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", metavar="S3URL", nargs="+")
    options.add_arguments(p)


def run(a: argparse.Namespace) -> int:
    eng = common.engine(a)
    status = 0
    for text in a.urls:
        url = parse_s3url(text)
        try:
            e = eng.delete(url.bucket, url.key)
            if getattr(a, "verbose", False):
                print(f"removed {e.kind} {url}", file=sys.stderr)
        except errors.S3PipeError as e:
            print(errors.one_line(e, common.PROG), file=sys.stderr)
            status = e.exit_status
    return status
