"""Mount rows: write the test data through a FUSE mount, then read it back through a fresh one.

write: sh -c 'exec cat DATA > MNT/bench-rN.bin'   timed until the data is complete in S3
read:  md5sum MNT/bench-rN.bin                    on a new mount, after dropping the page cache

Each row mounts, measures and unmounts on its own, so a read never sees a cache that the
write left behind (kernel page cache, rclone's VFS cache directory, a daemon's memory).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from common import BASELINE, RCLONE_REMOTE, Ctx, Row, Run, parse_digest, show, tail
from measure import Proc, TreeMonitor, descendants, wait_all


@dataclass
class Variant:
    name: str                       # bucket suffix and log name
    tool: str                       # for --tools
    label: str                      # shown in the table
    argv: Callable[[Ctx, str, str, Path], list[str]]  # (ctx, bucket, mountpoint, cache dir)
    foreground: bool                # the mount command itself is the daemon (runs until unmount)

    @property
    def bucket(self) -> str:
        return f"bench-mnt-{self.name}"


def _s3fs_passwd(ctx: Ctx) -> Path:
    """s3fs reads credentials from a 0600 file, never from the command line."""
    path = ctx.workdir / "s3fs.passwd"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{ctx.env['AWS_ACCESS_KEY_ID']}:{ctx.env['AWS_SECRET_ACCESS_KEY']}\n")
    return path


VARIANTS = [
    Variant("s3pipefs", "s3pipefs", "s3pipefs",
            lambda ctx, b, m, c: [ctx.tools.paths["s3pipefs"], "mount", b, m, "-o", f"endpoint={ctx.endpoint}"],
            foreground=False),
    Variant("s3pipefs-base", BASELINE, BASELINE,
            lambda ctx, b, m, c: [ctx.tools.paths[BASELINE], "mount", b, m, "-o", f"endpoint={ctx.endpoint}"],
            foreground=False),
    Variant("rclone-off", "rclone", "rclone vfs=off",
            lambda ctx, b, m, c: [ctx.tools.paths["rclone"], "mount", f"{RCLONE_REMOTE}:{b}", m,
                                  "--vfs-cache-mode", "off"],
            foreground=True),
    # --vfs-write-back 0s: upload as soon as close() returns (the default waits 5 s more)
    Variant("rclone-writes", "rclone", "rclone vfs=writes",
            lambda ctx, b, m, c: [ctx.tools.paths["rclone"], "mount", f"{RCLONE_REMOTE}:{b}", m,
                                  "--vfs-cache-mode", "writes", "--cache-dir", str(c), "--vfs-write-back", "0s"],
            foreground=True),
    Variant("s3fs", "s3fs", "s3fs",
            lambda ctx, b, m, c: [ctx.tools.paths["s3fs"], b, m, "-f", "-o",
                                  f"passwd_file={_s3fs_passwd(ctx)},url={ctx.endpoint},use_path_request_style"],
            foreground=True),
]


class MountError(Exception):
    pass


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[4].encode().decode("unicode_escape") == target:
                    return True
    except OSError:
        pass
    return False


def unmount(ctx: Ctx, mnt: Path) -> str:
    """Unmount; returns '' or a note about what it took."""
    fm = ctx.tools.paths.get("fusermount") or "fusermount3"
    last = ""
    for _ in range(20):
        if not is_mounted(mnt):
            return ""
        r = subprocess.run([fm, "-u", str(mnt)], capture_output=True, text=True)
        if r.returncode == 0:
            return ""
        last = (r.stderr or r.stdout).strip()
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return f"lazy unmount needed ({last})"


def mount_or_failure(ctx: Ctx, v: "Variant", log: Path, note: str = "") -> "Mount | Run":
    """The variant mounted (an entered Mount), or the failed Run that says why."""
    m = Mount(ctx, v, log)
    try:
        return m.__enter__()
    except MountError as e:
        m.__exit__(None, None, None)
        return Run(ok=False, reason=f"mount failed: {e}", note=note)


class Mount:
    """A mounted variant: the daemon process tree is known so it can be measured."""

    def __init__(self, ctx: Ctx, v: Variant, log: Path):
        self.ctx, self.v, self.log = ctx, v, log
        self.mnt = ctx.workdir / "mnt" / v.name
        self.cache = ctx.workdir / "cache" / v.name
        self.proc: Proc | None = None
        self.pids: list[int] = []
        self.note = ""

    def __enter__(self) -> "Mount":
        ctx, v = self.ctx, self.v
        if is_mounted(self.mnt):
            unmount(ctx, self.mnt)
        self.mnt.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        ctx.ensure_bucket(v.bucket)
        argv = v.argv(ctx, v.bucket, str(self.mnt), self.cache)
        before = descendants()
        with open(self.log, "ab") as logf:
            self.proc = Proc(f"mount-{v.name}", argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                             env=ctx.env)
        deadline = time.monotonic() + 60
        while not is_mounted(self.mnt):
            if self.proc.done and (v.foreground or self.proc.rc != 0):
                raise MountError(f"mount command exit status {self.proc.rc}: {tail(self.log)}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise MountError(f"not mounted after 60 s: {tail(self.log)}")
            time.sleep(0.05)
        if not v.foreground and not self.proc.wait(60):
            self.note = "mount command did not return after mounting"
        time.sleep(0.2)  # let the daemon finish starting its workers
        self.pids = sorted(descendants() - before - ({self.proc.pid} if not v.foreground else set()))
        if v.foreground and self.proc.pid not in self.pids:
            self.pids.insert(0, self.proc.pid)
        if not self.pids:
            self.note = "mount daemon process not found: its CPU and RSS are not measured"
        return self

    def __exit__(self, *exc) -> None:
        note = unmount(self.ctx, self.mnt)
        if note:
            self.note = (self.note + "; " if self.note else "") + note
        others = []
        for pid in self.pids:
            if self.proc and pid == self.proc.pid:
                continue
            try:
                others.append(psutil.Process(pid))
            except psutil.Error:
                pass
        if self.proc and not self.proc.wait(60):
            self.proc.kill()
            self.proc.wait(10)
        _, alive = psutil.wait_procs(others, timeout=60)  # reaps daemons re-parented to us
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.cache, ignore_errors=True)


def _key(rep: int) -> str:
    return f"bench-r{rep}.bin"


def why_unavailable(ctx: Ctx, v: Variant) -> str | None:
    """Why variant ``v`` cannot mount on this machine, or None."""
    why = ctx.tools.why_unavailable(v.tool)
    if not why and not ctx.tools.paths.get("fusermount"):
        why = "fusermount3 not installed (apt-get install fuse3)"
    if not why and not os.path.exists("/dev/fuse"):
        why = "/dev/fuse missing: no FUSE on this machine"
    return why


def rows(ctx: Ctx, tools: list[str]) -> list[Row]:
    out = []
    for v in VARIANTS:
        if v.tool not in tools:
            continue
        why = why_unavailable(ctx, v)
        cmd = show(v.argv(ctx, v.bucket, "MNT", Path("CACHE")), ctx) if not why else ""
        w = Row("mount", "write", v.tool, v.label, units=ctx.size, unit="bytes")
        r = Row("mount", "read", v.tool, v.label, units=ctx.size, unit="bytes")
        if why:
            w.status = r.status = "unavailable"
            w.reason = r.reason = why
        else:
            w.commands = [cmd, "sh -c 'exec cat DATA > MNT/KEY'  (timed until S3 holds all of it)", "fusermount3 -u MNT"]
            r.commands = [cmd, "sync; echo 3 > /proc/sys/vm/drop_caches",
                          f"{shlex.join(ctx.hasher)} MNT/KEY", "fusermount3 -u MNT"]
            w.fn = lambda ctx, rep, v=v: run_write(ctx, v, rep)
            r.fn = lambda ctx, rep, v=v: run_read(ctx, v, rep)
        out += [w, r]
    return out


def run_write(ctx: Ctx, v: Variant, rep: int) -> Run:
    key = _key(rep)
    ctx.ensure_bucket(v.bucket)
    ctx.delete(v.bucket, key)
    log = ctx.log(f"mount-write-{v.name}")
    m = mount_or_failure(ctx, v, log)
    if isinstance(m, Run):
        return m
    try:
        daemon = TreeMonitor(m.pids).start()
        srv = TreeMonitor(ctx.server_pids, sample_rss=False).start()
        with open(log, "ab") as logf:
            app = Proc("cat", ["sh", "-c", 'exec cat "$0" > "$1"', str(ctx.data), str(m.mnt / key)],
                       stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=ctx.env)
            finished = wait_all([app], ctx.timeout)
        stored = finished and app.rc == 0 and ctx.wait_stored(v.bucket, key, ctx.size, ctx.timeout)
        wall = time.monotonic() - app.t0
        cpu, rss = daemon.stop()
        server_cpu, _ = srv.stop()
    finally:
        m.__exit__(None, None, None)
    run = Run(ok=False, wall=wall, close_wall=app.wall, tool_cpu=cpu if m.pids else None,
              tool_rss=rss if m.pids else None, app_cpu=app.cpu, server_cpu=server_cpu, note=m.note,
              pids=m.pids)
    if not finished:
        run.reason = f"timeout after {ctx.timeout:g}s writing through the mount (log {log})"
    elif app.rc != 0:
        run.reason = f"cat > MNT/{key} exit status {app.rc}: {tail(log)}"
    elif not stored:
        run.reason = f"close() returned but S3 held no complete {ctx.size}-byte object/stream after {ctx.timeout:g}s"
    else:
        run.ok = True
    return run


def run_read(ctx: Ctx, v: Variant, rep: int) -> Run:
    key, note = _key(rep), ""
    own_key = key
    if ctx.stored_size(v.bucket, key) != ctx.size:
        key = "seed.bin"
        if ctx.stored_size(v.bucket, key) != ctx.size:
            ctx.seed_object(v.bucket, key)
        note = "read a boto3-uploaded object (the write row left no complete one)"
    log = ctx.log(f"mount-read-{v.name}")
    m = mount_or_failure(ctx, v, log, note)
    if isinstance(m, Run):
        return m
    try:
        err = ctx.drop_caches()
        if err:
            note = (note + "; " if note else "") + err
        daemon = TreeMonitor(m.pids).start()
        srv = TreeMonitor(ctx.server_pids, sample_rss=False).start()
        with open(log, "ab") as logf:
            app = Proc("hash", [*ctx.hasher, str(m.mnt / key)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=logf, env=ctx.env)
            finished = wait_all([app], ctx.timeout)
        out = app.popen.stdout.read().decode(errors="replace") if finished else ""
        app.popen.stdout.close()
        cpu, rss = daemon.stop()
        server_cpu, _ = srv.stop()
    finally:
        m.__exit__(None, None, None)
    notes = "; ".join(n for n in (note, m.note) if n)
    run = Run(ok=False, wall=app.wall, tool_cpu=cpu if m.pids else None, tool_rss=rss if m.pids else None,
              app_cpu=app.cpu, server_cpu=server_cpu, note=notes, pids=m.pids)
    digest = parse_digest(out)
    if not finished:
        run.reason = f"timeout after {ctx.timeout:g}s reading through the mount (log {log})"
    elif app.rc != 0:
        run.reason = f"{ctx.hasher[0]} MNT/{key} exit status {app.rc}: {tail(log)}"
    elif digest != ctx.digest:
        run.reason = f"WRONG BYTES: {ctx.hasher[0]} {digest or '(nothing)'} != {ctx.digest}"
    else:
        run.ok = True
    ctx.delete(v.bucket, own_key)
    return run
