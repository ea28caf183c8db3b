"""`s3pipefs cp SRC DST`: copy streams, objects, local files, stdin/stdout and http(s) URLs.

Argument wiring only: where the bytes go is decided here (see the epilog), how they go is
the engine's (``Engine.copy``, ``upload``, ``upload_url``, ``download``).
"""
from __future__ import annotations

import argparse
import os
import posixpath
import re
import stat
import sys
import time

from s3pipefs import errors, options
from s3pipefs.commands import common
from s3pipefs.commands.common import PROG
from s3pipefs.config import MiB, parse_size
from s3pipefs.s3url import parse_s3url

HELP = "copy streams, objects, files and URLs"

EPILOG = """\
Where the data goes:
  s3://A  -> s3://B    server-side: CopyObject per segment (UploadPartCopy for objects over
                       5 GB) in parallel, manifest last; no payload passes through this machine
  FILE|-  -> s3://B    a stream (default) or, with --object, a plain object (parallel multipart)
  URL     -> s3://B    http(s): parallel ranged GETs when the server supports ranges, else one
                       streamed GET; a stream, or a plain object with --object
  s3://A  -> FILE|-    parallel ranged reads (objects) or the verified stream reader
--resume continues an interrupted upload: for --object the unfinished multipart upload (parts
already there are skipped; `s3pipefs abort` cancels it), for a stream the writer's resume
(the same input is read again from its start and checked; only the rest is uploaded).
An incomplete source stream is refused unless --allow-incomplete; its copy stays incomplete.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("src", metavar="SRC", help="s3://bucket/key, a local file, - (stdin) or an http(s) URL")
    p.add_argument("dst", metavar="DST", help="s3://bucket/key, a local file or directory, or - (stdout)")
    p.add_argument("--object", action="store_true",
                   help="write a plain S3 object instead of a stream (local file, stdin or URL source)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted upload (see below)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="copy an incomplete stream as far as it goes (the copy stays incomplete)")
    p.add_argument("--part-size", metavar="SIZE",
                   help="multipart part / ranged GET size for objects and URLs (default 32M; grown to "
                        "fit 10,000 parts)")
    p.add_argument("--content-type", metavar="TYPE", help="Content-Type of a new object (default: from the name)")
    options.add_arguments(p)
    common.add_key_arguments(p)


def _source_kind(eng, s, src: str, skey) -> str:
    """"stream" or "object" for a cp source; a clear error for nothing or a directory."""
    from s3pipefs.engine import kinds

    found = eng.find(s.bucket, s.key, sse_key=skey)
    if found is None:
        eng.store.bucket_exists(s.bucket)
        raise errors.NotFound(f"{src}: no such stream or object")
    if found.kind == kinds.DIR:
        raise errors.UsageError(f"{src}: is a directory; use `{PROG} sync` to copy a tree")
    return found.kind


def run(a: argparse.Namespace) -> int:
    from s3pipefs.engine import transfer
    from s3pipefs.engine.parts import READ_RANGE
    from s3pipefs.s3.retry import RateLimiter, RetryPolicy

    tcfg = common.transfer_config(a)
    src, dst = a.src, a.dst
    src_s3, dst_s3 = src.startswith("s3://"), dst.startswith("s3://")
    for loc in (src, dst):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", loc) and not (loc.startswith("s3://") or _is_url(loc)):
            raise errors.UsageError(f"{PROG} cp: {loc}: only s3://, http(s):// and local paths are understood")
    if not src_s3 and not dst_s3:
        raise errors.UsageError(f"{PROG} cp: one of SRC and DST must be an s3:// location")
    if _is_url(dst):
        raise errors.UsageError(f"{PROG} cp: cannot copy to an http(s) URL")
    if _is_url(src) and not dst_s3:
        raise errors.UsageError(f"{PROG} cp: an http(s) source can only be copied to s3://")
    part = parse_size(a.part_size) if a.part_size else 32 * MiB
    if part < 1:
        raise errors.UsageError("--part-size must be positive")
    skey, dkey = common.keys(a)
    base = common.store(a)
    # Explicit keys on every call below but a stream's reader and writer, which use the
    # store's: the source's when reading to a local file, else the destination's.
    eng = common.engine_over(common.store_with_key(base, skey if src_s3 and not dst_s3 else dkey), tcfg)
    workers = tcfg.workers
    # The store retries its own requests; this policy retries the reads of an http(s) source.
    url_retrier = RetryPolicy(tcfg.tries, limiter=RateLimiter())
    t0 = time.monotonic()

    if src_s3 and dst_s3:
        s, d = parse_s3url(src), parse_s3url(dst)
        if not d.key or d.key.endswith("/"):
            d = d.child(posixpath.basename(s.key.rstrip("/")))
        kind = _source_kind(eng, s, src, skey)
        with common.progress(a, f"cp {src}") as prog:
            r = eng.copy(s.bucket, s.key, d.bucket, d.key, kind=kind, workers=workers,
                         allow_incomplete=a.allow_incomplete, source_sse_key=skey, sse_key=dkey,
                         progress=prog.update)
        _done(a, f"{src} -> {d} ({r.kind}, server-side)", r.size, t0)
        return 0

    if dst_s3:
        d = parse_s3url(dst)
        if _is_url(src):
            name = posixpath.basename(src.split("?", 1)[0].rstrip("/")) or "index"
        elif src == "-":
            name = ""
        else:
            name = os.path.basename(src.rstrip("/"))
            if os.path.isdir(src):
                raise errors.UsageError(f"{src}: is a directory; use `{PROG} sync` to copy a tree")
        if not d.key or d.key.endswith("/"):
            if not name:
                raise errors.UsageError(f"{dst}: give the stream or object a name (stdin has none)")
            d = d.child(name)
        with common.progress(a, f"cp {src}") as prog:
            if _is_url(src):
                r = eng.upload_url(src, d.bucket, d.key, as_object=a.object, workers=workers,
                                   part_size=part if a.object else min(part, READ_RANGE),
                                   content_type=a.content_type, sse_key=dkey, resume=a.resume,
                                   retrier=url_retrier, progress=prog.update)
            else:
                f = _open_input(src)
                try:
                    if a.object:
                        ctype = a.content_type or (transfer.guess_type(src) if src != "-" else None)
                        r = eng.upload(f, d.bucket, d.key, as_object=True, workers=workers, part_size=part,
                                       content_type=ctype, sse_key=dkey, resume=a.resume,
                                       progress=prog.update)
                    else:
                        # A file's time and mode go with it, as with cp -p into a mount.
                        st = os.fstat(f.fileno()) if src != "-" else None
                        r = eng.upload(f, d.bucket, d.key, resume=a.resume, progress=prog.update,
                                       file_stat=st if st and stat.S_ISREG(st.st_mode) else None)
                finally:
                    if f is not sys.stdin.buffer:
                        f.close()
        what = "object" if a.object else "stream"
        extra = f", {r.skipped_parts} parts already there" if r.skipped_parts else ""
        _done(a, f"{src} -> {d} ({what}{extra})", r.size, t0)
        return 0

    # S3 -> local file or stdout
    s = parse_s3url(src)
    kind = _source_kind(eng, s, src, skey)
    path = dst
    if dst != "-" and (os.path.isdir(dst) or dst.endswith(os.sep)):
        path = os.path.join(dst, posixpath.basename(s.key.rstrip("/")))

    def fetch(out):
        with common.progress(a, f"cp {src}") as prog:
            return eng.download(s.bucket, s.key, out, kind=kind, workers=workers,
                                part_size=min(part, READ_RANGE), sse_key=skey,
                                progress=prog.update)
    if path == "-":
        out = sys.stdout.buffer
        r = fetch(out)
        out.flush()
    else:
        r = transfer.download_to_path(fetch, path)
    _done(a, f"{src} -> {path} ({kind})", r.size, t0)
    return 0


def _open_input(src: str):
    if src == "-":
        if sys.stdin.isatty():
            raise errors.UsageError(f"{PROG} cp: refusing to read a terminal; pipe data into it")
        return sys.stdin.buffer
    try:
        return open(src, "rb")
    except OSError as e:
        raise errors.S3PipeError(f"{src}: {e.strerror}") from None


def _done(a, what: str, size: int, t0: float) -> None:
    if getattr(a, "verbose", False):
        dt = max(time.monotonic() - t0, 1e-9)
        print(f"{PROG}: {what}: {size} bytes in {dt:.1f}s ({size / dt / MiB:.1f} MiB/s)", file=sys.stderr)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))
