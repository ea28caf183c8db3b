"""`s3pipefs cp SRC DST`: copy streams, objects, local files, stdin/stdout and http(s) URLs.

Argument wiring only: where the bytes go is decided here (see the epilog), how they go is
the engine's (``Engine.copy``, ``upload``, ``upload_url``, ``download``).
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import stat
import sys
import time
from dataclasses import dataclass

from s3pipefs import errors, options
from s3pipefs.commands import common, listing
from s3pipefs.commands.common import PROG
from s3pipefs.config import MiB, parse_size
from s3pipefs.s3url import S3Url, parse_s3url

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
A source with * or ? (s5cmd-style, crossing '/') copies every matching stream and object
into DST, an s3:// prefix or a local directory, each at its key below the pattern's
directory: cp 's3://b/logs/2026-*' restore/ writes restore/2026-01/app.log. A failed match
is reported and the others are still copied (exit status 1).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("src", metavar="SRC", help="s3://bucket/key (or a pattern with * and ?), a local file, "
                   "- (stdin) or an http(s) URL")
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
    p.add_argument("--json", action="store_true",
                   help="print what was copied as a JSON list (source, destination, kind, bytes, seconds)")
    options.add_arguments(p)
    common.add_key_arguments(p)


def _source_kind(eng, s, src: str, source) -> str:
    """"stream" or "object" for a cp source; a clear error for nothing or a directory."""
    from s3pipefs.engine import kinds

    found = eng.find(s.bucket, s.key, request=source)
    if found is None:
        eng.store.bucket_exists(s.bucket)
        raise errors.NotFound(f"{src}: no such stream or object")
    if found.kind == kinds.DIR:
        raise errors.UsageError(f"{src}: is a directory; use `{PROG} sync` to copy a tree")
    return found.kind


@dataclass
class _Job:
    """What every copy of one `cp` shares: arguments, the engine and the URL retrier.

    The engine's request options are the destination's; every call that reads an s3://
    source is given ``source`` (its SSE-C key), so one engine and one store serve both."""
    a: argparse.Namespace
    tcfg: object
    eng: object
    source: object  # RequestOptions of an s3:// source
    part: int
    url_retrier: object  # the store retries its own requests; this, the reads of an http(s) source


def run(a: argparse.Namespace) -> int:
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
    if a.json and dst == "-":
        raise errors.UsageError(f"{PROG} cp: --json and the data cannot share standard output")
    pattern = src_s3 and listing.has_wildcard(parse_s3url(src).key)
    if pattern and dst == "-":
        raise errors.UsageError(f"{PROG} cp: {src} may match several entries: give a directory or an s3:// prefix")
    part = parse_size(a.part_size) if a.part_size else 32 * MiB
    if part < 1:
        raise errors.UsageError("--part-size must be positive")
    source, dest = common.request_options(a)
    job = _Job(a, tcfg, common.engine_over(common.store(a), tcfg, dest), source, part,
               RetryPolicy(tcfg.tries, limiter=RateLimiter()))
    if not pattern:
        done = [_copy(job, src, dst)]
        status = 0
    else:
        done, status = _copy_matches(job, parse_s3url(src), dst)
    if a.json:
        print(json.dumps(done, indent=1))
    return status


def _copy_matches(job: _Job, pattern: S3Url, dst: str) -> tuple[list[dict], int]:
    """Copy every match of a wildcard source under ``dst`` (an s3:// prefix or a local
    directory), each at its key below the directory of the pattern's literal part."""
    from s3pipefs.engine.sync import safe_rel

    found = listing.resolve(job.eng, pattern, recursive=True, workers=job.tcfg.workers, request=job.source)
    base = listing.directory_of(listing.literal_prefix(pattern.key))
    if not dst.startswith("s3://") and os.path.exists(dst) and not os.path.isdir(dst):
        raise errors.UsageError(f"{PROG} cp: {dst}: not a directory ({pattern} may match several entries)")
    done, status = [], 0
    for e in found.entries:
        rel = e.key[len(base):]
        src = f"s3://{pattern.bucket}/{e.key}"
        try:
            if dst.startswith("s3://"):
                target = str(parse_s3url(dst).child(rel))  # DST is a prefix, with or without its '/'
            elif not safe_rel(rel):
                raise errors.S3PipeError(f"{src}: key cannot be a local path safely ('..', '.' or empty parts)")
            else:
                target = os.path.join(dst, *rel.split("/"))
            done.append(_copy(job, src, target, kind=e.kind))
        except errors.S3PipeError as ex:
            print(errors.one_line(ex, PROG), file=sys.stderr)
            status = ex.exit_status
    return done, status


