"""The option table: every S3 and transfer knob declared once, for the CLI and for `-o`.

Each ``Option`` says where its value goes (a field of S3Config or TransferConfig, or
``cli``: kept on the parsed arguments for the command itself), how its text parses, its
help, its command-line spellings (``flags``) and whether the mount's ``-o`` takes it
(``mount``). From this one table

* ``add_arguments`` generates the CLI's "S3 connection" and "transfer" argument groups,
  help texts stating the defaults of the config dataclasses;
* ``apply`` turns parsed arguments into a config object;
* fs/options.py builds the mount's ``-o`` table from the entries with ``mount=True``, plus
  its filesystem and daemon options, so ``--workers 4`` and ``-o workers=4`` are one knob
  with one parser.

A name is the ``-o`` spelling and the argparse destination. Entries for the command line
only (s3pipe2's ``-m``, ``-b``, ``-r``, ``-a``, ``-s``; ``-v``, ``-q``) may share a name with an
``-o``-only option of the mount (``verbose``), never with another command-line entry.
Values are parsed by argparse (``type=``), so a bad one is one usage line and exit 2.

Pure: no S3, no environment reads; cheap to import (every command loads it).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from collections.abc import Callable  # not typing: keeps `put --help` from importing it

from s3pipefs.config import S3Config, TransferConfig, parse_duration, parse_size
from s3pipefs.errors import UsageError

# `put`'s read buffer when -b is not given (s3pipe2's -b counts KB).
DEFAULT_BUFFER_KB = 1024


# -- value parsers: text -> the config field's value, or a one-line UsageError ----------------

def whole_number(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise UsageError(f"not a whole number: {text!r}") from None
        if not lo <= v <= hi:
            raise UsageError(f"{v} is out of range {lo}..{hi}")
        return v
    parse.bounds = (lo, hi)  # for the docs and the property tests
    return parse


def nonempty(text: str) -> str:
    if not text:
        raise UsageError("needs a value")
    return text


def http_url(text: str) -> str:
    if not re.match(r"^https?://[^\s/]+", text):
        raise UsageError(f"not an http(s) URL: {text!r}")
    return text


def addressing(text: str) -> bool:
    """'path' or 'virtual' -> S3Config.path_style."""
    if text not in ("path", "virtual"):
        raise UsageError(f"must be 'path' or 'virtual', not {text!r}")
    return text == "path"


def decimal_megabytes(text: str) -> int:
    """s3pipe2's -m: megabytes of 10**6 bytes -> bytes."""
    return whole_number(1, 5368)(text) * 1_000_000  # 5368 MB: S3's 5 GiB object limit


def any_text(text: str) -> str:
    return text


# -- the table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    name: str  # the -o spelling and the argparse destination
    target: str  # "s3" | "transfer" | "cli" here; fs/options.py adds "fs" | "daemon" | "top"
    field: str
    parse: Callable[[str], object] | None  # None: a flag; ``value`` is what it sets
    help: str
    value: object = True
    flags: tuple[str, ...] = ()  # command-line spellings; () for an -o option only
    mount: bool = True  # accepted by the mount's -o
    metavar: str | None = None
    render: Callable[[object], str] | None = None  # a value back to its -o text, where str() is not it
    show_default: bool = True  # False where the default is the machine's (a temp dir)
    hidden: bool = False  # accepted, left out of --help
    warning: str | None = None  # printed on stderr when given
    s3pipe2_only: bool = False  # a spelling only s3pipe2's command words take (see S3PIPE2_WORDS)

    @property
    def is_flag(self) -> bool:
        return self.parse is None


_CREDENTIALS_WARNING = (
    "-a/-s put credentials on the command line where other users can see them; they are ignored "
    "— use AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials")

