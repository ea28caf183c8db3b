"""`s3pipefs mount BUCKET[/PREFIX] MOUNTPOINT [-o OPTS] [-f]`: the filesystem.

Options come from the one table: S3 and transfer flags given before the command
(``s3pipefs --endpoint-url URL mount ...``) are the base, ``-o`` (fs/options.py, the same
entries plus the filesystem's and the daemon's) overrides them. mount(8)'s helper,
fs/mount_helper.py, runs ``run`` with its own argument convention (``-s`` sloppy, ``-f``
fake). The mount itself (fork, FUSE loop, unmount) is fs/mount.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

HELP = "mount a bucket (or bucket/prefix) as a filesystem"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from s3pipefs.fs.options import OPTIONS, default_of

    p.add_argument("source", metavar="BUCKET[/PREFIX]", help="bucket, optionally with a key prefix to mount")
    p.add_argument("mountpoint", help="an existing directory")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options, comma separated (repeatable); see below")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    width = max(len(o.name) for o in OPTIONS) + 6
    lines = []
    for o in OPTIONS:
        label = o.name if o.is_flag else f"{o.name}=..."
        default = default_of(o)
        lines.append(f"  {label:<{width}} {o.help}" + (f" (default {default})" if default else ""))
    p.epilog = ("mount options (full reference: docs/mount.md, `man mount.s3pipefs`):\n" + "\n".join(lines)
                + "\n  also accepted and ignored: _netdev, nofail, auto, noauto, defaults, user, x-systemd.*, ...")


def mount_options(args: argparse.Namespace):
    """MountOptions from the table's flags (the base) and then -o; warnings printed."""
    from s3pipefs import options
    from s3pipefs.commands.common import PROG
    from s3pipefs.fs.options import MountOptions, parse_options

    for warning in options.warnings(args):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    base = MountOptions()
    base = dataclasses.replace(base, s3=options.apply(args, "s3", base.s3),
                               transfer=options.apply(args, "transfer", base.transfer))
    opts, warnings = parse_options(getattr(args, "options", None) or [], sloppy=getattr(args, "sloppy", False),
                                   base=base)
    for w in warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    daemon = opts.daemon
    if getattr(args, "foreground", False):
        daemon = dataclasses.replace(daemon, foreground=True)
    if getattr(args, "verbose", False):
        daemon = dataclasses.replace(daemon, verbose=True)
    return dataclasses.replace(opts, daemon=daemon)


def run(args: argparse.Namespace) -> int:
    from s3pipefs.fs.mount import make_plan, mount

    plan = make_plan(args.source, args.mountpoint, mount_options(args))
    if getattr(args, "fake", False):  # mount.s3pipefs -f: do everything but the mount
        return 0
    return mount(plan)
