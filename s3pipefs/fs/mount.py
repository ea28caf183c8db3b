"""`s3pipefs mount BUCKET[/PREFIX] MOUNTPOINT [-o OPTS] [-f]`: parse, daemonize, serve, unmount.

Order matters:

1. Parse the source and options (pure) and check the mount point, before any fork, so
   mistakes come back on the terminal with status 2.
2. Fork (unless foreground). Everything that creates threads or S3 clients happens in
   the child: Store, Engine, the bucket check, the signal watcher, libfuse's loop.
3. The child reports "ready" from FUSE's init callback; the parent then exits 0. Any
   failure before that (no such bucket, endpoint down, libfuse refusing the mount
   point) is relayed as one line and the parent exits non-zero.
4. Unmount (umount, fusermount -u, systemd stop): the loop ends, release work drains,
   the daemon exits. SIGTERM: no new files; open writers get ``shutdown_timeout`` to
   close (their close commits as usual); after that their data is uploaded and the
   streams left incomplete (resumable) - never completed short. Then the mount is
   detached and the daemon exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
from dataclasses import dataclass

from s3pipefs import errors
from s3pipefs.fs import daemon, readahead
from s3pipefs.fs.mounttable import mounted_at
from s3pipefs.fs.options import OPTIONS, MountOptions, default_of, parse_options, parse_source
from s3pipefs.memory import tune_malloc

log = logging.getLogger("s3pipefs.fs")

# After SIGTERM and the lazy unmount, how long the loop may take to notice before the
# daemon exits anyway (a process still holding a file open keeps the session alive).
_EXIT_GRACE = 10.0


@dataclass(frozen=True)
class MountPlan:
    bucket: str
    prefix: str
    mountpoint: str
    opts: MountOptions
    source: str


def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="BUCKET[/PREFIX]", help="bucket, optionally with a key prefix to mount")
    p.add_argument("mountpoint", help="an existing directory")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options, comma separated (repeatable); see below")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    width = max(len(o.name) for o in OPTIONS) + 6
    lines = []
    for o in OPTIONS:
        label = o.name if o.is_flag else f"{o.name}=..."
        default = default_of(o)
        lines.append(f"  {label:<{width}} {o.help}" + (f" (default {default})" if default else ""))
    p.epilog = ("mount options (full reference: docs/mount.md, `man mount.s3pipefs`):\n" + "\n".join(lines)
                + "\n  also accepted and ignored: _netdev, nofail, auto, noauto, defaults, user, x-systemd.*, ...")


def plan_from_args(args) -> MountPlan:
    opts, warnings = parse_options(getattr(args, "options", None) or [], sloppy=getattr(args, "sloppy", False))
    for w in warnings:
        print(f"s3pipefs: warning: {w}", file=sys.stderr)
    if getattr(args, "foreground", False):
        opts = dataclasses.replace(opts, daemon=dataclasses.replace(opts.daemon, foreground=True))
    if getattr(args, "verbose", False):
        opts = dataclasses.replace(opts, daemon=dataclasses.replace(opts.daemon, verbose=True))
    if opts.daemon.log == "syslog" and not os.path.exists("/dev/log"):
        raise errors.UsageError("log=syslog, but there is no syslog socket /dev/log; use log=/path/to/file")
    bucket, prefix = parse_source(args.source)
    mountpoint = os.path.abspath(args.mountpoint)
    _clear_stale_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise errors.UsageError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise errors.Busy(f"{mountpoint} is already a mount point")
    if not os.path.exists("/dev/fuse"):
        raise errors.S3PipeError("/dev/fuse is missing: load the fuse module (modprobe fuse) "
                                 "or give the container the device")
    return MountPlan(bucket, prefix, mountpoint, opts, args.source)


def mount_main(args) -> int:
    """Entry point of `s3pipefs mount`. Raises S3PipeError on failure (the CLI prints it)."""
    plan = plan_from_args(args)
    if getattr(args, "fake", False):  # mount -f: do everything but the mount
        return 0
    if plan.opts.daemon.foreground:
        return serve(plan, daemon.Readiness(None), capture=None)
    got = daemon.fork_with_readiness()
    if isinstance(got, str):  # the parent
        if got:
            raise errors.S3PipeError(f"mount {plan.source} on {plan.mountpoint} failed: {got}")
        return 0
    # The child: never return into the caller's code (it would run the CLI's exit path twice).
    code = 1
    try:
        code = serve(plan, got, capture=daemon.StderrCapture())
    except BaseException as e:  # noqa: BLE001
        got.fail(f"{type(e).__name__}: {e}")
        log.exception("mount daemon failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _fuse_kwargs(plan: MountPlan, fuselib) -> dict:
    fs, d = plan.opts.fs, plan.opts.daemon
    kw = {
        "foreground": True,  # we daemonized ourselves, before any thread existed
        "raw_fi": True,
        "fsname": d.fsname or f"{plan.bucket}/{plan.prefix}".rstrip("/"),
        "subtype": "s3pipefs",  # /proc/mounts says fuse.s3pipefs
        # The kernel checks modes against uid/gid/umask, so allow_other is safe to use.
        "default_permissions": True,
        # Without it libfuse renames an unlinked open file to .fuse_hidden* (an S3 copy).
        "hard_remove": True,
    }
    if fs.read_only:
        kw["ro"] = True
    if fs.allow_other:
        kw["allow_other"] = True
    if fs.allow_root:
        kw["allow_root"] = True
    for flag in fs.kernel_flags:
        if flag == "nonempty" and fuselib.MAJOR >= 3:
            continue  # libfuse 3 always allows it and rejects the option
        kw[flag] = True
    if fuselib.MAJOR >= 3:
        if fuselib.MINOR >= 12:
            kw["max_threads"] = fs.max_threads
    else:
        # 128 KiB requests instead of 4 KiB, and O_TRUNC passed with open (not a separate
        # truncate), so a truncating open is one request.
        kw.update(big_writes=True, max_write=fuselib.MAX_REQUEST, max_read=fuselib.MAX_REQUEST,
                  atomic_o_trunc=True)
    return kw


def serve(plan: MountPlan, ready: daemon.Readiness, capture: daemon.StderrCapture | None) -> int:
    """Build the engine, mount and run the FUSE loop until unmounted. Returns an exit status."""
    tune_malloc(keep=64 << 20)  # before the first thread; a daemon gives idle memory back
    opts = plan.opts
    try:
        daemon.setup_logging(opts.daemon.log, foreground=opts.daemon.foreground,
                             debug=opts.daemon.debug, verbose=opts.daemon.verbose)
    except OSError as e:
        ready.fail(f"cannot open the log ({opts.daemon.log}): {e.strerror or e}")
        return 1
    if opts.credentials:
        # The AWS convention for a credentials file; boto3 reads it when the client is made.
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = opts.credentials
    # Imported here: mfusepy binds libfuse at import, and nothing of it should exist
    # in the parent of the fork.
    from s3pipefs.engine import Engine
    from s3pipefs.engine.reader import ReadBudget
    from s3pipefs.fs import fuselib
    from s3pipefs.fs.filesystem import Filesystem
    from s3pipefs.fs.operations import Operations
    from s3pipefs.s3 import Store

    where = f"s3://{plan.bucket}/{plan.prefix}"
    try:
        engine = Engine(Store(opts.s3), opts.transfer, read_budget=ReadBudget(opts.fs.read_memory))
        try:
            engine.store.bucket_exists(plan.bucket)
        except errors.NotFound:
            endpoint = opts.s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
            raise errors.BucketNotFound(f"no such bucket '{plan.bucket}' at {endpoint}") from None
        if not opts.fs.read_only:
            os.makedirs(opts.transfer.staging_dir, exist_ok=True)
            if not os.access(opts.transfer.staging_dir, os.W_OK):
                raise errors.StagingError(f"staging directory {opts.transfer.staging_dir} is not writable")
    except errors.S3PipeError as e:
        ready.fail(str(e))
        log.error("mount %s on %s failed: %s", where, plan.mountpoint, e)
        return 1

    fs = Filesystem(engine, plan.bucket, plan.prefix, opts.fs, blksize=fuselib.MAX_REQUEST)
    loop_done = threading.Event()

    resolved = os.path.realpath(plan.mountpoint)  # as mountinfo spells it

    def on_init() -> None:
        if opts.fs.kernel_read_ahead:
            readahead.set_after_init(resolved, opts.fs.kernel_read_ahead)
        log.info("mounted %s on %s (libfuse %s, %s)", where, plan.mountpoint, fuselib.version(),
                 "read-only" if opts.fs.read_only else "read-write")
        if opts.ignored:
            log.debug("ignored mount options: %s", ",".join(opts.ignored))
        ready.ok()
        if capture is not None:
            capture.detach()

    def on_stop(sig: int) -> None:
        fs.shutdown(opts.fs.shutdown_timeout)
        fs.wait_idle(opts.fs.shutdown_timeout)
        daemon.lazy_unmount(plan.mountpoint)
        if not loop_done.wait(_EXIT_GRACE):
            open_files = len(fs.handles)
            log.warning("exiting with %d file(s) still open on the detached mount", open_files)
            logging.shutdown()
            os._exit(0)

    ops = Operations(fs, on_init=on_init, debug=opts.daemon.debug)
    daemon.SignalWatcher(on_stop, foreground=opts.daemon.foreground).start()
    try:
        fuselib.FUSE(ops, plan.mountpoint, **_fuse_kwargs(plan, fuselib))
    except Exception as e:  # noqa: BLE001 - libfuse says why on stderr
        if not ready.ok_sent:
            detail = capture.tail() if capture is not None else ""
            msg = detail or f"libfuse could not mount ({e})"
            ready.fail(msg)
            log.error("mount %s on %s failed: %s", where, plan.mountpoint, msg)
            return 1
        log.error("FUSE loop ended with an error: %s", e)
    finally:
        loop_done.set()
    if not ready.ok_sent:
        ready.fail("libfuse returned before the mount was ready" + (f": {capture.tail()}" if capture else ""))
        return 1
    # The kernel ended the session, so no file is open any more; finish release work.
    fs.shutdown(0)
    if not fs.wait_idle(opts.fs.shutdown_timeout):
        log.warning("some final commits did not finish before exit")
    fs.close()
    log.info("unmounted %s from %s", where, plan.mountpoint)
    return 0


def _clear_stale_mount(mountpoint: str) -> None:
    """A crashed s3pipefs daemon leaves its mount answering ENOTCONN. Remounting there is
    what the user wants, so detach that dead mount (lazily) and say so; anything else that
    is stale is reported with the command that fixes it."""
    import errno
    import subprocess

    try:
        # statfs always reaches the daemon; stat may be answered from cached attributes.
        os.statvfs(mountpoint)
        return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
    mounted = mounted_at(mountpoint)
    if mounted is not None and "s3pipefs" in mounted.fstype:
        for cmd in (["fusermount3", "-uz", mountpoint], ["fusermount", "-uz", mountpoint], ["umount", "-l", mountpoint]):
            try:
                if subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
                    print(f"s3pipefs: warning: {mountpoint} was a stale s3pipefs mount (its daemon is gone); "
                          "detached it", file=sys.stderr)
                    return
            except (OSError, subprocess.TimeoutExpired):
                continue
    raise errors.Busy(f"{mountpoint} is a stale mount (transport endpoint not connected); "
                      f"run `umount -l {mountpoint}` and mount again")
