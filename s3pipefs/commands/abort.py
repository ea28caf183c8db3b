"""`s3pipefs abort S3URL`: list, and unless --dry-run cancel, unfinished multipart uploads.

``--older-than`` keeps uploads younger than an age, so one still in progress is left alone.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time

from s3pipefs import errors, options
from s3pipefs.commands import common
from s3pipefs.commands.common import PROG
from s3pipefs.config import parse_duration
from s3pipefs.s3url import parse_s3url

HELP = "list or cancel unfinished multipart uploads"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL", help="s3://bucket[/prefix]: uploads whose key starts with the prefix")
    p.add_argument("--dry-run", "--list", dest="dry_run", action="store_true",
                   help="only list the unfinished uploads")
    p.add_argument("--older-than", metavar="AGE",
                   help="only uploads started at least this long ago, e.g. 1h (keeps uploads in progress)")
    p.add_argument("--json", action="store_true", help="print the uploads as JSON")
    options.add_arguments(p)


def run(a: argparse.Namespace) -> int:
    url = parse_s3url(a.url)
    s3 = common.store(a)
    min_age = parse_duration(a.older_than) if a.older_than else 0.0
    now = time.time()
    rows, status = [], 0
    for u in list(s3.mpu_list(url.bucket, url.key)):
        started = u.get("Initiated")
        ts = started.timestamp() if isinstance(started, _dt.datetime) else 0.0
        row = {"key": u["Key"], "upload_id": u["UploadId"],
               "initiated": started.isoformat() if isinstance(started, _dt.datetime) else None,
               "action": "listed"}
        if min_age and ts and now - ts < min_age:
            row["action"] = "kept (younger than --older-than)"
        elif not a.dry_run:
            try:
                s3.mpu_abort(url.bucket, u["Key"], u["UploadId"])
                row["action"] = "aborted"
            except errors.NotFound:
                row["action"] = "gone"
            except errors.S3PipeError as e:
                row["action"] = f"failed: {e}"
                print(errors.one_line(e, PROG), file=sys.stderr)
                status = 1
        rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['action']:<8} s3://{url.bucket}/{r['key']}  upload {r['upload_id']}  started {r['initiated']}")
        n = sum(r["action"] == "aborted" for r in rows)
        print(f"{len(rows)} unfinished uploads under {a.url}" + (f", {n} aborted" if not a.dry_run else ""),
              file=sys.stderr)
    return status
