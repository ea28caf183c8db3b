"""The mount machinery behind `s3pipefs mount` and mount.s3pipefs: check, daemonize, serve, unmount.

The arguments are parsed by commands/mount.py (and fs/mount_helper.py for mount(8)) into
MountOptions; ``make_plan`` and ``mount`` take it from there. Order matters:

1. Parse the source and options (pure) and check the mount point, before any fork, so
   mistakes come back on the terminal with status 2.
2. Fork (unless foreground). Everything that creates threads or S3 clients happens in
   the child: Store, Engine, the bucket check, the signal watcher, libfuse's loop.
3. The child reports "ready" from FUSE's init callback; the parent then exits 0. Any
   failure before that (no such bucket, endpoint down, libfuse refusing the mount
   point) is relayed as one line and the parent exits non-zero.
4. Unmount (umount, fusermount -u, systemd stop): the loop ends, release work drains,
   the daemon exits. While mounted, the daemon answers `s3pipefs status` on a private
   socket (fs/status.py). SIGTERM: no new files; open writers get ``shutdown_timeout`` to
   close (their close commits as usual); after that their data is uploaded and the
   streams left incomplete (resumable) - never completed short. Then the mount is
   detached and the daemon exits.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from dataclasses import dataclass

from s3pipefs import errors
from s3pipefs.fs import daemon, readahead
from s3pipefs.fs.mounttable import mounted_at
from s3pipefs.config import S3Config
from s3pipefs.fs.options import MountOptions, parse_source
from s3pipefs.fs.status import StatusServer
from s3pipefs.s3.retry import throttle_notice
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
    # The mount's keys (RequestOptions), read before any fork so a bad key file is a usage
    # error on the terminal; repr() never shows them.
    request: object = None


def make_plan(source: str, mountpoint: str, opts: MountOptions) -> MountPlan:
    """Check the source and the mount point (before any fork, so mistakes reach the terminal)."""
    if opts.daemon.log == "syslog" and not os.path.exists("/dev/log"):
        raise errors.UsageError("log=syslog, but there is no syslog socket /dev/log; use log=/path/to/file")
    bucket, prefix = parse_source(source)
    mountpoint = os.path.abspath(mountpoint)
    _clear_stale_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise errors.UsageError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise errors.Busy(f"{mountpoint} is already a mount point")
    if not os.path.exists("/dev/fuse"):
        raise errors.S3PipeError("/dev/fuse is missing: load the fuse module (modprobe fuse) "
                                 "or give the container the device")
    return MountPlan(bucket, prefix, mountpoint, opts, source, request_options(opts))


def mount(plan: MountPlan) -> int:
    """Mount: serve in the foreground, or fork a daemon and return once it is mounted.
    Raises S3PipeError on failure (the caller prints it)."""
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


def connection_pool_size(opts: MountOptions) -> int:
    """S3 connections the mount's requests in flight can use at once:

        upload_threads                              the writers' shared upload pool
      + max(prefetch, read_memory // segment_size)  the readers' prefetch: one reader's window,
                                                    or as many segments as the shared read
                                                    budget holds when many files are open
      + 8                                           stats, listings and manifests of FUSE threads

    at least S3Config's default and at most 256. A pool smaller than the requests in
    flight makes urllib3 open a connection per extra request and drop it afterwards (a
    new TCP and TLS handshake each time, and a "pool is full" warning); past 256 one
    client gains nothing more from S3 and throttling (503) starts to bite.
    With the defaults: 16 + max(8, 512M // 16M) + 8 = 56.
    """
    t, fs = opts.transfer, opts.fs
    want = fs.upload_threads + max(t.prefetch, fs.read_memory // t.segment_size) + 8
    return max(S3Config.max_pool_connections, min(256, want))


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


def request_options(opts: MountOptions):
    """The mount's keys, from its key files or the environment (s3pipefs/keys.py)."""
    from s3pipefs import keys
    from s3pipefs.s3.interface import RequestOptions

    return RequestOptions(
        sse_key=keys.load_key(opts.sse_c_key_file, keys.SSE_C_ENV) or b"",
        encrypt_key=keys.load_key(opts.encrypt_key_file, keys.ENCRYPT_ENV, "encryption key") or b"")


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
    from s3pipefs.engine.budget import WriteBudget
    from s3pipefs.engine.reader import ReadBudget
    from s3pipefs.fs import fuselib
    from s3pipefs.fs.filesystem import Filesystem
    from s3pipefs.fs.operations import Operations
    from s3pipefs.s3 import Store

    where = f"s3://{plan.bucket}/{plan.prefix}"
    try:
        s3cfg = dataclasses.replace(opts.s3, max_pool_connections=connection_pool_size(opts))
        engine = Engine(Store(s3cfg), opts.transfer, read_budget=ReadBudget(opts.fs.read_memory),
                        write_budget=WriteBudget(opts.fs.write_budget, opts.fs.upload_threads),
                        request=plan.request)
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
    status_server = StatusServer(fs, plan.source, plan.mountpoint)

    resolved = os.path.realpath(plan.mountpoint)  # as mountinfo spells it

    def on_init() -> None:
        if opts.fs.kernel_read_ahead:
            readahead.set_after_init(resolved, opts.fs.kernel_read_ahead)
        log.info("mounted %s on %s (libfuse %s, %s)", where, plan.mountpoint, fuselib.version(),
                 "read-only" if opts.fs.read_only else "read-write")
        if opts.ignored:
            log.debug("ignored mount options: %s", ",".join(opts.ignored))
        status_server.start()  # `s3pipefs status` sees the mount once it is live
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

    ops = Operations(fs, on_init=on_init, debug=opts.daemon.debug, mountpoint=resolved)
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
        status_server.close()
    if not ready.ok_sent:
        ready.fail("libfuse returned before the mount was ready" + (f": {capture.tail()}" if capture else ""))
        return 1
    # The kernel ended the session, so no file is open any more; finish release work.
    fs.shutdown(0)
    if not fs.wait_idle(opts.fs.shutdown_timeout):
        log.warning("some final commits did not finish before exit")
    fs.close()
    engine.write_budget.shutdown()
    notice = throttle_notice(engine.store.stats, engine.store.retry.limiter)
    if notice:
        log.warning("%s", notice)
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
