"""What the kernel's mount table says about a mount point (/proc/self/mountinfo)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mounted:
    device: str  # "major:minor", as /sys/class/bdi names it
    fstype: str  # e.g. "fuse.s3pipefs"


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def mounted_at(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> Mounted | None:
    """The newest mount on ``mountpoint`` (mounts stack; the last line is on top), found
    without touching the mount point itself, which may be dead or not yet answering."""
    found = None
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 10 or "-" not in fields:
                    continue
                if _unescape(fields[4]) == mountpoint:
                    found = Mounted(fields[2], fields[fields.index("-") + 1])
    except OSError:
        return None
    return found
