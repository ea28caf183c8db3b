"""`s3pipefs verify S3URL`: read every segment, check its checksum and the stream's digests.

Exit status 0 when everything checks out, 1 when anything does not (the report says what).
"""
from __future__ import annotations

import argparse
import json

from s3pipefs import options
from s3pipefs.commands import common
from s3pipefs.s3url import parse_s3url

HELP = "read every segment, check its checksum and the whole-stream digests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON: url, ok, size, segments, checked, problems")
    options.add_arguments(p)
    common.add_key_arguments(p, source=False)


def run(a: argparse.Namespace) -> int:
    from s3pipefs.engine.verify import verify_stream

    url = parse_s3url(a.url)
    eng = common.engine(a)
    entry = eng.stat(url.bucket, url.key) if common.show_progress(a) else None  # the size, for % and ETA
    with common.progress(a, f"verify {url}", total=entry.size if entry else None) as prog:
        report = verify_stream(eng, url.bucket, url.key, progress=prog.update)
    if a.json:
        print(json.dumps({"url": report.where, "ok": report.ok, "size": report.size, "segments": report.segments,
                          "checked": report.checked, "problems": report.problems}, indent=1))
    else:
        print(report.summary())
    return 0 if report.ok else 1