S3_OPTIONS: tuple[Option, ...] = (
    Option("endpoint", "s3", "endpoint_url", http_url, "S3 endpoint URL (default: $AWS_ENDPOINT_URL or AWS)",
           flags=("--endpoint-url",), metavar="URL"),
    Option("profile", "s3", "profile", nonempty, "AWS profile (default: $AWS_PROFILE)",
           flags=("--profile",), metavar="NAME"),
    Option("region", "s3", "region", nonempty, "S3 region", flags=("--region",), metavar="REGION"),
    Option("region_r", "s3", "region", nonempty, "S3 region (s3pipe2's spelling: only with to/from)",
           flags=("-r",), mount=False, metavar="REGION", s3pipe2_only=True),
    Option("retries", "s3", "max_attempts", whole_number(1, 100),
           "attempts per S3 request, the first included; a throttled one gets twice as many and two "
           "more", flags=("--retries",)),
    Option("bwlimit", "s3", "bwlimit", parse_size,
           "payload bytes a second, uploads and downloads together, e.g. 10M (0: no limit)",
           flags=("--bwlimit",), metavar="BYTES/S", show_default=False),
    Option("addressing", "s3", "path_style", addressing, "bucket addressing: path or virtual",
           flags=("--addressing",), metavar="path|virtual", render=lambda v: "path" if v else "virtual"),
    Option("access_key", "cli", "access_key", any_text, "", flags=("-a",), mount=False, hidden=True,
           warning=_CREDENTIALS_WARNING),
    Option("secret_key", "cli", "secret_key", any_text, "", flags=("-s",), mount=False, hidden=True,
           warning=_CREDENTIALS_WARNING),
)

TRANSFER_OPTIONS: tuple[Option, ...] = (
    Option("segment_size", "transfer", "segment_size", parse_size, "segment size of new streams, e.g. 64M",
           flags=("--segment-size",)),
    Option("segment_mb", "transfer", "segment_size", decimal_megabytes,
           "segment size in MB of 10^6 bytes (s3pipe2 compatible)", flags=("-m",), mount=False, metavar="MB",
           show_default=False),
    Option("workers", "transfer", "workers", whole_number(1, 256), "parallel S3 requests per transfer or open file",
           flags=("--workers", "-n")),
    Option("staging", "transfer", "staging_dir", nonempty,
           "directory for staged segments (default $TMPDIR or /tmp)", flags=("--staging", "-p"), metavar="DIR",
           show_default=False),
    Option("cache_size", "transfer", "cache_size", parse_size, "verified read data kept per reader for re-reads",
           flags=("--cache-size",)),
    Option("read_ahead", "transfer", "read_ahead", parse_size, "bytes prefetched ahead of sequential reads",
           flags=("--read-ahead",)),
    Option("prefetch", "transfer", "prefetch", whole_number(1, 1024), "segments fetched ahead at most",
           flags=("--prefetch",)),
    Option("max_inflight", "transfer", "max_inflight", whole_number(0, 256),
           "requests in flight per transfer at most: adaptive concurrency raises them from --workers "
           "(a reader: its prefetch window) toward this while the network, not the CPU, bounds "
           "throughput; 0: fixed at the start", flags=("--max-inflight",)),
    Option("tries", "transfer", "tries", whole_number(1, 100),
           "attempts per segment request, the first included (a failed checksum or a broken transfer "
           "is tried again)", flags=("--tries", "-t")),
    Option("follow_timeout", "transfer", "follow_timeout", parse_duration,
           "a read waiting on a growing stream gives up after its writer is silent this long",
           flags=("--follow-timeout",)),
    Option("poll_interval", "transfer", "poll_interval", parse_duration,
           "how often a read waiting on a growing stream polls its manifest", flags=("--poll-interval",)),
    Option("poll_max", "transfer", "poll_max", parse_duration,
           "while the stream does not grow, the poll interval doubles up to this (a new segment is "
           "seen within it)", flags=("--poll-max",)),
    Option("stale_after", "transfer", "stale_after", parse_duration,
           "a writer whose heartbeat is older than this is dead", flags=("--stale-after",)),
    Option("heartbeat", "transfer", "heartbeat_interval", parse_duration,
           "how often a writer refreshes its lease in the manifest", flags=("--heartbeat",)),
    Option("flush_interval", "transfer", "flush_interval", parse_duration,
           "a writer publishes bytes it has held this long in a short segment, so readers elsewhere "
           "see a slow writer within it; 0: whole segments only", flags=("--flush-interval",)),
    Option("buffer_kb", "cli", "buffer_kb", whole_number(0, 1 << 22),
           f"put's read buffer in KB (s3pipe2 compatible; default {DEFAULT_BUFFER_KB})",
           flags=("-b",), mount=False, metavar="KB"),
    Option("verbose", "transfer", "verbose", None, "progress and details on stderr",
           flags=("--verbose", "-v"), mount=False),
    Option("quiet", "cli", "quiet", None, "no progress display", flags=("--quiet", "-q"), mount=False),
)

CLI_OPTIONS: tuple[Option, ...] = tuple(o for o in S3_OPTIONS + TRANSFER_OPTIONS if o.flags)
# s3pipe2's command words: with them (given before or after the word) -r is the region. Every
# other command refuses -r with this message: it is not recursion (-R) there, and a value
# taken for a region would swallow the URL after it (`rm -r s3://b/p/`).
S3PIPE2_WORDS = ("to", "from")
S3PIPE2_ONLY_MESSAGE = ("-r is s3pipe2's spelling of --region, taken only by `to` and `from`; "
                        "use --region REGION (recursion is -R/--recursive)")
