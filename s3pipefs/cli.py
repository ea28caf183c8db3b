"""Command line: argument parsing into config objects, then one call into the engine.

``s3pipefs to|from PATH`` with s3pipe2's flags (-m MB, -b KB, -p, -n, -t, -r, -v, and -a/-s
with a warning) keeps ``alias s3pipe2=s3pipefs`` working. Every failure is one line on
stderr and exit status 1 (2 for usage errors); no tracebacks unless S3PIPEFS_DEBUG is set.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import signal
import sys
import threading

from s3pipefs import __version__, errors
from s3pipefs.config import MiB, S3Config, TransferConfig, parse_duration, parse_size
from s3pipefs.memory import tune_malloc
from s3pipefs.s3url import parse_s3url

PROG = "s3pipefs"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        raise errors.UsageError(f"{self.prog}: {message}")


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3 connection (defaults from the AWS environment)")
    g.add_argument("--endpoint-url", default=argparse.SUPPRESS, help="S3 endpoint (default: $AWS_ENDPOINT_URL or AWS)")
    g.add_argument("--profile", default=argparse.SUPPRESS, help="AWS profile (default: $AWS_PROFILE)")
    g.add_argument("--region", "-r", default=argparse.SUPPRESS, help="S3 region")
    g.add_argument("-a", dest="access_key", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    g.add_argument("-s", dest="secret_key", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_transfer_options(p: argparse.ArgumentParser) -> None:
    d = TransferConfig.__dataclass_fields__  # the defaults the help text states
    g = p.add_argument_group("transfer")
    g.add_argument("--segment-size", default=argparse.SUPPRESS, metavar="SIZE",
                   help=f"segment size for new streams, e.g. 64M (default {d['segment_size'].default // MiB}M)")
    g.add_argument("-m", dest="segment_mb", type=int, default=argparse.SUPPRESS, metavar="MB",
                   help="segment size in MB (s3pipe2 compatible)")
    g.add_argument("--workers", "-n", type=int, default=argparse.SUPPRESS, help=f"parallel S3 requests (default {d['workers'].default})")
    g.add_argument("--staging", "-p", default=argparse.SUPPRESS, metavar="DIR",
                   help="staging directory for segments (default $TMPDIR or /tmp)")
    g.add_argument("--tries", "-t", type=int, default=argparse.SUPPRESS, help=f"attempts per S3 request and per segment (default {d['tries'].default})")
    g.add_argument("-b", dest="buffer_kb", type=int, default=argparse.SUPPRESS, metavar="KB",
                   help="read buffer in KB (s3pipe2 compatible; default 1024)")
    g.add_argument("--follow-timeout", default=argparse.SUPPRESS, metavar="SECONDS",
                   help=f"give up on a stream whose writer is silent this long (default {d['follow_timeout'].default:g}s)")
    g.add_argument("--read-ahead", default=argparse.SUPPRESS, metavar="SIZE", help=f"bytes fetched ahead (default {d['read_ahead'].default // MiB}M)")
    g.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="progress and details on stderr")
    g.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress display")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    top = _Parser(prog=PROG, description="S3 as a pipe and as a disk for huge sequential data.")
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_s3_options(top)
    _add_transfer_options(top)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def cmd(name, help, aliases=()):
        p = sub.add_parser(name, help=help, description=help, aliases=list(aliases))
        _add_s3_options(p)
        _add_transfer_options(p)
        return p

    p = cmd("put", "stdin -> stream (upload while input is still arriving)", aliases=["to"])
    p.add_argument("url", metavar="S3URL")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--resume", action="store_true", help="continue an incomplete stream: feed the same input again; "
                   "bytes already uploaded are checked and skipped")
    m.add_argument("--append", action="store_true", help="add to the end of an existing stream")
    p.set_defaults(func=cmd_put)

    p = cmd("cat", "stream or object -> stdout (follows a stream that is still being written)", aliases=["from"])
    p.add_argument("url", metavar="S3URL")
    p.add_argument("--offset", default="0", help="start at this byte offset")
    p.add_argument("--no-follow", action="store_true", help="stop at the current end of an incomplete stream")
    p.set_defaults(func=cmd_cat)

    p = cmd("ls", "list streams, objects and prefixes")
    p.add_argument("url", metavar="S3URL")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = cmd("info", "show a stream's manifest and state")
    p.add_argument("url", metavar="S3URL")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = cmd("verify", "read every segment, check its checksum and the whole-stream digests")
    p.add_argument("url", metavar="S3URL")
    p.set_defaults(func=cmd_verify)

    p = cmd("rm", "remove streams or objects")
    p.add_argument("urls", metavar="S3URL", nargs="+")
    p.set_defaults(func=cmd_rm)

    _optional_commands(sub, argv)
    return top


# Subcommands living in their own modules: (name, help, module). A module is imported only
# when its command runs, so `put` and `cat` start without loading FUSE or sync code.
_OPTIONAL = (
    ("serve", "run a local S3 server (SeaweedFS) for trying s3pipefs", "s3pipefs.server"),
    ("mount", "mount a bucket (or bucket/prefix) as a filesystem", "s3pipefs.fs.mount"),
    ("cp", "copy streams, objects, files and URLs", "s3pipefs.commands.copy_cmds"),
    ("sync", "sync prefixes, buckets and directories", "s3pipefs.commands.copy_cmds"),
    ("abort", "list or cancel unfinished multipart uploads", "s3pipefs.commands.copy_cmds"),
)


def _optional_commands(sub, argv) -> None:
    import importlib

    wanted = set(argv or ())
    for name, help, modname in _OPTIONAL:
        p = sub.add_parser(name, help=help, description=help)
        if name not in wanted:
            continue
        mod = importlib.import_module(modname)
        if name == "serve":
            mod.add_serve_arguments(p)
            p.set_defaults(func=mod.serve_main)
        elif name == "mount":
            mod.add_mount_arguments(p)
            p.set_defaults(func=mod.mount_main)
        else:
            _add_s3_options(p)
            _add_transfer_options(p)
            getattr(mod, f"add_{name}_arguments")(p)
            runner = getattr(mod, f"{name}_main")
            p.set_defaults(func=lambda a, r=runner: r(a, make_store(a), make_transfer_config(a)))


# -- building config from arguments -------------------------------------------------------
def make_s3_config(a) -> S3Config:
    if getattr(a, "access_key", None) or getattr(a, "secret_key", None):
        print(f"{PROG}: warning: -a/-s put credentials on the command line where other users can see them; "
              "they are ignored — use AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials",
              file=sys.stderr)
    return S3Config(
        endpoint_url=getattr(a, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL") or None,
        profile=getattr(a, "profile", None),
        region=getattr(a, "region", None),
        # --tries bounds every request's attempts, as it bounds a segment's.
        max_attempts=getattr(a, "tries", S3Config.max_attempts),
        max_pool_connections=max(32, 2 * getattr(a, "workers", 8)),
    )


def make_store(a):
    from s3pipefs.s3 import Store

    return Store(make_s3_config(a))


def make_transfer_config(a) -> TransferConfig:
    kw = {}
    if hasattr(a, "segment_size"):
        kw["segment_size"] = parse_size(a.segment_size)
    if hasattr(a, "segment_mb"):
        kw["segment_size"] = a.segment_mb * 1_000_000  # s3pipe2's MB are decimal
    for name in ("workers", "tries"):
        if hasattr(a, name):
            kw[name] = getattr(a, name)
    if hasattr(a, "staging"):
        kw["staging_dir"] = a.staging
    if hasattr(a, "follow_timeout"):
        kw["follow_timeout"] = parse_duration(a.follow_timeout)
    if hasattr(a, "read_ahead"):
        kw["read_ahead"] = parse_size(a.read_ahead)
    kw["verbose"] = bool(getattr(a, "verbose", False))
    return TransferConfig().with_(**kw).validate()


def _engine(a):
    from s3pipefs.engine import Engine

    return Engine(make_store(a), make_transfer_config(a))


def _progress(a, total=None, desc=""):
    from s3pipefs.progress import Progress

    show = getattr(a, "verbose", False) or (sys.stderr.isatty() and not getattr(a, "quiet", False))
    return Progress(desc, total=total, enabled=show)


# -- commands -----------------------------------------------------------------------------
def cmd_put(a) -> int:
    url = parse_s3url(a.url)
    eng = _engine(a)
    if sys.stdin.isatty():
        raise errors.UsageError(f"{PROG} put: refusing to read a terminal; pipe data into it")
    mode = "resume" if a.resume else "append" if a.append else "create"
    bufsize = getattr(a, "buffer_kb", 0) * 1024 or 1 * MiB
    bufsize = max(bufsize, 64 * 1024)  # s3pipe2's 4 KB default costs CPU and gains nothing
    writer = eng.open_writer(url.bucket, url.key, mode)
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    _widen_pipe(stdin.fileno())
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with _progress(a, desc=f"put {url}") as prog:
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
        print(f"{PROG}: {url}: {writer.offset} bytes, complete", file=sys.stderr)
    return 0


def cmd_cat(a) -> int:
    url = parse_s3url(a.url)
    eng = _engine(a)
    reader = eng.open_reader(url.bucket, url.key, follow=not a.no_follow)
    offset = parse_size(a.offset)
    out = sys.stdout.buffer
    fd = out.fileno()
    _widen_pipe(fd)
    with reader, _progress(a, total=reader.size if reader.complete else None, desc=f"cat {url}") as prog:
        for chunk in reader.chunks(offset):
            _write_all(fd, chunk)
            prog.update(len(chunk))
    return 0


def _widen_pipe(fd: int) -> None:
    """Grow a pipe's buffer from 64 KiB to 1 MiB (Linux): 16x fewer context switches
    between s3pipefs and the program on the other end of ``| md5sum`` or ``tar c |``."""
    import fcntl
    import stat

    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size, or not Linux: the default is fine


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def cmd_ls(a) -> int:
    import datetime
    import json

    url = parse_s3url(a.url)
    eng = _engine(a)
    entry = eng.stat(url.bucket, url.key) if url.key.strip("/") else None
    if entry is not None and entry.kind != "dir":
        entries = [entry]
    else:
        entries = eng.listdir(url.bucket, url.key)
    if a.json:
        print(json.dumps([{"kind": e.kind, "key": e.key, "size": e.size, "mtime": e.mtime,
                           "complete": e.complete, "writer_alive": e.writer_alive} for e in entries], indent=1))
        return 0
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.mtime).strftime("%Y-%m-%d %H:%M") if e.mtime else " " * 16
        state = {"dir": "DIR", "object": "obj"}.get(e.kind) or (
            "stream" if e.complete else ("writing" if e.writer_alive else "INCOMPLETE"))
        name = e.key + ("/" if e.kind == "dir" else "")
        print(f"{state:<10} {e.size:>15} {when}  s3://{e.bucket}/{name}")
    return 0


def cmd_info(a) -> int:
    import json
    import time

    url = parse_s3url(a.url)
    eng = _engine(a)
    e = eng.stat(url.bucket, url.key)
    if e is None:
        raise errors.NotFound(f"{url}: no such stream or object")
    if e.kind != "stream":
        if a.json:
            print(json.dumps({"kind": e.kind, "key": e.key, "size": e.size, "etag": e.etag}))
        else:
            print(f"{url}: {e.kind}, {e.size} bytes" + (f", etag {e.etag}" if e.etag else ""))
        return 0
    m = e.manifest
    state = "complete" if m.completed else ("being written" if e.writer_alive else "INCOMPLETE (writer gone)")
    info = {
        "url": str(url), "kind": "stream", "state": state, "completed": m.completed, "size": m.total_size,
        "segments": m.num_segments, "segment_size": m.segment_size, "format": "s3pipefs" if m.own else "s3pipe2",
        "sha256": m.sha256 or None, "chain": m.chain or None, "upload_began": m.upload_began,
        "upload_ended": m.upload_ended or None, "writer": m.writer_id or None,
        "heartbeat_age": round(time.time() - m.heartbeat, 1) if m.heartbeat else None,
        # Set through a mount (touch, chmod, rsync -a, cp -p); shown by ls -l there.
        "mtime": _iso_ns(m.mtime_ns) if m.mtime_ns is not None else None,
        "mode": f"{m.mode:04o}" if m.mode is not None else None,
    }
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            if v is not None:
                print(f"{k:>13}: {v}")
    return 0


def _iso_ns(ns: int) -> str:
    """Nanoseconds since the epoch as local time with all nine digits (as stat(1) shows it)."""
    import time

    t = time.localtime(ns // 10**9)
    return time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{ns % 10**9:09d} " + time.strftime("%z", t)


def cmd_verify(a) -> int:
    from s3pipefs.engine.verify import verify_stream

    url = parse_s3url(a.url)
    eng = _engine(a)
    with _progress(a, desc=f"verify {url}") as prog:
        report = verify_stream(eng, url.bucket, url.key, progress=prog.update)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_rm(a) -> int:
    eng = _engine(a)
    status = 0
    for text in a.urls:
        url = parse_s3url(text)
        try:
            e = eng.delete(url.bucket, url.key)
            if getattr(a, "verbose", False):
                print(f"removed {e.kind} {url}", file=sys.stderr)
        except errors.S3PipeError as e:
            print(errors.one_line(e, PROG), file=sys.stderr)
            status = e.exit_status
    return status


# -- entry point --------------------------------------------------------------------------
def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def _calm_gc() -> None:
    """Collect cycles 30x less often. The data path makes few cycles, but botocore makes
    many short-lived objects per request, and the default threshold (700) made the
    collector walk every live object (~6% of a `cat`'s CPU) over and over."""
    gc.freeze()  # what is imported by now lives as long as the process
    gc.set_threshold(20_000, 20, 20)


class _OneLineFormatter(logging.Formatter):
    """Log lines without tracebacks. botocore logs some warnings with one (a credential
    refresh that failed), and the error that follows already says what and where."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _calm_gc()
    tune_malloc()
    debug = bool(os.environ.get("S3PIPEFS_DEBUG"))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s") if debug else _OneLineFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser(argv).parse_args(argv)
        if getattr(args, "verbose", False):
            logging.getLogger("s3pipefs").setLevel(logging.INFO)
        if not getattr(args, "func", None):
            build_parser(argv).print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except errors.S3PipeError as e:
        if debug:
            raise
        print(errors.one_line(e, PROG), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Reader went away (`cat | head`): not an error of ours. Silence the flush at exit.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as e:
        if debug:
            raise
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{PROG}:{where} {e.strerror or e}", file=sys.stderr)
        return 1


def run() -> None:
    """The console entry point: main(), then exit without tearing the interpreter down.

    Freeing botocore's and the models' objects one by one took 60-100 ms of every command
    (a tiny `cp` ran 0.34 s instead of 0.28). What a normal exit does that matters still
    happens, in its order: non-daemon threads are joined, atexit handlers run (logging's
    flush among them), stdout and stderr are flushed, and a stdout that cannot take the
    last bytes is an error, not a silent loss.
    """
    rc = main()
    join_threads = getattr(threading, "_shutdown", None)
    if join_threads is None:  # not CPython: exit the usual way
        sys.exit(rc)
    join_threads()
    atexit._run_exitfuncs()
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        pass  # the reader went away (`ls | head`): as main() treats it
    except OSError as e:
        print(f"{PROG}: stdout: {e.strerror or e}", file=sys.stderr)
        rc = rc or 1
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except OSError:
        pass
    os._exit(rc)


if __name__ == "__main__":
    run()
