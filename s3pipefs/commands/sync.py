"""`s3pipefs sync SRC DST`: make a prefix, bucket or directory like another (S3 or local).

Argument wiring only; comparing, listing and transferring are engine/sync/. Its own
defaults: 16 transfer workers (--workers/-n) and 16 checkers, as small files dominate.
"""
from __future__ import annotations

import argparse
import json
import sys

from s3pipefs import errors, options
from s3pipefs.commands import common
from s3pipefs.commands.common import PROG
from s3pipefs.config import MiB, parse_size

HELP = "sync prefixes, buckets and directories"
DEFAULT_WORKERS = 16
DEFAULT_CHECKERS = 16

EPILOG = """\
Comparing (what makes an entry up to date at the destination):
  default         same size, and the same content by ETag: equal MD5 ETags, equal multipart
                  ETags (for a local file computed with the part size the ETag implies),
                  or for a stream its manifest (MD5 ETag of the manifest; against a local
                  file the whole-stream SHA-256 in it). Multipart and SSE ETags are not
                  MD5s: where neither side has a comparable ETag it falls back to size +
                  time (destination not older than the source; downloads get the source's
                  time as mtime). Local files are hashed (read) for this; no HEAD requests.
  --existing-only whatever exists at the destination is skipped: the fastest re-run.
  --checksum      size and content checksum on both sides: local files hashed, objects by
                  the md5 metadata s3pipefs writes (one HEAD each) or their MD5 ETag (else
                  read and hashed), streams by the SHA-256 in their manifest.
Streams (prefixes holding a .manifest) are synced as one entry each: server-side between
S3 locations, reassembled into one file on download.
Filters: --include/--exclude GLOB, in order, first match wins; with any --include, paths
matching no rule are excluded. A GLOB without '/' matches base names, with '/' the whole
relative path. Excluded paths are never deleted.
Many machines: --shard I/N takes the paths whose hash falls in shard I of N (0-based),
so N runs with I = 0..N-1 (a Kubernetes Indexed Job, a SLURM array, GNU parallel) together
do what one run does; each is idempotent and --delete deletes only within its shard.
--files-from FILE (- for stdin) limits the run to the keys listed: one relative key a
line, or an S3 Inventory CSV report of the source bucket (gzipped or not); listed keys
the source lacks are reported and make the exit status 1.
Exit status 0 when everything was transferred, 1 when anything failed (failures listed
on stderr; --delete then deletes nothing), 2 for usage errors.
"""


class _FilterAction(argparse.Action):
    def __call__(self, parser, ns, values, option_string=None):
        rules = list(getattr(ns, "filters", None) or [])
        rules.append((self.const, values))
        setattr(ns, "filters", rules)


def _shard(text: str) -> tuple[int, int]:
    from s3pipefs.engine.sync.locations import parse_shard

    try:
        return parse_shard(text)
    except errors.UsageError as e:  # argparse reports it as one usage line, exit 2
        raise argparse.ArgumentTypeError(str(e)) from None


def _read_keys(path: str, src) -> list[str]:
    from s3pipefs.engine.sync.keylist import read_keys

    if path == "-":
        return read_keys(sys.stdin.buffer, src)
    try:
        with open(path, "rb") as f:
            return read_keys(f, src)
    except OSError as e:
        raise errors.UsageError(f"--files-from {path}: {e.strerror}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("src", metavar="SRC", help="s3://bucket[/prefix] or a local directory")
    p.add_argument("dst", metavar="DST", help="s3://bucket[/prefix] or a local directory")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--existing-only", action="store_true", help="compare by existence only (fastest re-run)")
    m.add_argument("--checksum", action="store_true", help="compare by content checksum (see below)")
    p.add_argument("--delete", action="store_true", help="delete destination entries the source does not have")
    p.add_argument("--dry-run", action="store_true", help="show what would be copied and deleted; change nothing")
    p.add_argument("--include", metavar="GLOB", action=_FilterAction, const="include", dest="filters",
                   help="include matching paths (repeatable)")
    p.add_argument("--exclude", metavar="GLOB", action=_FilterAction, const="exclude", dest="filters",
                   help="exclude matching paths (repeatable)")
    p.add_argument("--checkers", type=int, metavar="N",
                   help=f"parallel comparisons, and listings of large subtrees (default {DEFAULT_CHECKERS}; "
                        "small local files are hashed on one thread)")
    p.add_argument("--part-size", metavar="SIZE", help="multipart part size for uploads (default 32M)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="copy incomplete streams as far as they go (S3 to S3)")
    p.add_argument("--shard", metavar="I/N", type=_shard,
                   help="only the paths of shard I of N (0 <= I < N), by a hash of the relative path")
    p.add_argument("--files-from", metavar="FILE",
                   help="only the keys listed in FILE (- for stdin): one relative key a line, "
                        "or an S3 Inventory CSV report")
    p.add_argument("--json", action="store_true", help="print the summary and failures as JSON on stdout")
    p.set_defaults(filters=[])
    options.add_arguments(p, defaults={"workers": DEFAULT_WORKERS})
    common.add_key_arguments(p)


def run(a: argparse.Namespace) -> int:
    from s3pipefs.engine.sync import SyncOptions, parse_location

    tcfg = common.transfer_config(a)
    src, dst = parse_location(a.src), parse_location(a.dst)
    source, dest = common.request_options(a)
    workers = getattr(a, "workers", DEFAULT_WORKERS)
    checkers = a.checkers or DEFAULT_CHECKERS
    if not 1 <= workers <= 256 or not 1 <= checkers <= 256:
        raise errors.UsageError("--workers and --checkers must be between 1 and 256")
    opts = SyncOptions(
        mode="existing" if a.existing_only else "checksum" if a.checksum else "etag",
        delete=a.delete, dry_run=a.dry_run, filters=list(a.filters or []), workers=workers,
        checkers=checkers, part_size=parse_size(a.part_size) if a.part_size else 32 * MiB,
        allow_incomplete=a.allow_incomplete, source=source, shard=a.shard,
        keys=_read_keys(a.files_from, src) if a.files_from else None)
    # The destination's key is the engine's; the source's goes with each call reading it.
    engine = common.engine_over(common.store(a), tcfg, dest)
    bar = None
    if common.show_progress(a):
        from tqdm import tqdm

        bar = tqdm(desc="sync", unit="obj", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        done_bytes = [0]

        def progress(n, nbytes):
            done_bytes[0] += nbytes
            bar.update(n)
            if nbytes:
                bar.set_postfix_str(f"{done_bytes[0] / MiB:.1f} MiB", refresh=False)
    else:
        progress = None
    try:
        report = engine.sync(src, dst, opts, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if a.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        show = a.dry_run or getattr(a, "verbose", False)
        if show:
            for verb, rel, why in report.actions:
                print(f"{'would ' if a.dry_run else ''}{verb} {rel} ({why})")
        for rel, msg in report.failures:
            print(f"{PROG}: failed: {rel}: {msg}", file=sys.stderr)
        for rel in report.missing:
            print(f"{PROG}: missing: {rel}: listed in --files-from, not in {src}", file=sys.stderr)
        print(report.summary())
    return 1 if report.failed or report.failures or report.missing else 0
