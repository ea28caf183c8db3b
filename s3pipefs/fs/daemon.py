"""Becoming a mount daemon: fork with a readiness pipe, logging, signals, lazy unmount.

mount(8), fstab and systemd expect the helper to return only once the filesystem is
usable, with status 0, or to fail with a message. So the helper forks *before* anything
creates a thread or an S3 client (threads do not survive fork, and ratarmount documents
the hang you get otherwise); the child builds the engine, mounts, and reports through a
pipe: "OK" from FUSE's init callback (the kernel's first request, i.e. the mount is
live), or an error line. The parent relays it and exits.

Signals: SIGTERM/SIGINT/SIGHUP are blocked in every thread (threads inherit the mask,
and libfuse's workers block everything anyway) and consumed by one watcher thread with
sigwait. That keeps libfuse's own handler out of the way: it would end the loop at once
and pthread_cancel worker threads that may be in the middle of a commit. The watcher
instead runs the graceful shutdown and then detaches the mount.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Callable

log = logging.getLogger("s3pipefs.fs")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class Readiness:
    """The child's side of the pipe; a no-op in the foreground."""

    def __init__(self, fd: int | None):
        self._fd = fd
        self._lock = threading.Lock()
        self.done = fd is None
        self.ok_sent = False

    def _send(self, msg: str) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
            try:
                os.write(self._fd, msg.encode(errors="replace")[:4000])
            except OSError:
                pass
            finally:
                os.close(self._fd)

    def ok(self) -> None:
        self.ok_sent = True
        self._send("OK\n")

    def fail(self, message: str) -> None:
        self._send("ERR " + message.strip() + "\n")


def fork_with_readiness() -> Readiness | str:
    """Fork. In the child: a new session, returns a Readiness. In the parent: waits for
    the child's verdict and returns "" (mounted) or the error message."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        return Readiness(w)
    os.close(w)
    chunks = []
    while True:
        try:
            b = os.read(r, 4096)
        except InterruptedError:
            continue
        if not b:
            break
        chunks.append(b)
    os.close(r)
    msg = b"".join(chunks).decode(errors="replace").strip()
    if msg == "OK":
        return ""
    if msg.startswith("ERR "):
        return msg[4:]
    # The child died without a word: tell how.
    try:
        _, status = os.waitpid(pid, 0)
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.WEXITSTATUS(status)}")
    except ChildProcessError:
        how = "unknown status"
    return f"the mount daemon ended before the mount was ready ({how})"


# -- stdio -----------------------------------------------------------------------------------

class StderrCapture:
    """Send fd 2 to a temp file while mounting, so libfuse's complaints ("mountpoint is not
    empty", "fusermount: ...") can be relayed to the user; then to /dev/null."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        sys.stderr.flush()
        os.dup2(self._file.fileno(), 2)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)

    def tail(self, limit: int = 1000) -> str:
        try:
            self._file.seek(0)
            text = self._file.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip() and "DeprecationWarning" not in ln]
        return "; ".join(lines)[-limit:]

    def detach(self) -> None:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 2)
        os.close(null)


# -- logging ---------------------------------------------------------------------------------

def default_log_file() -> str:
    if os.geteuid() == 0:
        return "/var/log/s3pipefs.log"
    return os.path.join(os.path.expanduser("~"), ".cache", "s3pipefs", "mount.log")


def _no_library_tracebacks(record: logging.LogRecord) -> bool:
    """botocore logs some warnings with a traceback (a credential refresh that failed,
    sixty lines); the error logged next says what and where. Our own internal errors keep
    theirs, for bug reports; debug keeps all."""
    if not record.name.startswith("s3pipefs"):
        record.exc_info = record.exc_text = None
    return True


def setup_logging(target: str, *, foreground: bool, debug: bool, verbose: bool) -> str:
    """Route all logging to one place; returns a description for messages ("syslog", a path)."""
    if target == "auto":
        if foreground:
            target = "stderr"
        elif os.path.exists("/dev/log"):
            target = "syslog"
        else:
            target = default_log_file()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    if target == "stderr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("s3pipefs: %(levelname)s %(message)s"))
    elif target == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"s3pipefs[{os.getpid()}]: %(levelname)s %(message)s"))
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # WatchedFileHandler reopens the file after logrotate moves it.
        handler = logging.handlers.WatchedFileHandler(target)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s s3pipefs[%(process)d] %(levelname)s %(message)s"))
    if not debug:
        handler.addFilter(_no_library_tracebacks)
    root.addHandler(handler)
    # Our own mount/unmount/commit lines at INFO; the engine's and libraries' chatter
    # (retries are warnings) only with verbose; everything with debug.
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    logging.getLogger("s3pipefs.fs").setLevel(logging.DEBUG if debug else logging.INFO)
    # Request-level chatter of the AWS SDK would drown ours even in debug mode.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("fuse").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    return target


# -- signals and unmount --------------------------------------------------------------------

class SignalWatcher:
    """Block the stop signals process-wide; one thread sigwaits and calls ``on_stop`` once."""

    def __init__(self, on_stop: Callable[[int], None], foreground: bool):
        self.on_stop = on_stop
        self.foreground = foreground
        self._thread = threading.Thread(target=self._run, name="s3pipefs-signals", daemon=True)

    def start(self) -> None:
        # Block first, in the main thread, so every thread created after this inherits it.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        self._thread.start()

    def _run(self) -> None:
        while True:
            sig = signal.sigwait(STOP_SIGNALS)
            if sig == signal.SIGHUP and not self.foreground:
                log.info("SIGHUP ignored (no configuration to reload)")
                continue
            log.info("%s received: unmounting", signal.Signals(sig).name)
            try:
                self.on_stop(sig)
            except Exception:  # noqa: BLE001
                log.exception("shutdown failed")
            return


def lazy_unmount(mountpoint: str) -> bool:
    """Detach the mount (MNT_DETACH): the kernel ends the FUSE session once no file is open."""
    from s3pipefs.fs import fuselib  # loads libfuse: only in the daemon, never at CLI import

    cmd = [fuselib.fusermount(), "-u", "-z", mountpoint]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("unmount %s: %s", mountpoint, e)
        return False
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip()
        # Already gone (an unmount raced us) is fine.
        if "not mounted" not in err and "not found in" not in err:
            log.warning("unmount %s: %s", mountpoint, err)
        return False
    return True
