"""Helpers for the FUSE tests: real mounts through the real helper, and scenario drivers.

``Mounter`` runs ``mount.s3pipefs`` (the console script, exactly what mount(8) runs) as a
subprocess, waits for the mount, and always unmounts in teardown (umount, then a lazy
fusermount/umount -l as a last resort), so a failing test never leaves a stale mount.
A mount that cannot be made is a test *failure*: a CI machine without /dev/fuse must
not pass by skipping.

The drivers give the same small vocabulary (write, append, read, read_at, size, remove,
a slow writer, a second writer) over three ways in: the engine API, the FUSE-free
Filesystem in-process, and files in a real mount, so one scenario suite checks that they
agree (tests/test_fs_scenarios.py).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3pipefs import errors

HELPER = Path(sys.executable).with_name("mount.s3pipefs")


def helper_cmd() -> list[str]:
    if HELPER.exists():
        return [str(HELPER)]
    return [sys.executable, "-m", "s3pipefs.fs.mount_helper"]


def require_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: the FUSE tests need it (a failure, not a skip)")


class Mount:
    def __init__(self, mountpoint: Path, log: Path, source: str):
        self.path = mountpoint
        self.log = log
        self.source = source

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def daemon_pids(self) -> list[int]:
        import psutil

        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info.get("cmdline") or []
            if any("mount.s3pipefs" in c or "mount_helper" in c for c in cmd) and str(self.path) in cmd:
                out.append(p.pid)
        return out

    def mounted(self) -> bool:
        """From /proc/mounts: os.path.ismount says False for a mount whose daemon died."""
        return is_mounted(self.path)

    def unmount(self, timeout: float = 30.0) -> None:
        pids = self.daemon_pids()
        if self.mounted():
            r = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        wait_gone(pids, timeout)


def is_mounted(path) -> bool:
    target = os.path.realpath(path).encode().replace(b" ", b"\\040")
    with open("/proc/mounts", "rb") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def wait_gone(pids: list[int], timeout: float) -> bool:
    import psutil

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.05)
    return False


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


class Mounter:
    """Makes mounts for one test and unmounts them all at the end."""

    # Small segments and a short follow timeout keep the tests quick on two cores.
    DEFAULTS = {"segment_size": "1M", "workers": "4", "poll_interval": "0.1", "follow_timeout": "10",
                "heartbeat": "1", "metadata_ttl": "2"}

    def __init__(self, tmp: Path, env: dict, endpoint: str):
        self.tmp = tmp
        self.env = env
        self.endpoint = endpoint
        self.mounts: list[Mount] = []

    def options(self, extra: dict | None = None, staging: Path | None = None) -> str:
        opts = {"endpoint": self.endpoint, **self.DEFAULTS, **(extra or {})}
        if staging is not None:
            opts.setdefault("staging", str(staging))
        return ",".join(k if v is True else f"{k}={v}" for k, v in opts.items() if v is not None and v is not False)

    def __call__(self, source: str, name: str | None = None, **opts) -> Mount:
        require_fuse()
        n = len(self.mounts)
        mp = self.tmp / (name or f"mnt{n}")
        mp.mkdir(exist_ok=True)
        log = self.tmp / f"mount{n}.log"
        staging = self.tmp / f"staging{n}"
        o = self.options({"log": str(log), **opts}, staging=staging)
        r = subprocess.run([*helper_cmd(), source, str(mp), "-o", o], env=self.env,
                           capture_output=True, text=True, timeout=120)
        m = Mount(mp, log, source)
        if r.returncode != 0 or not os.path.ismount(mp):
            pytest.fail(f"mount.s3pipefs {source} {mp} failed (status {r.returncode}): {r.stderr.strip()}\n"
                        f"log:\n{m.log_text()}")
        self.mounts.append(m)
        return m

    def close(self) -> None:
        for m in reversed(self.mounts):
            m.unmount()
        for m in self.mounts:
            if m.mounted():
                subprocess.run(["umount", "-l", str(m.path)], capture_output=True)


@pytest.fixture
def mounter(tmp_path, s3_server, s3_env):
    require_fuse()
    env = dict(s3_env)
    # The helper must find the credentials exactly as mount(8) would run it.
    m = Mounter(tmp_path, env, s3_server.endpoint)
    try:
        yield m
    finally:
        m.close()


# -- drivers ------------------------------------------------------------------------------


class EngineDriver:
    """The engine API directly: what `s3pipefs put/cat` use."""

    name = "engine"

    def __init__(self, engine, bucket: str):
        self.engine, self.bucket = engine, bucket

    def write(self, name: str, chunks) -> None:
        with self.engine.open_writer(self.bucket, name, "create") as w:
            for c in chunks:
                w.write(c)

    def append(self, name: str, chunks) -> None:
        with self.engine.open_writer(self.bucket, name, "append") as w:
            for c in chunks:
                w.write(c)

    def read(self, name: str) -> bytes:
        with self.engine.open_reader(self.bucket, name) as r:
            return b"".join(bytes(c) for c in r.chunks())

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        with self.engine.open_reader(self.bucket, name) as r:
            return r.read(offset, size)

    def size(self, name: str) -> int:
        return self.engine.stat(self.bucket, name).size

    def exists(self, name: str) -> bool:
        return self.engine.stat(self.bucket, name) is not None

    def remove(self, name: str) -> None:
        self.engine.delete(self.bucket, name)

    @contextlib.contextmanager
    def writer(self, name: str):
        w = self.engine.open_writer(self.bucket, name, "create")
        try:
            yield _EngineWriter(w)
        finally:
            if not w.closed:
                w.close()

    def busy(self, name: str) -> bool:
        """Does opening a second writer fail with EBUSY?"""
        try:
            w = self.engine.open_writer(self.bucket, name, "create")
        except errors.Busy:
            return True
        w.abort()
        return False


class _EngineWriter:
    def __init__(self, w):
        self.w = w

    def write(self, data: bytes) -> None:
        self.w.write(data)

    def sync(self) -> None:
        self.w.flush()


class CoreDriver:
    """The FUSE-free Filesystem in-process, called as the kernel would call it; reads go
    through ``reader_fs`` when given (another mount), as MountDriver's do."""

    name = "core"

    def __init__(self, fs, reader_fs=None):
        self.fs = fs
        self.rfs = reader_fs or fs

    def _write(self, name: str, chunks, flags: int) -> None:
        path = "/" + name
        if flags & os.O_CREAT and self.fs.ns.lookup(path) is None:
            fh = self.fs.create(path, flags).fh
        else:
            fh = self.fs.open(path, flags).fh
        off = 0 if flags & os.O_TRUNC else self.fs.getattr(path)["st_size"]
        try:
            for c in chunks:
                off += self.fs.write(fh, c, off, owner=1)
            self.fs.flush(fh, owner=1)
        finally:
            self.fs.release(fh)
            self.fs.wait_idle(30)

    def write(self, name: str, chunks) -> None:
        self._write(name, chunks, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def append(self, name: str, chunks) -> None:
        self._write(name, chunks, os.O_WRONLY | os.O_APPEND)

    def read(self, name: str) -> bytes:
        fh = self.rfs.open("/" + name, os.O_RDONLY).fh
        out, off = [], 0
        try:
            while True:
                b = self.rfs.read(fh, 1 << 20, off)
                if not b:
                    return b"".join(out)
                out.append(b)
                off += len(b)
        finally:
            self.rfs.release(fh)

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        fh = self.rfs.open("/" + name, os.O_RDONLY).fh
        try:
            return self.rfs.read(fh, size, offset)
        finally:
            self.rfs.release(fh)

    def size(self, name: str) -> int:
        self.fs.ns.invalidate("/" + name)
        return self.fs.getattr("/" + name)["st_size"]

    def exists(self, name: str) -> bool:
        self.fs.ns.invalidate("/" + name)
        try:
            self.fs.getattr("/" + name)
            return True
        except errors.NotFound:
            return False

    def remove(self, name: str) -> None:
        self.fs.unlink("/" + name)

    @contextlib.contextmanager
    def writer(self, name: str):
        path = "/" + name
        fh = self.fs.create(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC).fh
        w = _CoreWriter(self.fs, fh)
        try:
            yield w
            self.fs.flush(fh, owner=1)
        finally:
            self.fs.release(fh)
            self.fs.wait_idle(30)

    def busy(self, name: str) -> bool:
        try:
            fh = self.fs.open("/" + name, os.O_WRONLY | os.O_TRUNC).fh
        except errors.Busy:
            return True
        self.fs.release(fh)
        return False


class _CoreWriter:
    def __init__(self, fs, fh):
        self.fs, self.fh, self.off = fs, fh, 0

    def write(self, data: bytes) -> None:
        self.off += self.fs.write(self.fh, data, self.off, owner=1)

    def sync(self) -> None:
        self.fs.fsync(self.fh)


class MountDriver:
    """Files in a real kernel mount (``writer``) and, for reading, possibly another mount."""

    name = "mount"

    def __init__(self, mount: Mount, reader_mount: Mount | None = None):
        self.m = mount
        self.r = reader_mount or mount

    def write(self, name: str, chunks) -> None:
        with open(self.m / name, "wb", buffering=0) as f:
            for c in chunks:
                f.write(c)

    def append(self, name: str, chunks) -> None:
        with open(self.m / name, "ab", buffering=0) as f:
            for c in chunks:
                f.write(c)

    def read(self, name: str) -> bytes:
        return (self.r / name).read_bytes()

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        with open(self.r / name, "rb", buffering=0) as f:
            return os.pread(f.fileno(), size, offset)

    def size(self, name: str) -> int:
        # A fresh lookup: the kernel's attribute cache and ours both expire in ~2 s.
        wait_for(lambda: True, 0)
        return os.stat(self.m / name).st_size

    def exists(self, name: str) -> bool:
        return (self.m / name).exists()

    def remove(self, name: str) -> None:
        os.unlink(self.m / name)

    @contextlib.contextmanager
    def writer(self, name: str):
        with open(self.m / name, "wb", buffering=0) as f:
            yield _FileWriter(f)

    def busy(self, name: str) -> bool:
        try:
            f = open(self.m / name, "wb")
        except OSError as e:
            if e.errno == errno.EBUSY:
                return True
            raise
        f.close()
        return False


class _FileWriter:
    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def sync(self) -> None:
        os.fsync(self.f.fileno())


def tool(name: str) -> str:
    """A required command-line tool: missing is a failure (the tests promise real tools)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; the FUSE tests run the real tool")
    return path
