"""The kernel's read-ahead for this mount.

The kernel reads ahead of a sequential reader in steps of the mount's ``read_ahead_kb``,
which for a FUSE mount starts at 128 KiB (libfuse can lower it, not raise it). So `md5sum
mnt/x` reached us as 8192 reads of 128 KiB per GiB, each one a round trip through the
kernel and a Python call. At 1 MiB (the largest request libfuse 3 takes) the same read
ran ~10% faster: 2.43 s against 2.65-2.76 s for 1 GiB, with the daemon's CPU no higher
(4 MiB was no faster, 16 MiB slower). The knob is root's, in sysfs; an unprivileged
mount keeps the kernel's default.
"""
from __future__ import annotations

import logging
import os
import threading

from s3pipefs.fs.mounttable import mounted_at

log = logging.getLogger(__name__)


def set_after_init(mountpoint: str, size: int) -> threading.Thread:
    """Set the read-ahead from a thread, once the kernel has the INIT reply: it lowers
    read_ahead_kb to what the reply says (at most the 128 KiB it offered), so a value set
    during init does not stick. A stat of the mount point is answered only after INIT."""
    def run() -> None:
        try:
            os.stat(mountpoint)
        except OSError:
            return
        set_kernel_read_ahead(mountpoint, size)

    t = threading.Thread(target=run, name="s3pipefs-readahead", daemon=True)
    t.start()
    return t


def set_kernel_read_ahead(mountpoint: str, size: int, sysfs: str = "/sys/class/bdi") -> bool:
    """Set the mount's read-ahead to ``size`` bytes. False when not allowed or not found."""
    mounted = mounted_at(mountpoint)
    if mounted is None or not mounted.fstype.startswith("fuse"):
        log.debug("read-ahead: no FUSE mount on %s in mountinfo", mountpoint)
        return False
    try:
        with open(f"{sysfs}/{mounted.device}/read_ahead_kb", "w") as f:
            f.write(str(max(4, size // 1024)))
    except OSError as e:
        log.debug("read-ahead of %s left at the kernel's default: %s", mountpoint, e.strerror or e)
        return False
    return True
