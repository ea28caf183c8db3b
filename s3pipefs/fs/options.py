"""Mount options (`-o a,b=c`) and the mount source, parsed into frozen config objects.

Pure: no S3, no FUSE, no environment reads. ``OPTIONS`` names every option, where its
value goes (S3Config, TransferConfig, FsConfig or DaemonConfig) and how it parses: the
S3 and transfer entries are the CLI's own (s3pipefs/options.py, so ``--workers 4`` and
``-o workers=4`` are one knob), the filesystem and daemon entries are the mount's alone.
docs/mount.md documents exactly these names (a test keeps the two in step) and ``render``
turns a config back into an option string (property-tested round trip).

Options that mount(8), fstab and systemd pass along (``_netdev``, ``nofail``, ``auto``,
``defaults``, ``x-systemd.*`` ...) are accepted and recorded as ignored. Anything else
unknown is a UsageError naming the option, unless the helper runs with ``-s`` (sloppy),
in which case it becomes a warning.
"""
from __future__ import annotations

import dataclasses
import grp
import pwd
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from s3pipefs.config import S3Config, TransferConfig, parse_duration, parse_size
from s3pipefs.errors import UsageError
from s3pipefs.options import S3_OPTIONS, TRANSFER_OPTIONS, Option, nonempty, render_default, render_value, \
    whole_number


@dataclass(frozen=True)
class FsConfig:
    """How the tree looks and behaves; everything the FUSE layer decides by itself."""

    read_only: bool = False
    allow_other: bool = False
    allow_root: bool = False
    # Given: they own every file, whatever chown stored. None: the stored owners, else
    # the user who mounts.
    uid: int | None = None
    gid: int | None = None
    umask: int = 0o022
    # Directory listings and stats are cached this long; this mount's own changes drop
    # the affected entries at once. 5 s keeps `ls -l` of 1000 streams to one LIST plus
    # one manifest GET per stream per 5 s, while a stream growing elsewhere shows its
    # new size within seconds.
    metadata_ttl: float = 5.0
    # Staging disk shared by every file open for writing, charged by what each holds (a
    # 4 KiB file holds 4 KiB). When it is spent, writes wait for uploads to drain. 512M
    # lets about three writers stream at full speed, each (workers + 3) segments.
    write_budget: int = 512 * 1024 * 1024
    # Upload threads shared by every file open for writing (each still queues at most
    # workers + 1 segments): enough for two writers at full speed.
    upload_threads: int = 16
    # Deprecated and ignored: any number of files may be open for writing (write_budget
    # bounds their staging). Still accepted, so existing fstab lines mount.
    max_writers: int = 4
    # Read-ahead shared by all files open for reading: each gets an equal share, at most
    # read_ahead, at least one segment. 512M lets four sequential readers run at full
    # speed, and thirty-two stay within the same memory.
    read_memory: int = 512 * 1024 * 1024
    # Use direct I/O for every file (no page cache). Default: only for writers and for
    # streams that are still being written, so live reads past the stat'd size work.
    direct_io: bool = False
    # libfuse 3 caps its worker threads (default 10); live-follow reads and commits each
    # hold one for a long time, so allow more.
    max_threads: int = 64
    # On SIGTERM: how long open writers get to finish (close) before their streams are
    # made durable and left incomplete.
    shutdown_timeout: float = 30.0
    # The kernel's read-ahead for the mount (fs/readahead.py); 0 leaves its 128 KiB.
    kernel_read_ahead: int = 1024 * 1024
    # Generic VFS flags handed to the kernel as they are (noexec, nosuid, ...).
    kernel_flags: tuple[str, ...] = ()
    # A file that closes within one segment is stored as a plain object (one PUT), and
    # becomes a stream only when it outgrows a segment, is fsync'd or stays open unsent
    # (engine/filewriter.py). "stream": every file written is a stream, as the s3pipe2
    # tools expect to find it.
    small_files: str = "object"


