"""`s3pipefs du S3URL...`: bytes, streams and objects under prefixes.

A stream counts once, with the size its manifest gives (``total_size``), not by its
segment objects; directory markers count nothing. ``--depth N`` adds a line for each
prefix up to N levels below a URL, before the URL's own total (like ``du -d N``). A URL
naming one stream or object counts that; a wildcard counts its matches, grouped below
the directory of its literal part.
"""
from __future__ import annotations

import argparse
import json
import sys

from s3pipefs import errors, options
from s3pipefs.commands import common, listing
from s3pipefs.progress import human_size
from s3pipefs.s3url import parse_s3url

HELP = "bytes, streams and objects under prefixes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", metavar="S3URL", nargs="+", help="s3://bucket[/prefix], or a pattern with * and ?")
    p.add_argument("-d", "--depth", type=int, default=0, metavar="N",
                   help="also a line for each prefix up to N levels below each URL (default 0)")
    p.add_argument("--json", action="store_true", help="print a JSON list of the lines")
    options.add_arguments(p)


def run(a: argparse.Namespace) -> int:
    if a.depth < 0:
        raise errors.UsageError(f"{common.PROG} du: --depth must be 0 or more")
    urls = [parse_s3url(text) for text in a.urls]
    eng = common.engine(a)
    rows, status = [], 0
    for url in urls:
        try:
            found = listing.resolve(eng, url, recursive=True, workers=eng.cfg.workers)
        except errors.S3PipeError as e:
            print(errors.one_line(e, common.PROG), file=sys.stderr)
            status = e.exit_status
            continue
        rows += totals(url, found.entries, a.depth)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['bytes']:>15} {human_size(r['bytes']):>10} {r['streams']:>8} streams {r['objects']:>8} objects"
                  f"  {r['url']}")
    return status


def totals(url, entries, depth: int) -> list[dict]:
    """Rows for the prefixes up to ``depth`` levels below ``url`` (by URL), then ``url``'s."""
    key = url.key.lstrip("/")
    if listing.has_wildcard(key):
        base = listing.directory_of(listing.literal_prefix(key))
    elif len(entries) == 1 and entries[0].key == key.rstrip("/") and entries[0].kind != "dir":
        base = key  # the URL names the one entry
    else:
        base = key + "/" if key and not key.endswith("/") else key
    groups: dict[str, dict] = {}
    whole = _row(str(url))
    for e in entries:
        if e.kind == "dir":
            continue
        parts = e.key[len(base):].split("/")[:-1]  # the prefixes it lies in, below base
        for level in range(1, min(depth, len(parts)) + 1):
            prefix = base + "/".join(parts[:level]) + "/"
            _add(groups.setdefault(prefix, _row(f"s3://{url.bucket}/{prefix}")), e)
        _add(whole, e)
    return [groups[k] for k in sorted(groups)] + [whole]


def _row(url: str) -> dict:
    return {"url": url, "bytes": 0, "streams": 0, "objects": 0}


def _add(row: dict, e) -> None:
    row["bytes"] += e.size
    row["streams" if e.kind == "stream" else "objects"] += 1
