"""Sync rows: many small objects, directory -> bucket and bucket -> bucket.

The section is a list of scenarios (``SCENARIOS``). A scenario says how to prepare its
source once per run and, for each tool, the command that syncs that source to a fresh
destination prefix. Every run is verified: the destination must hold exactly the source's
keys with the source's MD5s as ETags (small objects are single-part uploads, so the ETag is
the MD5 of the content for every tool).

To add a scenario::

    from sync import Scenario, SCENARIOS
    SCENARIOS.append(Scenario(
        name="dir->bucket (deep tree)",
        prepare=my_prepare,            # ctx -> (source description, {relative key: md5 hex})
        commands={"rclone": lambda ctx, src, bucket, prefix: [...], ...},
    ))
"""
from __future__ import annotations

import hashlib
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common import BASELINE, RCLONE_REMOTE, Ctx, family, Row, Run, show, tail, timed_command
from measure import Proc, wait_all

SRC_BUCKET = "bench-sync-src"

Command = Callable[[Ctx, str, str, str], list[str]]  # (ctx, source, dest bucket, dest prefix) -> argv


@dataclass
class Scenario:
    name: str
    # Called once per run (lazily, before the scenario's first row). Returns the source
    # (a directory path or an s3:// URL, passed to the commands) and the expected content:
    # {key relative to the destination prefix: MD5 hex}.
    prepare: Callable[[Ctx], tuple[str, dict[str, str]]]
    commands: dict[str, Command]
    # Sync once untimed into the destination, then time a second identical sync
    # (what a re-run with nothing changed costs: listing and comparing only).
    warmup: bool = False
    slug: str = ""
    _prepared: dict = field(default_factory=dict, repr=False)

    def source(self, ctx: Ctx) -> tuple[str, dict[str, str]]:
        if "src" not in self._prepared:
            self._prepared["src"] = self.prepare(ctx)
        return self._prepared["src"]


# -- sources -------------------------------------------------------------------------------
def small_files(ctx: Ctx) -> tuple[Path, dict[str, str]]:
    """N files of 1-8 KiB of random bytes, 100 per directory. Made once per run."""
    if "files" in ctx.extra:
        return ctx.extra["files"]
    root = ctx.fastdir / "sync-src"
    rng = random.Random(20240601)
    expected = {}
    for i in range(ctx.args.objects):
        rel = f"d{i // 100:03d}/f{i:05d}.dat"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(1024, 8 * 1024))
        path.write_bytes(data)
        expected[rel] = hashlib.md5(data).hexdigest()
    ctx.extra["files"] = (root, expected)
    return root, expected


def prepare_dir(ctx: Ctx) -> tuple[str, dict[str, str]]:
    root, expected = small_files(ctx)
    return str(root), expected


def prepare_bucket(ctx: Ctx) -> tuple[str, dict[str, str]]:
    """The same small files as objects in SRC_BUCKET, uploaded by boto3 (not timed)."""
    root, expected = small_files(ctx)
    ctx.ensure_bucket(SRC_BUCKET)
    have = {}
    for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=SRC_BUCKET):
        for o in page.get("Contents", []):
            have[o["Key"]] = o["ETag"].strip('"')

    def put(rel: str) -> None:
        if have.get(rel) != expected[rel]:
            ctx.s3.put_object(Bucket=SRC_BUCKET, Key=rel, Body=(root / rel).read_bytes())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, expected))
    return f"s3://{SRC_BUCKET}", expected


# -- commands ------------------------------------------------------------------------------
def _p(ctx: Ctx, tool: str) -> str:
    return ctx.tools.paths[tool]


DIR_TO_BUCKET: dict[str, Command] = {
    "s3pipefs": lambda ctx, src, b, p: [_p(ctx, "s3pipefs"), "sync", src + "/", f"s3://{b}/{p}/"],
    "rclone": lambda ctx, src, b, p: [_p(ctx, "rclone"), "sync", src, f"{RCLONE_REMOTE}:{b}/{p}"],
    "s5cmd": lambda ctx, src, b, p: [_p(ctx, "s5cmd"), "--endpoint-url", ctx.endpoint, "sync",
                                     src + "/", f"s3://{b}/{p}/"],
    "aws": lambda ctx, src, b, p: [_p(ctx, "aws"), "--endpoint-url", ctx.endpoint, "s3", "sync",
                                   src, f"s3://{b}/{p}"],
}

