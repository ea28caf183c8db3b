"""Measuring processes: wall time, CPU seconds and peak RSS.

Two kinds of process are measured:

* **Commands** (``Proc``): started by the harness and reaped with ``os.wait4``, which
  returns the kernel's resource usage of that child *and of every descendant it waited
  for*: user+system CPU seconds. This is exact and costs nothing while the command runs.
  Peak RSS comes from GNU ``time`` (``/usr/bin/time -f %M``), which launches the command:
  Linux folds the RSS of the memory image a process replaces at exec() into its
  ``ru_maxrss``, so a command forked straight from this (large) Python process would
  report at least the harness's own RSS. Forked from ``time`` (about 1 MiB), it does not.
* **Daemons** (``TreeMonitor``): FUSE mount daemons and the S3 server keep running across
  rows, so they are sampled with psutil instead: CPU = the change of user+system (plus
  reaped children) of every process in the tree between the start and the end of the row,
  peak RSS = the largest sum of RSS over the tree seen by a sampler thread (every 50 ms),
  raised to the kernel's own high-water mark ``VmHWM`` of any single process when that is
  larger (it catches peaks shorter than a sampling interval).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import tempfile
import threading
import time

import psutil


def set_child_subreaper() -> bool:
    """Make daemons that double-fork away from their launcher re-parent to this process.

    Then ``psutil.Process().children(recursive=True)`` finds a mount daemon such as the one
    ``s3pipefs mount`` leaves behind, so its CPU and memory can be measured.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


class Proc:
    """A child process whose exit status and rusage are collected with os.wait4."""

    def __init__(self, name: str, argv: list[str], *, stdin=None, stdout=None, stderr=None,
                 env: dict | None = None, cwd: str | None = None, rss: bool = True):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.rc: int | None = None
        self.rusage = None
        self.t1: float | None = None
        self._time_rss: int | None = None
        self._stats: str | None = None
        run = self.argv
        if rss and GNU_TIME:
            fd, self._stats = tempfile.mkstemp(prefix="bench-time-")
            os.close(fd)
            run = [GNU_TIME, "-q", "-o", self._stats, "-f", "%M", "--", *self.argv]
        self._done = threading.Event()
        self.t0 = time.monotonic()
        # Own session: a timeout can kill the whole process group.
        self.popen = subprocess.Popen(run, stdin=stdin, stdout=stdout, stderr=stderr,
                                      env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        threading.Thread(target=self._reap, name=f"reap-{name}", daemon=True).start()

    def _reap(self) -> None:
        status, ru = 0, None
        while True:
            try:
                _, status, ru = os.wait4(self.pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
        self.t1 = time.monotonic()
        self.rusage = ru
        if self._stats:
            try:
                with open(self._stats) as f:
                    lines = f.read().split()
                self._time_rss = int(lines[-1]) * 1024 if lines else None
            except (OSError, ValueError):
                pass
            try:
                os.unlink(self._stats)
            except OSError:
                pass
        self.rc = os.waitstatus_to_exitcode(status)
        if self._stats and self.rc > 128:  # GNU time exits 128+N when the command got signal N
            self.rc = -(self.rc - 128)
        self.popen.returncode = self.rc  # so Popen never waits for it again
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def kill(self) -> None:
        for target in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass

    @property
    def wall(self) -> float | None:
        return None if self.t1 is None else self.t1 - self.t0

    @property
    def cpu(self) -> float | None:
        if self.rusage is None:
            return None
        return self.rusage.ru_utime + self.rusage.ru_stime

    @property
    def maxrss(self) -> int | None:
        """Peak RSS in bytes of the command (of its largest process), or None if unknown."""
        return self._time_rss


def wait_all(procs: list[Proc], timeout: float) -> bool:
    """Wait for every process; on timeout kill them all and return False."""
    deadline = time.monotonic() + timeout
    ok = True
    for p in procs:
        if not p.wait(max(0.0, deadline - time.monotonic())):
            ok = False
            break
    if not ok:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)
    return ok


def _tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for r in roots:
        try:
            if r.is_running():
                seen[r.pid] = r
                for c in r.children(recursive=True):
                    seen[c.pid] = c
        except psutil.Error:
            pass
    return list(seen.values())


def _cpu_of(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
        return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    except psutil.Error:
        return None


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeMonitor:
    """CPU-seconds delta and peak RSS of long-running process trees (daemons)."""

    def __init__(self, pids: list[int], sample_rss: bool = True, interval: float = 0.05):
        self.roots = []
        for pid in pids:
            try:
                self.roots.append(psutil.Process(pid))
            except psutil.Error:
                pass
        self.sample_rss = sample_rss
        self.interval = interval
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.peak_rss = 0
        self.hwm = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, final: bool = False) -> None:
        rss = 0
        for p in _tree(self.roots):
            c = _cpu_of(p)
            if c is not None:
                self.last[p.pid] = c
            if self.sample_rss:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
                if final:
                    self.hwm = max(self.hwm, _vm_hwm(p.pid))
        self.peak_rss = max(self.peak_rss, rss)

    def start(self) -> "TreeMonitor":
        for p in _tree(self.roots):
            c = _cpu_of(p)
            if c is not None:
                self.base[p.pid] = c
                self.last[p.pid] = c
        if self.sample_rss:
            self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> tuple[float, int]:
        """Return (CPU seconds used since start, peak RSS bytes)."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self._sample(final=True)
        cpu = sum(v - self.base.get(pid, 0.0) for pid, v in self.last.items())
        return cpu, max(self.peak_rss, self.hwm)


def descendants() -> set[int]:
    try:
        return {c.pid for c in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def drop_caches() -> str | None:
    """Write back dirty pages and drop the page cache. Returns None, or why it failed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as e:
        return f"cannot drop the page cache: {e}"
