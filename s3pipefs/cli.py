"""Command line: the command registry, logging and exit statuses; the commands are commands/.

Each command is one module of s3pipefs/commands with the same shape (``HELP``,
``add_arguments``, ``run``). A module is imported only when its command runs (all of them
only for the command list of ``s3pipefs --help``), so `put` and `cat` start without
loading FUSE or sync code. The S3 and transfer options come from the option table
(s3pipefs/options.py) and are accepted before the command and after it.

``s3pipefs to|from PATH`` with s3pipe2's flags (-m MB, -b KB, -p, -n, -t, -r, -v, and -a/-s
with a warning) keeps ``alias s3pipe2=s3pipefs`` working. Every failure is one line on
stderr and exit status 1 (2 for usage errors); no tracebacks unless S3PIPEFS_DEBUG is set.
When a command ends, a line on stderr says whether the server throttled it, and with -v
how many requests it sent, retried and lost (commands/common.py, ``report_requests``).
"""
from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import logging
import os
import signal
import sys
import threading

from s3pipefs import __version__, errors, options
from s3pipefs.commands import common
from s3pipefs.commands.common import PROG
from s3pipefs.memory import tune_malloc

# (command, aliases), in the order `s3pipefs --help` lists them; the module is
# s3pipefs.commands.<command>. The aliases are s3pipe2's.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("put", ("to",)),
    ("cat", ("from",)),
    ("ls", ()),
    ("du", ()),
    ("info", ()),
    ("verify", ()),
    ("rm", ()),
    ("serve", ()),
    ("mount", ()),
    ("cp", ()),
    ("sync", ()),
    ("abort", ()),
    ("status", ()),
    ("completion", ()),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        raise errors.UsageError(f"{self.prog}: {message}")


def command_module(name: str):
    return importlib.import_module(f"s3pipefs.commands.{name}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: the commands named in it get their arguments. Every
    module is imported only when the main parser's help may be shown (no command named,
    or -h before it), for the command list."""
    top = _Parser(prog=PROG, description="S3 as a pipe and as a disk for huge sequential data.")
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    options.add_arguments(top, s3pipe2=True)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    words = {w: name for name, aliases in COMMANDS for w in (name, *aliases)}
    named = {words[w] for w in argv if w in words}
    first = next((i for i, w in enumerate(argv) if w in words), len(argv))
    listing = not named or any(w in ("-h", "--help") for w in argv[:first])
    for name, aliases in COMMANDS:
        mod = command_module(name) if listing or name in named else None
        p = sub.add_parser(name, aliases=list(aliases), help=mod and mod.HELP, description=mod and mod.HELP)
        if name in named:
            mod.add_arguments(p)
            p.set_defaults(run=mod.run)
    return top


# -- entry point --------------------------------------------------------------------------
def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def _calm_gc() -> None:
    """Collect cycles 30x less often. The data path makes few cycles, but botocore makes
    many short-lived objects per request, and the default threshold (700) made the
    collector walk every live object (~6% of a `cat`'s CPU) over and over."""
    gc.freeze()  # what is imported by now lives as long as the process
    gc.set_threshold(20_000, 20, 20)


class _OneLineFormatter(logging.Formatter):
    """Log lines without tracebacks. botocore logs some warnings with one (a credential
    refresh that failed), and the error that follows already says what and where."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _calm_gc()
    tune_malloc()
    debug = bool(os.environ.get("S3PIPEFS_DEBUG"))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s") if debug else _OneLineFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser(argv).parse_args(argv)
        if hasattr(args, "region_r") and getattr(args, "command", None) not in options.S3PIPE2_WORDS:
            raise errors.UsageError(f"{PROG}: {options.S3PIPE2_ONLY_MESSAGE}")
        if getattr(args, "verbose", False):
            logging.getLogger("s3pipefs").setLevel(logging.INFO)
        if not getattr(args, "run", None):
            build_parser([]).print_help(sys.stderr)
            return 2
        try:
            return int(args.run(args) or 0)
        finally:
            common.report_requests(bool(getattr(args, "verbose", False)))
    except errors.S3PipeError as e:
        if debug:
            raise
        print(errors.one_line(e, PROG), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Reader went away (`cat | head`): not an error of ours. Silence the flush at exit.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as e:
        if debug:
            raise
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{PROG}:{where} {e.strerror or e}", file=sys.stderr)
        return 1


def run() -> None:
    """The console entry point: main(), then exit without tearing the interpreter down.

    Freeing botocore's and the models' objects one by one took 60-100 ms of every command
    (a tiny `cp` ran 0.34 s instead of 0.28). What a normal exit does that matters still
    happens, in its order: non-daemon threads are joined, atexit handlers run (logging's
    flush among them), stdout and stderr are flushed, and a stdout that cannot take the
    last bytes is an error, not a silent loss.
    """
    rc = main()
    join_threads = getattr(threading, "_shutdown", None)
    if join_threads is None:  # not CPython: exit the usual way
        sys.exit(rc)
    join_threads()
    atexit._run_exitfuncs()
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        pass  # the reader went away (`ls | head`): as main() treats it
    except OSError as e:
        print(f"{PROG}: stdout: {e.strerror or e}", file=sys.stderr)
        rc = rc or 1
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except OSError:
        pass
    os._exit(rc)


if __name__ == "__main__":
    run()
