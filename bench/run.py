#!/usr/bin/env python3
"""s3pipefs side by side with s5cmd, rclone, aws cli and s3fs-fuse, on one local S3 server.

    .venv/bin/python bench/run.py                     # everything, 1 GiB, 10,000 small objects
    .venv/bin/python bench/run.py --only copy --size 64M   # S3->S3 copy of one big file
    .venv/bin/python bench/run.py --size 64M --objects 1000 --only put,cat
    .venv/bin/python bench/run.py --tools s3pipefs,rclone --repeat 3
    .venv/bin/python bench/run.py --only tree --tree-files 1000    # small files through the mounts
    .venv/bin/python bench/run.py --only wan --wan-rtt 80 --wan-rate 100   # behind a slower link

See docs/benchmark.md for what each row runs and measures.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ALL_TOOLS, BASELINE, GiB, KiB, MiB, RCLONE_REMOTE, Ctx, Row, Run, Tools, make_data  # noqa: E402

SECTIONS = ("put", "cat", "mount", "sync", "copy", "tree", "wan")
HASHERS = ("md5sum", "sha1sum", "b2sum", "cksum")


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="size of the test data for put/cat/mount/copy rows (default 1G; K/M/G are binary)")
    ap.add_argument("--objects", type=int, default=10000, help="small objects in the sync rows (default 10000)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"sections to run, comma-separated: {','.join(SECTIONS)} (pipe = put,cat)")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"tools to run (default all: {','.join(ALL_TOOLS)})")
    ap.add_argument("--tree-files", type=int, default=2000,
                    help="files in the tree section's tree (default 2000, from /usr/share/doc and on; 5000 for the full comparison)")
    ap.add_argument("--wan-size", default="256M", help="test data of the wan rows (default 256M)")
    ap.add_argument("--wan-rtt", type=float, default=40.0, help="wan rows: round trip added, ms (default 40)")
    ap.add_argument("--wan-rate", type=float, default=400.0,
                    help="wan rows: rate cap per connection and direction, Mbit/s (default 400; 0: none)")
    ap.add_argument("--wan-window", default="0",
                    help="wan rows: bytes in flight per connection and direction (default 0: no cap)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the median run (by wall time) is reported")
    ap.add_argument("--stdin", choices=("pipe", "file"), default="pipe",
                    help="put rows: feed the tool through a pipe from `cat DATA` (default), or redirect stdin from the file")
    ap.add_argument("--hasher", choices=HASHERS, default="md5sum",
                    help="program that verifies downloaded bytes (default md5sum; cksum costs ~10x less CPU)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per run of a data row (default: 120 + 1 s per 2 MiB, at least 300)")
    ap.add_argument("--workdir", default=None, help="on-disk scratch dir: server data, mount points, caches (default: a new temp dir)")
    ap.add_argument("--data-dir", default=None,
                    help="where the test data is generated (default /dev/shm when it has room, else the workdir)")
    ap.add_argument("--results", default=str(HERE / "results"), help="directory for the JSON results and the logs")
    ap.add_argument("--no-setup", action="store_true", help="do not run bench/setup.sh (installs missing tools)")
    ap.add_argument("--no-drop-caches", action="store_true", help="do not drop the page cache before read rows")
    ap.add_argument("--keep", action="store_true", help="keep the workdir and the test data afterwards")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also run s3pipefs as of git commit REV (rows named s3pipefs-base) beside the working "
                         "tree's, to judge a change against the same server and load in one run")
    a = ap.parse_args(argv)
    a.size_bytes = parse_size(a.size)
    a.wan_size_bytes = parse_size(a.wan_size)
    a.wan_window = parse_size(a.wan_window)
    if a.tree_files < 1:
        ap.error("--tree-files must be >= 1")
    only = set()
    for s in a.only.split(","):
        s = s.strip()
        if not s:
            continue
        if s == "pipe":
            only |= {"put", "cat"}
        elif s in SECTIONS:
            only.add(s)
        else:
            ap.error(f"--only: unknown section {s!r} (choose from {', '.join(SECTIONS)}, pipe)")
    a.sections = [s for s in SECTIONS if s in only]
    a.tool_list = [t.strip() for t in a.tools.split(",") if t.strip()]
    for t in a.tool_list:
        if t not in ALL_TOOLS:
            ap.error(f"--tools: unknown tool {t!r} (choose from {', '.join(ALL_TOOLS)})")
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    if a.baseline and "s3pipefs" in a.tool_list:
        a.tool_list.insert(a.tool_list.index("s3pipefs") + 1, BASELINE)
    return a


# -- setup ---------------------------------------------------------------------------------
def run_setup() -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(HERE / "setup.sh")], env=env)
    if r.returncode != 0:
        print(f"bench: setup.sh exit status {r.returncode} (continuing)", file=sys.stderr)


# Copies of the test data one repetition writes to the server's disk, per section: put
# 4 tools; mount 4 variants plus rclone's and s3fs's local copies; copy 4 tools.
_WRITES_PER_REP = {"put": 4, "mount": 6, "copy": 4}
_WAN_WRITES_PER_REP = 4 + 6  # put and mount, of --wan-size


def disk_shortfall(a, workdir: Path) -> str | None:
    """Why the workdir's disk cannot hold this run, or None. The server keeps deleted
    objects' bytes until it vacuums, so a run's writes add up (a 3-repetition put, cat and
    mount run left ~21 GiB); running out half-way fails rows late and for the wrong reason."""
    copies = sum(n for section, n in _WRITES_PER_REP.items() if section in a.sections)
    wan = _WAN_WRITES_PER_REP * a.repeat + 2 if "wan" in a.sections else 0
    if not copies and not wan:
        return None
    need = (copies * a.repeat + 2) * a.size_bytes + wan * a.wan_size_bytes + GiB  # + sources and seeds, + slack
    free = shutil.disk_usage(workdir).free
    if free >= need:
        return None
    return (f"{workdir}: {free / GiB:.1f} GiB free, this run may write {need / GiB:.1f} GiB "
            "(deleted data stays on the server's disk until it vacuums); free some space, pass "
            "--workdir on a larger disk, or lower --repeat or --size")


def compile_tree(package: Path) -> None:
    """Compile a package's modules once, as installing it does. Under PYTHONDONTWRITEBYTECODE
    every run of a tool would otherwise compile each module it imports again, which charges
    a larger tree for its size (40-90 ms a command here) and is not what users run."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True,
                   stdout=subprocess.DEVNULL)


