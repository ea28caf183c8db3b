"""`s3pipefs rm S3URL...`: remove streams (segments and manifest) or plain objects.

With -R a prefix is removed with everything under it (streams, objects, directory
markers); a wildcard (``*``, ``?``, crossing '/') removes its matches. ``--dry-run`` prints
what would go. Every URL is parsed before anything is removed. Each entry is removed on
its own: one that fails (a stream whose writer is alive) is reported as one line and the
rest are still removed; the exit status is that of the last failure.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys

from s3pipefs import errors, options
from s3pipefs.commands import common, listing
from s3pipefs.s3url import parse_s3url

HELP = "remove streams or objects (-R: prefixes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", metavar="S3URL", nargs="+", help="s3://bucket/key, or a pattern with * and ?")
    p.add_argument("-R", "--recursive", action="store_true",
                   help="remove a prefix with every stream and object under it")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    options.add_arguments(p)
    common.add_key_arguments(p, source=False, client_side=False)


def run(a: argparse.Namespace) -> int:
    urls = [parse_s3url(text) for text in a.urls]
    eng = common.engine(a)
    status = 0
    for url in urls:
        try:
            found = listing.resolve(eng, url, recursive=a.recursive, workers=eng.cfg.workers)
            if len(found.entries) == 1 and found.entries[0].kind == "dir" and not found.markers:
                raise errors.UsageError(f"{url}: is a prefix; remove it with everything under it with -R")
        except errors.S3PipeError as e:
            print(errors.one_line(e, common.PROG), file=sys.stderr)
            status = e.exit_status
            continue
        status = _remove(eng, url.bucket, found, a) or status
    return status


def _remove(eng, bucket: str, found: listing.Found, a: argparse.Namespace) -> int:
    """Remove what was found; the exit status of the last failure, or 0."""
    verbose = getattr(a, "verbose", False)
    streams = [e for e in found.entries if e.kind == "stream"]
    objects = [e.key for e in found.entries if e.kind == "object"]
    if a.dry_run:
        for e in found.entries:
            print(f"would remove {e.kind} s3://{bucket}/{e.key}")
        for key in found.markers:
            print(f"would remove marker s3://{bucket}/{key}")
        return 0
    status = 0

    def one(e):
        try:
            eng.delete(bucket, e.key)
            return e, None
        except errors.S3PipeError as ex:
            return e, ex

    # Streams each on their own (manifest first, writer check); objects and markers in batches.
    with cf.ThreadPoolExecutor(max(1, min(eng.cfg.workers, len(streams))), thread_name_prefix="s3pipefs-rm") as pool:
        for e, ex in pool.map(one, streams):
            if ex is not None:
                print(errors.one_line(ex, common.PROG), file=sys.stderr)
                status = ex.exit_status
            elif verbose:
                print(f"removed stream s3://{bucket}/{e.key}", file=sys.stderr)
    for kind, keys in (("object", objects), ("marker", found.markers)):
        if not keys:
            continue
        try:
            eng.store.delete_many(bucket, keys)
        except errors.S3PipeError as ex:
            print(errors.one_line(ex, common.PROG), file=sys.stderr)
            status = ex.exit_status
            continue
        if verbose:
            for key in keys:
                print(f"removed {kind} s3://{bucket}/{key}", file=sys.stderr)
    return status