BUCKET_TO_BUCKET: dict[str, Command] = {
    "s3pipefs": lambda ctx, src, b, p: [_p(ctx, "s3pipefs"), "sync", src + "/", f"s3://{b}/{p}/"],
    "rclone": lambda ctx, src, b, p: [_p(ctx, "rclone"), "sync", f"{RCLONE_REMOTE}:{src[5:]}",
                                      f"{RCLONE_REMOTE}:{b}/{p}"],
    "s5cmd": lambda ctx, src, b, p: [_p(ctx, "s5cmd"), "--endpoint-url", ctx.endpoint, "sync",
                                     src + "/*", f"s3://{b}/{p}/"],
    "aws": lambda ctx, src, b, p: [_p(ctx, "aws"), "--endpoint-url", ctx.endpoint, "s3", "sync",
                                   src, f"s3://{b}/{p}"],
}

SCENARIOS: list[Scenario] = [
    Scenario("dir->bucket", prepare_dir, DIR_TO_BUCKET, slug="dir"),
    Scenario("bucket->bucket", prepare_bucket, BUCKET_TO_BUCKET, slug="b2b"),
    Scenario("dir->bucket re-run", prepare_dir, DIR_TO_BUCKET, warmup=True, slug="rerun"),
]

SYNC_TOOLS = ("s3pipefs", BASELINE, "s5cmd", "rclone", "aws")


def sync_argv(ctx: Ctx, sc: Scenario, tool: str, src: str, bucket: str, prefix: str) -> list[str]:
    """The scenario's command for ``tool``; the baseline runs s3pipefs's with its own program."""
    argv = sc.commands[family(tool)](ctx, src, bucket, prefix)
    return [ctx.tools.paths[tool], *argv[1:]]


def _short(argv: list[str], ctx: Ctx) -> str:
    return show([a.replace(str(ctx.fastdir / "sync-src"), "SRCDIR") for a in argv], ctx)


def rows(ctx: Ctx, tools: list[str]) -> list[Row]:
    out = []
    for sc in SCENARIOS:
        for tool in SYNC_TOOLS:
            if tool not in tools or family(tool) not in sc.commands:
                continue
            row = Row("sync", sc.name, tool, tool, units=ctx.args.objects, unit="objects")
            why = ctx.tools.why_unavailable(tool)
            if why:
                row.status, row.reason = "unavailable", why
            else:
                src = str(ctx.fastdir / "sync-src") if sc.prepare is prepare_dir else f"s3://{SRC_BUCKET}"
                argv = sync_argv(ctx, sc, tool, src, f"bench-sync-{tool}", f"{sc.slug or 'x'}-rN")
                row.commands = [_short(argv, ctx) + (" (twice; the second run is timed)" if sc.warmup else "")]
                row.fn = lambda ctx, rep, sc=sc, tool=tool: run_sync(ctx, sc, tool, rep)
            out.append(row)
    return out


def _listing(ctx: Ctx, bucket: str, prefix: str) -> dict[str, str]:
    got = {}
    for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            got[o["Key"][len(prefix):]] = o["ETag"].strip('"')
    return got


def run_sync(ctx: Ctx, sc: Scenario, tool: str, rep: int) -> Run:
    src, expected = sc.source(ctx)
    bucket, prefix = f"bench-sync-{tool}", f"{sc.slug or 'x'}-r{rep}"
    ctx.ensure_bucket(bucket)
    ctx.delete_prefix(bucket, prefix + "/")
    argv = sync_argv(ctx, sc, tool, src, bucket, prefix)
    log = ctx.log(f"sync-{sc.slug}-{tool}")
    timeout = ctx.sync_timeout
    note = ""
    with open(log, "ab") as logf:
        if sc.warmup:
            w = Proc(tool, argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=ctx.env)
            if not wait_all([w], timeout) or w.rc != 0:
                ctx.delete_prefix(bucket, prefix + "/")
                return Run(ok=False, reason=f"first (untimed) sync failed, exit status {w.rc}: {tail(log)}")
        run = timed_command(ctx, tool, argv, logf, log, timeout, note)
    if not run.reason:
        got = _listing(ctx, bucket, prefix + "/")
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        wrong = [k for k in expected if k in got and got[k] != expected[k]]
        if missing or extra or wrong:
            example = (missing or extra or wrong)[0]
            run.reason = (f"destination differs: {len(missing)} missing, {len(extra)} extra, "
                          f"{len(wrong)} with another ETag (e.g. {example})")
        else:
            run.ok = True
    ctx.delete_prefix(bucket, prefix + "/")
    return run
