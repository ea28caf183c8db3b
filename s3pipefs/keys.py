"""Keys from files and the environment: SSE-C keys and client-side encryption keys.

A key is 32 bytes, given as 32 raw bytes, 64 hex digits or base64, in a file (``--sse-c-key-file``,
``--encrypt-key-file``, the mount's ``sse_c_key_file=``/``encrypt_key_file=``) or in an
environment variable; never on a command line, where ``ps`` shows it. Errors and warnings
name the file or the variable, never the key.

Pure but for the reads: no S3, cheap to import.
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
import sys

KEY_BYTES = 32
SSE_C_ENV = "S3PIPEFS_SSE_C_KEY"
SOURCE_SSE_C_ENV = "S3PIPEFS_SOURCE_SSE_C_KEY"
ENCRYPT_ENV = "S3PIPEFS_ENCRYPT_KEY"
SOURCE_ENCRYPT_ENV = "S3PIPEFS_SOURCE_ENCRYPT_KEY"


def load_key(path: str | None, env_name: str, what: str = "SSE-C key") -> bytes | None:
    """The key from ``path``, else from ``$env_name``, else None. Never logged."""
    from s3pipefs import errors

    if path:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(1024)
        except OSError as e:
            raise errors.UsageError(f"{path}: cannot read the {what} file: {e.strerror}") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            print(f"s3pipefs: warning: {path}: the {what} file is readable by other users (chmod 600 it)",
                  file=sys.stderr)
        return parse_key(data, path, what)
    env = os.environ.get(env_name)
    if env:
        return parse_key(env.encode(), f"${env_name}", what)
    return None


def parse_key(data: bytes, where: str, what: str = "SSE-C key") -> bytes:
    """32 raw bytes, 64 hex digits or base64 of 32 bytes; trailing whitespace ignored."""
    from s3pipefs import errors

    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == KEY_BYTES:
        return text
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        raw = base64.b64decode(text, validate=True)
        if len(raw) == KEY_BYTES:
            return raw
    except (binascii.Error, ValueError):
        pass
    raise errors.UsageError(f"{where}: the {what} must be {KEY_BYTES} bytes (raw, 64 hex digits or base64)")