def make_baseline(rev: str, workdir: Path) -> str:
    """A launcher that runs s3pipefs as of commit ``rev`` (exported from this repository)
    with this venv's Python and libraries; the mount daemon it starts inherits the path."""
    src = workdir / "baseline-src"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "s3pipefs"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    compile_tree(src / "s3pipefs")
    launcher = workdir / "bin" / BASELINE
    launcher.parent.mkdir(parents=True, exist_ok=True)
    # -P: no working directory on sys.path, which `-m` would put first; run from a clone,
    # that would import the working tree's s3pipefs instead of the baseline's.
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH="{src}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" -P -m s3pipefs "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def start_server(workdir: Path):
    from measure import descendants

    from s3pipefs.server import LocalServer

    before = descendants()
    srv = LocalServer(str(workdir / "server"), port=0)
    started = srv.start()
    if isinstance(started, LocalServer):
        srv = started
    time.sleep(0.5)
    pids = set(descendants() - before)
    if getattr(srv, "pid", None):
        pids.add(srv.pid)
    return srv, sorted(pids)


def make_env(server, workdir: Path) -> dict:
    env = dict(os.environ)
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in server.env().items()})
    env.setdefault("AWS_ENDPOINT_URL", server.endpoint)
    env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION", "us-east-1"))
    env.setdefault("AWS_REGION", env["AWS_DEFAULT_REGION"])
    # No ~/.aws or ~/.config/rclone settings change what the tools do: empty config files.
    for name in ("aws-config", "aws-credentials", "rclone.conf"):
        (workdir / name).touch()
    env["AWS_CONFIG_FILE"] = str(workdir / "aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(workdir / "aws-credentials")
    env["RCLONE_CONFIG"] = str(workdir / "rclone.conf")
    r = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
    env.update({r + "TYPE": "s3", r + "PROVIDER": "SeaweedFS", r + "ENDPOINT": server.endpoint,
                r + "ENV_AUTH": "true", r + "REGION": env["AWS_DEFAULT_REGION"]})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def make_s3(env: dict):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                                      retries={"max_attempts": 5, "mode": "standard"}))