@dataclass(frozen=True)
class DaemonConfig:
    foreground: bool = False
    # "auto" (syslog when /dev/log exists, else a log file), "syslog", "stderr" or a path.
    log: str = "auto"
    debug: bool = False
    verbose: bool = False
    fsname: str | None = None  # the source column of /proc/mounts; default BUCKET[/PREFIX]


@dataclass(frozen=True)
class MountOptions:
    s3: S3Config = field(default_factory=S3Config)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    fs: FsConfig = field(default_factory=FsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    # AWS shared credentials file for this mount (AWS_SHARED_CREDENTIALS_FILE).
    credentials: str | None = None
    # Files holding this mount's keys (s3pipefs/keys.py), read at mount time; the keys
    # themselves never appear in the options, /proc/mounts or ps.
    sse_c_key_file: str | None = None
    encrypt_key_file: str | None = None
    # Accepted for mount(8)/systemd and otherwise ignored (logged once at mount).
    ignored: tuple[str, ...] = ()


# -- value parsers of the mount's own options (the shared ones are in s3pipefs/options.py) --


def _octal(text: str) -> int:
    t = text.lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", t):
        raise UsageError(f"not an octal mask: {text!r} (use e.g. 022)")
    return int(t, 8) & 0o777


def _user(text: str) -> int:
    if text.isdigit():
        return whole_number(0, 2**32 - 2)(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except (KeyError, ValueError):  # ValueError: a NUL byte in the name
        raise UsageError(f"no such user: {text!r}") from None


def _group(text: str) -> int:
    if text.isdigit():
        return whole_number(0, 2**32 - 2)(text)
    try:
        return grp.getgrnam(text).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL byte in the name
        raise UsageError(f"no such group: {text!r}") from None


def _small_files(text: str) -> str:
    if text in ("object", "stream"):
        return text
    raise UsageError(f"must be object or stream, not {text!r}")


def _log(text: str) -> str:
    if text in ("auto", "syslog", "stderr") or text.startswith("/"):
        return text
    raise UsageError(f"must be syslog, stderr, auto or an absolute file path, not {text!r}")


# -- the table -------------------------------------------------------------------------

_FS_OPTIONS: tuple[Option, ...] = (
    Option("ro", "fs", "read_only", None, "mount read-only: writes, creates and removals fail with EROFS"),
    Option("rw", "fs", "read_only", None, "mount read-write (the default)", value=False),
    Option("allow_other", "fs", "allow_other", None, "let other users access the mount (kernel-checked permissions)"),
    Option("allow_root", "fs", "allow_root", None, "let root access the mount besides the mounting user"),
    Option("uid", "fs", "uid", _user, "owner of every file and directory (number or name), whatever chown stored"),
    Option("gid", "fs", "gid", _group, "group of every file and directory (number or name), whatever chgrp stored"),
    Option("umask", "fs", "umask", _octal, "permission bits to clear (octal)", render=lambda v: f"{v:03o}"),
    Option("metadata_ttl", "fs", "metadata_ttl", parse_duration, "cache stats and listings this long"),
    Option("write_budget", "fs", "write_budget", parse_size,
           "staging disk shared by all files open for writing; past it, writes wait for uploads"),
    Option("upload_threads", "fs", "upload_threads", whole_number(1, 256),
           "upload threads shared by all files open for writing"),
    Option("max_writers", "fs", "max_writers", whole_number(1, 1 << 20),
           "deprecated, ignored: any number of files may be open for writing"),
    Option("read_memory", "fs", "read_memory", parse_size, "read-ahead memory shared by all files open for reading"),
    Option("direct_io", "fs", "direct_io", None, "bypass the page cache for every file"),
    Option("small_files", "fs", "small_files", _small_files,
           "object: a file that closes within one segment is one plain object; stream: every file is a stream"),
    Option("kernel_read_ahead", "fs", "kernel_read_ahead", parse_size,
           "the kernel's read-ahead for the mount (as root; 0 leaves the kernel's 128K)"),
    Option("max_threads", "fs", "max_threads", whole_number(2, 100000), "FUSE worker threads, libfuse 3"),
    Option("shutdown_timeout", "fs", "shutdown_timeout", parse_duration,
           "on SIGTERM, time open writers get to close before streams are left incomplete"),
)
_CREDENTIALS = Option("credentials", "top", "credentials", nonempty, "AWS shared credentials file for this mount")
_KEY_OPTIONS: tuple[Option, ...] = (
    Option("sse_c_key_file", "top", "sse_c_key_file", nonempty,
           "file holding the SSE-C key of everything the mount reads and writes (else $S3PIPEFS_SSE_C_KEY)"),
    Option("encrypt_key_file", "top", "encrypt_key_file", nonempty,
           "file holding the client-side encryption key of the mount's streams (else $S3PIPEFS_ENCRYPT_KEY)"),
)
_DAEMON_OPTIONS: tuple[Option, ...] = (
    Option("foreground", "daemon", "foreground", None, "stay in the foreground (also: s3pipefs mount -f)"),
    Option("log", "daemon", "log", _log, "where the daemon logs: auto, syslog, stderr or /path/to/file"),
    Option("debug", "daemon", "debug", None, "log every failed operation, with tracebacks"),
    Option("verbose", "daemon", "verbose", None, "log informational messages (mounts, commits)"),
    Option("fsname", "daemon", "fsname", nonempty, "source shown in /proc/mounts (default BUCKET[/PREFIX])"),
)
OPTIONS: tuple[Option, ...] = (
    _FS_OPTIONS
    + tuple(o for o in S3_OPTIONS if o.mount) + (_CREDENTIALS,) + _KEY_OPTIONS
    + tuple(o for o in TRANSFER_OPTIONS if o.mount)
    + _DAEMON_OPTIONS
)
BY_NAME = {o.name: o for o in OPTIONS}


def default_of(opt: Option) -> str | None:
    """The default of a valued option as an option value would spell it ("32M", "5s")."""
    base = MountOptions()
    section = base if opt.target == "top" else getattr(base, opt.target)
    return render_default(opt, getattr(section, opt.field))

# Generic mount flags the kernel understands: handed to FUSE as they are.
KERNEL_FLAGS = frozenset({"exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime",
                          "sync", "async", "dirsync", "nonempty"})
# Options mount(8), fstab and systemd use for themselves; accepted and ignored.
PASSED_BY_MOUNT = frozenset({
    "_netdev", "nofail", "auto", "noauto", "defaults", "user", "users", "nouser", "owner", "group",
    "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
    "iversion", "noiversion", "mand", "nomand", "silent", "loud", "bg", "fg",
})
_PASSED_PREFIXES = ("x-", "comment=", "user=", "_")


def split_options(text: str) -> list[str]:
    """'a,b="c,d",e' -> ['a', 'b=c,d', 'e']: commas split, double quotes protect, as in fstab."""
    out, cur, quoted, had = [], [], False, False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            had = True
        elif ch == "," and not quoted:
            out.append("".join(cur))
            cur, had = [], False
        else:
            cur.append(ch)
    if quoted:
        raise UsageError(f"unbalanced quote in mount options: {text!r}")
    out.append("".join(cur))
    return [o for o in (s.strip() for s in out) if o or had]


def is_passed_by_mount(name: str, raw: str) -> bool:
    return name in PASSED_BY_MOUNT or raw.startswith(_PASSED_PREFIXES)


def parse_options(texts: Iterable[str], *, sloppy: bool = False,
                  base: MountOptions | None = None) -> tuple[MountOptions, list[str]]:
    """Option strings (each 'a,b=c', as -o gives them) -> (MountOptions, warnings).

    Later options override earlier ones, as mount(8) does. ``sloppy`` turns unknown
    options into warnings instead of errors.
    """
    base = base or MountOptions()
    changes: dict[str, dict[str, Any]] = {"fs": {}, "s3": {}, "transfer": {}, "daemon": {}, "top": {}}
    kernel: list[str] = list(base.fs.kernel_flags)
    ignored: list[str] = list(base.ignored)
    warnings: list[str] = []
    for text in texts:
        for raw in split_options(text):
            name, eq, value = raw.partition("=")
            name = name.strip()
            opt = BY_NAME.get(name)
            if opt is None:
                if name in KERNEL_FLAGS and not eq:
                    kernel = [k for k in kernel if k != name] + [name]
                elif is_passed_by_mount(name, raw):
                    ignored.append(raw)
                elif sloppy:
                    warnings.append(f"ignoring unknown mount option {raw!r}")
                else:
                    raise UsageError(f"unknown mount option {raw!r} (see `man mount.s3pipefs` or docs/mount.md)")
                continue
            if opt.is_flag:
                if eq:
                    raise UsageError(f"mount option '{name}' takes no value (got {raw!r})")
                changes[opt.target][opt.field] = opt.value
                continue
            if not eq:
                raise UsageError(f"mount option '{name}' needs a value: {name}=...")
            try:
                changes[opt.target][opt.field] = opt.parse(value)
            except UsageError as e:
                raise UsageError(f"mount option '{name}': {e}") from None
    try:
        transfer = dataclasses.replace(base.transfer, **changes["transfer"]).validate()
    except UsageError as e:
        raise UsageError(f"mount options: {e}") from None
    fs = dataclasses.replace(base.fs, kernel_flags=tuple(kernel), **changes["fs"])
    if fs.allow_other and fs.allow_root:
        raise UsageError("mount options 'allow_other' and 'allow_root' exclude each other")
    return MountOptions(
        s3=dataclasses.replace(base.s3, **changes["s3"]),
        transfer=transfer,
        fs=fs,
        daemon=dataclasses.replace(base.daemon, **changes["daemon"]),
        credentials=changes["top"].get("credentials", base.credentials),
        sse_c_key_file=changes["top"].get("sse_c_key_file", base.sse_c_key_file),
        encrypt_key_file=changes["top"].get("encrypt_key_file", base.encrypt_key_file),
        ignored=tuple(ignored),
    ), warnings


def render(opts: MountOptions) -> str:
    """The option string that parses back to ``opts`` (non-default values only)."""
    default = MountOptions()
    parts: list[str] = []
    sections = {"fs": opts.fs, "s3": opts.s3, "transfer": opts.transfer, "daemon": opts.daemon, "top": opts}
    defaults = {"fs": default.fs, "s3": default.s3, "transfer": default.transfer, "daemon": default.daemon,
                "top": default}
    done: set[tuple[str, str]] = set()
    for opt in OPTIONS:
        key = (opt.target, opt.field)
        if key in done:
            continue
        value = getattr(sections[opt.target], opt.field)
        if value == getattr(defaults[opt.target], opt.field):
            continue
        if opt.is_flag:
            flag = next(o for o in OPTIONS if (o.target, o.field) == key and o.value == value)
            parts.append(flag.name)
        else:
            parts.append(f"{opt.name}={render_value(opt, value)}")
        done.add(key)
    parts.extend(opts.fs.kernel_flags)
    parts.extend(opts.ignored)
    return ",".join(parts)


# -- the source --------------------------------------------------------------------------

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


def parse_source(text: str) -> tuple[str, str]:
    """'bucket', 'bucket/some/prefix', 's3://bucket/prefix' or 's3pipefs#bucket' -> (bucket, prefix).

    The prefix is '' or ends with '/'.
    """
    src = text.strip()
    if src.startswith("s3pipefs#"):  # the old `fuse` fstab style: s3pipefs#bucket /mnt fuse ...
        src = src[len("s3pipefs#"):]
    if src.startswith("s3://"):
        src = src[5:]
    bucket, _, prefix = src.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise UsageError(f"not a bucket name: {bucket!r} (the source is BUCKET or BUCKET/PREFIX)")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"prefix {prefix!r} may not contain '.' or '..' components")
    return bucket, ("/".join(parts) + "/") if parts else ""
