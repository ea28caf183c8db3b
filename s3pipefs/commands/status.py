"""`s3pipefs status [MOUNTPOINT]`: what a running mount is doing.

Each mount daemon answers on a private unix socket (s3pipefs/status.py says where,
fs/status.py what): its open writers (bytes written, uploaded, staged here, segments in
flight), its open readers, and its request counters (requests, retries, throttles,
failures, the current request-rate limit). Without a mount point: one line per running
mount. ``--json`` prints the daemons' documents as they are.
"""
from __future__ import annotations

import argparse
import json
import os

from s3pipefs import errors
from s3pipefs.commands.common import PROG, request_counts

HELP = "show what running mounts are doing: open files, uploads, requests, retries"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", nargs="?", help="a mount point (default: every running mount, one line each)")
    p.add_argument("--json", action="store_true", help="print the status as JSON on stdout")


def run(a: argparse.Namespace) -> int:
    from s3pipefs import status
    from s3pipefs.progress import human_size

    if a.mountpoint:
        try:
            doc = status.query(status.socket_path(a.mountpoint))
        except OSError:
            raise errors.NotFound(f"{os.path.abspath(a.mountpoint)}: no running {PROG} mount answers there") from None
        if a.json:
            print(json.dumps(doc, indent=1))
            return 0
        print(f"{doc['mountpoint']}: {doc['source']} (pid {doc['pid']}, up {doc['uptime_seconds']:.0f}s)")
        for w in doc["writers"]:
            line = f"  writing {w['path']}: {human_size(w.get('written', w['size']))} written"
            if "uploaded" in w:
                line += (f", {human_size(w['uploaded'])} uploaded, {human_size(w['staged'])} staged, "
                         f"{w['segments_in_flight']} segments in flight")
            if "inflight_limit" in w:
                line += f" (at most {w['inflight_limit']} now)"
            line += f" [{w['state']}]" + (f" error: {w['error']}" if "error" in w else "")
            print(line)
        for r in doc["readers"]:
            print(f"  reading {r['path']}" + (f" ({human_size(r['size'])})" if r["size"] is not None else ""))
        limit = f"; request rate limited to {doc['rate_limit']}/s" if doc["rate_limit"] else ""
        print(f"  {request_counts(doc['requests'])}{limit}")
        return 0
    docs = status.running()
    if a.json:
        print(json.dumps(docs, indent=1))
        return 0
    for doc in docs:
        c = doc["requests"]
        print(f"{doc['mountpoint']}\t{doc['source']}\t{len(doc['writers'])} writing\t{len(doc['readers'])} reading"
              f"\t{c['requests']} requests\t{c['retries']} retried\t{c['throttles']} throttled"
              f"\t{c['gave_up']} failed")
    return 0
