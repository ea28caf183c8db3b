"""`s3pipefs put S3URL` (s3pipe2: `to`): stdin -> stream, uploading while input still arrives.

``put`` replaces an existing stream (the old one stays whole until the new one is
complete); ``to``, as s3pipe2 did, refuses to.

``--resume`` feeds the same input again to an incomplete stream (what is uploaded is
checked and skipped); ``--append`` adds to the end of an existing one. An interrupt
leaves the stream incomplete and resumable, never complete and short.
"""
from __future__ import annotations

import argparse
import sys

from s3pipefs import errors, options
from s3pipefs.commands import common
from s3pipefs.s3url import parse_s3url

HELP = "stdin -> stream (upload while input is still arriving)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--resume", action="store_true", help="continue an incomplete stream: feed the same input again; "
                   "bytes already uploaded are checked and skipped")
    m.add_argument("--append", action="store_true", help="add to the end of an existing stream")
    options.add_arguments(p, s3pipe2=True)  # to/from
    common.add_key_arguments(p, source=False)


def run(a: argparse.Namespace) -> int:
    url = parse_s3url(a.url)
    eng = common.engine(a)
    if sys.stdin.isatty():
        raise errors.UsageError(f"{common.PROG} put: refusing to read a terminal; pipe data into it")
    mode = "resume" if a.resume else "append" if a.append else "create"
    if mode == "create" and getattr(a, "command", None) == "to" and eng.stat(url.bucket, url.key) is not None:
        # s3pipe2 refused to overwrite; scripts written for it may rely on that.
        raise errors.Exists(f"{url}: exists, and `to` (as s3pipe2) does not replace it; "
                            f"remove it first, or replace it with `{common.PROG} put`")
    bufsize = (getattr(a, "buffer_kb", 0) or options.DEFAULT_BUFFER_KB) * 1024
    bufsize = max(bufsize, 64 * 1024)  # s3pipe2's 4 KB default costs CPU and gains nothing
    writer = eng.open_writer(url.bucket, url.key, mode)
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    common.widen_pipe(stdin.fileno())
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with common.progress(a, f"put {url}", total=common.input_size(stdin.fileno())) as prog:
        try:
            while True:
                n = stdin.readinto(buf)
                if not n:
                    break
                writer.write(view[:n])
                prog.update(n)
            writer.close()
        except KeyboardInterrupt:
            writer.abort()
            raise errors.Interrupted(f"put {url}: interrupted; the stream is left incomplete "
                                     "(continue it with put --resume)") from None
        except BaseException:
            writer.abort()
            raise
    if getattr(a, "verbose", False):
        print(f"{common.PROG}: {url}: {writer.offset} bytes, complete", file=sys.stderr)
    return 0
