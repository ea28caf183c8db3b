"""What the commands share: config, store and engine from the arguments, progress, request
counters and the throttling notice, SSE-C keys.

Cheap to import: the store, the engine and tqdm are imported inside the functions that
make them, so `put --help` loads none of them.

Keys (SSE-C and client-side encryption, s3pipefs/keys.py) come from files
(``--sse-c-key-file``, ``--encrypt-key-file`` and their ``--source-`` forms) or from the
environment, never from the command line where ``ps`` shows them. They travel as request
options (``RequestOptions``): the destination's are the engine's own, the source's are
passed with the calls that read the source. One store serves both.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import sys

from s3pipefs import keys, options
from s3pipefs.config import S3Config, TransferConfig

PROG = "s3pipefs"
KEY_ENV, SOURCE_KEY_ENV = keys.SSE_C_ENV, keys.SOURCE_SSE_C_ENV
ENCRYPT_ENV, SOURCE_ENCRYPT_ENV = keys.ENCRYPT_ENV, keys.SOURCE_ENCRYPT_ENV


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
    inflight = getattr(args, "max_inflight", TransferConfig.max_inflight)
    return dataclasses.replace(
        cfg,
        endpoint_url=cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        or None,
        # A connection per request in flight (up to adaptive concurrency's cap), and spares
        # for the manifest and listing calls.
        max_pool_connections=max(cfg.max_pool_connections, 2 * workers, inflight + 8),
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
    """The engine over a store made from the arguments, with their transfer config and
    their keys (the destination's, for a command of one location)."""
    return engine_over(store(args), transfer_config(args), request_options(args)[1])


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


# -- keys ---------------------------------------------------------------------------------------

def add_key_arguments(p: argparse.ArgumentParser, source: bool = True, client_side: bool = True) -> None:
    """The key options of a command; ``source``: also the keys of a copy's source;
    ``client_side``: the client-side encryption key too (not for ls and rm, which never
    read a stream's data)."""
    g = p.add_argument_group("encryption (keys come from files or the environment, never the command line)")
    dest = "the destination" if source else "the stream or object"
    g.add_argument("--sse-c-key-file", metavar="FILE",
                   help=f"SSE-C key of {dest} (default: ${KEY_ENV} if set). 32 raw bytes, 64 hex "
                        "digits or base64")
    if client_side:
        g.add_argument("--encrypt-key-file", metavar="FILE",
                       help=f"client-side encryption key of {dest} (default: ${ENCRYPT_ENV} if set); "
                            "same forms; see docs/encryption.md")
    if source:
        g.add_argument("--source-sse-c-key-file", metavar="FILE",
                       help=f"SSE-C key that decrypts the source (default: ${SOURCE_KEY_ENV}, else the "
                            "destination key); a different one re-encrypts on copy")
        g.add_argument("--source-encrypt-key-file", metavar="FILE",
                       help=f"client-side key of the source (default: ${SOURCE_ENCRYPT_ENV}, else the "
                            "destination key); a different one re-encrypts on copy (key rotation)")


def request_options(args: argparse.Namespace):
    """(source, destination) RequestOptions from the key arguments; each source key
    defaults to the destination's."""
    from s3pipefs.s3 import RequestOptions

    dkey = keys.load_key(getattr(args, "sse_c_key_file", None), KEY_ENV) or b""
    skey = keys.load_key(getattr(args, "source_sse_c_key_file", None), SOURCE_KEY_ENV)
    dcrypt = keys.load_key(getattr(args, "encrypt_key_file", None), ENCRYPT_ENV, "encryption key") or b""
    scrypt = keys.load_key(getattr(args, "source_encrypt_key_file", None), SOURCE_ENCRYPT_ENV, "encryption key")
    source = RequestOptions(sse_key=dkey if skey is None else skey, encrypt_key=dcrypt if scrypt is None else scrypt)
    return source, RequestOptions(sse_key=dkey, encrypt_key=dcrypt)


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
