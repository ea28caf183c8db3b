"""Load mfusepy (or fusepy) on libfuse 3 when it is installed, else libfuse 2.

mfusepy binds whichever library ``find_library('fuse')`` finds first, which is libfuse 2
on most systems that have both. We prefer libfuse 3: the kernel then sends writes and
reads of up to 1 MiB per request instead of 128 KiB (libfuse 2's ceiling even with
``big_writes``), which is 8x fewer Python calls per byte. mfusepy decides at import time
from FUSE_LIBRARY_NAME, so the choice has to be made before the first import; an
explicit FUSE_LIBRARY_PATH / FUSE_LIBRARY_NAME from the user is left alone.

Importing this module touches no threads and no S3: it is safe before daemonizing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

if not os.environ.get("FUSE_LIBRARY_PATH") and not os.environ.get("FUSE_LIBRARY_NAME"):
    if ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

try:
    import mfusepy as fuse
except ImportError:  # pragma: no cover - the dependency is declared; fusepy is a fallback
    import fuse  # type: ignore[no-redef]

FuseOSError = fuse.FuseOSError
Operations = fuse.Operations
FUSE = fuse.FUSE
#: 2 or 3; fusepy (no attribute) only speaks libfuse 2.
MAJOR: int = int(getattr(fuse, "fuse_version_major", 2))
MINOR: int = int(getattr(fuse, "fuse_version_minor", 9))

# Largest request the kernel sends us. libfuse 2: 128 KiB with big_writes (the kernel's
# limit without FUSE_MAX_PAGES); libfuse 3.6+: 1 MiB (256 pages, the kernel's maximum
# as negotiated through max_pages).
MAX_REQUEST = (1 << 20) if MAJOR >= 3 else (128 << 10)


def fusermount() -> str:
    """The setuid helper that unmounts for this library version."""
    return "fusermount3" if MAJOR >= 3 else "fusermount"


def version() -> str:
    return f"{MAJOR}.{MINOR}"


def context() -> tuple[int, int, int]:
    """(uid, gid, pid) of the process whose request this FUSE thread is serving."""
    return fuse.fuse_get_context()


_fuse_interrupted = getattr(getattr(fuse, "_libfuse", None), "fuse_interrupted", None)


def interrupted() -> bool:
    """Whether the kernel interrupted the request this FUSE thread is serving (the caller
    got a signal). libfuse answers from its per-thread context; False when unavailable."""
    if _fuse_interrupted is None:
        return False
    try:
        return bool(_fuse_interrupted())
    except Exception:  # noqa: BLE001 - never let a probe break a read
        return False


_kept = threading.local()


def keep_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state between callbacks.

    libfuse calls in on its own threads; for each callback ctypes makes a Python thread
    state and drops it again on the way out (PyGILState_Ensure/Release), a cost paid on
    every FUSE request. One more PyGILState_Ensure of our own, never released, keeps the
    state (and this thread's locals) alive, so later callbacks find it ready. Public C
    API; at most one state per worker thread, freed with the process."""
    if not getattr(_kept, "state", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _kept.state = True