_DEFAULTS = {"s3": S3Config(), "transfer": TransferConfig()}


# -- defaults as an option value spells them ------------------------------------------------------

def render_default(opt: Option, value: object) -> str | None:
    """A default as an option value would spell it ("32M", "5s"), so help and docs are
    rendered from the config dataclasses and cannot drift from the code."""
    if opt.is_flag or value is None or not opt.show_default:
        return None
    if opt.parse is parse_size:
        for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value % scale == 0:
                return f"{value // scale}{unit}"
        return str(value)
    if opt.parse is parse_duration:
        return f"{value:g}s"
    return render_value(opt, value)


def render_value(opt: Option, value: object) -> str:
    """A value as ``-o name=VALUE`` takes it back."""
    if opt.render is not None:
        return opt.render(value)
    if isinstance(value, float):
        # Positional, never '1e-05': exact for the shortest repr, and parses back.
        import decimal

        text = format(decimal.Decimal(repr(value)), "f")
        return text[:-2] if text.endswith(".0") else text
    text = str(value)
    return f'"{text}"' if "," in text else text


# -- argparse -------------------------------------------------------------------------------------

def _argument_type(opt: Option) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return opt.parse(text)
        except UsageError as e:  # argparse reports it as one usage line, exit 2
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = opt.name  # argparse names the type in some messages
    return parse


def _metavar(opt: Option) -> str:
    if opt.metavar:
        return opt.metavar
    if opt.parse is parse_size:
        return "SIZE"
    if opt.parse is parse_duration:
        return "TIME"
    return "N" if hasattr(opt.parse, "bounds") else opt.name.upper()


def _help(opt: Option, defaults: dict) -> str:
    if opt.hidden:
        return argparse.SUPPRESS
    if opt.name in defaults:
        value = defaults[opt.name]
    else:
        value = getattr(_DEFAULTS[opt.target], opt.field) if opt.target in _DEFAULTS else None
    default = render_default(opt, value) if value is not None else None
    return opt.help + (f" (default {default})" if default else "")


class _Refused(argparse.Action):
    """An s3pipe2-only spelling on a command that is not s3pipe2's: a usage error at once,
    before it can take the next word as its value."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(self, S3PIPE2_ONLY_MESSAGE)


def add_arguments(parser: argparse.ArgumentParser, *, s3pipe2: bool = False, defaults: dict | None = None) -> None:
    """The "S3 connection" and "transfer" groups. Nothing given leaves no attribute
    (SUPPRESS), so the same flags on the main parser and on a command's merge. ``s3pipe2``:
    the parser takes s3pipe2's command words (or comes before one), so its -r is the region;
    elsewhere -r is refused (cli.main checks which word was given). ``defaults``: option
    name -> the default a command uses instead of the config's (sync's workers), for help."""
    for title, table in (("S3 connection (defaults from the AWS environment)", S3_OPTIONS),
                         ("transfer", TRANSFER_OPTIONS)):
        group = parser.add_argument_group(title)
        for opt in table:
            if not opt.flags:
                continue
            if opt.s3pipe2_only and not s3pipe2:
                group.add_argument(*opt.flags, dest=opt.name, action=_Refused)
            elif opt.is_flag:
                group.add_argument(*opt.flags, dest=opt.name, action="store_const", const=opt.value,
                                   default=argparse.SUPPRESS, help=_help(opt, defaults or {}))
            else:
                group.add_argument(*opt.flags, dest=opt.name, type=_argument_type(opt), metavar=_metavar(opt),
                                   default=argparse.SUPPRESS, help=_help(opt, defaults or {}))


def apply(args: argparse.Namespace, target: str, base: object) -> object:
    """``base`` (a config object) with the fields of ``target`` given on the command line.
    Table order decides between two spellings of one field (``-m`` over ``--segment-size``)."""
    changes = {o.field: getattr(args, o.name) for o in CLI_OPTIONS if o.target == target and hasattr(args, o.name)}
    return dataclasses.replace(base, **changes)


def warnings(args: argparse.Namespace) -> list[str]:
    """The warnings of the options given, each once."""
    seen = [o.warning for o in CLI_OPTIONS if o.warning and getattr(args, o.name, None)]
    return list(dict.fromkeys(seen))
