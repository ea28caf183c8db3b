"""/sbin/mount.s3pipefs: the mount(8) helper.

mount(8) (and so fstab and systemd .mount units) runs ``/sbin/mount.TYPE`` as::

    mount.s3pipefs SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]

where ``-f`` means *fake* (do everything but mount), ``-s`` *sloppy* (tolerate unknown
options), ``-n`` *no mtab*, ``-v`` verbose. Foreground is the ``foreground`` option
here (``-f`` is taken). Exit statuses follow mount(8): 0 mounted, 1 bad invocation or
options, 32 the mount failed.
"""
from __future__ import annotations

import argparse
import sys

from s3pipefs import __version__, errors

PROG = "mount.s3pipefs"
EXIT_USAGE = 1
EXIT_MOUNT_FAILED = 32


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{PROG}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Mount an S3 bucket (or bucket/prefix) with s3pipefs; "
                                       "normally run by mount(8) for `mount -t s3pipefs` and fstab.")
    p.add_argument("source", metavar="BUCKET[/PREFIX]")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    p.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options (warn)")
    p.add_argument("-f", dest="fake", action="store_true", help="fake: check everything, do not mount")
    p.add_argument("-n", dest="no_mtab", action="store_true", help="accepted; there is no mtab to write")
    p.add_argument("-v", dest="verbose", action="store_true", help="log informational messages")
    p.add_argument("-N", dest="namespace", metavar="NS", help="mount namespace (not supported)")
    p.add_argument("-t", dest="type", metavar="TYPE", help="accepted: s3pipefs or fuse.s3pipefs")
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.namespace:
        print(f"{PROG}: -N (mount namespaces) is not supported", file=sys.stderr)
        return EXIT_USAGE
    args.foreground = False
    from s3pipefs.commands import mount  # after argv checks: keeps --help fast

    try:
        return mount.run(args)
    except errors.UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except errors.S3PipeError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_MOUNT_FAILED
    except KeyboardInterrupt:
        return EXIT_MOUNT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
