"""Whether the process closing a descriptor still holds the same file open for writing.

A shell's ``cmd > f`` opens ``f``, moves the descriptor to 1 and closes the one it was
opened on before ``cmd`` writes a byte. The kernel sends every close(2) as a FLUSH of the
open file, so the mount sees a close of a created file with nothing written, and makes the
name exist in S3 then (an empty object, engine/filewriter.py ``claim``), as a close must.
When the closing process still holds the file open for writing on another descriptor,
that close is not the file's: its last close will commit it. Asking /proc saves the empty
PUT (and its round trip before ``cmd`` starts) for every redirection into the mount.

Linux only, and conservative: anything unreadable, a process with very many descriptors,
or a path that differs from the one this mount sees (another mount namespace, a renamed
file) answers False, and the name is made at once as before.
"""
from __future__ import annotations

import os

# Past this many descriptors, the look costs more than the PUT it would save.
MAX_FDS = 256


def holds_for_writing(pid: int, path: str) -> bool:
    """True when process ``pid`` has a descriptor open for writing on ``path`` (absolute,
    as that process names it); False when it has none or when that cannot be told."""
    if pid <= 0:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    if len(fds) > MAX_FDS:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != path:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("flags:"):
                        if int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY:
                            return True
                        break
        except (OSError, ValueError, IndexError):
            continue
    return False
