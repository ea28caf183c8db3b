"""Copy rows: one big file copied S3 -> S3 by each tool, on the same server in one run.

    s3pipefs  s3pipefs cp s3://bench-copy-src/big.stream s3://bench-copy-dst/KEY
    rclone    rclone copyto bench:bench-copy-src/big.bin bench:bench-copy-dst/KEY
    s5cmd     s5cmd --endpoint-url E cp s3://bench-copy-src/big.bin s3://bench-copy-dst/KEY
    aws       aws --endpoint-url E s3 cp s3://bench-copy-src/big.bin s3://bench-copy-dst/KEY

The sources hold the test data (``ctx.data``) and are prepared once per run, untimed:
s3pipefs copies a *stream* written by ``s3pipefs put s3://bench-copy-src/big.stream <
DATA`` (its copy is server-side: one CopyObject per segment, the manifest last); the other
tools copy one plain object ``big.bin`` uploaded by the harness's boto3 client in a single
PUT (up to 5 GiB), so its ETag is the data's MD5.

Each run copies into a fresh key (``TOOL-rN.bin``) in ``bench-copy-dst``, after dropping
the page cache, and is verified:

* s3pipefs: ``KEY/.manifest`` says ``completed = true``, ``total_size`` = the data's size,
  ``sha256`` = the data's SHA-256, and the segments listed under ``KEY/`` are the source's
  (names, sizes, MD5 ETags), and the source's segments are the data's slices (each
  segment's MD5 ETag against the MD5 of its slice of DATA, checked once when prepared);
* the others: ``HEAD KEY`` gives the data's size and an ETag that is the data's MD5; a
  multipart ETag (aws copies in parts) is no MD5, so then the object is read back and its
  MD5 compared (untimed).

The destination is deleted after every run. Module name: ``copy.py`` would shadow the
standard library's ``copy`` (bench/ is first on sys.path and dataclasses imports it).
"""
from __future__ import annotations

import configparser
import hashlib
import re
import subprocess

from common import BASELINE, RCLONE_REMOTE, GiB, family, MiB, Ctx, Row, Run, show, tail, timed_command, tool_rows
from measure import Proc, wait_all

SRC_BUCKET = "bench-copy-src"
DST_BUCKET = "bench-copy-dst"
SRC_STREAM = "big.stream"   # s3pipefs's source: a stream
SRC_OBJECT = "big.bin"      # everyone else's source: a plain object

COPY_TOOLS = ("s3pipefs", BASELINE, "s5cmd", "rclone", "aws")

_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_SEGMENT = re.compile(r"[0-9]{15}")


def _url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def copy_argv(ctx: Ctx, tool: str, key: str) -> list[str]:
    p, e = ctx.tools.paths.get(tool), ctx.endpoint
    src, dst = _url(SRC_BUCKET, SRC_OBJECT), _url(DST_BUCKET, key)
    return {
        # s3pipefs takes the endpoint and credentials from the AWS_* environment
        "s3pipefs": lambda: [p, "cp", _url(SRC_BUCKET, SRC_STREAM), dst],
        "rclone": lambda: [p, "copyto", f"{RCLONE_REMOTE}:{SRC_BUCKET}/{SRC_OBJECT}",
                           f"{RCLONE_REMOTE}:{DST_BUCKET}/{key}"],
        "s5cmd": lambda: [p, "--endpoint-url", e, "cp", src, dst],
        "aws": lambda: [p, "--endpoint-url", e, "s3", "cp", src, dst],
    }[family(tool)]()


def _source_cmd(ctx: Ctx, tool: str) -> str:
    if family(tool) == "s3pipefs":
        return show([ctx.tools.paths["s3pipefs"], "put", _url(SRC_BUCKET, SRC_STREAM)], ctx) + " < DATA"
    return f"boto3 upload_file DATA {_url(SRC_BUCKET, SRC_OBJECT)} (one PUT)"


def rows(ctx: Ctx, tools: list[str]) -> list[Row]:
    def commands(tool):
        return [show(copy_argv(ctx, tool, "KEY"), ctx), f"(source, once, untimed: {_source_cmd(ctx, tool)})"]
    return tool_rows(ctx, tools, COPY_TOOLS, "copy", "copy (S3->S3)", commands, run_copy)