def _copy(job: _Job, src: str, dst: str, kind: str | None = None) -> dict:
    """One copy (the epilog's table); what it did, as --json prints it. ``kind``: the
    source's, when a listing already said."""
    from s3pipefs.engine import transfer
    from s3pipefs.engine.parts import READ_RANGE

    a, workers, part = job.a, job.tcfg.workers, job.part
    eng = job.eng
    t0 = time.monotonic()
    if src.startswith("s3://") and dst.startswith("s3://"):
        s, d = parse_s3url(src), parse_s3url(dst)
        if not d.key or d.key.endswith("/"):
            d = d.child(posixpath.basename(s.key.rstrip("/")))
        kind = kind or _source_kind(eng, s, src, job.source)
        with common.progress(a, f"cp {src}", total=_size(job, s, kind)) as prog:
            r = eng.copy(s.bucket, s.key, d.bucket, d.key, kind=kind, workers=workers,
                         allow_incomplete=a.allow_incomplete, source=job.source, progress=prog.update)
        return _done(a, src, str(d), r.kind, r.size, t0, server_side=True)

    if dst.startswith("s3://"):
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
        if _is_url(src):
            with common.progress(a, f"cp {src}") as prog:
                r = eng.upload_url(src, d.bucket, d.key, as_object=a.object, workers=workers,
                                   part_size=part if a.object else min(part, READ_RANGE),
                                   content_type=a.content_type, resume=a.resume,
                                   retrier=job.url_retrier, progress=prog.update)
        else:
            f = _open_input(src)
            try:
                st = os.fstat(f.fileno()) if src != "-" else None
                regular = st is not None and stat.S_ISREG(st.st_mode)
                with common.progress(a, f"cp {src}", total=st.st_size if regular else None) as prog:
                    if a.object:
                        ctype = a.content_type or (transfer.guess_type(src) if src != "-" else None)
                        r = eng.upload(f, d.bucket, d.key, as_object=True, workers=workers, part_size=part,
                                       content_type=ctype, resume=a.resume, progress=prog.update)
                    else:
                        # A file's time and mode go with it, as with cp -p into a mount.
                        r = eng.upload(f, d.bucket, d.key, resume=a.resume, progress=prog.update,
                                       file_stat=st if regular else None)
            finally:
                if f is not sys.stdin.buffer:
                    f.close()
        what = "object" if a.object else "stream"
        extra = f", {r.skipped_parts} parts already there" if r.skipped_parts else ""
        return _done(a, src, str(d), what, r.size, t0, note=extra)

    # S3 -> local file or stdout
    s = parse_s3url(src)
    kind = kind or _source_kind(eng, s, src, job.source)
    path = dst
    if dst != "-" and (os.path.isdir(dst) or dst.endswith(os.sep)):
        path = os.path.join(dst, posixpath.basename(s.key.rstrip("/")))

    def fetch(out):
        with common.progress(a, f"cp {src}", total=_size(job, s, kind)) as prog:
            return eng.download(s.bucket, s.key, out, kind=kind, workers=workers,
                                part_size=min(part, READ_RANGE), request=job.source, progress=prog.update)
    if path == "-":
        out = sys.stdout.buffer
        r = fetch(out)
        out.flush()
    else:
        r = transfer.download_to_path(fetch, path)
    return _done(a, src, path, kind, r.size, t0)


def _size(job: _Job, s: S3Url, kind: str) -> int | None:
    """The source's size for the progress display (% and ETA), when one is shown."""
    if not common.show_progress(job.a):
        return None
    e = job.eng.stat(s.bucket, s.key, request=job.source)
    return e.size if e is not None and (kind != "stream" or e.complete) else None


def _open_input(src: str):
    if src == "-":
        if sys.stdin.isatty():
            raise errors.UsageError(f"{PROG} cp: refusing to read a terminal; pipe data into it")
        return sys.stdin.buffer
    try:
        return open(src, "rb")
    except OSError as e:
        raise errors.S3PipeError(f"{src}: {e.strerror}") from None


def _done(a, src: str, dst: str, kind: str, size: int, t0: float, *, server_side: bool = False,
          note: str = "") -> dict:
    dt = max(time.monotonic() - t0, 1e-9)
    if getattr(a, "verbose", False):
        how = ", server-side" if server_side else ""
        print(f"{PROG}: {src} -> {dst} ({kind}{how}{note}): {size} bytes in {dt:.1f}s "
              f"({size / dt / MiB:.1f} MiB/s)", file=sys.stderr)
    return {"source": src, "destination": dst, "kind": kind, "bytes": size, "seconds": round(dt, 3),
            "server_side": server_side}


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))
