"""Where a running mount answers `s3pipefs status`, and how to ask it.

Each mount daemon listens on a unix socket of its own (fs/status.py serves it), in a
private runtime directory: ``/run/s3pipefs`` for root (mounts from fstab and systemd run
as root, and so does the root user asking), else ``$XDG_RUNTIME_DIR/s3pipefs``, else
``/tmp/s3pipefs-UID``. The directory is 0700 and the socket 0600, so only the user who
mounted (and root) can read a mount's paths. The socket is named after a hash of the
mount point's real path, so a name is short whatever the path, and a new mount at the
same place replaces a stale socket. A connection gets one JSON document and is closed.

Cheap to import: `status` must not load the engine, botocore or FUSE.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket

SUFFIX = ".sock"
TIMEOUT = 5.0  # seconds to wait for a daemon's answer


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/s3pipefs"
    base = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(base, "s3pipefs") if base else f"/tmp/s3pipefs-{os.geteuid()}"


def socket_path(mountpoint: str) -> str:
    name = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return os.path.join(runtime_dir(), name + SUFFIX)


def private_dir() -> str:
    """The runtime directory, created 0700; refused when it is not ours or open to others
    (in /tmp, someone else may have made it first)."""
    d = runtime_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not os.path.isdir(d) or os.path.islink(d):
        raise PermissionError(f"{d} is not a private directory of this user")
    return d


def query(path: str) -> dict:
    """The status document of the daemon listening on ``path``; OSError when none does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ConnectionError(f"{path}: not a status answer") from None


def running() -> list[dict]:
    """The status of every mount answering in the runtime directory (stale sockets skipped)."""
    d = runtime_dir()
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(SUFFIX))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            out.append(query(os.path.join(d, name)))
        except OSError:
            continue  # a daemon that died without removing its socket
    return out
