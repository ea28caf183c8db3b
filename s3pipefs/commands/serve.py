"""`s3pipefs serve`: run a local S3 server (SeaweedFS) in the foreground for trying s3pipefs.

Prints shell ``export`` lines that point AWS tools (and s3pipefs) at it, then runs until
SIGINT or SIGTERM and stops it. The server itself is ``LocalServer`` in server.py.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

HELP = "run a local S3 server (SeaweedFS) for trying s3pipefs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from s3pipefs.server import DEFAULT_DATA_DIR, LOOPBACK

    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"where the data, keys and log live (default {DEFAULT_DATA_DIR})")
    p.add_argument("--host", default=LOOPBACK,
                   help="address the S3 endpoint listens on (default 127.0.0.1); "
                        "SeaweedFS's internal ports always stay on loopback")
    p.add_argument("--port", type=int, default=8333, help="S3 port (default 8333; 0 = any free port)")
    p.add_argument("--bucket", action="append", default=[], metavar="NAME",
                   help="create this bucket if it does not exist (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Run a LocalServer until SIGINT/SIGTERM; return the exit status."""
    from s3pipefs.errors import S3PipeError, UsageError
    from s3pipefs.server import LocalServer, bucket_name_problem, create_buckets, export_lines

    if not 0 <= args.port <= 65535:
        print(f"s3pipefs serve: not a TCP port: {args.port}", file=sys.stderr)
        return UsageError.exit_status
    for name in args.bucket:  # before SeaweedFS starts: a bad name costs nothing
        problem = bucket_name_problem(name)
        if problem:
            print(f"s3pipefs serve: invalid bucket name {name!r}: {problem}", file=sys.stderr)
            return UsageError.exit_status
    stop = threading.Event()
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, lambda *_: stop.set())
    server = LocalServer(args.data_dir, host=args.host, port=args.port)
    started = False
    try:
        server.start()
        started = True
        if stop.is_set():
            return 0
        create_buckets(server, args.bucket)
        print("\n".join(export_lines(server)), flush=True)
        print(f"s3pipefs serve: ready in {server.startup_seconds:.1f}s; log in {server.log_path}; "
              "stop with Ctrl-C", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if not server.running():
                print(f"s3pipefs serve: SeaweedFS exited unexpectedly; see {server.log_path}",
                      file=sys.stderr)
                return 1
        return 0
    except S3PipeError as e:
        print(f"s3pipefs serve: {e}", file=sys.stderr)
        return e.exit_status
    finally:
        server.stop()
        if started:
            print("s3pipefs serve: stopped", file=sys.stderr, flush=True)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