def choose_fastdir(a, workdir: Path) -> tuple[Path, str]:
    need = (a.size_bytes + (a.objects * 9 * KiB if "sync" in a.sections else 0)
            + (a.tree_files * 64 * KiB + MiB if "tree" in a.sections else 0)
            + (a.wan_size_bytes if "wan" in a.sections else 0) + 256 * MiB)
    if a.data_dir:
        d = Path(a.data_dir)
        d.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="s3pipefs-bench-", dir=d)), "--data-dir"
    shm = Path("/dev/shm")
    if shm.is_dir():
        st = os.statvfs(shm)
        free = st.f_bavail * st.f_frsize
        if free >= need:
            return Path(tempfile.mkdtemp(prefix="s3pipefs-bench-", dir=shm)), "tmpfs /dev/shm"
        why = f"/dev/shm has {free / MiB:.0f} MiB free, needs {need / MiB:.0f} MiB"
    else:
        why = "no /dev/shm"
    d = workdir / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d, f"local disk ({why}): dropping the page cache evicts it, so write rows also read the disk"


# -- running -------------------------------------------------------------------------------
def run_rows(ctx: Ctx, rows: list[Row]) -> None:
    """Run every row ``--repeat`` times, round-robin: repetition 1 of every row, then
    repetition 2, and so on. The server and the page cache drift over a run (a copy
    row's wall time moved from 2.8 s to 4.7 s between consecutive runs); taking each
    tool's runs far apart in time spreads that drift over all tools instead of loading
    it onto whichever rows ran during a slow stretch.

    Within each section the tools take turns at going first (see rotated): the first row
    after a section change ran on a server still busy with the last section's deletes (a
    copy run 1 s slower than the tool after it). A read row still follows the write row
    it reads back, and sections keep their order."""
    for row in rows:
        if row.fn is None:
            print(f"[{row.label} / {row.variant}] {row.status}: {row.reason}", flush=True)
    live = [row for row in rows if row.fn is not None]
    for rep in range(1, ctx.args.repeat + 1):
        for row in rotated(live, rep - 1):
            run_once(ctx, row, rep)
    for row in live:
        row.finish()


def rotated(rows: list[Row], turn: int) -> list[Row]:
    """``rows`` with each section's blocks rotated by ``turn``; a block is a run of rows
    of one section and one variant (a mount's write and read rows stay together)."""
    out: list[Row] = []
    for _, section_rows in itertools.groupby(rows, key=lambda r: r.section):
        blocks = [list(b) for _, b in itertools.groupby(section_rows, key=lambda r: r.variant)]
        k = turn % len(blocks)
        for block in blocks[k:] + blocks[:k]:
            out.extend(block)
    return out


