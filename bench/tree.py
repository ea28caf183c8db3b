"""Tree rows: a real directory tree of small files through each FUSE mount, counted at the server.

The source is ``--tree-files`` regular files of the machine's own documentation
(``/usr/share/doc``, then ``/usr/share/man`` and so on when it holds fewer), copied once
per run into the data directory so that every tool gets the same bytes; symlinks are left
out, since not every mount can make them. Then, per mount variant and each on a fresh
mount (cold metadata caches, as after a reboot):

    cp -a SRC/. MNT/tree-rN        timed until S3 holds every file
    ls -lAR MNT/tree-rN             must show every file
    diff -r SRC MNT/tree-rN        page cache dropped first; must find no difference
    rm -rf MNT/tree-rN             timed until S3 holds none of them
    64 writers                     64 x `cat 1MiB > MNT/par-rN/fI` at once, until S3 holds all

Every tool reaches the server through a counting proxy (bench/wanproxy.py with no delay),
so a row reports the requests the server got per file, beside the daemon's CPU and peak
RSS. The harness's own checks (listings) go to the server directly and are not counted.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from common import KiB, MiB, Ctx, Row, Run, request_delta, show, tail
from measure import Proc, TreeMonitor, wait_all
from mount import VARIANTS, Variant, mount_or_failure, why_unavailable
from wanproxy import Link

SOURCES = ("/usr/share/doc", "/usr/share/man", "/usr/share/locale", "/usr/lib/python3")
TREE_VARIANTS = ("s3pipefs", "s3pipefs-base", "rclone-writes", "s3fs")
WRITERS = 64
FOLDER_SUFFIX = "_$folder$"  # a directory's attributes where markers keep none (docs/format.md)
PROXY = "tree"  # the name of the counting proxy (and of the log subdirectory)


# -- sources -------------------------------------------------------------------------------
def source_tree(ctx: Ctx) -> tuple[Path, dict[str, int]]:
    """The first ``--tree-files`` regular files of SOURCES, copied under fastdir once per
    run (mode and mtime kept). Returns the copy and {relative path: size}."""
    if "tree" in ctx.extra:
        return ctx.extra["tree"]
    want = ctx.args.tree_files
    root = ctx.fastdir / "tree-src"
    shutil.rmtree(root, ignore_errors=True)
    files: dict[str, int] = {}
    for base in SOURCES:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                if len(files) >= want:
                    break
                if os.path.islink(src) or not os.path.isfile(src) or not os.access(src, os.R_OK):
                    continue
                rel = os.path.join(Path(base).name, os.path.relpath(src, base))
                dst = root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                files[rel] = dst.stat().st_size
            if len(files) >= want:
                break
        if len(files) >= want:
            break
    ctx.extra["tree"] = (root, files)
    return root, files


def writer_source(ctx: Ctx) -> Path:
    path = ctx.fastdir / "tree-1MiB.bin"
    if not path.exists():
        path.write_bytes(os.urandom(MiB))
    return path


# -- what S3 holds -------------------------------------------------------------------------
def stored_files(ctx: Ctx, bucket: str, prefix: str) -> dict[str, int | None]:
    """{path relative to ``prefix``: size} of the files S3 holds there, in either layout: a
    plain object is a file of its size; a stream (a prefix with ``.manifest``) is a file
    whose size is not looked up (a mount commits it at close), and its segments are not
    files. Directory markers (keys ending in /, ``prefix`` itself among them) and folder
    objects (``dir_$folder$``, where a mount keeps a directory's attributes) are not files."""
    keys: dict[str, int] = {}
    for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            keys[o["Key"][len(prefix):]] = o["Size"]
    streams = {k[:-len("/.manifest")] for k in keys if k.endswith("/.manifest")}
    files: dict[str, int | None] = {s: None for s in streams}
    for k, size in keys.items():
        if not k or k.endswith("/") or k.endswith(FOLDER_SUFFIX) or k.rpartition("/")[0] in streams:
            continue
        files[k] = size
    return files


def wait_until(ctx: Ctx, done, t_exit: float, timeout: float) -> float | None:
    """Poll ``done()`` (a listing); the wall time it first held, or None at the deadline.
    Held at the first listing after the command exited: the exit time. Else the end of
    the listing that found it."""
    deadline = t_exit + timeout
    first = True
    while True:
        if done():
            return 0.0 if first else time.monotonic() - t_exit
        first = False
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def holds(expected: dict[str, int]):
    def check(got: dict[str, int | None]) -> bool:
        return got.keys() == expected.keys() and all(
            got[k] is None or got[k] == size for k, size in expected.items())
    return check


# -- rows ----------------------------------------------------------------------------------
OPS = ("cp -a", "ls -lAR", "diff -r", "rm -rf", f"{WRITERS} writers")


def rows(ctx: Ctx, tools: list[str]) -> list[Row]:
    _, files = source_tree(ctx)
    out = []
    by_name = {v.name: v for v in VARIANTS}
    for name in TREE_VARIANTS:
        v = by_name[name]
        if v.tool not in tools:
            continue
        why = why_unavailable(ctx, v)
        mount_cmd = show(v.argv(ctx, v.bucket, "MNT", Path("CACHE")), ctx) + "  (tools reach the server through the counting proxy)"
        commands = {
            "cp -a": "cp -a SRC/. MNT/tree-rN  (until S3 holds every file)",
            "ls -lAR": "ls -lAR MNT/tree-rN",
            "diff -r": "sync; echo 3 > /proc/sys/vm/drop_caches; diff -r SRC MNT/tree-rN",
            "rm -rf": "rm -rf MNT/tree-rN  (until S3 holds none of them)",
            f"{WRITERS} writers": f"{WRITERS} x sh -c 'exec cat 1MiB > MNT/par-rN/fI' at once  (until S3 holds all)",
        }
        for op in OPS:
            row = Row("tree", op, v.tool, v.label, unit="files",
                      units=WRITERS if op.endswith("writers") else len(files))
            if why:
                row.status, row.reason = "unavailable", why
            else:
                row.commands = [mount_cmd, commands[op]]
                row.fn = lambda ctx, rep, v=v, op=op: run_op(ctx, v, op, rep)
            out.append(row)
    return out


def run_op(ctx: Ctx, v: Variant, op: str, rep: int) -> Run:
    src, expected = source_tree(ctx)
    pctx = ctx.via(PROXY, Link())
    proxy = ctx.proxy(PROXY)
    prefix = f"tree-r{rep}/"
    timeout = 120 + 0.2 * len(expected)
    log = pctx.log(f"tree-{op.split()[0]}-{v.name}")           # the command's output
    mount_log = pctx.log(f"tree-{op.split()[0]}-{v.name}-mount")  # the mount daemon's
    note = ""
    if op == "cp -a":
        ctx.delete_prefix(v.bucket, prefix)
    elif op.endswith("writers"):
        prefix = f"par-r{rep}/"
        ctx.delete_prefix(v.bucket, prefix)
        expected = {f"f{i:02d}": MiB for i in range(WRITERS)}
    elif not holds(expected)(stored_files(ctx, v.bucket, prefix)):
        return Run(ok=False, reason=f"the cp -a row left no complete tree at {v.bucket}/{prefix}")
    m = mount_or_failure(pctx, v, mount_log)
    if isinstance(m, Run):
        return m
    try:
        if op == "diff -r":
            note = ctx.drop_caches() or ""
        dst = m.mnt / prefix.rstrip("/")
        if op.endswith("writers"):  # untimed and uncounted: the row is about the files
            dst.mkdir(exist_ok=True)
            one = writer_source(ctx)
        before = proxy.stats()
        daemon = TreeMonitor(m.pids).start()
        srv = TreeMonitor(ctx.server_pids, sample_rss=False).start()
        listing = ctx.fastdir / "tree-ls.txt"
        with open(log, "ab") as logf:
            if op.endswith("writers"):
                procs = [Proc(f"w{i}", ["sh", "-c", 'exec cat "$0" > "$1"', str(one), str(dst / f"f{i:02d}")],
                              stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, rss=False)
                         for i in range(WRITERS)]
            else:
                argv = {"cp -a": ["cp", "-a", f"{src}/.", str(dst)],
                        "ls -lAR": ["ls", "-lAR", str(dst)],
                        "diff -r": ["diff", "-r", str(src), str(dst)],
                        "rm -rf": ["rm", "-rf", str(dst)]}[op]
                out = open(listing, "wb") if op == "ls -lAR" else logf
                procs = [Proc(op, argv, stdin=subprocess.DEVNULL, stdout=out, stderr=logf, rss=False)]
                if out is not logf:
                    out.close()
            finished = wait_all(procs, timeout)
        t0 = min(p.t0 for p in procs)
        t_exit = max((p.t1 for p in procs if p.t1), default=time.monotonic())
        failed = [p for p in procs if p.rc != 0]
        settle = None
        if finished:
            settle = _settle(ctx, v, op, prefix, expected, t_exit, timeout, waiting=not failed)
        cpu, rss = daemon.stop()
        server_cpu, _ = srv.stop()
        after = proxy.stats()
    finally:
        m.__exit__(None, None, None)
    wall = (t_exit - t0) + (settle or 0.0)
    run = Run(ok=False, wall=wall, close_wall=t_exit - t0, tool_cpu=cpu if m.pids else None,
              tool_rss=rss if m.pids else None, server_cpu=server_cpu, pids=m.pids,
              requests=request_delta(before, after), note="; ".join(n for n in (note, m.note) if n))
    if not finished:
        run.reason = f"timeout after {timeout:g}s (log {log})"
    elif failed and not (op == "cp -a" and settle is not None):
        # cp -a also exits 1 when a mount cannot keep a directory's times: if every
        # file arrived, the row counts, with the error in its notes
        run.reason = f"{failed[0].name} exit status {failed[0].rc}: {tail(log)}"
    elif settle is None:
        run.reason = f"{op} returned but S3 did not match after {timeout:g}s"
    elif op == "ls -lAR" and (shown := _files_listed(listing)) != len(expected):
        run.reason = f"ls -lAR showed {shown} files, the tree has {len(expected)}"
    else:
        run.ok = True
        if failed:
            first = _first_error(log).replace(str(m.mnt), "MNT")
            run.note = "; ".join(n for n in (f"cp exit status {failed[0].rc}: {first}", run.note) if n)
    if op.endswith("writers"):
        ctx.delete_prefix(v.bucket, prefix)
    return run


def _settle(ctx: Ctx, v: Variant, op: str, prefix: str, expected: dict[str, int], t_exit: float,
            timeout: float, waiting: bool) -> float | None:
    """Seconds after the command's exit until S3 showed its result, or None: every file
    (cp, writers), none (rm), nothing to wait for (ls, diff). Without ``waiting`` (the
    command failed) only one look."""
    if op == "rm -rf":
        done = lambda: not stored_files(ctx, v.bucket, prefix)  # noqa: E731
    elif op == "cp -a" or op.endswith("writers"):
        done = lambda: holds(expected)(stored_files(ctx, v.bucket, prefix))  # noqa: E731
    else:
        return 0.0
    return wait_until(ctx, done, t_exit, timeout if waiting else 0.0)


def _first_error(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return (lines[0][:160] + f" (and {len(lines) - 1} more lines)") if lines else ""


def _files_listed(listing: Path) -> int:
    with open(listing, "rb") as f:
        return sum(1 for line in f if line.startswith(b"-"))


# -- report --------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    hdr = ["row", "tool", "wall s", "files/s", "req/file", "requests", "daemon CPU s/1k files",
           "server CPU s/1k files", "daemon RSS MiB", "status"]
    lines = []
    for r in rows:
        c = r.chosen
        status = r.status if r.status == "ok" else f"{r.status}: {r.reason}"
        if c and c.note:
            status += f" ({c.note})"
        if c and c.close_wall is not None and c.wall - c.close_wall > 0.05:
            status += f" (command returned at {c.close_wall:.2f}s)"
        if not c:
            lines.append([r.label, r.variant] + ["-"] * 7 + [status])
            continue
        total = sum((c.requests or {}).values())
        per_k = 1000 / r.units
        by_method = " ".join(f"{m}:{n}" for m, n in sorted((c.requests or {}).items(), key=lambda x: -x[1]))
        lines.append([r.label, r.variant, f"{c.wall:.2f}", f"{r.units / c.wall:.0f}",
                      f"{total / r.units:.2f}", by_method or "-",
                      "-" if c.tool_cpu is None else f"{c.tool_cpu * per_k:.2f}",
                      "-" if c.server_cpu is None else f"{c.server_cpu * per_k:.2f}",
                      "-" if c.tool_rss is None else f"{c.tool_rss / MiB:.0f}", status])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *lines)]

    def fmt(cells) -> str:
        return "  ".join(str(x).ljust(w) for x, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(hdr), fmt(["-" * w for w in widths])] + [fmt(cells) for cells in lines])


def describe(ctx: Ctx) -> str:
    root, files = source_tree(ctx)
    total = sum(files.values())
    dirs = len({os.path.dirname(f) for f in files})
    return (f"{len(files)} files in {dirs} directories, {total / MiB:.1f} MiB "
            f"(mean {total / max(1, len(files)) / KiB:.1f} KiB), from {', '.join(SOURCES[:2])}...")
