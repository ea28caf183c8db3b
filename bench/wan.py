"""WAN rows: the put, cat and mount rows again, with every tool behind an emulated long link.

The rows are those of the loopback sections (bench/pipe.py, bench/mount.py), run on
``--wan-size`` bytes with the tools' endpoint set to a wanproxy (bench/wanproxy.py) that
adds ``--wan-rtt`` ms of round trip and caps each connection at ``--wan-rate`` Mbit/s
(and ``--wan-window`` bytes in flight, when given). The harness's own checks and the
server's CPU are measured as in those sections; each run also records the requests the
server got through the proxy.
"""
from __future__ import annotations

import dataclasses
import subprocess

from common import MiB, Ctx, Row, make_data, parse_digest, request_delta
import mount as mount_rows
import pipe as pipe_rows
from wanproxy import DEFAULT_WINDOW, Link

PROXY = "wan"


def link(args) -> Link:
    return Link(delay=args.wan_rtt / 2000, rate=args.wan_rate * 1e6 / 8 if args.wan_rate else None,
                window=args.wan_window or DEFAULT_WINDOW)


def describe(args) -> str:
    window = f", window {args.wan_window // 1024} KiB" if args.wan_window else ""
    rate = f"{args.wan_rate:g} Mbit/s per connection" if args.wan_rate else "no rate cap"
    return f"round trip {args.wan_rtt:g} ms, {rate}{window}"


def wan_context(ctx: Ctx) -> Ctx:
    """The proxied context, with its own --wan-size bytes of test data. Made once per run."""
    if "wan-ctx" in ctx.extra:
        return ctx.extra["wan-ctx"]
    a = ctx.args
    data = ctx.fastdir / "wan-data.bin"
    make_data(data, a.wan_size_bytes)
    digest = parse_digest(subprocess.run([*ctx.hasher, str(data)], capture_output=True, text=True,
                                         check=True).stdout)
    wctx = dataclasses.replace(ctx.via(PROXY, link(a)), data=data, size=a.wan_size_bytes, digest=digest,
                               timeout=a.timeout or max(300.0, 120 + a.wan_size_bytes / (MiB / 2)))
    ctx.extra["wan-ctx"] = wctx
    return wctx


def rows(ctx: Ctx, tools: list[str]) -> list[Row]:
    wctx = wan_context(ctx)
    out = []
    for section, build in (("wan put", pipe_rows.put_rows), ("wan cat", pipe_rows.cat_rows),
                           ("wan mount", mount_rows.rows)):
        for row in build(wctx, tools):
            row.op = f"wan {row.label}"  # "wan put (stdin)", "wan mount write": holds the section
            row.section = section
            if row.fn is not None:
                row.fn = _counted(row.fn)
            out.append(row)
    return out


def _counted(fn):
    """``fn`` run in the proxied context, with the requests it made recorded in its Run."""
    def run(ctx: Ctx, rep: int):
        wctx = ctx.extra["wan-ctx"]
        proxy = ctx.proxy(PROXY)
        before = proxy.stats()
        result = fn(wctx, rep)
        result.requests = request_delta(before, proxy.stats())
        return result
    return run