def run_once(ctx: Ctx, row: Row, rep: int) -> None:
    label = f"{row.label} / {row.variant}"
    # Untimed: flush what earlier rows left dirty (a 1 GiB write sits in the page cache
    # for up to 30 s), so its writeback does not land in this row's timing.
    os.sync()
    try:
        run = row.fn(ctx, rep)
    except Exception as e:  # a harness or tool problem must not stop the other rows
        log = ctx.log(f"error-{row.section}-{row.tool}")
        log.write_text(traceback.format_exc())
        run = Run(ok=False, reason=f"harness error {type(e).__name__}: {e} (traceback in {log})")
    run.loadavg = round(os.getloadavg()[0], 2)
    row.runs.append(run)
    rate = ""
    if run.wall:
        rate = (f"{row.units / MiB / run.wall:.1f} MiB/s" if row.unit == "bytes"
                else f"{row.units / run.wall:.0f} {'files' if row.unit == 'files' else 'obj'}/s")
    status = "ok" if run.ok else f"FAILED: {run.reason}"
    wall = f"{run.wall:.2f}s" if run.wall else "-"
    print(f"[{label} #{rep}] {wall} {rate} {status}", flush=True)


def _fmt(v, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def table(rows: list[Row]) -> str:
    hdr = ["row", "tool", "wall s", "rate", "tool CPU", "app CPU", "server CPU", "tool RSS MiB", "status"]
    lines = []
    for r in rows:
        c = r.chosen
        per = (GiB / r.units) if (r.unit == "bytes" and r.units) else (1000 / r.units if r.units else 0)
        per_unit = "s/GiB" if r.unit == "bytes" else "s/1k obj"
        if c:
            rate = (f"{r.units / MiB / c.wall:.1f} MiB/s" if r.unit == "bytes" else f"{r.units / c.wall:.0f} obj/s")
            cells = [r.label, r.variant, f"{c.wall:.2f}", rate,
                     (_fmt(c.tool_cpu, ".2f", per) + " " + per_unit) if c.tool_cpu is not None else "-",
                     _fmt(c.app_cpu, ".2f", per),
                     (_fmt(c.server_cpu, ".2f", per) + " " + per_unit) if c.server_cpu is not None else "-",
                     _fmt(c.tool_rss, ".0f", 1 / MiB)]
        else:
            cells = [r.label, r.variant] + ["-"] * 6
        status = r.status if r.status == "ok" else f"{r.status}: {r.reason}"
        notes = []
        if c and c.close_wall is not None and c.wall and c.wall - c.close_wall > 0.05:
            notes.append(f"close() returned at {c.close_wall:.2f}s")
        if c and c.note:
            notes.append(c.note)
        if c and c.requests:
            notes.append(f"{sum(c.requests.values())} requests")
        if len(r.runs) > 1 and c:
            walls = sorted(x.wall for x in r.runs if x.ok)
            notes.append("walls " + "/".join(f"{w:.2f}" for w in walls))
        if notes:
            status += " (" + "; ".join(notes) + ")"
        lines.append(cells + [status])
    widths = [max(len(hdr[i]), *(len(l[i]) for l in lines)) if lines else len(hdr[i]) for i in range(len(hdr) - 1)]
    out = ["  ".join(h.ljust(w) for h, w in zip(hdr[:-1], widths)) + "  " + hdr[-1]]
    out.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    for l in lines:
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(l[:-1], widths)))
                   + "  " + l[-1])
    return "\n".join(out)


def _stop_on_sigterm(signum, frame):
    # As Ctrl-C: the cleanup below unmounts, stops the server and removes the workdir. A
    # plain SIGTERM (pkill, a CI timeout) used to leave mounts and a 20 GB workdir behind.
    raise KeyboardInterrupt