# -- expected content ----------------------------------------------------------------------
def digests(ctx: Ctx) -> dict[str, str]:
    """SHA-256 and MD5 (hex) of the test data, computed once per run (untimed).

    ctx.digest is the output of ctx.hasher, which is an MD5 only with --hasher md5sum.
    """
    if "copy-digests" not in ctx.extra:
        sha, md5 = hashlib.sha256(), hashlib.md5()
        reuse_md5 = ctx.hasher == ["md5sum"] and _MD5_ETAG.fullmatch(ctx.digest or "")
        with open(ctx.data, "rb") as f:
            while chunk := f.read(8 << 20):
                sha.update(chunk)
                if not reuse_md5:
                    md5.update(chunk)
        ctx.extra["copy-digests"] = {"sha256": sha.hexdigest(),
                                     "md5": ctx.digest if reuse_md5 else md5.hexdigest()}
    return ctx.extra["copy-digests"]


# -- verification --------------------------------------------------------------------------
def check_stream(ctx: Ctx, bucket: str, key: str, like: tuple[str, str] | None = None) -> str | None:
    """None when bucket/key is a complete stream holding the test data, else what is wrong.

    The manifest must say complete, the data's size and SHA-256; the segments listed must add
    up to that size and, with `like` (bucket, key of the source stream), have the source's
    segments' names, sizes and MD5 ETags (a copy's manifest is the source's, byte for byte:
    the segments are what show the bytes were copied).
    """
    want = digests(ctx)
    try:
        body = ctx.s3.get_object(Bucket=bucket, Key=f"{key}/.manifest")["Body"].read()
    except Exception as e:
        return f"no manifest {key}/.manifest ({type(e).__name__}: {e})"
    cp = configparser.ConfigParser()
    try:
        cp.read_string(body.decode("utf-8"))
        completed = cp.get("s3pipe2", "completed", fallback="").strip().lower()
        total = cp.getint("s3pipe2", "total_size", fallback=-1)
        sha = cp.get("s3pipefs", "sha256", fallback="").strip().lower()
    except (configparser.Error, UnicodeDecodeError, ValueError) as e:
        return f"unreadable manifest {key}/.manifest: {e}"
    if completed != "true":
        return f"manifest says completed = {completed or '(missing)'}"
    if total != ctx.size:
        return f"manifest says total_size = {total}, the data has {ctx.size} bytes"
    if sha != want["sha256"]:
        return f"WRONG BYTES: manifest sha256 {sha or '(missing)'} != {want['sha256']}"
    segs = segments(ctx, bucket, key)
    listed = sum(size for size, _ in segs.values())
    if listed != total:
        return f"segments under {key}/ hold {listed} bytes, the manifest says {total}"
    if like is not None:
        src = segments(ctx, *like)
        differ = sorted(n for n in src.keys() | segs.keys() if src.get(n) != segs.get(n))
        if differ:
            return (f"WRONG BYTES: {len(differ)} segments differ from the source's in size or MD5 ETag "
                    f"(e.g. {differ[0]})")
    return None


def segments(ctx: Ctx, bucket: str, key: str) -> dict[str, tuple[int, str]]:
    """{segment name: (size, ETag)} of the stream bucket/key (segment ETags are MD5s)."""
    out = {}
    for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/"):
        for o in page.get("Contents", []):
            name = o["Key"][len(key) + 1:]
            if _SEGMENT.fullmatch(name):
                out[name] = (o["Size"], o["ETag"].strip('"').lower())
    return out


def segments_hold_data(ctx: Ctx, segs: dict[str, tuple[int, str]]) -> str | None:
    """None when the segments, in order, are the test data slice by slice (MD5 ETag of each)."""
    with open(ctx.data, "rb") as f:
        for name in sorted(segs):
            size, etag = segs[name]
            md5 = hashlib.md5(f.read(size)).hexdigest()
            if md5 != etag:
                return f"WRONG BYTES: segment {name} has ETag {etag}, the data's slice MD5 {md5}"
    return None


def read_md5(ctx: Ctx, bucket: str, key: str) -> str:
    """MD5 of the object's bytes, read back with boto3 (untimed)."""
    md5 = hashlib.md5()
    body = ctx.s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(8 * MiB):
        md5.update(chunk)
    return md5.hexdigest()


