"""Pipe rows: upload from stdin and download to stdout, one object/stream per tool.

put:  cat DATA | TOOL-UPLOAD s3://bench-pipe/TOOL.bin     (or `< DATA` with --stdin file)
cat:  TOOL-DOWNLOAD s3://bench-pipe/TOOL.bin | md5sum     (the digest must match the data's)
"""
from __future__ import annotations

import shlex
import subprocess

from common import BASELINE, RCLONE_REMOTE, Ctx, family, Row, Run, parse_digest, show, tail, tool_rows
from measure import Proc, TreeMonitor, wait_all

BUCKET = "bench-pipe"


def _url(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def put_argv(ctx: Ctx, tool: str, key: str) -> list[str]:
    p, e = ctx.tools.paths.get(tool), ctx.endpoint
    return {
        # s3pipefs takes the endpoint and credentials from the AWS_* environment
        "s3pipefs": lambda: [p, "put", _url(key)],
        "s5cmd": lambda: [p, "--endpoint-url", e, "pipe", _url(key)],
        "rclone": lambda: [p, "rcat", f"{RCLONE_REMOTE}:{BUCKET}/{key}"],
        "aws": lambda: [p, "--endpoint-url", e, "s3", "cp", "-", _url(key)],
    }[family(tool)]()


def cat_argv(ctx: Ctx, tool: str, key: str) -> list[str]:
    p, e = ctx.tools.paths.get(tool), ctx.endpoint
    return {
        "s3pipefs": lambda: [p, "cat", _url(key)],
        "s5cmd": lambda: [p, "--endpoint-url", e, "cat", _url(key)],
        "rclone": lambda: [p, "cat", f"{RCLONE_REMOTE}:{BUCKET}/{key}"],
        "aws": lambda: [p, "--endpoint-url", e, "s3", "cp", _url(key), "-"],
    }[family(tool)]()


PIPE_TOOLS = ("s3pipefs", BASELINE, "s5cmd", "rclone", "aws")


def put_rows(ctx: Ctx, tools: list[str]) -> list[Row]:
    def commands(tool):
        feed = "cat DATA | " if ctx.args.stdin == "pipe" else ""
        redirect = "" if ctx.args.stdin == "pipe" else " < DATA"
        return [f"{feed}{show(put_argv(ctx, tool, 'KEY'), ctx)}{redirect}"]
    return tool_rows(ctx, tools, PIPE_TOOLS, "put", "put (stdin)", commands, run_put)


def cat_rows(ctx: Ctx, tools: list[str]) -> list[Row]:
    def commands(tool):
        return [f"{show(cat_argv(ctx, tool, 'KEY'), ctx)} | {shlex.join(ctx.hasher)}"]
    return tool_rows(ctx, tools, PIPE_TOOLS, "cat", "cat (stdout)", commands, run_cat)


def run_put(ctx: Ctx, tool: str, key: str) -> Run:
    ctx.ensure_bucket(BUCKET)
    ctx.delete(BUCKET, key)
    argv = put_argv(ctx, tool, key)
    log = ctx.log(f"put-{tool}")
    srv = TreeMonitor(ctx.server_pids, sample_rss=False).start()
    with open(log, "wb") as errf:
        if ctx.args.stdin == "pipe":
            feeder = Proc("cat", ["cat", str(ctx.data)], stdout=subprocess.PIPE, stderr=errf, env=ctx.env)
            t = Proc(tool, argv, stdin=feeder.popen.stdout, stdout=subprocess.DEVNULL, stderr=errf, env=ctx.env)
            feeder.popen.stdout.close()
            procs = [feeder, t]
        else:
            with open(ctx.data, "rb") as f:
                t = Proc(tool, argv, stdin=f, stdout=subprocess.DEVNULL, stderr=errf, env=ctx.env)
            procs = [t]
        finished = wait_all(procs, ctx.timeout)
    server_cpu, _ = srv.stop()
    wall = max(p.t1 for p in procs if p.t1) - min(p.t0 for p in procs)
    app = procs[0] if len(procs) > 1 else None
    run = Run(ok=False, wall=wall, tool_cpu=t.cpu, tool_rss=t.maxrss, server_cpu=server_cpu,
              app_cpu=app.cpu if app else None)
    if not finished:
        run.reason = f"timeout after {ctx.timeout:g}s (log {log})"
    elif t.rc != 0:
        run.reason = f"{tool} exit status {t.rc}: {tail(log)}"
    elif app and app.rc != 0:
        run.reason = f"cat exit status {app.rc} (the tool stopped reading stdin?): {tail(log)}"
    else:
        got = ctx.stored_size(BUCKET, key)
        if got != ctx.size:
            run.reason = f"exit status 0 but S3 holds no complete {ctx.size}-byte object/stream (found {got})"
        else:
            run.ok = True
    return run


def run_cat(ctx: Ctx, tool: str, key: str) -> Run:
    note = ""
    own_key = key
    if ctx.stored_size(BUCKET, key) != ctx.size:
        # put of this tool failed or was not selected: read a plain object uploaded by boto3
        key = key + ".seed"
        if ctx.stored_size(BUCKET, key) != ctx.size:
            ctx.seed_object(BUCKET, key)
        note = "read a boto3-uploaded object (no complete one from this tool's put)"
    argv = cat_argv(ctx, tool, key)
    err = ctx.drop_caches()
    if err:
        note = (note + "; " if note else "") + err
    log = ctx.log(f"cat-{tool}")
    srv = TreeMonitor(ctx.server_pids, sample_rss=False).start()
    with open(log, "wb") as errf:
        t = Proc(tool, argv, stdout=subprocess.PIPE, stderr=errf, env=ctx.env)
        h = Proc("hash", ctx.hasher, stdin=t.popen.stdout, stdout=subprocess.PIPE, stderr=errf, env=ctx.env)
        t.popen.stdout.close()
        finished = wait_all([t, h], ctx.timeout)
    server_cpu, _ = srv.stop()
    out = h.popen.stdout.read().decode(errors="replace") if finished else ""
    h.popen.stdout.close()
    wall = max(p.t1 for p in (t, h) if p.t1) - t.t0
    run = Run(ok=False, wall=wall, tool_cpu=t.cpu, tool_rss=t.maxrss, app_cpu=h.cpu,
              server_cpu=server_cpu, note=note)
    digest = parse_digest(out)
    if not finished:
        run.reason = f"timeout after {ctx.timeout:g}s (log {log})"
    elif t.rc != 0:
        run.reason = f"{tool} exit status {t.rc}: {tail(log)}"
    elif digest != ctx.digest:
        run.reason = f"WRONG BYTES: {ctx.hasher[0]} {digest or '(nothing)'} != {ctx.digest}"
    else:
        run.ok = True
    ctx.delete(BUCKET, own_key)  # keep the server's disk use bounded (not timed)
    return run