def main(argv=None) -> int:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if not a.no_setup:
        run_setup()

    from measure import drop_caches, set_child_subreaper
    import mount as mount_rows
    import pipe as pipe_rows
    import s3copy as copy_rows
    import sync as sync_rows
    import tree as tree_rows
    import wan as wan_rows

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = Path(a.results)
    logdir = results / f"{stamp}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="s3pipefs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    subreaper = set_child_subreaper()

    server = None
    ctx = None
    fastdir = None
    rows: list[Row] = []
    meta: dict = {}
    try:
        short = disk_shortfall(a, workdir)
        if short:
            print(f"bench: {short}", file=sys.stderr)
            return 2
        fastdir, fast_why = choose_fastdir(a, workdir)
        print(f"bench: workdir {workdir}, test data in {fastdir} ({fast_why}), logs in {logdir}", flush=True)
        try:
            server, server_pids = start_server(workdir)
        except Exception as e:
            print(f"bench: cannot start the local S3 server (s3pipefs.server.LocalServer): {e}", file=sys.stderr)
            traceback.print_exc()
            return 2
        env = make_env(server, workdir)
        print(f"bench: S3 server {server.endpoint} (pids {server_pids})", flush=True)
        compile_tree(HERE.parent / "s3pipefs")
        baseline = make_baseline(a.baseline, workdir) if a.baseline else None
        tools = Tools.discover(env, baseline)
        for name in ALL_TOOLS + ((BASELINE,) if baseline else ()):
            print(f"bench:   {name:13s} {tools.versions.get(name) or 'UNAVAILABLE: ' + tools.missing.get(name, '?')}")
        hasher = [a.hasher]
        ctx = Ctx(args=a, endpoint=server.endpoint, env=env, s3=make_s3(env), tools=tools, workdir=workdir,
                  fastdir=fastdir, logdir=logdir, hasher=hasher, server_pids=server_pids)
        ctx.size = a.size_bytes
        ctx.timeout = a.timeout or max(300.0, 120 + a.size_bytes / (2 * MiB))
        ctx.sync_timeout = a.timeout or max(300.0, 60 + a.objects * 0.1)
        if a.no_drop_caches:
            drop_note = "page cache not dropped (--no-drop-caches)"
        else:
            drop_note = drop_caches()

        data_sections = {"put", "cat", "mount", "copy"} & set(a.sections)
        hash_time = gen_time = None
        if data_sections:
            ctx.data = fastdir / "data.bin"
            gen_time = make_data(ctx.data, ctx.size)
            t0 = time.monotonic()
            r = subprocess.run([*hasher, str(ctx.data)], capture_output=True, text=True, check=True)
            hash_time = time.monotonic() - t0
            from common import parse_digest
            ctx.digest = parse_digest(r.stdout)
            print(f"bench: {ctx.size / MiB:.0f} MiB of random data in {gen_time:.1f}s; {a.hasher} of it from "
                  f"{fast_why.split(' (')[0]} takes {hash_time:.2f}s ({ctx.size / MiB / hash_time:.0f} MiB/s): "
                  f"{ctx.digest}", flush=True)

        builders = {"put": pipe_rows.put_rows, "cat": pipe_rows.cat_rows, "mount": mount_rows.rows,
                    "sync": sync_rows.rows, "copy": copy_rows.rows, "tree": tree_rows.rows, "wan": wan_rows.rows}
        for s in a.sections:
            rows += builders[s](ctx, a.tool_list)
        tree_what = tree_rows.describe(ctx) if "tree" in a.sections else None
        if tree_what:
            print(f"bench: tree: {tree_what}", flush=True)
        if "wan" in a.sections:
            print(f"bench: wan: {wan_rows.describe(a)}, {a.wan_size_bytes / MiB:.0f} MiB of data", flush=True)

        meta = {
            "timestamp": stamp, "host": platform.node(), "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(), "python": sys.version.split()[0],
            "kernel": platform.release(), "size": ctx.size, "objects": a.objects, "repeat": a.repeat,
            "reported_run": "median by wall time (the lower middle one for an even count)",
            "stdin": a.stdin, "hasher": a.hasher, "hasher_seconds_on_data": hash_time,
            "data_dir": str(fastdir), "data_dir_why": fast_why, "workdir": str(workdir),
            "server_endpoint": server.endpoint, "server_pids": server_pids,
            "page_cache": drop_note or "dropped before every read row", "subreaper": subreaper,
            "tool_versions": tools.versions, "tools_unavailable": tools.missing,
            "timeout": ctx.timeout, "sync_timeout": ctx.sync_timeout,
            "tree": tree_what, "tree_files": a.tree_files, "wan_size": a.wan_size_bytes, "wan_rtt_ms": a.wan_rtt,
            "wan_rate_mbit": a.wan_rate, "wan_window": a.wan_window,
        }
        t_all = time.monotonic()
        run_rows(ctx, rows)
        meta["total_seconds"] = time.monotonic() - t_all
        meta["loadavg_after"] = os.getloadavg()
    finally:
        if ctx is not None:
            ctx.stop_proxies()
        if server is not None:
            try:
                server.stop()
            except Exception as e:
                print(f"bench: stopping the server: {e}", file=sys.stderr)
            log = getattr(server, "log_path", None)
            if log and Path(log).exists():
                shutil.copy(log, logdir / "server.log")
        if not a.keep:
            mnt = workdir / "mnt"
            if mnt.is_dir():
                for m in mnt.iterdir():
                    subprocess.run(["umount", "-l", str(m)], capture_output=True)
            if fastdir is not None and fastdir != workdir / "data":
                shutil.rmtree(fastdir, ignore_errors=True)
            if not a.workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    out = results / f"{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "rows": [r.to_json() for r in rows]}, indent=2, default=str))
    print()
    what = []
    if {"put", "cat", "mount", "copy"} & set(a.sections):
        what.append(f"data {a.size_bytes / MiB:.0f} MiB")
    if "sync" in a.sections:
        what.append(f"{a.objects} objects for sync")
    if "wan" in a.sections:
        what.append(f"wan: {a.wan_size_bytes / MiB:.0f} MiB, {wan_rows.describe(a)}")
    print(f"s3pipefs benchmark {stamp}: {', '.join(what)}; "
          f"{os.cpu_count()} CPUs shared with the S3 server; "
          + (f"median of {a.repeat} runs" if a.repeat > 1 else "1 run per row"))
    other = [r for r in rows if r.section != "tree"]
    tree = [r for r in rows if r.section == "tree"]
    if other or not tree:
        print(table(other))
    if tree:
        print()
        print(f"tree: {meta.get('tree', '')}; each row on a fresh mount, requests counted at the server")
        print(tree_rows.table(tree))
    print()
    print("tool CPU: user+sys of the tool's process tree (pipe/sync rows: os.wait4 rusage; mount rows: the FUSE daemon via psutil).")
    print(f"app CPU: the other side of the pipe or mount (`cat DATA`, `{a.hasher}`). server CPU: the S3 server during the row.")
    print("tool RSS: peak resident memory of the tool (ru_maxrss via GNU time, or sampled RSS/VmHWM of the mount daemon).")
    if meta.get("loadavg_after"):
        print(f"machine load (1-min average): {meta['loadavg_before'][0]:.1f} before, {meta['loadavg_after'][0]:.1f} "
              f"after, per run in the JSON ({os.cpu_count()} CPUs): a busy machine makes the numbers noisy.")
    print(f"page cache: {meta.get('page_cache', '?')}.")
    print()
    print("commands (DATA = the test data file, KEY = a fresh key per run, MNT = the mount point, BUCKETs bench-*):")
    width = max((len(f"{r.label} / {r.variant}:") for r in rows), default=0)
    for r in rows:
        for i, c in enumerate(r.commands or [f"({r.status}: {r.reason})"]):
            head = f"{r.label} / {r.variant}:" if i == 0 else ""
            print(f"  {head:{width}s} {c}")
    print()
    print(f"results: {out}")
    return 0 if all(r.status in ("ok", "unavailable", "skipped") for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; mounts, server and workdir cleaned up", file=sys.stderr)
        sys.exit(130)
