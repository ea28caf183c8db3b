"""What the commands share: config, store and engine from the arguments, progress, request
counters and the throttling notice, SSE-C keys.

Cheap to import: the store, the engine and tqdm are imported inside the functions that
make them, so `put --help` loads none of them.

SSE-C keys come from files (``--sse-c-key-file``, ``--source-sse-c-key-file``) or from the
environment (``S3PIPEFS_SSE_C_KEY``, ``S3PIPEFS_SOURCE_SSE_C_KEY``), never from the command
line where ``ps`` shows them. A key is 32 raw bytes, 64 hex digits or base64 of 32 bytes.
They travel as request options (``RequestOptions``): the destination's are the engine's
own, the source's are passed with the calls that read the source. One store serves both.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import sys

from s3pipefs import errors, options
from s3pipefs.config import S3Config, TransferConfig

PROG = "s3pipefs"
KEY_ENV = "S3PIPEFS_SSE_C_KEY"
SOURCE_KEY_ENV = "S3PIPEFS_SOURCE_SSE_C_KEY"


# -- config, store and engine from the arguments ------------------------------------------------

def s3_config(args: argparse.Namespace) -> S3Config:
    for warning in options.warnings(args):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    cfg = options.apply(args, "s3", S3Config())
    if hasattr(args, "tries") and not hasattr(args, "retries"):
        # --tries bounds every request's attempts, as it bounds a segment's, unless
        # --retries sets them apart.
        cfg = dataclasses.replace(cfg, max_attempts=args.tries)
    workers = getattr(args, "workers", TransferConfig.workers)
    return dataclasses.replace(
        cfg,
        endpoint_url=cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        or None,
        # A connection per request in flight, and spares for the manifest and listing calls.
        max_pool_connections=max(cfg.max_pool_connections, 2 * workers),
    )


def transfer_config(args: argparse.Namespace) -> TransferConfig:
    return options.apply(args, "transfer", TransferConfig()).validate()


def store(args: argparse.Namespace):
    from s3pipefs.s3 import Store

    made = Store(s3_config(args))
    _stores.append(made)
    return made


# The stores this command made, for report_requests when it ends.
_stores: list = []


def report_requests(verbose: bool) -> None:
    """When a command ends, on stderr: one line if the server throttled it (always: a backup
    that took twice as long should say why), and with -v its request counters."""
    from s3pipefs.s3.retry import throttle_notice

    for made in _stores:
        notice = throttle_notice(made.stats, made.retry.limiter)
        if notice:
            print(f"{PROG}: {notice}", file=sys.stderr)
        if verbose and made.stats.requests:
            print(f"{PROG}: {request_counts(made.stats.as_dict())}", file=sys.stderr)


def request_counts(c: dict) -> str:
    """Request counters (RetryStats.as_dict) as one line."""
    return (f"{c['requests']} requests, {c['retries']} retried ({c['throttles']} throttled, "
            f"{c['backoff_seconds']:.1f}s backing off), {c['gave_up']} failed after retries, "
            f"{c['refused']} refused (not found, denied or changed)")


def engine(args: argparse.Namespace):
    """The engine over a store made from the arguments, with their transfer config."""
    return engine_over(store(args), transfer_config(args))


def engine_over(s3, tcfg: TransferConfig, request=None):
    """The engine over the store ``s3``; ``request``: its RequestOptions (None: no key)."""
    from s3pipefs.engine import Engine

    return Engine(s3, tcfg, request=request)


# -- progress -----------------------------------------------------------------------------------

def show_progress(args: argparse.Namespace) -> bool:
    """-v always; otherwise on a terminal unless -q or --json."""
    if getattr(args, "json", False):
        return False
    return bool(getattr(args, "verbose", False)) or (sys.stderr.isatty() and not getattr(args, "quiet", False))


def progress(args: argparse.Namespace, desc: str, total: int | None = None):
    from s3pipefs.progress import Progress

    return Progress(desc, total=total, enabled=show_progress(args))


def input_size(fd: int) -> int | None:
    """The size of a regular file on ``fd`` (`put < file`), for % and ETA; None for a pipe."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# -- SSE-C keys ---------------------------------------------------------------------------------

def add_key_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SSE-C (customer-provided encryption keys)")
    g.add_argument("--sse-c-key-file", metavar="FILE",
                   help=f"key for the destination (default: ${KEY_ENV} if set). 32 raw bytes, 64 hex "
                        "digits or base64; never pass keys on the command line")
    g.add_argument("--source-sse-c-key-file", metavar="FILE",
                   help=f"key that decrypts the source (default: ${SOURCE_KEY_ENV}, else the "
                        "destination key); a different one re-encrypts on copy")


def request_options(args: argparse.Namespace):
    """(source, destination) RequestOptions from the key arguments; the source's key
    defaults to the destination's."""
    from s3pipefs.s3 import RequestOptions

    dkey = load_key(getattr(args, "sse_c_key_file", None), KEY_ENV) or b""
    skey = load_key(getattr(args, "source_sse_c_key_file", None), SOURCE_KEY_ENV)
    return RequestOptions(sse_key=dkey if skey is None else skey), RequestOptions(sse_key=dkey)


def load_key(path: str | None, env_name: str) -> bytes | None:
    """The key from ``path``, else from ``$env_name``, else None. Never logged."""
    if path:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(1024)
        except OSError as e:
            raise errors.UsageError(f"{path}: cannot read the SSE-C key file: {e.strerror}") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            print(f"{PROG}: warning: {path}: the SSE-C key file is readable by other users (chmod 600 it)",
                  file=sys.stderr)
        return parse_key(data, path)
    env = os.environ.get(env_name)
    if env:
        return parse_key(env.encode(), f"${env_name}")
    return None


def parse_key(data: bytes, where: str) -> bytes:
    """32 raw bytes, 64 hex digits or base64 of 32 bytes; trailing whitespace ignored."""
    import base64
    import binascii

    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 32:
        return text
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return raw
    except (binascii.Error, ValueError):
        pass
    raise errors.UsageError(f"{where}: an SSE-C key must be 32 bytes (raw, 64 hex digits or base64)")


# -- pipes --------------------------------------------------------------------------------------

def widen_pipe(fd: int) -> None:
    """Grow a pipe's buffer from 64 KiB to 1 MiB (Linux): 16x fewer context switches
    between s3pipefs and the program on the other end of ``| md5sum`` or ``tar c |``."""
    import fcntl

    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size, or not Linux: the default is fine
