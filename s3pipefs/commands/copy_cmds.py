"""`s3pipefs cp`, `s3pipefs sync` and `s3pipefs abort`: argument wiring, no transfer logic.

cli.py adds the common S3 and transfer options (--endpoint-url, --workers/-n, --verbose/-v,
--quiet/-q, --segment-size, ...) to each subparser and then calls ``add_*_arguments`` for
the options below, so none of those names may be reused here. It calls
``*_main(args, store, tcfg)`` with a Store (or a zero-argument factory of one) and the
TransferConfig built from the common options; each returns the exit status.

SSE-C keys come from files (``--sse-c-key-file``, ``--source-sse-c-key-file``) or from the
environment (``S3PIPEFS_SSE_C_KEY``, ``S3PIPEFS_SOURCE_SSE_C_KEY``), never from the command
line where ``ps`` shows them. A key is 32 raw bytes, 64 hex digits or base64 of 32 bytes.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import datetime as _dt
import json
import os
import posixpath
import re
import stat
import sys
import time

from s3pipefs import errors
from s3pipefs.config import MiB, TransferConfig, parse_duration, parse_size
from s3pipefs.s3 import Store

PROG = "s3pipefs"
KEY_ENV = "S3PIPEFS_SSE_C_KEY"
SOURCE_KEY_ENV = "S3PIPEFS_SOURCE_SSE_C_KEY"
DEFAULT_SYNC_WORKERS = 16
DEFAULT_CHECKERS = 16


# -- shared helpers ---------------------------------------------------------------------------------

def _store(store_or_factory) -> Store:
    if isinstance(store_or_factory, Store) or not callable(store_or_factory):
        return store_or_factory
    return store_or_factory()


def _with_key(store: Store, key: bytes | None) -> Store:
    """A store whose default SSE-C key is ``key`` (for the engine's reader/writer)."""
    if (store.cfg.sse_c_key or None) == (key or None):
        return store
    return Store(dataclasses.replace(store.cfg, sse_c_key=key or None))


def parse_key(data: bytes, where: str) -> bytes:
    """32 raw bytes, 64 hex digits or base64 of 32 bytes; trailing whitespace ignored."""
    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 32:
        return text
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return raw
    except (binascii.Error, ValueError):
        pass
    raise errors.UsageError(f"{where}: an SSE-C key must be 32 bytes (raw, 64 hex digits or base64)")


def load_key(path: str | None, env_name: str) -> bytes | None:
    """The key from ``path``, else from ``$env_name``, else None. Never logged."""
    if path:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(1024)
        except OSError as e:
            raise errors.UsageError(f"{path}: cannot read the SSE-C key file: {e.strerror}") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            print(f"{PROG}: warning: {path}: the SSE-C key file is readable by other users (chmod 600 it)",
                  file=sys.stderr)
        return parse_key(data, path)
    env = os.environ.get(env_name)
    if env:
        return parse_key(env.encode(), f"${env_name}")
    return None


def _add_key_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SSE-C (customer-provided encryption keys)")
    g.add_argument("--sse-c-key-file", metavar="FILE",
                   help=f"key for the destination (default: ${KEY_ENV} if set). 32 raw bytes, 64 hex "
                        "digits or base64; never pass keys on the command line")
    g.add_argument("--source-sse-c-key-file", metavar="FILE",
                   help=f"key that decrypts the source (default: ${SOURCE_KEY_ENV}, else the "
                        "destination key); a different one re-encrypts on copy")


def _keys(a) -> tuple[bytes, bytes]:
    """(source key, destination key); b"" means no key. The source defaults to the destination's."""
    dkey = load_key(getattr(a, "sse_c_key_file", None), KEY_ENV) or b""
    skey = load_key(getattr(a, "source_sse_c_key_file", None), SOURCE_KEY_ENV)
    return (dkey if skey is None else skey), dkey


def _show_progress(a) -> bool:
    return bool(getattr(a, "verbose", False)) or (sys.stderr.isatty() and not getattr(a, "quiet", False))


def _progress(a, desc: str, total: int | None = None):
    from s3pipefs.progress import Progress

    return Progress(desc, total=total, enabled=_show_progress(a) and not getattr(a, "json", False))


def _run(fn, *args) -> int:
    """Errors as one line on stderr; the exit status of the error class."""
    try:
        return int(fn(*args) or 0)
    except errors.S3PipeError as e:
        if os.environ.get("S3PIPEFS_DEBUG"):
            raise
        print(errors.one_line(e, PROG), file=sys.stderr)
        return e.exit_status


def _tcfg(a, tcfg: TransferConfig | None) -> TransferConfig:
    return tcfg if tcfg is not None else TransferConfig()


def _workers(a, tcfg: TransferConfig, default: int | None = None) -> int:
    if hasattr(a, "workers") and a.workers is not None:
        return a.workers
    return default if default is not None else tcfg.workers


def _engine(store: Store, tcfg: TransferConfig):
    from s3pipefs.engine import Engine

    return Engine(store, tcfg)


def _parse_s3(text: str):
    from s3pipefs.s3url import parse_s3url

    return parse_s3url(text)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


# -- cp ---------------------------------------------------------------------------------------------

CP_EPILOG = """\
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


def add_cp_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = CP_EPILOG
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
    _add_key_options(p)


def _source_kind(s3, s, src: str, skey) -> str:
    """"stream" or "object" for a cp source; a clear error for nothing or a directory."""
    from s3pipefs.engine import copy as copy_mod

    kind = copy_mod.entry_kind(s3, s.bucket, s.key, sse_key=skey)
    if kind is None:
        s3.bucket_exists(s.bucket)
        raise errors.NotFound(f"{src}: no such stream or object")
    if kind == "dir":
        raise errors.UsageError(f"{src}: is a directory; use `{PROG} sync` to copy a tree")
    return kind


def cp_main(args, store, tcfg: TransferConfig | None = None) -> int:
    """Entry point of `s3pipefs cp`; returns the exit status."""
    return _run(_cp, args, store, tcfg)


def _cp(a, store_or_factory, tcfg) -> int:
    from s3pipefs.engine import copy as copy_mod
    from s3pipefs.engine import transfer
    from s3pipefs.s3.retry import RateLimiter, RetryPolicy

    tcfg = _tcfg(a, tcfg)
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
    skey, dkey = _keys(a)
    base = _store(store_or_factory)
    s3 = _with_key(base, None)  # explicit keys on every call below
    workers = _workers(a, tcfg)
    # The store retries its own requests; this policy retries the reads of an http(s) source.
    url_retrier = RetryPolicy(tcfg.tries, limiter=RateLimiter())
    t0 = time.monotonic()

    if src_s3 and dst_s3:
        s, d = _parse_s3(src), _parse_s3(dst)
        if not d.key or d.key.endswith("/"):
            d = d.child(posixpath.basename(s.key.rstrip("/")))
        kind = _source_kind(s3, s, src, skey)
        with _progress(a, f"cp {src}") as prog:
            if kind == "stream":
                r = copy_mod.copy_stream(s3, s.bucket, s.key, d.bucket, d.key, workers,
                                         allow_incomplete=a.allow_incomplete, source_sse_key=skey, sse_key=dkey,
                                         cfg=tcfg, progress=prog.update)
            else:
                r = copy_mod.copy_object(s3, s.bucket, s.key, d.bucket, d.key, workers=workers,
                                         source_sse_key=skey, sse_key=dkey, progress=prog.update)
        _done(a, f"{src} -> {d} ({r.kind}, server-side)", r.size, t0)
        return 0

    if dst_s3:
        d = _parse_s3(dst)
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
        with _progress(a, f"cp {src}") as prog:
            if _is_url(src):
                if a.object:
                    r = transfer.url_to_object(s3, src, d.bucket, d.key, workers=workers, part_size=part,
                                               content_type=a.content_type, sse_key=dkey, resume=a.resume,
                                               retrier=url_retrier, progress=prog.update)
                else:
                    eng = _engine(_with_key(base, dkey), tcfg)
                    r = transfer.url_to_stream(eng, src, d.bucket, d.key, workers=workers,
                                               part_size=min(part, transfer.DEFAULT_RANGE), resume=a.resume,
                                               retrier=url_retrier, progress=prog.update)
            else:
                f = _open_input(src)
                try:
                    if a.object:
                        ctype = a.content_type or (transfer.guess_type(src) if src != "-" else None)
                        r = transfer.upload_file(s3, f, d.bucket, d.key, workers=workers, part_size=part,
                                                 content_type=ctype, sse_key=dkey, resume=a.resume,
                                                 progress=prog.update)
                    else:
                        eng = _engine(_with_key(base, dkey), tcfg)
                        # A file's time and mode go with it, as with cp -p into a mount.
                        st = os.fstat(f.fileno()) if src != "-" else None
                        r = transfer.upload_to_stream(eng, f, d.bucket, d.key,
                                                      mode="resume" if a.resume else "create", progress=prog.update,
                                                      file_stat=st if st and stat.S_ISREG(st.st_mode) else None)
                finally:
                    if f is not sys.stdin.buffer:
                        f.close()
        what = "object" if a.object else "stream"
        extra = f", {r.skipped_parts} parts already there" if r.skipped_parts else ""
        _done(a, f"{src} -> {d} ({what}{extra})", r.size, t0)
        return 0

    # S3 -> local file or stdout
    s = _parse_s3(src)
    kind = _source_kind(s3, s, src, skey)
    path = dst
    if dst != "-" and (os.path.isdir(dst) or dst.endswith(os.sep)):
        path = os.path.join(dst, posixpath.basename(s.key.rstrip("/")))

    def fetch(out):
        with _progress(a, f"cp {src}") as prog:
            if kind == "stream":
                eng = _engine(_with_key(base, skey), tcfg)
                return transfer.download_stream(eng, s.bucket, s.key, out, progress=prog.update)
            return transfer.download_object(s3, s.bucket, s.key, out, workers=workers,
                                            part_size=min(part, transfer.DEFAULT_RANGE), sse_key=skey,
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


# -- sync -------------------------------------------------------------------------------------------

SYNC_EPILOG = """\
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
Exit status 0 when everything was transferred, 1 when anything failed (failures listed
on stderr; --delete then deletes nothing), 2 for usage errors.
"""


class _FilterAction(argparse.Action):
    def __call__(self, parser, ns, values, option_string=None):
        rules = list(getattr(ns, "filters", None) or [])
        rules.append((self.const, values))
        setattr(ns, "filters", rules)


def add_sync_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = SYNC_EPILOG
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
    p.add_argument("--json", action="store_true", help="print the summary and failures as JSON on stdout")
    p.set_defaults(filters=[])
    _add_key_options(p)


def sync_main(args, store, tcfg: TransferConfig | None = None) -> int:
    """Entry point of `s3pipefs sync`; returns the exit status (1 when anything failed)."""
    return _run(_sync, args, store, tcfg)


def _sync(a, store_or_factory, tcfg) -> int:
    from s3pipefs.engine.sync import LocalLoc, S3Loc, Sync, SyncOptions, parse_location

    tcfg = _tcfg(a, tcfg)
    src, dst = parse_location(a.src), parse_location(a.dst)
    skey, dkey = _keys(a)
    base = _store(store_or_factory)
    workers = _workers(a, tcfg, DEFAULT_SYNC_WORKERS)
    checkers = a.checkers or DEFAULT_CHECKERS
    if not 1 <= workers <= 256 or not 1 <= checkers <= 256:
        raise errors.UsageError("--workers and --checkers must be between 1 and 256")
    opts = SyncOptions(
        mode="existing" if a.existing_only else "checksum" if a.checksum else "etag",
        delete=a.delete, dry_run=a.dry_run, filters=list(a.filters or []), workers=workers,
        checkers=checkers, part_size=parse_size(a.part_size) if a.part_size else 32 * MiB,
        allow_incomplete=a.allow_incomplete, source_sse_key=skey, sse_key=dkey)
    s3 = _with_key(base, None)
    engine = None
    if isinstance(src, S3Loc) or isinstance(dst, S3Loc):
        # Streams: read with the source key (S3 -> local); S3 -> S3 uses explicit keys.
        try:
            engine = _engine(_with_key(base, skey if isinstance(dst, LocalLoc) else dkey), tcfg)
        except ImportError:
            engine = None
    bar = None
    if _show_progress(a) and not a.json:
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
        report = Sync(s3, src, dst, opts, engine=engine, progress=progress).run()
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
        print(report.summary())
    return 1 if report.failed or report.failures else 0


# -- abort ------------------------------------------------------------------------------------------

def add_abort_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="S3URL", help="s3://bucket[/prefix]: uploads whose key starts with the prefix")
    p.add_argument("--dry-run", "--list", dest="dry_run", action="store_true",
                   help="only list the unfinished uploads")
    p.add_argument("--older-than", metavar="AGE",
                   help="only uploads started at least this long ago, e.g. 1h (keeps uploads in progress)")
    p.add_argument("--json", action="store_true", help="print the uploads as JSON")


def abort_main(args, store, tcfg: TransferConfig | None = None) -> int:
    """Entry point of `s3pipefs abort`: list and cancel unfinished multipart uploads."""
    return _run(_abort, args, store, tcfg)


def _abort(a, store_or_factory, tcfg) -> int:
    url = _parse_s3(a.url)
    s3 = _store(store_or_factory)
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