def check_object(ctx: Ctx, bucket: str, key: str) -> str | None:
    """None when bucket/key is a plain object holding the test data, else what is wrong.

    An ETag that is a plain MD5 must be the data's. Any other ETag (a copy made in parts
    with UploadPartCopy; SeaweedFS's multipart ETag of such a copy is not the usual
    md5-of-part-MD5s) says nothing about the bytes, so the object is read back and hashed.
    """
    try:
        head = ctx.s3.head_object(Bucket=bucket, Key=key)
    except Exception as e:
        return f"no object {key} ({type(e).__name__}: {e})"
    if head["ContentLength"] != ctx.size:
        return f"object has {head['ContentLength']} bytes, the data {ctx.size}"
    etag = head.get("ETag", "").strip('"').lower()
    md5 = digests(ctx)["md5"]
    if _MD5_ETAG.fullmatch(etag):
        return None if etag == md5 else f"WRONG BYTES: ETag {etag} != MD5 of the data {md5}"
    got = read_md5(ctx, bucket, key)
    return None if got == md5 else f"WRONG BYTES: read back, MD5 {got} != {md5} (ETag {etag})"


# -- sources -------------------------------------------------------------------------------
def _prepare_stream(ctx: Ctx) -> str | None:
    """`s3pipefs put s3://bench-copy-src/big.stream < DATA`, unless it is there already."""
    if not (check_stream(ctx, SRC_BUCKET, SRC_STREAM)
            or segments_hold_data(ctx, segments(ctx, SRC_BUCKET, SRC_STREAM))):
        return None
    ctx.delete(SRC_BUCKET, SRC_STREAM)
    argv = [ctx.tools.paths["s3pipefs"], "put", _url(SRC_BUCKET, SRC_STREAM)]
    log = ctx.log("copy-source-s3pipefs")
    with open(log, "wb") as logf, open(ctx.data, "rb") as data:
        p = Proc("s3pipefs", argv, stdin=data, stdout=subprocess.DEVNULL, stderr=logf, env=ctx.env, rss=False)
        finished = wait_all([p], ctx.timeout)
    if not finished:
        return f"source upload timed out after {ctx.timeout:g}s (log {log})"
    if p.rc != 0:
        return f"source upload exit status {p.rc}: {tail(log)}"
    return (check_stream(ctx, SRC_BUCKET, SRC_STREAM)
            or segments_hold_data(ctx, segments(ctx, SRC_BUCKET, SRC_STREAM)))


def _prepare_object(ctx: Ctx) -> str | None:
    """boto3 upload_file DATA s3://bench-copy-src/big.bin, unless it is there already.

    One PUT up to 5 GiB (S3's limit for a single part), so the source's ETag is the data's
    MD5 and a copy made by CopyObject keeps it: then every such copy is checked by content.
    """
    head = None
    try:
        head = ctx.s3.head_object(Bucket=SRC_BUCKET, Key=SRC_OBJECT)
    except Exception:
        pass
    if head and head["ContentLength"] == ctx.size and head["ETag"].strip('"') == digests(ctx)["md5"]:
        return None
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=5 * GiB) if ctx.size <= 5 * GiB else None
    ctx.s3.upload_file(str(ctx.data), SRC_BUCKET, SRC_OBJECT, Config=cfg)
    return check_object(ctx, SRC_BUCKET, SRC_OBJECT)


def source(ctx: Ctx, tool: str) -> str | None:
    """Prepare the tool's source once per run (untimed). None when ready, else why not."""
    kind = "stream" if family(tool) == "s3pipefs" else "object"
    slot = f"copy-source-{kind}"
    if slot not in ctx.extra:
        ctx.ensure_bucket(SRC_BUCKET)
        ctx.ensure_bucket(DST_BUCKET)
        try:
            why = _prepare_stream(ctx) if kind == "stream" else _prepare_object(ctx)
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
        ctx.extra[slot] = why
    return ctx.extra[slot]


# -- running -------------------------------------------------------------------------------
def run_copy(ctx: Ctx, tool: str, key: str) -> Run:
    why = source(ctx, tool)
    if why:
        return Run(ok=False, reason=f"source not prepared: {why}")
    digests(ctx)  # before the clock starts
    ctx.delete(DST_BUCKET, key)
    note = ctx.drop_caches() or ""
    argv = copy_argv(ctx, tool, key)
    log = ctx.log(f"copy-{tool}")
    with open(log, "wb") as logf:
        run = timed_command(ctx, tool, argv, logf, log, ctx.timeout, note)
    if not run.reason:
        bad = (check_stream(ctx, DST_BUCKET, key, like=(SRC_BUCKET, SRC_STREAM)) if family(tool) == "s3pipefs"
               else check_object(ctx, DST_BUCKET, key))
        if bad:
            run.reason = f"exit status 0 but {bad}"
        else:
            run.ok = True
    ctx.delete(DST_BUCKET, key)  # keep the server's disk use bounded (not timed)
    return run
